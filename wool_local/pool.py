"""``WorkerPool``: the async context manager that starts and stops a pool."""

from __future__ import annotations

import math
import os
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

# Declares the dispatch_timeout variable before a pool forks its workers.
from . import context as _context  # noqa: F401
from .workers import Hub, PoolOptions, PoolStats, Token, WorkerLimits, __proxy__


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


#: Pools between enter and exit, in entering order (for out-of-order exits).
_running: list[WorkerPool] = []

#: The backends a pool runs on: forked workers on this host, or a wool pool.
BACKENDS = ("local", "wool")
#: What ``backend=None`` means (``wool-local run --backend`` sets it), and
#: ``discovery=None`` on the wool backend (``--discovery``).
default_backend = "local"
default_discovery: Any = None

#: The options only forked workers have: a wool-backed pool refuses other values.
_LOCAL_ONLY = (
    "limits",
    "min_workers",
    "max_inflight",
    "cancel_grace",
    "monitor_interval",
    "ring_capacity",
    "proxy_retry_after",
)


class WorkerPool:
    """A pool of forked worker processes that routines called in its block run on.

    ``spawn`` (the most workers it runs) defaults to :func:`available_cpus`;
    all are forked at start, idle ones retire after ``limits.idle_ttl`` down to
    ``min_workers``, and come back on demand. ``limits`` (:class:`WorkerLimits`)
    makes the monitor recycle workers on memory, open files, age or task
    count, checked every ``monitor_interval`` seconds. ``max_inflight`` bounds
    the dispatches in flight per worker (the rest queue in this process).
    ``cancel_grace`` is how long a cancelled task may take to stop before its
    worker is killed. ``proxy_retry_after`` is how long a worker remembers that
    starting a ``__proxy__`` failed before the next dispatch through it retries.
    ``stop_timeout`` is how long leaving the block waits for workers to stop
    (cancelling what they run) before killing them.
    Defaults and checks: :class:`~wool_local.workers.PoolOptions`.

    ``backend="wool"`` runs the routines on a wool pool instead (``pip install
    'wool-local[wool]'``; docs/scaling.md): ``spawn`` wool workers on this host,
    and with ``discovery`` (a namespace string, for ``wool.LanDiscovery``, or a
    wool discovery factory) the workers other hosts publish too (``spawn=None``
    then spawns none here). ``stop_timeout`` is wool's ``shutdown_timeout``; the
    options of forked workers must keep their defaults. ``backend=None`` is
    ``"local"`` unless ``wool-local run --backend`` says otherwise.
    """

    def __init__(
        self,
        spawn: int | None = None,
        *,
        limits: WorkerLimits | None = None,
        min_workers: int = PoolOptions.min_workers,
        max_inflight: int = PoolOptions.max_inflight,
        cancel_grace: float = PoolOptions.cancel_grace,
        monitor_interval: float = PoolOptions.monitor_interval,
        ring_capacity: int = PoolOptions.ring_capacity,
        proxy_retry_after: float = PoolOptions.proxy_retry_after,
        stop_timeout: float = PoolOptions.stop_timeout,
        backend: str | None = None,
        discovery: Any = None,
    ) -> None:
        backend = default_backend if backend is None else backend
        if backend not in BACKENDS:
            raise ValueError(f"backend must be 'local' or 'wool', got {backend!r}")
        self.backend = backend
        if backend == "wool":
            given = locals()
            odd = [name for name in _LOCAL_ONLY if _differs(name, given[name])]
            if odd:
                raise ValueError(
                    f"{', '.join(odd)}: not an option of the wool backend (wool runs its "
                    "own workers); leave it out, or use backend='local'"
                )
            if discovery is None:
                discovery = default_discovery
            from .onwool import check_installed

            check_installed()
        elif discovery is not None:
            raise ValueError("discovery= needs backend='wool' (local pools run on this host)")
        self.discovery = discovery
        # wool: with discovery, spawn=None spawns no worker here (joins the others).
        self._wool_spawn = spawn
        self.options = PoolOptions(
            size=available_cpus() if spawn is None else spawn,
            limits=WorkerLimits() if limits is None else limits,
            min_workers=min_workers,
            max_inflight=max_inflight,
            cancel_grace=cancel_grace,
            monitor_interval=monitor_interval,
            ring_capacity=ring_capacity,
            proxy_retry_after=proxy_retry_after,
            stop_timeout=stop_timeout,
        )
        self._hub: Any = None  # a Hub, or the wool backend's WoolHub
        self._proxy_token: Any = None
        # The binding this pool's replaced, restored when it exits (see _unbind).
        self._below: Any = None

    @property
    def spawn(self) -> int:
        """The most workers this pool runs."""
        return self.options.size

    async def __aenter__(self) -> WorkerPool:
        if self._hub is not None:
            raise RuntimeError("this WorkerPool is already running")
        hub: Any
        if self.backend == "wool":
            from .onwool.hub import WoolHub

            spawn = self._wool_spawn if self.discovery is not None else self.options.size
            hub = WoolHub(self.options, spawn, self.discovery)
        else:
            hub = Hub(self.options)
        await hub.start()
        self._hub = hub
        # Routines called in this block dispatch through the hub's proxy;
        # binding it for this block takes a lease on it.
        self._below = __proxy__.get(None)
        self._proxy_token = __proxy__.set(hub.proxy)
        _running.append(self)
        if hub.leases is not None:
            hub.leases.acquire(hub.id)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        hub, self._hub = self._hub, None
        if self._proxy_token is not None:
            self._unbind(hub)
            if hub is not None and hub.leases is not None:
                hub.leases.release(hub.id)
        if hub is not None:
            await hub.close()

    def _unbind(self, hub: Hub | None) -> None:
        """Give back the binding this pool made, even when pools nested in one another
        exit out of order: bindings behave as a stack whatever the exit order.

        A pool that exits while a pool entered after it still runs leaves the
        binding alone (the later pool's routines keep working), and that pool
        restores, when it exits, what this one had replaced.
        """
        token, self._proxy_token = self._proxy_token, None
        below, self._below = self._below, None
        _running.remove(self)
        for other in _running:
            if other._below is (hub.proxy if hub is not None else None):
                other._below = below  # skip this pool: it is gone
        if hub is None or __proxy__.get(None) is not hub.proxy:
            return  # not the top binding here: a pool entered later owns it
        old = None if token.old_value is Token.MISSING else token.old_value
        if old is below:
            try:
                __proxy__.reset(token)
                return
            except ValueError:
                pass  # exited from another context than it was entered in
        __proxy__.set(below)

    def map(
        self,
        fn: Any,
        *iterables: Iterable[Any],
        chunksize: int | str = "auto",
        ordered: bool = True,
        progress: bool | Callable[[int, int | None], None] | None = None,
    ) -> AsyncIterator[Any]:
        """``fn(*args)`` for each argument tuple of ``zip(*iterables)``, run on the workers
        in chunks; an async iterator of the results, in input order (``ordered=False``:
        as they come).

        ``fn`` is a plain function, an ``async def`` function or a routine. The input is
        read lazily, a bounded window ahead; ``chunksize="auto"`` sizes chunks from the
        measured cost per item. An item that raises ends the iteration with its
        exception, noted with the item's index, after the results before it.
        ``progress=True`` draws a tqdm bar (``pip install 'wool-local[progress]'``); a
        callable gets ``(done, total)`` (``total`` None when unknown) as chunks finish.
        """
        from .mapping import map_over

        hub = self.hub
        return map_over(
            hub,
            hub.options.size,
            fn,
            iterables,
            chunksize=chunksize,
            ordered=ordered,
            progress=progress,
        )

    @property
    def pids(self) -> list[int]:
        """Pids of the running workers."""
        return self._hub.pids if self._hub is not None else []

    def stats(self) -> PoolStats:
        """Per-worker health, recycle counts by reason, and totals (local backend)."""
        return self.hub.stats()

    @property
    def hub(self) -> Any:
        """The running hub (scheduling, workers, counters; on the wool backend, a
        :class:`~wool_local.onwool.hub.WoolHub`); RuntimeError outside the block."""
        if self._hub is None:
            raise RuntimeError("the WorkerPool is not running")
        return self._hub


def _differs(name: str, value: Any) -> bool:
    """Whether option ``name`` was given a value other than its default."""
    if name == "limits":
        return value is not None and value != WorkerLimits()
    return bool(value != getattr(PoolOptions, name))
