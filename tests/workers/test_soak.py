"""Soak: sustained load with the cyclic GC off; live objects and the hub's memory stay flat."""

from __future__ import annotations

import asyncio
import gc

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
