"""One set of executor behaviours, run against ``ProcessPoolExecutor`` and ``wool_local.Executor``.

A program written for ``concurrent.futures.ProcessPoolExecutor`` should work
by changing its constructor: every test here runs against both (the stdlib's
with ``mp_context`` fork) through the ``ex`` fixture, using only what the
stdlib's executor supports (module-level functions). Tests of what only
wool_local supports say so in their name and skip the stdlib's case, or
assert its different outcome.

Calls that must stay running while a test looks wait on a :class:`Gate`, a
FIFO the test writes to: tests synchronise on it, never on sleeps.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import wool_local

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.filterwarnings("ignore::wool_local.ThreadedForkWarning"),
]

WORKERS = 2
WAIT = 10.0  # bound on every blocking wait of these tests


class Gate:
    """A FIFO: calls in workers wait on it (one byte each), the test opens it."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.path = str(path)
        # Read-write: never blocks, and keeps a writer so readers never see EOF.
        self.fd = os.open(path, os.O_RDWR)

    def open(self, n: int = 1) -> None:
        os.write(self.fd, b"x" * n)

    def close(self) -> None:
        os.close(self.fd)


# -- what the workers run: module-level, so both executors can import them ----------


def square(x: int) -> int:
    return x * x


def add(a: int, b: int, *, c: int = 0) -> int:
    return a + b + c


def fails(message: str) -> None:
    raise ValueError(message)


def fails_at(x: int, bad: int) -> int:
    if x == bad:
        raise KeyError(x)
    return x


def wait_gate(path: str, value: object = None) -> object:
    with open(path, "rb", buffering=0) as f:
        f.read(1)
    return value


def pid_after(seconds: float) -> int:
    time.sleep(seconds)  # the work itself, not a synchronisation
    return os.getpid()


# -- fixtures -------------------------------------------------------------------------


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gate]:
    g = Gate(tmp_path / "gate")
    yield g
    g.close()


@pytest.fixture(params=["ProcessPoolExecutor", "wool_local.Executor"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


def make(kind: str) -> cf.Executor:
    if kind == "ProcessPoolExecutor":
        return cf.ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("fork"))
    return wool_local.Executor(WORKERS)


@pytest.fixture
def ex(kind: str, gate: Gate) -> Iterator[cf.Executor]:
    executor = make(kind)
    yield executor
    gate.open(10_000)  # whatever still waits on the gate goes on
    executor.shutdown(wait=True, cancel_futures=True)


def occupy(ex: cf.Executor, gate: Gate) -> list[cf.Future]:
    """Make every worker wait on ``gate`` and return those calls' futures, once running.

    The stdlib's executor marks a call running when it is queued for a worker;
    wool_local's when it is handed to the pool.
    """
    futures = [ex.submit(wait_gate, gate.path, i) for i in range(WORKERS)]
    deadline = time.monotonic() + WAIT
    while not all(f.running() for f in futures):  # a state poll of our own futures
        assert time.monotonic() < deadline, "the blockers never started"
        time.sleep(0.001)
    return futures


# -- submit ---------------------------------------------------------------------------


def test_given_submit_when_the_call_returns_then_the_future_has_its_result(ex):
    """Given an executor, when a function is submitted with args and kwargs, then its
    future's result is the function's return value."""
    assert ex.submit(square, 7).result(WAIT) == 49
    assert ex.submit(add, 1, 2, c=3).result(WAIT) == 6


def test_given_submit_when_the_call_raises_then_result_reraises_with_remote_traceback(ex):
    """Given a submitted function that raises, when its result is asked, then the same
    exception type is raised, with the worker's traceback (naming the function) as its
    cause, and ``exception()`` returns it."""
    future = ex.submit(fails, "boom")
    with pytest.raises(ValueError, match="boom") as info:
        future.result(WAIT)
    assert "fails" in str(info.value.__cause__)
    assert isinstance(future.exception(WAIT), ValueError)


def test_given_many_submits_then_each_future_gets_its_own_result(ex):
    """Given 200 submitted calls, then every future holds the result of its own call."""
    futures = [ex.submit(square, i) for i in range(200)]
    assert [f.result(WAIT) for f in futures] == [i * i for i in range(200)]


def test_given_a_done_callback_then_it_is_called_with_the_future(ex):
    """Given a done-callback on a submitted call's future, when the call finishes, then
    the callback is called with that future."""
    seen = threading.Event()
    got: list[cf.Future] = []
    future = ex.submit(square, 3)
    future.add_done_callback(lambda f: (got.append(f), seen.set()))
    assert seen.wait(WAIT)
    assert got == [future] and got[0].result() == 9


# -- map ------------------------------------------------------------------------------


def test_given_map_then_results_come_in_input_order(ex):
    """Given map over 500 items, then the results come in input order."""
    assert list(ex.map(square, range(500))) == [i * i for i in range(500)]


def test_given_map_over_several_iterables_then_the_shortest_ends_it(ex):
    """Given map over two iterables of different lengths, then it pairs them up and
    stops with the shorter, as the builtin map does."""
    assert list(ex.map(add, range(5), range(10, 13))) == [10, 12, 14]


def test_given_map_over_nothing_then_it_yields_nothing(ex):
    """Given map over an empty iterable, then it yields nothing."""
    assert list(ex.map(square, [])) == []


def test_given_map_with_a_chunksize_then_results_are_the_same(ex):
    """Given map with chunksize=7, then the results are those of chunksize 1."""
    assert list(ex.map(square, range(100), chunksize=7)) == [i * i for i in range(100)]


def test_given_map_when_an_item_raises_then_earlier_results_come_then_its_error(ex):
    """Given map where item 5 raises, when iterating, then results 0..4 come first and
    then the item's exception is raised."""
    results = ex.map(fails_at, range(10), [5] * 10)
    got = []
    with pytest.raises(KeyError):
        for value in results:
            got.append(value)
    assert got == [0, 1, 2, 3, 4]


def test_given_map_with_a_timeout_when_a_result_is_late_then_timeout_error(ex, gate):
    """Given map with timeout=0.2 whose first item waits on a closed gate, when iterating,
    then TimeoutError is raised (the gate opens only afterwards)."""
    started = time.monotonic()  # the timeout runs from the map call (which may start a pool)
    results = ex.map(wait_gate, [gate.path], timeout=0.2)
    with pytest.raises(TimeoutError):
        next(results)
    assert 0.15 < time.monotonic() - started < 5
    gate.open()


def test_given_map_with_a_timeout_when_results_are_in_time_then_no_error(ex):
    """Given map with a generous timeout, then every result comes."""
    assert list(ex.map(square, range(20), timeout=WAIT)) == [i * i for i in range(20)]


# -- cancel -----------------------------------------------------------------------------


def test_given_busy_workers_when_a_pending_future_is_cancelled_then_it_never_runs(ex, gate):
    """Given every worker waiting on the gate and 100 more calls queued, when the last
    one is cancelled, then cancel() returns True, it ends cancelled and never runs, and
    the other calls finish once the gate opens."""
    blockers = occupy(ex, gate)
    queued = [ex.submit(square, i) for i in range(100)]
    assert queued[-1].cancel()
    assert queued[-1].cancelled() and queued[-1].done()
    with pytest.raises(cf.CancelledError):
        queued[-1].result(WAIT)
    gate.open(WORKERS)
    assert [f.result(WAIT) for f in blockers] == list(range(WORKERS))
    assert [f.result(WAIT) for f in queued[:-1]] == [i * i for i in range(99)]


def test_given_a_running_call_then_cancel_returns_false_and_it_finishes(ex, gate):
    """Given a call that is running, when it is cancelled, then cancel() returns False
    and the call still finishes with its result."""
    blockers = occupy(ex, gate)
    assert not blockers[0].cancel()
    gate.open(WORKERS)
    assert blockers[0].result(WAIT) == 0


def test_given_a_cancelled_pending_future_then_only_wool_local_wait_sees_it_at_once(ex, kind, gate):
    """Given busy workers and a pending call, when it is cancelled, then wait() on it
    returns at once with it done: wool_local tells its waiters now. (The stdlib's
    executor tells them only when the call reaches the head of its queue, so wait()
    would block until then: that case is skipped.)"""
    if kind == "ProcessPoolExecutor":
        pytest.skip("ProcessPoolExecutor tells waiters of a cancel only at dequeue")
    occupy(ex, gate)
    queued = [ex.submit(square, i) for i in range(100)]
    assert queued[-1].cancel()
    done, not_done = cf.wait([queued[-1]], timeout=WAIT)
    assert done == {queued[-1]} and not not_done
    gate.open(WORKERS)


# -- as_completed and wait ----------------------------------------------------------------


def test_given_as_completed_then_futures_come_as_they_finish(ex, gate):
    """Given a call waiting on the gate and a quick one, when iterating as_completed,
    then the quick one comes first, and the other after the gate opens."""
    slow = ex.submit(wait_gate, gate.path, "slow")
    quick = ex.submit(square, 4)
    finished = cf.as_completed([slow, quick], timeout=WAIT)
    assert next(finished) is quick
    gate.open()
    assert next(finished) is slow
    assert slow.result() == "slow"


def test_given_as_completed_over_many_then_each_comes_once(ex):
    """Given 50 calls, then as_completed yields each future exactly once."""
    futures = [ex.submit(square, i) for i in range(50)]
    seen = list(cf.as_completed(futures, timeout=WAIT))
    assert sorted(f.result() for f in seen) == [i * i for i in range(50)]
    assert len(set(seen)) == 50


def test_given_wait_first_completed_then_it_returns_the_finished_one(ex, gate):
    """Given a call waiting on the gate and a quick one, when waiting FIRST_COMPLETED,
    then the quick one is done and the other not."""
    slow = ex.submit(wait_gate, gate.path)
    quick = ex.submit(square, 2)
    done, not_done = cf.wait([slow, quick], timeout=WAIT, return_when=cf.FIRST_COMPLETED)
    assert done == {quick} and not_done == {slow}
    gate.open()


def test_given_wait_first_exception_then_it_returns_when_one_raises(ex, gate):
    """Given a call waiting on the gate and one that raises, when waiting
    FIRST_EXCEPTION, then it returns with the raising one done."""
    slow = ex.submit(wait_gate, gate.path)
    bad = ex.submit(fails, "first")
    done, not_done = cf.wait([slow, bad], timeout=WAIT, return_when=cf.FIRST_EXCEPTION)
    assert done == {bad} and not_done == {slow}
    assert isinstance(bad.exception(), ValueError)
    gate.open()


def test_given_wait_all_completed_then_every_future_is_done(ex):
    """Given 20 calls, when waiting ALL_COMPLETED, then all are done."""
    futures = [ex.submit(pid_after, 0.001) for _ in range(20)]
    done, not_done = cf.wait(futures, timeout=WAIT, return_when=cf.ALL_COMPLETED)
    assert done == set(futures) and not not_done


# -- shutdown and the context manager ---------------------------------------------------------


def test_given_the_context_manager_then_leaving_waits_for_the_calls(kind):
    """Given calls submitted in a with block, when the block ends, then every call has
    finished with its result."""
    with make(kind) as executor:
        futures = [executor.submit(pid_after, 0.01) for _ in range(10)]
    assert all(f.done() for f in futures)
    assert all(isinstance(f.result(), int) for f in futures)


def test_given_shutdown_when_submitting_then_runtime_error(ex):
    """Given an executor that was shut down, when a call is submitted, then RuntimeError."""
    ex.submit(square, 1).result(WAIT)
    ex.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(square, 2)


def test_given_an_unused_executor_then_shutdown_and_submit_after_it_behave(kind):
    """Given an executor never used, when shut down, then it returns and submitting
    raises RuntimeError."""
    executor = make(kind)
    executor.shutdown(wait=True)
    with pytest.raises(RuntimeError):
        executor.submit(square, 2)


def test_given_shutdown_wait_false_then_submitted_calls_still_finish(ex):
    """Given submitted calls, when shutdown(wait=False) returns, then the calls still
    finish with their results."""
    futures = [ex.submit(square, i) for i in range(20)]
    # The stdlib's executor forgets its manager thread at shutdown(wait=False), so a
    # later shutdown(wait=True) does not wait for it to close its pipes: join it here.
    manager = getattr(ex, "_executor_manager_thread", None)
    ex.shutdown(wait=False)
    assert [f.result(WAIT) for f in futures] == [i * i for i in range(20)]
    if manager is not None:
        manager.join(WAIT)


def test_given_shutdown_cancel_futures_then_pending_calls_are_cancelled(ex, gate):
    """Given busy workers and 100 queued calls, when shut down with cancel_futures, then
    the last queued calls are cancelled, and the running ones finish (the gate opens
    when the last call is cancelled)."""
    blockers = occupy(ex, gate)
    queued = [ex.submit(square, i) for i in range(100)]
    queued[-1].add_done_callback(lambda _: gate.open(WORKERS))
    ex.shutdown(wait=True, cancel_futures=True)
    assert [f.result(WAIT) for f in blockers] == list(range(WORKERS))
    assert queued[-1].cancelled()
    assert all(f.done() for f in queued)


def test_given_map_results_not_taken_when_shut_down_then_they_are_all_there(kind):
    """Given map() called in a with block and consumed after it, then every result is
    there (shutdown waits for the map, as the stdlib's does)."""
    with make(kind) as executor:
        results = executor.map(square, range(300))
    assert list(results) == [i * i for i in range(300)]


def test_given_shutdown_twice_then_the_second_is_harmless(ex):
    """Given an executor shut down, when shut down again, then nothing happens."""
    ex.submit(square, 1).result(WAIT)
    ex.shutdown(wait=True)
    ex.shutdown(wait=True)


# -- from asyncio ---------------------------------------------------------------------------


def test_given_run_in_executor_then_the_loop_awaits_the_result(ex):
    """Given an asyncio loop, when it runs calls through loop.run_in_executor, then it
    awaits their results."""

    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        return await asyncio.gather(*(loop.run_in_executor(ex, square, i) for i in range(10)))

    assert asyncio.run(asyncio.wait_for(main(), WAIT)) == [i * i for i in range(10)]


# -- what only wool_local does ------------------------------------------------------------------


def test_given_a_lambda_and_a_closure_then_only_wool_local_runs_them(ex, kind):
    """Given a lambda and a closure, when submitted, then wool_local runs them (pickled
    by value), while ProcessPoolExecutor fails them with a pickling error."""
    offset = 10

    def shifted(x: int) -> int:
        return x + offset

    lam = ex.submit(lambda x: x * 3, 5)
    closure = ex.submit(shifted, 1)
    if kind == "ProcessPoolExecutor":
        assert lam.exception(WAIT) is not None
        assert closure.exception(WAIT) is not None
        return
    assert lam.result(WAIT) == 15
    assert closure.result(WAIT) == 11
    assert list(ex.map(lambda x: -x, range(5))) == [0, -1, -2, -3, -4]


def test_given_map_over_an_endless_generator_then_only_wool_local_returns(kind):
    """Given map over an endless generator, then wool_local's returns at once (lazy
    input) and yields from it; the stdlib's would read the input forever, so that case
    is skipped."""
    if kind == "ProcessPoolExecutor":
        pytest.skip("ProcessPoolExecutor.map reads its whole input first")

    def naturals() -> Iterator[int]:
        n = 0
        while True:
            yield n
            n += 1

    with make(kind) as executor:
        results = executor.map(square, naturals())
        assert [next(results) for _ in range(1000)] == [i * i for i in range(1000)]
        results.close()  # type: ignore[attr-defined]
