"""wool_local: an async-native process pool for one machine.

Decorate an ``async def`` (or async generator) with :func:`routine`, call it
inside ``async with WorkerPool(): ...``, and it runs in a forked worker.

``import wool_local`` is cheap: it loads :mod:`wool_local.routine` (``@routine``
imports nothing more) and resolves the other public names on first use
(PEP 562), so asyncio, the hub and the ipc layer are imported when a pool
starts or a routine is first called, not when a module that defines
routines is imported.
"""

from .routine import NoPoolError, Routine, routine

__version__ = "0.1.0.dev0"

__all__ = [
    "ContextDecodeWarning",
    "ContextVar",
    "Executor",
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

#: The public names resolved on first use, and the submodule each comes from.
_LAZY = {
    "Executor": "executor",
    "RuntimeContext": "context",
    "WorkerPool": "pool",
    "available_cpus": "pool",
    **dict.fromkeys(
        (
            "ContextDecodeWarning",
            "ContextVar",
            "PoolClosed",
            "PoolStats",
            "RecycleReason",
            "RemoteError",
            "RemoteTraceback",
            "ThreadedForkWarning",
            "Token",
            "UnpicklableError",
            "WorkerCrashed",
            "WorkerHealth",
            "WorkerLimits",
            "WorkerProxy",
            "__proxy__",
            "evaluate_recycle",
        ),
        "workers",
    ),
}

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .context import RuntimeContext
    from .executor import Executor
    from .pool import WorkerPool, available_cpus
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
else:  # hidden from type checkers, which see the imports above instead

    def __getattr__(name: str) -> object:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        from importlib import import_module

        value = getattr(import_module(f"{__name__}.{module}"), name)
        globals()[name] = value  # resolved once: later lookups are plain
        return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
