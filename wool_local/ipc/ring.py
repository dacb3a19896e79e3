"""A single-producer/single-consumer byte ring in shared memory.

Layout (all fields little-endian u64, producer and consumer fields on
separate cache lines so neither side's writes bounce the other's line)::

    +0    magic | version << 32      +8   capacity
    +64   head   (bytes ever written; producer-owned)
    +72   writer_waiting  +80 writer_closed
    +128  tail   (bytes ever released; consumer-owned)
    +136  reader_waiting  +144 reader_closed
    +256  data[capacity]

Every frame starts on an 8-byte boundary with one header word
``length | 0x574C << 32 | FRAME_VERSION << 48 | kind << 56`` and stays
contiguous in memory: when a frame would cross the end of the data area the
producer writes a PAD frame to the end and starts again at offset 0, so a
reader can always decode straight from ring memory. A frame whose payload
exceeds ``inline_max`` travels in a one-off "spill" segment whose name is
sent through the ring; size is then bounded only by memory.

Wake-up handshake (see ``docs/architecture.md``): the consumer sets
``reader_waiting``, runs a full fence, re-reads ``head`` and only then
sleeps on its doorbell; the producer stores ``head``, runs a full fence and
rings the doorbell only if ``reader_waiting`` is set. With the fences on both
sides at least one of them sees the other's store, so no wake-up is lost; a
busy consumer costs the producer no syscall. Free space works the same way
with the roles swapped.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from .doorbell import Doorbell, PeerWatch
from .errors import FrameError, PeerDied, ProtocolVersionError, RingClosed
from .fence import Fence
from .segment import Segment, make_name, unlink_name

HEADER_SIZE = 256
RING_MAGIC = 0x474E_5257  # "WRNG"
RING_VERSION = 1
FRAME_MAGIC = 0x574C
FRAME_VERSION = 1
KIND_DATA, KIND_PAD, KIND_SPILL = 1, 2, 3

# u64 word indexes into the header.
_MAGIC, _CAPACITY = 0, 1
_HEAD, _WRITER_WAITING, _WRITER_CLOSED = 8, 9, 10
_TAIL, _READER_WAITING, _READER_CLOSED = 16, 17, 18

_SPILL_WORD = (FRAME_MAGIC << 32) | (FRAME_VERSION << 48) | (KIND_SPILL << 56)
_DATA_WORD = (FRAME_MAGIC << 32) | (FRAME_VERSION << 48) | (KIND_DATA << 56)
_PAD_WORD = (FRAME_MAGIC << 32) | (FRAME_VERSION << 48) | (KIND_PAD << 56)
_LEN_MASK = 0xFFFF_FFFF

#: Largest frame that reuses a ring's persistent bulk segment (larger ones get a
#: one-off segment each, so a single huge frame does not pin its memory).
BULK_MAX = 256 << 20
_SPILL_BULK = 1

#: Default bounded spin before sleeping, in seconds.
DEFAULT_SPIN = 20e-6

Buffer = bytes | bytearray | memoryview
Parts = Buffer | Sequence[Buffer]


def ring_size(capacity: int) -> int:
    """Bytes a ring of ``capacity`` data bytes occupies in a segment."""
    return HEADER_SIZE + capacity


def init_ring(buf: memoryview, offset: int, capacity: int) -> None:
    """Format a fresh ring at ``buf[offset:]``; do this once, before either end attaches."""
    if capacity < 64 or capacity % 8:
        raise ValueError(f"ring capacity must be a multiple of 8 and >= 64, got {capacity}")
    if offset % 8 or offset + ring_size(capacity) > len(buf):
        raise ValueError("ring does not fit the buffer at that offset")
    hdr = buf[offset : offset + HEADER_SIZE].cast("Q")
    for i in range(len(hdr)):
        hdr[i] = 0
    hdr[_CAPACITY] = capacity
    hdr[_MAGIC] = RING_MAGIC | (RING_VERSION << 32)
    hdr.release()


def _align8(n: int) -> int:
    return (n + 7) & ~7


def _round_mib(n: int) -> int:
    return (n + (1 << 20) - 1) & ~((1 << 20) - 1)


def _copy_into(dest: memoryview, pos: int, views: Sequence[Buffer]) -> None:
    for v in views:
        n = len(v)
        dest[pos : pos + n] = v
        pos += n


_SINGLE = (bytes, bytearray, memoryview)


def _as_parts(parts: Parts) -> Sequence[Buffer]:
    """Normalise to byte buffers whose ``len()`` is their size in bytes."""
    if type(parts) is bytes or type(parts) is bytearray:
        return (parts,)
    if isinstance(parts, _SINGLE):
        parts = (parts,)
    views: list[Buffer] = []
    for p in parts:
        if type(p) is not bytes and type(p) is not bytearray:
            mv = p if isinstance(p, memoryview) else memoryview(p)
            if mv.format != "B" or mv.ndim != 1:
                mv = mv.cast("B")
            p = mv
        views.append(p)
    return views


class _End:
    """What both ends share: header views, doorbells, peer watch, fences."""

    def __init__(
        self,
        buf: memoryview,
        offset: int,
        bell: Doorbell,
        peer_bell: Doorbell,
        peer: PeerWatch | None,
    ) -> None:
        hdr = buf[offset : offset + HEADER_SIZE].cast("Q")
        word = hdr[_MAGIC]
        if word & 0xFFFF_FFFF != RING_MAGIC:
            hdr.release()
            raise FrameError(f"no ring at offset {offset} (magic {word & 0xFFFF_FFFF:#x})")
        if word >> 32 != RING_VERSION:
            hdr.release()
            raise ProtocolVersionError(
                f"ring layout version {word >> 32}, this build speaks {RING_VERSION}"
            )
        self.capacity: int = hdr[_CAPACITY]
        self._hdr = hdr
        self._data = buf[offset + HEADER_SIZE : offset + HEADER_SIZE + self.capacity]
        self._words = self._data.cast("Q")
        self.bell = bell
        self.peer_bell = peer_bell
        self.peer = peer
        self._fence = Fence()

    def _check_peer(self) -> None:
        if self.peer is not None and not self.peer.alive():
            raise PeerDied(self.peer.pid)

    def _release_views(self) -> None:
        for view in (self._words, self._data, self._hdr):
            try:
                view.release()
            except BufferError:
                pass

    def _sleep_blocking(self, deadline: float | None, what: str) -> None:
        timeout = None if deadline is None else deadline - time.monotonic()
        if timeout is not None and timeout <= 0:
            raise TimeoutError(f"timed out waiting for {what}")
        self.bell.wait(timeout, self.peer.fd if self.peer is not None else None)

    async def _sleep_async(self) -> None:
        if self.peer is not None:
            self.peer.notify(self.bell)
        await self.bell.wait_async()


class RingWriter(_End):
    """The producing end: copies frames in, waits when the ring is full."""

    def __init__(
        self,
        buf: memoryview,
        offset: int,
        *,
        bell: Doorbell,
        peer_bell: Doorbell,
        peer: PeerWatch | None = None,
        inline_max: int | None = None,
    ) -> None:
        super().__init__(buf, offset, bell, peer_bell, peer)
        self._head: int = self._hdr[_HEAD]
        limit = self.capacity // 2 - 8
        self.inline_max = limit if inline_max is None else min(inline_max, limit)
        self._spills: deque[tuple[int, str]] = deque()  # segments the reader may not have yet
        self._bulk: Segment | None = None
        self._bulk_free_at = 0  # ring position after which the reader is done with the bulk
        self.closed = False

    # -- writing -----------------------------------------------------------

    def try_write(self, parts: Parts, wake: bool = True) -> bool:
        """Write one frame made of ``parts`` if there is room; never blocks.

        The frame is visible to the reader at once. With ``wake=False`` a
        sleeping reader is not rung yet: call :meth:`wake_reader` after a batch.
        """
        hdr = self._hdr
        if hdr[_READER_CLOSED]:
            raise RingClosed("the reader closed this ring")
        if self.closed:
            raise RingClosed("this ring was closed for writing")
        views = _as_parts(parts)
        total = len(views[0]) if len(views) == 1 else sum(map(len, views))
        if total > self.inline_max:
            written = self._write_spill(views, total)
        else:
            written = self._write_inline(views, total, _DATA_WORD)
        if written and wake:
            self.wake_reader()
        return written

    def _write_inline(self, views: Sequence[Buffer], total: int, word: int) -> bool:
        hdr = self._hdr
        cap = self.capacity
        need = 8 + _align8(total)
        head = self._head
        free = cap - (head - hdr[_TAIL])
        off = head % cap
        to_end = cap - off
        if need > to_end:
            # The frame must stay contiguous: pad out the end, then retry at 0.
            if free < to_end:
                return False
            self._words[off >> 3] = _PAD_WORD | (to_end - 8)
            head += to_end
            free -= to_end
            off = 0
            if need > free:
                self._publish(head)
                self.wake_reader()  # it must take the pad before the frame can fit
                return False
        elif need > free:
            return False
        _copy_into(self._data, off + 8, views)
        self._words[off >> 3] = word | total
        self._publish(head + need)
        return True

    def _publish(self, head: int) -> None:
        self._fence.publish()  # frame bytes before head (no-op on x86-64)
        self._hdr[_HEAD] = self._head = head
        if self._spills:
            self._forget_spills()

    def wake_reader(self) -> None:
        """Ring the reader's doorbell if it announced that it sleeps."""
        self._fence.full()  # head store before reader_waiting load
        if self._hdr[_READER_WAITING]:
            self.peer_bell.ring()

    def _fits(self, nbytes: int) -> bool:
        """Whether an inline frame of ``nbytes`` payload fits now (pad included)."""
        cap = self.capacity
        need = 8 + _align8(nbytes)
        free = cap - (self._head - self._hdr[_TAIL])
        to_end = cap - self._head % cap
        return free >= (to_end + need if need > to_end else need)

    def _write_spill(self, views: Sequence[Buffer], total: int) -> bool:
        """Send a large frame through shared memory outside the ring.

        Frames up to :data:`BULK_MAX` reuse one "bulk" segment per ring that
        both sides keep mapped: its pages are faulted in once, and a copy into
        them runs at memcpy speed instead of paying a fresh page per 4 KiB. The
        bulk area is reused once the reader released the frame that used it,
        and replaced by a larger one when a frame does not fit. A frame that
        finds it busy, or is larger, gets a one-off segment.
        """
        bulk = self._bulk
        reusable = total <= BULK_MAX and self._hdr[_TAIL] >= self._bulk_free_at
        fresh = False
        if reusable and bulk is not None and bulk.size >= total:
            name = bulk.name
        else:
            name = make_name()
            fresh = True
        flags = _SPILL_BULK if reusable else 0
        record = total.to_bytes(8, "little") + bytes((flags,)) + name.encode()
        # Check ring room first, so a full ring never strands a segment; room only
        # grows while we hold the producer role.
        if not self._fits(len(record)):
            return False
        if fresh:
            size = max(total, 1)
            if reusable:
                old = bulk.size if bulk is not None else 0
                size = min(BULK_MAX, max(_round_mib(total), 2 * old))
            seg = Segment.create(size, name=name)
            if reusable:
                if bulk is not None:
                    bulk.close()  # the reader took it: it released the frame that used it
                self._bulk = bulk = seg
        else:
            seg = bulk  # type: ignore[assignment]
        try:
            _copy_into(seg.buf, 0, views)  # type: ignore[union-attr]
        except BaseException:
            if fresh:
                seg.unlink()  # type: ignore[union-attr]
            raise
        finally:
            if not reusable:
                seg.close()  # type: ignore[union-attr]
        written = self._write_inline((record,), len(record), _SPILL_WORD)
        assert written, "ring room shrank under the only producer"
        if fresh:
            self._spills.append((self._head, name))
        if reusable:
            self._bulk_free_at = self._head
        return True

    def _forget_spills(self) -> None:
        # The reader unlinks a spill segment before releasing its frame.
        tail = self._hdr[_TAIL]
        spills = self._spills
        while spills and spills[0][0] <= tail:
            spills.popleft()

    def free(self) -> int:
        """Bytes currently free in the ring."""
        return self.capacity - (self._head - self._hdr[_TAIL])

    # -- waiting -----------------------------------------------------------

    def arm(self, tail: int) -> bool:
        """Announce a wait for space, where ``tail`` is :meth:`tail` read before the
        failed write. False means the reader moved meanwhile: retry instead of sleeping.
        While armed, the reader rings our doorbell when it frees space."""
        hdr = self._hdr
        hdr[_WRITER_WAITING] = 1
        self._fence.full()
        if hdr[_TAIL] != tail or hdr[_READER_CLOSED]:
            hdr[_WRITER_WAITING] = 0
            return False
        return True

    def disarm(self) -> None:
        self._hdr[_WRITER_WAITING] = 0

    def tail(self) -> int:
        """The reader's release position (pass it to :meth:`arm`)."""
        return self._hdr[_TAIL]

    def write_blocking(self, parts: Parts, timeout: float | None = None) -> None:
        """Write one frame, blocking while the ring is full."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            tail = self._hdr[_TAIL]
            if self.try_write(parts):
                return
            if self.arm(tail):
                try:
                    self._check_peer()
                    self._sleep_blocking(deadline, "ring space")
                finally:
                    self.disarm()

    async def write(self, parts: Parts) -> None:
        """Write one frame, awaiting (not blocking the loop) while the ring is full."""
        while True:
            tail = self._hdr[_TAIL]
            if self.try_write(parts):
                return
            if self.arm(tail):
                try:
                    self._check_peer()
                    await self._sleep_async()
                finally:
                    self.disarm()

    def close(self) -> None:
        """Tell the reader no more frames follow; it sees :class:`RingClosed` after draining."""
        if self.closed:
            return
        self.closed = True
        self._hdr[_WRITER_CLOSED] = 1
        self._fence.full()
        self.peer_bell.ring()

    def discard(self) -> None:
        """Drop this end and unmap its views.

        Spill segments the reader has not taken yet are unlinked only if the
        reader can no longer take them (it closed the ring or died); otherwise
        they stay for it to read after we are gone.
        """
        self._forget_spills()
        reader_gone = self._hdr[_READER_CLOSED] or (self.peer is not None and not self.peer.alive())
        if reader_gone:
            for _, name in self._spills:
                unlink_name(name)
        self._spills.clear()
        if self._bulk is not None:
            self._bulk.close()
            self._bulk = None
        self._release_views()


class Frame:
    """One received frame; ``data`` is a view of ring memory valid until :meth:`release`."""

    __slots__ = ("_end", "_reader", "_segment", "data", "released")

    def __init__(self, reader: RingReader, end: int, data: memoryview, segment: Any) -> None:
        self._reader = reader
        self._end = end
        self._segment = segment
        self.data = data
        self.released = False

    def release(self) -> None:
        """Give the frame's space back to the producer (idempotent)."""
        if not self.released:
            self.released = True
            try:
                self.data.release()
            except BufferError:
                pass
            if self._segment is not None:
                self._segment.close()
                self._segment = None
            self._reader._on_release()

    def __enter__(self) -> Frame:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __len__(self) -> int:
        return self.data.nbytes if not self.released else 0


class RingReader(_End):
    """The consuming end: hands out zero-copy frames, releases space in order."""

    def __init__(
        self,
        buf: memoryview,
        offset: int,
        *,
        bell: Doorbell,
        peer_bell: Doorbell,
        peer: PeerWatch | None = None,
    ) -> None:
        super().__init__(buf, offset, bell, peer_bell, peer)
        self._pos: int = self._hdr[_TAIL]
        self._pending: deque[Frame | int] = deque()
        self._broken: FrameError | None = None
        self._bulk: Segment | None = None  # the writer's reusable bulk segment, once seen

    def try_read(self) -> Frame | None:
        """The next frame, or None if the ring is empty right now."""
        if self._broken is not None:
            raise self._broken
        hdr = self._hdr
        while True:
            pos = self._pos
            head = hdr[_HEAD]
            if pos == head:
                if hdr[_WRITER_CLOSED]:
                    raise RingClosed("the writer closed this ring")
                return None
            off, length, kind, size = self._header(pos, head)
            end = self._pos = pos + size
            if kind == KIND_PAD:
                if self._pending:
                    self._pending.append(end)
                else:
                    self._advance_tail(end)
                continue
            if kind == KIND_DATA:
                frame = Frame(self, end, self._data[off + 8 : off + 8 + length], None)
            else:
                seg, view = self._open_spill(pos, off, length)
                frame = Frame(self, end, view, None if seg is self._bulk else seg)
            self._pending.append(frame)
            return frame

    def drain(self, handler: Callable[[memoryview], object]) -> int:
        """Hand every waiting frame to ``handler``, then release them all at once.

        The view passed to ``handler`` is valid only during the call. One tail
        update (and at most one wake-up of the writer) covers the whole batch,
        so this is the fast path for many small frames. Returns how many frames
        were handled; raises :class:`RingClosed` once the writer closed and
        everything was handled.
        """
        if self._broken is not None:
            raise self._broken
        if self._pending:
            raise RuntimeError("release the frames taken with try_read() before drain()")
        hdr = self._hdr
        data = self._data
        handled = 0
        try:
            while True:
                pos = self._pos
                head = hdr[_HEAD]
                if pos == head:
                    if hdr[_WRITER_CLOSED] and not handled:
                        raise RingClosed("the writer closed this ring")
                    return handled
                off, length, kind, size = self._header(pos, head)
                self._pos = pos + size
                if kind == KIND_PAD:
                    continue
                if kind == KIND_DATA:
                    view = data[off + 8 : off + 8 + length]
                    try:
                        handler(view)
                    finally:
                        view.release()
                else:
                    seg, view = self._open_spill(pos, off, length)
                    try:
                        handler(view)
                    finally:
                        view.release()
                        if seg is not self._bulk:
                            seg.close()
                handled += 1
        finally:
            if self._pos != hdr[_TAIL] and self._broken is None:
                self._advance_tail(self._pos)

    def _header(self, pos: int, head: int) -> tuple[int, int, int, int]:
        """Validate the frame header at ``pos``: (offset, length, kind, size)."""
        self._fence.publish()  # head load before frame loads (no-op on x86-64)
        cap = self.capacity
        off = pos % cap
        word = self._words[off >> 3]
        length = word & _LEN_MASK
        if (word >> 32) & 0xFFFF != FRAME_MAGIC:
            raise self._fail(FrameError(f"corrupt frame at ring position {pos}: bad magic"))
        if (word >> 48) & 0xFF != FRAME_VERSION:
            raise self._fail(
                ProtocolVersionError(
                    f"frame at ring position {pos} has version {(word >> 48) & 0xFF}, "
                    f"this build reads {FRAME_VERSION}"
                )
            )
        size = 8 + _align8(length)
        if off + size > cap or pos + size > head:
            raise self._fail(
                FrameError(
                    f"truncated frame at ring position {pos}: {length} bytes declared, "
                    f"{min(cap - off, head - pos) - 8} available"
                )
            )
        kind = word >> 56
        if kind not in (KIND_DATA, KIND_PAD, KIND_SPILL):
            raise self._fail(FrameError(f"corrupt frame at ring position {pos}: kind {kind}"))
        return off, length, kind, size

    def _open_spill(self, pos: int, off: int, length: int) -> tuple[Segment, memoryview]:
        if length < 11:
            raise self._fail(FrameError(f"corrupt spill frame at ring position {pos}"))
        record = bytes(self._data[off + 8 : off + 8 + length])
        size = int.from_bytes(record[:8], "little")
        bulk = record[8] & _SPILL_BULK
        name = record[9:].decode("ascii", "replace")
        if bulk and self._bulk is not None and self._bulk.name == name:
            seg = self._bulk
        else:
            try:
                seg = Segment.attach(name, unlink=True, populate=True)
            except Exception as exc:
                raise self._fail(
                    FrameError(f"spill segment {name} of frame at position {pos} is gone: {exc}")
                ) from exc
            if bulk:
                if self._bulk is not None:
                    self._bulk.close()  # replaced by a larger one
                self._bulk = seg
        if seg.size < size:
            raise self._fail(
                FrameError(f"truncated spill frame at position {pos}: {size} bytes declared")
            )
        return seg, seg.buf[:size]

    def _unread_spills(self) -> list[str]:
        """Names of spill segments in frames not read yet (best effort, never raises)."""
        names = []
        hdr, cap = self._hdr, self.capacity
        pos, head = self._pos, hdr[_HEAD]
        try:
            while pos < head:
                off = pos % cap
                word = self._words[off >> 3]
                length = word & _LEN_MASK
                if (word >> 32) & 0xFFFF != FRAME_MAGIC:
                    break
                if word >> 56 == KIND_SPILL and length >= 11:
                    names.append(bytes(self._data[off + 17 : off + 8 + length]).decode())
                pos += 8 + _align8(length)
        except Exception:
            pass
        return names

    def _fail(self, exc: FrameError) -> FrameError:
        self._broken = exc
        return exc

    def _on_release(self) -> None:
        pending = self._pending
        end = 0
        while pending:
            first = pending[0]
            if isinstance(first, int):
                end = first
            elif first.released:
                end = first._end
            else:
                break
            pending.popleft()
        if end:
            self._advance_tail(end)

    def _advance_tail(self, tail: int) -> None:
        self._fence.publish()  # frame loads before the tail store (aarch64 load-store)
        hdr = self._hdr
        hdr[_TAIL] = tail
        self._fence.full()
        if hdr[_WRITER_WAITING]:
            self.peer_bell.ring()

    def readable(self) -> bool:
        """True if a frame (or the writer's close) is waiting."""
        hdr = self._hdr
        return self._pos != hdr[_HEAD] or bool(hdr[_WRITER_CLOSED])

    # -- waiting -----------------------------------------------------------

    def spin(self, spin: float) -> bool:
        """Poll for data up to ``spin`` seconds, yielding the CPU between polls."""
        if spin <= 0:
            return False
        hdr = self._hdr
        pos = self._pos
        deadline = time.perf_counter() + spin
        while hdr[_HEAD] == pos:
            if time.perf_counter() >= deadline:
                return False
            # Let a producer that shares this CPU run (never starve it).
            os.sched_yield()
        return True

    def arm(self) -> bool:
        """Announce that we are about to sleep; False means a frame (or the writer's
        close) arrived meanwhile: read instead of sleeping. While armed, the writer
        rings our doorbell on every frame it publishes."""
        hdr = self._hdr
        hdr[_READER_WAITING] = 1
        self._fence.full()
        if self._pos != hdr[_HEAD] or hdr[_WRITER_CLOSED]:
            hdr[_READER_WAITING] = 0
            return False
        return True

    def read_blocking(self, timeout: float | None = None, spin: float = DEFAULT_SPIN) -> Frame:
        """The next frame, blocking (after a bounded spin) until one arrives."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            frame = self.try_read()
            if frame is not None:
                return frame
            if self.spin(spin):
                continue
            if self.arm():
                try:
                    self._check_peer()
                    self._sleep_blocking(deadline, "a frame")
                finally:
                    self.disarm()

    async def read(self, spin: float = 0.0) -> Frame:
        """The next frame, awaiting until one arrives (optionally spinning first)."""
        while True:
            frame = self.try_read()
            if frame is not None:
                return frame
            if self.spin(spin):
                continue
            if self.arm():
                try:
                    self._check_peer()
                    await self._sleep_async()
                finally:
                    self.disarm()

    def disarm(self) -> None:
        self._hdr[_READER_WAITING] = 0

    def close(self) -> None:
        """Tell the writer nothing more will be read; its writes raise :class:`RingClosed`."""
        self._hdr[_READER_CLOSED] = 1
        self._fence.full()
        self.peer_bell.ring()

    def discard(self) -> None:
        """Drop this end: unlink spill segments nobody will read, unmap everything."""
        if self._broken is None:
            for name in self._unread_spills():
                unlink_name(name)
        for item in self._pending:
            if isinstance(item, Frame) and item._segment is not None:
                item.released = True
                item._segment.close()
                item._segment = None
        self._pending.clear()
        if self._bulk is not None:
            self._bulk.close()
            self._bulk = None
        self._release_views()
