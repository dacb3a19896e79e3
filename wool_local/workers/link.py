"""A message pump: protocol messages over one channel end, driven by an event loop.

The loop watches the end's doorbell with ``add_reader``. Whenever it fires,
the link reads every waiting frame, decodes it in place, hands the message to
its owner, and re-arms the ring before returning to the loop, so the peer
rings only when we may really be asleep. Outgoing messages sent in one loop
iteration go out together as one frame (a ``Batch``) at its end, or sooner
once ``BATCH_BYTES`` are queued, so a burst of calls costs one ring write and
one decode on the other side instead of one per call. If the ring is full,
frames queue in order in a backlog that is flushed as the peer frees space
(the same doorbell tells us).

After sending, a link may spin for the peer's answer, when its owner says one
is due soon (few requests in flight, so the loop has nothing better to do),
about as long as answers have recently taken and at most ``SPIN_WINDOW``: an
answer that comes back in time costs no sleep and no cross-CPU wake-up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from ..ipc import ChannelEnd, FrameError, IpcError, PeerDied, RingClosed
from . import protocol
from .protocol import Batch, Message, ProtocolError

log = logging.getLogger("wool_local")

#: Longest spin after a send, in seconds.
SPIN_WINDOW = 100e-6

#: Queued messages go out as one frame (and the peer is rung) once there are this
#: many, or this many bytes, without waiting for the end of the loop iteration:
#: the peer starts on the first part of a burst while we produce the rest.
BATCH_COUNT = 32
BATCH_BYTES = 32 << 10

#: A worker pushes held-back output before a call starts when it has waited this
#: long (seconds), or when the call before ran this long: a finished result never
#: waits behind the CPU-bound calls its loop iteration runs next, while the answers
#: of tiny calls still batch (see ``StartGate.start``).
HOLD_BOUND = 0.5e-3


def report(msg: Message) -> None:
    # One message's handler failing must not stop the pump (the ring would stay
    # disarmed and later frames unread): report it and go on.
    log.exception("wool_local: handling %s failed", type(msg).__name__)


class LinkLost(Exception):
    """The channel to the peer is unusable (closed, corrupt, or the peer died)."""


class Link:
    """One end of a hub-worker channel, pumped by the running loop."""

    def __init__(
        self,
        end: ChannelEnd,
        on_message: Callable[[Message, Sequence[bytes]], None],
        on_lost: Callable[[BaseException], None],
        *,
        watch_peer: bool = False,
        spin_window: float | None = None,
        expects_answer: Callable[[], bool] = lambda: True,
    ) -> None:
        self.end = end
        self._reader = end.reader
        self._writer = end.writer
        self.on_message = on_message
        #: If set, takes the messages of a whole Batch frame instead (and must
        #: report a failing message itself, like ``_handle`` does).
        self.on_batch: Callable[[Sequence[Message]], None] | None = None
        self._on_lost = on_lost
        self._watch_peer = watch_peer
        self._backlog: deque[Any] = deque()
        self._outbox: list[bytes] = []  # message bodies for the next frame
        self._outbox_bytes = 0
        self._unrung = False  # a frame went out that the peer was not rung for
        #: When output began waiting for a push (``perf_counter``; 0: none waits). Only
        #: a worker's link keeps it (see ``LockedLink.send``); a push clears it.
        self.held_since = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._spin_window = SPIN_WINDOW if spin_window is None else spin_window
        self._expects_answer = expects_answer
        self._sent_at: float | None = None  # when we last sent and expected an answer
        self._latency = 10e-6  # moving average of how long answers take
        self._probe = 0
        self._after_send_scheduled = False
        self.lost: BaseException | None = None

    def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        loop.add_reader(self.end.bell.fd, self._on_bell)
        if self._watch_peer and self.end.peer is not None and self.end.peer.fd >= 0:
            loop.add_reader(self.end.peer.fd, self._on_peer_exit)
        loop.call_soon(self.pump)

    # -- reading -----------------------------------------------------------

    def _on_bell(self) -> None:
        self.end.bell.drain()
        if self._backlog:
            self._flush()
        self.pump()

    def pump(self) -> None:
        """Handle every waiting message, then re-arm so the peer wakes us."""
        reader = self._reader
        try:
            while self.lost is None:
                reader.disarm()
                if reader.drain(self._handle) and self._sent_at is not None:
                    took = time.perf_counter() - self._sent_at
                    self._sent_at = None
                    self._latency += (took - self._latency) * 0.25
                if reader.arm():
                    break
        except (RingClosed, PeerDied, FrameError, ProtocolError, IpcError) as exc:
            self._lose(exc)
            return
        if self._outbox and self.lost is None:
            # What handling these messages sent (the next queued calls, for
            # answers that freed room) goes now, not after the callbacks they
            # scheduled: the peer may be idle until it gets them.
            self.push()

    def _handle(self, view: memoryview) -> None:
        msg, buffers = protocol.decode(view)
        if type(msg) is not Batch:
            self._handle_message(msg, buffers)
            return
        if self.on_batch is not None:
            self.on_batch(msg.messages)
            return
        on_message = self.on_message
        for one in msg.messages:
            try:
                on_message(one, ())
            except Exception:
                report(one)

    def _handle_message(self, msg: Message, buffers: Sequence[bytes]) -> None:
        try:
            self.on_message(msg, buffers)
        except Exception:
            report(msg)

    def _on_peer_exit(self) -> None:
        assert self._loop is not None
        self._loop.remove_reader(self.end.peer.fd)  # type: ignore[union-attr]
        self.pump()  # deliver what it wrote before dying
        if self.lost is None:
            self._lose(PeerDied(self.end.peer.pid))  # type: ignore[union-attr]

    def _lose(self, exc: BaseException) -> None:
        if self.lost is not None:
            return
        self.lost = exc
        self._detach()
        self._on_lost(exc)

    # -- writing -----------------------------------------------------------

    def send(self, message: Message, buffers: Sequence[Any] = ()) -> None:
        """Queue ``message`` for the peer; never blocks (a full ring backs up here).

        The first message of a loop iteration is written at once; the ones
        after it go out together at its end, or every ``BATCH_COUNT``. A
        sleeping peer is rung once per frame at most.
        """
        if self.lost is not None:
            raise LinkLost(f"cannot send: {self.lost}")
        if buffers or not (self._after_send_scheduled or self._loop is None):
            # With buffers, or the first message of this iteration: write it now (a
            # peer spinning for an answer has it at once; a burst batches the rest).
            self._seal()  # keep the order
            self._write(protocol.encode(message, buffers))
        else:
            body = protocol.encode_body(message)
            self._outbox.append(body)
            self._outbox_bytes += len(body)
            if len(self._outbox) >= BATCH_COUNT or self._outbox_bytes >= BATCH_BYTES:
                self.push()  # a long burst: let the peer start on this part
            elif self._loop is None:
                self._seal()
        if not self._after_send_scheduled and self._loop is not None:
            self._after_send_scheduled = True
            self._loop.call_soon(self._after_send)

    def _seal(self) -> None:
        """Write the queued messages as one frame."""
        if self._outbox:
            frame = protocol.batch_frame(self._outbox)
            self._outbox = []
            self._outbox_bytes = 0
            self._write(frame)

    def push(self) -> None:
        """Write the queued messages now and ring the peer if it sleeps (from another
        thread: under the lock that guards this link)."""
        self._seal()
        self.held_since = 0.0
        if self._unrung and self.lost is None:
            self._unrung = False
            self._writer.wake_reader()

    def has_input(self) -> bool:
        """A frame waits unread in the ring (a cheap look: one shared word)."""
        return self._reader.has_unread()

    def _write(self, data: Any) -> None:
        if self._backlog or not self._writer.try_write(data, wake=False):
            self._backlog.append(data)
            self._flush()
        else:
            self._unrung = True

    def send_now(self, message: Message) -> None:
        """Write ``message`` and wake the peer, from any thread (the caller holds
        whatever lock guards this link). Never sleeps: our doorbell belongs to the
        loop, so a full ring leaves the message in the backlog for the loop.
        It may overtake messages still queued for this iteration's frame: only
        messages that do not depend on their order go this way."""
        data = protocol.encode(message)
        if self._backlog or not self._writer.try_write(data):
            self._backlog.append(data)  # keep order; the loop flushes it

    @property
    def reader(self) -> Any:
        return self._reader

    def _flush(self) -> None:
        writer = self._writer
        backlog = self._backlog
        try:
            while backlog:
                tail = writer.tail()
                if writer.try_write(backlog[0]):
                    backlog.popleft()
                elif writer.arm(tail):
                    return  # the reader rings our doorbell when it frees space
            writer.disarm()
        except (RingClosed, IpcError) as exc:
            self._lose(exc)

    def _after_send(self) -> None:
        """Wake the peer for this iteration's messages; maybe spin for its answer."""
        self._after_send_scheduled = False
        if self.lost is not None:
            return
        self.push()
        if self.lost is not None:
            return
        if self._spin_window <= 0 or not self._expects_answer():
            return
        if self._sent_at is None:
            self._sent_at = time.perf_counter()
        # Spin about as long as answers have been taking (a moving average, wake-up
        # included), bounded by the window: a peer that answers in 15 us is caught
        # without either side sleeping, and a peer that needs waking is waited out
        # rather than slept on, which would cost a second wake-up. Answers slower
        # than the window are not spun for, except on every 16th send (to notice
        # that they got fast again).
        latency = self._latency
        if latency > self._spin_window:
            self._probe += 1
            if self._probe % 16:
                return
            spin = self._spin_window
        else:
            spin = min(self._spin_window, 1.5 * latency + 2e-6)
        reader = self._reader
        reader.disarm()  # we are awake: the peer need not ring while we spin
        reader.spin(spin)
        self.pump()  # handles what arrived and re-arms

    # -- teardown ----------------------------------------------------------

    def _detach(self) -> None:
        loop, self._loop = self._loop, None
        if loop is None or loop.is_closed():
            return
        loop.remove_reader(self.end.bell.fd)
        if self.end.peer is not None and self.end.peer.fd >= 0:
            loop.remove_reader(self.end.peer.fd)

    def close(self) -> None:
        """Tell the peer we are done (orderly close) and free local resources."""
        self._detach()
        if self.lost is None:
            self.lost = LinkLost("closed locally")
            try:
                if self._outbox:
                    self._backlog.append(protocol.batch_frame(self._outbox))
                    self._outbox = []
                self._flush_blocking(0.5)
                self.end.close()
                return
            except IpcError:
                pass
        self.end.discard()

    def _flush_blocking(self, timeout: float) -> None:
        while self._backlog:
            self._writer.write_blocking(self._backlog.popleft(), timeout=timeout)
