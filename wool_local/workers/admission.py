"""Admitting calls one per loop iteration, and handing back the ones not started.

A worker starts a call, then admits the next only after the new task's first
step has run. If a task then blocks the loop, the calls behind it are still
in the admission queue (or unread in the ring), and the returner thread,
woken by the hub, takes them out under the same lock the loop uses and sends
them back with ``Returned``: each call is either started here or handed back,
never both. Mixed into :class:`~wool_local.workers.worker.WorkerService`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any

from .link import Link
from .protocol import Call, Message, Returned

#: The status word the worker bumps whenever its loop runs.
TICK = 0


class LockedLink(Link):
    """A link whose ring access is shared with the returner thread under one lock."""

    def __init__(self, *args: Any, lock: threading.RLock, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.lock = lock
        self.deferred: list[tuple[Message, list[bytes]]] = []  # read by the returner
        self.failed: BaseException | None = None  # a bad frame the returner met

    def pump(self) -> None:
        with self.lock:
            self.end.status[TICK] += 1  # the loop runs: the hub's watchdog reads this
            if self.failed is not None:
                exc, self.failed = self.failed, None
                self._lose(exc)
                return
            deferred, self.deferred = self.deferred, []
            for msg, buffers in deferred:
                self._handle_message(msg, buffers)
            super().pump()

    def send(self, message: Message, buffers: Sequence[Any] = ()) -> None:
        with self.lock:
            super().send(message, buffers)

    def _on_bell(self) -> None:
        with self.lock:
            super()._on_bell()

    def _after_send(self) -> None:
        with self.lock:
            super()._after_send()


class Admission:
    """The worker service's admission queue and returner (``self`` is the service)."""

    def _admit_later(self, call: Call, buffers: list[bytes]) -> None:
        if not self._admitting:
            # Nothing is waiting to start: start this one now, and admit whatever
            # arrives after it only once its first step has run.
            self._admitting = True
            self._start(call, buffers)
            assert self._loop is not None
            self._loop.call_soon(self._admit)  # after the new task's first step
        else:
            self._admission[call.id] = (call, buffers)

    def _admit(self) -> None:
        with self._lock:
            self.link.end.status[TICK] += 1
            if not self._admission:
                self._admitting = False
                return
            rid = next(iter(self._admission))
            call, buffers = self._admission.pop(rid)
        self._start(call, buffers)
        assert self._loop is not None
        self._loop.call_soon(self._admit)  # after the new task's first step

    def _returner(self) -> None:
        """Thread: when the hub asks, hand back every call not started yet."""
        while True:
            try:
                if os.eventfd_read(self._return_fd) >= 1 << 62:
                    return
            except OSError:
                return
            with self._lock:
                if self.link.lost is not None:
                    return
                returned = list(self._admission)
                self._admission.clear()
                # Calls still in the ring are not started either: take them too,
                # and leave every other message for the loop, in order.
                try:
                    self.link.reader.drain(self._sort_unread(returned))
                except Exception as exc:
                    self.link.failed = exc  # the loop ends the link at its next pump
                if returned:
                    self.link.send_now(Returned(returned))

    def _sort_unread(self, returned: list[int]) -> Any:
        from .protocol import decode

        def handle(view: memoryview) -> None:
            msg, buffers = decode(view)
            if type(msg) is Call:
                self._keep_definition(msg)  # the hub now counts on us having it
                returned.append(msg.id)
            else:
                self.link.deferred.append((msg, buffers))

        return handle
