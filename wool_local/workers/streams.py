"""The calling side of a stream: a remote async generator, pulled step by step.

:func:`stream` is what :meth:`Dispatcher.stream <.dispatch.Dispatcher.stream>`
returns: an async generator whose first pull sends ``Call(kind=GENERATOR)`` and
whose every later step is one ``Step``/``Reply`` exchange, on the dispatcher's
requests (its table, its load accounting, its cancellation). While the caller
only pulls, the stream *prefetches*: it grants the worker a window of steps
ahead and the answers queue in an :class:`_Inbox`. The worker's side is
:mod:`.sessions`; docs/architecture.md, "Streams", has the semantics.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import context, crossloop, payload, protocol
from .protocol import CLOSE, EXHAUSTED, GENERATOR, NEXT, SEND, THROW, YIELDED, Call, Reply, Step

if TYPE_CHECKING:
    from .dispatch import Dispatcher, Pending, Target

#: A stream prefetches up to this many items ahead of its caller, and no more than
#: about ``PREFETCH_BYTES`` of them (by the average size of the items so far).
PREFETCH_ITEMS = 256
PREFETCH_BYTES = 1 << 20


def stream(d: Dispatcher, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> AsyncGenerator:
    """Run the async generator function ``fn`` remotely through ``d``, one step per pull."""
    fid = d.encode_fn(fn)
    args_pickled = payload.dumps_args(args, kwargs, fn)
    here = asyncio._get_running_loop()
    if here is not None and d.loop is not None and here is not d.loop:
        # Made on another loop: each step runs on this dispatcher's loop.
        changes: list[dict[str, Any]] = []
        steps = _stream(d, fn, fid, args_pickled, back=changes.append)
        return crossloop.relay_stream(d.loop, steps, changes)
    return _stream(d, fn, fid, args_pickled)


async def _stream(
    d: Dispatcher,
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
    if d.loop is None:
        d.loop = loop
    elif loop is not d.loop:
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
                call = Call(0, fid, None, args[0], GENERATOR, op, value, snapshot)
                pending = d.track(fut, call, buffers)
                rid = pending.id
                d.submit(pending)
                expected = snapshot
                answer = await d.answer(pending)
            else:
                if not lockstep and (op != NEXT or snapshot != expected):
                    lockstep = True  # for good: the exchange is one step per pull now
                if inbox is None and lockstep:
                    target = _live_target(d, rid, pending)
                    pending.future = loop.create_future()
                    d.send_step(target, Step(rid, op, value, snapshot), buffers, pending)
                    answer = await d.answer(pending)
                else:
                    if inbox is None:
                        inbox = _Inbox()
                        pending.future = inbox
                    if op != NEXT:
                        # Delivered at the yield the generator stopped at, once it
                        # has stopped running ahead; its answer follows the items
                        # it yielded before (none is dropped or reordered).
                        await _settled(d, pending, inbox)
                        if d.request(rid) is pending:
                            target = _live_target(d, rid, pending)
                            changes = _changes(snapshot, expected)
                            d.send_step(target, Step(rid, op, value, changes), buffers, pending)
                            expected = snapshot
                    elif lockstep:
                        if not inbox.answers and not pending.owed:
                            target = _live_target(d, rid, pending)
                            changes = _changes(snapshot, expected)
                            d.send_step(target, Step(rid, NEXT, None, changes), (), pending)
                            expected = snapshot
                    else:
                        window = PREFETCH_ITEMS
                        if item_size * window > PREFETCH_BYTES:
                            window = max(2, int(PREFETCH_BYTES // item_size))
                        room = window - pending.owed - len(inbox.answers)
                        if 2 * room >= window and d.request(rid) is pending:
                            target = _live_target(d, rid, pending)
                            d.send_step(target, Step(rid, NEXT, ahead=room - 1), (), pending)
                    if not inbox.answers and d.request(rid) is not pending:
                        _live_target(d, rid, pending)  # raises why it is gone
                    answer = await _take(d, pending, inbox)
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
                d.outcome(answer, fn)
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
        if pending is not None and not finished and d.request(rid) is pending:
            await _close_remote(d, rid, pending)


def _live_target(d: Dispatcher, rid: int, pending: Pending) -> Target:
    """The target of open stream ``rid``, to send its next step to; raises why the
    session is gone if it is."""
    target = pending.target
    if target is None or not target.alive or d.request(rid) is not pending:
        if pending.error is not None:
            raise pending.error  # its worker died between steps, say
        raise protocol.ProtocolError("the remote generator session is gone")
    return target


async def _take(d: Dispatcher, pending: Pending, inbox: _Inbox) -> tuple[Reply, Sequence[bytes]]:
    """The next answer of a prefetching stream; on cancellation, cancel the remote
    side too."""
    try:
        return await inbox.get()
    except asyncio.CancelledError:
        d.gave_up(pending)
        raise


async def _settled(d: Dispatcher, pending: Pending, inbox: _Inbox) -> None:
    """Wait until every answer a prefetching stream is owed has come (the worker has
    stopped running ahead)."""
    try:
        while pending.owed and d.request(pending.id) is pending:
            await inbox.wait()
    except asyncio.CancelledError:
        d.gave_up(pending)
        raise


async def _close_remote(d: Dispatcher, rid: int, pending: Pending) -> None:
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
            d.cancel_remote(pending, rid)
            try:
                async with asyncio.timeout(d.cancel_grace):
                    while d.request(rid) is pending:
                        await fut.wait()
            except Exception:
                pass
            return
    elif not fut.done():
        return
    pending.future = asyncio.get_running_loop().create_future()
    try:
        d.send_step(target, Step(rid, CLOSE), (), pending)
        async with asyncio.timeout(d.cancel_grace):
            await d.answer(pending)
    except Exception:
        pass


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


__all__ = ["PREFETCH_BYTES", "PREFETCH_ITEMS", "stream"]
