"""The hub's health monitor: samples every worker with psutil for the limits.

Every ``interval`` seconds it reads each worker's resident memory and open
files (one ``/proc/<pid>/statm`` and one ``/proc/<pid>/fd`` listing each, tens
of microseconds), combines them with what the hub knows (age, idle time, tasks
done, calls in flight) into a :class:`WorkerHealth`, and hands the round's
readings to its owner, which applies :func:`evaluate_recycle`. It measures its
own CPU time, so its cost can be reported (``PoolStats.monitor_cpu``).

The memory limits judge ``private_rss``: ``Private_Clean + Private_Dirty`` of
``/proc/<pid>/smaps_rollup``, the pages only this worker maps. Pages a worker
inherits at fork (from the zygote, and through it from the hub) are shared
copy-on-write until it writes them, and the kernel counts them as shared, not
private. Measured (Linux 6.18) for a child forked from a parent holding a
300 MiB bytearray: rss 309 MiB and statm's resident-minus-shared 306 MiB, but
Private 0 MiB (Shared 308 MiB); after the child wrote 50 MiB of it, Private
51 MiB. A pool worker of a small hub reads Private about 3.5 MiB of 21 MiB rss.

smaps_rollup walks the worker's page tables: about 0.3 ms for a 21 MiB
worker, 3 ms for one that maps 300 MiB (about 10 us per resident MiB), where
statm takes 12 us. So it is read only when it matters: when ``rss`` is above
the lowest memory limit (below it, private memory cannot be above it, since
private pages are resident), at a worker's first reading, and otherwise every
:data:`PRIVATE_REFRESH` seconds for ``stats()``; in between the last reading
stands, capped at ``rss``. Where smaps_rollup cannot be read (kernels before
4.14), psutil's USS (from ``smaps``) stands in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Protocol

import psutil

from .limits import WorkerHealth, WorkerLimits

log = logging.getLogger("wool_local")

#: Seconds a private-memory reading stands while rss is below every memory limit.
PRIVATE_REFRESH = 10.0


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
        limits: WorkerLimits | None = None,
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
        # Below this rss no memory limit can trip (None: none is set).
        self._ceiling = limits.memory_ceiling if limits is not None else None
        self._private: dict[int, tuple[int | None, float]] = {}  # pid -> (reading, when)
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
                self._private.pop(pid, None)
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
            health.rss = proc.memory_info().rss
            health.private_rss = self._private_rss(proc, health.rss, now)
            health.fds = proc.num_fds() if hasattr(proc, "num_fds") else None
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            pass  # it is exiting; the zygote's report will say how
        return health

    def _private_rss(self, proc: psutil.Process, rss: int, now: float) -> int | None:
        """The worker's private memory: read afresh when it could trip a limit or the
        last reading is old, else the last reading capped at ``rss``."""
        last = self._private.get(proc.pid)
        if (
            last is not None
            and now - last[1] < PRIVATE_REFRESH
            and (self._ceiling is None or rss <= self._ceiling)
        ):
            return None if last[0] is None else min(last[0], rss)
        value = read_private(proc)
        self._private[proc.pid] = (value, now)
        return value


def read_private(proc: psutil.Process) -> int | None:
    """Bytes only ``proc`` maps: the ``Private_*`` lines of its smaps_rollup (Clean,
    Dirty, Hugetlb: psutil's USS), else psutil's USS, else None (the limits judge rss).

    Read here rather than through ``memory_full_info()``: that reads statm as
    well, and older psutil releases read the whole ``smaps`` instead.
    """
    try:
        with open(f"/proc/{proc.pid}/smaps_rollup", "rb") as f:
            text = f.read()
    except ProcessLookupError as exc:
        raise psutil.NoSuchProcess(proc.pid) from exc
    except PermissionError as exc:
        raise psutil.AccessDenied(proc.pid) from exc
    except FileNotFoundError:
        if not proc.is_running():
            raise psutil.NoSuchProcess(proc.pid) from None
        try:  # a kernel without smaps_rollup (before 4.14)
            return int(proc.memory_full_info().uss)
        except (AttributeError, NotImplementedError):
            return None
    # A zombie's smaps_rollup is empty: 0, and it is exiting anyway.
    kib = sum(int(line.split()[1]) for line in text.splitlines() if line.startswith(b"Private_"))
    return kib << 10
