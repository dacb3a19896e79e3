"""Streams prefetch while their caller only pulls, and keep lock-step semantics otherwise."""

from __future__ import annotations

import asyncio
import os

import pytest

import wool_local
from tests import routines as r
from tests.helpers import Pipe, replies_on, run
from wool_local.ipc import Channel
from wool_local.workers import payload
from wool_local.workers.dispatch import Dispatcher, Target
from wool_local.workers.protocol import (
    CANCELLED,
    GENERATOR,
    NEXT,
    YIELDED,
    Call,
    Cancel,
    Reply,
    Step,
)
from wool_local.workers.worker import WorkerService


@wool_local.routine
async def counted(fd: int, n: int):
    """Yields 0..n-1, writing a byte to ``fd`` as it yields each (so a test sees how far
    it ran), and b"f" from its finally."""
    try:
        for i in range(n):
            os.write(fd, b".")
            yield i
    finally:
        os.write(fd, b"f")


@wool_local.routine
async def echo_sends(n: int):
    """Yields 0..n-1; a value sent in is yielded back, tagged, before going on."""
    for i in range(n):
        got = yield i
        while got is not None:
            got = yield ("got", got)


@wool_local.routine
async def trail_each(n: int):
    """Sets ``trail`` to i before yielding i."""
    for i in range(n):
        r.trail.set(i)
        yield i


@wool_local.routine
async def stalls_after(fd: int, n: int):
    """Yields n items, then says b"s" and waits forever; b"f" from its finally."""
    try:
        for i in range(n):
            yield i
        os.write(fd, b"s")
        await asyncio.sleep(3600)
        yield n
    finally:
        os.write(fd, b"f")


async def _read_until(pipe: Pipe, pred) -> bytes:
    seen = b""
    while not pred(seen):
        seen += await pipe.read()
    return seen


def _quiet(handle) -> tuple[int, int, int]:
    return handle.load, handle.open, handle.cancelling


async def _closed_without_a_kill(pipe: Pipe, wp: wool_local.WorkerPool) -> None:
    """Wait until the remote generator's finally ran and the hub has every answer; then
    the worker's counts are back to zero and no worker was killed."""
    await _read_until(pipe, lambda s: b"f" in s)
    async with asyncio.timeout(10):
        await wp.hub.drained()
    (handle,) = wp.hub.workers()
    assert _quiet(handle) == (0, 0, 0)
    assert wp.hub.crashes == 0


@pytest.mark.timeout(30)
def test_given_a_caller_that_only_pulls_then_the_worker_runs_ahead_within_a_window(pipe):
    """Given a stream whose caller pulls two items and then does nothing, then the worker
    goes on yielding without being asked (prefetch), but no further than the window; the
    caller then gets every item in order, and the generator's finally runs at the end."""

    async def main():
        async with wool_local.WorkerPool(spawn=1) as wp:
            gen = counted(pipe.w, 5000)
            assert [await gen.__anext__(), await gen.__anext__()] == [0, 1]
            seen = await _read_until(pipe, lambda s: s.count(b".") >= 20)
            assert seen.count(b".") >= 20  # ran ahead of the 2 items pulled
            got = [0, 1] + [item async for item in gen]
            assert got == list(range(5000))
            assert (await _read_until(pipe, lambda s: b"f" in s)).endswith(b"f")
            (handle,) = wp.hub.workers()
            assert _quiet(handle) == (0, 0, 0)

    run(main)


@pytest.mark.timeout(30)
def test_given_a_prefetching_stream_then_an_asend_loses_nothing_and_reorders_nothing():
    """Given a stream that prefetched (the caller pulled 10 items), when the caller sends a
    value, then the items the worker yielded ahead come first, in order, then the
    generator's answer to the value; nothing is lost, and later pulls go lock-step."""

    async def main():
        async with wool_local.WorkerPool(spawn=1) as wp:
            gen = echo_sends(300)
            got = [await gen.__anext__() for _ in range(10)]
            got.append(await gen.asend("x"))
            got += [item async for item in gen]
            numbers = [g for g in got if not isinstance(g, tuple)]
            assert numbers == list(range(300))
            assert got.count(("got", "x")) == 1
            where = got.index(("got", "x"))
            assert where >= 10  # after what was pulled before the send
            (handle,) = wp.hub.workers()
            assert _quiet(handle) == (0, 0, 0)

    run(main)


@pytest.mark.timeout(30)
def test_given_a_prefetching_stream_then_each_item_brings_back_its_own_context():
    """Given a generator that sets a context variable before each yield, when the caller
    pulls 2,000 items (prefetched), then at each item the caller sees the value the
    generator had set when it yielded that item, not a later one."""

    async def main():
        async with wool_local.WorkerPool(spawn=1):
            async for i in trail_each(2000):
                assert r.trail.get() == i

    run(main)


@pytest.mark.timeout(30)
def test_given_a_caller_that_changes_a_variable_then_the_stream_goes_lock_step():
    """Given a stream whose caller sets a context variable between its first pulls, then
    the generator sees each change at the next step, as without prefetch."""

    async def main():
        async with wool_local.WorkerPool(spawn=1):
            r.request_id.set("a")
            gen = r.stream_vars(50)
            assert await gen.__anext__() == "a"
            for i in range(1, 40):
                r.request_id.set(f"v{i}")
                assert await gen.__anext__() == f"v{i}"
            await gen.aclose()

    run(main)


@pytest.mark.timeout(30)
def test_given_a_prefetching_stream_left_early_then_its_finally_runs_and_nobody_is_killed(pipe):
    """Given a caller that breaks out of a prefetching stream (the worker is running
    ahead), then the remote generator's finally runs, no worker is killed, and the
    worker's counts come back to zero."""

    async def main():
        async with wool_local.WorkerPool(spawn=1, cancel_grace=20) as wp:
            gen = counted(pipe.w, 10**9)
            async for item in gen:
                if item == 500:
                    break
            await gen.aclose()
            await _closed_without_a_kill(pipe, wp)

    run(main)


@pytest.mark.timeout(30)
def test_given_a_prefetching_stream_cancelled_while_waiting_then_its_finally_runs(pipe):
    """Given a caller waiting on a prefetching stream whose generator then waits forever,
    when the caller's task is cancelled, then the remote generator's finally runs and
    the worker's counts come back to zero, with no kill."""

    async def main():
        async with wool_local.WorkerPool(spawn=1, cancel_grace=20) as wp:

            async def consume():
                async for _ in stalls_after(pipe.w, 100):
                    pass

            task = asyncio.ensure_future(consume())
            await _read_until(pipe, lambda s: b"s" in s)  # the generator waits now
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await _closed_without_a_kill(pipe, wp)

    run(main)


@pytest.mark.timeout(30)
def test_given_a_stream_that_ends_inside_its_window_then_the_worker_load_is_zero():
    """Given a prefetching stream whose generator ends long before the window it was
    granted, then no step stays counted against the worker (its load is back to 0)."""

    async def main():
        async with wool_local.WorkerPool(spawn=1) as wp:
            for n in (2, 3, 10):
                assert [i async for i in r.countdown(n)] == list(range(n, 0, -1))
                (handle,) = wp.hub.workers()
                assert _quiet(handle) == (0, 0, 0)

    run(main)


@wool_local.routine
async def reads_tags(n: int):
    """Yields the list in ``tags`` as it sees it, n times."""
    for _ in range(n):
        yield list(r.trail.get([]))


@pytest.mark.timeout(30)
def test_given_another_task_with_other_values_then_the_generator_sees_them():
    """Given a prefetching stream whose generator sets a variable at each item, when
    another task, whose context holds another value of a second variable set before the
    stream's last pull (nothing is set meanwhile), pulls the rest, then the generator
    sees that task's value at its next step, after the items it yielded ahead."""

    async def main():
        async with wool_local.WorkerPool(spawn=1):
            r.request_id.set("mine")
            gen = r.stream_vars(2000)
            go = asyncio.get_running_loop().create_future()

            async def pull_elsewhere():
                r.request_id.set("other")  # in this task's own context
                await go
                return [item async for item in gen]

            task = asyncio.ensure_future(pull_elsewhere())
            await asyncio.sleep(0)  # it has set its value
            assert [await gen.__anext__() for _ in range(3)] == ["mine"] * 3
            go.set_result(None)
            rest = await task
            assert len(rest) == 1997
            assert "other" in rest
            first = rest.index("other")
            assert set(rest[:first]) == {"mine"} and set(rest[first:]) == {"other"}

    run(main)


@pytest.mark.timeout(30)
def test_given_a_value_mutated_in_place_and_set_again_then_the_generator_sees_it():
    """Given a prefetching stream and a variable holding a list, when the caller appends
    to the list and sets the variable again to the same list, then the generator sees
    the appended item at its next step (items yielded ahead saw the list as it was)."""

    async def main():
        async with wool_local.WorkerPool(spawn=1):
            tags = ["a"]
            r.trail.set(tags)
            gen = reads_tags(3000)
            assert [await gen.__anext__() for _ in range(3)] == [["a"]] * 3
            tags.append("b")
            r.trail.set(tags)
            rest = [item async for item in gen]
            assert len(rest) == 2997
            assert ["a", "b"] in rest
            first = rest.index(["a", "b"])
            assert all(x == ["a"] for x in rest[:first])
            assert all(x == ["a", "b"] for x in rest[first:])

    run(main)


async def plain_countdown(n: int):
    """n, n - 1, ..., 1 (a plain async generator: the worker service runs it as sent)."""
    while n:
        yield n
        n -= 1


@pytest.mark.timeout(30)
def test_given_a_cancel_for_a_session_whose_last_task_just_ended_then_it_is_answered():
    """Given a worker whose generator step task has just finished (its answer sent) but
    has not left the task table yet, when a Cancel for that session arrives, then the
    worker closes the session and answers CANCELLED, rather than cancelling the finished
    task and never answering."""
    chan = Channel.create(1 << 16)
    hub_end = chan.end(0)
    service = WorkerService(chan.end(1))

    async def main():
        definition = payload.dumps_callable(plain_countdown, lambda fn: True)
        fid = payload.callable_id(definition)
        data, _ = payload.dumps_args((5,), {}, plain_countdown)
        service.on_message(Call(7, fid, definition, data, GENERATOR), ())
        async with asyncio.timeout(5):
            while 7 in service.tasks:  # the first step is taken, and answered
                await asyncio.sleep(0)
        service.on_message(Step(7, NEXT), ())
        await asyncio.sleep(0)  # the step's task runs to its end; its done callback waits
        assert service.tasks[7].done()
        service.on_message(Cancel(7), ())
        async with asyncio.timeout(5):
            while service.tasks:  # the generator is closed in a task of its own
                await asyncio.sleep(0.001)
        assert 7 not in service.sessions

    try:
        run(main)
        replies = replies_on(hub_end)
    finally:
        service.link.end.discard()
        hub_end.discard()
    assert replies == [(7, YIELDED), (7, YIELDED), (7, CANCELLED)]


@pytest.mark.timeout(30)
def test_given_a_cancel_answered_after_every_step_owed_then_the_load_stays_exact():
    """Given a stream whose caller sent Cancel while 3 steps were owed, when those 3
    answers and then the final CANCELLED (for a session found idle) come, then the
    target's load is back to 0, not below."""

    class Hub(Dispatcher):
        def submit(self, pending):
            self.send_call(target, pending)

    class Quiet(Target):
        def send(self, message, buffers=()):
            pass

    target = Quiet()
    d = Hub(main_has=lambda fn: True, cancel_grace=1.0)
    fut = FakeFuture()
    pending = d.track(fut, Call(0, 1, None, b"", GENERATOR))
    d.fn_defs[1] = b""
    d.submit(pending)
    d.on_reply(Reply(pending.id, YIELDED, b"x"), ())
    d.send_step(target, Step(pending.id, NEXT, ahead=2), (), pending)
    assert (target.load, pending.owed) == (3, 3)
    pending.cancelled = True  # what cancel_remote marks (its Cancel is not needed here)
    target.cancelling += 1
    d.on_reply(Reply(pending.id, YIELDED, b"x", more=[b"y", b"z"]), ())
    d.on_reply(Reply(pending.id, CANCELLED), ())
    assert (target.load, target.open, target.cancelling) == (0, 0, 0)
    assert not d.outstanding


class FakeFuture:
    """Takes answers as a stream's future would."""

    def __init__(self):
        self.answers = []

    def done(self):
        return False

    def set_result(self, answer):
        self.answers.append(answer)

    def set_exception(self, exc):
        self.answers.append(exc)
