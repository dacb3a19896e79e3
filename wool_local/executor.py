"""``Executor``: a :class:`concurrent.futures.Executor` over a :class:`~wool_local.WorkerPool`.

Synchronous code gets the pool through the stdlib's executor interface::

    with wool_local.Executor() as ex:        # was: ProcessPoolExecutor()
        futures = [ex.submit(digest, blob) for blob in blobs]
        print(list(ex.map(len, blobs)))

Threads and loops. The pool lives on a private uvloop event loop in a
background thread (``wool_local.Executor``, not a daemon), started by the
first ``submit`` or ``map``: the calling thread waits while the zygote is
forked (it holds no lock then, so the fork is safe) and the workers start.
From then on a caller never touches the loop: ``submit`` puts the call in an
inbox (a deque) and wakes the loop once per burst; the loop starts a task per
call that awaits ``hub.call`` and settles the call's
:class:`concurrent.futures.Future`, whose callbacks therefore run in the
loop's thread. ``map`` runs :meth:`WorkerPool.map` on the loop and hands its
results to the caller through a bounded buffer (the producer pauses when the
caller falls behind).

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
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # imported when the pool starts: ``import wool_local`` stays cheap
    import asyncio

    from .pool import WorkerPool
    from .workers import WorkerLimits

#: Plain-function calls handed to the pool ahead of their results, per worker:
#: enough to keep a worker's pipeline full of tiny calls; the rest stay pending
#: (cancellable), as in the stdlib's executors.
LEAD_PER_WORKER = 16
#: Results of a ``map`` buffered for the caller before the map pauses; it goes
#: on when the caller has taken half of them.
MAP_BUFFER = 8192

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
        pool = WorkerPool(max_workers, **{k: v for k, v in given.items() if v is not None})
        init = None if initializer is None else (initializer, tuple(initargs))
        self._core = _Core(pool, init)
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


class Future(concurrent.futures.Future):
    """A call's future; a :class:`concurrent.futures.Future` that refuses to block the
    executor's own loop thread (where it would wait forever)."""

    def __init__(self, core: _Core, call: tuple[Any, ...] | None) -> None:
        super().__init__()
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

    def result(self, timeout: float | None = None) -> Any:
        if threading.get_ident() == self._wl_core.thread_id and not self.done():
            raise RuntimeError(_BLOCKING.format("Future.result()"))
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if threading.get_ident() == self._wl_core.thread_id and not self.done():
            raise RuntimeError(_BLOCKING.format("Future.exception()"))
        return super().exception(timeout)


_BLOCKING = (
    "{} on an unfinished future of a wool_local.Executor was called in the executor's "
    "own loop thread (a done-callback, say), where it would wait forever: the thread "
    "waiting is the one that delivers results. Add a done-callback instead, or wait "
    "from another thread"
)


class _Core:
    """The executor's state, shared by its facade, its loop thread and its futures (the
    thread and futures hold this, not the :class:`Executor`, so an executor dropped
    without a shutdown is collected and stops its pool)."""

    def __init__(self, pool: WorkerPool, init: tuple[Callable[..., object], tuple] | None) -> None:
        self.pool = pool
        self.init = init
        self.init_key = os.urandom(8).hex()
        self.lock = threading.Lock()
        self.shut = False  # no more submits
        self.broken: BaseException | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.thread_id = -1
        self.inbox: deque[Future] = deque()  # submitted, not yet seen by the loop
        self.waking = False  # a drain of the inbox is scheduled
        self.wrapped: dict[int, tuple[Any, Any]] = {}
        self.bodies: dict[int, tuple[Any, Any, bool, Any]] = {}
        # -- the loop thread's alone --
        self.waiting: deque[Future] = deque()  # plain calls held back: pending
        self.tasks: dict[Future, tuple[asyncio.Task[None], bool]] = {}  # and: plain?
        self.sync_running = 0
        self.lead = LEAD_PER_WORKER * pool.spawn
        self.maps: set[_Relay] = set()
        self.closing = False
        self.done: asyncio.Future[None] | None = None  # set: the pool may stop

    # -- the callers' side (any thread) -------------------------------------------

    def submit(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Future:
        entry = self.bodies.get(id(fn))
        if entry is None or entry[0] is not fn:
            entry = self.body_for(fn)
        with self.lock:
            self.check_open()
            if self.loop is None:
                self.start()
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
        if threading.get_ident() == self.thread_id:
            raise RuntimeError(_BLOCKING.format("Executor.map()"))
        from .mapping import map_over

        with self.lock:
            self.check_open()
            if self.loop is None:
                self.start()
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
            relay = _Relay(self, steps)
            self.soon(self.start_map, relay, contextvars.copy_context())
        results = _results(relay, deadline)
        weakref.finalize(results, relay.stop).atexit = False
        return results

    def check_open(self) -> None:
        if self.broken is not None:
            raise concurrent.futures.BrokenExecutor(
                f"this executor cannot take calls: {self.broken}"
            ) from self.broken
        if self.shut:
            raise RuntimeError("cannot schedule new futures after shutdown")

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

    def soon(self, callback: Callable[..., object], *args: Any) -> None:
        """Run ``callback(*args)`` on the loop thread (nothing if the loop is gone)."""
        loop = self.loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            pass  # the loop is closed: the executor stopped, nothing is left to do

    def start(self) -> None:
        """Start the loop thread and the pool on it; wait until the pool runs (called
        with the lock held)."""
        import uvloop

        loop = uvloop.new_event_loop()
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        thread = threading.Thread(
            target=self.run_loop,
            args=(loop, started, threading.get_ident()),
            name="wool_local.Executor",
            daemon=False,
        )
        _register_hooks()
        self.loop, self.thread = loop, thread  # soon() and close() reach it from now on
        _live.add(self)
        thread.start()
        try:
            started.result()
        except BaseException as exc:  # it failed, or this wait was interrupted (Ctrl-C)
            self.broken = exc
            self.shut = True
            self.soon(self.closed, True, True)  # stop a pool that may start meanwhile
            thread.join()
            raise

    def close(self, wait: bool, cancel_futures: bool, abort: bool = False) -> None:
        """``shutdown``: no more submits; then the loop finishes (or, on ``abort``,
        cancels) the work and stops the pool; ``wait``: until the thread ended."""
        with self.lock:
            self.shut = True
            thread = self.thread
        if thread is None:
            return
        if wait and threading.get_ident() == self.thread_id:
            raise RuntimeError(_BLOCKING.format("Executor.shutdown(wait=True)"))
        self.soon(self.closed, cancel_futures, abort)
        if wait:
            thread.join()

    # -- the loop thread ------------------------------------------------------------

    def run_loop(
        self, loop: asyncio.AbstractEventLoop, started: concurrent.futures.Future[None], caller: int
    ) -> None:
        import asyncio

        self.thread_id = threading.get_ident()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self.serve(started, caller))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
            _live.discard(self)

    async def serve(self, started: concurrent.futures.Future[None], caller: int) -> None:
        import asyncio

        from .workers import zygote

        # The zygote is forked from this thread. The thread that started us waits
        # (holding no lock) until the pool runs; if no other thread exists, the fork
        # is safe and the warning about threads would only mislead.
        me = threading.current_thread()
        others = [t for t in threading.enumerate() if t is not me and t.ident != caller]
        quiet = not others and not getattr(zygote, "_warned_threads", True)
        if quiet:
            zygote._warned_threads = True
        try:
            await self.pool.__aenter__()
        except BaseException as exc:
            started.set_exception(exc)
            return
        finally:
            if quiet:
                zygote._warned_threads = False
        self.done = asyncio.get_running_loop().create_future()
        started.set_result(None)
        if self.closing:  # closed while it started (the starting thread was interrupted)
            self.maybe_done()
        try:
            await self.done
        finally:
            await self.pool.__aexit__(None, None, None)

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
        assert call is not None and self.loop is not None
        entry, args, kwargs, ctx = call
        sync = entry[2]
        if sync:
            self.sync_running += 1
        task = self.loop.create_task(self.run(fut, entry, args, kwargs), context=ctx)
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
        if self.tasks or self.waiting or self.maps or self.inbox or self.done is None:
            return
        if not self.done.done():
            self.done.set_result(None)

    def start_map(self, relay: _Relay, ctx: contextvars.Context) -> None:
        assert self.loop is not None
        if relay.cancelled:
            return
        self.maps.add(relay)
        relay.task = self.loop.create_task(relay.produce(), context=ctx)


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


# -- map: results handed from the loop thread to the caller ---------------------------


class _Relay:
    """A map's results on their way from the loop (:meth:`produce`) to the caller
    (:func:`_results`): batches in a deque both use, a condition the caller waits on
    when it is empty, an asyncio event the producer waits on when it is full.

    Results go over a chunk at a time (the list a worker answered with), so a
    handful of cross-thread operations is paid per chunk, not per item.
    """

    def __init__(self, core: _Core, steps: Any) -> None:
        self.core = core
        self.steps = steps
        self.buf: deque[list[Any]] = deque()
        self.cond = threading.Condition(threading.Lock())
        self.high = MAP_BUFFER
        self.produced = 0  # items put in buf (written by the producer only)
        self.taken = 0  # items taken from buf (written by the caller only)
        self.waiting = False  # the caller waits on cond
        self.paused = False  # the producer waits on room
        self.finished = False  # no more results will come (error: why)
        self.error: BaseException | None = None
        self.cancelled = False
        self.room: asyncio.Event | None = None
        self.task: asyncio.Task[None] | None = None

    async def produce(self) -> None:
        import asyncio

        self.room = room = asyncio.Event()
        try:
            async for chunk in self.steps:
                self.buf.append(chunk)
                self.produced += len(chunk)
                if self.waiting:
                    self.wake()
                if self.produced - self.taken >= self.high:  # full: wait for room
                    room.clear()
                    self.paused = True
                    if self.produced - self.taken >= self.high:
                        await room.wait()
                    self.paused = False
        except asyncio.CancelledError:
            self.error = concurrent.futures.CancelledError("the map was cancelled")
        except BaseException as exc:
            self.error = exc
        finally:
            try:
                await self.steps.aclose()
            except BaseException:
                pass  # cancelled again while closing: its chunks are cancelled already
            self.finished = True
            self.wake()
            core = self.core
            core.maps.discard(self)
            if core.closing:
                core.maybe_done()

    def wake(self) -> None:
        with self.cond:
            self.cond.notify()

    def give_room(self) -> None:
        """Caller side: the buffer is low; let a paused producer go on."""
        self.paused = False
        room = self.room
        if room is not None:
            self.core.soon(room.set)

    def wait(self, deadline: float | None) -> None:
        """Caller side: wait until a batch or the end is there (TimeoutError past
        ``deadline``)."""
        if threading.get_ident() == self.core.thread_id:
            raise RuntimeError(_BLOCKING.format("iterating Executor.map()"))
        buf = self.buf
        with self.cond:
            self.waiting = True
            try:
                while not buf and not self.finished:
                    if self.paused:
                        self.give_room()
                    if deadline is None:
                        self.cond.wait()
                        continue
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError("Executor.map(): the next result was not ready in time")
                    self.cond.wait(left)
            finally:
                self.waiting = False

    def stop(self) -> None:
        """Caller side: the results are no longer wanted; cancel what still runs."""
        self.buf.clear()
        if not self.finished:
            self.core.soon(self.cancel)

    def unbounded(self) -> None:
        """Loop side: buffer every result (the executor is shutting down)."""
        self.high = sys.maxsize
        if self.room is not None:
            self.room.set()

    def cancel(self) -> None:
        """Loop side: stop the map (its chunks are cancelled in their workers)."""
        self.cancelled = True
        if self.task is not None:
            self.task.cancel()


def _results(relay: _Relay, deadline: float | None) -> Iterator[Any]:
    """What ``Executor.map`` returns: the results, in the caller's thread. Closing it
    (or dropping it, even unstarted: see :meth:`_Core.map`) cancels what still runs."""
    buf = relay.buf
    try:
        while True:
            if buf:
                batch = buf.popleft()
                relay.taken += len(batch)
                if relay.paused and relay.produced - relay.taken <= relay.high // 2:
                    relay.give_room()
                yield from batch
            elif relay.finished:  # (its last batch was put before: check buf again)
                if not buf:
                    break
            else:
                relay.wait(deadline)
        if relay.error is not None:
            error, relay.error = relay.error, None
            raise error
    finally:
        relay.stop()


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


# -- interpreter exit -----------------------------------------------------------------

#: Executors whose loop thread runs.
_live: set[_Core] = set()
_hooked = False


def _register_hooks() -> None:
    """Before the interpreter joins its threads at exit, stop every executor left
    running: let the work finish (as the stdlib does), or abort it if the program
    ended with an uncaught exception (Ctrl-C). In a forked child, the parent's
    executors refuse calls (their thread and pool are the parent's)."""
    global _hooked
    if not _hooked:
        _hooked = True
        threading._register_atexit(_at_exit)  # type: ignore[attr-defined]
        os.register_at_fork(after_in_child=_forget_in_child)


def _forget_in_child() -> None:
    for core in _live:
        core.broken = RuntimeError(
            "it was started by the parent of this process: its thread and pool are there"
        )
    _live.clear()


def _at_exit() -> None:
    failed = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    for core in list(_live):
        core.close(False, bool(failed), abort=bool(failed))


__all__ = ["Executor", "Future"]
