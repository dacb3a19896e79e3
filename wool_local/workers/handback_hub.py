"""Hand-back, the hub's half: notice a blocked worker and run its unstarted calls elsewhere.

A worker creates a task for each call as it arrives; a task that blocks the
loop (plain CPU work) keeps the tasks behind it from starting. The worker's
loop bumps a shared status word, ``TICK``, whenever it runs. Every
``stall_after`` seconds while calls are in flight, the :class:`StallWatchdog`
looks at each worker's tick: a worker with two or more requests in flight
whose tick has not moved gets no more calls until its loop answers a Ping,
and is asked (its returner eventfd is rung) for every call it has not
started. Its answer, ``Returned(ids)``, is :meth:`StallWatchdog.on_returned`:
those calls go first in the queue, to run elsewhere. An idle loop answers
the Ping at once and serves on; a blocked one is pinged each period until it
answers or its tick moves. Before the hub kills a worker it evacuates it the
same way (:meth:`StallWatchdog.evacuate`), so only the calls running there
fail. The worker's half is :mod:`wool_local.workers.handback_worker`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence

from .dispatch import Dispatcher
from .handle import WorkerHandle
from .protocol import TICK, Ping
from .scheduler import Scheduler

log = logging.getLogger("wool_local")

#: While hand-backs go on, an INFO summary at most this often (seconds); each
#: hand-back is logged at DEBUG.
SUMMARY_PERIOD = 10.0


class StallWatchdog:
    """Watches workers' ticks while calls are in flight; takes back what a blocked
    worker never started."""

    def __init__(
        self,
        stall_after: float,
        workers: Callable[[], Iterable[WorkerHandle]],
        dispatcher: Dispatcher,
        scheduler: Scheduler,
    ) -> None:
        self.stall_after = stall_after
        self._workers = workers
        self._dispatcher = dispatcher
        self._scheduler = scheduler
        scheduler.steady_within = stall_after
        self._timer: asyncio.TimerHandle | None = None
        #: A look is due (a plain attribute: the hub reads it once per dispatch).
        self.armed = False
        self._stopped = False
        #: Calls moved off blocked workers so far.
        self.handed_back = 0
        #: Of those moves, ones of a call that had been moved before (a moved call is
        #: sent with ``keep``: its next worker never hands it back, so this stays 0).
        self.moved_again = 0
        # Hand-backs since the last INFO summary: moves, hand-backs, workers, since when.
        self._told: tuple[int, int, set[int], float] | None = None

    def arm(self) -> None:
        """Look in ``stall_after`` seconds, unless a look is due already."""
        if self._timer is None and not self._stopped:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(self.stall_after, self._look)
            self.armed = True

    def stop(self) -> None:
        """For good: the hub is closing."""
        self._stopped = True
        self._summarise()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self.armed = False

    def _look(self) -> None:
        """Ask every worker whose loop has not run for a whole period, while it has calls
        in flight, to hand back the calls it has not started.

        Progress is the worker's own tick, not what this hub has read: a hub too
        busy to read for a while must not make healthy workers look stuck.
        """
        self._timer = None
        self.armed = False
        busy = self._scheduler.has_queued
        for h in self._workers():
            tick = h.link.end.status[TICK]
            moved = tick != h.tick_seen
            h.tick_seen = tick
            if h.stopping:
                continue
            if h.stalled or h.asked:
                busy = True
                if moved:
                    self.on_heard(h)
                else:
                    _ping(h)
            elif h.load >= 2 and not moved:
                self._ask(h)
                busy = True
            elif h.load > 0:
                busy = True
        if busy:
            self.arm()
            if self._told is not None and time.monotonic() - self._told[3] >= SUMMARY_PERIOD:
                self._summarise()
        else:
            self._summarise()  # the batch is over

    def _ask(self, handle: WorkerHandle) -> None:
        """``handle``'s loop did not run for a period: it gets no more calls until it
        shows that it runs (it answers a Ping, or its tick moves), and its returner
        thread is asked for every call it has not started.

        A loop that is merely idle (its calls all await something) answers the Ping
        at once; one that is blocked cannot, and whatever it has not started runs
        elsewhere meanwhile.
        """
        handle.asked = True
        try:
            handle.link.push()  # calls still queued here must be in its ring
        except Exception:
            pass  # its link is gone: the exit report follows
        _ping(handle)
        try:
            os.eventfd_write(handle.return_fd, 1)
        except OSError:
            pass

    def evacuate(self, handle: WorkerHandle, then: Callable[[], None], wait: float) -> None:
        """Take back every call ``handle`` has not started, then call ``then`` (the hub
        kills it); ``then`` runs after ``wait`` seconds if its returner does not answer."""
        if handle.evacuating is not None:
            return
        handle.evacuating = then
        self._ask(handle)
        asyncio.get_running_loop().call_later(wait, self._evacuated, handle)

    def _evacuated(self, handle: WorkerHandle) -> None:
        then, handle.evacuating = handle.evacuating, None
        if then is not None:
            then()

    def on_heard(self, handle: WorkerHandle) -> None:
        """``handle``'s loop runs (it answered a Ping, its tick moved, or it sent
        something after handing calls back): it takes calls again."""
        if (handle.stalled or handle.asked) and handle.evacuating is None:
            handle.stalled = handle.asked = False
            self._scheduler.send_queued()

    def on_returned(self, handle: WorkerHandle, ids: Sequence[int]) -> None:
        """``handle`` never started the calls ``ids``: queue them first, to run elsewhere."""
        back = self._dispatcher.take_back(handle, ids)
        if handle.open == 0:
            handle.idle_since = time.monotonic()
        if back:
            self.handed_back += len(back)
            again = 0
            for pending in back:
                call = pending.call
                assert call is not None  # take_back returns unstarted calls only
                again += call.keep
                # It moves once: the next worker runs it, blocked or not (moving it
                # again would only trade one busy worker for another).
                call.keep = True
            self.moved_again += again
            # Its calls block its loop: from now on it gets one at a time (the rest
            # wait here, for whichever worker is free first), until it shows again
            # that it can take more.
            self._scheduler.throttle(handle)
            handle.stalled = True
            self._scheduler.requeue_first(back)
            log.debug(
                "wool_local: worker %d is blocked; %d calls moved (%d of them moved before)",
                handle.pid,
                len(back),
                again,
            )
            if self._told is None:
                self._told = (0, 0, set(), time.monotonic())
            n, events, pids, since = self._told
            pids.add(handle.pid)
            self._told = (n + len(back), events + 1, pids, since)
        if handle.evacuating is not None:
            self._evacuated(handle)
        self._scheduler.send_queued()

    def _summarise(self) -> None:
        """One INFO line for the hand-backs since the last one (each is logged at DEBUG)."""
        if self._told is None:
            return
        n, events, pids, since = self._told
        self._told = None
        log.info(
            "wool_local: %d calls moved off blocked workers in %.1f s "
            "(%d hand-backs, from %d workers; a call blocking its worker's loop "
            "keeps the calls behind it from starting)",
            n,
            time.monotonic() - since,
            events,
            len(pids),
        )


def _ping(handle: WorkerHandle) -> None:
    try:
        handle.send(Ping())
    except Exception:
        pass  # its link is gone: the exit report will follow
