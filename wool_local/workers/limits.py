"""Worker limits, health readings, and the pure decision to recycle a worker.

Limits are ceilings the hub's monitor checks every ``monitor_interval``
seconds; each is optional (``None`` switches it off) and accepts human units in
the public API (``"1GiB"``, ``"512MB"``, ``"10m"``, ``"30s"``). A reading a
platform cannot give is ``None`` and never trips a limit. Every limit but one
is soft: the worker is retired and finishes what it runs. ``hard_rss`` alone
kills.
"""

from __future__ import annotations

import enum
import re
import resource
from dataclasses import dataclass
from typing import Any, TypeVar

_N = TypeVar("_N", int, float)

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "kib": 1 << 10,
    "m": 1000**2, "mb": 1000**2, "mib": 1 << 20,
    "g": 1000**3, "gb": 1000**3, "gib": 1 << 30,
    "t": 1000**4, "tb": 1000**4, "tib": 1 << 40,
}  # fmt: skip
_TIME_UNITS = {"": 1, "ms": 1e-3, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
_QUANTITY = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_size(value: int | float | str, name: str = "size") -> int:
    """Bytes from ``1073741824``, ``"1GiB"``, ``"512 MB"``, ``"64k"``."""
    number, unit = _split(value, name, "a size like 512MiB or 2GB")
    factor = _SIZE_UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(f"{name}: unknown size unit {unit!r} (use B, KiB, MiB, GiB, kB, MB, GB)")
    return _positive(int(number * factor), name, value)


def parse_duration(value: int | float | str, name: str = "duration") -> float:
    """Seconds from ``30``, ``"30s"``, ``"10m"``, ``"1.5h"``, ``"250ms"``."""
    number, unit = _split(value, name, "a duration like 30s, 10m or 2h")
    factor = _TIME_UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(f"{name}: unknown time unit {unit!r} (use ms, s, m, h, d)")
    return _positive(number * factor, name, value)


def _split(value: Any, name: str, example: str) -> tuple[float, str]:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number or a string like {example}, got {value!r}")
    if isinstance(value, int | float):
        return float(value), ""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a number or a string like {example}, got {value!r}")
    m = _QUANTITY.match(value)
    if m is None:
        raise ValueError(f"{name}: cannot read {value!r}; write {example}")
    return float(m.group(1)), m.group(2)


def _positive(number: _N, name: str, original: object) -> _N:
    if number <= 0:
        raise ValueError(f"{name} must be positive, got {original!r} (use None to turn it off)")
    return number


def default_max_fds() -> int | None:
    """A margin below this process's soft ``RLIMIT_NOFILE`` (workers inherit it)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return None
    return max(16, soft - max(32, soft // 10))


class RecycleReason(enum.Enum):
    """Why a worker is replaced (or, for IDLE, retired; for HARD_MEMORY, killed)."""

    HARD_MEMORY = "hard_memory"
    MEMORY = "memory"
    FDS = "fds"
    AGE = "age"
    TASKS = "tasks"
    IDLE = "idle"

    def __str__(self) -> str:
        return _REASON_TEXT[self]


_REASON_TEXT = {
    RecycleReason.HARD_MEMORY: "memory above hard_rss",
    RecycleReason.MEMORY: "memory above max_rss",
    RecycleReason.FDS: "open files above max_fds",
    RecycleReason.AGE: "older than max_age",
    RecycleReason.TASKS: "ran max_tasks tasks",
    RecycleReason.IDLE: "idle past idle_ttl",
}


class _Default(enum.Enum):
    """``max_fds``'s default: a margin below the open-files limit (:func:`default_max_fds`)."""

    MAX_FDS = "default_max_fds()"

    def __repr__(self) -> str:
        return self.value


@dataclass(frozen=True, init=False)
class WorkerLimits:
    """Ceilings for each worker; ``None`` turns one off.

    The constructor takes human units (``max_rss="1GiB"``, ``max_age="10m"``);
    the fields hold plain numbers: bytes for ``max_rss`` and ``hard_rss``,
    seconds for ``max_age`` and ``idle_ttl``, counts for ``max_fds`` and
    ``max_tasks``.

    All but ``hard_rss`` are soft: a worker past one is retired at the end of
    its work. It takes no new calls, a replacement is forked first, and it
    stops once its last call and generator session end, however long they
    take. ``hard_rss`` (off by default) is the one limit that kills: a worker
    above it is SIGKILLed, and the calls it runs fail with a ``WorkerCrashed``
    that names the ceiling and the reading. It must be above ``max_rss``.

    Both memory limits judge :attr:`WorkerHealth.private_rss`, the memory the
    worker alone maps: pages it shares, with the zygote and the hub it was
    forked from (copy-on-write pages it has not written) or with the rings,
    do not count.
    """

    max_rss: int | None  # bytes
    max_fds: int | None
    max_age: float | None  # seconds
    idle_ttl: float | None  # seconds
    max_tasks: int | None
    hard_rss: int | None  # bytes

    def __init__(
        self,
        max_rss: int | str | None = "1GiB",
        max_fds: int | _Default | None = _Default.MAX_FDS,
        max_age: float | str | None = "10m",
        idle_ttl: float | str | None = "30s",
        max_tasks: int | None = None,
        hard_rss: int | str | None = None,
    ) -> None:
        # Frozen: set the normalised values past the dataclass's __setattr__.
        set_ = object.__setattr__
        set_(self, "max_rss", None if max_rss is None else parse_size(max_rss, "max_rss"))
        if isinstance(max_fds, _Default):
            set_(self, "max_fds", default_max_fds())
        else:
            set_(self, "max_fds", None if max_fds is None else _whole(max_fds, "max_fds"))
        set_(self, "max_age", None if max_age is None else parse_duration(max_age, "max_age"))
        set_(self, "idle_ttl", None if idle_ttl is None else parse_duration(idle_ttl, "idle_ttl"))
        set_(self, "max_tasks", None if max_tasks is None else _whole(max_tasks, "max_tasks"))
        set_(self, "hard_rss", None if hard_rss is None else parse_size(hard_rss, "hard_rss"))
        if self.hard_rss is not None and self.max_rss is not None:
            if self.hard_rss <= self.max_rss:
                raise ValueError(
                    f"hard_rss ({mib(self.hard_rss)}) must be above max_rss "
                    f"({mib(self.max_rss)}): the soft limit would never act; "
                    "lower max_rss or set it to None"
                )

    @classmethod
    def unlimited(cls, **only: Any) -> WorkerLimits:
        """Every limit off, but those given: ``WorkerLimits.unlimited(max_age="1s")``."""
        off: dict[str, Any] = dict.fromkeys(
            ("max_rss", "max_fds", "max_age", "idle_ttl", "max_tasks", "hard_rss")
        )
        unknown = only.keys() - off.keys()
        if unknown:
            raise TypeError(f"WorkerLimits has no limit {', '.join(sorted(unknown))}")
        return cls(**{**off, **only})

    @property
    def memory_ceiling(self) -> int | None:
        """The lowest memory limit set: below it in RSS, no memory limit can trip."""
        set_ = [n for n in (self.max_rss, self.hard_rss) if n is not None]
        return min(set_) if set_ else None


def mib(n: int) -> str:
    """``n`` bytes as MiB for messages: ``"300.0 MiB"``."""
    return f"{n / 2**20:.1f} MiB"


def _whole(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be a whole number, got {value!r}")
    return _positive(value, name, value)


@dataclass
class WorkerHealth:
    """What the hub knows of one worker. Readings it could not take are None.

    ``private_rss`` is the measure the memory limits judge: the worker's
    private pages, ``Private_Clean + Private_Dirty`` of
    ``/proc/<pid>/smaps_rollup`` (what psutil calls USS). Pages inherited at
    fork count as shared, not private, until the worker writes them: a worker
    of a hub holding 300 MiB reads rss 309 MiB and private_rss 0-3 MiB. Where
    smaps_rollup cannot be read, psutil's USS stands in; without either,
    the limits judge ``rss``. See :mod:`~wool_local.workers.monitor` for when
    it is read.
    """

    pid: int
    rss: int | None = None  # resident bytes, shared pages included
    private_rss: int | None = None  # bytes only this worker maps: what the memory limits judge
    fds: int | None = None
    age: float | None = None  # seconds since it was forked
    idle: float | None = None  # seconds with nothing in flight (0 when busy)
    tasks_completed: int = 0
    inflight: int = 0
    #: idle, busy, blocked (its loop does not answer), retiring (<reason>) or stopping.
    state: str = ""

    @property
    def memory(self) -> int | None:
        """The reading the memory limits judge: ``private_rss``, else ``rss``."""
        return self.private_rss if self.private_rss is not None else self.rss


def evaluate_recycle(health: WorkerHealth, limits: WorkerLimits) -> RecycleReason | None:
    """The most pressing limit ``health`` breaks: hard memory > memory > fds > age >
    tasks > idle."""
    mem = health.memory
    if limits.hard_rss is not None and mem is not None and mem > limits.hard_rss:
        return RecycleReason.HARD_MEMORY
    if limits.max_rss is not None and mem is not None and mem > limits.max_rss:
        return RecycleReason.MEMORY
    if limits.max_fds is not None and health.fds is not None and health.fds > limits.max_fds:
        return RecycleReason.FDS
    if limits.max_age is not None and health.age is not None and health.age > limits.max_age:
        return RecycleReason.AGE
    if limits.max_tasks is not None and health.tasks_completed >= limits.max_tasks:
        return RecycleReason.TASKS
    if (
        limits.idle_ttl is not None
        and health.idle is not None
        and health.inflight == 0
        and health.idle >= limits.idle_ttl
    ):
        return RecycleReason.IDLE
    return None
