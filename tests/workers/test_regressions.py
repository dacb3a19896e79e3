"""Regressions: each test pins down a defect found in review, with the scenario that hit it."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

import wool_local
from tests import routines as r
from tests.helpers import Pipe, replies_on, run
from wool_local.ipc import Channel
from wool_local.workers import payload
from wool_local.workers.protocol import CANCELLED, Call, Cancel
from wool_local.workers.worker import WorkerService


def test_given_first_calls_of_a_routine_handed_back_then_later_calls_still_resolve_it():
    """Given the calls that carried a routine's definition handed back unstarted (the worker
    was blocked), the worker still has the definition: every later call succeeds."""

    async def main():
        async with wool_local.WorkerPool(spawn=1) as wp:
            results = await asyncio.gather(r.hog_cpu(0.5), r.triple(1), r.triple(2))
            assert results[1:] == [3, 6]
            assert await r.triple(3) == 9
            (handle,) = wp.hub.workers()
            assert (handle.load, handle.open, handle.cancelling) == (0, 0, 0)

    run(main)


def test_given_a_call_cancelled_while_queued_behind_a_blocked_task_then_it_never_runs(tmp_path):
    """Given a call cancelled while it waits behind a CPU hog, it never runs anywhere, the
    worker's counts come back to zero, and the pool keeps serving."""
    log = str(tmp_path / "runs")

    async def main():
        async with wool_local.WorkerPool(spawn=1, cancel_grace=2.0) as wp:
            await r.record(log, 0)  # the worker knows record
            hog = asyncio.ensure_future(r.hog_cpu(0.5))
            late = asyncio.ensure_future(r.record(log, 1))
            await asyncio.sleep(0)  # both sent
            late.cancel()
            assert isinstance(await hog, int)
            assert await r.record(log, 2) == 2
            (handle,) = wp.hub.workers()
            assert (handle.load, handle.open, handle.cancelling) == (0, 0, 0)
            assert wp.hub.crashes == 0

    run(main)
    with open(log) as f:
        assert sorted(int(line) for line in f) == [0, 2]


def test_given_a_stream_cancelled_as_its_step_was_answered_then_worker_closes_it_no_kill():
    """Given a caller that gives up on a generator step whose answer is already on its way,
    the worker closes the (now idle) generator, its finally runs, and nobody is killed."""
    started, done = Pipe(), Pipe()

    async def main():
        async with wool_local.WorkerPool(spawn=1, cancel_grace=1.0) as wp:
            gen = r.slow_ticks(started.w, done.w)
            assert await gen.__anext__() == 0
            step = asyncio.ensure_future(gen.__anext__())
            await started.read()
            time.sleep(0.2)  # the hub is busy: the step's answer arrives unread
            step.cancel()
            assert await done.read() == b"finally"
            async with asyncio.timeout(5):
                await wp.hub.drained()  # the worker acknowledged the cancel
            assert wp.hub.crashes == 0 and await r.square(2) == 4

    try:
        run(main)
    finally:
        started.close()
        done.close()


def test_given_the_hub_loop_busy_right_after_dispatching_then_no_call_hangs():
    """Given a hub too busy to read answers for 100 ms (more than the stall period), the
    workers are not taken for blocked, and every call completes."""

    async def main():
        async with wool_local.WorkerPool(spawn=2) as wp:
            await r.square(0)
            for _ in range(3):
                calls = [asyncio.ensure_future(r.square(i)) for i in range(8)]
                asyncio.get_running_loop().call_soon(time.sleep, 0.1)
                async with asyncio.timeout(10):
                    assert await asyncio.gather(*calls) == [i * i for i in range(8)]
            async with asyncio.timeout(10):
                await asyncio.gather(*(r.square(i) for i in range(10_000)))
            assert not any(h.stalled for h in wp.hub.workers())

    run(main)


def test_given_the_pool_left_while_a_worker_is_forking_then_exit_is_prompt():
    """Given the block left just as an on-demand worker is being forked, leaving does not
    wait for the stop timeout."""
    limits = wool_local.WorkerLimits(idle_ttl=0.2)

    async def main():
        async with wool_local.WorkerPool(spawn=1, limits=limits, monitor_interval=0.05) as wp:
            await r.square(1)
            async with asyncio.timeout(10):
                while wp.pids:
                    await wp.hub.changed()
            call = asyncio.ensure_future(r.square(2))
            await asyncio.sleep(0)
            assert wp.hub.spawning  # an on-demand fork is under way
            call.cancel()
            started = time.monotonic()
        return time.monotonic() - started

    assert run(main) < 2.0


def test_given_a_worker_answers_then_exits_then_the_call_its_answer_made_room_for_runs_elsewhere():
    """Given a worker that answers and exits while a call waits in the hub's queue (both
    workers full), the hub learns of the exit before reading the answer: the queued call
    goes to the surviving worker and succeeds; only nothing runs on the dead one."""

    async def main():
        async with wool_local.WorkerPool(spawn=2, max_inflight=1) as wp:
            await asyncio.gather(r.square(1), r.square(2))
            dying = asyncio.ensure_future(r.answer_then_exit(0.05))
            other = asyncio.ensure_future(r.nap(1.0))
            await asyncio.sleep(0)  # their first steps dispatch them
            assert sorted(h.load for h in wp.hub.workers()) == [1, 1]
            queued = asyncio.ensure_future(r.square(7))
            await asyncio.sleep(0)
            # Keep the hub's loop busy while the worker answers and exits, so the
            # answer is still unread when the exit report is handled.
            time.sleep(0.3)
            assert await queued == 49
            assert await dying == "answered"
            assert isinstance(await other, int)

    run(main)


def test_given_a_stream_that_cannot_start_then_the_worker_still_gives_its_lease_back():
    """Given a stream whose argument cannot be rebuilt in the worker, the caller gets the
    error, and once the worker is idle the lease table holds only the pool's own lease."""

    async def main():
        async with wool_local.WorkerPool(spawn=1) as wp:
            pool = wp.hub
            baseline = {pool.id: {os.getpid(): 1}}
            with pytest.raises(wool_local.UnpicklableError, match="cannot be rebuilt"):
                async for _ in r.one_item(r.RefusesWorkers()):
                    pass
            assert await r.square(3) == 9
            # The lease goes back in the worker once it is idle, visible only in the
            # shared table: poll it, bounded.
            async with asyncio.timeout(5):
                while pool.leases.snapshot() != baseline:
                    await asyncio.sleep(0.001)

    run(main)


def test_given_calls_cancelled_before_their_first_step_then_they_leave_no_task():
    """Given two calls whose tasks have not reached their first step when their Cancel is
    handled, one of them already handed back by the returner (its loop was blocked):
    both leave the worker's task table; the one still the worker's is answered
    CANCELLED, the handed-back one is not answered (the hub finishes it itself)."""
    chan = Channel.create(1 << 16)
    hub_end = chan.end(0)
    service = WorkerService(chan.end(1))

    async def main():
        definition = payload.dumps_callable(r.square, lambda fn: True)
        fid = payload.callable_id(definition)
        data, _ = payload.dumps_args((3,), {}, r.square)
        service.on_message(Call(7, fid, definition, data), ())
        service.on_message(Call(8, fid, None, data), ())
        assert service.gate.start(7)  # what the returner does under a blocked loop
        service.on_message(Cancel(7), ())
        service.on_message(Cancel(8), ())
        await asyncio.sleep(0)
        assert dict(service.tasks) == {}
        assert not service.gate.waiting

    try:
        run(main)
        replies = replies_on(hub_end)
    finally:
        service.link.end.discard()
        hub_end.discard()
    assert replies == [(8, CANCELLED)]


def test_given_a_run_of_short_cpu_bound_calls_sent_at_once_then_none_is_handed_back():
    """Given 2 workers and 40 calls of 20 ms of plain CPU work each, all in flight at once
    (max_inflight is larger), no worker is taken for blocked: each call starts well
    within the watchdog period of the one before, so none is handed back, and both
    workers take part."""

    async def main():
        async with wool_local.WorkerPool(spawn=2) as wp:
            pids = await asyncio.gather(*(r.hog_cpu(0.02) for _ in range(40)))
            assert len(set(pids)) == 2
            assert wp.stats().handed_back == 0

    run(main)


def test_given_a_worker_that_handed_calls_back_then_it_gets_one_call_at_a_time_until_it_keeps_up():
    """Given a worker whose loop a call blocks while three more wait behind it, the three
    are handed back and the worker is then sent one call at a time (so long calls stop
    being moved back and forth between workers); once it answers steadily again, it
    may have max_inflight calls in flight again."""
    started = Pipe()

    async def main():
        async with wool_local.WorkerPool(spawn=1) as wp:
            (handle,) = wp.hub.workers()
            blocker = asyncio.ensure_future(r.block_cpu(started.w, 0.4))
            await started.read()  # the worker's loop is blocked from here on
            queued = [asyncio.ensure_future(r.square(i)) for i in range(3)]
            assert await asyncio.gather(*queued) == [0, 1, 4]
            await blocker
            assert wp.stats().handed_back == 3
            assert handle.limit < wp.hub.options.max_inflight  # cut, not yet grown back
            await asyncio.gather(*(r.square(i) for i in range(2 * wp.hub.options.max_inflight)))
            assert handle.limit == wp.hub.options.max_inflight

    try:
        run(main)
    finally:
        started.close()
