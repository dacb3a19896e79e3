"""Wake-ups that an event loop can watch: eventfd doorbells and pidfd peer watches.

A sleeping consumer waits on a :class:`Doorbell` (an eventfd, inherited
across fork, pollable with ``loop.add_reader``); the producer rings it only
when the consumer said it is going to sleep, so a busy consumer never costs
the producer a syscall. :class:`PeerWatch` turns "the other process died" into
a readable file descriptor (a pidfd), so no wait ever has to poll for death.
"""

from __future__ import annotations

import asyncio
import os
import select

from .errors import IpcError


class Doorbell:
    """An eventfd used as a level-triggered "something changed" signal."""

    __slots__ = ("_loop", "_waiters", "fd")

    def __init__(self, fd: int | None = None) -> None:
        self.fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) if fd is None else fd
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: list[asyncio.Future[None]] = []

    def fileno(self) -> int:
        return self.fd

    def ring(self) -> None:
        """Wake whoever sleeps on this bell (one syscall)."""
        try:
            os.eventfd_write(self.fd, 1)
        except BlockingIOError:  # counter saturated: a wake-up is pending anyway
            pass

    def drain(self) -> None:
        """Consume pending rings so the fd stops polling readable."""
        try:
            os.eventfd_read(self.fd)
        except BlockingIOError:
            pass

    def wait(self, timeout: float | None, also: int | None = None) -> bool:
        """Block until rung (or ``also`` is readable); False on timeout."""
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        if also is not None:
            poller.register(also, select.POLLIN)
        ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
        ready = poller.poll(ms)
        self.drain()
        return bool(ready)

    async def wait_async(self) -> None:
        """Wait until rung, from a coroutine on the running loop."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._detach()
            loop.add_reader(self.fd, self._on_readable)
            self._loop = loop
        fut = loop.create_future()
        self._waiters.append(fut)
        try:
            await fut
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)

    def wake_waiters(self) -> None:
        """Resolve every coroutine in :meth:`wait_async` (used by peer watches)."""
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def _on_readable(self) -> None:
        self.drain()
        self.wake_waiters()

    def _detach(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self.fd)

    def close(self) -> None:
        if self.fd < 0:
            return
        self._detach()
        for fut in self._waiters:
            if not fut.done():
                fut.cancel()
        self._waiters.clear()
        os.close(self.fd)
        self.fd = -1

    def __repr__(self) -> str:
        return f"<Doorbell fd={self.fd}>"


class PeerWatch:
    """Knows, without polling, whether a process is still alive (Linux pidfd)."""

    __slots__ = ("_watched", "fd", "pid")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        try:
            self.fd = os.pidfd_open(pid)
        except ProcessLookupError:
            self.fd = -1  # already gone
        except OSError as exc:
            raise IpcError(f"cannot watch process {pid}: {exc}") from exc
        self._watched: tuple[asyncio.AbstractEventLoop, Doorbell] | None = None

    def alive(self) -> bool:
        if self.fd < 0:
            return False
        return not select.select([self.fd], [], [], 0)[0]

    def notify(self, bell: Doorbell) -> None:
        """Wake ``bell``'s async waiters when the peer dies (on the running loop)."""
        if self.fd < 0:
            return
        loop = asyncio.get_running_loop()
        if self._watched is not None:
            old_loop, old_bell = self._watched
            if old_loop is loop and old_bell is bell:
                return
            if not old_loop.is_closed():
                old_loop.remove_reader(self.fd)
            self._watched = None

        def on_death() -> None:
            loop.remove_reader(self.fd)
            self._watched = None
            bell.wake_waiters()

        loop.add_reader(self.fd, on_death)
        self._watched = (loop, bell)

    def close(self) -> None:
        if self._watched is not None:
            loop, _ = self._watched
            if not loop.is_closed():
                loop.remove_reader(self.fd)
            self._watched = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __repr__(self) -> str:
        return f"<PeerWatch pid={self.pid} fd={self.fd}>"
