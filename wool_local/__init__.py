"""wool_local: an async-native process pool for one machine.

Decorate an ``async def`` (or async generator) with :func:`routine`, call it
inside ``async with WorkerPool(): ...``, and it runs in a forked worker.
"""

from .context import RuntimeContext
from .pool import WorkerPool, available_cpus
from .routine import NoPoolError, Routine, routine
from .workers import (
    ContextDecodeWarning,
    ContextVar,
    PoolClosed,
    PoolStats,
    RecycleReason,
    RemoteError,
    RemoteTraceback,
    ThreadedForkWarning,
    Token,
    UnpicklableError,
    WorkerCrashed,
    WorkerHealth,
    WorkerLimits,
    WorkerProxy,
    __proxy__,
    evaluate_recycle,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "ContextDecodeWarning",
    "ContextVar",
    "NoPoolError",
    "PoolClosed",
    "PoolStats",
    "RecycleReason",
    "RemoteError",
    "RemoteTraceback",
    "Routine",
    "RuntimeContext",
    "ThreadedForkWarning",
    "Token",
    "UnpicklableError",
    "WorkerCrashed",
    "WorkerHealth",
    "WorkerLimits",
    "WorkerPool",
    "WorkerProxy",
    "__proxy__",
    "available_cpus",
    "evaluate_recycle",
    "routine",
]
