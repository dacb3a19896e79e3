"""Recycling workers on their limits, and retiring idle ones.

The monitor hands every round of readings to :meth:`Recycler.apply`, which
decides with :func:`~wool_local.workers.limits.evaluate_recycle`: at most one
worker is recycled at a time (its replacement is forked first, so capacity
holds), and at most one idle worker retires per round, never below
``min_workers``. A retiring worker takes no new calls and stops when its
last call ends; after ``recycle_grace`` it is killed.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable
from typing import Protocol

from .handle import WorkerHandle
from .limits import RecycleReason, WorkerHealth, WorkerLimits, evaluate_recycle

log = logging.getLogger("wool_local")


class Membership(Protocol):
    """What the recycler asks of the hub."""

    def workers(self) -> Iterable[WorkerHandle]: ...
    def worker(self, pid: int) -> WorkerHandle | None: ...
    def serving_count(self) -> int: ...
    def spawn_worker(self) -> None: ...
    def stop_worker(self, handle: WorkerHandle) -> None: ...
    def kill(self, handle: WorkerHandle, reason: str) -> None: ...
    def changed_membership(self) -> None: ...


class Recycler:
    """The hub's recycling policy."""

    def __init__(
        self, hub: Membership, limits: WorkerLimits, min_workers: int, recycle_grace: float
    ) -> None:
        self._hub = hub
        self.limits = limits
        self.min_workers = min_workers
        self.recycle_grace = recycle_grace
        #: Workers retired so far, by reason.
        self.recycles: Counter[RecycleReason] = Counter()

    def apply(self, readings: dict[int, WorkerHealth]) -> None:
        """Act on one monitor round: at most one recycle and one idle retirement."""
        hub = self._hub
        recycling = any(h.retiring not in (None, RecycleReason.IDLE) for h in hub.workers())
        retired_idle = False
        for pid, health in readings.items():
            handle = hub.worker(pid)
            if handle is None or handle.retiring is not None or handle.stopping:
                continue
            reason = evaluate_recycle(health, self.limits)
            if reason is None:
                continue
            if reason is RecycleReason.IDLE:
                # Keep min_workers warm; retire one idle worker per round.
                if not retired_idle and hub.serving_count() > self.min_workers:
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
        self._hub.changed_membership()
        log.info(
            "wool_local: retiring worker %d: %s (%s)", handle.pid, reason, _reading(reason, health)
        )
        if reason is not RecycleReason.IDLE:
            self._hub.spawn_worker()  # capacity holds
        if handle.open == 0:
            self._hub.stop_worker(handle)
        else:
            loop = asyncio.get_running_loop()
            loop.call_later(self.recycle_grace, self._overdue, handle)

    def _overdue(self, handle: WorkerHandle) -> None:
        if handle.alive and self._hub.worker(handle.pid) is handle:
            self._hub.kill(
                handle,
                f"it was being recycled ({handle.retiring}) and its calls did not finish "
                f"within recycle_grace={self.recycle_grace}s",
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
