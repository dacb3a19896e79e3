"""Recycling never cuts running work short; only hard_rss kills; memory the hub held
before the pool started does not count against a worker's max_rss."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

import pytest

import wool_local
from tests import routines as r
from tests.helpers import run
from wool_local import WorkerCrashed, WorkerLimits

_held: list[bytearray] = []


def _touched(mib: int) -> bytearray:
    """``mib`` MiB, every page written, so all of it is resident."""
    block = bytearray(mib << 20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return block


@wool_local.routine
async def slow(seconds: float) -> int:
    """Sleep ``seconds`` in the worker; its pid."""
    await asyncio.sleep(seconds)
    return os.getpid()


@wool_local.routine
async def ticks(n: int, every: float):
    """``n`` items, one each ``every`` seconds, each with the worker's pid."""
    for i in range(n):
        await asyncio.sleep(every)
        yield i, os.getpid()


@wool_local.routine
async def grow_then_wait(mib: int, seconds: float) -> int:
    """Keep ``mib`` MiB of written memory in the worker, then sleep ``seconds``; its pid."""
    _held.append(_touched(mib))
    await asyncio.sleep(seconds)
    return os.getpid()


async def until(hub, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    """Wait for membership changes until ``predicate()`` holds (bounded)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await hub.changed()


async def monitor_rounds(monitor, n: int, timeout: float = 15.0) -> None:
    """Wait until the monitor has handed ``n`` more rounds to the hub (bounded)."""
    done = asyncio.Event()
    seen = 0
    inner = monitor._on_sample

    def counted(readings) -> None:
        nonlocal seen
        inner(readings)
        seen += 1
        if seen >= n:
            done.set()

    monitor._on_sample = counted
    try:
        async with asyncio.timeout(timeout):
            await done.wait()
    finally:
        monitor._on_sample = inner


def test_given_max_age_passed_mid_work_then_the_call_and_stream_finish_on_the_old_worker():
    """Given max_age=1s, a 5 s call and a stream of 10 x 0.5 s items on one worker: it is
    retired and replaced while they run, new calls meanwhile run on the replacement, and
    both finish on the retired worker, which stops after them."""
    limits = WorkerLimits.unlimited(max_age="1s")

    async def main():
        async with wool_local.WorkerPool(spawn=1, limits=limits, monitor_interval=0.05) as wp:
            hub = wp.hub
            (first,) = wp.pids
            call = asyncio.ensure_future(slow(5.0))

            async def drain():
                return [item async for item in ticks(10, 0.5)]

            streamed = asyncio.ensure_future(drain())
            await until(hub, lambda: hub.worker(first).retiring is not None)
            await until(hub, lambda: any(pid != first for pid in wp.pids))
            meanwhile = await asyncio.gather(*(r.whoami() for _ in range(20)))
            assert first not in meanwhile
            assert not call.done() and not streamed.done()
            assert await call == first
            assert await streamed == [(i, first) for i in range(10)]
            await until(hub, lambda: first not in wp.pids)
            stats = wp.stats()
            assert stats.crashes == 0 and stats.recycles.get("age", 0) >= 1

    run(main)


def test_given_max_rss_passed_mid_call_then_the_call_finishes_and_the_worker_retires():
    """Given max_rss=64MiB and a call that keeps 128 MiB and runs on for 1.5 s, the worker
    is retired while the call runs, the call returns, and nothing crashes."""
    limits = WorkerLimits.unlimited(max_rss="64MiB")

    async def main():
        async with wool_local.WorkerPool(spawn=1, limits=limits, monitor_interval=0.05) as wp:
            hub = wp.hub
            (first,) = wp.pids
            call = asyncio.ensure_future(grow_then_wait(128, 1.5))
            await until(hub, lambda: hub.worker(first).retiring is not None)
            assert not call.done()
            assert await call == first
            await until(hub, lambda: first not in wp.pids)
            assert wp.stats().recycles == {"memory": 1} and wp.stats().crashes == 0

    run(main)


def test_given_a_worker_past_hard_rss_then_it_is_killed_and_its_caller_told_why():
    """Given hard_rss=64MiB and a call that keeps 128 MiB, the worker is killed, the caller's
    WorkerCrashed names the ceiling and the reading, and the pool serves on elsewhere."""
    limits = WorkerLimits.unlimited(hard_rss="64MiB")

    async def main():
        async with wool_local.WorkerPool(spawn=1, limits=limits, monitor_interval=0.05) as wp:
            (first,) = wp.pids
            with pytest.raises(WorkerCrashed) as caught:
                async with asyncio.timeout(10):
                    await grow_then_wait(128, 30.0)
            crash = caught.value
            assert crash.pid == first and crash.signal == signal.SIGKILL
            assert "it passed the hard memory ceiling hard_rss=64.0 MiB: private memory" in str(
                crash
            )
            assert await r.whoami() != first
            stats = wp.stats()
            assert stats.recycles == {"hard_memory": 1} and stats.crashes == 1

    run(main)


def test_given_a_hub_holding_300_mib_then_its_idle_worker_is_not_recycled_on_max_rss():
    """Given a hub holding 300 MiB (written page by page) before the pool starts with
    max_rss=256MiB, its idle worker maps those pages (rss above the limit) but owns little
    of them, and ten monitor rounds recycle nothing."""
    big = _touched(300)
    limits = WorkerLimits.unlimited(max_rss="256MiB")

    async def main():
        async with wool_local.WorkerPool(spawn=1, limits=limits, monitor_interval=0.02) as wp:
            (pid,) = wp.pids
            await monitor_rounds(wp.hub.monitor, 10)
            assert wp.pids == [pid] and wp.stats().recycles == {}
            health = wp.hub.monitor.latest[pid]
            assert health.rss is not None and health.rss > 256 << 20
            assert health.private_rss is not None and health.private_rss < 64 << 20

    try:
        run(main)
    finally:
        del big


@pytest.mark.timeout(30)
def test_given_max_tasks_then_a_worker_takes_no_call_past_it():
    """Given max_tasks=3 and a monitor that never looks (an hour's interval), when 12 calls
    run one after another, then no worker finished more than 3 of them: the limit is
    checked as each call ends, not at the next monitor round."""

    async def main():
        limits = wool_local.WorkerLimits.unlimited(max_tasks=3)
        async with wool_local.WorkerPool(spawn=1, limits=limits, monitor_interval=3600) as wp:
            pids = [await slow(0) for _ in range(12)]
            counts = {pid: pids.count(pid) for pid in set(pids)}
            assert max(counts.values()) <= 3, counts
            assert wp.stats().recycles.get("tasks", 0) >= 3

    run(main)
