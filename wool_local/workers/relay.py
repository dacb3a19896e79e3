"""Nested dispatch: calls a worker sends up are scheduled by the hub like any other.

The hub gives a relayed call its own request id and a :class:`_Forward` in
place of a caller's future, which sends every answer (each yielded value, the
result, the error) back down to the worker that asked. A task waiting on a
nested call leaves its worker's loop free, so that worker's load discounts it
(``WorkerHandle.nested``): workers that all wait on nested calls still take
the nested calls themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from . import payload
from .dispatch import Dispatcher, Pending
from .handle import WorkerHandle
from .protocol import CANCELLED, RAISED, YIELDED, Call, Reply, Step


class _Forward:
    """Stands in for a future: relays an answer to the worker whose nested call it is."""

    __slots__ = ("asker", "asker_gone", "call_id", "relay")

    def __init__(self, relay: Relay, asker: WorkerHandle, call_id: int) -> None:
        self.relay, self.asker, self.call_id = relay, asker, call_id
        self.asker_gone = False

    def done(self) -> bool:
        return False

    def set_result(self, answer: tuple[Reply, Sequence[bytes]]) -> None:
        reply, buffers = answer
        if reply.status != YIELDED:
            self.relay.finished(self.asker, self.call_id)
        self._send(msgspec.structs.replace(reply, id=self.call_id), buffers)

    def set_exception(self, exc: BaseException) -> None:
        self.relay.finished(self.asker, self.call_id)
        self._send(Reply(self.call_id, RAISED, payload.dumps_exception(exc)))

    def _send(self, reply: Reply, buffers: Sequence[Any] = ()) -> None:
        if not self.asker_gone and self.asker.alive and self.asker.link.lost is None:
            self.asker.send(reply, buffers)


class Relay:
    """The hub's side of nested calls: ``call``, ``step`` and ``cancel`` mirror the
    messages a worker sends up; ``drop`` forgets a worker that died."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        submit: Callable[[Pending], None],
        send_queued: Callable[[], None],
    ) -> None:
        self._dispatcher = dispatcher
        self._submit = submit
        self._send_queued = send_queued

    def call(self, asker: WorkerHandle, call: Call, buffers: Sequence[bytes]) -> None:
        """A worker dispatches onward: schedule its call like any other."""
        d = self._dispatcher
        if call.fn_def is not None:
            d.fn_defs[call.fn] = call.fn_def
        if call.fn not in d.fn_defs:
            missing = payload.UnpicklableError(f"the hub never received callable #{call.fn}")
            asker.send(Reply(call.id, RAISED, payload.dumps_exception(missing)))
            return
        asker.nested += 1
        self._send_queued()  # its waiting task frees a slot for queued calls
        forward = _Forward(self, asker, call.id)
        pending = d.track(forward, msgspec.structs.replace(call, fn_def=None), buffers)
        asker.relays[call.id] = pending.id
        try:
            self._submit(pending)
        except Exception as exc:
            d.fail_request(pending, exc)

    def step(self, asker: WorkerHandle, step: Step, buffers: Sequence[bytes]) -> None:
        pending = self._relayed(asker, step.id)
        if pending is None or pending.target is None:
            gone = RuntimeError("the remote generator session is gone")
            asker.send(Reply(step.id, RAISED, payload.dumps_exception(gone)))
            return
        relayed = msgspec.structs.replace(step, id=pending.id)
        self._dispatcher.send_step(pending.target, relayed, buffers, pending)

    def cancel(self, asker: WorkerHandle, call_id: int) -> None:
        pending = self._relayed(asker, call_id)
        if pending is None or pending.cancelled:
            return
        if pending.target is None:  # still queued here: answer for it
            self._dispatcher.forget(pending)
            pending.future.set_result((Reply(call_id, CANCELLED), []))
        else:
            self._dispatcher.cancel_remote(pending)

    def finished(self, asker: WorkerHandle, call_id: int) -> None:
        """The nested call ``call_id`` of ``asker`` got its final answer."""
        if asker.relays.pop(call_id, None) is not None:
            asker.nested = max(0, asker.nested - 1)

    def drop(self, asker: WorkerHandle) -> None:
        """``asker`` died: cancel the nested calls it was waiting on."""
        for hid in list(asker.relays.values()):
            pending = self._dispatcher.request(hid)
            if pending is None:
                continue
            pending.future.asker_gone = True
            if pending.target is None:
                self._dispatcher.forget(pending)
            elif pending.target.alive and not pending.cancelled:
                self._dispatcher.cancel_remote(pending)
        asker.relays.clear()
        asker.nested = 0

    def _relayed(self, asker: WorkerHandle, call_id: int) -> Pending | None:
        hid = asker.relays.get(call_id)
        return None if hid is None else self._dispatcher.request(hid)
