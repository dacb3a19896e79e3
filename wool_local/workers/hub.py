"""The hub: the caller's side of a pool, and the one place every dispatch is scheduled.

Data flow (one hub per running ``WorkerPool``, in the caller's process)::

    caller's loop                              hub                                  workers
    ─────────────                              ───                                  ───────
    await routine(x) ─► Dispatcher.call ─► Scheduler.submit ─► least-loaded ─► Link ══ ring ══► task
                          (Pending in         │ none has room                  WorkerHandle
                           the table)         ▼                                     │
                                            queue ◄── StallWatchdog.on_returned ◄── Returned(ids)
                                              │        (calls a blocked worker      (returner
                                              │         never started)               thread)
                                              ▼
    result ◄── future ◄── Dispatcher._settle ◄── Link.pump ◄══════ ring ═══════ Reply / Batch
                            │ room made: Scheduler.send_queued
                            │ Call / Step / Cancel from a worker: Relay (nested dispatch)
                            ▼
                         on_finished: counts, limits, retiring workers stop when empty

    Monitor (every monitor_interval) ─► Recycler.apply ─► retire / replace / retire idle
    Zygote socket ─► spawned / exited / failed ─► membership; crashes fail that worker's calls

The :class:`Hub` owns the workers (their handles, by pid), the zygote that
forks them, and these collaborators, each in its own module:
:class:`~.scheduler.Scheduler` (the queue and the choice of worker),
:class:`~.relay.Relay` (calls workers send up), :class:`~.handback_hub.StallWatchdog`
(calls a blocked worker never started) and :class:`~.recycler.Recycler`
(limits and idle retirement). It is a :class:`~.dispatch.Dispatcher`: the
routines of the caller's process dispatch through it.
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
from collections.abc import Sequence
from typing import Any

from ..ipc import Channel, FrameError, SlotTable, sweep
from . import zygote
from .dispatch import Dispatcher, Pending, Target
from .errors import PoolClosed, SpawnFailed, WorkerCrashed
from .handback_hub import StallWatchdog
from .handle import WorkerHandle
from .limits import WorkerHealth
from .link import Link, report
from .monitor import Monitor
from .options import PoolOptions
from .protocol import Call, Cancel, Message, Ping, ProtocolError, Reply, Returned, Step, Stop
from .proxy import WorkerProxy, __proxy_pool__, describe_holders, drain_leases
from .recycler import Recycler
from .relay import Relay
from .scheduler import Scheduler
from .stats import PoolStats, collect_stats
from .status import StatusServer, snapshot_of
from .worker import WorkerConfig, worker_main

log = logging.getLogger("wool_local")

#: A pool whose zygote dies more often than this many times in this many seconds
#: gives up (it is broken) rather than fork zygotes forever.
ZYGOTE_RESTARTS = 3
ZYGOTE_RESTART_WINDOW = 60.0
#: Seconds a worker about to be killed has to hand back the calls it has not
#: started (its returner thread answers in microseconds unless the ring is locked).
EVACUATE_WAIT = 0.5


class Hub(Dispatcher):
    """Worker processes forked from one zygote, and the scheduling of calls onto them.

    Lives on the loop that runs :meth:`start`; its futures belong to that loop.
    """

    def __init__(self, options: PoolOptions) -> None:
        super().__init__(main_has=zygote.main_has, cancel_grace=options.cancel_grace)
        self.options = options
        self.id = uuid.uuid4().bytes
        #: The handle routines dispatch through; canonical in this process.
        self.proxy = WorkerProxy(self.id, dispatcher=self)
        __proxy_pool__.register(self.proxy)
        #: The pool's lease table (created at start, inherited by every worker).
        self.leases: SlotTable | None = None
        self.scheduler = Scheduler(
            options.max_inflight,
            self._pending,  # read-only there; a view would cost a call per queued call
            self.send_call,
            self.fail_request,
            on_queued=self._grow,
        )
        self.relay = Relay(self, self.submit, self.scheduler.send_queued)
        self.watchdog = StallWatchdog(options.stall_after, self.workers, self, self.scheduler)
        self.recycler = Recycler(self, options.limits, options.min_workers)
        self.monitor = Monitor(
            self.workers,
            self._on_readings,
            interval=options.monitor_interval,
            limits=options.limits,
        )
        self._zygote: zygote.Zygote | None = None
        self._zygote_started: list[float] = []  # when each zygote was forked
        self._workers: dict[int, WorkerHandle] = {}
        self._spawning: dict[int, tuple[Channel, int, asyncio.Future[WorkerHandle]]] = {}
        self._spawn_seq = itertools.count(1)
        self._exits: dict[int, asyncio.Future[None]] = {}
        self._changed: asyncio.Event | None = None
        self.closed = False
        #: Where ``wool-local status`` reaches this pool, once started.
        self.status: StatusServer | None = None
        #: Why the hub can no longer serve (its zygote died), or None.
        self.broken: BaseException | None = None
        self.crashes = 0
        self.completed = 0

    # -- the dispatcher's hooks -----------------------------------------------

    def submit(self, pending: Pending) -> None:
        """Send ``pending`` to a worker now, or queue it; watch for stalls while any is
        in flight."""
        self.scheduler.submit(pending)
        if not self.watchdog.armed:
            self.watchdog.arm()

    def on_answered(self, target: Target) -> None:
        self.scheduler.send_queued()

    def on_finished(self, target: Target) -> None:
        handle: WorkerHandle = target  # type: ignore[assignment]  # the hub's targets are workers
        handle.completed += 1
        self.completed += 1
        self.scheduler.on_finished(handle)
        if not self.closed:
            self.recycler.on_finished(handle)
        if handle.open == 0:
            handle.idle_since = time.monotonic()
            if handle.retiring is not None and not handle.stopping:
                self.stop_worker(handle)

    def on_overdue(self, target: Target, request_id: int) -> None:
        """A cancelled call ignores its cancellation: kill its worker, after taking back
        every call there that has not started (they run elsewhere); only the calls
        running there fail, and their error says why."""
        if not isinstance(target, WorkerHandle) or not target.alive or target.kill_reason:
            return
        pending = self.request(request_id)
        name = self.fn_names.get(pending.fn, "a call") if pending is not None else "a call"
        reason = (
            f"another call on it, {name}, did not stop within cancel_grace="
            f"{self.cancel_grace}s of being cancelled (blocking code that ignores "
            "cancellation), so the worker was killed"
        )
        self.watchdog.evacuate(target, lambda: self.kill(target, reason), EVACUATE_WAIT)

    def _on_readings(self, readings: dict[int, WorkerHealth]) -> None:
        if not self.closed and self.broken is None:
            self.recycler.apply(readings)

    # -- starting and stopping ------------------------------------------------

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()  # calls from other loops are run on it
        sweep()
        # The lease table exists before the zygote, so every worker inherits it;
        # once the zygote has it, no name is needed any more.
        self.leases = SlotTable.create(
            slots=4096, holders_per_slot=max(16, 2 * self.options.size + 2)
        )
        try:
            self._start_zygote()
        finally:
            self.leases.unlink()
        try:
            await asyncio.gather(*(self._spawn() for _ in range(self.options.size)))
        except BaseException:
            self._terminate()
            raise
        self.monitor.start()
        await self._listen()

    async def _listen(self) -> None:
        """Answer ``wool-local status``; a pool that cannot listen still serves."""
        try:
            server = StatusServer(self.id, lambda: snapshot_of(self.stats(), pool=self.id.hex()))
            await server.start()
        except Exception as exc:
            log.warning("wool_local: the pool serves no status (wool-local status): %s", exc)
            return
        self.status = server

    def _start_zygote(self) -> None:
        assert self.leases is not None
        config = WorkerConfig(self.id, self.leases, self.options.proxy_retry_after)
        self._zygote = zygote.Zygote(functools.partial(worker_main, config=config))
        self._zygote.start()
        self._zygote_started.append(time.monotonic())
        assert self._zygote.sock is not None
        asyncio.get_running_loop().add_reader(self._zygote.sock.fileno(), self._on_zygote)

    async def close(self) -> None:
        """Stop every worker and the zygote; nothing outlives this."""
        if self.closed:
            return
        self._refuse(PoolClosed("the pool is closed"))
        # Calls still in flight will not finish: their workers cancel them as they
        # stop. Their callers never cancelled anything, so they hear why, now. What
        # each worker was running is kept, to name it if that worker must be killed.
        running: dict[int, list[str]] = {}
        for pending in self._pending.values():
            if isinstance(pending.target, WorkerHandle):
                names = running.setdefault(pending.target.pid, [])
                names.append(self.fn_names.get(pending.fn, f"request {pending.id}"))
        self.fail_all(PoolClosed("the pool was closed while this dispatch was in flight"))
        try:
            await self._stop_workers(running)
        finally:
            self._terminate()

    def _refuse(self, exc: BaseException) -> None:
        """Closed: no more calls (new ones and queued ones fail), no more monitoring."""
        self.closed = True
        self.monitor.stop()
        if self.status is not None:
            self.status.close()
        self.watchdog.stop()
        self.scheduler.refuse(exc)

    async def _stop_workers(self, running: dict[int, list[str]]) -> None:
        if self.broken is not None:
            return
        timeout = self.options.stop_timeout
        if self._spawning:
            # Workers being forked right now: wait for them (bounded); a worker that
            # joins a closed hub is told to stop at once (_on_spawned).
            forks = [fut for _, _, fut in self._spawning.values()]
            await asyncio.wait(forks, timeout=timeout)
        loop = asyncio.get_running_loop()
        for handle in self._workers.values():
            self._exits[handle.pid] = loop.create_future()
            if not handle.stopping:  # else already told (retiring, or joined after close)
                self.stop_worker(handle)
        # Workers give their leases back as their calls end (and the hub reclaims
        # what a dead one held): watch them drain, meanwhile, and say who did not.
        drained = None
        if self.leases is not None:
            drained = asyncio.ensure_future(drain_leases(self.leases, timeout, (os.getpid(),)))
        pending = list(self._exits.values())
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout)
            if late:
                for handle in list(self._workers.values()):
                    names = ", ".join(sorted(set(running.get(handle.pid, ()))))
                    what = f"; it was running {names}" if names else ""
                    self.kill(handle, f"it did not stop within stop_timeout={timeout}s{what}")
                await asyncio.wait(late, timeout=timeout)
        if drained is not None:
            left = await drained
            if left:
                log.warning(
                    "wool_local: leases on this pool still held after %ss: %s",
                    timeout,
                    describe_holders(left),
                )

    def _terminate(self) -> None:
        """Synchronous last resort: kill whatever is left, reap the zygote, free everything."""
        closed = PoolClosed("the pool is closed")
        self._refuse(closed)
        for handle in list(self._workers.values()):
            handle.stopping = True
            _signal(handle.pid, signal.SIGKILL)
            self.fail_target(handle, closed)
            handle.link.close()
            os.close(handle.return_fd)
        self._workers.clear()
        self.changed_membership()
        for chan, return_fd, fut in self._spawning.values():
            chan.close()
            os.close(return_fd)
            if not fut.done():
                fut.cancel()
        self._spawning.clear()
        self.fail_all(closed)
        if self._zygote is not None:
            if self._zygote.sock is not None:
                try:
                    asyncio.get_running_loop().remove_reader(self._zygote.sock.fileno())
                except RuntimeError:
                    pass  # no loop running any more: nothing to remove it from
            self._zygote.stop(self.options.stop_timeout)
        __proxy_pool__.forget(self.id)
        if self.leases is not None:
            self.leases.close()
            self.leases = None

    # -- membership -------------------------------------------------------------

    def workers(self) -> list[WorkerHandle]:
        """Every worker process the hub has (serving, retiring or stopping), as a list
        its callers may hold while workers come and go."""
        return list(self._workers.values())

    def worker(self, pid: int) -> WorkerHandle | None:
        return self._workers.get(pid)

    def serving_count(self) -> int:
        return len(self.scheduler.serving)

    @property
    def pids(self) -> list[int]:
        """Pids of the workers that are not stopping."""
        return [h.pid for h in self._workers.values() if not h.stopping]

    @property
    def spawning(self) -> int:
        """Workers being forked right now."""
        return len(self._spawning)

    @property
    def zygote_pid(self) -> int:
        return self._zygote.pid if self._zygote is not None else -1

    async def changed(self) -> None:
        """Wait for the next change of membership (a worker joined, retired or died)."""
        if self._changed is None:
            self._changed = asyncio.Event()
        await self._changed.wait()

    def changed_membership(self) -> None:
        """The serving workers changed (one joined, retired, stopped or died): tell the
        scheduler, and wake whoever waits in :meth:`changed`. Call it before queued
        calls are handed out again."""
        self.scheduler.serving = [
            h for h in self._workers.values() if h.retiring is None and not h.stopping
        ]
        event, self._changed = self._changed, None
        if event is not None:
            event.set()

    def _grow(self) -> None:
        """A call had to wait: fork a worker if the pool runs fewer than its size."""
        if len(self.scheduler.serving) + len(self._spawning) < self.options.size:
            self.spawn_worker()

    def spawn_worker(self) -> None:
        """Fork a worker in the background (failures surface as hub state, not here)."""
        self._spawn().add_done_callback(_ignore_result)

    def _spawn(self) -> asyncio.Future[WorkerHandle]:
        assert self._zygote is not None
        chan = Channel.create(self.options.ring_capacity)
        return_fd = os.eventfd(0, os.EFD_CLOEXEC)
        seq = next(self._spawn_seq)
        fut: asyncio.Future[WorkerHandle] = asyncio.get_running_loop().create_future()
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

    def stop_worker(self, handle: WorkerHandle) -> None:
        """Tell ``handle`` to stop (it finishes nothing more; its exit report follows)."""
        handle.stopping = True
        self.changed_membership()
        try:
            handle.send(Stop())
        except Exception:
            self.kill(handle, "it could not be told to stop")

    def kill(self, handle: WorkerHandle, reason: str) -> None:
        """SIGKILL ``handle``; ``reason`` goes into the WorkerCrashed its calls get."""
        if not handle.kill_reason:
            handle.kill_reason = reason
        _signal(handle.pid, signal.SIGKILL)

    # -- reports from the zygote ------------------------------------------------

    def _on_zygote(self) -> None:
        assert self._zygote is not None
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
        if not self._spawning and not self.scheduler.serving:
            self.scheduler.fail_queued(exc)  # nothing left to run the queued calls

    def _on_spawned(self, seq: int, pid: int) -> None:
        chan, return_fd, fut = self._spawning.pop(seq)
        chan.segment.unlink()  # both sides have it mapped now
        handle: WorkerHandle | None = None

        def on_lost(exc: BaseException) -> None:
            # The zygote's exit report does the bookkeeping; a corrupt channel
            # means the worker cannot be trusted, so make sure it does exit, even
            # one already stopping (an orderly close of a stopping one is no news).
            if handle is None or isinstance(exc, PoolClosed):
                return
            if not handle.stopping or isinstance(exc, FrameError | ProtocolError):
                self.kill(handle, f"its channel failed: {exc}")

        def expects_answer() -> bool:
            # Spin for a reply only when few are in flight: otherwise replies
            # stream in anyway and the loop has queued work to do meanwhile.
            return handle is not None and handle.load <= 2

        link = Link(chan.end(0, peer_pid=pid), _unbound, on_lost, expects_answer=expects_answer)
        handle = WorkerHandle(pid, link, return_fd, self.options.max_inflight)
        link.on_message = functools.partial(self._on_worker_message, handle)
        link.on_batch = functools.partial(self._on_worker_batch, handle)
        self._workers[pid] = handle
        link.start()
        if self.closed:
            handle.stopping = True
            link.send(Stop())
        self.changed_membership()
        self.scheduler.send_queued()
        if not fut.done():
            fut.set_result(handle)

    def _on_exited(self, pid: int, status: int) -> None:
        handle = self._remove(pid)
        if handle is None:
            return
        # Out of the serving list first: the answers delivered next make room,
        # and the queued calls they let go must not go to this worker.
        self.changed_membership()
        if handle.stopping and not handle.kill_reason:
            exc: BaseException = PoolClosed("the worker stopped before this dispatch finished")
        else:
            exc = WorkerCrashed.from_wait_status(pid, status, handle.kill_reason)
            self.crashes += 1
            log.warning("wool_local: %s", exc)
        self._forget(handle, exc)
        if handle.retiring is None and not self.closed and self.broken is None:
            self.spawn_worker()  # replace a crashed worker
        else:
            self.scheduler.send_queued()

    def _remove(self, pid: int) -> WorkerHandle | None:
        """Worker ``pid`` is gone: out of the membership, and whoever waits for its exit
        (closing) is told. Its handle, if it was still a member."""
        handle = self._workers.pop(pid, None)
        waiter = self._exits.pop(pid, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        return handle

    def _forget(self, handle: WorkerHandle, exc: BaseException) -> None:
        """``handle``'s process is gone: its calls fail with ``exc``, its resources go."""
        handle.link.pump()  # deliver answers it wrote before it died
        self.fail_target(handle, exc)
        self.relay.drop(handle)
        handle.link.close()
        os.close(handle.return_fd)
        if self.leases is not None:
            self.leases.reclaim(handle.pid)  # whatever it held when it died

    def _on_zygote_lost(self) -> None:
        """The zygote died (the OOM killer, an operator): its workers died with it and
        nobody will report their exits. Fail their calls now, and fork a new zygote,
        unless zygotes keep dying."""
        if self.closed:
            return
        old = self._zygote
        assert old is not None and old.sock is not None
        asyncio.get_running_loop().remove_reader(old.sock.fileno())
        old.stop(0)  # reap it
        self._zygote = None
        log.error("wool_local: the pool's zygote process %d died, and its workers with it", old.pid)
        for handle in self.workers():
            # They die of PR_SET_PDEATHSIG; make sure, through the pidfd (the pid is
            # no longer our grandchild, and may be reused once init reaps it).
            handle.stopping = True
            peer = handle.link.end.peer
            if peer is not None and peer.fd >= 0:
                try:
                    signal.pidfd_send_signal(peer.fd, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self._remove(handle.pid)
            self.crashes += 1
            self._forget(
                handle,
                WorkerCrashed(
                    handle.pid,
                    signal=signal.SIGKILL,
                    detail="the pool's zygote process died, and its workers with it",
                ),
            )
        for chan, return_fd, fut in self._spawning.values():
            chan.close()
            os.close(return_fd)
            if not fut.done():
                fut.set_exception(SpawnFailed("the pool's zygote process died while forking"))
        self._spawning.clear()
        self.changed_membership()
        now = time.monotonic()
        recent = [t for t in self._zygote_started if now - t < ZYGOTE_RESTART_WINDOW]
        if len(recent) >= ZYGOTE_RESTARTS:
            window = ZYGOTE_RESTART_WINDOW
            self._break(f"its zygote process died {len(recent)} times in {window:.0f}s")
            return
        try:
            self._start_zygote()
        except Exception as exc:
            self._break(f"a new zygote could not be forked: {exc!r}")
            return
        for _ in range(self.options.size):
            self.spawn_worker()

    def _break(self, why: str) -> None:
        self.broken = PoolClosed(f"the pool cannot fork workers any more: {why}")
        log.error("wool_local: %s", self.broken)
        self.scheduler.refuse(self.broken)

    # -- messages from workers --------------------------------------------------

    def _on_worker_batch(self, handle: WorkerHandle, messages: Sequence[Message]) -> None:
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
            self.scheduler.send_queued()
        except Exception:
            log.exception("wool_local: sending queued calls failed")

    def _on_worker_message(
        self, handle: WorkerHandle, msg: Message, buffers: Sequence[bytes]
    ) -> None:
        kind = type(msg)
        if kind is Returned:
            self.watchdog.on_returned(handle, msg.ids)  # type: ignore[union-attr]
            return
        if kind is Ping:
            self.watchdog.on_heard(handle)  # its loop runs
            return
        if handle.stalled:
            self.watchdog.on_heard(handle)
        if kind is Reply:
            self.on_reply(msg, buffers)  # type: ignore[arg-type]
        elif kind is Call:
            self.relay.call(handle, msg, buffers)  # type: ignore[arg-type]
        elif kind is Step:
            self.relay.step(handle, msg, buffers)  # type: ignore[arg-type]
        elif kind is Cancel:
            self.relay.cancel(handle, msg.id)  # type: ignore[union-attr]

    # -- introspection ------------------------------------------------------------

    def stats(self) -> PoolStats:
        """Per-worker health (latest OS readings, current counters, state), recycles,
        totals and the leases held."""
        return collect_stats(self)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _unbound(msg: Message, buffers: Sequence[bytes]) -> None:
    raise AssertionError("a link delivered a message before its handle was bound")


def _ignore_result(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()
