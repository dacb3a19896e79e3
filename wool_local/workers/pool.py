"""The hub's side of the pool: workers, scheduling, nested relays and crash handling.

The hub forks the zygote once, then asks it for workers. Each worker gets a
fresh channel (one shared-memory segment, two doorbells); its segment name is
unlinked as soon as the zygote reports the worker forked, since by then both
sides have it mapped. Calls are scheduled least-loaded-first with at most
``max_inflight`` requests per worker; the rest wait in the hub, so a worker
stuck on a slow task is not handed more. Nested calls that workers send up
are relayed through the same scheduler. The zygote reports every worker's
exit; the hub then fails that worker's requests with :class:`WorkerCrashed`
and forks a replacement.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import signal
import time
import uuid
from collections import Counter, deque
from collections.abc import Sequence
from typing import Any

from ..ipc import DEFAULT_CAPACITY, Channel, SlotTable, sweep
from . import zygote
from .dispatch import Dispatcher, Pending, Target
from .errors import PoolClosed, SpawnFailed, WorkerCrashed
from .handback import HandBack
from .handle import WorkerHandle
from .limits import RecycleReason, WorkerLimits
from .link import Link, report
from .monitor import Monitor
from .protocol import (
    Call,
    Cancel,
    Message,
    Reply,
    Returned,
    Step,
    Stop,
)
from .proxy import WorkerProxy, __proxy_pool__
from .recycling import Recycling
from .relay import Relaying
from .worker import WorkerConfig, worker_main

log = logging.getLogger("wool_local")


class Pool(Relaying, Recycling, HandBack, Dispatcher):
    """A pool of worker processes forked from one zygote, owned by the running loop."""

    def __init__(
        self,
        size: int,
        *,
        max_inflight: int = 256,
        ring_capacity: int = DEFAULT_CAPACITY,
        cancel_grace: float = 5.0,
        stop_timeout: float = 5.0,
        stall_after: float = 0.05,
        limits: WorkerLimits | None = None,
        min_workers: int = 0,
        monitor_interval: float = 0.5,
        recycle_grace: float = 30.0,
        proxy_retry_after: float = 1.0,
    ) -> None:
        if size < 1:
            raise ValueError(f"a pool needs at least one worker, got size={size}")
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be at least 1, got {max_inflight}")
        if not 0 <= min_workers <= size:
            raise ValueError(f"min_workers must be between 0 and spawn={size}, got {min_workers}")
        if proxy_retry_after < 0:
            raise ValueError(f"proxy_retry_after must be >= 0, got {proxy_retry_after}")
        self.proxy_retry_after = proxy_retry_after
        self.limits = WorkerLimits() if limits is None else limits
        self.min_workers = min_workers
        self.recycle_grace = recycle_grace
        self.recycles: Counter[RecycleReason] = Counter()
        self.completed_total = 0
        self.monitor = Monitor(
            lambda: list(self._workers.values()), self._apply_limits, interval=monitor_interval
        )
        super().__init__(main_has=zygote.main_has)
        self.size = size
        self.max_inflight = max_inflight
        self.ring_capacity = ring_capacity
        self.cancel_grace = cancel_grace
        self.stop_timeout = stop_timeout
        self.stall_after = stall_after
        self.id = uuid.uuid4().bytes
        #: The handle routines dispatch through; canonical in this process.
        self.proxy = WorkerProxy(self.id, dispatcher=self)
        __proxy_pool__.register(self.proxy)
        self.leases: SlotTable | None = None
        self._zygote = zygote.Zygote(worker_main)
        self._workers: dict[int, WorkerHandle] = {}
        self._spawning: dict[int, tuple[Channel, int, asyncio.Future[WorkerHandle]]] = {}
        self._watchdog: asyncio.TimerHandle | None = None
        self._seq = itertools.count(1)
        self._queue: deque[Pending] = deque()  # calls waiting for a worker with room
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exits: dict[int, asyncio.Future[None]] = {}
        self.closed = False
        self.broken: BaseException | None = None
        self.crashes = 0
        self.handed_back = 0
        self._changed: asyncio.Event | None = None
        self._serving_cache: list[WorkerHandle] | None = None

    # -- lifecycle ---------------------------------------------------------

    async def changed(self) -> None:
        """Wait for the next change of membership (a worker joined, retired or died)."""
        if self._changed is None:
            self._changed = asyncio.Event()
        await self._changed.wait()

    def _notify(self) -> None:
        """The serving workers changed (one joined, retired, stopped or died): drop the
        cached list, and wake whoever waits in :meth:`changed`. Call it before queued
        calls are handed out again."""
        self._serving_cache = None
        event, self._changed = self._changed, None
        if event is not None:
            event.set()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        sweep()
        # The lease table exists before the zygote, so every worker inherits it;
        # once the zygote has it, no name is needed any more.
        self.leases = SlotTable.create(slots=4096, holders_per_slot=max(16, 2 * self.size + 2))
        config = WorkerConfig(self.id, self.leases, self.proxy_retry_after)
        self._zygote = zygote.Zygote(functools.partial(worker_main, config=config))
        try:
            self._zygote.start()
        finally:
            self.leases.unlink()
        assert self._zygote.sock is not None
        self._loop.add_reader(self._zygote.sock.fileno(), self._on_zygote)
        try:
            await asyncio.gather(*(self._spawn() for _ in range(self.size)))
        except BaseException:
            self._terminate()
            raise
        self.monitor.start()

    def _spawn_worker(self) -> None:
        """Fork a worker in the background (failures surface as pool state, not here)."""
        self._spawn().add_done_callback(_ignore_result)

    def _spawn(self) -> asyncio.Future[WorkerHandle]:
        assert self._loop is not None
        chan = Channel.create(self.ring_capacity)
        return_fd = os.eventfd(0, os.EFD_CLOEXEC)
        seq = next(self._seq)
        fut: asyncio.Future[WorkerHandle] = self._loop.create_future()
        self._spawning[seq] = (chan, return_fd, fut)
        try:
            fds = [*(b.fd for b in chan.bells), return_fd]
            self._zygote.request_spawn(seq, chan.segment.name, chan.capacity, fds)
        except OSError as exc:
            del self._spawning[seq]
            chan.close()
            os.close(return_fd)
            fut.set_exception(PoolClosed(f"cannot reach the zygote: {exc}"))
        return fut

    def _on_zygote(self) -> None:
        while True:
            try:
                msg = self._zygote.recv()
            except EOFError:
                self._on_zygote_lost()
                return
            if msg is None:
                return
            if msg[0] == "spawned":
                self._on_spawned(msg[1], msg[2])
            elif msg[0] == "exited":
                self._on_exited(msg[1], msg[2])
            elif msg[0] == "failed":
                self._on_spawn_failed(msg[1], msg[2])

    def _on_spawn_failed(self, seq: int, error: str) -> None:
        chan, return_fd, fut = self._spawning.pop(seq)
        chan.close()
        os.close(return_fd)
        exc = SpawnFailed(f"the zygote could not fork a worker: {error}")
        log.error("wool_local: %s", exc)
        if not fut.done():
            fut.set_exception(exc)
        if not self._spawning and not self._serving_list():
            self._wake_all(exc)  # nothing left to run the queued calls

    def _on_spawned(self, seq: int, pid: int) -> None:
        chan, return_fd, fut = self._spawning.pop(seq)
        chan.segment.unlink()  # both sides have it mapped now
        handle: WorkerHandle | None = None

        def on_lost(exc: BaseException) -> None:
            # The zygote's exit report does the bookkeeping; a corrupt channel
            # means the worker cannot be trusted, so make sure it does exit.
            if handle is not None and not handle.stopping and not isinstance(exc, PoolClosed):
                self._kill(handle, f"its channel failed: {exc}")

        def expects_answer() -> bool:
            # Spin for a reply only when few are in flight: otherwise replies
            # stream in anyway and the loop has queued work to do meanwhile.
            return handle is not None and handle.load <= 2

        link = Link(chan.end(0, peer_pid=pid), _unbound, on_lost, expects_answer=expects_answer)
        handle = WorkerHandle(pid, link, return_fd, self.max_inflight)
        link.on_message = functools.partial(self._on_worker_message, handle)
        link.on_batch = functools.partial(self._on_worker_batch, handle)
        self._workers[pid] = handle
        link.start()
        if self.closed:
            handle.stopping = True
            link.send(Stop())
        self._notify()
        self._answered(handle)
        if not fut.done():
            fut.set_result(handle)

    def _on_exited(self, pid: int, status: int) -> None:
        handle = self._workers.pop(pid, None)
        waiter = self._exits.pop(pid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if handle is None:
            return
        # Out of the serving list first: the answers delivered next make room,
        # and the queued calls they let go must not go to this worker.
        self._notify()
        handle.link.pump()  # deliver answers it wrote before exiting
        if handle.stopping and not handle.kill_reason:
            exc: BaseException = PoolClosed("the worker stopped before this dispatch finished")
        else:
            exc = WorkerCrashed.from_wait_status(pid, status, handle.kill_reason)
            self.crashes += 1
            log.warning("wool_local: %s", exc)
        self.fail_target(handle, exc)
        self._drop_relays(handle)
        handle.link.close()
        os.close(handle.return_fd)
        if self.leases is not None:
            self.leases.reclaim(pid)  # whatever it held when it died
        if handle.retiring is None and not self.closed and self.broken is None:
            self._spawn_worker()  # replace a crashed worker
        else:
            self._answered(handle)

    def _on_zygote_lost(self) -> None:
        if self.closed:
            return
        assert self._loop is not None and self._zygote.sock is not None
        self._loop.remove_reader(self._zygote.sock.fileno())
        self.broken = PoolClosed("the pool's zygote process died; the pool cannot fork workers")
        log.error("wool_local: %s", self.broken)
        for _, _, fut in self._spawning.values():
            if not fut.done():
                fut.set_exception(self.broken)
        self._wake_all(self.broken)

    def _kill(self, handle: WorkerHandle, reason: str) -> None:
        if not handle.kill_reason:
            handle.kill_reason = reason
        try:
            os.kill(handle.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _escalate(self, target: Target, request_id: int) -> None:
        if isinstance(target, WorkerHandle) and target.alive:
            self._kill(
                target,
                f"it did not stop a cancelled task within {self.cancel_grace}s "
                "(blocking code that ignores cancellation)",
            )

    async def close(self) -> None:
        """Stop every worker and the zygote; nothing outlives this."""
        if self.closed:
            return
        self.closed = True
        self.monitor.stop()
        self._wake_all(PoolClosed("the pool is closed"))
        try:
            await self._stop_workers()
        finally:
            self._terminate()

    async def _stop_workers(self) -> None:
        assert self._loop is not None
        if self.broken is not None:
            return
        if self._spawning:
            # Workers being forked right now: wait for them (bounded); a worker that
            # joins a closed pool is told to stop at once (_on_spawned).
            forks = [fut for _, _, fut in self._spawning.values()]
            await asyncio.wait(forks, timeout=self.stop_timeout)
        for handle in self._workers.values():
            self._exits[handle.pid] = self._loop.create_future()
            if handle.stopping:
                continue  # already told (retiring, or joined after the close)
            self._stop_worker(handle)
        pending = list(self._exits.values())
        if pending:
            _, late = await asyncio.wait(pending, timeout=self.stop_timeout)
            if late:
                for handle in list(self._workers.values()):
                    self._kill(handle, "it did not stop in time")
                await asyncio.wait(late, timeout=self.stop_timeout)

    def _terminate(self) -> None:
        """Synchronous last resort: kill whatever is left, reap the zygote, free everything."""
        self.closed = True
        self.monitor.stop()
        for handle in list(self._workers.values()):
            handle.stopping = True
            try:
                os.kill(handle.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.fail_target(handle, PoolClosed("the pool is closed"))
            handle.link.close()
            os.close(handle.return_fd)
        self._workers.clear()
        self._notify()
        for chan, return_fd, fut in self._spawning.values():
            chan.close()
            os.close(return_fd)
            if not fut.done():
                fut.cancel()
        self._spawning.clear()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self.fail_all(PoolClosed("the pool is closed"))
        if self._zygote.sock is not None and self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._zygote.sock.fileno())
        self._zygote.stop(self.stop_timeout)
        __proxy_pool__.forget(self.id)
        if self.leases is not None:
            self.leases.close()
            self.leases = None

    # -- scheduling --------------------------------------------------------

    def _pick(self) -> WorkerHandle | None:
        """The least-loaded worker with room for one more call (runs once per call)."""
        best: WorkerHandle | None = None
        best_load = self.max_inflight
        for handle in self._serving_list():
            if handle.cancelling or handle.stalled:
                continue  # its loop is (or may be) blocked
            if not handle.alive or handle.link.lost is not None:
                continue  # dead: its exit report is on its way
            # Calls waiting on nested calls leave the worker's loop free, so they
            # do not count (otherwise workers all waiting on nested calls deadlock).
            load = handle.load - handle.nested
            if load < best_load and load < handle.limit:
                best, best_load = handle, load
        return best

    def submit(self, pending: Pending) -> None:
        if self.closed or self.broken is not None:
            raise self.broken or PoolClosed("the pool is closed")
        handle = self._pick() if not self._queue else None
        if handle is None:
            self._queue.append(pending)
            if len(self._serving_list()) + len(self._spawning) < self.size:
                self._spawn_worker()  # grow back on demand
        else:
            self.send_call(handle, pending)
        if self._watchdog is None:
            assert self._loop is not None
            self._watchdog = self._loop.call_later(self.stall_after, self._watch)

    def _finished(self, target: Target) -> None:
        handle: WorkerHandle = target  # type: ignore[assignment]
        handle.completed += 1
        self.completed_total += 1
        if handle.limit < self.max_inflight:
            handle.answered_since_cut += 1
            if handle.answered_since_cut >= handle.limit:
                self._set_limit(handle, min(self.max_inflight, 2 * handle.limit))
        if handle.open == 0:
            handle.idle_since = time.monotonic()
            if handle.retiring is not None and not handle.stopping:
                self._stop_worker(handle)

    def _set_limit(self, handle: WorkerHandle, limit: int) -> None:
        """Change how many requests ``handle`` may have in flight (see its ``limit``)."""
        handle.limit = limit
        handle.answered_since_cut = 0

    def _serving_list(self) -> list[WorkerHandle]:
        """Workers that take new calls (not retiring, not stopping); cached until the
        membership changes, since every call asks."""
        if self._serving_cache is None:
            self._serving_cache = [
                h for h in self._workers.values() if h.retiring is None and not h.stopping
            ]
        return self._serving_cache

    # -- limits and recycling ----------------------------------------------

    def _answered(self, target: Target) -> None:
        """Capacity freed up (or a worker joined): send queued calls, oldest first."""
        queue = self._queue
        outstanding = self._pending
        while queue:
            pending = queue[0]
            rid = pending.id
            if outstanding.get(rid) is not pending:
                queue.popleft()  # its caller gave up while it waited
                continue
            handle = self._pick()
            if handle is None:
                return
            queue.popleft()
            try:
                self.send_call(handle, pending)
            except Exception as exc:
                del outstanding[rid]
                if pending.future is not None and not pending.future.done():
                    pending.future.set_exception(exc)

    def _wake_all(self, exc: BaseException) -> None:
        """Fail every queued call with ``exc``."""
        while self._queue:
            pending = self._queue.popleft()
            if self._pending.get(pending.id) is pending:
                del self._pending[pending.id]
                if pending.future is not None and not pending.future.done():
                    pending.future.set_exception(exc)

    # -- messages from workers ---------------------------------------------

    def _on_worker_batch(self, handle: WorkerHandle, messages: list[Message]) -> None:
        """A frame of messages: answers are settled one by one, and the queued calls
        the room they freed go out once, after them."""
        settle = self._settle
        for msg in messages:
            try:
                if type(msg) is Reply and not handle.stalled:
                    settle(msg, ())
                else:
                    self._on_worker_message(handle, msg, ())
            except Exception:
                report(msg)
        try:
            self._answered(handle)
        except Exception:
            log.exception("wool_local: sending queued calls failed")

    def _on_worker_message(
        self, handle: WorkerHandle, msg: Message, buffers: Sequence[bytes]
    ) -> None:
        kind = type(msg)
        if kind is Returned:
            self._on_returned(handle, msg.ids)  # type: ignore[union-attr]
            return
        if handle.stalled:
            handle.stalled = handle.asked = False  # it answers again
            self._answered(handle)
        if kind is Reply:
            self.on_reply(msg, buffers)  # type: ignore[arg-type]
        elif kind is Call:
            self._relay_call(handle, msg, buffers)  # type: ignore[arg-type]
        elif kind is Step:
            self._relay_step(handle, msg, buffers)  # type: ignore[arg-type]
        elif kind is Cancel:
            self._relay_cancel(handle, msg.id)  # type: ignore[union-attr]

    # -- introspection -----------------------------------------------------

    @property
    def pids(self) -> list[int]:
        return [h.pid for h in self._workers.values() if not h.stopping]

    @property
    def zygote_pid(self) -> int:
        return self._zygote.pid

    def worker(self, pid: int) -> WorkerHandle | None:
        return self._workers.get(pid)

    def queued(self) -> int:
        return sum(1 for p in self._queue if self._pending.get(p.id) is p)


def _unbound(msg: Message, buffers: Sequence[bytes]) -> None:
    raise AssertionError("a link delivered a message before its handle was bound")


def _ignore_result(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()
