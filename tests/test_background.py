"""``BackgroundPool`` on its own, and the ambient pool: ``Executor()`` with no arguments
and routines called where no pool is bound run on it."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import select
import signal
import threading
from collections.abc import Iterator

import pytest

import wool_local
from wool_local import background
from wool_local.background import BackgroundPool

from . import routines
from .test_executor_conformance import square

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.filterwarnings("ignore::wool_local.ThreadedForkWarning"),
]

WAIT = 10.0  # bound on every blocking wait of these tests


def pid() -> int:
    return os.getpid()


@pytest.fixture
def ambient() -> Iterator[BackgroundPool]:
    """An ambient pool of 2 workers, installed (not started); uninstalled and stopped
    after the test."""
    bg = BackgroundPool(wool_local.WorkerPool(2), name="wool_local.test-ambient")
    background.install_ambient(bg)
    try:
        yield bg
    finally:
        background.uninstall_ambient()
        bg.stop(wait=True, abort=True)


@pytest.fixture
def bg() -> Iterator[BackgroundPool]:
    """A background pool of 1 worker, not installed; stopped after the test."""
    pool = BackgroundPool(wool_local.WorkerPool(1))
    try:
        yield pool
    finally:
        pool.stop(wait=True, abort=True)


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], WAIT)[0])


# -- the ambient pool and Executor -------------------------------------------------------


def test_given_an_ambient_pool_then_executor_without_arguments_runs_there(ambient):
    """Given an installed ambient pool, not started, when an Executor() with no arguments
    submits and maps, then its first call starts the ambient pool, its calls run on the
    ambient pool's workers, and its shutdown leaves the ambient pool running."""
    assert ambient.loop is None
    with wool_local.Executor() as ex:
        assert ex.pool is ambient.pool
        pids = {f.result(WAIT) for f in [ex.submit(pid) for _ in range(20)]}
        assert list(ex.map(square, range(100))) == [i * i for i in range(100)]
    assert pids and pids <= set(ambient.pool.pids)
    assert not ambient.stopping
    with wool_local.Executor() as again:  # a second one: same pool, still running
        assert again.submit(pid).result(WAIT) in ambient.pool.pids


def test_given_an_ambient_pool_then_executor_with_an_argument_has_its_own(ambient):
    """Given an ambient pool, when an Executor is built with any argument, then it runs
    on a pool of its own, and stopping it does not stop the ambient pool."""
    with wool_local.Executor() as shared:
        shared_pid = shared.submit(pid).result(WAIT)
    with wool_local.Executor(1) as own:
        assert own.pool is not ambient.pool
        own_pid = own.submit(pid).result(WAIT)
    assert own_pid not in ambient.pool.pids
    assert shared_pid in ambient.pool.pids
    with wool_local.Executor() as shared:
        assert shared.submit(pid).result(WAIT) in ambient.pool.pids


def test_given_an_ambient_pool_stopping_then_its_executors_finish_their_work(ambient):
    """Given an Executor() on the ambient pool with 200 calls submitted (most pending in
    the executor), when the ambient pool stops (wait=True), then every call has its
    result, and the executor refuses new calls as after a shutdown."""
    ex = wool_local.Executor()
    futures = [ex.submit(square, i) for i in range(200)]
    ambient.stop(wait=True)
    assert [f.result(0) for f in futures] == [i * i for i in range(200)]
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(square, 1)
    ex.shutdown(wait=True)  # harmless: the pool is gone


# -- the ambient pool and routines -------------------------------------------------------


async def calls_and_streams() -> tuple[int, list[int], list[int]]:
    first = await routines.whoami()
    squares = await asyncio.gather(*(routines.square(i) for i in range(10)))
    items = [i async for i in routines.countdown(3)]
    return first, list(squares), items


def test_given_the_ambient_pool_then_routines_in_asyncio_run_start_it_and_run_there(ambient):
    """Given an installed ambient pool, not started, when plain asyncio.run in the main
    thread awaits routines (calls and a stream), then the first call starts the pool and
    every call runs on its workers; once uninstalled, a routine raises NoPoolError."""
    assert ambient.loop is None
    first, squares, items = asyncio.run(calls_and_streams())
    assert first in ambient.pool.pids
    assert squares == [i * i for i in range(10)]
    assert items == [3, 2, 1]
    assert background.uninstall_ambient() is ambient
    with pytest.raises(wool_local.NoPoolError):
        asyncio.run(calls_and_streams())


def test_given_the_ambient_pool_then_a_routine_on_another_threads_loop_runs_there(ambient):
    """Given an ambient pool, when a thread of the program runs its own event loop and
    awaits a routine, then the routine runs on the ambient pool's workers."""
    got: list[int] = []
    thread = threading.Thread(target=lambda: got.append(asyncio.run(routines.whoami())))
    thread.start()
    thread.join(WAIT)
    assert got and got[0] in ambient.pool.pids


def test_given_a_forked_child_then_the_ambient_pool_is_unset_there(ambient):
    """Given a started ambient pool, when the process forks, then in the child there is
    no ambient pool (a routine raises NoPoolError, Executor() would start its own) and
    the parent's pool refuses calls; the parent's pool serves on."""
    from .forking import fork, join

    assert asyncio.run(routines.whoami()) in ambient.pool.pids

    def child() -> None:
        assert background.ambient is None
        with pytest.raises(wool_local.NoPoolError):
            asyncio.run(calls_and_streams())
        with pytest.raises(wool_local.PoolClosed):
            ambient.run(asyncio.sleep(0))

    assert join(fork(child)) == 0
    assert asyncio.run(routines.whoami()) in ambient.pool.pids


# -- BackgroundPool on its own -----------------------------------------------------------


async def whoami_twice() -> tuple[int, int, int]:
    return threading.get_ident(), await routines.whoami(), await routines.whoami()


def test_given_run_then_the_coroutine_runs_on_the_pools_loop_with_the_pool_bound(bg):
    """Given a BackgroundPool (not installed as the ambient one), when run() is given a
    coroutine calling routines, then the pool starts, the coroutine runs on the pool's
    loop thread and its routines dispatch to the pool's workers; the hub serves calls
    made on another loop too."""
    ident, a, b = bg.run(whoami_twice()).result(WAIT)
    assert ident == bg.thread_id != threading.get_ident()
    assert a == b and a in bg.pool.pids
    hub = bg.dispatcher()
    assert hub is bg.hub
    assert asyncio.run(hub.call(routines.whoami._body, (), {})) == a


def _blocked_signals(native_id: int) -> int:
    with open(f"/proc/self/task/{native_id}/status") as f:
        line = next(x for x in f if x.startswith("SigBlk:"))
    return int(line.split()[1], 16)


def test_given_a_started_pool_then_its_thread_leaves_ctrl_c_to_the_main_thread(bg):
    """Given a started pool, its loop thread blocks SIGINT, SIGTERM and SIGHUP (so the
    kernel delivers them to the main thread, which may sleep in asyncio.run's loop with
    no wakeup fd), while the main thread's mask is as it was."""

    async def thread_id() -> int:
        return threading.get_native_id()

    mine = _blocked_signals(threading.get_native_id())
    theirs = _blocked_signals(bg.run(thread_id()).result(WAIT))
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        assert theirs & (1 << (sig - 1)), f"{sig.name} reaches the pool's thread"
    assert _blocked_signals(threading.get_native_id()) == mine
    assert not mine & (1 << (signal.SIGINT - 1))


def test_given_a_run_future_when_cancelled_then_its_task_is_cancelled(bg):
    """Given a coroutine running on the pool (it waits forever), when its future is
    cancelled from the caller's thread, then the task is cancelled there (its finally
    runs) and the pool stops at once."""
    started, cleaned = threading.Event(), threading.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.set()

    fut = bg.run(forever())
    assert started.wait(WAIT)
    assert fut.cancel()
    assert cleaned.wait(WAIT)
    bg.stop(wait=True)
    assert fut.cancelled()


def test_given_a_wait_in_the_pools_own_thread_then_runtime_error_not_a_hang(bg):
    """Given a coroutine on the pool's loop, when it waits on another run() future (or
    stops the pool with wait=True), then each raises RuntimeError naming the loop
    thread instead of waiting forever."""

    async def blocks() -> list[str]:
        other = bg.run(asyncio.Event().wait())
        errors = []
        try:
            other.result()
        except RuntimeError as exc:
            errors.append(str(exc))
        finally:
            other.cancel()
        try:
            bg.stop(wait=True)
        except RuntimeError as exc:
            errors.append(str(exc))
        return errors

    errors = bg.run(blocks()).result(WAIT)
    assert len(errors) == 2 and all("loop thread" in e for e in errors)


def test_given_stop_then_run_tasks_finish_and_later_runs_are_refused(bg):
    """Given a coroutine on the pool that stops the pool (no abort, no wait) and then
    awaits a routine, then it finishes first and has its result; run() afterwards
    raises PoolClosed (and closes the coroutine it was given)."""

    async def stops_then_calls() -> str:
        bg.stop(wait=False)
        return await routines.echo("done")

    fut = bg.run(stops_then_calls())
    assert fut.result(WAIT) == "done"
    bg.stop(wait=True)
    assert not any(t.ident == bg.thread_id for t in threading.enumerate())
    coro = asyncio.sleep(0)
    with pytest.raises(wool_local.PoolClosed):
        bg.run(coro)
    assert coro.cr_frame is None  # closed: no "never awaited" warning


def test_given_stop_with_abort_then_running_routines_are_cancelled_in_their_workers(bg):
    """Given a routine waiting forever in a worker, called from a run() coroutine, when
    the pool stops with abort=True, then the future is cancelled, the routine's finally
    ran in the worker, and stop returned."""
    started_r, started_w = os.pipe()
    finally_r, finally_w = os.pipe()

    async def call() -> None:
        await routines.wait_forever(started_w, finally_w)

    try:
        fut = bg.run(call())
        assert readable(started_r), "the routine never started"
        bg.stop(wait=True, abort=True)
        assert isinstance(fut.exception(0), cf.CancelledError)
        assert readable(finally_r) and os.read(finally_r, 16) == b"finally"
    finally:
        for fd in (started_r, started_w, finally_r, finally_w):
            os.close(fd)


def test_given_the_pool_cannot_start_then_start_says_why_and_later_calls_are_refused(
    monkeypatch,
):
    """Given a pool whose start fails, when the first routine through the ambient hook
    needs it, then the start's error is raised and the thread ends; later calls raise
    PoolClosed naming it."""

    async def no_start(self):
        raise OSError("no shared memory")

    monkeypatch.setattr(wool_local.WorkerPool, "__aenter__", no_start)
    bg = BackgroundPool(wool_local.WorkerPool(1), name="wool_local.test-broken")
    background.install_ambient(bg)
    try:
        with pytest.raises(OSError, match="no shared memory"):
            asyncio.run(calls_and_streams())
        assert not any(t.name == bg.name for t in threading.enumerate())
        with pytest.raises(wool_local.PoolClosed, match="no shared memory"):
            asyncio.run(calls_and_streams())
    finally:
        background.uninstall_ambient()
        bg.stop()
