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

from .handle import WorkerHandle

log = logging.getLogger("wool_local")


class HandBack:
    """The pool's stall watchdog (``self`` is the :class:`Pool`)."""

    def _watch(self) -> None:
        """Ask a worker that has calls queued but has not answered for a whole
        period to hand back the calls it has not started (its loop is blocked)."""
        self._watchdog = None
        busy = bool(self._queue)
        for h in self._workers.values():
            if h.load > 0:
                busy = True
                if h.heard == h.heard_seen and h.load >= 2 and not h.asked and not h.stopping:
                    h.asked = True
                    try:
                        os.eventfd_write(h.return_fd, 1)
                    except OSError:
                        pass
            h.heard_seen = h.heard
        if busy and not self.closed:
            assert self._loop is not None
            self._watchdog = self._loop.call_later(self.stall_after, self._watch)

    def _on_returned(self, handle: WorkerHandle, ids: list[int]) -> None:
        """Calls ``handle`` never started: queue them first, to run elsewhere."""
        back = []
        for rid in ids:
            pending = self._pending.get(rid)
            if pending is None or pending.target is not handle or pending.call is None:
                continue
            handle.load -= 1
            pending.target = None
            back.append((rid, pending, pending.call, pending.buffers))
        if back:
            handle.stalled = True
            self._queue.extendleft(reversed(back))
            log.info("wool_local: worker %d is blocked; %d calls moved", handle.pid, len(back))
        self._answered(handle)
