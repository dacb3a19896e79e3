"""Streams prefetch while their caller only pulls, and keep lock-step semantics otherwise."""

from __future__ import annotations

import asyncio
import os

import pytest

import wool_local
from tests import routines as r
from tests.helpers import Pipe, run


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
    """Yields n items, then waits forever; b"f" from its finally."""
    try:
        for i in range(n):
            yield i
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


@pytest.mark.timeout(30)
def test_given_a_caller_that_only_pulls_then_the_worker_runs_ahead_within_a_window():
    """Given a stream whose caller pulls two items and then does nothing, then the worker
    goes on yielding without being asked (prefetch), but no further than the window; the
    caller then gets every item in order, and the generator's finally runs at the end."""
    pipe = Pipe()

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

    try:
        run(main)
    finally:
        pipe.close()


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
def test_given_a_prefetching_stream_left_early_then_its_finally_runs_and_nobody_is_killed():
    """Given a caller that breaks out of a prefetching stream (the worker is running
    ahead), then the remote generator's finally runs, no worker is killed, and the
    worker's counts come back to zero."""
    pipe = Pipe()

    async def main():
        async with wool_local.WorkerPool(spawn=1, cancel_grace=20) as wp:
            gen = counted(pipe.w, 10**9)
            async for item in gen:
                if item == 500:
                    break
            await gen.aclose()
            await _read_until(pipe, lambda s: b"f" in s)
            async with asyncio.timeout(10):
                await wp.hub.drained()
            (handle,) = wp.hub.workers()
            assert _quiet(handle) == (0, 0, 0)
            assert wp.hub.crashes == 0

    try:
        run(main)
    finally:
        pipe.close()


@pytest.mark.timeout(30)
def test_given_a_prefetching_stream_cancelled_while_waiting_then_its_finally_runs():
    """Given a caller waiting on a prefetching stream whose generator then waits forever,
    when the caller's task is cancelled, then the remote generator's finally runs and
    the worker's counts come back to zero, with no kill."""
    pipe = Pipe()

    async def main():
        async with wool_local.WorkerPool(spawn=1, cancel_grace=20) as wp:

            async def consume():
                async for _ in stalls_after(pipe.w, 100):
                    pass

            task = asyncio.ensure_future(consume())
            async with asyncio.timeout(10):
                while wp.hub.workers()[0].load < 1 or task.done():
                    await asyncio.sleep(0.005)
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await _read_until(pipe, lambda s: b"f" in s)
            async with asyncio.timeout(10):
                await wp.hub.drained()
            (handle,) = wp.hub.workers()
            assert _quiet(handle) == (0, 0, 0)
            assert wp.hub.crashes == 0

    try:
        run(main)
    finally:
        pipe.close()


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
