"""The calling side of dispatch, shared by the hub (to workers) and workers (to the hub).

A :class:`Dispatcher` turns ``call(fn, args, kwargs)`` into a ``Call`` message
to a :class:`Target` and the matching ``Reply`` back into a result or an
exception, and ``stream(...)`` into a pull-based async generator whose every
step is one ``Step``/``Reply`` exchange. It keeps every outstanding request
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
from collections import deque
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from . import context, crossloop, payload, protocol
from .protocol import (
    CANCELLED,
    CLOSE,
    EXHAUSTED,
    GENERATOR,
    NEXT,
    RAISED,
    RETURNED,
    SEND,
    THROW,
    YIELDED,
    Call,
    Cancel,
    Reply,
    Step,
)


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
                self._gave_up(pending)
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
        return await self._answer(pending)

    async def _answer(self, pending: Pending) -> tuple[Reply, Sequence[bytes]]:
        """Await the answer to ``pending``; on cancellation, cancel the remote side too."""
        try:
            return await pending.future
        except asyncio.CancelledError:
            self._gave_up(pending)
            raise

    def _gave_up(self, pending: Pending) -> None:
        """The caller stopped waiting for ``pending``: unqueue it, or cancel it remotely."""
        rid = pending.id
        if self._pending.get(rid) is pending:
            pending.future = None
            if pending.target is None:  # still queued: it never left this process
                del self._pending[rid]  # (its queue entry is skipped when reached)
            else:
                self.cancel_remote(pending, rid)

    def cancel_remote(self, pending: Pending, rid: int) -> None:
        """Send Cancel for ``rid``; escalate if no final answer comes within the grace."""
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
        """Run the async generator function ``fn`` remotely, one step per pull."""
        fid = self.encode_fn(fn)
        args_pickled = payload.dumps_args(args, kwargs, fn)
        here = asyncio._get_running_loop()
        if here is not None and self.loop is not None and here is not self.loop:
            # Made on another loop: each step runs on this dispatcher's loop.
            changes: list[dict[str, Any]] = []
            steps = self._stream(fn, fid, args_pickled, back=changes.append)
            return crossloop.relay_stream(self.loop, steps, changes)
        return self._stream(fn, fid, args_pickled)

    async def _stream(
        self,
        fn: Any,
        fid: int,
        args: payload.Pickled,
        back: Callable[[dict[str, Any]], None] | None = None,
    ) -> AsyncGenerator:
        """The stream's steps; ``back`` takes what the routine changed in its context
        (by default it is applied here, as a call does).

        From the second item on, while the caller only pulls (``__anext__``) and its
        context variables stay as the generator has them, the stream *prefetches*:
        it grants the worker a window of ``NEXT`` steps ahead (``Step.ahead``), the
        answers queue in an :class:`_Inbox`, and a pull takes the next one. The first
        ``asend``/``athrow`` or changed variable ends prefetching for good; see
        docs/architecture.md, "Streams".
        """
        loop = asyncio.get_running_loop()
        if self.loop is None:
            self.loop = loop
        elif loop is not self.loop:
            raise RuntimeError(
                f"a stream of {payload.name_of(fn)} was made outside any event loop and "
                "iterated on another loop than its pool's; make it where you iterate it"
            )
        pending: Pending | None = None
        rid = 0
        op, value, buffers = NEXT, None, args[1]
        finished = False
        inbox: _Inbox | None = None  # once it prefetched: where answers queue
        # Prefetching is over (or never starts): an asend/athrow, a changed variable,
        # or a stream relayed from another loop (its caller's context is elsewhere).
        lockstep = PREFETCH_ITEMS <= 1 or back is not None
        # The caller's variables as the generator has them (what a step need not carry).
        expected: context.Snapshot | None = None
        item_size = 0.0  # moving average of a yielded value's size, in bytes
        try:
            while True:
                snapshot = context.snapshot()
                if pending is None:  # the first step starts the remote generator
                    fut = loop.create_future()
                    rid = next(self._ids)
                    call = Call(rid, fid, None, args[0], GENERATOR, op, value, snapshot)
                    pending = self._pending[rid] = Pending(rid, fut, call, buffers)
                    self.submit(pending)
                    expected = snapshot
                    answer = await self._answer(pending)
                else:
                    if not lockstep and (op != NEXT or snapshot != expected):
                        lockstep = True  # for good: the exchange is one step per pull now
                    if inbox is None and lockstep:
                        target = self._live_target(rid, pending)
                        pending.future = loop.create_future()
                        self.send_step(target, Step(rid, op, value, snapshot), buffers, pending)
                        answer = await self._answer(pending)
                    else:
                        if inbox is None:
                            inbox = _Inbox()
                            pending.future = inbox
                        if op != NEXT:
                            # Delivered at the yield the generator stopped at, once it
                            # has stopped running ahead; its answer follows the items
                            # it yielded before (none is dropped or reordered).
                            await self._settled(pending, inbox)
                            if self._pending.get(rid) is pending:
                                target = self._live_target(rid, pending)
                                changes = _changes(snapshot, expected)
                                self.send_step(
                                    target, Step(rid, op, value, changes), buffers, pending
                                )
                                expected = snapshot
                        elif lockstep:
                            if not inbox.answers and not pending.owed:
                                target = self._live_target(rid, pending)
                                changes = _changes(snapshot, expected)
                                self.send_step(target, Step(rid, NEXT, None, changes), (), pending)
                                expected = snapshot
                        else:
                            window = PREFETCH_ITEMS
                            if item_size * window > PREFETCH_BYTES:
                                window = max(2, int(PREFETCH_BYTES // item_size))
                            room = window - pending.owed - len(inbox.answers)
                            if 2 * room >= window and self._pending.get(rid) is pending:
                                target = self._live_target(rid, pending)
                                self.send_step(target, Step(rid, NEXT, ahead=room - 1), (), pending)
                        if not inbox.answers and self._pending.get(rid) is not pending:
                            self._live_target(rid, pending)  # raises why it is gone
                        answer = await self._take(pending, inbox)
                reply = answer[0]
                if reply.context:
                    values = context.decode(reply.context)
                    if back is None:
                        context.apply(values, back=True)
                        if not lockstep or inbox is not None:
                            expected = context.snapshot()
                    else:
                        back(values)
                if reply.status != YIELDED:
                    finished = True
                    if reply.status == EXHAUSTED:
                        return
                    _outcome(answer, fn)
                    return
                data = reply.value or b""
                if not lockstep:
                    size = len(data)
                    if answer[1]:
                        size += sum(len(b) for b in answer[1])
                    item_size += (size - item_size) * 0.125
                item = payload.loads(data, "a value yielded by", answer[1], of=fn)
                try:
                    sent = yield item
                except GeneratorExit:
                    raise
                except BaseException as exc:  # athrow(): deliver it to the remote generator
                    op = THROW
                    what = f"the exception thrown into {payload.name_of(fn)}"
                    value, buffers = payload.dumps(exc, what)
                else:
                    if sent is None:
                        op, value, buffers = NEXT, None, ()
                    else:
                        op = SEND
                        what = f"the value sent to {payload.name_of(fn)}"
                        value, buffers = payload.dumps(sent, what)
        finally:
            if pending is not None and not finished and self._pending.get(rid) is pending:
                await self._close_remote(rid, pending)

    def _live_target(self, rid: int, pending: Pending) -> Target:
        """The target of open stream ``rid``, to send its next step to; raises why the
        session is gone if it is."""
        target = pending.target
        if target is None or not target.alive or self._pending.get(rid) is not pending:
            if pending.error is not None:
                raise pending.error  # its worker died between steps, say
            raise protocol.ProtocolError("the remote generator session is gone")
        return target

    async def _take(self, pending: Pending, inbox: _Inbox) -> tuple[Reply, Sequence[bytes]]:
        """The next answer of a prefetching stream; on cancellation, cancel the remote
        side too."""
        try:
            return await inbox.get()
        except asyncio.CancelledError:
            self._gave_up(pending)
            raise

    async def _settled(self, pending: Pending, inbox: _Inbox) -> None:
        """Wait until every answer a prefetching stream is owed has come (the worker has
        stopped running ahead)."""
        try:
            while pending.owed and self._pending.get(pending.id) is pending:
                await inbox.wait()
        except asyncio.CancelledError:
            self._gave_up(pending)
            raise

    async def _close_remote(self, rid: int, pending: Pending) -> None:
        """Close an idle remote generator (its ``finally`` runs there); bounded wait.

        A step cancelled mid-flight needs nothing: the worker closes the
        generator itself and answers CANCELLED. A generator running ahead of a
        prefetching stream gets a ``Cancel``: the worker cancels the step it
        takes, closes the generator, and answers CANCELLED.
        """
        target = pending.target
        fut = pending.future
        if target is None or not target.alive or fut is None:
            return
        if type(fut) is _Inbox:
            if pending.owed:
                self.cancel_remote(pending, rid)
                try:
                    async with asyncio.timeout(self.cancel_grace):
                        while self._pending.get(rid) is pending:
                            await fut.wait()
                except Exception:
                    pass
                return
        elif not fut.done():
            return
        pending.future = asyncio.get_running_loop().create_future()
        try:
            self.send_step(target, Step(rid, CLOSE), (), pending)
            async with asyncio.timeout(self.cancel_grace):
                await self._answer(pending)
        except Exception:
            pass


#: A stream prefetches up to this many items ahead of its caller, and no more than
#: about ``PREFETCH_BYTES`` of them (by the average size of the items so far).
PREFETCH_ITEMS = 256
PREFETCH_BYTES = 1 << 20


class _Inbox:
    """Stands in for a stream's step future while it prefetches: the answers (or the
    error that ended the session) queue in order, and a caller waiting is woken."""

    __slots__ = ("answers", "waiter")

    def __init__(self) -> None:
        self.answers: deque[Any] = deque()
        self.waiter: asyncio.Future[None] | None = None

    def done(self) -> bool:
        return False

    def set_result(self, answer: tuple[Reply, Sequence[bytes]]) -> None:
        reply = answer[0]
        more = reply.more
        if more is None:
            self.answers.append(answer)
        else:  # several values, one answer each; the context goes with the last
            rid = reply.id
            self.answers.append((Reply(rid, YIELDED, reply.value), answer[1]))
            last = len(more) - 1
            for i, data in enumerate(more):
                ctx = reply.context if i == last else None
                self.answers.append((Reply(rid, YIELDED, data, ctx), ()))
        self._wake()

    def set_exception(self, exc: BaseException) -> None:
        self.answers.append(exc)
        self._wake()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Until the next answer comes."""
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    async def get(self) -> tuple[Reply, Sequence[bytes]]:
        while not self.answers:
            await self.wait()
        answer = self.answers.popleft()
        if isinstance(answer, BaseException):
            raise answer
        return answer


def _changes(
    now: context.Snapshot | None, before: context.Snapshot | None
) -> context.Snapshot | None:
    """The variables the caller set since ``before`` (what the generator has): once a
    stream has prefetched, the generator is ahead of what the caller has seen, so a
    step carries only the caller's own changes, never stale values of the others."""
    if not now:
        return None
    if not before:
        return now
    changed = {key: data for key, data in now.items() if before.get(key) != data}
    return changed or None


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
