"""``Executor``: a :class:`concurrent.futures.Executor` over a :class:`~wool_local.WorkerPool`.

Synchronous code gets the pool through the stdlib's executor interface::

    with wool_local.Executor() as ex:        # was: ProcessPoolExecutor()
        futures = [ex.submit(digest, blob) for blob in blobs]
        print(list(ex.map(len, blobs)))

Threads and loops. The pool is a :class:`~wool_local.background.BackgroundPool`
(a private uvloop loop in a thread named ``wool_local.Executor``), started by
the first ``submit`` or ``map``. An executor built with no arguments while the
process has an ambient pool (``wool-local run``) runs on that one instead, and
its shutdown leaves it running. A caller never touches the loop: ``submit``
puts the call in an inbox (a deque) and wakes the loop once per burst; the
loop starts a task per call that awaits ``hub.call`` and settles the call's
:class:`concurrent.futures.Future`, whose callbacks therefore run in the
loop's thread. ``map`` runs :meth:`WorkerPool.map` on the loop and hands its
results over through :mod:`wool_local.executor_map`.

Pending and running. A call of a plain function is *running*, and
``cancel()`` no longer works on it, once it is handed to the pool; the
executor hands a pool of ``n`` workers at most ``LEAD_PER_WORKER * n`` such
calls ahead of their results and keeps the rest pending, as the stdlib keeps
all but a few calls in its own queue. Async functions and routines are
handed over at once (a worker runs many of them concurrently).

Shutting down. ``shutdown(wait=True)`` lets every submitted call finish;
``cancel_futures=True`` cancels the pending ones first. Leaving the ``with``
block by an exception (Ctrl-C included) instead *aborts*: pending calls are
cancelled, running ones are cancelled in their workers, and the pool stops at
once (a worker is killed only past ``stop_timeout``).
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
from typing import TYPE_CHECKING, Any, Literal

from . import background
from .background import BackgroundPool, LoopFuture

if TYPE_CHECKING:  # imported when the pool starts: ``import wool_local`` stays cheap
    import asyncio

    from .executor_map import MapRelay
    from .pool import WorkerPool
    from .workers import WorkerLimits

#: Plain-function calls handed to the pool ahead of their results, per worker:
#: enough to keep a worker's pipeline full of tiny calls; the rest stay pending
#: (cancellable), as in the stdlib's executors.
LEAD_PER_WORKER = 16

_MP_CONTEXT = (
    "wool_local.Executor forks its workers from a zygote process of its own; it takes "
    "no mp_context (drop the argument)"
)


class Executor(concurrent.futures.Executor):
    """A :class:`concurrent.futures.Executor` whose calls run in a wool_local pool.

    ``max_workers`` is the most worker processes (default: the usable CPUs, see
    :func:`~wool_local.available_cpus`), the pool's ``spawn``. ``initializer(*initargs)``
    runs in each worker process before the first call of this executor there.
    ``max_tasks_per_child`` retires a worker after that many calls (a ``map``
    chunk counts as one), as ``WorkerLimits(max_tasks=...)``. The keyword options
    are :class:`~wool_local.WorkerPool`'s: ``limits``, ``min_workers``,
    ``max_inflight``, ``cancel_grace``, ``monitor_interval``, ``ring_capacity``,
    ``proxy_retry_after``, ``stop_timeout`` (None: the pool's default).

    ``fn`` may be a plain function (a ``def``, builtin, lambda or closure, pickled
    by value when it cannot be imported), an ``async def`` function or a routine
    (its body runs in the worker). The pool starts at the first ``submit`` or
    ``map``; see the module's docstring for threads, cancellation and shutdown.

    Built with no arguments at all while the process has an ambient pool
    (:func:`wool_local.background.install_ambient`), it runs its calls there and its
    shutdown leaves that pool running; given any argument, it has a pool of its own.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
        limits: WorkerLimits | None = None,
        min_workers: int | None = None,
        max_inflight: int | None = None,
        cancel_grace: float | None = None,
        monitor_interval: float | None = None,
        ring_capacity: int | None = None,
        proxy_retry_after: float | None = None,
        stop_timeout: float | None = None,
    ) -> None:
        from .pool import WorkerPool  # validates the options now, starts nothing

        if mp_context is not None:
            raise TypeError(_MP_CONTEXT)
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None:
            import dataclasses

            from .workers import WorkerLimits

            base = WorkerLimits() if limits is None else limits
            limits = dataclasses.replace(base, max_tasks=max_tasks_per_child)
        given: dict[str, Any] = {
            "limits": limits,
            "min_workers": min_workers,
            "max_inflight": max_inflight,
            "cancel_grace": cancel_grace,
            "monitor_interval": monitor_interval,
            "ring_capacity": ring_capacity,
            "proxy_retry_after": proxy_retry_after,
            "stop_timeout": stop_timeout,
        }
        ambient = background.ambient
        plain = max_workers is None and initializer is None and not initargs
        if ambient is not None and plain and all(v is None for v in given.values()):
            self._core = _Core(ambient, False, None)
        else:
            pool = WorkerPool(max_workers, **{k: v for k, v in given.items() if v is not None})
            init = None if initializer is None else (initializer, tuple(initargs))
            self._core = _Core(BackgroundPool(pool, name="wool_local.Executor"), True, init)
        # Collected without a shutdown: stop the pool once its work is done.
        weakref.finalize(self, self._core.close, False, False).atexit = False

    # -- the stdlib interface ---------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Schedule ``fn(*args, **kwargs)`` in a worker; a Future of its result."""
        return self._core.submit(fn, args, kwargs)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | str = "auto",
        ordered: bool = True,
        progress: bool | Callable[[int, int | None], None] = False,
    ) -> Iterator[Any]:
        """``fn(*args)`` for each argument tuple of ``zip(*iterables)``: the results, in
        order, as an iterator.

        It is :meth:`WorkerPool.map` seen from synchronous code: the input is read
        lazily, in the executor's thread (a bounded window ahead; an endless
        generator works), and sent in
        chunks, ``chunksize="auto"`` sizing them from the measured cost per item
        (an int fixes it); the work starts at this call. ``timeout``: the iterator
        raises TimeoutError if a result is not there ``timeout`` seconds after this
        call. An item that raises ends the iteration with its exception (noted with
        the item's index), after the results before it. ``ordered=False`` yields
        results as they come; ``progress`` as in :meth:`WorkerPool.map`.
        """
        return self._core.map(fn, iterables, timeout, chunksize, ordered, progress)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more calls; ``cancel_futures`` cancels the pending ones; ``wait`` blocks
        until the running ones (and maps) are done and the pool has stopped."""
        self._core.close(wait, cancel_futures)

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> Literal[False]:
        if exc_type is None:
            self._core.close(True, False)
        else:  # an error, Ctrl-C: stop now, do not finish the work
            self._core.close(True, True, abort=True)
        return False

    # -- wool_local's own ---------------------------------------------------------

    @property
    def pool(self) -> WorkerPool:
        """The :class:`~wool_local.WorkerPool` the calls run on (running once started)."""
        return self._core.pool

    @property
    def max_workers(self) -> int:
        """The most worker processes the pool runs."""
        return self._core.pool.spawn

    @property
    def _max_workers(self) -> int:  # the name ProcessPoolExecutor uses
        return self._core.pool.spawn


class Future(LoopFuture):
    """A call's future; a :class:`concurrent.futures.Future` that refuses to block the
    executor's own loop thread (where it would wait forever)."""

    def __init__(self, core: _Core, call: tuple[Any, ...] | None) -> None:
        super().__init__(core.bg)
        self._wl_core = core
        #: (what to run, args, kwargs, the submitter's context) until handed over.
        self._wl_call = call
        #: The loop has seen it leave the pending state (handed over, or cancelled).
        self._wl_seen = False

    def cancel(self) -> bool:
        if not super().cancel():
            return False
        self._wl_core.soon(self._wl_core.cancelled, self)
        return True


class _Core:
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
        self.wrapped: dict[int, tuple[Any, Any]] = {}
        self.bodies: dict[int, tuple[Any, Any, bool, Any]] = {}
        # -- the loop thread's alone --
        self.waiting: deque[Future] = deque()  # plain calls held back: pending
        self.tasks: dict[Future, tuple[asyncio.Task[None], bool]] = {}  # and: plain?
        self.sync_running = 0
        self.lead = LEAD_PER_WORKER * bg.pool.spawn
        self.maps: set[MapRelay] = set()
        self.closing = False

    # -- the callers' side (any thread) -------------------------------------------

    def submit(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Future:
        entry = self.bodies.get(id(fn))
        if entry is None or entry[0] is not fn:
            entry = self.body_for(fn)
        with self.lock:
            self.check_open()
            if not self.attached:
                self.attach()
            fut = Future(self, (entry, args, kwargs, contextvars.copy_context()))
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
        if len(self.bodies) >= 1024:
            self.bodies.clear()
        self.bodies[id(fn)] = entry  # (keeps fn alive: its id stays its own)
        return entry

    def wrap(self, fn: Any) -> Any:
        """``fn``, or with an initializer ``fn`` behind a wrapper that runs it first."""
        if self.init is None:
            return fn
        entry = self.wrapped.get(id(fn))
        if entry is not None and entry[0] is fn:
            return entry[1]
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
        if len(self.wrapped) >= 1024:
            self.wrapped.clear()
        self.wrapped[id(fn)] = (fn, wrapped)
        return wrapped

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
                raise TimeoutError(
                    f"{routine.__qualname__}() exceeded dispatch_timeout={limit} s"
                ) from None
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


__all__ = ["Executor", "Future"]
