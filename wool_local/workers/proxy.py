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
the first caller after it retries the start.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

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
                raise failure[0](*failure[1])
            try:
                dispatcher = await self._connect()
            except Exception as exc:
                self._failure = (type(exc), exc.args, time.monotonic() + self.retry_after)
                raise
            self._failure = None
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


class ProxyRegistry:
    """This process's proxies by pool id: the same id always gives the same instance."""

    def __init__(self) -> None:
        self._proxies: dict[bytes, WorkerProxy] = {}
        #: The back-off window given to proxies this pool creates.
        self.retry_after = DEFAULT_RETRY_AFTER
        self.acquisitions = 0  # how many lookups: tests check one per dispatch
        #: The pool this process can dispatch to and how (set in workers and hubs).
        self.local_id: bytes | None = None
        self.local_dispatcher: Dispatcher | None = None

    def get_or_insert(self, pool_id: bytes) -> WorkerProxy:
        """The cached proxy for ``pool_id``, or a new lazy one (not started)."""
        self.acquisitions += 1
        proxy = self._proxies.get(pool_id)
        if proxy is None:
            proxy = WorkerProxy(pool_id, retry_after=self.retry_after)
            self._proxies[pool_id] = proxy
        return proxy

    def reset(
        self,
        local_id: bytes | None,
        dispatcher: Dispatcher | None,
        retry_after: float = DEFAULT_RETRY_AFTER,
    ) -> None:
        """Start over in a forked worker: the hub's proxies (and their dispatchers,
        which are the hub's objects) mean nothing here."""
        self._proxies.clear()
        self.retry_after = retry_after
        self.acquisitions = 0
        self.local_id = local_id
        self.local_dispatcher = dispatcher

    def register(self, proxy: WorkerProxy) -> None:
        """Make ``proxy`` the canonical one for its id (the hub's own pool)."""
        self._proxies[proxy.id] = proxy

    def forget(self, pool_id: bytes) -> None:
        self._proxies.pop(pool_id, None)


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
