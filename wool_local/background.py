"""``BackgroundPool``: a :class:`~wool_local.WorkerPool` on a private uvloop loop in a
thread of its own, for code that has no loop of its own or runs on another one.

``wool_local.Executor`` runs on one; ``wool-local run`` runs a script with one as
its *ambient* pool. The API::

    bg = BackgroundPool(WorkerPool(4))  # nothing starts yet
    bg.start()                  # blocks until the pool runs (run() etc. do it lazily)
    fut = bg.run(coro)          # a concurrent future of coro, run on the pool's loop
    bg.call_soon(fn, *args)     # fn(*args) on the loop's thread (nothing if not running)
    hub = bg.dispatcher()       # the started pool's hub (a Dispatcher)
    bg.stop(wait=True, abort=False)

``run(coro)`` runs the coroutine as a task with the pool bound (routines it calls
dispatch to this pool, as in its ``async with`` block), in a copy of the caller's
context. ``dispatcher()`` is the hub: ``await hub.call(fn, args, kwargs)`` works on
any event loop of the process (the exchange runs on the pool's loop, see
:mod:`wool_local.workers.crossloop`).

Starting. The first ``start`` (from ``run``, ``dispatcher`` or an executor's first
call) starts the thread, which enters the pool; the calling thread waits, holding
no lock, so the zygote forked meanwhile copies no held lock of it.

Users and stopping. A user of the pool with work of its own on the loop (an
executor's pending calls, its maps) :meth:`attaches <attach>` a wind-down
callback. ``stop(abort=False)`` refuses further ``run``/``attach``, calls every
wind-down callback on the loop, and leaves the pool once every user has
detached and every ``run`` task has ended. ``abort=True`` also cancels the
``run`` tasks (their calls are cancelled in the workers) and tells the users
to abort. ``stop`` is safe to call again to escalate to an abort.

Process life. At interpreter exit (before threads are joined) every running
pool is stopped: its work finishes, or is aborted if the program ends with an
uncaught exception. In a forked child the parent's pools refuse calls (their
thread and loop are the parent's), and the ambient pool is unset there.

Waiting from the loop's own thread (a done-callback of a future it settles)
would wait forever: :meth:`check_not_loop_thread` and :class:`LoopFuture`
raise RuntimeError instead.

The ambient pool. :func:`install_ambient` makes a pool the process's ambient
one: an ``Executor()`` built with no arguments at all runs its calls on it (an
executor given any argument has a pool of its own), and a routine called where
no pool is bound (``asyncio.run(main())`` in a script, say) dispatches to it,
the first such call starting it. :func:`uninstall_ambient` undoes that; neither
stops the pool.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when a pool starts: ``import wool_local`` stays cheap
    import asyncio

    from .pool import WorkerPool
    from .workers import Dispatcher

#: Signals only the main thread should receive (see BackgroundPool._start).
_MAIN_THREAD_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}

BLOCKING = (
    "{what} was called in the pool's own loop thread ({name}; a done-callback, say), "
    "where it would wait forever: that thread is the one that delivers results. Add a "
    "done-callback instead, or wait from another thread"
)


class BackgroundPool:
    """A :class:`~wool_local.WorkerPool` (``pool``; default: ``WorkerPool()``) entered
    on a uvloop loop in a non-daemon thread named ``name``; see the module docstring."""

    def __init__(self, pool: WorkerPool | None = None, *, name: str = "wool_local.pool") -> None:
        if pool is None:
            from .pool import WorkerPool

            pool = WorkerPool()
        self.pool = pool
        self.name = name
        #: The loop, once started (never reset: call_soon finds it closed when done).
        self.loop: asyncio.AbstractEventLoop | None = None
        #: The loop thread's ident, once it runs (-1 before).
        self.thread_id = -1
        #: stop() was called, or the start failed: no more run() or attach().
        self.stopping = False
        #: Why it cannot take work (its start failed, or this is a forked child).
        self.broken: BaseException | None = None
        self._lock = threading.Lock()  # callers' side: start, stop, attach
        self._thread: threading.Thread | None = None
        self._running = False  # started, and not broken
        # -- the loop thread's, but for _users (written under _lock, read on the loop) --
        self._users: dict[int, Callable[[bool], None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()  # run()'s
        self._stop: bool | None = None  # stop asked on the loop: abort?
        self._done: asyncio.Future[None] | None = None  # set: leave the pool

    # -- the callers' side (any thread) -------------------------------------------

    @property
    def hub(self) -> Dispatcher:
        """The started pool's hub; RuntimeError if it is not running."""
        return self.pool.hub

    def dispatcher(self) -> Dispatcher:
        """The pool's hub, starting the pool first if needed (the caller waits)."""
        if not self._running:
            self.start()
        return self.pool.hub

    def check_not_loop_thread(self, what: str) -> None:
        """RuntimeError if called in the loop's thread, where waiting hangs for good."""
        if threading.get_ident() == self.thread_id:
            raise RuntimeError(BLOCKING.format(what=what, name=self.name))

    def start(self) -> None:
        """Start the thread and the pool on it, and wait until the pool runs (nothing if
        it runs). Raises the start's error; later calls raise PoolClosed."""
        if self._running:
            return
        with self._lock:
            if self._running:
                return
            if self.broken is not None or self.stopping:
                from .workers import PoolClosed

                broken = self.broken
                why = f": {str(broken) or type(broken).__name__}" if broken else " (stopped)"
                raise PoolClosed(f"this pool cannot take calls{why}") from self.broken
            self._start()

    def _start(self) -> None:
        import uvloop

        loop = uvloop.new_event_loop()
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        thread = threading.Thread(
            target=self._run_loop,
            args=(loop, started, threading.get_ident()),
            name=self.name,
            daemon=False,
        )
        _register_hooks()
        self.loop, self._thread = loop, thread  # call_soon and stop reach it from now on
        _live.add(self)
        # The thread starts with these signals blocked (a thread inherits its creator's
        # mask), so the kernel delivers them to the main thread. Delivered here, they
        # would only set CPython's flag: a main thread asleep in its own event loop
        # (asyncio.run's SIGINT handler uses no wakeup fd) would never see a Ctrl-C.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, _MAIN_THREAD_SIGNALS)
        try:
            thread.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
        try:
            started.result()
        except BaseException as exc:  # it failed, or this wait was interrupted (Ctrl-C)
            self.broken = exc
            self.stopping = True
            self.call_soon(self._begin_stop, True)  # stop a pool that may start meanwhile
            thread.join()
            raise
        self._running = True

    def call_soon(self, callback: Callable[..., object], *args: Any) -> bool:
        """Run ``callback(*args)`` on the loop's thread; False (and nothing) if the loop
        is not there (not started, or gone)."""
        loop = self.loop
        if loop is None:
            return False
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            return False  # the loop is closed: the pool stopped, nothing is left to do
        return True

    def run(self, coro: Coroutine[Any, Any, Any]) -> LoopFuture:
        """Run ``coro`` on the pool's loop with the pool bound, in a copy of the caller's
        context; its result as a :class:`LoopFuture` (cancelling it cancels the task).
        Starts the pool if needed."""
        try:
            self.start()
            fut = LoopFuture(self)
            with self._lock:
                if self.stopping:
                    from .workers import PoolClosed

                    raise PoolClosed("this pool is stopping: it takes no more calls")
                # Under the lock: queued before a stop's own callback (FIFO), so a
                # stop sees this task and waits for it.
                self.call_soon(self._launch, coro, fut)
        except BaseException:
            coro.close()
            raise
        return fut

    def attach(self, key: int, wind_down: Callable[[bool], None]) -> None:
        """Register a user of the pool (``key``: its id): the pool does not leave its
        block while it is attached, and ``wind_down(abort)`` is called on the loop
        when a stop begins. The user :meth:`detaches <detach>` when its work is done.
        RuntimeError if the pool is stopping."""
        with self._lock:
            if self.stopping:
                raise RuntimeError("the pool is stopping: it takes no more users")
            self._users[key] = wind_down

    def detach(self, key: int) -> None:
        """Loop side: the user ``key`` has no more work here."""
        if self._users.pop(key, None) is not None:
            self._maybe_done()

    def stop(self, wait: bool = True, abort: bool = False) -> None:
        """No more ``run``/``attach``; leave the pool once the work is done (``abort``:
        cancel it first). ``wait``: until the thread ended. Calling it again with
        ``abort=True`` escalates."""
        with self._lock:
            self.stopping = True
            thread = self._thread
        if thread is None:
            return
        if wait:
            self.check_not_loop_thread("BackgroundPool.stop(wait=True)")
        self.call_soon(self._begin_stop, abort)
        if wait:
            thread.join()

    # -- the loop thread ------------------------------------------------------------

    def _launch(self, coro: Coroutine[Any, Any, Any], fut: LoopFuture) -> None:
        assert self.loop is not None
        if fut.cancelled() or self._stop is True:
            coro.close()
            fut.cancel()
            return
        task = self.loop.create_task(self._bound(coro))
        self._tasks.add(task)
        task.add_done_callback(lambda t: _settle(fut, t))
        task.add_done_callback(self._task_done)
        # Cancelling the future from any thread cancels the task.
        fut.add_done_callback(lambda f: f.cancelled() and self.call_soon(task.cancel))

    async def _bound(self, coro: Coroutine[Any, Any, Any]) -> Any:
        from .workers import __proxy__

        __proxy__.set(self.pool.hub.proxy)  # this task's context is a copy of its own
        return await coro

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if self._stop is not None:
            self._maybe_done()

    def _begin_stop(self, abort: bool) -> None:
        """Tell the users to wind down (or abort) and leave the pool once they are done."""
        if self._stop is None or abort:
            self._stop = abort or bool(self._stop)
        if self._done is None:
            return  # still starting: _serve comes back here once it has
        if abort:
            for task in list(self._tasks):
                task.cancel()
        for wind_down in list(self._users.values()):
            wind_down(abort)
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self._stop is None or self._users or self._tasks or self._done is None:
            return
        if not self._done.done():
            self._done.set_result(None)

    def _run_loop(
        self, loop: asyncio.AbstractEventLoop, started: concurrent.futures.Future[None], caller: int
    ) -> None:
        import asyncio

        self.thread_id = threading.get_ident()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve(started, caller))
            # Left over: exchanges other loops started here (crossloop). Cancel them so
            # their callers get an answer rather than wait forever.
            leftover = asyncio.all_tasks(loop)
            for task in leftover:
                task.cancel()
            if leftover:
                loop.run_until_complete(asyncio.gather(*leftover, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            self._running = False
            asyncio.set_event_loop(None)
            loop.close()
            _live.discard(self)

    async def _serve(self, started: concurrent.futures.Future[None], caller: int) -> None:
        import asyncio

        from .workers import zygote

        # The zygote is forked from this thread. The thread that started us waits
        # (holding no lock) until the pool runs; if no other thread exists, the fork
        # is safe and the warning about threads would only mislead.
        me = threading.current_thread()
        others = [t for t in threading.enumerate() if t is not me and t.ident != caller]
        try:
            with contextlib.nullcontext() if others else zygote.threads_accounted_for():
                await self.pool.__aenter__()
        except BaseException as exc:
            started.set_exception(exc)
            return
        self._done = asyncio.get_running_loop().create_future()
        started.set_result(None)
        if self._stop is not None:  # stopped while it started (the starter was interrupted)
            self._begin_stop(self._stop)
        try:
            await self._done
        finally:
            await self.pool.__aexit__(None, None, None)


class LoopFuture(concurrent.futures.Future):
    """A :class:`concurrent.futures.Future` settled on a :class:`BackgroundPool`'s loop;
    waiting on it unfinished in that loop's thread raises RuntimeError (it would hang)."""

    def __init__(self, pool: BackgroundPool) -> None:
        super().__init__()
        self._wl_pool = pool

    def result(self, timeout: float | None = None) -> Any:
        if threading.get_ident() == self._wl_pool.thread_id and not self.done():
            self._wl_pool.check_not_loop_thread("Future.result()")
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if threading.get_ident() == self._wl_pool.thread_id and not self.done():
            self._wl_pool.check_not_loop_thread("Future.exception()")
        return super().exception(timeout)


def _settle(fut: LoopFuture, task: asyncio.Task[Any]) -> None:
    """Give ``fut`` the outcome of ``task`` (unless it was cancelled meanwhile)."""
    if not fut.set_running_or_notify_cancel():
        return
    if task.cancelled():
        fut.set_exception(concurrent.futures.CancelledError("cancelled on the pool's loop"))
        return
    exc = task.exception()
    if exc is None:
        fut.set_result(task.result())
    else:
        fut.set_exception(exc)


# -- the ambient pool ---------------------------------------------------------------

#: The process's ambient pool (:func:`install_ambient`), or None. An ``Executor()``
#: built with no arguments runs on it; one given any argument has a pool of its own.
ambient: BackgroundPool | None = None


def install_ambient(pool: BackgroundPool) -> None:
    """Make ``pool`` the ambient pool: ``Executor()`` with no arguments runs on it, and
    a routine called where no pool is bound dispatches to it (the first such call
    starts it; the calling thread waits meanwhile). Does not start it."""
    global ambient
    from .workers import hubclient

    _register_hooks()  # a forked child does not inherit it
    ambient = pool
    hubclient.fallback = pool.dispatcher


def uninstall_ambient() -> BackgroundPool | None:
    """Undo :func:`install_ambient` (routines outside a pool raise NoPoolError again,
    ``Executor()`` starts pools of its own); the pool it was, not stopped."""
    global ambient
    pool, ambient = ambient, None
    if pool is not None:  # (installed: the import is done already)
        from .workers import hubclient

        if getattr(hubclient.fallback, "__self__", None) is pool:
            hubclient.fallback = None
    return pool


# -- process life ----------------------------------------------------------------------

#: Pools whose loop thread runs.
_live: set[BackgroundPool] = set()
_hooked = False


def _register_hooks() -> None:
    """Before the interpreter joins its threads at exit, stop every pool left running:
    let the work finish (as the stdlib's executors do), or abort it if the program
    ended with an uncaught exception (Ctrl-C). In a forked child, the parent's pools
    refuse calls (their thread and loop are the parent's)."""
    global _hooked
    if not _hooked:
        _hooked = True
        threading._register_atexit(_at_exit)  # type: ignore[attr-defined]
        os.register_at_fork(after_in_child=_forget_in_child)


def _forget_in_child() -> None:
    for pool in _live:
        pool.broken = RuntimeError(
            "it was started by the parent of this process: its thread and pool are there"
        )
        pool.stopping = True
        pool._running = False
    _live.clear()
    if ambient is not None:
        uninstall_ambient()


def _at_exit() -> None:
    failed = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    for pool in list(_live):
        pool.stop(wait=False, abort=bool(failed))


__all__ = ["BackgroundPool", "LoopFuture", "ambient", "install_ambient", "uninstall_ambient"]
