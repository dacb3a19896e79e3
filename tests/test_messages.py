"""What users read when something goes wrong: timeouts name the routine and the limit,
a forgotten ``await`` warns with the routine's name, and log levels."""

from __future__ import annotations

import asyncio
import gc
import logging
import warnings

import pytest

import wool_local
from tests import routines as r
from tests.helpers import run
from wool_local.workers.limits import RecycleReason, WorkerHealth, WorkerLimits
from wool_local.workers.recycler import Recycler


@wool_local.routine(dispatch_timeout=0.2)
async def scale(x: float) -> float:
    await asyncio.sleep(30)
    return x


@wool_local.routine
async def sleepy(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


@wool_local.routine(dispatch_timeout=5)
async def raises_its_own_timeout() -> None:
    raise TimeoutError("the routine's own")


@wool_local.routine(dispatch_timeout=0.3)
async def ticks():
    yield 0
    await asyncio.sleep(30)
    yield 1


@wool_local.routine
async def forgets_nested_await() -> list[str]:
    """In a worker: call a routine without awaiting it; what warnings were raised."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        r.square(2)  # the first nested call in this worker: the proxy is not started yet
        gc.collect()
    return [str(w.message) for w in seen]


class Service:
    @wool_local.routine
    async def method(self) -> None:
        pass


def unawaited_warnings(make) -> list[str]:
    """Make a coroutine with ``make()``, drop it unawaited; the warnings that gives."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        make()
        gc.collect()
    return [str(w.message) for w in seen if issubclass(w.category, RuntimeWarning)]


def test_given_routine_dispatch_timeout_when_exceeded_then_message_names_routine_and_limit():
    """Given @routine(dispatch_timeout=0.2) on a routine that sleeps,
    When a call runs past the limit,
    Then the caller gets a TimeoutError saying which routine exceeded which limit."""

    async def main():
        async with wool_local.WorkerPool(spawn=1):
            with pytest.raises(TimeoutError) as info:
                await scale(1.0)
            assert type(info.value) is TimeoutError
            assert str(info.value) == "scale() exceeded dispatch_timeout=0.2 s"

    run(main)


def test_given_runtime_context_timeout_when_exceeded_then_message_names_routine_and_limit():
    """Given RuntimeContext(dispatch_timeout=0.25) around a call of a routine with no limit,
    When the call runs past it,
    Then the TimeoutError names the routine and the ambient limit."""

    async def main():
        async with wool_local.WorkerPool(spawn=1):
            with wool_local.RuntimeContext(dispatch_timeout=0.25):
                with pytest.raises(TimeoutError) as info:
                    await sleepy(30)
            assert str(info.value) == "sleepy() exceeded dispatch_timeout=0.25 s"

    run(main)


def test_given_stream_step_past_its_timeout_then_message_names_routine_and_limit():
    """Given a generator routine with dispatch_timeout=0.3 whose second step sleeps,
    When the caller pulls that step,
    Then the TimeoutError names the routine, the limit and that it waited for an item."""

    async def main():
        async with wool_local.WorkerPool(spawn=1):
            gen = ticks()
            assert await gen.__anext__() == 0
            with pytest.raises(TimeoutError) as info:
                await gen.__anext__()
            assert str(info.value) == (
                "ticks() exceeded dispatch_timeout=0.3 s waiting for its next item"
            )

    run(main)


def test_given_routine_raising_timeout_error_itself_then_it_is_not_blamed_on_the_limit():
    """Given a routine with a dispatch timeout that raises TimeoutError of its own,
    When it is called,
    Then the caller gets that TimeoutError, not one about the dispatch timeout."""

    async def main():
        async with wool_local.WorkerPool(spawn=1):
            with pytest.raises(TimeoutError, match="the routine's own"):
                await raises_its_own_timeout()

    run(main)


def test_given_forgotten_await_then_warning_names_the_routine():
    """Given a pool,
    When a routine is called and its coroutine dropped without being awaited,
    Then the RuntimeWarning names the routine (plain, timed, method), once each."""

    async def main():
        async with wool_local.WorkerPool(spawn=1):
            assert unawaited_warnings(lambda: r.square(3)) == [
                "coroutine 'square' was never awaited"
            ]
            assert unawaited_warnings(lambda: scale(3)) == ["coroutine 'scale' was never awaited"]
            assert unawaited_warnings(lambda: Service().method()) == [
                "coroutine 'Service.method' was never awaited"
            ]

    run(main)


def test_given_forgotten_await_of_first_nested_call_in_a_worker_then_warning_names_it():
    """Given a routine that, in its worker, calls another routine without awaiting it
    (the first nested call there, which starts the worker's proxy first),
    When it runs,
    Then the warning in the worker names the nested routine."""

    async def main():
        async with wool_local.WorkerPool(spawn=1):
            seen = await forgets_nested_await()
            assert "coroutine 'square' was never awaited" in seen, seen

    run(main)


class _Hub:
    def __init__(self) -> None:
        self.spawned = 0

    def changed_membership(self) -> None:
        pass

    def spawn_worker(self) -> None:
        self.spawned += 1

    def stop_worker(self, handle) -> None:
        pass


class _Handle:
    pid = 4242
    open = 0
    retiring = None


@pytest.mark.parametrize(
    ("reason", "level"),
    [(RecycleReason.IDLE, logging.DEBUG), (RecycleReason.TASKS, logging.INFO)],
)
def test_given_worker_retired_then_idle_is_debug_and_recycling_is_info(caplog, reason, level):
    """Given the recycler,
    When it retires a worker for being idle, or recycles one for its task count,
    Then the line is DEBUG for the idle retirement (routine scaling, not news) and INFO
    for the recycle."""
    recycler = Recycler(_Hub(), WorkerLimits(max_tasks=10), min_workers=0)
    health = WorkerHealth(pid=4242, idle=40.0, tasks_completed=10)
    with caplog.at_level(logging.DEBUG, logger="wool_local"):
        recycler.retire(_Handle(), reason, health)  # type: ignore[arg-type]
    [rec] = [rec for rec in caplog.records if rec.name == "wool_local"]
    assert rec.levelno == level
    assert "retiring worker 4242" in rec.getMessage()
