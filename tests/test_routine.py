"""The contract users see: @routine, WorkerPool, results, errors, streams, cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import traceback

import pytest

import wool_local
from tests import routines as r
from tests.helpers import Pipe, run


def test_given_plain_def_when_decorated_then_type_error_at_decoration():
    """Given a non-async function, @routine rejects it at once with a clear TypeError."""
    with pytest.raises(TypeError, match="async def"):

        @wool_local.routine
        def not_async(x):
            return x


def test_given_no_pool_when_routine_called_then_error_says_how_to_start_one():
    """Given no active pool, calling a routine says to use 'async with WorkerPool()'."""
    with pytest.raises(wool_local.NoPoolError, match=r"async with wool_local\.WorkerPool"):
        r.square(3)


def test_given_pool_when_awaiting_routines_then_results_come_back_from_workers():
    """Given a pool of 2, calls return results computed in worker processes."""

    async def main():
        async with wool_local.WorkerPool(spawn=2) as pool:
            assert await r.square(7) == 49
            results = await asyncio.gather(*(r.square(i) for i in range(2000)))
            assert results == [i * i for i in range(2000)]
            pids = set(await asyncio.gather(*(r.whoami() for _ in range(200))))
            assert pids <= set(pool.pids) and os.getpid() not in pids

    run(main)


def test_given_remote_exception_then_same_type_with_remote_traceback_as_cause():
    """Given a routine that raises, the caller gets the same type with the worker traceback."""

    async def main():
        async with wool_local.WorkerPool(spawn=1):
            with pytest.raises(ValueError, match="boom") as info:
                await r.fail("boom")
            cause = info.value.__cause__
            assert isinstance(cause, wool_local.RemoteTraceback)
            assert "raise ValueError(message)" in str(cause)
            printed = "".join(traceback.format_exception(info.value))
            assert "routines.py" in printed and "ValueError: boom" in printed

    run(main)


def test_given_async_generator_routine_then_values_stream_in_order():
    """Given an async generator routine, async for receives every value in order."""

    async def main():
        async with wool_local.WorkerPool(spawn=2):
            assert [v async for v in r.countdown(5)] == [5, 4, 3, 2, 1]

    run(main)


def test_given_stream_when_asend_athrow_aclose_then_each_reaches_the_remote_generator():
    """Given a remote generator, asend/athrow arrive there and aclose runs its finally."""
    done = Pipe()

    async def main():
        async with wool_local.WorkerPool(spawn=1):
            gen = r.conversation(done.w)
            assert await gen.__anext__() == "ready"
            assert await gen.asend("a") == "got a"
            assert await gen.asend("b") == "got b"
            assert await gen.athrow(KeyError("k")) == "caught k"
            await gen.aclose()
            assert await done.read() == b"closed"

    try:
        run(main)
    finally:
        done.close()


def test_given_stream_when_breaking_out_of_async_for_then_remote_finally_runs():
    """Given a loop that breaks early, the remote generator is closed (its finally runs)."""
    done = Pipe()

    async def main():
        async with wool_local.WorkerPool(spawn=1):
            async for value in r.conversation(done.w):
                assert value == "ready"
                break
            assert await done.read() == b"closed"

    try:
        run(main)
    finally:
        done.close()


@pytest.mark.parametrize("how", ["cancel", "timeout", "taskgroup"])
def test_given_running_routine_when_caller_cancels_then_remote_finally_runs(how):
    """Given a running routine, cancelling the caller cancels it in the worker."""
    started, fin = Pipe(), Pipe()

    async def main():
        async with wool_local.WorkerPool(spawn=1):
            if how == "cancel":
                task = asyncio.ensure_future(r.wait_forever(started.w, fin.w))
                await started.read()
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            elif how == "timeout":
                with pytest.raises(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await r.wait_forever(started.w, fin.w)
            else:

                async def fail_soon():
                    await started.read()
                    raise KeyError("sibling failed")

                with pytest.raises(ExceptionGroup):
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(r.wait_forever(started.w, fin.w))
                        tg.create_task(fail_soon())
            assert await fin.read() == b"finally"
            assert await r.square(3) == 9

    try:
        run(main)
    finally:
        started.close()
        fin.close()


def test_given_dispatch_timeout_option_and_runtime_context_then_whole_call_is_bounded():
    """Given a per-routine or ambient dispatch timeout, a slow call raises TimeoutError."""
    started, fin = Pipe(), Pipe()
    bounded = wool_local.routine(r.wait_forever.__wrapped__, dispatch_timeout=0.3)

    async def main():
        async with wool_local.WorkerPool(spawn=1):
            with pytest.raises(TimeoutError):
                await bounded(started.w, fin.w)
            assert await fin.read() == b"finally"
            with wool_local.RuntimeContext(dispatch_timeout=0.3), pytest.raises(TimeoutError):
                await r.wait_forever(started.w, fin.w)
            assert await fin.read() == b"finally"

    try:
        run(main)
    finally:
        started.close()
        fin.close()


def test_given_blocking_task_that_ignores_cancel_when_timed_out_then_worker_is_replaced():
    """Given CPU-blocking code past its timeout, the caller gets TimeoutError, the worker is
    killed after the grace period and replaced, and the pool keeps serving."""
    started = Pipe()

    async def main():
        async with wool_local.WorkerPool(spawn=1, cancel_grace=0.3) as pool:
            (old,) = pool.pids
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await r.block_cpu(started.w, 30)
            await started.read()
            new = await r.whoami()  # queued until the replacement is up
            assert new != old
            assert pool.hub.crashes == 1

    try:
        run(main)
    finally:
        started.close()


def test_given_unpicklable_argument_then_clear_error_naming_it_and_pool_keeps_working():
    """Given an argument that cannot be pickled, the error names it; the pool still works."""
    import threading

    async def main():
        async with wool_local.WorkerPool(spawn=1):
            unpicklable = wool_local.UnpicklableError
            with pytest.raises(unpicklable, match=r"positional argument 0 \(lock\)"):
                await r.echo(threading.Lock())
            with pytest.raises(wool_local.UnpicklableError, match="result of lock_result"):
                await r.lock_result()
            with pytest.raises(Exception, match="made in a function"):
                await r.raise_unpicklable()
            assert await r.echo(lambda: 1) is not None  # cloudpickle carries lambdas
            assert await r.square(4) == 16

    run(main)


@pytest.mark.parametrize(
    ("how", "check"),
    [
        ("sigkill", lambda e: e.signal == signal.SIGKILL),
        ("exit", lambda e: e.exitcode == 3),
        ("segfault", lambda e: e.signal == signal.SIGSEGV),
    ],
)
def test_given_worker_dies_mid_task_then_worker_crashed_and_next_dispatch_succeeds(how, check):
    """Given a worker that dies mid-task, only its calls fail with WorkerCrashed; it is replaced."""
    started = Pipe()

    async def main():
        async with wool_local.WorkerPool(spawn=1) as pool:
            (old,) = pool.pids
            if how == "sigkill":
                call = asyncio.ensure_future(r.die("hang", started.w))
                await started.read()
                os.kill(old, signal.SIGKILL)
            else:
                call = asyncio.ensure_future(r.die(how))
            with pytest.raises(wool_local.WorkerCrashed) as info:
                await asyncio.wait_for(call, 10)
            assert info.value.pid == old and check(info.value), info.value
            assert str(old) in str(info.value)
            assert await r.square(5) == 25
            assert pool.pids != [old]

    try:
        run(main)
    finally:
        started.close()


def test_given_nested_calls_then_they_dispatch_through_the_hub():
    """Given routines that call routines, nested calls and nested streams complete."""

    async def main():
        async with wool_local.WorkerPool(spawn=2):
            assert await r.nested_sum(50) == sum(i * i for i in range(50))
            assert await r.nested_depth(5) > 0
            assert await r.nested_stream(3) == [3, 2, 1]

    run(main)


def test_given_every_worker_waiting_on_nested_calls_then_no_deadlock():
    """Given more nesting than workers and a tight in-flight bound, every call completes."""

    async def main():
        async with wool_local.WorkerPool(spawn=2, max_inflight=1):
            results = await asyncio.wait_for(
                asyncio.gather(*(r.nested_depth(4) for _ in range(6))), 30
            )
            assert len(results) == 6

    run(main)


def test_given_methods_static_and_class_methods_then_they_dispatch():
    """Given routines defined as methods, staticmethods and classmethods, all dispatch."""

    async def main():
        async with wool_local.WorkerPool(spawn=1):
            assert await r.Calculator(10).add(5) == 15
            assert await r.Calculator.double(21) == 42
            assert await r.Calculator.name() == "Calculator"

    run(main)


def test_given_closure_routine_then_it_is_sent_by_value():
    """Given a routine defined inside a function (a closure), it runs in a worker."""
    offset = 100

    @wool_local.routine
    async def add_offset(x):
        return x + offset, os.getpid()

    async def main():
        async with wool_local.WorkerPool(spawn=1) as pool:
            value, pid = await add_offset(1)
            assert value == 101 and pid in pool.pids

    run(main)


def test_given_pool_started_in_plain_asyncio_loop_then_it_works():
    """Given the standard asyncio loop in the hub, the pool starts and serves."""

    async def main():
        async with wool_local.WorkerPool(spawn=1):
            assert await r.square(9) == 81

    asyncio.run(main())


def test_given_pool_exit_cancelled_then_nothing_is_left_behind():
    """Given the task running the pool block is cancelled mid-call, everything is torn down."""
    started, fin = Pipe(), Pipe()

    async def body():
        async with wool_local.WorkerPool(spawn=2):
            await r.wait_forever(started.w, fin.w)

    async def main():
        task = asyncio.ensure_future(body())
        await started.read()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    try:
        run(main)
    finally:
        started.close()
        fin.close()


def test_given_default_spawn_then_it_is_the_cpus_this_process_may_use():
    """Given no spawn count, the pool sizes itself from affinity (and cgroup quota)."""
    assert wool_local.WorkerPool().spawn == wool_local.available_cpus()
    assert wool_local.available_cpus() <= len(os.sched_getaffinity(0))
    with pytest.raises(ValueError):
        wool_local.WorkerPool(spawn=0)


def test_given_a_task_blocking_its_worker_then_fast_tasks_never_wait_for_it(tmp_path):
    """Given 2 workers, one 2 s CPU-bound task and 1,000 fast ones right after it, every
    fast one finishes while the slow one still runs, and each runs exactly once."""
    log = str(tmp_path / "runs")

    async def main():
        async with wool_local.WorkerPool(spawn=2):
            await asyncio.gather(*(r.square(i) for i in range(20)))  # both workers warm
            slow = asyncio.ensure_future(r.hog_cpu(2.0))
            fast = [asyncio.ensure_future(r.record(log, i)) for i in range(1000)]
            assert await asyncio.wait_for(asyncio.gather(*fast), 10) == list(range(1000))
            assert not slow.done(), "a fast task waited for the slow one"
            await slow

    run(main)
    with open(log) as f:
        runs = sorted(int(line) for line in f)
    assert runs == list(range(1000)), "some call ran twice or never"


def test_given_stream_with_dispatch_timeout_then_each_step_is_bounded_and_sends_pass():
    """Given a generator routine with a dispatch timeout, steps that finish in time pass
    through (asend included), and a step that does not raises TimeoutError; the remote
    generator's finally runs."""
    started, done = Pipe(), Pipe()
    timed = wool_local.routine(r.slow_ticks.__wrapped__, dispatch_timeout=0.5)
    counting = wool_local.routine(r.countdown.__wrapped__, dispatch_timeout=5)

    async def main():
        async with wool_local.WorkerPool(spawn=1):
            assert [v async for v in counting(3)] == [3, 2, 1]
            gen = timed(started.w, done.w)
            assert await gen.__anext__() == 0
            assert await gen.asend(None) == 1
            with pytest.raises(TimeoutError):
                await gen.__anext__()
            assert await done.read() == b"finally"

    try:
        run(main)
    finally:
        started.close()
        done.close()
