"""Nested dispatch: calls a worker sends up are scheduled by the hub like any other.

The hub gives the relayed call its own request id and a :class:`_Forward` in
place of a caller's future, which sends every answer (each yielded value, the
result, the error) back down to the worker that asked. A task waiting on a
nested call leaves its worker's loop free, so that worker's load discounts it:
workers that all wait on nested calls still take the nested calls themselves.
Mixed into :class:`~wool_local.workers.pool.Pool`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from . import payload
from .dispatch import Pending
from .handle import WorkerHandle
from .protocol import CANCELLED, RAISED, YIELDED, Call, Reply, Step


class _Forward:
    """Stands in for a future: relays an answer to the worker whose nested call it is."""

    __slots__ = ("asker", "asker_gone", "call_id", "pool")

    def __init__(self, pool: Relaying, asker: WorkerHandle, call_id: int) -> None:
        self.pool, self.asker, self.call_id = pool, asker, call_id
        self.asker_gone = False

    def done(self) -> bool:
        return False

    def set_result(self, answer: tuple[Reply, Sequence[bytes]]) -> None:
        reply, buffers = answer
        if reply.status != YIELDED:
            self.pool._relay_finished(self.asker, self.call_id)
        self._send(Reply(self.call_id, reply.status, reply.value, reply.context), buffers)

    def set_exception(self, exc: BaseException) -> None:
        self.pool._relay_finished(self.asker, self.call_id)
        self._send(Reply(self.call_id, RAISED, payload.dumps_exception(exc)))

    def _send(self, reply: Reply, buffers: Sequence[Any] = ()) -> None:
        if not self.asker_gone and self.asker.alive and self.asker.link.lost is None:
            self.asker.send(reply, buffers)


class Relaying:
    """The pool's side of nested calls (``self`` is the :class:`Pool`)."""

    def _relay_call(self, asker: WorkerHandle, call: Call, buffers: Sequence[bytes]) -> None:
        """A worker dispatches onward: schedule its call like any other."""
        if call.fn_def is not None:
            self.fn_defs[call.fn] = call.fn_def
        if call.fn not in self.fn_defs:
            missing = payload.UnpicklableError(f"the hub never received callable #{call.fn}")
            asker.send(Reply(call.id, RAISED, payload.dumps_exception(missing)))
            return
        asker.nested += 1
        self._answered(asker)  # its waiting task frees a slot for queued calls
        hid = next(self._ids)
        relayed = msgspec.structs.replace(call, id=hid, fn_def=None)
        forward = _Forward(self, asker, call.id)
        pending = self._pending[hid] = Pending(hid, forward, relayed, buffers)
        asker.relays[call.id] = hid
        try:
            self.submit(pending)
        except Exception as exc:
            del self._pending[hid]
            pending.future.set_exception(exc)

    def _relay_step(self, asker: WorkerHandle, step: Step, buffers: Sequence[bytes]) -> None:
        hid = asker.relays.get(step.id)
        pending = self._pending.get(hid) if hid is not None else None
        if pending is None or pending.target is None or hid is None:
            gone = RuntimeError("the remote generator session is gone")
            asker.send(Reply(step.id, RAISED, payload.dumps_exception(gone)))
            return
        self.send_step(pending.target, Step(hid, step.op, step.value, step.context), buffers)

    def _relay_cancel(self, asker: WorkerHandle, call_id: int) -> None:
        hid = asker.relays.get(call_id)
        pending = self._pending.get(hid) if hid is not None else None
        if pending is None or pending.cancelled:
            return
        if pending.target is None:  # still queued here: answer for it
            del self._pending[hid]  # type: ignore[arg-type]
            pending.future.set_result((Reply(call_id, CANCELLED), []))
        else:
            self.cancel_remote(pending, hid)  # type: ignore[arg-type]

    def _relay_finished(self, asker: WorkerHandle, call_id: int) -> None:
        if asker.relays.pop(call_id, None) is not None:
            asker.nested = max(0, asker.nested - 1)

    def _drop_relays(self, asker: WorkerHandle) -> None:
        """A worker died: cancel the nested calls it was waiting on."""
        for hid in list(asker.relays.values()):
            pending = self._pending.get(hid)
            if pending is None:
                continue
            pending.future.asker_gone = True
            if pending.target is None:
                del self._pending[hid]
            elif pending.target.alive and not pending.cancelled:
                self.cancel_remote(pending, hid)
        asker.relays.clear()
        asker.nested = 0
