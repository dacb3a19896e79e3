"""Reliability: no call hangs or fails for another call's fault.

Each test pins a failure found by probing the hub as an operator, a careless
user or a hostile routine would, and fails without its fix.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

import wool_local
from tests.helpers import Pipe, run


@wool_local.routine
async def park(started_fd: int) -> None:
    """Say so on ``started_fd``, then wait forever (until cancelled or killed)."""
    os.write(started_fd, b"s")
    await asyncio.Event().wait()


@wool_local.routine
async def add(a: int, b: int) -> int:
    return a + b


@wool_local.routine
async def pid() -> int:
    return os.getpid()


@pytest.mark.timeout(30)
def test_given_the_zygote_killed_then_calls_in_flight_fail_at_once_and_the_pool_serves_on():
    """Given two calls parked on two workers, when an operator SIGKILLs the pool's zygote
    (its workers die with it), then both calls fail with WorkerCrashed within a second,
    the hub forks a new zygote, and the next calls succeed on new workers."""
    pipe = Pipe()

    async def main():
        async with wool_local.WorkerPool(spawn=2) as wp:
            hub = wp.hub
            old_zygote, old_pids = hub.zygote_pid, set(wp.pids)
            calls = [asyncio.ensure_future(park(pipe.w)) for _ in range(2)]
            for _ in range(2):
                await pipe.read()
            os.kill(old_zygote, signal.SIGKILL)
            start = time.monotonic()
            done, _ = await asyncio.wait(calls, timeout=5)
            assert len(done) == 2, "calls in flight hung after the zygote died"
            assert time.monotonic() - start < 1.0
            for call in calls:
                with pytest.raises(wool_local.WorkerCrashed, match="zygote"):
                    call.result()
            assert await add(2, 3) == 5
            assert hub.zygote_pid not in (-1, old_zygote)
            assert not ({await pid() for _ in range(4)} & old_pids)

    try:
        run(main)
    finally:
        pipe.close()
