"""``ExecutorCore``: what happens to an :class:`~wool_local.Executor`'s calls on its
pool's loop: the inbox, pending and running calls, shutdown, and the initializer.

A call of a plain function is *running* (``cancel()`` no longer works on it) once
it is handed to the pool; a pool of ``n`` workers gets at most
``LEAD_PER_WORKER * n`` of them ahead of their results, the rest stay pending,
as the stdlib's executors keep all but a few calls in their own queue. Async
functions and routines are handed over at once (a worker runs many of them
concurrently). See docs/architecture.md, "Executor: threads and loops".
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import functools
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .callables import ByIdentity

if TYPE_CHECKING:  # imported when the pool starts: ``import wool_local`` stays cheap
    import asyncio

    from .background import BackgroundPool
    from .executor import Future
    from .executor_map import MapRelay

#: Plain-function calls handed to the pool ahead of their results, per worker:
#: enough to keep a worker's pipeline full of tiny calls; the rest stay pending
#: (cancellable), as in the stdlib's executors.
LEAD_PER_WORKER = 16


class ExecutorCore:
    """The executor's state, shared by its facade, its pool's loop and its futures (they
    hold this, not the :class:`Executor`, so an executor dropped without a shutdown is
    collected and stops its pool).

    It is a user of its :class:`BackgroundPool` (attached at the first call): the
    pool does not stop before the executor's work is done, and tells the executor
    when a stop (interpreter exit, say) begins. ``own``: the pool is this
    executor's, and stops with it."""

    def __init__(
        self, bg: BackgroundPool, own: bool, init: tuple[Callable[..., object], tuple] | None
    ) -> None:
        from .executor import Future  # (the executor module imports this one)

        self.new_future = Future
        self.bg = bg
        self.own = own
        self.pool = bg.pool
        self.soon = bg.call_soon  # fn(*args) on the loop (nothing if it is gone)
        self.init = init
        self.init_key = os.urandom(8).hex()
        self.lock = threading.Lock()
        self.shut = False  # no more submits
        self.broken: BaseException | None = None
        self.attached = False  # a user of the pool: started, not yet done
        self.idle = threading.Event()  # shut down, and the work is done
        self.inbox: deque[Future] = deque()  # submitted, not yet seen by the loop
        self.waking = False  # a drain of the inbox is scheduled
        self.wrapped = ByIdentity()  # fn -> fn behind the initializer
        self.bodies = ByIdentity()  # fn -> (fn, body, plain, routine): see body_for
        # -- the loop thread's alone --
        self.waiting: deque[Future] = deque()  # plain calls held back: pending
        self.tasks: dict[Future, tuple[asyncio.Task[None], bool]] = {}  # and: plain?
        self.sync_running = 0
        self.lead = LEAD_PER_WORKER * bg.pool.spawn
        self.maps: set[MapRelay] = set()
        self.closing = False

    # -- the callers' side (any thread) -------------------------------------------

    def submit(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Future:
        entry = self.bodies.get(fn) or self.body_for(fn)
        with self.lock:
            self.check_open()
            if not self.attached:
                self.attach()
            fut = self.new_future(self, (entry, args, kwargs, contextvars.copy_context()))
            self.inbox.append(fut)
            if not self.waking:
                self.waking = True
                self.soon(self.drain)
        return fut

    def map(
        self,
        fn: Any,
        iterables: tuple[Iterable[Any], ...],
        timeout: float | None,
        chunksize: int | str,
        ordered: bool,
        progress: Any,
    ) -> Iterator[Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        self.bg.check_not_loop_thread("Executor.map()")
        from .executor_map import MapRelay, results
        from .mapping import map_over

        with self.lock:
            self.check_open()
            if not self.attached:
                self.attach()
            hub = self.pool.hub
            steps = map_over(
                hub,
                hub.options.size,
                self.wrap(fn),
                iterables,
                chunksize=chunksize,
                ordered=ordered,
                progress=progress,
                chunks=True,  # handed over a chunk at a time, not an item at a time
            )
            relay = MapRelay(self.bg, steps, self.map_ended)
            self.soon(self.start_map, relay, contextvars.copy_context())
        out = results(relay, deadline)
        weakref.finalize(out, relay.stop).atexit = False
        return out

    def check_open(self) -> None:
        broken = self.broken or self.bg.broken
        if broken is not None:
            raise concurrent.futures.BrokenExecutor(
                f"this executor cannot take calls: {broken}"
            ) from broken
        if self.shut or self.bg.stopping:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def attach(self) -> None:
        """Start the pool if needed (the caller waits) and become its user (called with
        the lock held)."""
        try:
            self.bg.start()
            # Before attaching: a stop may reach wind_down (and maybe_done) at once.
            self.attached = True
            self.bg.attach(id(self), self.wind_down)
        except BaseException as exc:  # it failed, or the wait was interrupted (Ctrl-C)
            self.attached = False
            self.broken = exc
            self.shut = True
            raise

    def body_for(self, fn: Any) -> tuple[Any, Any, bool, Any]:
        """``(fn, body, plain, routine)``: what a worker awaits for ``fn``, whether
        ``fn`` is a plain function, and the routine ``fn`` is, if it is one (cached:
        working that out costs more than the rest of a submit)."""
        from .callables import SyncBody, body_of
        from .routine import Routine

        body = body_of(self.wrap(fn))
        entry = (fn, body, type(body) is SyncBody, fn if isinstance(fn, Routine) else None)
        return self.bodies.put(fn, entry)

    def wrap(self, fn: Any) -> Any:
        """``fn``, or with an initializer ``fn`` behind a wrapper that runs it first."""
        if self.init is None:
            return fn
        known = self.wrapped.get(fn)
        if known is not None:
            return known
        from .routine import Routine

        initializer, initargs = self.init
        if isinstance(fn, Routine):
            wrapped: Any = _AsyncInitThen(
                _init_then_await, self.init_key, initializer, initargs, fn._body
            )
        elif _is_async(fn):
            wrapped = _AsyncInitThen(_init_then_await, self.init_key, initializer, initargs, fn)
        else:
            wrapped = _InitThen(self.init_key, initializer, initargs, fn)
        return self.wrapped.put(fn, wrapped)

    def close(self, wait: bool, cancel_futures: bool, abort: bool = False) -> None:
        """``shutdown``: no more submits; then the loop finishes (or, on ``abort``,
        cancels) the work, and an own pool stops; ``wait``: until that is done."""
        with self.lock:
            self.shut = True
            attached = self.attached
        if not attached:
            return
        if wait:
            self.bg.check_not_loop_thread("Executor.shutdown(wait=True)")
        scheduled = self.soon(self.closed, cancel_futures, abort)
        if self.own:
            self.bg.stop(wait, abort)
        elif wait and scheduled and self.bg.broken is None:
            self.idle.wait()  # (a shared pool: not stopped, only this executor's work)

    # -- the loop thread ------------------------------------------------------------

    def wind_down(self, abort: bool) -> None:
        """The pool is stopping: finish the work (or abort it) as a shutdown would."""
        self.shut = True
        self.closed(abort, abort)

    def drain(self) -> None:
        """Take the submitted calls: hand them to the pool, or hold them back."""
        self.waking = False
        inbox, waiting = self.inbox, self.waiting
        while inbox:
            fut = inbox.popleft()
            call = fut._wl_call
            if call is not None and call[0][2] and (waiting or self.sync_running >= self.lead):
                waiting.append(fut)
            else:
                self.launch(fut)
        if self.closing:
            self.maybe_done()

    def launch(self, fut: Future) -> None:
        if fut._wl_seen:
            return  # cancelled, and the loop knows
        fut._wl_seen = True
        call, fut._wl_call = fut._wl_call, None
        if not fut.set_running_or_notify_cancel():
            return
        assert call is not None and self.bg.loop is not None
        entry, args, kwargs, ctx = call
        sync = entry[2]
        if sync:
            self.sync_running += 1
        task = self.bg.loop.create_task(self.run(fut, entry, args, kwargs), context=ctx)
        self.tasks[fut] = (task, sync)

    async def run(self, fut: Future, entry: Any, args: Any, kwargs: Any) -> None:
        """One call, in a copy of the submitter's context."""
        import asyncio

        _, body, sync, routine = entry
        hub = self.pool.hub
        try:
            if sync:
                result = await hub.call(body, args, kwargs)
            else:
                result = await self.run_async(hub, body, routine, args, kwargs)
        except asyncio.CancelledError:
            _settle(fut, None, concurrent.futures.CancelledError(_cancelled_name(body)))
        except BaseException as exc:
            _settle(fut, None, exc)
        else:
            _settle(fut, result, None)
        finally:
            self.finished(fut)

    async def run_async(self, hub: Any, body: Any, routine: Any, args: Any, kwargs: Any) -> Any:
        """An async function or routine, called as in the pool's block: routines it
        calls in the worker dispatch to this pool, and a routine's dispatch_timeout
        (or the submitter's ``RuntimeContext(dispatch_timeout=...)``) bounds it."""
        import asyncio

        from .context import ambient_dispatch_timeout
        from .routine import _timed_out
        from .workers import __proxy__

        __proxy__.set(hub.proxy)  # this call's context is its own copy
        limit = None
        if routine is not None:
            limit = routine.dispatch_timeout or ambient_dispatch_timeout()
        if limit is None:
            return await hub.call(body, args, kwargs)
        deadline = asyncio.timeout(limit)
        try:
            async with deadline:
                return await hub.call(body, args, kwargs)
        except TimeoutError:
            if deadline.expired():  # this limit, not a TimeoutError the routine raised
                raise _timed_out(routine, limit) from None
            raise

    def finished(self, fut: Future, _task: Any = None) -> None:
        """``fut``'s task ended (or was cancelled before it started: its coroutine never
        ran, so this also runs as the task's done-callback when it is cancelled)."""
        entry = self.tasks.pop(fut, None)
        if entry is None:
            return
        if not fut.done():
            _settle(fut, None, concurrent.futures.CancelledError("cancelled: the executor stopped"))
        if entry[1]:
            self.sync_running -= 1
            self.pump()
        if self.closing:
            self.maybe_done()

    def pump(self) -> None:
        """Hand held-back plain calls to the pool while it has room for them."""
        waiting = self.waiting
        while waiting and self.sync_running < self.lead:
            self.launch(waiting.popleft())

    def cancelled(self, fut: Future) -> None:
        """``fut`` was cancelled while pending: tell its waiters (``wait``,
        ``as_completed``) now, not when it would have been handed over."""
        if not fut._wl_seen:
            fut._wl_seen = True
            fut._wl_call = None
            fut.set_running_or_notify_cancel()
        waiting = self.waiting
        while waiting and waiting[0]._wl_seen:
            waiting.popleft()
        if self.closing:
            self.maybe_done()

    def closed(self, cancel_futures: bool, abort: bool) -> None:
        """Shutdown on the loop: take what was submitted before it, cancel what it says,
        then stop the pool once the rest is done."""
        self.closing = True
        self.drain()
        if cancel_futures or abort:
            while self.waiting:
                fut = self.waiting.popleft()
                fut.cancel()
                self.cancelled(fut)
        for relay in list(self.maps):
            if cancel_futures or abort:
                relay.cancel()
            else:
                relay.unbounded()  # stdlib maps finish at shutdown; keep every result
        if abort:
            for fut, (task, _) in list(self.tasks.items()):
                task.cancel()
                task.add_done_callback(functools.partial(self.finished, fut))
        self.maybe_done()

    def maybe_done(self) -> None:
        """Closing, and the work is done: the pool may stop (for this executor)."""
        if self.tasks or self.waiting or self.maps or self.inbox or not self.attached:
            return
        self.bg.detach(id(self))
        self.idle.set()

    def start_map(self, relay: MapRelay, ctx: contextvars.Context) -> None:
        if relay.start(ctx):
            self.maps.add(relay)

    def map_ended(self, relay: MapRelay) -> None:
        self.maps.discard(relay)
        if self.closing:
            self.maybe_done()


def _settle(fut: Future, result: Any, exc: BaseException | None) -> None:
    try:
        if exc is None:
            fut.set_result(result)
        else:
            fut.set_exception(exc)
    except concurrent.futures.InvalidStateError:
        pass  # settled by its owner meanwhile


def _cancelled_name(body: Any) -> str:
    from .workers.payload import name_of

    return f"{name_of(body)} was cancelled in its worker"


def _is_async(fn: Any) -> bool:
    import inspect

    return inspect.iscoroutinefunction(fn)


# -- initializer --------------------------------------------------------------------

#: In a worker: the executors (by key) whose initializer has run in this process.
_initialized: set[str] = set()


def _initialize(key: str, initializer: Callable[..., object], initargs: tuple) -> None:
    if key not in _initialized:
        initializer(*initargs)
        _initialized.add(key)


class _InitThen:
    """A plain function behind an executor's initializer (runs it once per worker)."""

    def __init__(
        self, key: str, initializer: Callable[..., object], initargs: tuple, fn: Any
    ) -> None:
        self.key, self.initializer, self.initargs, self.fn = key, initializer, initargs, fn
        self.__qualname__ = getattr(fn, "__qualname__", None) or type(fn).__qualname__
        self.__module__ = getattr(fn, "__module__", None) or __name__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.key not in _initialized:
            _initialize(self.key, self.initializer, self.initargs)
        return self.fn(*args, **kwargs)

    def __reduce__(self) -> Any:
        return (_InitThen, (self.key, self.initializer, self.initargs, self.fn))


class _AsyncInitThen(functools.partial):
    """An async body behind an executor's initializer: a partial of
    :func:`_init_then_await`, so it is seen as a coroutine function; named as the body."""

    def __init__(self, *args: Any) -> None:
        body = args[-1]
        self.__qualname__ = getattr(body, "__qualname__", None) or type(body).__qualname__
        self.__module__ = getattr(body, "__module__", None) or __name__


async def _init_then_await(
    key: str, initializer: Callable[..., object], initargs: tuple, body: Any, *a: Any, **kw: Any
) -> Any:
    if key not in _initialized:
        _initialize(key, initializer, initargs)
    return await body(*a, **kw)


__all__ = ["LEAD_PER_WORKER", "ExecutorCore"]
