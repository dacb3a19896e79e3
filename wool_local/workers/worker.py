"""The worker process: its own uvloop loop serving calls that arrive from the hub.

Each ``Call`` becomes an asyncio task running the callable, created as the
call arrives; an async generator's call opens a session in the worker's
:class:`~.sessions.Sessions`, advanced by ``Step`` messages, one task per step
(or per run of steps) so a step can be cancelled. Callables arrive pickled
once and are cached by id. Routines the body calls dispatch again through
:class:`HubClient`, which sends them up to the hub to be scheduled like any
other call.

A task runs its body only once past the start gate, so the calls behind a
task that blocks the loop can be handed back to the hub and run elsewhere:
see :mod:`wool_local.workers.handback_worker`.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import uvloop

from ..ipc import Channel, Doorbell, Segment, SlotTable
from . import context, hubclient, payload, proxy, zygote
from .handback_worker import LockedLink, StartGate
from .hubclient import HubClient
from .options import PoolOptions
from .protocol import (
    CANCELLED,
    COROUTINE,
    RAISED,
    RETURNED,
    Call,
    Cancel,
    Message,
    Ping,
    Reply,
    Step,
    Stop,
)
from .sessions import Sessions, sync_back

log = logging.getLogger("wool_local")


@dataclass
class WorkerConfig:
    """What a worker needs from its pool, inherited through the zygote."""

    pool_id: bytes | None = None
    leases: SlotTable | None = None  # the pool's shared lease table
    proxy_retry_after: float = PoolOptions.proxy_retry_after  # failed-start back-off
    cancel_grace: float = PoolOptions.cancel_grace  # for nested calls this worker cancels


class WorkerService:
    """Serves one channel to the hub until told to stop or the hub goes away."""

    def __init__(
        self,
        link_end: Any,
        return_fd: int = -1,
        config: WorkerConfig | None = None,
    ) -> None:
        self._config = config or WorkerConfig()
        self._lock = threading.RLock()
        # After answering, spin briefly for the next call only when idle (the
        # task that just replied may still be registered).
        self.link = LockedLink(
            link_end,
            self.on_message,
            self._on_lost,
            watch_peer=True,
            expects_answer=lambda: len(self._tasks) <= 1,
            lock=self._lock,
            on_idle=self.release_idle_leases,
        )
        self.client = HubClient(self.link, self._config.cancel_grace)
        self.gate = StartGate(self.link, return_fd, self._keep_definition)
        self._functions: dict[int, Any] = {}
        self._definitions: dict[int, bytes] = {}  # received, not unpickled yet
        self._book = proxy.LeaseBook(self._config.leases)  # proxy bindings and leases
        self._book.frame_open = lambda rid: rid in self._tasks or rid in self.sessions
        self._linger: asyncio.TimerHandle | None = None  # gives back unused leases
        # Running tasks by request id: a call's, a generator step's, and (negative
        # id) a generator being closed.
        self._tasks: dict[int, asyncio.Task[None]] = {}
        #: Generator sessions by request id (their steps run as tasks in ``_tasks``).
        self.sessions = Sessions(self._reply, self._spawn, self._book)
        self._base_context = contextvars.copy_context()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Future[None] | None = None
        self._halted = False  # stopping: tasks cancelled, unstarted calls revoked
        self._return_fd = return_fd

    @property
    def tasks(self) -> Mapping[int, asyncio.Task[None]]:
        """Running tasks by request id (read-only): calls, generator steps, and at the
        negated id a generator being closed."""
        return MappingProxyType(self._tasks)

    async def serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._done = self._loop.create_future()
        self._base_context = contextvars.copy_context()
        self.sessions.loop = self._loop
        self.sessions.push = self._push
        hubclient.process_dispatcher = self.client
        self.client.loop = self._loop  # nested calls from other loops run on this one
        cfg = self._config
        proxy.__proxy_pool__.reset(cfg.pool_id, self.client, cfg.proxy_retry_after, self._book)
        context.forget_caches()  # the hub's cached objects mean nothing here
        returner = None
        if self._return_fd >= 0:
            returner = threading.Thread(
                target=self.gate.run_returner, name="wool_local-returner", daemon=True
            )
            zygote.harmless_to_fork(returner)  # a routine here may start a pool of its own
            returner.start()
        self.link.start()
        try:
            await self._done
        finally:
            await self._cancel_everything()
            # Every routine has ended: the worker leaves holding no lease (what a
            # binding made outside any routine still held goes with it).
            if self._linger is not None:
                self._linger.cancel()
            self._book.release_all()
            with self._lock:
                self.link.close()
            if returner is not None:
                self.gate.stop_returner()
                returner.join(1)

    def _stop(self) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    def _on_lost(self, exc: BaseException) -> None:
        # The hub closed the channel or died: nobody is left to answer to.
        self.client.fail_all(exc)
        self._stop()

    def _halt(self) -> None:
        """Stopping: calls that have not started never will, the others are cancelled
        (once: a routine that catches it may await its cleanup)."""
        if self._halted:
            return
        self._halted = True
        self.gate.revoke_all()
        for task in self._tasks.values():
            task.cancel()

    async def _cancel_everything(self) -> None:
        self._halt()
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        await self.sessions.close_all()

    # -- messages ----------------------------------------------------------

    def on_message(self, msg: Message, buffers: Sequence[bytes]) -> None:
        """One message from the hub (the link calls this, with the ring lock held)."""
        if type(msg) is Call:
            if msg.fn_def is not None:
                self._keep_definition(msg)  # even if it is handed back unstarted
            self.gate.admit(msg.id, msg.keep)
            self._start(msg, buffers)
        elif type(msg) is Reply:
            self.client.on_reply(msg, buffers)
        elif type(msg) is Step:
            self.sessions.step(msg, buffers)
        elif type(msg) is Cancel:
            rid = msg.id
            task = self._tasks.get(rid)
            if task is not None and not task.done():
                task.cancel()
                if rid not in self.sessions and (_not_started(task) or self.gate.holds(rid)):
                    # Its body never runs now (a task cancelled before its first step
                    # ends at once, skipping even its finally; one whose gate is
                    # reading this very message is refused by it): it leaves the table
                    # here, and is answered here unless the returner handed it back.
                    del self._tasks[rid]
                    if self.gate.claim(rid):
                        self._reply(rid, CANCELLED)
            elif rid in self.sessions and (task is None or not task.cancelled()):
                # An idle generator session (its last step already answered; the
                # task that took it may have ended without leaving the table yet,
                # and one cancelled is answered when it leaves): close it here (its
                # finally runs), then say so.
                self.sessions.end(rid, CANCELLED, close=True)
        elif type(msg) is Stop:
            self._stop()
            self._halt()  # now: the loop may have hundreds of calls ready to start
        elif type(msg) is Ping:
            # The answer proves this loop runs (a reply the returner thread flushes
            # would not): the hub sends this worker calls again.
            self.link.send(msg)

    def _spawn(self, rid: int, coro: Any, ctx: contextvars.Context | None = None) -> None:
        """Run a generator step (or, at ``-rid``, its close) as a task; a call's task is
        made in _start."""
        loop = self._loop or asyncio.get_running_loop()
        task = loop.create_task(coro, context=ctx)
        self._tasks[rid] = task
        task.add_done_callback(functools.partial(self._step_done, rid))

    def _step_done(self, rid: int, task: asyncio.Task[None]) -> None:
        if self._tasks.get(rid) is task:  # the next generator step may have replaced it
            del self._tasks[rid]
        self.gate.discard(rid)
        if task.cancelled() and rid > 0:
            # Cancelled before its first step: the body never ran, so nothing
            # answered for it yet. The hub waits for an answer to every request.
            self.sessions.end(rid, CANCELLED, close=True)

    def _reply(
        self,
        rid: int,
        status: int,
        value: bytes | None = None,
        buffers: Sequence[Any] = (),
        snapshot: dict[str, bytes] | None = None,
        more: list[bytes] | None = None,
    ) -> None:
        if self.link.lost is not None:
            return
        try:
            self.link.send(Reply(rid, status, value, snapshot, more), buffers)
        except Exception as exc:
            # The answer itself could not go (no room for a spill segment, say):
            # the caller still gets an answer, the error, rather than nothing.
            if status == RAISED and value is not None and not buffers:
                log.exception("wool_local: cannot answer request %d", rid)
                return
            error = payload.UnpicklableError(
                f"the answer could not be sent back: {payload.describe(exc)}"
            )
            self._reply(rid, RAISED, payload.dumps_exception(error))

    def _push(self) -> None:
        with self._lock:
            self.link.push()

    def _keep_definition(self, call: Call) -> None:
        if call.fn_def is not None and call.fn not in self._functions:
            self._definitions.setdefault(call.fn, call.fn_def)

    def _resolve(self, call: Call) -> Any:
        fn = self._functions.get(call.fn)
        if fn is None:
            data = call.fn_def if call.fn_def is not None else self._definitions.get(call.fn)
            if data is None:
                raise payload.UnpicklableError(
                    f"worker {os.getpid()} was never sent callable #{call.fn}"
                )
            fn = payload.loads(data, "the routine")
            self._functions[call.fn] = fn
            self._definitions.pop(call.fn, None)
        return fn

    # -- context and leases --------------------------------------------------

    def _bind(self, call: Call) -> tuple[dict[str, Any], bytes | None]:
        """Set the caller's variables in the current context and open the routine's
        frame with the binding of the proxy the dispatch bound (holding its lease):
        the values set (so only what the routine changes travels back), and the
        lease to give back, with the frame, when the routine is done."""
        values = context.decode(call.context)
        if proxy.PROXY_KEY not in values and call.proxy_id is not None:
            # An older caller: the proxy came in the deprecated dedicated fields.
            values[proxy.PROXY_KEY] = proxy.restore_proxy(call.proxy_id)
        if values:
            context.apply(values)
        bound = values.get(proxy.PROXY_KEY)
        return values, self._book.open_frame(
            call.id, bound if isinstance(bound, proxy.WorkerProxy) else None
        )

    def release_idle_leases(self) -> None:
        """The link calls this after reading everything and after sending its answers:
        while this process holds a shared lease, a timer gives back those no binding
        uses once they have lingered unused (see LeaseBook). One check per call."""
        if self._linger is None and self._book.holding and self._loop is not None:
            self._linger = self._loop.call_later(
                self._book.linger, self._end_linger, self._book.takes
            )

    def _end_linger(self, takes: int) -> None:
        self._linger = None
        book = self._book
        if book.takes != takes or self.gate.waiting:
            # Used meanwhile, or calls about to bind: keep the leases another period.
            self.release_idle_leases()
            return
        book.release_idle()

    # -- running -------------------------------------------------------------

    def _start(self, call: Call, buffers: Sequence[bytes]) -> None:
        # Everything else happens in the task, once it passed the start gate: the
        # pump (which holds the lock the returner needs) runs no code of the caller's,
        # not even unpickling its arguments, which may block.
        loop = self._loop or asyncio.get_running_loop()
        ctx = self._base_context.copy()
        if call.kind == COROUTINE:
            self._tasks[call.id] = loop.create_task(self._run(call, buffers), context=ctx)
        else:
            self._tasks[call.id] = loop.create_task(self._open(call, buffers, ctx), context=ctx)

    async def _open(self, call: Call, buffers: Sequence[bytes], ctx: contextvars.Context) -> None:
        """A generator call's first task (it runs in ``ctx``): start the generator and
        take its first step."""
        rid = call.id
        try:
            if not self.gate.start(rid):
                return  # handed back before it started: the hub runs it elsewhere
            fn = None
            try:
                fn = self._resolve(call)
                args, kwargs = payload.loads(call.args, "the arguments", buffers)
                sent, lease = self._bind(call)
            except BaseException as exc:
                self._reply(rid, RAISED, payload.dumps_exception(exc))
                return
            try:
                gen = fn(*args, **kwargs)
                if not inspect.isasyncgen(gen):
                    raise TypeError(f"{fn!r} did not return an async generator")
            except BaseException as exc:
                self._book.end_frame(rid, lease)
                self._reply(rid, RAISED, payload.dumps_exception(exc, fn))
                return
            await self.sessions.start(rid, gen, ctx, lease, sent, call.op, call.value)
        finally:
            if self._tasks.get(rid) is asyncio.current_task():
                del self._tasks[rid]

    async def _run(self, call: Call, buffers: Sequence[bytes]) -> None:
        """A call's task. Its frame ends (its bindings are given back) before it
        answers, so a caller that has the answer never sees a binding still live."""
        rid = call.id
        try:
            if not self.gate.start(rid):
                return  # handed back before it started: the hub runs it elsewhere
            try:
                fn = self._resolve(call)
                args, kwargs = payload.loads(call.args, "the arguments", buffers)
                sent, lease = self._bind(call)
            except BaseException as exc:
                self._reply(rid, RAISED, payload.dumps_exception(exc))
                return
            end_frame = self._book.end_frame
            try:
                result = await fn(*args, **kwargs)
            except asyncio.CancelledError:
                end_frame(rid, lease)
                self._reply(rid, CANCELLED)
                return
            except BaseException as exc:
                end_frame(rid, lease)
                self._reply(rid, RAISED, payload.dumps_exception(exc, fn), (), sync_back(sent))
                return
            end_frame(rid, lease)
            try:
                data, out = payload.dumps(result, "the result of", of=fn)
            except BaseException as exc:  # whatever pickling raised, the caller hears
                self._reply(rid, RAISED, payload.dumps_failure("the result", fn, exc))
                return
            self._reply(rid, RETURNED, data, out, sync_back(sent))
        finally:
            self._tasks.pop(rid, None)


def _not_started(task: asyncio.Task[Any]) -> bool:
    return inspect.getcoroutinestate(task.get_coro()) == inspect.CORO_CREATED  # type: ignore[arg-type]


#: Called by :func:`worker_main` once the worker stopped serving (see :func:`at_exit`),
#: with the pid of the process that registered each.
_exit_hooks: list[tuple[int, Callable[[], None]]] = []


def at_exit(fn: Callable[[], None]) -> None:
    """Have this worker call ``fn()`` when it stops serving: told to stop (the pool
    closing, a recycle) or its hub gone; not when it is killed. It runs in the main
    thread with no event loop, after every call has ended; the hub waits for it up
    to ``stop_timeout``. Only the process that registered it calls it: the workers
    of a pool that a routine starts in this worker inherit the list, not the hook."""
    _exit_hooks.append((os.getpid(), fn))


def _run_exit_hooks() -> None:
    me = os.getpid()
    while _exit_hooks:
        pid, fn = _exit_hooks.pop()
        if pid != me:
            continue
        try:
            fn()
        except BaseException as exc:  # one failing hook must not skip the others
            print(f"wool_local: worker exit hook {fn!r} failed: {exc!r}", file=sys.stderr)


def worker_main(
    segment: Segment,
    capacity: int,
    fds: list[int],
    hub_pid: int,
    config: WorkerConfig | None = None,
) -> int:
    """Entry point of a freshly forked worker (called by the zygote).

    ``fds``: the channel's two doorbells, then the eventfd the hub rings to ask
    for unstarted calls back.
    """
    chan = Channel(segment, (Doorbell(fds[0]), Doorbell(fds[1])), capacity)
    end = chan.end(1, peer_pid=hub_pid)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    return_fd = fds[2] if len(fds) > 2 else -1
    try:
        # A fresh, empty context: the one inherited through the fork is the hub's,
        # and its variables must not leak into dispatches here.
        service = WorkerService(end, return_fd, config)
        contextvars.Context().run(loop.run_until_complete, service.serve())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        asyncio.set_event_loop(None)
        if return_fd >= 0:
            os.close(return_fd)
        _run_exit_hooks()
    return 0
