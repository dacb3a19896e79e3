"""Harness of the benchmarks that time a parent against one forked child (bench_ipc.py and
experiments/bench_wakeup.py): CPU placements, the fork with its bounds, reaping.

Nothing may hang: the parent's part runs under a SIGALRM watchdog, the child ends itself by
``alarm()`` if the parent vanishes, and the child is killed if it outstays its grace period.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import select
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import FrameType
from typing import NoReturn, TypeVar

from benchlib import CaseTimeout

T = TypeVar("T")


@dataclass(frozen=True)
class Placement:
    """CPU affinity for parent and child; None means "all allowed CPUs" / "inherit"."""

    name: str
    parent_cpus: frozenset[int] | None
    child_cpus: frozenset[int] | None
    peer_awake: bool  # both processes can run at once, so a spinning waiter sees the answer


UNPINNED = Placement("unpinned", None, None, peer_awake=True)


def make_placements() -> list[Placement]:
    """Unpinned, the whole tree on one CPU, and parent/child on two CPUs (if allowed)."""
    cpus = sorted(os.sched_getaffinity(0))
    first = frozenset(cpus[:1])
    found = [
        Placement("unpinned", None, None, peer_awake=len(cpus) > 1),
        Placement(f"1 cpu (cpu{cpus[0]})", first, None, peer_awake=False),
    ]
    if len(cpus) > 1:
        name = f"split (cpu{cpus[0]}/cpu{cpus[1]})"
        found.append(Placement(name, first, frozenset(cpus[1:2]), peer_awake=True))
    return found


@contextlib.contextmanager
def watchdog(limit: float) -> Iterator[None]:
    """Raise :class:`CaseTimeout` in the main thread if the block runs over ``limit`` s."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise CaseTimeout(f"case ran over {limit:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Keep the cyclic garbage collector out of timed regions."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def reap(pid: int, grace: float) -> int:
    """Wait up to ``grace`` seconds for ``pid`` to exit, else SIGKILL it; its exit code."""
    fd = os.pidfd_open(pid)
    try:
        if not select.select([fd], [], [], grace)[0]:
            os.kill(pid, signal.SIGKILL)
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def last_cpu(pid: int) -> int | None:
    """The CPU ``pid`` last ran on (field 39 of /proc/PID/stat), None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; count fields after its closing paren.
    return int(stat.rpartition(b")")[2].split()[39 - 3])


def fork_pair(
    placement: Placement,
    child: Callable[[], object],
    parent: Callable[[int], T],
    hang_up: Callable[[], None],
    *,
    timeout: float,
    grace: float,
) -> T:
    """Fork a child that runs ``child()`` and exits; return ``parent(child's pid)``.

    Both are pinned as ``placement`` says (the parent's affinity is restored afterwards).
    ``parent`` runs under :func:`watchdog` (``timeout``); then ``hang_up()`` releases the
    parent's share of what the two use, which should end the child, and the child is reaped:
    killed if it is not gone within ``grace`` seconds (0.2 s if the parent's part failed).
    The child ends itself by SIGALRM once ``timeout + grace`` and 5 s more have passed.
    Raises if either side failed.
    """
    original = os.sched_getaffinity(0)
    failed = True
    pid = -1
    status = 0
    try:
        os.sched_setaffinity(0, placement.parent_cpus or original)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child_main(child, placement.child_cpus, timeout + grace)
        with watchdog(timeout):
            result = parent(pid)
        failed = False
    finally:
        try:
            hang_up()
        finally:
            if pid > 0:
                status = reap(pid, 0.2 if failed else grace)
            os.sched_setaffinity(0, original)
    if status != 0:
        raise RuntimeError(f"child exited with status {status}")
    return result


def _child_main(body: Callable[[], object], cpus: frozenset[int] | None, limit: float) -> NoReturn:
    """Body of every forked child; never returns (always ``os._exit``)."""
    code = 1
    try:
        # Inherited: the parent's handler, if any. A stuck child is simply ended instead.
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.alarm(math.ceil(limit) + 5)
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
        body()
        code = 0
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
    finally:
        os._exit(code)  # closes whatever is left; skips atexit and inherited stdio buffers
