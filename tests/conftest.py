"""Suite-wide guards: every test leaves no child process, fd or /dev/shm entry behind."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import psutil
import pytest
import uvloop

from tests.helpers import Pipe
from wool_local.ipc.segment import owned_leftovers


def _fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def _describe(fds: set[int]) -> list[str]:
    out = []
    for fd in sorted(fds):
        try:
            out.append(f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            out.append(f"{fd} -> ?")
    return out


@pytest.fixture(scope="session", autouse=True)
def process_wide_setup():
    """Let libraries make their once-per-process fds before the leak checks start.

    uvloop opens a signal pipe the first time a loop runs and keeps it for the
    life of the process; that is not a leak of the code under test.
    """
    uvloop.run(asyncio.sleep(0))


def _shm_of(pids: set[int]) -> set[str]:
    return {name for name, creator, _ in owned_leftovers() if creator in pids}


@pytest.fixture(autouse=True)
def no_leaks(process_wide_setup):
    """Fail a test that leaves children, fds or shared-memory names behind.

    Shared-memory names are attributed by the creator pid in the name: this
    process and the descendants alive at the end of the test. (Other programs
    of this user may create and remove segments meanwhile; a leak by a
    descendant that already exited is left to ``sweep()``, which removes
    segments of dead creators.)
    """
    me = psutil.Process()
    children_before = {p.pid for p in me.children(recursive=True)}
    fds_before = _fds()
    ours = {os.getpid()}
    shm_before = _shm_of(ours | children_before)
    yield
    # Children a test killed or stopped may take a moment to be reaped: wait on
    # them (an event, bounded), never sleep.
    extra = [p for p in me.children(recursive=True) if p.pid not in children_before]
    ours |= {p.pid for p in extra}
    _, alive = psutil.wait_procs(extra, timeout=5)
    leftover_children = [p.pid for p in alive]
    for p in alive:
        p.kill()
    psutil.wait_procs(alive, timeout=5)
    shm_after = _shm_of(ours) - shm_before
    fds_after = _fds() - fds_before
    problems = []
    if leftover_children:
        problems.append(f"child processes left running: {leftover_children}")
    if shm_after:
        problems.append(f"/dev/shm entries left: {sorted(shm_after)} (test process {os.getpid()})")
    if fds_after:
        problems.append(f"fds left open: {_describe(fds_after)}")
    assert not problems, "; ".join(problems)


@pytest.fixture
def pipe() -> Iterator[Pipe]:
    """A pipe made before the test's pool starts (its workers inherit the write end),
    closed after the test, before the leak check."""
    made = Pipe()
    yield made
    made.close()
