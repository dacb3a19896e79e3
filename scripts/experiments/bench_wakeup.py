#!/usr/bin/env python3
"""Benchmark: how fast can one process wake a *sleeping* uvloop consumer in a forked child?

What is measured
    Ping-pong round trips between a parent and a forked child, both running a uvloop event
    loop. The parent "rings" a one-way doorbell (a tiny message), the child's loop wakes,
    rings a second doorbell back, and the parent's loop wakes. The wall time of each round
    trip is recorded with ``time.perf_counter_ns``; we report median and p99. Each process
    also measures the CPU time it burned during the timed rounds (``time.process_time_ns``,
    i.e. CLOCK_PROCESS_CPUTIME_ID: all threads, ns resolution, unlike tick-based rusage);
    the child sends its figure back over a result pipe when it is done. Voluntary context
    switches per round trip (rusage ru_nvcsw) show how often each side really went to sleep;
    sched_yield() does not count as one.

    Back-to-back ping-pong is the busy case: the reply arrives within a microsecond or two
    of a side starting to wait, so any spin window catches it and nobody sleeps. To measure
    an idle consumer, ``--gap-us N`` makes the parent block for N us (untimed, and its usage
    subtracted) before each round trip, so the child's spin window expires first and the
    child has to be woken from a real sleep.

Doorbells compared (the same kind is used in both directions)
    eventfd    os.eventfd + os.eventfd_write/read, registered with loop.add_reader.
    pipe       os.pipe, one byte per ring, read end registered with loop.add_reader.
    posix_sem  posix_ipc.Semaphore; a parked waiter thread blocks in sem_timedwait and hands
               each token to the loop with loop.call_soon_threadsafe.
    hybrid     the waiter polls a sequence counter in an anonymous MAP_SHARED mapping (made
               before fork, read through memoryview.cast("Q")) for a bounded spin window,
               calling os.sched_yield() between polls, then publishes a "sleeping" flag and
               sleeps on an eventfd via add_reader. The producer only writes the eventfd when
               it sees the flag set. Spin windows of 0, 20 and 100 us are tried. Note that
               the spin runs synchronously inside the coroutine, so it blocks the event loop
               for up to the window.

Placements
    unpinned   the scheduler places both processes on any allowed CPU.
    1 cpu      the whole tree pinned to one CPU (affinity set before fork, inherited).
    split      parent pinned to one CPU, child to another.

Why
    The pool's frames travel over shared-memory rings; what is left is the doorbell that
    wakes an idle consumer. This decides which mechanism that doorbell uses and whether a
    short spin before sleeping is worth its CPU cost.

Usage
    python scripts/experiments/bench_wakeup.py [--quick] [--rounds 3000] [--warmup 300]
                                               [--gap-us 0] [--timeout S] [--json PATH]

The script does not import wool_local. Every child is reaped (SIGKILL after a grace period),
every descriptor is closed, and every wait is bounded by a timeout (the harness of
scripts/benchpair.py); a check at the end reports anything left behind.
"""

from __future__ import annotations

import abc
import asyncio
import gc
import json
import mmap
import os
import resource
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TypeVar

import posix_ipc
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scripts/, for the harness
from benchlib import Run, arguments, at_least, describe, positive, summary, table
from benchpair import Placement, fork_pair, make_placements

T = TypeVar("T")

# A threading.Lock that is always held by the calling thread. release() + acquire() on it runs
# sem_post + sem_trywait in glibc (CPython 3.11 locks are POSIX semaphores), both of which use
# lock-prefixed read-modify-write instructions. On x86-64 a locked instruction is a full
# barrier, which is the store-load fence the hybrid doorbell's flag handshake needs. This is
# NOT a portable guarantee (on ARM a release/acquire pair is not a store-load fence).
_FENCE_LOCK = threading.Lock()
_FENCE_LOCK.acquire()


def _fence() -> None:
    """Full memory barrier on x86-64 (see _FENCE_LOCK)."""
    _FENCE_LOCK.release()
    _FENCE_LOCK.acquire()


class Doorbell(abc.ABC):
    """One direction of the ping-pong channel.

    Created before fork so both processes inherit it. The producer calls ``ring()``; the
    consumer calls ``attach(loop)`` once, then awaits ``wait()`` once per ring.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._pending = 0

    @abc.abstractmethod
    def ring(self) -> None:
        """Send one wake-up to the consumer (producer side, synchronous)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release every kernel object this process holds for the doorbell (idempotent)."""

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start delivering wake-ups into ``loop`` (consumer side)."""
        self._loop = loop

    def detach(self) -> None:
        """Stop delivering wake-ups; must be called before the loop closes."""
        self._loop = None

    async def wait(self) -> None:
        """Return once one ring has arrived, sleeping in the event loop until then."""
        while self._pending == 0:
            assert self._loop is not None, "attach() first"
            self._waiter = self._loop.create_future()
            await self._waiter
        self._pending -= 1

    def _wake_waiter(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _deliver(self, count: int) -> None:
        self._pending += count
        self._wake_waiter()


class EventfdBell(Doorbell):
    """eventfd counter; the consumer's loop watches it with add_reader."""

    def __init__(self) -> None:
        super().__init__()
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def ring(self) -> None:
        os.eventfd_write(self._fd, 1)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        super().attach(loop)
        loop.add_reader(self._fd, self._on_readable)

    def detach(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
        super().detach()

    def _on_readable(self) -> None:
        try:
            count = os.eventfd_read(self._fd)
        except BlockingIOError:
            return
        self._deliver(count)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class PipeBell(Doorbell):
    """Anonymous pipe, one byte per ring; the consumer's loop watches the read end."""

    def __init__(self) -> None:
        super().__init__()
        self._rfd, self._wfd = os.pipe()
        os.set_blocking(self._rfd, False)

    def ring(self) -> None:
        os.write(self._wfd, b"\x01")

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        super().attach(loop)
        loop.add_reader(self._rfd, self._on_readable)

    def detach(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._rfd)
        super().detach()

    def _on_readable(self) -> None:
        try:
            data = os.read(self._rfd, 4096)
        except BlockingIOError:
            return
        self._deliver(len(data))

    def close(self) -> None:
        for fd in (self._rfd, self._wfd):
            if fd >= 0:
                os.close(fd)
        self._rfd = self._wfd = -1


class SemaphoreBell(Doorbell):
    """POSIX named semaphore bridged into the loop by a parked waiter thread."""

    _POLL_S = 0.1  # sem_timedwait timeout, only bounds how long detach() takes

    def __init__(self) -> None:
        super().__init__()
        self._sem = posix_ipc.Semaphore(None, posix_ipc.O_CREX, initial_value=0)
        # Both processes use the mapping inherited through fork, so the name can go now;
        # nothing is left behind in /dev/shm even if the run is killed.
        self._sem.unlink()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def ring(self) -> None:
        self._sem.release()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        super().attach(loop)
        self._stop.clear()
        self._thread = threading.Thread(target=self._pump, args=(loop,), daemon=True)
        self._thread.start()

    def detach(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * self._POLL_S)
            self._thread = None
        super().detach()

    def _pump(self, loop: asyncio.AbstractEventLoop) -> None:
        """Waiter thread: block on the semaphore, forward each token to the loop."""
        while not self._stop.is_set():
            try:
                self._sem.acquire(self._POLL_S)
            except posix_ipc.BusyError:
                continue
            loop.call_soon_threadsafe(self._deliver, 1)

    def close(self) -> None:
        self.detach()
        if self._sem is not None:
            self._sem.close()
            self._sem = None


# Word indices into the hybrid doorbell's shared page (8-byte words). The producer-written
# sequence and the consumer-written flag live on different 64-byte cache lines.
_SEQ = 0
_SLEEPING = 8


class HybridBell(Doorbell):
    """Spin on a shared sequence counter, then sleep on an eventfd.

    Lost-wakeup hazard: the handshake is Dekker-style. The producer stores SEQ and then loads
    SLEEPING; the consumer stores SLEEPING and then loads SEQ. x86-64 may reorder a store with
    a later load (store buffer), so without a fence both could read the old value: the
    producer sees "awake" and skips the eventfd write, the consumer sees no new sequence and
    goes to sleep -- a lost wake-up that would hang until a timeout. Each side therefore
    issues _fence() between its store and its load, so at least one of them sees the other's
    store. If both do, the result is only a spurious eventfd count, which the reader callback
    drains and the wait loop tolerates by re-checking SEQ.
    """

    def __init__(self, spin_us: int) -> None:
        super().__init__()
        self._spin_ns = spin_us * 1000
        self._mm = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        self._words: memoryview | None = memoryview(self._mm).cast("Q")
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._sent = 0  # producer-local count of rings
        self._seen = 0  # consumer-local count of consumed rings

    def ring(self) -> None:
        words = self._words
        assert words is not None
        self._sent += 1
        words[_SEQ] = self._sent  # aligned 8-byte store: single-copy atomic on x86-64
        _fence()  # store SEQ -> load SLEEPING must not be reordered
        if words[_SLEEPING]:
            os.eventfd_write(self._efd, 1)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        super().attach(loop)
        loop.add_reader(self._efd, self._on_readable)

    def detach(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._efd)
        super().detach()

    def _on_readable(self) -> None:
        try:
            os.eventfd_read(self._efd)
        except BlockingIOError:
            return
        self._wake_waiter()

    async def wait(self) -> None:
        words = self._words
        loop = self._loop
        assert words is not None and loop is not None, "attach() first"
        target = self._seen + 1
        self._seen = target
        if words[_SEQ] >= target:
            return
        if self._spin_ns:
            deadline = time.perf_counter_ns() + self._spin_ns
            while time.perf_counter_ns() < deadline:
                os.sched_yield()
                if words[_SEQ] >= target:
                    return
        try:
            while True:
                words[_SLEEPING] = 1
                _fence()  # store SLEEPING -> load SEQ must not be reordered
                if words[_SEQ] >= target:
                    return
                self._waiter = loop.create_future()
                await self._waiter
        finally:
            words[_SLEEPING] = 0

    def close(self) -> None:
        if self._words is not None:
            self._words.release()
            self._words = None
            self._mm.close()
        if self._efd >= 0:
            os.close(self._efd)
            self._efd = -1


@dataclass(frozen=True)
class Variant:
    """A doorbell kind under test."""

    name: str
    make: Callable[[], Doorbell]


@dataclass(frozen=True)
class Settings:
    """Run parameters shared by every case."""

    rounds: int
    warmup: int
    gap_us: int
    timeout: float


@dataclass
class Usage:
    """CPU time and voluntary context switches (i.e. real sleeps) of one process."""

    cpu_ns: int = 0
    nvcsw: int = 0

    @classmethod
    def now(cls) -> Usage:
        """Snapshot for the whole calling process (all threads)."""
        return cls(time.process_time_ns(), resource.getrusage(resource.RUSAGE_SELF).ru_nvcsw)

    def __add__(self, other: Usage) -> Usage:
        return Usage(self.cpu_ns + other.cpu_ns, self.nvcsw + other.nvcsw)

    def __sub__(self, other: Usage) -> Usage:
        return Usage(self.cpu_ns - other.cpu_ns, self.nvcsw - other.nvcsw)


@dataclass
class Result:
    """Outcome of one (variant, placement) run; times in microseconds."""

    variant: str
    placement: str
    rounds: int
    gap_us: int
    median_us: float | None = None
    p99_us: float | None = None
    min_us: float | None = None
    mean_us: float | None = None
    max_us: float | None = None
    parent_cpu_us_per_rt: float | None = None
    child_cpu_us_per_rt: float | None = None
    parent_sleeps_per_rt: float | None = None
    child_sleeps_per_rt: float | None = None
    error: str | None = None


VARIANTS: list[Variant] = [
    Variant("eventfd", EventfdBell),
    Variant("pipe", PipeBell),
    Variant("posix_sem+thread", SemaphoreBell),
    Variant("hybrid spin=0us", partial(HybridBell, 0)),
    Variant("hybrid spin=20us", partial(HybridBell, 20)),
    Variant("hybrid spin=100us", partial(HybridBell, 100)),
]


async def _drive(out: Doorbell, inp: Doorbell, cfg: Settings) -> tuple[list[int], Usage]:
    """Parent: ring, await the reply; return per-round-trip ns and usage of the timed part.

    With a gap, the parent blocks in time.sleep between round trips so the child's spin
    window expires and it really falls asleep; the gap's own usage is subtracted.
    """
    inp.attach(asyncio.get_running_loop())
    gap_s = cfg.gap_us / 1e6
    try:
        for _ in range(cfg.warmup):
            out.ring()
            await inp.wait()
        perf = time.perf_counter_ns
        latencies = [0] * cfg.rounds
        excluded = Usage()
        gc.disable()
        start_usage = Usage.now()
        for i in range(cfg.rounds):
            if gap_s:
                before_gap = Usage.now()
                time.sleep(gap_s)
                excluded += Usage.now() - before_gap
            start = perf()
            out.ring()
            await inp.wait()
            latencies[i] = perf() - start
        return latencies, Usage.now() - start_usage - excluded
    finally:
        gc.enable()
        inp.detach()


async def _echo(inp: Doorbell, out: Doorbell, cfg: Settings) -> Usage:
    """Child: await each ring and answer it; return its usage over the timed rounds."""
    inp.attach(asyncio.get_running_loop())
    try:
        for _ in range(cfg.warmup):
            await inp.wait()
            out.ring()
        gc.disable()
        start_usage = Usage.now()
        for _ in range(cfg.rounds):
            await inp.wait()
            out.ring()
        return Usage.now() - start_usage
    finally:
        inp.detach()


def _run_on_uvloop(main: Callable[[], Awaitable[T]], timeout: float) -> T:
    """Run ``main()`` on a fresh uvloop loop, cancelling it after ``timeout`` seconds."""
    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(main(), timeout))
    except TimeoutError as exc:  # asyncio's carries no message
        raise TimeoutError(f"did not finish within {timeout:g} s") from exc
    finally:
        loop.close()


def _read_to_eof(fd: int) -> bytes:
    """Read a pipe whose every writer is closed (so this cannot block forever)."""
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def run_case(variant: Variant, placement: Placement, cfg: Settings) -> Result:
    """Fork a child, run the ping-pong for one (variant, placement) and clean up."""
    result = Result(variant.name, placement.name, cfg.rounds, cfg.gap_us)
    p2c = variant.make()
    c2p = variant.make()
    result_r, result_w = os.pipe()
    open_w = [result_w]  # the parent's copy of the result pipe's write end, until closed

    def child() -> None:
        os.close(result_r)
        usage = _run_on_uvloop(lambda: _echo(p2c, c2p, cfg), cfg.timeout)
        os.write(result_w, json.dumps(asdict(usage)).encode())

    def hang_up() -> None:
        while open_w:
            os.close(open_w.pop())

    def parent(pid: int) -> tuple[list[int], Usage]:
        hang_up()  # so the result pipe ends when the child does
        return _run_on_uvloop(lambda: _drive(p2c, c2p, cfg), cfg.timeout)

    try:
        # The loop's own timeout comes first; the watchdog and the child's alarm back it up.
        timeout = cfg.timeout + 5
        latencies, parent_usage = fork_pair(
            placement, child, parent, hang_up, timeout=timeout, grace=5.0
        )
        child_usage = Usage(**json.loads(_read_to_eof(result_r)))
    except Exception as exc:
        result.error = describe(exc)
        return result
    finally:
        os.close(result_r)
        p2c.close()
        c2p.close()
    n = len(latencies)
    us = summary(latencies, 1e3)
    result.median_us, result.p99_us, result.mean_us = us["median"], us["p99"], us["mean"]
    result.min_us, result.max_us = us["min"], us["max"]
    result.parent_cpu_us_per_rt = parent_usage.cpu_ns / n / 1000
    result.parent_sleeps_per_rt = parent_usage.nvcsw / n
    result.child_cpu_us_per_rt = child_usage.cpu_ns / cfg.rounds / 1000
    result.child_sleeps_per_rt = child_usage.nvcsw / cfg.rounds
    return result


_COLUMNS = (  # title, attribute, digits
    ("variant", "variant", 0),
    ("placement", "placement", 0),
    ("median us", "median_us", 1),
    ("p99 us", "p99_us", 1),
    ("parent CPU us/rt", "parent_cpu_us_per_rt", 1),
    ("child CPU us/rt", "child_cpu_us_per_rt", 1),
    ("sleeps/rt p", "parent_sleeps_per_rt", 2),
    ("sleeps/rt c", "child_sleeps_per_rt", 2),
)


def _cells(result: Result) -> list[str]:
    cells = []
    for _, attr, digits in _COLUMNS:
        value = getattr(result, attr)
        cells.append("-" if value is None else f"{value:.{digits}f}" if digits else str(value))
    if result.error:
        cells[-1] += f"  ERROR: {result.error}"
    return cells


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run every (placement, variant) pair, print and optionally save."""
    parser = arguments(__doc__, "short smoke run (300 round trips after 30 warm-up)")
    parser.add_argument("--rounds", type=at_least(1), help="timed round trips per case (3000)")
    parser.add_argument("--warmup", type=at_least(0), help="untimed round trips first (300)")
    parser.add_argument(
        "--gap-us", type=at_least(0), default=0, help="idle pause before each round trip (0)"
    )
    parser.add_argument("--timeout", type=positive, default=15.0, help="seconds per case (15)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (300 if args.quick else 3000)
    warmup = args.warmup if args.warmup is not None else (30 if args.quick else 300)
    cfg = Settings(rounds, warmup, args.gap_us, args.timeout)
    placements = make_placements()

    # libuv opens a process-wide pipe with the first loop and keeps it for good; open it now so
    # the descriptor check only counts what this script leaks.
    uvloop.new_event_loop().close()
    run = Run(
        f"wake-up of a sleeping uvloop consumer, {cfg.rounds} round trips after {cfg.warmup} "
        f"warm-up, gap {cfg.gap_us} us",
        len(placements) * len(VARIANTS) * (cfg.timeout + 15) + 60,  # every case at its limit
        fds=True,
    )
    results: list[Result] = []
    with run:
        for placement in placements:
            for variant in VARIANTS:
                print(f"  ... {variant.name}, {placement.name}", file=sys.stderr, flush=True)
                results.append(run_case(variant, placement, cfg))
    print()
    print(table([title for title, _, _ in _COLUMNS], [_cells(r) for r in results]))
    run.report()
    run.write_json(args.json, settings=asdict(cfg), results=[asdict(r) for r in results])
    return 1 if any(r.error for r in results) or not run.clean else 0


if __name__ == "__main__":
    sys.exit(main())
