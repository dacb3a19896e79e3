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
loop's thread. ``map`` runs the machinery of :meth:`WorkerPool.map`
(:func:`wool_local.mapping.map_over`, a chunk's results at a time) on the loop
and hands them over through :mod:`wool_local.executor_map`.

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
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Literal

from . import background
from .background import BackgroundPool, LoopFuture
from .executor_core import LEAD_PER_WORKER, ExecutorCore

if TYPE_CHECKING:  # imported when the pool starts: ``import wool_local`` stays cheap
    from .pool import WorkerPool
    from .workers import WorkerLimits

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
    ``proxy_retry_after``, ``stop_timeout`` (None: the pool's default), and
    ``backend``/``discovery`` (``backend="wool"``: the calls run on a wool pool).

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
        backend: str | None = None,
        discovery: Any = None,
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
            "backend": backend,
            "discovery": discovery,
        }
        ambient = background.ambient
        plain = max_workers is None and initializer is None and not initargs
        if ambient is not None and plain and all(v is None for v in given.values()):
            self._core = ExecutorCore(ambient, False, None)
        else:
            pool = WorkerPool(max_workers, **{k: v for k, v in given.items() if v is not None})
            init = None if initializer is None else (initializer, tuple(initargs))
            self._core = ExecutorCore(BackgroundPool(pool, name="wool_local.Executor"), True, init)
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
        progress: bool | Callable[[int, int | None], None] | None = None,
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

    def __init__(self, core: ExecutorCore, call: tuple[Any, ...] | None) -> None:
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


__all__ = ["LEAD_PER_WORKER", "Executor", "Future"]
