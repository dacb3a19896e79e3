"""``WorkerPool``: the async context manager that starts and stops a pool."""

from __future__ import annotations

import math
import os
from typing import Any

from .workers import Pool, PoolStats, WorkerLimits, __proxy__


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


class WorkerPool:
    """A pool of forked worker processes that routines called in its block run on.

    ``spawn`` (the most workers it runs) defaults to :func:`available_cpus`;
    all are forked at start, idle ones retire after ``limits.idle_ttl`` down to
    ``min_workers``, and come back on demand. ``limits`` (:class:`WorkerLimits`)
    makes the monitor recycle workers on memory, open files, age or task
    count, checked every ``monitor_interval`` seconds. ``max_inflight`` bounds
    the dispatches in flight per worker (the rest queue in this process).
    ``cancel_grace`` is how long a cancelled task may take to stop before its
    worker is killed; ``recycle_grace`` how long a recycled worker may take to
    finish its calls. ``proxy_retry_after`` is how long a worker remembers that
    starting a ``__proxy__`` failed before the next dispatch through it retries.
    """

    def __init__(
        self,
        spawn: int | None = None,
        *,
        limits: WorkerLimits | None = None,
        min_workers: int = 0,
        max_inflight: int = 256,
        cancel_grace: float = 5.0,
        recycle_grace: float = 30.0,
        monitor_interval: float = 0.5,
        ring_capacity: int = 1 << 20,
        proxy_retry_after: float = 1.0,
    ) -> None:
        self.spawn = available_cpus() if spawn is None else spawn
        if self.spawn < 1:
            raise ValueError(f"spawn must be at least 1, got {spawn}")
        if limits is not None and not isinstance(limits, WorkerLimits):
            raise TypeError(f"limits must be a WorkerLimits, got {limits!r}")
        self._options: dict[str, Any] = {
            "limits": limits,
            "min_workers": min_workers,
            "max_inflight": max_inflight,
            "cancel_grace": cancel_grace,
            "recycle_grace": recycle_grace,
            "monitor_interval": monitor_interval,
            "ring_capacity": ring_capacity,
            "proxy_retry_after": proxy_retry_after,
        }
        if not 0 <= min_workers <= self.spawn:
            raise ValueError(f"min_workers must be between 0 and spawn={self.spawn}")
        self._pool: Pool | None = None
        self._proxy_token: Any = None

    async def __aenter__(self) -> WorkerPool:
        if self._pool is not None:
            raise RuntimeError("this WorkerPool is already running")
        pool = Pool(self.spawn, **self._options)
        await pool.start()
        self._pool = pool
        # Routines called in this block dispatch through the pool's proxy;
        # binding the pool's proxy for this block takes a lease on it.
        self._proxy_token = __proxy__.set(pool.proxy)
        assert pool.leases is not None
        pool.leases.acquire(pool.id)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        pool, self._pool = self._pool, None
        if self._proxy_token is not None:
            try:
                __proxy__.reset(self._proxy_token)
            except ValueError:  # exited from another context: just unbind
                __proxy__.set(None)
            self._proxy_token = None
            if pool is not None and pool.leases is not None:
                pool.leases.release(pool.id)
        if pool is not None:
            await pool.close()

    @property
    def pids(self) -> list[int]:
        """Pids of the running workers."""
        return self._pool.pids if self._pool is not None else []

    def stats(self) -> PoolStats:
        """Per-worker health, recycle counts by reason, and totals."""
        return self.pool.stats()

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            raise RuntimeError("the WorkerPool is not running")
        return self._pool
