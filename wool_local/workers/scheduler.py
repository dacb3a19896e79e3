"""Which worker runs a call: least-loaded first, a bounded number in flight each.

A call goes straight to the least-loaded serving worker that has room;
when none has, it waits in the queue, oldest first, and goes out when an
answer makes room (:meth:`Scheduler.send_queued`). A worker's room is its
``limit``: ``max_inflight``, cut to one call when the worker turns out to
run calls that block its loop, and doubled back after as many answers as
the limit. Calls a task awaits nested calls on do not count against its
worker (its loop is free), so workers all waiting on nested calls still take
the nested calls themselves: no deadlock.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping

from .dispatch import Pending
from .handle import WorkerHandle


class Scheduler:
    """The hub's queue of waiting calls and its choice of worker for each."""

    def __init__(
        self,
        max_inflight: int,
        outstanding: Mapping[int, Pending],
        send: Callable[[WorkerHandle, Pending], None],
        fail: Callable[[Pending, BaseException], None],
        on_queued: Callable[[], None],
    ) -> None:
        self.max_inflight = max_inflight
        # The dispatcher's table of requests (read here, changed only by the dispatcher:
        # ``fail`` closes one): a queued call missing from it was given up.
        self._outstanding = outstanding
        self._send = send
        self._fail = fail
        self._on_queued = on_queued  # a call had to wait: the hub may fork a worker for it
        self._queue: deque[Pending] = deque()
        #: Set when the hub takes no more calls: :meth:`submit` raises it.
        self.refusal: BaseException | None = None
        #: Workers that take new calls; the hub replaces the list when they change.
        self.serving: list[WorkerHandle] = []
        #: A throttled worker's limit doubles only if it answered as many calls as its
        #: limit within this many seconds (the stall watchdog's period): a worker whose
        #: calls are long keeps a short queue, so calls do not wait behind them (and
        #: get moved) again. 0: no condition.
        self.steady_within = 0.0

    def submit(self, pending: Pending) -> None:
        """Send ``pending`` to the best worker now, or queue it (behind older calls)."""
        if self.refusal is not None:
            raise self.refusal
        handle = self.pick() if not self._queue else None
        if handle is None:
            self._queue.append(pending)
            self._on_queued()
        else:
            self._send(handle, pending)

    def pick(self) -> WorkerHandle | None:
        """The least-loaded worker with room for one more call (runs once per call)."""
        best: WorkerHandle | None = None
        best_load = self.max_inflight
        for handle in self.serving:
            if handle.cancelling or handle.stalled or handle.asked:
                continue  # its loop is (or may be) blocked
            if not handle.alive or handle.link.lost is not None:
                continue  # dead: its exit report is on its way
            load = handle.load - handle.nested
            if load < best_load and load < handle.limit:
                best, best_load = handle, load
        return best

    def send_queued(self) -> None:
        """Room was made (answers, a new worker, a worker that answers again): send
        queued calls, oldest first, while a worker has room."""
        queue = self._queue
        outstanding = self._outstanding
        while queue:
            pending = queue[0]
            if outstanding.get(pending.id) is not pending:
                queue.popleft()  # its caller gave up while it waited
                continue
            handle = self.pick()
            if handle is None:
                return
            queue.popleft()
            try:
                self._send(handle, pending)
            except Exception as exc:
                # It cannot go (no room for a spill segment, say): its caller hears why.
                self._fail(pending, exc)

    def requeue_first(self, calls: Iterable[Pending]) -> None:
        """Calls a worker handed back: they go before everything queued, in order."""
        self._queue.extendleft(reversed(list(calls)))

    def fail_queued(self, exc: BaseException) -> None:
        """Fail every queued call with ``exc`` (nothing is left to run them)."""
        while self._queue:
            pending = self._queue.popleft()
            if self._outstanding.get(pending.id) is pending:
                self._fail(pending, exc)

    def refuse(self, exc: BaseException) -> None:
        """Take no more calls: fail the queued ones and raise ``exc`` for new ones (the
        first reason given stays)."""
        if self.refusal is None:
            self.refusal = exc
        self.fail_queued(exc)

    def queued(self) -> int:
        """Calls waiting for a worker (not counting ones their callers gave up)."""
        return sum(1 for p in self._queue if self._outstanding.get(p.id) is p)

    @property
    def has_queued(self) -> bool:
        return bool(self._queue)

    # -- per-worker room -----------------------------------------------------

    def throttle(self, handle: WorkerHandle) -> None:
        """``handle`` runs calls that block its loop: one call at a time from now on."""
        handle.limit = 1
        handle.answered_since_cut = 0
        handle.run_since = time.monotonic()

    def on_finished(self, handle: WorkerHandle) -> None:
        """A call on ``handle`` is over: a throttled worker earns its room back."""
        if handle.limit < self.max_inflight:
            handle.answered_since_cut += 1
            if handle.answered_since_cut >= handle.limit:
                handle.answered_since_cut = 0
                if self.steady_within:
                    now = time.monotonic()
                    since, handle.run_since = handle.run_since, now
                    if now - since >= self.steady_within:
                        return  # its calls are long: keep its queue short
                handle.limit = min(self.max_inflight, 2 * handle.limit)
