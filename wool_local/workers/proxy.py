"""``__proxy__``: the handle a running routine uses to dispatch onward.

A :class:`WorkerProxy` names a pool by a 16-byte id. The hub binds the pool's
proxy in :data:`__proxy__` for the ``WorkerPool`` block; the variable is
forward-only, so it travels with every dispatch into the worker and never
back. In the worker the proxy is rebuilt by :func:`restore_proxy`, which
returns the canonical instance from this process's :data:`__proxy_pool__`
(creating it lazily, not started). The first dispatch through it starts it
(here: binds it to the worker's link to its hub) under double-checked
locking, so a routine that never dispatches onward never starts a proxy.

A start that fails is remembered as the exception's class and args only,
never the live exception (whose traceback would grow with every re-raise),
for ``retry_after`` seconds; callers in that window get fresh instances, and
the first caller after it retries the start. The exception is rebuilt from
them with ``cls(*args)``, or, for a class whose ``__init__`` does not take its
own ``args``, without calling ``__init__``.

Leases: in a worker, every binding of a proxy in :data:`__proxy__` holds a
lease on it: the binding a dispatch makes for its routine, and each
``__proxy__.set(proxy)`` the routine's code makes. A binding gives its lease
back when it is reset, or when its frame (the routine, or the generator
session) ends. The worker counts its bindings in a :class:`LeaseBook`; the
pool's shared table holds one count for the worker per proxy id while any
binding of it is live. The registry keeps the proxies of the worker's own
pool and the recently used ones; others are evicted once nothing uses them.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
import weakref
from collections.abc import Callable, Collection
from typing import Any

from ..ipc import SlotTable
from .context import ContextVar
from .dispatch import Dispatcher
from .options import PoolOptions

#: How long a failed start is remembered before the next caller retries (seconds).
DEFAULT_RETRY_AFTER = PoolOptions.proxy_retry_after


class ProxyUnreachable(RuntimeError):
    """A proxy names a pool this process cannot dispatch to."""


class WorkerProxy:
    """Dispatches to one pool; one canonical instance per pool id per process."""

    __wool_immutable__ = True  # its pickle never changes: encoders may reuse it

    def __init__(
        self,
        pool_id: bytes,
        dispatcher: Dispatcher | None = None,
        *,
        retry_after: float = DEFAULT_RETRY_AFTER,
    ) -> None:
        if len(pool_id) != 16:
            raise ValueError("a pool id is 16 bytes")
        self.id = pool_id
        self.retry_after = retry_after
        self._dispatcher = dispatcher
        self._lock: asyncio.Lock | None = None
        # A failed start, as (class, args, retry-at): never the live exception.
        self._failure: tuple[type[BaseException], tuple[Any, ...], float] | None = None
        # The failure's plain attributes (str, numbers, ...), copied onto rebuilds.
        self._failure_attrs: dict[str, Any] | None = None

    @property
    def started(self) -> bool:
        return self._dispatcher is not None

    @property
    def failure(self) -> tuple[type[BaseException], tuple[Any, ...], float] | None:
        """The start failure remembered now: (class, args, monotonic retry time)."""
        return self._failure

    @property
    def dispatcher(self) -> Dispatcher | None:
        """Where dispatches through this proxy go, once started (else None)."""
        return self._dispatcher

    async def start(self) -> Dispatcher:
        """The dispatcher behind this proxy, connecting on first use."""
        dispatcher = self._dispatcher
        if dispatcher is not None:  # the common case: no lock, no await
            return dispatcher
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._dispatcher is not None:  # started while we waited for the lock
                return self._dispatcher
            failure = self._failure
            if failure is not None and time.monotonic() < failure[2]:
                raise rebuild_exception(failure[0], failure[1], self._failure_attrs)
            try:
                dispatcher = await self._connect()
            except Exception as exc:
                self._failure = (type(exc), exc.args, time.monotonic() + self.retry_after)
                self._failure_attrs = _plain_attributes(exc)
                raise
            self._failure = None
            self._failure_attrs = None
            self._dispatcher = dispatcher
            return dispatcher

    async def _connect(self) -> Dispatcher:
        dispatcher = __proxy_pool__.local_dispatcher
        if __proxy_pool__.local_id != self.id or dispatcher is None:
            raise ProxyUnreachable(
                f"this process cannot dispatch to pool {self.id.hex()}: it belongs to "
                f"{'no pool' if __proxy_pool__.local_id is None else __proxy_pool__.local_id.hex()}"
            )
        return dispatcher

    def __reduce__(self) -> Any:
        return (restore_proxy, (self.id,))

    def __repr__(self) -> str:
        state = "started" if self.started else "lazy"
        return f"<WorkerProxy pool={self.id.hex()[:12]} {state}>"


#: Attribute values a rebuilt start failure may share with the original: they
#: hold no traceback and cannot be changed through the copy.
_PLAIN = (str, bytes, int, float, bool, type(None))


def _plain_attributes(exc: BaseException) -> dict[str, Any] | None:
    try:
        attrs = {k: v for k, v in vars(exc).items() if type(v) in _PLAIN}
    except TypeError:  # no __dict__
        return None
    return attrs or None


def rebuild_exception(
    cls: type[BaseException], args: tuple[Any, ...], attrs: dict[str, Any] | None = None
) -> BaseException:
    """A fresh ``cls`` exception with ``args`` (and the plain ``attrs`` of the
    original): ``cls(*args)``, or, when that fails (an ``__init__`` that does not
    take its own ``args``), ``cls.__new__(cls)`` with ``args`` set."""
    try:
        exc = cls(*args)
    except Exception:
        try:
            exc = cls.__new__(cls)
            exc.args = args
        except Exception:  # an exotic class: say what it was, at least
            return ProxyUnreachable(f"starting the proxy failed: {cls.__qualname__}{args!r}")
    for name, value in (attrs or {}).items():
        try:
            setattr(exc, name, value)
        except Exception:
            pass  # a read-only attribute: __init__ or __new__ set it already
    return exc


class ProxyRegistry:
    """This process's proxies by pool id: the same id always gives the same instance.

    Bounded: past :attr:`capacity` proxies, those of other pools move to a weak
    table, where they stay canonical while anything uses them (a binding, a
    routine's variable) and vanish when nothing does.
    """

    #: How many proxies are kept whether used or not (the pinned ones come on top).
    capacity = 32

    def __init__(self) -> None:
        self._proxies: dict[bytes, WorkerProxy] = {}
        # Evicted, but canonical while something still refers to them.
        self._spare: weakref.WeakValueDictionary[bytes, WorkerProxy] = weakref.WeakValueDictionary()
        self._pinned: set[bytes] = set()  # registered: never evicted
        #: The back-off window given to proxies this pool creates.
        self.retry_after = DEFAULT_RETRY_AFTER
        self.acquisitions = 0  # how many lookups: tests check one per dispatch
        #: The pool this process can dispatch to and how (set in workers and hubs).
        self.local_id: bytes | None = None
        self.local_dispatcher: Dispatcher | None = None
        #: The leases of this process's bindings (in a worker; None in a hub).
        self.leases: LeaseBook | None = None

    def get_or_insert(self, pool_id: bytes) -> WorkerProxy:
        """The cached proxy for ``pool_id``, or a new lazy one (not started)."""
        self.acquisitions += 1
        proxy = self._proxies.get(pool_id)
        if proxy is None:
            proxy = self._spare.pop(pool_id, None)
            if proxy is None:
                proxy = WorkerProxy(pool_id, retry_after=self.retry_after)
            if len(self._proxies) >= self.capacity + len(self._pinned):
                self._evict()
            self._proxies[pool_id] = proxy
        return proxy

    def _evict(self) -> None:
        keep = self._pinned
        local = self.local_id
        for key, proxy in list(self._proxies.items()):
            if key not in keep and key != local:
                del self._proxies[key]
                self._spare[key] = proxy

    def __len__(self) -> int:
        """Proxies this process knows: kept ones, and evicted ones still in use."""
        return len(self._proxies) + len(self._spare)

    def reset(
        self,
        local_id: bytes | None,
        dispatcher: Dispatcher | None,
        retry_after: float = DEFAULT_RETRY_AFTER,
        leases: LeaseBook | None = None,
    ) -> None:
        """Start over in a forked worker: the hub's proxies (and their dispatchers,
        which are the hub's objects) mean nothing here. ``leases``: where this
        process's bindings of ``__proxy__`` count from now on."""
        self._proxies.clear()
        self._spare.clear()
        self._pinned.clear()
        self.retry_after = retry_after
        self.acquisitions = 0
        self.local_id = local_id
        self.local_dispatcher = dispatcher
        self.leases = leases
        __proxy__._binder = leases

    def register(self, proxy: WorkerProxy) -> None:
        """Make ``proxy`` the canonical one for its id (the hub's own pool)."""
        self._proxies[proxy.id] = proxy
        self._pinned.add(proxy.id)

    def forget(self, pool_id: bytes) -> None:
        self._proxies.pop(pool_id, None)
        self._spare.pop(pool_id, None)
        self._pinned.discard(pool_id)


# -- leases --------------------------------------------------------------------

#: The frame of the code running in this context: the request id of the routine
#: (or generator session) it belongs to, which the worker sets for each call;
#: tasks the routine starts inherit it.
_frame: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "wool_local.proxy_frame", default=None
)


class Binding:
    """One ``__proxy__.set(proxy)`` in a worker: holds a lease on the proxy until it
    is reset or its frame ends."""

    __slots__ = ("book", "frame", "key")

    def __init__(self, book: LeaseBook, key: bytes, frame: int | None) -> None:
        self.book: LeaseBook | None = book
        self.key = key
        self.frame = frame

    def release(self) -> None:
        """The binding was reset: give its lease back now (once: later calls do nothing)."""
        self._drop(True)

    def _drop(self, prompt: bool) -> None:
        book = self.book
        if book is None:
            return
        self.book = None
        if self.frame is not None:
            book._forget(self)
        book.give(self.key, prompt)


class LeaseBook:
    """A worker's leases: how many live bindings each proxy id has here.

    A binding is the one a dispatch makes for its routine (counted here, no
    object) or a :class:`Binding` the routine's own ``__proxy__.set`` made. The
    shared table holds one count per proxy id for this process from the first
    binding on. When a reset ends the last binding of a proxy, that count goes
    back at once. When a routine's frame ends, it lingers: the worker gives it
    back (:meth:`release_idle`) only once :attr:`linger` seconds passed without
    a new call, so a caller awaiting calls one after another costs no
    cross-process lock (an acquire and release pair per call would cost the
    round trip about 7 us).
    """

    #: How long a shared lease no binding uses is kept for the next call (seconds).
    linger = 0.02

    def __init__(self, table: SlotTable | None) -> None:
        self.table = table
        # Live bindings by proxy id; a key with 0 still holds the shared lease.
        self._counts: dict[bytes, int] = {}
        # The Bindings of open frames, by request id (only frames that made one).
        self._frames: dict[int, list[Binding]] = {}
        #: Whether a frame is still open (the worker tells): a binding made in a
        #: task that outlived its routine belongs to no frame.
        self.frame_open: Callable[[int], bool] = lambda rid: True
        #: Frames opened with a proxy: unchanged over a linger period means unused.
        self.takes = 0

    # -- frames (the worker, per call) -----------------------------------------

    def open_frame(self, rid: int, proxy: WorkerProxy | None) -> bytes | None:
        """Start routine ``rid``'s frame in the current context, with the binding of
        ``proxy`` its dispatch made (if any): the lease to pass to :meth:`end_frame`."""
        _frame.set(rid)
        if proxy is None:
            return None
        key = proxy.id
        self._take(key)
        self.takes += 1
        return key

    def end_frame(self, rid: int, lease: bytes | None) -> None:
        """Routine (or session) ``rid`` ended: give back its dispatch's binding and
        every binding it made and did not reset (their shared leases linger)."""
        if lease is not None:
            n = self._counts.get(lease)
            if n:
                self._counts[lease] = n - 1
        if self._frames:
            bindings = self._frames.pop(rid, None)
            while bindings:
                binding = bindings.pop()
                binding.frame = None
                binding._drop(False)

    # -- the routine's own sets (ContextVar's binder) --------------------------

    def bind(self, value: Any) -> Binding | None:
        """``__proxy__.set(value)`` in this process: ``value``'s lease, for its token
        (whose reset releases it) and for the current frame (whose end does)."""
        if not isinstance(value, WorkerProxy):
            return None
        key = value.id
        self._take(key)
        rid = _frame.get()
        if rid is not None and not self.frame_open(rid):
            rid = None  # a task that outlived its routine: until reset, or the worker's end
        binding = Binding(self, key, rid)
        if rid is not None:
            self._frames.setdefault(rid, []).append(binding)
        return binding

    def _forget(self, binding: Binding) -> None:
        """Take a reset binding out of its frame."""
        rid, binding.frame = binding.frame, None
        bindings = self._frames.get(rid) if rid is not None else None
        if bindings:
            for i in range(len(bindings) - 1, -1, -1):  # usually the last one
                if bindings[i] is binding:
                    del bindings[i]
                    break
            if not bindings:
                del self._frames[rid]  # type: ignore[arg-type]

    def give(self, key: bytes, prompt: bool = False) -> None:
        """One binding of ``key`` ended; ``prompt``: if it was the last, give the
        shared lease back now rather than when the worker is idle."""
        n = self._counts.get(key)
        if not n:
            return  # the lease went already (release_all at the end of the worker)
        if n == 1 and prompt:
            del self._counts[key]
            self._release(key)
        else:
            self._counts[key] = n - 1

    # -- the shared table ---------------------------------------------------------

    def _take(self, key: bytes) -> None:
        """One more binding of ``key``; the first one since the shared lease lapsed
        takes it in the table (later ones only count)."""
        n = self._counts.get(key)
        if n is None:
            if self.table is not None:
                self.table.acquire(key)
            n = 0
        self._counts[key] = n + 1

    @property
    def holding(self) -> bool:
        """Whether this process holds any shared lease."""
        return bool(self._counts)

    def live(self) -> dict[bytes, int]:
        """Live bindings by proxy id (those with at least one)."""
        return {key: n for key, n in self._counts.items() if n > 0}

    def release_idle(self) -> None:
        """Give back the shared lease of every proxy with no live binding here."""
        for key, n in list(self._counts.items()):
            if n <= 0:
                del self._counts[key]
                self._release(key)

    def release_all(self) -> dict[bytes, int]:
        """Give back every shared lease (the worker is ending); returns the bindings
        that were still live (their routines are gone with the worker)."""
        live = self.live()
        self._frames.clear()
        for key in list(self._counts):
            del self._counts[key]
            self._release(key)
        return live

    def _release(self, key: bytes) -> None:
        if self.table is not None:
            try:
                self.table.release(key)
            except Exception:
                pass  # the table is gone with the pool


def lease_holders(table: SlotTable, keep: Collection[int] = ()) -> dict[int, dict[bytes, int]]:
    """Who holds leases in ``table``: ``{pid: {proxy id: count}}``, leaving out the
    processes in ``keep``."""
    out: dict[int, dict[bytes, int]] = {}
    for key, holders in table.snapshot().items():
        for pid, n in holders.items():
            if pid not in keep:
                out.setdefault(pid, {})[key] = n
    return out


def lease_counts(table: SlotTable) -> dict[int, int]:
    """``{pid: leases held}`` over every proxy id in ``table`` (for ``pool.stats()``)."""
    return {pid: sum(keys.values()) for pid, keys in lease_holders(table).items()}


async def drain_leases(
    table: SlotTable, timeout: float, keep: Collection[int] = ()
) -> dict[int, dict[bytes, int]]:
    """Wait, at most ``timeout`` seconds, until no process outside ``keep`` holds a
    lease in ``table``; returns the holders left then (empty: drained).

    Workers give leases back without telling the hub, so this polls the table,
    every millisecond at first and backing off to every 50 ms.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.001
    while True:
        left = lease_holders(table, keep)
        remaining = deadline - loop.time()
        if not left or remaining <= 0:
            return left
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.05)


def describe_holders(holders: dict[int, dict[bytes, int]]) -> str:
    """``holders`` (from :func:`drain_leases`) as one line for a log."""
    return "; ".join(
        f"process {pid} holds "
        + ", ".join(f"{n} on pool {key.hex()[:12]}" for key, n in sorted(keys.items()))
        for pid, keys in sorted(holders.items())
    )


#: This process's registry (the name is the one routines share with wool).
__proxy_pool__ = ProxyRegistry()

#: The proxy of the pool the current code runs under; travels forward only.
__proxy__: ContextVar[WorkerProxy | None] = ContextVar(
    "__proxy__", namespace="wool_local", default=None, forward_only=True
)

PROXY_KEY = __proxy__.key


def restore_proxy(pool_id: bytes) -> WorkerProxy:
    """Unpickling a proxy yields this process's canonical instance for its pool."""
    return __proxy_pool__.get_or_insert(pool_id)
