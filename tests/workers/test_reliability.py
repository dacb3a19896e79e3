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
def test_given_the_zygote_killed_then_calls_in_flight_fail_at_once_and_the_pool_serves_on(pipe):
    """Given two calls parked on two workers, when an operator SIGKILLs the pool's zygote
    (its workers die with it), then both calls fail with WorkerCrashed within a second,
    the hub forks a new zygote, and the next calls succeed on new workers."""

    async def main():
        async with wool_local.WorkerPool(spawn=2) as wp:
            hub = wp.hub
            old_zygote, old_pids = hub.zygote_pid, set(wp.pids)
            calls = [asyncio.ensure_future(park(pipe.w)) for _ in range(2)]
            seen = b""
            while len(seen) < 2:
                seen += await pipe.read()
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

    run(main)


@wool_local.routine
async def numbers(n: int):
    for i in range(n):
        yield os.getpid() if i == 0 else i


@pytest.mark.timeout(30)
def test_given_a_worker_killed_between_generator_steps_then_the_next_step_raises_worker_crashed():
    """Given a stream that yielded once and is idle, when its worker is SIGKILLed, then the
    caller's next step raises WorkerCrashed (not a protocol error), and the pool serves on."""

    async def main():
        async with wool_local.WorkerPool(spawn=1) as wp:
            stream = numbers(5)
            worker = await stream.__anext__()
            os.kill(worker, signal.SIGKILL)
            while worker in wp.pids:
                await wp.hub.changed()
            with pytest.raises(wool_local.WorkerCrashed, match=f"process {worker} killed"):
                await stream.__anext__()
            assert await add(1, 1) == 2

    run(main)


def test_given_nested_pools_exited_out_of_order_then_the_inner_pool_still_serves():
    """Given pool B entered inside pool A's block, when A exits first (tasks leaving in
    any order), then routines keep dispatching to B until B exits, and afterwards no
    pool is bound."""

    async def main():
        a, b = wool_local.WorkerPool(spawn=1), wool_local.WorkerPool(spawn=1)
        await a.__aenter__()
        await b.__aenter__()
        b_pids = set(b.pids)
        await a.__aexit__(None, None, None)
        assert await pid() in b_pids
        await b.__aexit__(None, None, None)
        with pytest.raises(wool_local.NoPoolError):
            await add(1, 2)

    run(main)


def test_given_nested_pools_exited_in_order_then_the_outer_pool_is_bound_again():
    """Given pool B entered inside pool A's block, when B exits, then routines dispatch to A
    again."""

    async def main():
        async with wool_local.WorkerPool(spawn=1) as a:
            async with wool_local.WorkerPool(spawn=1) as b:
                assert await pid() in b.pids
            assert await pid() in a.pids

    run(main)


@wool_local.routine
async def ticker(started_fd: int):
    os.write(started_fd, b"s")
    while True:
        yield 1
        await asyncio.sleep(0.01)


@wool_local.routine
async def block(started_fd: int, seconds: float) -> None:
    os.write(started_fd, b"s")
    time.sleep(seconds)


@pytest.mark.timeout(30)
def test_given_calls_in_flight_when_the_pool_exits_then_callers_get_pool_closed(pipe):
    """Given ten parked calls and a stream between steps, when the block exits, then every
    caller (none of them cancelled anything) gets PoolClosed, not CancelledError."""

    async def main():
        async with wool_local.WorkerPool(spawn=2):
            calls = [asyncio.ensure_future(park(pipe.w)) for _ in range(10)]
            stream = ticker(pipe.w)
            assert await stream.__anext__() == 1
            seen = b""
            while len(seen) < 11:
                seen += await pipe.read()
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        assert all(isinstance(o, wool_local.PoolClosed) for o in outcomes), outcomes
        with pytest.raises(wool_local.PoolClosed):
            await stream.__anext__()

    run(main)


@pytest.mark.timeout(30)
def test_given_a_blocking_call_when_the_pool_exits_then_exit_takes_the_stop_timeout(caplog, pipe):
    """Given a call blocking its worker's loop for 20 s, when the block exits with
    stop_timeout=0.5, then the exit takes about that long (the worker is killed), the
    caller gets PoolClosed, and the log names the worker that kept its lease."""

    async def main():
        async with wool_local.WorkerPool(spawn=1, stop_timeout=0.5) as wp:
            (worker,) = wp.pids
            call = asyncio.ensure_future(block(pipe.w, 20))
            await pipe.read()
            start = time.monotonic()
        assert time.monotonic() - start < 2.0
        with pytest.raises(wool_local.PoolClosed):
            await call
        return worker

    worker = run(main)
    killed = [r.getMessage() for r in caplog.records if "stop_timeout" in r.getMessage()]
    assert any("it was running block" in m for m in killed), killed
    held = [r.getMessage() for r in caplog.records if "still held" in r.getMessage()]
    assert len(held) == 1 and f"process {worker} holds 1" in held[0]


@wool_local.routine
async def count_to(n: int):
    for i in range(n):
        yield i


@pytest.mark.timeout(30)
def test_given_a_thread_with_its_own_loop_then_its_calls_are_served_and_the_pool_stays_sound():
    """Given a pool, when a thread running its own event loop (with the pool's context)
    calls a routine and iterates a stream first, then its calls return, and the 20 calls
    the owning loop makes afterwards all succeed."""

    async def in_thread():
        return await add(20, 22), [i async for i in count_to(3)]

    async def main():
        async with wool_local.WorkerPool(spawn=2):
            assert await asyncio.to_thread(asyncio.run, in_thread()) == (42, [0, 1, 2])
            assert await asyncio.gather(*(add(i, 1) for i in range(20))) == list(range(1, 21))

    run(main)


@wool_local.routine
async def block_later(fd: int, after: float, seconds: float) -> None:
    """Let the loop run for ``after`` seconds, then say so and block it."""
    await asyncio.sleep(after)
    os.write(fd, b"b")
    time.sleep(seconds)


async def _read_bytes(pipe: Pipe, n: int) -> bytes:
    seen = b""
    while len(seen) < n:
        seen += await pipe.read()
    return seen


async def _served_promptly() -> None:
    """100 calls sent at once all come back right, within 1.5 s (well under the 3 s the
    blocked worker in these tests stays blocked)."""
    start = time.monotonic()
    assert await asyncio.gather(*(add(i, 0) for i in range(100))) == list(range(100))
    assert time.monotonic() - start < 1.5


@pytest.mark.timeout(30)
def test_given_a_worker_that_blocks_after_its_calls_started_then_new_calls_go_elsewhere(pipe):
    """Given a worker whose calls have all started and one of which then blocks its loop
    for 3 s, when 100 new calls arrive, then none waits for it: all finish well before
    the block ends, on the other worker."""

    async def main():
        async with wool_local.WorkerPool(spawn=2):
            blocker = asyncio.ensure_future(block_later(pipe.w, 0.2, 3))  # worker 1
            other = asyncio.ensure_future(park(pipe.w))  # worker 2 (idle loop)
            parked = asyncio.ensure_future(park(pipe.w))  # worker 1, started
            assert sorted(await _read_bytes(pipe, 3)) == sorted(b"ssb")
            await _served_promptly()
            assert not blocker.done()
            await blocker
            for call in (other, parked):
                call.cancel()
            await asyncio.gather(other, parked, return_exceptions=True)

    run(main)


@wool_local.routine
async def stubborn(fd: int, seconds: float) -> None:
    """Block the loop, ignoring cancellation, for ``seconds``."""
    os.write(fd, b"b")
    time.sleep(seconds)


@pytest.mark.timeout(30)
def test_given_a_call_that_ignores_cancellation_then_only_calls_running_beside_it_fail(pipe):
    """Given a call that blocks its worker's loop and ignores cancellation, a call running
    beside it, and 40 calls sent after it blocked, when its caller times out and the
    worker is killed after cancel_grace, then the 40 calls succeed, and the call running
    beside it fails with WorkerCrashed saying another call's escalation killed it."""

    async def main():
        async with wool_local.WorkerPool(spawn=2, cancel_grace=0.3) as wp:
            beside = asyncio.ensure_future(park(pipe.w))  # worker 1
            elsewhere = asyncio.ensure_future(park(pipe.w))  # worker 2
            await _read_bytes(pipe, 2)
            hog = asyncio.ensure_future(stubborn(pipe.w, 10))  # worker 1
            await _read_bytes(pipe, 1)
            late = [asyncio.ensure_future(add(i, 1)) for i in range(40)]
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(hog, 0.05)
            assert await asyncio.gather(*late) == list(range(1, 41))
            with pytest.raises(wool_local.WorkerCrashed, match="another call on it, stubborn"):
                await beside
            assert wp.hub.crashes == 1
            elsewhere.cancel()
            await asyncio.gather(elsewhere, return_exceptions=True)

    run(main)


def _slow_rebuild(fd: int, seconds: float) -> int:
    os.write(fd, b"b")
    time.sleep(seconds)
    return seconds


class SlowToUnpickle:
    """An argument whose unpickling, in the worker, blocks for ``seconds``."""

    def __init__(self, fd: int, seconds: float) -> None:
        self.fd, self.seconds = fd, seconds

    def __reduce__(self):
        return (_slow_rebuild, (self.fd, self.seconds))


@wool_local.routine
async def repeat(value, times: int):
    for _ in range(times):
        yield value


@pytest.mark.timeout(30)
def test_given_a_stream_argument_that_blocks_while_unpickling_then_other_calls_go_elsewhere(pipe):
    """Given a stream whose argument blocks its worker for 3 s while being unpickled, when
    100 calls are made as it blocks, then all of them finish well before it unblocks."""

    async def main():
        async with wool_local.WorkerPool(spawn=2):
            stream = repeat(SlowToUnpickle(pipe.w, 3), 2)
            first = asyncio.ensure_future(stream.__anext__())
            await _read_bytes(pipe, 1)
            await _served_promptly()
            assert await first == 3
            assert [x async for x in stream] == [3]

    run(main)


@wool_local.routine
async def garbage_after(fd: int, seconds: float) -> str:
    """Say so, block the loop for ``seconds``, then answer in frames no decoder accepts."""
    from wool_local.workers import protocol

    os.write(fd, b"b")
    time.sleep(seconds)
    protocol.encode = lambda message, buffers=(): b"\xc1 not a frame"
    protocol.encode_body = lambda message: b"\xc1"
    return "never seen"


@pytest.mark.timeout(30)
def test_given_a_stopping_worker_whose_channel_is_corrupt_then_it_is_killed(pipe):
    """Given a worker told to stop while its call runs, when it answers in corrupt frames,
    then the hub kills it (corruption is no orderly close) and the call fails with
    WorkerCrashed naming the failed channel."""

    async def main():
        async with wool_local.WorkerPool(spawn=2) as wp:
            call = asyncio.ensure_future(garbage_after(pipe.w, 0.3))
            await _read_bytes(pipe, 1)
            (handle,) = [h for h in wp.hub.workers() if h.load]
            wp.hub.stop_worker(handle)
            with pytest.raises(wool_local.WorkerCrashed, match="channel failed"):
                await call
            assert await add(1, 2) == 3

    run(main)


def test_given_a_stream_started_after_its_pool_closed_then_it_raises_and_leaves_nothing():
    """Given a stream made inside the block and first pulled after the pool closed, the
    pull raises PoolClosed and the hub keeps no request for it."""

    async def main():
        async with wool_local.WorkerPool(spawn=1) as wp:
            hub = wp.hub
            stream = count_to(3)
        with pytest.raises(wool_local.PoolClosed):
            await stream.__anext__()
        assert not hub.outstanding

    run(main)
