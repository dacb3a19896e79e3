"""Soak: sustained load with the cyclic GC off; live objects and the hub's memory stay flat."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
from pathlib import Path

import psutil
import pytest

import wool_local
from tests import routines as r
from tests.helpers import run
from wool_local.workers.dispatch import Pending


def _live() -> tuple[int, int, int]:
    objs = gc.get_objects()
    return (
        sum(1 for o in objs if type(o) is Pending),
        sum(1 for o in objs if isinstance(o, asyncio.Future) and o.done()),
        len(asyncio.all_tasks()),
    )


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_given_100k_dispatches_with_gc_off_then_objects_and_rss_stay_flat():
    """Given 100,000 dispatches in windows of 5,000 with the cyclic GC disabled, the count
    of sessions, finished futures and tasks returns to its baseline after every window and
    the hub's RSS grows by less than 16 MiB from the second window to the last."""
    me = psutil.Process()
    gc.collect()
    gc.disable()
    try:

        async def main():
            async with wool_local.WorkerPool(spawn=2):
                await asyncio.gather(*(r.gc_off() for _ in range(4)))
                baseline = None
                rss = []
                for window in range(20):
                    await asyncio.gather(*(r.square(i) for i in range(5000)))
                    # One loop turn, so the step that resumed us has let go of the
                    # finished gather (and its 5,000 tasks) before we count.
                    await asyncio.sleep(0)
                    live = _live()
                    if baseline is None:
                        baseline = live
                        assert live[0] == 0 and live[1] <= 2, live
                    # No session left, and no growth beyond a couple of futures or
                    # tasks of the loop's own that come and go.
                    assert live[0] == 0, (window, live)
                    assert live[1] <= baseline[1] + 2 and live[2] <= baseline[2] + 2, (
                        window,
                        live,
                        baseline,
                    )
                    rss.append(me.memory_info().rss)
                assert rss[-1] - rss[1] < 16 << 20, [x >> 20 for x in rss]
                pair = await asyncio.gather(r.finished_tasks_alive(), r.finished_tasks_alive())
                assert max(pair) == 0

        run(main)
    finally:
        gc.enable()


# The mixed soak lives in scripts/bench_soak.py (also a benchmark); imported before any pool
# forks, so that the workers know its routines.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import bench_soak  # noqa: E402

#: Dispatches of the mixed soak here (the script's default is 1,000,000).
SOAK_DISPATCHES = int(os.environ.get("WOOL_SOAK_DISPATCHES", "50000"))


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("dispatches", [SOAK_DISPATCHES])
def test_given_a_mixed_soak_with_recycling_then_every_call_ends_right_and_nothing_is_left(
    dispatches,
):
    """Given ``dispatches`` dispatches mixing successes, exceptions, cancellations, timeouts,
    streams read to the end or closed early and nested calls, on 2 workers recycled every
    1,000 tasks, every call ends as it should, the workers were recycled and none crashed,
    the leases are back at what they were after the first window, and once the pool stops
    the hub's descriptors, threads, tasks, children and the /dev/shm entries of the hub and
    of every worker are back at their baseline; the hub's RSS grows by less than 32 MiB."""
    result = run(
        lambda: bench_soak.soak(dispatches, workers=2, max_tasks=1000, window=2000),
        timeout=240,
    )
    print(
        f"\nsoak: {result.dispatches:,} dispatches in {result.seconds:.1f} s "
        f"({result.rate:,.0f}/s), hub RSS {result.rss_growth:+.1f} MiB, "
        f"recycles {result.recycles}, workers {len(result.workers_seen)}"
    )
    assert not result.unexpected, result.unexpected.most_common(5)
    assert set(result.outcomes) == set(bench_soak.MIX), result.outcomes
    assert result.dispatches >= dispatches
    assert result.recycles.get("tasks", 0) >= 2, result.recycles
    assert result.crashes == 0
    assert not result.leftovers(), result.leftovers()
    assert result.rss_growth < 32, result.rss
