"""Worker lifecycle: recycling on limits, warm loops, idle TTL, and what a recycle keeps."""

from __future__ import annotations

import asyncio
import logging

import pytest

import wool_local
from tests import routines as r
from tests.helpers import run

FAST = {"monitor_interval": 0.05}


async def until(pool, predicate, timeout=15.0):
    """Wait for membership changes (events from the pool) until ``predicate()`` holds."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await pool.changed()


def test_given_a_routine_leaking_memory_then_its_worker_is_recycled(caplog):
    """Given a worker whose private memory passes max_rss, it is replaced and the log says why."""
    limits = wool_local.WorkerLimits(max_rss="96MiB")

    async def main():
        async with wool_local.WorkerPool(spawn=1, limits=limits, **FAST) as wp:
            leaker = await r.hoard(128)
            await until(wp.hub, lambda: leaker not in wp.pids and wp.pids)
            assert wp.stats().recycles == {"memory": 1}
            assert await r.whoami() != leaker

    with caplog.at_level(logging.INFO, logger="wool_local"):
        run(main)
    assert any("memory above max_rss" in m and "MiB" in m for m in caplog.messages)


def test_given_a_routine_leaking_fds_then_its_worker_is_recycled():
    """Given a worker whose open files pass max_fds, it is replaced."""
    limits = wool_local.WorkerLimits(max_fds=64)

    async def main():
        async with wool_local.WorkerPool(spawn=1, limits=limits, **FAST) as wp:
            leaker = await r.leak_fds(80)
            await until(wp.hub, lambda: leaker not in wp.pids and wp.pids)
            assert wp.stats().recycles == {"fds": 1}

    run(main)


def test_given_short_max_age_under_load_then_staggered_recycles_lose_and_repeat_nothing(tmp_path):
    """Given max_age=0.3s while 600 calls run, workers are replaced one at a time, capacity
    holds, and every call runs exactly once."""
    log = str(tmp_path / "runs")
    limits = wool_local.WorkerLimits(max_age="0.3s")

    async def main():
        async with wool_local.WorkerPool(spawn=2, limits=limits, **FAST) as wp:
            pool = wp.hub
            low_water = []

            async def one(i):
                low_water.append(pool.serving_count() + pool.spawning)
                return await r.record(log, i)

            results = []
            for batch in range(6):
                results += await asyncio.gather(*(one(100 * batch + i) for i in range(100)))
                await asyncio.sleep(0.1)  # let time pass: age is the point
            assert results == list(range(600))
            assert wp.stats().recycles.get("age", 0) >= 2
            assert min(low_water) >= 2  # a replacement is forked before a worker retires

    run(main)
    with open(log) as f:
        assert sorted(int(line) for line in f) == list(range(600))


def test_given_max_tasks_then_workers_are_replaced_and_no_call_is_lost_or_repeated(tmp_path):
    """Given max_tasks=50, 400 calls force recycles; each call still runs exactly once."""
    log = str(tmp_path / "runs")
    limits = wool_local.WorkerLimits(max_tasks=50)

    async def main():
        async with wool_local.WorkerPool(spawn=2, limits=limits, **FAST) as wp:
            pool = wp.hub
            for batch in range(8):
                await asyncio.gather(*(r.record(log, 50 * batch + i) for i in range(50)))
                pool.monitor.sample_now()  # a monitor round now: limits are applied
                # Recycles are staggered: let this one finish (its worker exit) before
                # the next round, or that round may not retire anything.
                while any(h.retiring for h in pool.workers()):
                    await pool.changed()
            assert wp.stats().recycles.get("tasks", 0) >= 2

    run(main)
    with open(log) as f:
        assert sorted(int(line) for line in f) == list(range(400))


def test_given_sequential_dispatches_then_same_worker_loop_and_thread():
    """Given two dispatches in a row on one worker, they share pid, loop and thread."""

    async def main():
        async with wool_local.WorkerPool(spawn=1):
            assert await r.fingerprint() == await r.fingerprint()

    run(main)


@pytest.mark.parametrize("min_workers", [0, 1])
def test_given_idle_ttl_then_idle_workers_retire_to_min_and_come_back_on_demand(min_workers):
    """Given idle_ttl=0.2s, idle workers retire down to min_workers; a new call forks one."""
    limits = wool_local.WorkerLimits(idle_ttl="0.2s")

    async def main():
        async with wool_local.WorkerPool(
            spawn=2, limits=limits, min_workers=min_workers, **FAST
        ) as wp:
            assert await r.square(3) == 9
            await until(wp.hub, lambda: len(wp.pids) == min_workers)
            loop = asyncio.get_running_loop()
            started = loop.time()
            assert await r.square(4) == 16  # forks a worker if none is left
            back_in = loop.time() - started
            assert len(wp.pids) >= 1
            assert wp.stats().recycles.get("idle", 0) == 2 - min_workers
            print(f"first call after idle retirement took {back_in * 1e3:.1f} ms")

    run(main)


def test_given_pool_stats_then_health_per_worker_and_totals():
    """Given a running pool, stats() reports each worker's readings and the totals."""

    async def main():
        async with wool_local.WorkerPool(spawn=2, **FAST) as wp:
            await asyncio.gather(*(r.square(i) for i in range(100)))
            wp.hub.monitor.sample_now()  # take a reading now rather than wait for a round
            stats = wp.stats()
            assert stats.size == 2 and stats.completed == 100 and stats.crashes == 0
            assert {w.pid for w in stats.workers} == set(wp.pids)
            for w in stats.workers:
                assert w.rss and w.private_rss and w.fds and w.age is not None
                assert w.inflight == 0
            assert sum(w.tasks_completed for w in stats.workers) == 100

    run(main)


def test_given_a_stream_open_when_its_worker_is_recycled_then_the_stream_finishes():
    """Given an async generator mid-stream on a worker marked for recycling, the stream
    runs to its end on that worker, and the worker retires after."""
    limits = wool_local.WorkerLimits(max_tasks=1)

    async def main():
        async with wool_local.WorkerPool(spawn=1, limits=limits, **FAST) as wp:
            stream = r.countdown(5)
            first = await stream.__anext__()
            (pid,) = wp.pids
            await r.square(2)  # another task done: max_tasks is passed
            await until(wp.hub, lambda: wp.hub.worker(pid).retiring is not None)
            rest = [v async for v in stream]
            assert [first, *rest] == [5, 4, 3, 2, 1]
            await until(wp.hub, lambda: pid not in wp.pids and wp.pids)

    run(main)


def test_given_a_normal_stop_then_nothing_is_logged_at_warning_or_above(caplog):
    """Given a pool that worked and stops while workers are warm, the stop is silent."""

    async def main():
        async with wool_local.WorkerPool(spawn=2, limits=wool_local.WorkerLimits(idle_ttl="1h")):
            await asyncio.gather(*(r.square(i) for i in range(50)))

    with caplog.at_level(logging.WARNING):
        run(main)
    assert [rec for rec in caplog.records if rec.levelno >= logging.WARNING] == []


def test_given_an_exit_hook_then_only_the_worker_that_registered_it_calls_it(tmp_path):
    """Given a routine that registers an exit hook in its worker, then starts a pool
    of its own there (whose worker is forked with the hook list) and stops it
    When the outer pool stops too
    Then the hook ran once, in the worker that registered it, when it stopped; not
    in the nested pool's worker when that one stopped."""
    path = tmp_path / "exits.txt"

    async def main():
        async with wool_local.WorkerPool(1):
            outer, inner = await r.note_exit_then_nest(str(path))
            assert outer != inner
            assert not path.exists()  # the nested worker has stopped: nothing written
        return outer

    outer = run(main)
    assert path.read_text().split() == [str(outer)]
