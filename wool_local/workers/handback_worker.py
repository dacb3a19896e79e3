"""Hand-back, the worker's half: a start gate for calls, and the returner thread.

A worker creates a task for each call as it arrives and records the call as
unstarted; at its first step the task passes the :class:`StartGate`: it
runs only if the call is still unstarted, and marks it started. If a task
blocks the loop (plain CPU work), the tasks behind it never reach the gate;
the returner thread, woken by the hub, revokes them, takes the calls still
unread in the ring, and sends them all back with ``Returned``. Gate and
returner each claim a call with one ``dict.pop`` (atomic under the GIL), so
each call is either started here or handed back, never both; the returner
reads the ring under the lock the loop's pump holds. The hub's half is
:mod:`wool_local.workers.handback_hub`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from time import perf_counter
from typing import Any

from .link import HOLD_BOUND, Link
from .protocol import TICK, Batch, Call, Message, Returned, decode

_GONE = object()

#: Written to the returner's eventfd to make its thread exit (an ask is 1).
QUIT = 1 << 62


class LockedLink(Link):
    """A link whose ring access is shared with the returner thread under one lock."""

    def __init__(self, *args: Any, lock: threading.RLock, on_idle: Any = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.lock = lock
        self._on_idle = on_idle
        self.deferred: list[tuple[Message, Sequence[bytes]]] = []  # read by the returner
        self.failed: BaseException | None = None  # a bad frame the returner met

    def tick(self) -> None:
        """The loop runs: bump the word the hub's stall watchdog reads."""
        self.end.status[TICK] += 1

    def pump(self) -> None:
        with self.lock:
            self.tick()
            if self.failed is not None:
                exc, self.failed = self.failed, None
                self._lose(exc)
                return
            deferred, self.deferred = self.deferred, []
            for msg, buffers in deferred:
                self._handle_message(msg, buffers)
            super().pump()
            if self._on_idle is not None and self.lost is None:
                self._on_idle()

    def send(self, message: Message, buffers: Sequence[Any] = ()) -> None:
        with self.lock:
            if not self.held_since and self.lost is None:
                self.held_since = perf_counter()  # read by StartGate.start
            super().send(message, buffers)

    def _on_bell(self) -> None:
        with self.lock:
            super()._on_bell()

    def _after_send(self) -> None:
        with self.lock:
            super()._after_send()
            if self._on_idle is not None and self.lost is None:
                self._on_idle()  # answers went out: leases no binding needs can go


class StartGate:
    """Which calls have started here; the returner takes back the ones that have not."""

    def __init__(
        self, link: LockedLink, return_fd: int, keep_definition: Callable[[Call], None]
    ) -> None:
        self._link = link
        self._return_fd = return_fd
        self._keep_definition = keep_definition
        self._unstarted: dict[int, None] = {}
        self._kept: dict[int, None] = {}  # unstarted, never handed back (moved once already)
        self._last_start = 0.0  # when the last call passed the gate (perf_counter)

    def admit(self, rid: int, keep: bool = False) -> None:
        """A task for ``rid`` is created: it starts at its first step, unless handed back
        first (never, with ``keep``). Called from the pump, which holds the lock the
        returner takes."""
        if keep:
            self._kept[rid] = None
        else:
            self._unstarted[rid] = None

    def start(self, rid: int) -> bool:
        """At a task's first step: True to run it, False if it was handed back (or
        cancelled, or the worker is stopping).

        Between two calls the loop does not poll its ring (it runs every ready task
        first), so the gate does: messages that wait are handled before the call
        starts, and a ``Cancel`` or ``Stop`` among them refuses it here (the
        message handler claims it, see :meth:`claim`). Output held back for
        batching longer than ``HOLD_BOUND`` goes out first, so a finished result
        never waits behind this call.

        No lock for the decision: ``dict.pop`` is one atomic step under the GIL,
        and the returner revokes with ``pop`` too, so exactly one of them gets
        each call.
        """
        link = self._link
        now = perf_counter()
        held = link.held_since
        if held and (now - held > HOLD_BOUND or now - self._last_start > HOLD_BOUND):
            with link.lock:  # the returner thread writes to the ring too
                link.push()  # it waited long enough, or the call before ran long: send it
        self._last_start = now
        if link.has_input():
            link.pump()  # never re-entered: message handlers start no task's step
        if self._unstarted.pop(rid, _GONE) is _GONE and self._kept.pop(rid, _GONE) is _GONE:
            return False
        # A task starting is the loop making progress, even when it reads nothing
        # for a while (a run of CPU-bound calls, all sent at once): without this
        # tick the hub would take it for blocked and move its calls back and forth.
        link.tick()
        return True

    def claim(self, rid: int) -> bool:
        """Take ``rid`` from the unstarted calls, so it never starts (a Cancel for it
        came first): True if it was still unstarted here, False if it was handed back
        or had started."""
        return (
            self._unstarted.pop(rid, _GONE) is not _GONE or self._kept.pop(rid, _GONE) is not _GONE
        )

    def holds(self, rid: int) -> bool:
        """``rid`` has not started: its task is created, or in :meth:`start` pumping."""
        return rid in self._unstarted or rid in self._kept

    def revoke_all(self) -> None:
        """The worker stops: no call that has not started yet will."""
        self._unstarted.clear()
        self._kept.clear()

    def discard(self, rid: int) -> None:
        """``rid`` will never start (refused, or its task is gone)."""
        self._unstarted.pop(rid, None)
        self._kept.pop(rid, None)

    @property
    def waiting(self) -> bool:
        """Admitted calls wait to start (they bind their proxy in a moment)."""
        return bool(self._unstarted or self._kept)

    def run_returner(self) -> None:
        """Thread: when the hub asks, hand back every call not started yet."""
        link = self._link
        while True:
            try:
                if os.eventfd_read(self._return_fd) >= QUIT:
                    return
            except OSError:
                return
            with link.lock:
                if link.lost is not None:
                    return
                # Tasks created but not at their first step yet: a task blocking the
                # loop keeps them from it. Revoke them; their gate turns them away.
                unstarted = self._unstarted
                returned = [r for r in list(unstarted) if unstarted.pop(r, _GONE) is not _GONE]
                # Calls still in the ring are not started either: take them too,
                # and leave every other message for the loop, in order.
                try:
                    link.reader.drain(self._sort_unread(returned))
                except Exception as exc:
                    link.failed = exc  # the loop ends the link at its next pump
                # Answers the blocking task's loop iteration queued go first: their
                # callers need not wait for that task to end. The hub hears back even
                # when nothing was left to return (before killing this worker, it
                # waits for that answer).
                link.push()
                link.send_now(Returned(returned))

    def stop_returner(self) -> None:
        os.eventfd_write(self._return_fd, QUIT)

    def _sort_unread(self, returned: list[int]) -> Any:
        def sort(msg: Message, buffers: Sequence[bytes]) -> None:
            if type(msg) is Call and not msg.keep:
                self._keep_definition(msg)  # the hub now counts on us having it
                returned.append(msg.id)
            else:
                self._link.deferred.append((msg, buffers))

        def handle(view: memoryview) -> None:
            msg, buffers = decode(view)
            if type(msg) is Batch:
                for one in msg.messages:
                    sort(one, [])
            else:
                sort(msg, buffers)

        return handle
