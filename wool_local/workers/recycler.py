"""Recycling workers on their limits, and retiring idle ones.

The monitor hands every round of readings to :meth:`Recycler.apply`, which
decides with :func:`~wool_local.workers.limits.evaluate_recycle`.

Recycling happens at the end of a unit of work, never in its middle: a worker
past a soft limit is retired. It takes no new calls, its replacement is forked
first (capacity holds), and it is stopped when its last call or generator
session ends, however long that takes; nothing it runs is cut short. At most
one worker is recycled per round, and none while a worker is being forked, so
replacements come one at a time. At most one idle worker retires per round,
never below ``min_workers``.

The one exception is the hard ceiling, ``WorkerLimits.hard_rss`` (off by
default): a worker above it, retiring or not, is killed at once, and what it
runs fails with a ``WorkerCrashed`` that names the ceiling and the reading.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Protocol

from .handle import WorkerHandle
from .limits import RecycleReason, WorkerHealth, WorkerLimits, evaluate_recycle, mib

log = logging.getLogger("wool_local")


class Membership(Protocol):
    """What the recycler asks of the hub."""

    def worker(self, pid: int) -> WorkerHandle | None: ...
    def serving_count(self) -> int: ...
    @property
    def spawning(self) -> int: ...  # workers being forked right now
    def spawn_worker(self) -> None: ...
    def stop_worker(self, handle: WorkerHandle) -> None: ...
    def kill(self, handle: WorkerHandle, reason: str) -> None: ...
    def changed_membership(self) -> None: ...


class Recycler:
    """The hub's recycling policy."""

    def __init__(self, hub: Membership, limits: WorkerLimits, min_workers: int) -> None:
        self._hub = hub
        self.limits = limits
        self.min_workers = min_workers
        #: Workers retired (or, for HARD_MEMORY, killed) so far, by reason.
        self.recycles: Counter[RecycleReason] = Counter()

    def apply(self, readings: dict[int, WorkerHealth]) -> None:
        """Act on one monitor round: hard-ceiling kills, at most one recycle and at
        most one idle retirement."""
        hub = self._hub
        # Staggered: no recycle while a replacement (or any worker) is being forked.
        recycling = hub.spawning > 0
        retired_idle = False
        for pid, health in readings.items():
            handle = hub.worker(pid)
            if handle is None or handle.stopping or handle.kill_reason:
                continue
            reason = evaluate_recycle(health, self.limits)
            if reason is RecycleReason.HARD_MEMORY:
                self.kill(handle, health)  # retiring or not: the one limit that kills
            elif reason is None or handle.retiring is not None:
                continue
            elif reason is RecycleReason.IDLE:
                # Keep min_workers warm; retire one idle worker per round.
                if not retired_idle and hub.serving_count() > self.min_workers:
                    retired_idle = True
                    self.retire(handle, reason, health)
            elif not recycling:
                recycling = True
                self.retire(handle, reason, health)

    def on_finished(self, handle: WorkerHandle) -> None:
        """A call on ``handle`` ended: past ``max_tasks`` it retires now, not at the next
        monitor round (by then it would have taken more calls)."""
        max_tasks = self.limits.max_tasks
        if max_tasks is not None and handle.completed >= max_tasks and handle.retiring is None:
            if not handle.stopping and not handle.kill_reason:
                health = WorkerHealth(pid=handle.pid, tasks_completed=handle.completed)
                self.retire(handle, RecycleReason.TASKS, health)

    def retire(self, handle: WorkerHandle, reason: RecycleReason, health: WorkerHealth) -> None:
        """Take ``handle`` out of service; replace it first unless it is merely idle.

        It stops now if it holds nothing, else when its last call or session
        ends (the hub's ``on_finished``), never earlier.
        """
        handle.retiring = reason
        self.recycles[reason] += 1
        self._hub.changed_membership()
        log.log(
            logging.DEBUG if reason is RecycleReason.IDLE else logging.INFO,  # idle: routine
            "wool_local: retiring worker %d: %s (%s)",
            handle.pid,
            reason,
            _reading(reason, health),
        )
        if reason is not RecycleReason.IDLE:
            self._hub.spawn_worker()  # capacity holds
        if handle.open == 0:
            self._hub.stop_worker(handle)

    def kill(self, handle: WorkerHandle, health: WorkerHealth) -> None:
        """Kill ``handle`` for passing ``hard_rss``; replace it unless it was retiring
        (then its replacement exists already)."""
        assert self.limits.hard_rss is not None
        serving = handle.retiring is None
        handle.retiring = RecycleReason.HARD_MEMORY  # no new calls until its exit is seen
        self.recycles[RecycleReason.HARD_MEMORY] += 1
        self._hub.changed_membership()
        reason = (
            f"it passed the hard memory ceiling hard_rss={mib(self.limits.hard_rss)}: "
            f"{_reading(RecycleReason.HARD_MEMORY, health)}"
        )
        log.warning("wool_local: killing worker %d: %s", handle.pid, reason)
        if serving:
            self._hub.spawn_worker()  # the hub replaces only workers that were serving
        self._hub.kill(handle, reason)


def _reading(reason: RecycleReason, health: WorkerHealth) -> str:
    """The reading that tripped ``reason``, for the log line and the kill reason."""
    if reason in (RecycleReason.MEMORY, RecycleReason.HARD_MEMORY):
        if health.private_rss is not None:
            return f"private memory {mib(health.private_rss)}"
        return f"resident memory {mib(health.rss or 0)}"
    if reason is RecycleReason.FDS:
        return f"{health.fds} open files"
    if reason is RecycleReason.AGE:
        return f"age {health.age:.1f}s"
    if reason is RecycleReason.TASKS:
        return f"{health.tasks_completed} tasks"
    return f"idle {health.idle:.1f}s"
