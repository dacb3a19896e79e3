"""Handing back calls from a worker whose loop is blocked.

A worker admits one call per loop iteration, so when a task blocks its loop
the calls behind it have not started. If a worker with two or more requests
in flight sends nothing for a whole ``stall_after`` period, the hub rings its
returner eventfd; the worker's returner thread sends back ``Returned(ids)``
for every call it had not started, and the hub queues them first, to run
elsewhere, and sends that worker nothing until it answers again. Mixed into
:class:`~wool_local.workers.pool.Pool`.
"""

from __future__ import annotations

import logging
import os
import time

from .admission import TICK
from .handle import WorkerHandle
from .protocol import CANCELLED, Ping, Reply

log = logging.getLogger("wool_local")


class HandBack:
    """The pool's stall watchdog (``self`` is the :class:`Pool`)."""

    def _watch(self) -> None:
        """Every ``stall_after``: ask a worker whose loop has not run for a whole period,
        while it has calls in flight, to hand back the calls it has not started.

        Progress is the worker's own tick (a shared word its loop bumps), not what
        this hub has read: a hub too busy to read for a while must not make healthy
        workers look stuck. A worker that handed calls back is pinged each period
        and takes calls again as soon as its loop runs (it handles the ping).
        """
        self._watchdog = None
        busy = bool(self._queue)
        for h in self._workers.values():
            tick = h.link.end.status[TICK]
            moved = tick != h.tick_seen
            h.tick_seen = tick
            if h.stopping:
                continue
            if h.stalled or h.asked:
                busy = busy or h.stalled
                if moved:
                    h.stalled = h.asked = False
                    self._answered(h)
                elif h.stalled:
                    self._ping(h)
                continue
            if h.load >= 2 and not moved:
                h.asked = True
                busy = True
                try:
                    h.link.push()  # calls still queued here must be in its ring
                except Exception:
                    pass  # its link is gone: the exit report follows
                try:
                    os.eventfd_write(h.return_fd, 1)
                except OSError:
                    pass
            elif h.load > 0:
                busy = True
        if busy and not self.closed:
            assert self._loop is not None
            self._watchdog = self._loop.call_later(self.stall_after, self._watch)

    def _ping(self, handle: WorkerHandle) -> None:
        try:
            handle.send(Ping())
        except Exception:
            pass  # its link is gone: the exit report will follow

    def _on_returned(self, handle: WorkerHandle, ids: list[int]) -> None:
        """Calls ``handle`` never started: queue them first, to run elsewhere."""
        back = []
        for rid in ids:
            pending = self._pending.get(rid)
            if pending is None or pending.target is not handle or pending.call is None:
                continue
            handle.load -= 1
            handle.open -= 1
            if pending.cancelled:
                # Its caller gave up: it is over, not to be run anywhere.
                handle.cancelling -= 1
                del self._pending[rid]
                self._drop_timer(rid)
                if pending.future is not None:  # a relay: the asking worker is told
                    pending.future.set_result((Reply(rid, CANCELLED), []))
                continue
            pending.target = None
            back.append(pending)
        if handle.open == 0:
            handle.idle_since = time.monotonic()
        if not self._pending:
            self._wake_drained()  # the last outstanding requests were cancelled ones
        if back:
            self.handed_back += len(back)
            # Its calls block its loop: from now on it gets one at a time (the rest
            # wait here, for whichever worker is free first), until it shows again
            # that it can take more.
            self._set_limit(handle, 1)
            handle.stalled = True
            self._queue.extendleft(reversed(back))
            log.info("wool_local: worker %d is blocked; %d calls moved", handle.pid, len(back))
        self._answered(handle)
