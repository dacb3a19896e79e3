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
import pickle
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
    prefetching = False  # an inbox, and not lock-step: a pull takes what is queued
    # The caller's variables as the generator has them (what a step need not carry),
    # and, while it prefetches, when they were last found so: at this count of
    # context.writes, in this task (with no set since, nothing changed).
    expected: context.Snapshot | None = None
    seen_writes, seen_task = -1, None
    first_size = 0  # of the first value, to size the window before more come
    # asyncio.current_tasks.get(loop) without its Python wrapper (3.11): the dict it reads.
    current_tasks = asyncio.tasks._current_tasks  # type: ignore[attr-defined]
    loads = pickle.loads
    answer: Any
    try:
        while True:
            if prefetching and op == NEXT:
                # The hot path: a pull that takes the next item queued.
                assert pending is not None and inbox is not None
                writes, task = context.writes, current_tasks.get(loop)
                if writes != seen_writes or task is not seen_task:
                    if context.snapshot() != expected:
                        lockstep, prefetching = True, False  # for good: one step per pull now
                        continue
                    seen_writes, seen_task = writes, task
                answers = inbox.answers
                window = inbox.window
                if 2 * (window - pending.owed - len(answers)) >= window:
                    await _grant(d, rid, pending, inbox)
                if answers:
                    answer = answers.popleft()
                    if type(answer) is bytes:
                        try:
                            item = loads(answer)
                        except Exception:
                            item = payload.loads(answer, "a value yielded by", (), of=fn)
                        answer = None
                    elif isinstance(answer, BaseException):
                        raise answer
                else:
                    if d.request(rid) is not pending:
                        _live_target(d, rid, pending)  # raises why it is gone
                    answer = await _take(d, pending, inbox)
            else:
                snapshot = context.snapshot()
                if pending is None:  # the first step starts the remote generator
                    fut = loop.create_future()
                    call = Call(0, fid, None, args[0], GENERATOR, op, value, snapshot)
                    pending = d.track(fut, call, buffers)
                    rid = pending.id
                    try:
                        d.submit(pending)
                    except BaseException:
                        d.forget(pending)  # refused (a closed pool): nothing to close
                        pending = None
                        raise
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
                        if inbox is None:  # the second pull: prefetching starts
                            inbox = _Inbox(first_size)
                            pending.future = inbox
                            prefetching = True
                            seen_writes, seen_task = context.writes, current_tasks.get(loop)
                            await _grant(d, rid, pending, inbox)
                        elif op != NEXT:
                            # Delivered at the yield the generator stopped at, once it
                            # has stopped running ahead; its answer follows the items
                            # it yielded before (none is dropped or reordered).
                            await _settled(d, pending, inbox)
                            if d.request(rid) is pending:
                                target = _live_target(d, rid, pending)
                                changes = _changes(snapshot, expected)
                                d.send_step(target, Step(rid, op, value, changes), buffers, pending)
                                expected = snapshot
                        elif not inbox.answers and not pending.owed:  # lock-step again
                            target = _live_target(d, rid, pending)
                            changes = _changes(snapshot, expected)
                            d.send_step(target, Step(rid, NEXT, None, changes), (), pending)
                            expected = snapshot
                        if not inbox.answers and d.request(rid) is not pending:
                            _live_target(d, rid, pending)  # raises why it is gone
                        answer = await _take(d, pending, inbox)
            if answer is None:
                pass  # the hot path has the item
            elif type(answer) is bytes:  # a value alone (from the inbox)
                item = payload.loads(answer, "a value yielded by", (), of=fn)
            else:
                reply = answer[0]
                if reply.context:
                    values = context.decode(reply.context)
                    if back is None:
                        context.apply(values, back=True)
                        if not lockstep:  # the caller changed nothing: it has what was sent
                            expected = context.snapshot()
                            seen_writes, seen_task = context.writes, current_tasks.get(loop)
                        elif inbox is not None:  # its own changes are still to be sent
                            expected = {**(expected or {}), **reply.context}
                    else:
                        back(values)
                if reply.status != YIELDED:
                    finished = True
                    if reply.status == EXHAUSTED:
                        return
                    d.outcome(answer, fn)
                    return
                data = reply.value or b""
                if inbox is None and not lockstep:  # a lock-step stream never sizes a window
                    first_size = len(data) + sum(len(b) for b in answer[1])
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


async def _grant(d: Dispatcher, rid: int, pending: Pending, inbox: _Inbox) -> None:
    """Grant the worker steps ahead, up to the stream's window."""
    if d.request(rid) is not pending:
        return
    room = inbox.window - pending.owed - len(inbox.answers)
    target = _live_target(d, rid, pending)
    d.send_step(target, Step(rid, NEXT, ahead=room - 1), (), pending)
    if inbox.answers:
        # Let the loop run once: the link rings the worker for this step now, not
        # once the caller has used up every item already here.
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            d.gave_up(pending)
            raise


def _live_target(d: Dispatcher, rid: int, pending: Pending) -> Target:
    """The target of open stream ``rid``, to send its next step to; raises why the
    session is gone if it is."""
    target = pending.target
    if target is None or not target.alive or d.request(rid) is not pending:
        if pending.error is not None:
            raise pending.error  # its worker died between steps, say
        raise protocol.ProtocolError("the remote generator session is gone")
    return target


async def _take(d: Dispatcher, pending: Pending, inbox: _Inbox) -> Any:
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
            d.cancel_remote(pending)
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
    error that ended the session) queue in order, one entry per item, and a caller
    waiting is woken.

    An entry is a yielded value's pickle (``bytes``) when it has nothing else; an
    answer ``(Reply, buffers)`` when it has out-of-band buffers or a context, and for
    the final answer; or the exception that ended the session. ``window`` is how many
    items the stream may have ahead, by their average size so far."""

    __slots__ = ("answers", "item_size", "waiter", "window")

    def __init__(self, first_size: int = 0) -> None:
        self.answers: deque[Any] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.item_size = 0.0  # moving average of a yielded value's size, in bytes
        self.window = PREFETCH_ITEMS
        self._sized(first_size, 1)

    def done(self) -> bool:
        return False

    def set_result(self, answer: tuple[Reply, Sequence[bytes]]) -> None:
        reply, buffers = answer
        answers = self.answers
        if reply.status != YIELDED:
            answers.append(answer)
        else:
            value = reply.value or b""
            size = len(value) + sum(len(b) for b in buffers) if buffers else len(value)
            more = reply.more
            if more is None:
                answers.append(answer if buffers or reply.context else value)
                self._sized(size, 1)
            else:  # several values, one entry each; the context goes with the last
                answers.append((Reply(reply.id, YIELDED, value), buffers) if buffers else value)
                if reply.context:
                    answers.extend(more[:-1])
                    answers.append((Reply(reply.id, YIELDED, more[-1], reply.context), ()))
                else:
                    answers.extend(more)
                self._sized(size + sum(map(len, more)), 1 + len(more))
        self._wake()

    def _sized(self, size: int, count: int) -> None:
        """Weigh in ``count`` more values of ``size`` bytes in all; size the window."""
        self.item_size += (size / count - self.item_size) * min(1.0, 0.125 * count)
        if self.item_size * PREFETCH_ITEMS > PREFETCH_BYTES:
            self.window = max(2, int(PREFETCH_BYTES // self.item_size))
        else:
            self.window = PREFETCH_ITEMS

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

    async def get(self) -> Any:
        """The next entry (an exception that ended the session is raised)."""
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
