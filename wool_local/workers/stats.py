"""``PoolStats``: what ``pool.stats()`` reports."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .limits import WorkerHealth

if TYPE_CHECKING:
    from .handle import WorkerHandle
    from .hub import Hub


@dataclass
class PoolStats:
    """A snapshot of the pool, cheap enough to take every second."""

    size: int
    workers: list[WorkerHealth] = field(default_factory=list)
    recycles: dict[str, int] = field(default_factory=dict)  # by RecycleReason value
    completed: int = 0
    crashes: int = 0
    queued: int = 0
    handed_back: int = 0  # calls a blocked worker never started, moved elsewhere
    monitor_cpu: float = 0.0  # seconds the monitor has spent sampling
    monitor_rounds: int = 0
    #: Leases held in the pool's lease table, by holding pid: the hub's own pid for
    #: the ``WorkerPool`` block's binding; a worker counts 1 per proxy it has live
    #: bindings of (kept until its loop goes idle). Empty when every lease is back.
    leases: dict[int, int] = field(default_factory=dict)


def collect_stats(hub: Hub) -> PoolStats:
    """A snapshot of ``hub``: its workers' latest readings and counters, and totals."""
    from .proxy import lease_counts

    now = time.monotonic()
    workers = []
    for h in hub.workers():
        seen = hub.monitor.latest.get(h.pid)
        workers.append(
            WorkerHealth(
                pid=h.pid,
                rss=seen.rss if seen else None,
                private_rss=seen.private_rss if seen else None,
                fds=seen.fds if seen else None,
                age=now - h.started_at,
                idle=h.idle_for(now),
                tasks_completed=h.completed,
                inflight=h.load,
                state=_state(h),
            )
        )
    return PoolStats(
        size=hub.options.size,
        workers=workers,
        recycles={reason.value: n for reason, n in hub.recycler.recycles.items()},
        completed=hub.completed,
        crashes=hub.crashes,
        queued=hub.scheduler.queued(),
        handed_back=hub.watchdog.handed_back,
        monitor_cpu=hub.monitor.cpu_seconds,
        monitor_rounds=hub.monitor.rounds,
        leases=lease_counts(hub.leases) if hub.leases is not None else {},
    )


def _state(h: WorkerHandle) -> str:
    if h.stopping:
        return "stopping"
    if h.retiring is not None:
        return f"retiring ({h.retiring.value})"
    if h.stalled or h.asked:
        return "blocked"
    return "busy" if h.open else "idle"
