"""``WorkerPool``: the async context manager that starts and stops a pool."""

from __future__ import annotations

import contextvars
import math
import os
from typing import Any

from .workers import Pool, current_dispatcher


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

    ``spawn`` defaults to :func:`available_cpus`. ``max_inflight`` bounds the
    dispatches in flight per worker (the rest queue in this process).
    """

    def __init__(
        self,
        spawn: int | None = None,
        *,
        max_inflight: int = 32,
        cancel_grace: float = 5.0,
        ring_capacity: int = 1 << 20,
    ) -> None:
        self.spawn = available_cpus() if spawn is None else spawn
        if self.spawn < 1:
            raise ValueError(f"spawn must be at least 1, got {spawn}")
        self._options: dict[str, Any] = {
            "max_inflight": max_inflight,
            "cancel_grace": cancel_grace,
            "ring_capacity": ring_capacity,
        }
        self._pool: Pool | None = None
        self._token: contextvars.Token[Any] | None = None

    async def __aenter__(self) -> WorkerPool:
        if self._pool is not None:
            raise RuntimeError("this WorkerPool is already running")
        pool = Pool(self.spawn, **self._options)
        await pool.start()
        self._pool = pool
        self._token = current_dispatcher.set(pool)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        pool, self._pool = self._pool, None
        if self._token is not None:
            try:
                current_dispatcher.reset(self._token)
            except ValueError:  # exited from another context: just unset
                current_dispatcher.set(None)
            self._token = None
        if pool is not None:
            await pool.close()

    @property
    def pids(self) -> list[int]:
        """Pids of the running workers."""
        return self._pool.pids if self._pool is not None else []

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            raise RuntimeError("the WorkerPool is not running")
        return self._pool
