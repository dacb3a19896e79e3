"""``WoolHub``: the ``wool.WorkerPool`` behind a ``WorkerPool(backend="wool")``.

It stands where a wool_local pool has its hub: ``WorkerPool``, ``map``, the
executor and the background pool use its ``call``/``stream``, ``proxy`` and
``options``, and enter and leave it with ``start``/``close``. Its workers are
wool's: spawned processes (``spawn``), and, with ``discovery``, those other
hosts publish under the same namespace.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import AsyncGenerator
from typing import Any

from ..workers import PoolOptions
from . import import_wool


def discovery_factory(discovery: Any) -> Any:
    """What wool's ``discovery=`` takes: a namespace string becomes a factory of
    ``wool.LanDiscovery(namespace)`` (a callable, which wool can send to workers for
    their nested dispatches); anything else is passed as it is."""
    if isinstance(discovery, str):
        wool = import_wool()
        return functools.partial(wool.LanDiscovery, discovery)
    return discovery


class WoolHub:
    """A running wool pool with the interface of a wool_local hub (the parts the
    API layer uses). ``spawn``: local workers (None: none, only discovered ones)."""

    #: No shared lease table: wool keeps its own proxies.
    leases = None
    #: The work a ``map`` chunk aims at: a wool dispatch costs milliseconds (a local
    #: one tens of microseconds, hence 10 ms there), so chunks are made ten times longer.
    chunk_seconds = 0.1

    def __init__(self, options: PoolOptions, spawn: int | None, discovery: Any) -> None:
        self.options = options
        self.spawn = spawn
        self.discovery = discovery
        self._pool: Any = None
        self.dispatcher: Any = None

    async def start(self) -> None:
        wool = import_wool()
        from .dispatcher import WoolDispatcher

        kwargs: dict[str, Any] = {
            "spawn": self.spawn,
            "shutdown_timeout": self.options.stop_timeout,
        }
        if self.discovery is not None:
            kwargs["discovery"] = discovery_factory(self.discovery)
        pool = wool.WorkerPool(**kwargs)
        await pool.__aenter__()
        self._pool = pool
        self.dispatcher = WoolDispatcher(
            contextvars.copy_context(),  # what entering the pool set: wool needs it
            asyncio.get_running_loop(),
            # Every worker a child of this process: they re-ran the main script.
            by_name=self.discovery is None,
        )

    async def close(self) -> None:
        """Stop dispatching, cancel the calls in flight (up to ``stop_timeout``), then
        leave the wool pool."""
        pool, self._pool = self._pool, None
        if self.dispatcher is not None:
            await self.dispatcher.close(self.options.stop_timeout)
        if pool is not None:
            await pool.__aexit__(None, None, None)

    @property
    def proxy(self) -> Any:
        return self.dispatcher.proxy

    def call(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return self.dispatcher.call(fn, args, kwargs)

    def stream(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> AsyncGenerator:
        return self.dispatcher.stream(fn, args, kwargs)

    @property
    def pids(self) -> list[int]:
        return []  # wool does not expose its workers' pids

    def workers(self) -> list[Any]:
        return []

    def stats(self) -> Any:
        raise RuntimeError("stats() is not available on the wool backend")
