"""``Executor.map``'s results on their way from the pool's loop to the calling thread.

The map itself is :meth:`WorkerPool.map`, run on a :class:`BackgroundPool`'s loop
(:meth:`MapRelay.produce`); the caller iterates :func:`results` in its own thread.
Results go over a chunk at a time (the list a worker answered with), so a handful
of cross-thread operations is paid per chunk, not per item. Back-pressure: the
producer pauses when the caller is ``MAP_BUFFER`` results behind, and goes on
when the caller has taken half of them.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import asyncio

    from .background import BackgroundPool

#: Results of a ``map`` buffered for the caller before the map pauses; it goes
#: on when the caller has taken half of them.
MAP_BUFFER = 8192


class MapRelay:
    """One map's results: batches in a deque both sides use, a condition the caller
    waits on when it is empty, an asyncio event the producer waits on when it is full.
    ``on_end(relay)`` is called on the loop when no more results will come."""

    def __init__(
        self, pool: BackgroundPool, steps: Any, on_end: Callable[[MapRelay], None]
    ) -> None:
        self.pool = pool
        self.steps = steps
        self.on_end = on_end
        self.buf: deque[list[Any]] = deque()
        self.cond = threading.Condition(threading.Lock())
        self.high = MAP_BUFFER
        self.produced = 0  # items put in buf (written by the producer only)
        self.taken = 0  # items taken from buf (written by the caller only)
        self.waiting = False  # the caller waits on cond
        self.paused = False  # the producer waits on room
        self.finished = False  # no more results will come (error: why)
        self.error: BaseException | None = None
        self.cancelled = False
        self.room: asyncio.Event | None = None
        self.task: asyncio.Task[None] | None = None

    # -- the loop's side ---------------------------------------------------------------

    def start(self, ctx: contextvars.Context) -> bool:
        """Start producing, in ``ctx`` (False: it was cancelled before it started)."""
        assert self.pool.loop is not None
        if self.cancelled:
            return False
        self.task = self.pool.loop.create_task(self.produce(), context=ctx)
        return True

    async def produce(self) -> None:
        import asyncio

        self.room = room = asyncio.Event()
        try:
            async for chunk in self.steps:
                self.buf.append(chunk)
                self.produced += len(chunk)
                if self.waiting:
                    self.wake()
                if self.produced - self.taken >= self.high:  # full: wait for room
                    room.clear()
                    self.paused = True
                    # (The caller may have taken some between the check and the flag.)
                    if self.produced - self.taken >= self.high:
                        await room.wait()
                    self.paused = False
        except asyncio.CancelledError:
            self.error = concurrent.futures.CancelledError("the map was cancelled")
        except BaseException as exc:
            self.error = exc
        finally:
            try:
                await self.steps.aclose()
            except BaseException:
                pass  # cancelled again while closing: its chunks are cancelled already
            self.finished = True
            self.wake()
            self.on_end(self)

    def unbounded(self) -> None:
        """Buffer every result (the executor is shutting down)."""
        self.high = sys.maxsize
        if self.room is not None:
            self.room.set()

    def cancel(self) -> None:
        """Stop the map (its chunks are cancelled in their workers)."""
        self.cancelled = True
        if self.task is not None:
            self.task.cancel()

    # -- the caller's side -------------------------------------------------------------

    def wake(self) -> None:
        with self.cond:
            self.cond.notify()

    def give_room(self) -> None:
        """The buffer is low: let a paused producer go on."""
        self.paused = False
        room = self.room
        if room is not None:
            self.pool.call_soon(room.set)

    def wait(self, deadline: float | None) -> None:
        """Wait until a batch or the end is there (TimeoutError past ``deadline``)."""
        self.pool.check_not_loop_thread("iterating Executor.map()")
        buf = self.buf
        with self.cond:
            self.waiting = True
            try:
                while not buf and not self.finished:
                    if self.paused:
                        self.give_room()
                    if deadline is None:
                        self.cond.wait()
                        continue
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError("Executor.map(): the next result was not ready in time")
                    self.cond.wait(left)
            finally:
                self.waiting = False

    def stop(self) -> None:
        """The results are no longer wanted: cancel what still runs."""
        self.buf.clear()
        if not self.finished:
            self.pool.call_soon(self.cancel)


def results(relay: MapRelay, deadline: float | None) -> Iterator[Any]:
    """What ``Executor.map`` returns: the results, in the caller's thread. Closing it
    (or dropping it, even unstarted: the executor stops the relay when it is
    collected) cancels what still runs."""
    buf = relay.buf
    try:
        while True:
            if buf:
                batch = buf.popleft()
                relay.taken += len(batch)
                if relay.paused and relay.produced - relay.taken <= relay.high // 2:
                    relay.give_room()
                yield from batch
            elif relay.finished:  # (its last batch was put before: check buf again)
                if not buf:
                    break
            else:
                relay.wait(deadline)
        if relay.error is not None:
            error, relay.error = relay.error, None
            raise error
    finally:
        relay.stop()
