"""Every setting of a pool, its default and its check, in one place.

``WorkerPool`` takes these as keyword arguments and the hub reads them from
one :class:`PoolOptions`; nothing else defines a default.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ipc import DEFAULT_CAPACITY
from .limits import WorkerLimits


@dataclass(frozen=True)
class PoolOptions:
    """A pool's settings (times in seconds); checked when made.

    Plain (not slotted) on purpose: each field's default is also a class
    attribute, which ``WorkerPool``'s signature reuses.
    """

    #: Most workers the pool runs; all are forked at start.
    size: int = 1
    #: Requests in flight per worker; the rest wait in the hub.
    max_inflight: int = 256
    #: Bytes of each ring (one per direction per worker).
    ring_capacity: int = DEFAULT_CAPACITY
    #: How long a cancelled call may take to stop before its worker is killed.
    cancel_grace: float = 5.0
    #: How long leaving the pool waits for workers to stop before killing them.
    stop_timeout: float = 5.0
    #: A worker with calls in flight whose loop has not run for this long is
    #: asked for the calls it has not started.
    stall_after: float = 0.05
    #: Resource ceilings the monitor recycles workers on (``hard_rss`` kills).
    limits: WorkerLimits = field(default_factory=WorkerLimits)
    #: Workers kept warm when idle ones retire.
    min_workers: int = 0
    #: Seconds between two readings of every worker's health.
    monitor_interval: float = 0.5
    #: How long a worker remembers a failed proxy start before retrying it.
    proxy_retry_after: float = 1.0

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"a pool needs a worker: spawn must be >= 1, got {self.size}")
        if self.max_inflight < 1:
            raise ValueError(f"max_inflight must be at least 1, got {self.max_inflight}")
        if not 0 <= self.min_workers <= self.size:
            raise ValueError(
                f"min_workers must be between 0 and spawn={self.size}, got {self.min_workers}"
            )
        if not isinstance(self.limits, WorkerLimits):
            raise TypeError(f"limits must be a WorkerLimits, got {self.limits!r}")
        for name in (
            "cancel_grace",
            "stop_timeout",
            "stall_after",
            "monitor_interval",
        ):
            seconds = getattr(self, name)
            if not seconds > 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {seconds}")
        if self.proxy_retry_after < 0:
            raise ValueError(f"proxy_retry_after must be >= 0, got {self.proxy_retry_after}")
