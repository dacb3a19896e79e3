"""Worker processes and the hub: zygote, worker service, scheduling, dispatch.

Knows tasks (callables, arguments, results) but nothing of the ``@routine``
decorator that sits above it.
"""

from .context import ContextDecodeWarning, ContextVar, Token
from .dispatch import Dispatcher
from .errors import PoolClosed, WorkerCrashed
from .hub import Hub
from .hubclient import get_dispatcher
from .limits import RecycleReason, WorkerHealth, WorkerLimits, evaluate_recycle
from .options import PoolOptions
from .payload import RemoteError, RemoteTraceback, UnpicklableError
from .proxy import ProxyUnreachable, WorkerProxy, __proxy__, __proxy_pool__
from .stats import PoolStats
from .zygote import ThreadedForkWarning
from .zygote import main_has as zygote_main_has

__all__ = [
    "ContextDecodeWarning",
    "ContextVar",
    "Dispatcher",
    "Hub",
    "PoolClosed",
    "PoolOptions",
    "PoolStats",
    "ProxyUnreachable",
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
    "__proxy_pool__",
    "evaluate_recycle",
    "get_dispatcher",
    "zygote_main_has",
]
