"""``PoolStats``: what ``pool.stats()`` reports."""

from __future__ import annotations

from dataclasses import dataclass, field

from .limits import WorkerHealth


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
