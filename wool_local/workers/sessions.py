"""The worker's side of streams: generator sessions, advanced by ``Step`` messages.

A remote async generator is a :class:`Session` in the worker's
:class:`Sessions` table, from the call that starts it to its final answer
(``EXHAUSTED``, ``RAISED`` or ``CANCELLED``). Each step runs in a task (so it
can be cancelled); a task takes the ``NEXT`` steps its caller granted ahead
(a stream's prefetch) and the steps that came meanwhile, in order, and values
yielded quickly while running ahead go out together in one ``Reply``. The
worker service (:mod:`.worker`) starts sessions and owns the tasks; the
caller's side is :mod:`.streams`.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import AsyncGenerator, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, Protocol

from . import context, payload, proxy
from .link import HOLD_BOUND
from .protocol import CANCELLED, CLOSE, EXHAUSTED, NEXT, RAISED, SEND, THROW, YIELDED, Step

#: A generator running ahead sends at most this many values, or about this many
#: bytes of them, in one answer.
HOLD_ITEMS = 32
HOLD_BYTES = 32 << 10


class _Reply(Protocol):
    def __call__(
        self,
        rid: int,
        status: int,
        value: bytes | None = None,
        buffers: Sequence[Any] = (),
        snapshot: dict[str, bytes] | None = None,
        more: list[bytes] | None = None,
    ) -> None: ...


@dataclass(eq=False)
class Session:
    """One remote async generator: the generator, the context its steps run in, the
    proxy lease its dispatch's binding holds (its own bindings are in the LeaseBook,
    under its request id, until it ends), and the variable values both sides agree
    on (so only what the generator changes travels back)."""

    gen: AsyncGenerator[Any, Any]
    context: contextvars.Context
    lease: bytes | None
    synced: dict[str, Any] = field(default_factory=dict)
    #: A task is taking its steps; steps that come meanwhile wait for it (in order).
    busy: bool = False
    #: ``NEXT`` steps the caller granted beyond the one being taken (its prefetch).
    ahead: int = 0
    #: Other steps that came while it was busy: ``(op, value, buffers, ahead)``.
    queued: deque[tuple[int, bytes | None, Sequence[bytes], int]] = field(default_factory=deque)
    #: Values yielded running ahead, held to go out together in one ``Reply``.
    held: list[bytes] = field(default_factory=list)
    held_bytes: int = 0
    last_yield: float = 0.0  # when it last yielded (perf_counter)
    #: ``context.writes`` when ``synced`` was last brought up to date (as it reads the
    #: same, nothing was set since: the next value carries no context).
    seen_writes: int = -1


def sync_back(synced: dict[str, Any]) -> dict[str, bytes] | None:
    """What the routine changed in its context, for the caller (and now in sync)."""
    snapshot, changed = context.encode_back(synced)
    synced.update(changed)
    return snapshot


class Sessions:
    """A worker's generator sessions by request id.

    ``reply`` answers a request; ``spawn(rid, coro, ctx)`` runs a step as the
    worker's task for ``rid`` (at ``-rid``, a generator being closed); ``book``
    holds each session's frame until it ends.
    """

    def __init__(
        self,
        reply: _Reply,
        spawn: Callable[[int, Coroutine[Any, Any, None], contextvars.Context | None], None],
        book: proxy.LeaseBook,
    ) -> None:
        self._reply = reply
        self._spawn = spawn
        self._book = book
        self._table: dict[int, Session] = {}
        self.loop: asyncio.AbstractEventLoop | None = None  # set when the worker serves
        self.push: Callable[[], None] | None = None

    def __contains__(self, rid: int) -> bool:
        return rid in self._table

    async def start(
        self,
        rid: int,
        gen: AsyncGenerator[Any, Any],
        ctx: contextvars.Context,
        lease: bytes | None,
        synced: dict[str, Any],
        op: int,
        value: bytes | None,
    ) -> None:
        """Open session ``rid`` for ``gen`` and take its first step (in the task of the
        call that started it, which runs in ``ctx``)."""
        self._table[rid] = Session(gen, ctx, lease, synced)
        task = asyncio.current_task()
        if await self._step(rid, op, value, []) and task and task.cancelling():
            self.end(rid, CANCELLED, close=True)  # it caught the cancel, yielded

    def step(self, step: Step, buffers: Sequence[bytes]) -> None:
        """A ``Step`` from the caller: take it now, or after the steps being taken."""
        session = self._table.get(step.id)
        if session is not None and step.context:
            try:
                # The caller's changes; not its __proxy__, which travelled at dispatch
                # (the generator may have set its own since).
                values = context.decode(step.context, step=True)
                session.context.run(context.apply, values)
            except BaseException as exc:
                self.end(step.id, RAISED, payload.dumps_exception(exc), close=True)
                return
            session.synced.update(values)
        if session is not None and session.busy:
            # A step is being taken (the caller prefetches, or granted more while
            # the worker runs ahead): this one follows it, in the same task.
            if step.op == NEXT and not session.queued:
                session.ahead += 1 + step.ahead
            else:
                session.queued.append((step.op, step.value, buffers, step.ahead))
            return
        ctx = session.context if session is not None else None
        self._spawn(step.id, self._steps(step.id, step.op, step.value, buffers, step.ahead), ctx)

    def end(
        self,
        rid: int,
        status: int,
        value: bytes | None = None,
        snapshot: dict[str, bytes] | None = None,
        *,
        close: bool = False,
    ) -> None:
        """The one way a generator session ends: it leaves the table, gives its lease
        back, and its caller gets ``status``. With ``close``, the generator is closed
        first (its ``finally`` runs), in a task of its own, then the answer goes."""
        live = self._table.get(rid)
        if live is not None and live.held:
            self._flush_held(rid, live)  # what it yielded goes before its end
        session = self._drop(rid)
        if close and session is not None:
            self._spawn(-rid, self._close_then_reply(session.gen, rid, status, value), None)
        else:
            self._reply(rid, status, value, (), snapshot)

    async def close_all(self) -> None:
        """The worker stops: close every session's generator (bounded), answering none."""
        sessions = list(self._table.values())
        self._table.clear()
        for session in sessions:
            try:
                async with asyncio.timeout(1):
                    await session.gen.aclose()
            except BaseException:
                pass

    def _drop(self, rid: int) -> Session | None:
        """Take session ``rid`` out of the table and give its lease back."""
        session = self._table.pop(rid, None)
        if session is not None:
            self._book.end_frame(rid, session.lease)
        return session

    async def _close_then_reply(
        self, gen: AsyncGenerator[Any, Any], rid: int, status: int, value: bytes | None
    ) -> None:
        try:
            await gen.aclose()
        except BaseException:
            pass  # it ends either way; its caller hears ``status``
        finally:
            self._reply(rid, status, value)

    async def _steps(
        self, rid: int, op: int, value: bytes | None, buffers: Sequence[bytes], ahead: int
    ) -> None:
        """Take a step, then the ``NEXT`` steps granted ahead and the steps that came
        meanwhile, in order, while the generator yields: a stream the caller prefetches
        costs no task per item."""
        session = self._table.get(rid)
        if session is None:
            await self._step(rid, op, value, buffers)  # answers EXHAUSTED
            return
        session.busy = True
        session.ahead = ahead
        task = asyncio.current_task()
        assert task is not None
        try:
            while await self._step(rid, op, value, buffers):
                if task.cancelling():
                    # Cancelled, and the generator caught it and yielded: it runs
                    # ahead no further; it is closed (its finally runs), as asked.
                    self.end(rid, CANCELLED, close=True)
                    return
                if session.ahead > 0 and not await self._run_ahead(rid, session, task):
                    return
                if not session.queued:
                    return
                op, value, buffers, session.ahead = session.queued.popleft()
        finally:
            session.busy = False
            session.ahead = 0
            session.queued.clear()

    async def _run_ahead(self, rid: int, session: Session, task: asyncio.Task[Any]) -> bool:
        """Take the ``NEXT`` steps granted ahead (more may be granted meanwhile), each
        answered as if asked for; True if the generator is still there to go on with."""
        gen = session.gen
        anext = gen.__anext__
        while session.ahead > 0:
            session.ahead -= 1
            try:
                item = await anext()
            except BaseException as exc:
                self._stopped(rid, session, exc)
                return False
            if not self._answer(rid, session, item):
                return False
            if task.cancelling():
                self.end(rid, CANCELLED, close=True)  # as in _steps
                return False
        return True

    async def _step(self, rid: int, op: int, value: bytes | None, buffers: Sequence[bytes]) -> bool:
        """Take one step and answer it; True if it yielded (the session goes on)."""
        session = self._table.get(rid)
        if session is None:
            self._reply(rid, EXHAUSTED)
            return False
        gen = session.gen
        try:
            if op == NEXT:
                item = await gen.__anext__()
            elif op == SEND:
                item = await gen.asend(payload.loads(value or b"", "the sent value", buffers))
            elif op == THROW:
                item = await gen.athrow(
                    payload.loads(value or b"", "the thrown exception", buffers)
                )
            elif op == CLOSE:
                await gen.aclose()
                raise StopAsyncIteration
            else:
                raise ValueError(f"unknown generator step {op}")
        except BaseException as exc:
            self._stopped(rid, session, exc)
            return False
        return self._answer(rid, session, item)

    def _stopped(self, rid: int, session: Session, exc: BaseException) -> None:
        """A step raised ``exc`` out of the generator: the session ends, as it says."""
        if isinstance(exc, StopAsyncIteration):
            self.end(rid, EXHAUSTED, None, sync_back(session.synced))
        elif isinstance(exc, asyncio.CancelledError):
            self.end(rid, CANCELLED, close=True)
        else:
            error = payload.dumps_exception(exc, session.gen)
            self.end(rid, RAISED, error, sync_back(session.synced))

    def _answer(self, rid: int, session: Session, item: Any) -> bool:
        """Answer a step that yielded ``item``; False if it cannot be sent (the session
        then ends with the error)."""
        try:
            data, out = payload.dumps_small_first(item, "a value yielded by", session.gen)
        except BaseException as exc:  # whatever pickling raised, the caller hears
            error = payload.dumps_failure("a value yielded", session.gen, exc)
            self.end(rid, RAISED, error, close=True)
            return False
        if context.writes == session.seen_writes:
            snapshot = None  # nothing was set since the last value
        else:
            snapshot = sync_back(session.synced)
            session.seen_writes = context.writes
        self._yielded(rid, session, data, out, snapshot)
        return True

    def _yielded(
        self,
        rid: int,
        session: Session,
        data: bytes,
        out: Sequence[Any],
        snapshot: dict[str, bytes] | None,
    ) -> None:
        """Answer a step that yielded. Running ahead of a prefetching caller, values
        that come quickly (less than ``HOLD_BOUND`` apart) are held and go out together
        in one ``Reply`` (``more``): up to ``HOLD_ITEMS`` of them or ``HOLD_BYTES``, until
        one has out-of-band buffers or changed a context variable, or until the loop
        runs its next iteration (the generator awaits: the caller should not wait)."""
        held = session.held
        now = perf_counter()
        quick = now - session.last_yield < HOLD_BOUND
        session.last_yield = now
        if (
            session.ahead
            and quick
            and not out
            and snapshot is None
            and len(held) < HOLD_ITEMS
            and session.held_bytes < HOLD_BYTES
        ):
            held.append(data)
            session.held_bytes += len(data)
            if len(held) == 1 and self.loop is not None:
                self.loop.call_soon(self._flush_held, rid, session)
            return
        if held and not out:
            held.append(data)
            session.held, session.held_bytes = [], 0
            self._reply(rid, YIELDED, held[0], (), snapshot, held[1:])
            if self.push is not None:
                self.push()
            return
        self._flush_held(rid, session)
        self._reply(rid, YIELDED, data, out, snapshot)

    def _flush_held(self, rid: int, session: Session) -> None:
        """Send the values ``session`` holds back, if any, as one answer."""
        held = session.held
        if held:
            session.held, session.held_bytes = [], 0
            self._reply(rid, YIELDED, held[0], (), None, held[1:] or None)


__all__ = ["HOLD_BYTES", "HOLD_ITEMS", "Session", "Sessions", "sync_back"]
