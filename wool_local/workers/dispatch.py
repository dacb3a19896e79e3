"""The calling side of dispatch, shared by the hub (to workers) and workers (to the hub).

A :class:`Dispatcher` turns ``call(fn, args, kwargs)`` into a ``Call`` message
to a :class:`Target` and the matching ``Reply`` back into a result or an
exception; ``stream(...)`` returns the pull-based async generator of
:mod:`.streams`, built on the same requests. It keeps every outstanding request
in one table, so load accounting, crash handling and hand-back all work on
the same records. Subclasses say where calls go (the hooks below): the hub
schedules them over its workers, a worker sends them up to the hub.

State machine of one dispatch, as the caller sees it::

    queued ─► Call sent ─► awaiting Reply ─► RETURNED / RAISED ─► done
      │ cancelled         │              │ caller cancelled
                          │              ▼
                          │        Cancel sent, caller gets CancelledError;
                          │        entry kept until the worker's final Reply
                          │        (or its death) so load accounting stays exact
                          ▼
               target died ─► WorkerCrashed
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from . import context, crossloop, payload, protocol, streams
from .protocol import CANCELLED, RAISED, RETURNED, YIELDED, Call, Cancel, Reply, Step


class Target:
    """Somewhere calls can be sent: one worker (hub side) or the hub (worker side)."""

    def __init__(self) -> None:
        self.known_fns: set[int] = set()
        self.load = 0  # requests sent and not yet answered
        self.open = 0  # calls and generator sessions it holds (a session may be idle)
        self.cancelling = 0  # of those, ones we cancelled: the target may be stuck
        self.alive = True

    def send(self, message: protocol.Message, buffers: Sequence[Any] = ()) -> None:
        raise NotImplementedError


class Pending:
    """One outstanding request (or generator session) and who waits for its answer.

    ``target`` is None while the request waits in the dispatcher's queue;
    ``future`` is None once a local caller gave up; ``cancelled`` marks a
    request whose Cancel was sent and whose final answer is still due.
    """

    __slots__ = (
        "__weakref__", "buffers", "call", "cancelled", "error", "fn", "future", "id", "owed",
        "target",
    )  # fmt: skip

    def __init__(
        self, rid: int, future: Any, call: Call | None = None, buffers: Sequence[Any] = ()
    ) -> None:
        self.id = rid
        self.future = future
        self.target: Target | None = None
        self.cancelled = False
        # The call, kept until answered: a worker may hand it back unstarted.
        self.call = call
        self.buffers = buffers
        self.fn = call.fn if call is not None else 0  # for messages: see fn_names
        # Why it failed while nobody waited (an idle generator session whose
        # worker died): the caller's next step raises it.
        self.error: BaseException | None = None
        # Answers still due to a generator's steps, those granted ahead included
        # (counted in its target's load until they come or the session ends).
        self.owed = 0


class Dispatcher:
    """Sends calls and streams to targets chosen by the subclass."""

    def __init__(self, main_has: Callable[[Any], bool], cancel_grace: float) -> None:
        #: Seconds a cancelled request may take to acknowledge before ``on_overdue``.
        self.cancel_grace = cancel_grace
        self._ids = itertools.count(1)
        self._pending: dict[int, Pending] = {}
        self._cancel_timers: dict[int, asyncio.TimerHandle] = {}  # escalation, by request
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._fn_cache: dict[int, tuple[Any, int]] = {}
        #: The loop this dispatcher's state lives on (set by its owner, or by the first
        #: call); calls from other loops are run on it (see :mod:`.crossloop`).
        self.loop: asyncio.AbstractEventLoop | None = None
        self._main_has = main_has
        #: Pickled callables by id, from this process or relayed from workers.
        self.fn_defs: dict[int, bytes] = {}
        #: Names of the callables this process sent, by id (for messages).
        self.fn_names: dict[int, str] = {}

    # -- hooks: what a subclass decides -------------------------------------

    def submit(self, pending: Pending) -> None:
        """Send ``pending.call`` now or queue it until a target has room."""
        raise NotImplementedError

    def on_answered(self, target: Target) -> None:
        """A request to ``target`` was answered: it has room again."""

    def on_overdue(self, target: Target, request_id: int) -> None:
        """A cancelled request was not acknowledged within :attr:`cancel_grace`."""

    def on_finished(self, target: Target) -> None:
        """A call or generator session on ``target`` is over (answered for good)."""

    @property
    def outstanding(self) -> Mapping[int, Pending]:
        """Requests sent or queued and not finally answered, by request id (read-only)."""
        return MappingProxyType(self._pending)

    # -- requests made on others' behalf (the hub's relay) --------------------

    def track(self, future: Any, call: Call, buffers: Sequence[Any] = ()) -> Pending:
        """Open a request for ``call`` under a new id (``call.id`` is set to it);
        ``future`` gets the answers. The caller then submits it."""
        rid = call.id = next(self._ids)
        pending = self._pending[rid] = Pending(rid, future, call, buffers)
        return pending

    def request(self, rid: int) -> Pending | None:
        """The open request ``rid``, if it is still open."""
        return self._pending.get(rid)

    def forget(self, pending: Pending) -> None:
        """Close a request that never reached a target (its answer is given elsewhere)."""
        if self._pending.get(pending.id) is pending:
            del self._pending[pending.id]

    def fail_request(self, pending: Pending, exc: BaseException) -> None:
        """Close ``pending`` for good: its waiter, if any is left, gets ``exc``."""
        self.forget(pending)
        self._drop_timer(pending.id)
        fut = pending.future
        if fut is not None and not fut.done():
            fut.set_exception(exc)
        else:
            pending.error = exc

    # -- sending -----------------------------------------------------------

    def encode_fn(self, fn: Any) -> int:
        """The id of ``fn``'s pickled form (pickled once per dispatcher)."""
        entry = self._fn_cache.get(id(fn))
        if entry is not None and entry[0] is fn:
            return entry[1]
        data = payload.dumps_callable(fn, self._main_has)
        fid = payload.callable_id(data)
        self.fn_defs[fid] = data
        self.fn_names[fid] = payload.name_of(fn)
        self._fn_cache[id(fn)] = (fn, fid)
        return fid

    def send_call(self, target: Target, pending: Pending) -> None:
        """Send ``pending.call``, attaching the callable's definition the first time
        ``target`` sees it.

        The bookkeeping follows the send: a send that fails (no room for a spill
        segment, a lost link) leaves no count or "already has it" behind.
        """
        call = pending.call
        assert call is not None
        fid = call.fn
        known = target.known_fns
        call.fn_def = None if fid in known else self.fn_defs[fid]
        target.send(call, pending.buffers)
        known.add(fid)
        pending.target = target
        target.open += 1
        target.load += 1

    def send_step(
        self,
        target: Target,
        step: Step,
        buffers: Sequence[Any] = (),
        pending: Pending | None = None,
    ) -> None:
        """Send a generator step; it and the steps it grants ahead count as load until
        answered (or until the session ends: see ``_settle``)."""
        target.send(step, buffers)
        target.load += 1 + step.ahead
        if pending is not None:
            pending.owed += 1 + step.ahead

    # -- receiving ---------------------------------------------------------

    def on_reply(self, reply: Reply, buffers: Sequence[bytes]) -> None:
        target = self._settle(reply, buffers)
        if target is not None:
            self.on_answered(target)

    def _settle(self, reply: Reply, buffers: Sequence[bytes]) -> Target | None:
        """Deliver ``reply`` to its caller and account for it; the target it came from
        (None for a late answer to something already failed)."""
        pending = self._pending.get(reply.id)
        if pending is None:
            return None
        target = pending.target
        assert target is not None
        more = reply.more
        answered = 1 if more is None else 1 + len(more)  # steps this answers
        if pending.call is None and answered > pending.owed:
            # A generator session answered before answers only the steps it is owed:
            # the final answer to a Cancel that found it idle (sent while steps were
            # due, which came meanwhile) answers none.
            answered = pending.owed
        target.load -= answered
        pending.call = None  # answered: it started, it can no longer be handed back
        pending.buffers = ()
        final = reply.status != YIELDED
        if pending.owed:
            pending.owed = max(0, pending.owed - answered)
        if final:
            del self._pending[reply.id]
            target.open -= 1
            if pending.owed:  # steps granted ahead that the session's end left unanswered
                target.load -= pending.owed
                pending.owed = 0
            if pending.cancelled:
                target.cancelling -= 1
                self._drop_timer(reply.id)
        fut = pending.future
        if fut is not None and not fut.done():
            fut.set_result((reply, buffers))
        if final:
            self.on_finished(target)
            if self._drain_waiters and not self._pending:
                self._wake_drained()
        return target

    async def drained(self) -> None:
        """Wait until no request is outstanding: every call answered, every cancel
        acknowledged by its worker (or failed with it)."""
        if self._pending:
            fut = asyncio.get_running_loop().create_future()
            self._drain_waiters.append(fut)
            await fut

    def _wake_drained(self) -> None:
        waiters, self._drain_waiters = self._drain_waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def fail_target(self, target: Target, exc: BaseException) -> None:
        """``target`` is gone: fail every request outstanding on it with ``exc``."""
        target.alive = False
        for pending in [p for p in self._pending.values() if p.target is target]:
            self.fail_request(pending, exc)
        target.load = 0
        target.open = 0
        target.cancelling = 0
        if not self._pending:
            self._wake_drained()

    def take_back(self, target: Target, ids: Sequence[int]) -> list[Pending]:
        """``target`` never started the requests ``ids``: they are no longer on it.

        Returns the ones to run elsewhere, in order. A request whose caller
        already gave up is over instead (a relayed one answers its asker
        CANCELLED). Ids that are not unstarted calls on ``target`` are ignored.
        """
        back = []
        for rid in ids:
            pending = self._pending.get(rid)
            if pending is None or pending.target is not target or pending.call is None:
                continue
            target.load -= 1
            target.open -= 1
            if pending.cancelled:
                target.cancelling -= 1
                del self._pending[rid]
                self._drop_timer(rid)
                if pending.future is not None:  # a relay: the asking worker is told
                    pending.future.set_result((Reply(rid, CANCELLED), []))
                continue
            pending.target = None
            back.append(pending)
        if not self._pending:
            self._wake_drained()  # the last outstanding requests were cancelled ones
        return back

    def _drop_timer(self, rid: int) -> None:
        timer = self._cancel_timers.pop(rid, None)
        if timer is not None:
            timer.cancel()

    def fail_all(self, exc: BaseException) -> None:
        """Fail every open request with ``exc``."""
        for pending in list(self._pending.values()):
            self.fail_request(pending, exc)
        self._wake_drained()

    # -- the caller's API --------------------------------------------------

    async def call(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run ``fn(*args, **kwargs)`` (a coroutine function) remotely and return its result."""
        # This is the hot path of every dispatch: one coroutine, one future, one
        # Pending, nothing kept that the answer does not need (each object alive
        # per call in flight is work for the cyclic GC when thousands are).
        fid = self.encode_fn(fn)
        data, buffers = payload.dumps_args(args, kwargs, fn)
        args = kwargs = None  # type: ignore[assignment]  # sent as a pickle: let go
        loop = asyncio.get_running_loop()
        if loop is self.loop:
            fut = loop.create_future()
            call = Call(next(self._ids), fid, None, data, context=context.snapshot())
            pending = self._open(fut, call, buffers)
            try:
                answer = await fut
            except asyncio.CancelledError:
                self.gave_up(pending)
                raise
        else:
            answer = await self._call_from(loop, fid, data, buffers)
        if answer[0].context:  # what the routine set comes back, as in one process
            context.apply(context.decode(answer[0].context), back=True)
        return _outcome(answer, fn)

    def _open(self, fut: asyncio.Future[Any], call: Call, buffers: Sequence[Any]) -> Pending:
        """Record ``call`` as outstanding, with ``fut`` for its answers, and submit it."""
        rid = call.id
        pending = self._pending[rid] = Pending(rid, fut, call, buffers)
        try:
            self.submit(pending)
        except BaseException:
            self._pending.pop(rid, None)
            raise
        return pending

    async def _call_from(
        self, loop: asyncio.AbstractEventLoop, fid: int, data: bytes, buffers: Sequence[Any]
    ) -> tuple[Reply, Sequence[bytes]]:
        """A call made on another loop than this dispatcher's: the exchange runs on
        this dispatcher's loop (its state is that loop's alone), the caller's context
        travels with it, and the answer comes back to the caller's loop."""
        snapshot = context.snapshot()
        if self.loop is None:  # the first call binds the dispatcher to its loop
            self.loop = loop
            return await self._exchange(fid, data, buffers, snapshot)
        return await crossloop.run_on(self.loop, self._exchange(fid, data, buffers, snapshot))

    async def _exchange(
        self, fid: int, data: bytes, buffers: Sequence[Any], snapshot: context.Snapshot | None
    ) -> tuple[Reply, Sequence[bytes]]:
        fut = asyncio.get_running_loop().create_future()
        pending = self._open(fut, Call(next(self._ids), fid, None, data, context=snapshot), buffers)
        return await self.answer(pending)

    async def answer(self, pending: Pending) -> tuple[Reply, Sequence[bytes]]:
        """Await the answer to ``pending``; on cancellation, cancel the remote side too."""
        try:
            return await pending.future
        except asyncio.CancelledError:
            self.gave_up(pending)
            raise

    def gave_up(self, pending: Pending) -> None:
        """The caller stopped waiting for ``pending``: unqueue it, or cancel it remotely."""
        rid = pending.id
        if self._pending.get(rid) is pending:
            pending.future = None
            if pending.target is None:  # still queued: it never left this process
                del self._pending[rid]  # (its queue entry is skipped when reached)
            else:
                self.cancel_remote(pending)

    def cancel_remote(self, pending: Pending) -> None:
        """Send Cancel for ``pending``; escalate if no final answer comes within the grace."""
        rid = pending.id
        target = pending.target
        assert target is not None
        pending.cancelled = True
        target.cancelling += 1
        try:
            target.send(Cancel(rid))
        except Exception:
            return
        loop = asyncio.get_running_loop()
        self._cancel_timers[rid] = loop.call_later(self.cancel_grace, self._cancel_overdue, rid)

    def _cancel_overdue(self, rid: int) -> None:
        self._cancel_timers.pop(rid, None)
        pending = self._pending.get(rid)
        if pending is not None and pending.cancelled and pending.target is not None:
            self.on_overdue(pending.target, rid)

    def stream(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> AsyncGenerator:
        """Run the async generator function ``fn`` remotely, one step per pull (see
        :mod:`.streams`)."""
        return streams.stream(self, fn, args, kwargs)

    @staticmethod
    def outcome(answer: tuple[Reply, Sequence[bytes]], fn: Any) -> Any:
        """A final answer to a request for ``fn``: its result, or its error raised."""
        return _outcome(answer, fn)


def _outcome(answer: tuple[Reply, Sequence[bytes]], fn: Any) -> Any:
    reply, buffers = answer
    status = reply.status
    if status == RETURNED:
        return payload.loads(reply.value or b"", "the result of", buffers, of=fn)
    if status == RAISED:
        raise payload.loads_exception(reply.value or b"")
    if status == CANCELLED:
        raise asyncio.CancelledError(f"{payload.name_of(fn)} was cancelled in its worker")
    raise protocol.ProtocolError(f"unexpected reply status {status}")


__all__ = ["Dispatcher", "Pending", "Target"]
