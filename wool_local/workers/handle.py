"""The hub's view of one worker process."""

from __future__ import annotations

import time
from collections.abc import Callable

from .dispatch import Target
from .limits import RecycleReason
from .link import Link


class WorkerHandle(Target):
    """The hub's view of one worker process."""

    def __init__(self, pid: int, link: Link, return_fd: int, limit: int) -> None:
        super().__init__()
        self.pid = pid
        self.link = link
        self.return_fd = return_fd  # rung to ask for its unstarted calls back
        self.tick_seen = 0  # its loop's tick at the watchdog's last look
        self.asked = False  # its loop seemed stuck: gets nothing until it answers a Ping
        self.stalled = False  # handed calls back: its loop is blocked
        self.evacuating: Callable[[], None] | None = None  # what to do once it handed back
        self.started_at = time.monotonic()
        self.idle_since = self.started_at  # when it last went idle (see idle_for)
        self.completed = 0
        self.retiring: RecycleReason | None = None  # takes no new calls, stops when empty
        self.nested = 0  # nested calls it sent up and still waits on
        self.relays: dict[int, int] = {}  # its call id -> the hub's request id
        self.stopping = False
        self.kill_reason = ""
        # Requests it may have in flight: the pool's max_inflight, cut to 1 when it
        # turns out to run calls that block its loop (it handed calls back), and
        # doubled again after as many answers as the limit, without another cut.
        self.limit = limit
        self.answered_since_cut = 0
        self.run_since = 0.0  # when its limit was last cut or judged (see Scheduler.on_finished)
        self.send = link.send  # type: ignore[method-assign]  # the hot path: no extra frame

    def idle_for(self, now: float) -> float:
        """Seconds it has held no call or session (0 while it holds one)."""
        return 0.0 if self.open else now - self.idle_since
