"""Per-dispatch objects are freed by reference counting alone (no cycles for the GC)."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

import wool_local
from tests import routines as r
from tests.helpers import cancel_midway, run
from wool_local.workers.dispatch import Pending


def _count(kind: type) -> int:
    return sum(1 for o in gc.get_objects() if type(o) is kind)


def _finished_futures() -> int:
    """Completed futures and tasks still in memory (live ones, like a timer's, are fine)."""
    return sum(1 for o in gc.get_objects() if isinstance(o, asyncio.Future) and o.done())


@pytest.fixture
def no_cyclic_gc():
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_given_gc_disabled_when_a_dispatch_ends_then_its_session_is_freed_at_once(no_cyclic_gc):
    """Given a caller that keeps its own task handle, the hub's session object is freed by
    refcounting the moment the dispatch ends."""

    async def main():
        async with wool_local.WorkerPool(spawn=1) as wp:
            await r.square(1)
            handle = asyncio.ensure_future(r.square(2))
            await asyncio.sleep(0)  # let it submit
            (session,) = wp.hub.outstanding.values()
            session_ref = weakref.ref(session)
            del session
            assert await handle == 4
            assert session_ref() is None
            assert handle.done()  # the caller's handle is still alive

    run(main)


def test_given_gc_disabled_when_many_dispatches_end_then_nothing_accumulates(no_cyclic_gc):
    """Given 1,000 sequential and 1,000 concurrent dispatches (some raising, some cancelled,
    some nested), no session, future or finished task stays behind, hub or worker side."""

    async def main():
        async with wool_local.WorkerPool(spawn=2) as wp:
            assert await asyncio.gather(*(r.gc_off() for _ in range(8))) == [False] * 8
            before = (_count(Pending), _finished_futures())
            # (try/except rather than pytest.raises: keeping exception info alive would
            # itself make cycles through the test's frames.)
            failures = 0
            for i in range(1000):
                try:
                    await (r.fail("x") if i % 10 == 0 else r.square(i))
                except ValueError:
                    failures += 1
            assert failures == 100

            calls = [r.square(i) for i in range(900)] + [r.nested_sum(3) for _ in range(50)]
            await asyncio.gather(*calls)
            assert all(await asyncio.gather(*(cancel_midway(r.square(1)) for _ in range(50))))
            assert [v async for v in r.countdown(3)] == [3, 2, 1]
            # A round trip to every worker: acknowledgements of the cancels come first.
            # One call per worker at a time (least-loaded first puts the pair on both
            # workers), so no call counts a sibling that finished in the same turn.
            leftovers = []
            for _ in range(4):
                leftovers += await asyncio.gather(
                    r.finished_tasks_alive(), r.finished_tasks_alive()
                )
            assert max(leftovers) == 0, leftovers

            def state():
                return [
                    (rid, p.target and p.target.pid, p.cancelled)
                    for rid, p in wp.hub.outstanding.items()
                ], [(h.pid, h.load, h.open, h.cancelling, h.stalled) for h in wp.hub.workers()]

            # Cancels are acknowledged asynchronously (and a worker with unanswered
            # cancels gets no new calls): wait, bounded, for the last answers.
            try:
                async with asyncio.timeout(5):
                    await wp.hub.drained()
            except TimeoutError:
                raise AssertionError(f"requests never answered: {state()}") from None
            # Nothing accumulated over 2,000 dispatches (a timer's or an event's own
            # future may come and go: a couple of either way is not a leak).
            assert _count(Pending) == before[0] == 0
            assert _finished_futures() <= before[1] + 2

    run(main)
