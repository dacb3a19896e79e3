"""wool's transport failures as the exceptions wool_local users already catch.

A worker lost mid-call reaches wool's caller as a raw ``grpc.aio.AioRpcError``
(``UNAVAILABLE``), and a pool with no worker left as ``NoWorkersAvailable``;
here they are a :class:`~wool_local.WorkerCrashed` (:class:`WoolWorkerLost`)
and a :class:`~wool_local.PoolClosed`, so ``except`` clauses written for the
local backend hold on wool. What the routine itself raised passes as it is.
"""

from __future__ import annotations

from typing import Any

import wool

from ..workers.errors import PoolClosed, WorkerCrashed


class WoolWorkerLost(WorkerCrashed):
    """A wool worker was lost (its connection dropped) while it ran this dispatch;
    its pid is not known here (``pid`` is 0)."""

    def __init__(self, detail: str) -> None:
        super().__init__(0, detail=detail)

    def __str__(self) -> str:
        return f"a wool worker was lost while running this dispatch ({self.detail})"

    def __reduce__(self) -> Any:
        return (WoolWorkerLost, (self.detail,))


def is_transport_error(exc: BaseException) -> bool:
    """Whether ``exc`` is what wool's transport raises for a worker it lost."""
    code = getattr(exc, "code", None)
    if type(exc).__module__.startswith("grpc") and callable(code):
        return getattr(code(), "name", "") == "UNAVAILABLE"
    return False


def translate(exc: BaseException) -> BaseException:
    """wool's transport errors as wool_local's; any other exception as it is."""
    if isinstance(exc, wool.NoWorkersAvailable):
        return PoolClosed(f"no wool worker is available: {exc}")
    if is_transport_error(exc):
        details = getattr(exc, "details", None)
        return WoolWorkerLost(f"gRPC UNAVAILABLE: {details() if callable(details) else exc}")
    return exc
