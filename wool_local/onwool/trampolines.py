"""The two wool routines every dispatch of the wool backend goes through.

wool dispatches only functions decorated with ``wool.routine``, and ships them
by reference when their module is importable, as this one is. They are
generic: the ``wool_local`` callable to run (a routine's body, a map chunk,
an executor call) travels as their first argument, pickled by wool
(cloudpickle) with its arguments and the caller's context snapshot
(:func:`wool_local.workers.context.snapshot`). In the wool worker they bind
the backend's proxy in ``wool_local.__proxy__``, so routines the callable
calls dispatch again through wool; set the caller's context variables; run
the callable; and send back what it changed in them, as a forked worker's
dispatch does. Everything wool_local's hub would add (scheduling, leases,
hand-back) is wool's business here.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncGenerator
from typing import Any, cast

import wool

from ..workers import context
from ..workers.proxy import PROXY_KEY, __proxy__
from .errors import is_transport_error

#: What the caller sends a stream at each step after the first: (op, value, context).
NEXT, THROW = 0, 1
#: What a stream yields: (kind, item, context changes); DONE after the last item,
#: RAISED with an exception the callable raised that wool would take for its own.
ITEM, DONE, RAISED = 0, 1, 2

#: Where an exception raised by the callable carries its context changes back (an
#: attribute survives wool's pickling of the exception; the caller removes it). Its
#: presence also marks the exception as the callable's own, never wool's transport's.
BACK_ATTR = "_wool_local_back"


def enter(snapshot: context.Snapshot | None, by_name: bool) -> dict[str, Any]:
    """In the worker: set the caller's variables and bind the backend's proxy (see
    :class:`~.dispatcher.WoolDispatcher` for ``by_name``); the values set (so only
    what the callable changes travels back)."""
    from .dispatcher import worker_proxy

    values = context.decode(snapshot)
    values.pop(PROXY_KEY, None)  # (never sent; a value here would be stale)
    if values:
        context.apply(values)
    # (A WoolProxy where __proxy__ holds WorkerProxys: routines use either alike.)
    __proxy__.set(cast(Any, worker_proxy(by_name)))
    return values


def sync_back(synced: dict[str, Any]) -> context.Snapshot | None:
    """What the callable changed since ``synced`` (now brought up to date), pickled."""
    snapshot, changed = context.encode_back(synced)
    synced.update(changed)
    return snapshot


class Raised:
    """An exception the callable raised, returned as a value: raised, a gRPC error of
    the callable's own (it called some other service) would look to the caller like
    wool's transport losing the worker (see :func:`.errors.is_transport_error`)."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def carry_back(exc: BaseException, synced: dict[str, Any]) -> None:
    """Attach the context changes to ``exc`` on its way out (as a reply would carry them),
    None if there are none: the attribute says the callable raised it."""
    try:
        setattr(exc, BACK_ATTR, sync_back(synced))
    except Exception:
        pass  # an exception without a __dict__: the changes are lost, the error is not


@wool.routine
async def run_call(
    fn: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    snapshot: context.Snapshot | None,
    by_name: bool,
) -> tuple[Any, context.Snapshot | None]:
    """``await fn(*args, **kwargs)`` in a wool worker: its result and context changes."""
    synced = enter(snapshot, by_name)
    try:
        result = await fn(*args, **kwargs)
    except BaseException as exc:
        if is_transport_error(exc):
            return Raised(exc), sync_back(synced)
        carry_back(exc, synced)
        raise
    return result, sync_back(synced)


@wool.routine
async def run_stream(
    fn: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    snapshot: context.Snapshot | None,
    by_name: bool,
) -> AsyncGenerator[tuple[int, Any, context.Snapshot | None], Any]:
    """Iterate ``fn(*args, **kwargs)`` in a wool worker, one step per caller step:
    ``(ITEM, item, changes)`` per item, then ``(DONE, None, changes)``. The caller
    sends ``(NEXT, value, its changes)`` (``asend``) or ``(THROW, exc, its changes)``."""
    synced = enter(snapshot, by_name)
    gen = fn(*args, **kwargs)
    op, value = NEXT, None
    try:
        while True:
            try:
                if op == THROW:
                    item = await gen.athrow(value)
                elif value is None:
                    item = await gen.__anext__()
                else:
                    item = await gen.asend(value)
            except StopAsyncIteration:
                yield DONE, None, sync_back(synced)
                return
            except BaseException as exc:
                if is_transport_error(exc):
                    yield RAISED, exc, sync_back(synced)
                    return
                carry_back(exc, synced)
                raise
            op, value, changes = yield ITEM, item, sync_back(synced)
            if changes:
                values = context.decode(changes, step=True)
                context.apply(values)
                synced.update(values)
    finally:
        await gen.aclose()


def main_body(qualname: str) -> Any:
    """The body of routine ``qualname`` of ``__main__`` in this process: wool's workers
    are spawned, and re-run the main script as ``__mp_main__`` (aliased ``__main__``),
    so its routines are there by name, as they are in forked workers."""
    return vars(sys.modules["__main__"])[qualname]._body
