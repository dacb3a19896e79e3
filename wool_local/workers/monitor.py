"""The hub's health monitor: samples every worker with psutil for the limits.

Every ``interval`` seconds it reads each worker's memory and open files (one
``/proc/<pid>/statm`` and one ``/proc/<pid>/fd`` listing each, tens of
microseconds), combines them with what the hub knows (age, idle time, tasks
done, calls in flight) into a :class:`WorkerHealth`, and hands the round's
readings to its owner, which applies :func:`evaluate_recycle`. USS (from
``smaps``, milliseconds a read) is not sampled. It measures its own CPU time,
so its cost can be reported (``PoolStats.monitor_cpu``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Protocol

import psutil

from .limits import WorkerHealth

log = logging.getLogger("wool_local")


class Sampled(Protocol):
    """What the monitor reads of a worker's handle."""

    @property
    def pid(self) -> int: ...
    @property
    def started_at(self) -> float: ...  # time.monotonic() when it was forked
    @property
    def completed(self) -> int: ...  # calls it finished
    @property
    def load(self) -> int: ...  # requests in flight

    def idle_for(self, now: float) -> float: ...


class Monitor:
    """Periodic sampler; ``on_sample`` receives each round's readings."""

    def __init__(
        self,
        workers: Callable[[], Iterable[Sampled]],
        on_sample: Callable[[dict[int, WorkerHealth]], None],
        *,
        interval: float,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"the monitor interval must be positive, got {interval}")
        self._workers = workers
        self._on_sample = on_sample
        self.interval = interval
        self.latest: dict[int, WorkerHealth] = {}
        self.cpu_seconds = 0.0  # spent sampling, for the cost report
        self.rounds = 0
        self._procs: dict[int, psutil.Process] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.sample_now()
            except Exception:  # a monitor bug must not take the pool down
                log.exception("wool_local: worker monitor round failed")

    def sample_now(self) -> dict[int, WorkerHealth]:
        started = time.thread_time()
        readings = {}
        for handle in self._workers():
            readings[handle.pid] = self.sample(handle)
        for pid in list(self._procs):
            if pid not in readings:
                del self._procs[pid]
        self.latest = readings
        self.rounds += 1
        self.cpu_seconds += time.thread_time() - started
        self._on_sample(readings)
        return readings

    def sample(self, handle: Sampled) -> WorkerHealth:
        """One worker's health: hub-side counters plus what the OS says."""
        now = time.monotonic()
        health = WorkerHealth(
            pid=handle.pid,
            age=now - handle.started_at,
            idle=handle.idle_for(now),
            tasks_completed=handle.completed,
            inflight=handle.load,
        )
        proc = self._procs.get(handle.pid)
        try:
            if proc is None:
                proc = self._procs[handle.pid] = psutil.Process(handle.pid)
            mem = proc.memory_info()
            health.rss = mem.rss
            shared = getattr(mem, "shared", None)
            health.private_rss = mem.rss - shared if shared is not None else None
            health.fds = proc.num_fds() if hasattr(proc, "num_fds") else None
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            pass  # it is exiting; the zygote's report will say how
        return health
