"""Recycling workers on their limits, retiring idle ones, and the pool's stats.

Mixed into :class:`~wool_local.workers.pool.Pool`: the monitor hands every
round of readings to :meth:`Recycling._apply_limits`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from .handle import WorkerHandle
from .limits import RecycleReason, WorkerHealth, evaluate_recycle
from .protocol import Stop

log = logging.getLogger("wool_local")


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


class Recycling:
    """The pool's recycling policy (``self`` is the :class:`Pool`)."""

    def _apply_limits(self, readings: dict[int, WorkerHealth]) -> None:
        """Act on one monitor round: at most one recycle and one idle retirement."""
        if self.closed or self.broken is not None:
            return
        recycling = any(
            h.retiring not in (None, RecycleReason.IDLE) for h in self._workers.values()
        )
        retired_idle = False
        for pid, health in readings.items():
            handle = self._workers.get(pid)
            if handle is None or handle.retiring is not None or handle.stopping:
                continue
            reason = evaluate_recycle(health, self.limits)
            if reason is None:
                continue
            if reason is RecycleReason.IDLE:
                # Keep min_workers warm; retire one idle worker per round.
                if not retired_idle and len(self._serving_list()) > self.min_workers:
                    retired_idle = True
                    self.retire(handle, reason, health)
            elif not recycling:
                # Staggered: one worker at a time is replaced.
                recycling = True
                self.retire(handle, reason, health)

    def retire(self, handle: WorkerHandle, reason: RecycleReason, health: WorkerHealth) -> None:
        """Take ``handle`` out of service; replace it first unless it is merely idle."""
        handle.retiring = reason
        self.recycles[reason] += 1
        self._notify()
        log.info(
            "wool_local: retiring worker %d: %s (%s)", handle.pid, reason, _reading(reason, health)
        )
        if reason is not RecycleReason.IDLE:
            self._spawn_worker()  # capacity holds
        if handle.open == 0:
            self._stop_worker(handle)
        else:
            assert self._loop is not None
            self._loop.call_later(self.recycle_grace, self._recycle_overdue, handle)

    def _recycle_overdue(self, handle: WorkerHandle) -> None:
        if handle.alive and self._workers.get(handle.pid) is handle:
            self._kill(
                handle,
                f"it was being recycled ({handle.retiring}) and its calls did not finish "
                f"within recycle_grace={self.recycle_grace}s",
            )

    def _stop_worker(self, handle: WorkerHandle) -> None:
        handle.stopping = True
        self._notify()
        try:
            handle.send(Stop())
        except Exception:
            self._kill(handle, "it could not be told to stop")

    def stats(self) -> PoolStats:
        """Per-worker health (latest OS readings, current counters), recycles and totals."""
        now = time.monotonic()
        workers = []
        for h in self._workers.values():
            seen = self.monitor.latest.get(h.pid)
            workers.append(
                WorkerHealth(
                    pid=h.pid,
                    rss=seen.rss if seen else None,
                    private_rss=seen.private_rss if seen else None,
                    uss=seen.uss if seen else None,
                    fds=seen.fds if seen else None,
                    age=now - h.started_at,
                    idle=h.idle_for(now),
                    tasks_completed=h.completed,
                    inflight=h.load,
                )
            )
        return PoolStats(
            size=self.size,
            workers=workers,
            recycles={reason.value: n for reason, n in self.recycles.items()},
            completed=self.completed_total,
            crashes=self.crashes,
            queued=self.queued(),
            handed_back=self.handed_back,
            monitor_cpu=self.monitor.cpu_seconds,
            monitor_rounds=self.monitor.rounds,
        )


def _reading(reason: RecycleReason, health: WorkerHealth) -> str:
    """The reading that tripped ``reason``, for the log line."""
    if reason is RecycleReason.MEMORY:
        return f"private RSS {(health.private_rss or health.rss or 0) / 2**20:.0f} MiB"
    if reason is RecycleReason.FDS:
        return f"{health.fds} open files"
    if reason is RecycleReason.AGE:
        return f"age {health.age:.1f}s"
    if reason is RecycleReason.TASKS:
        return f"{health.tasks_completed} tasks"
    return f"idle {health.idle:.1f}s"
