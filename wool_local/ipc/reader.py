"""The consuming end of a ring: zero-copy frames, released in order, or drained in batches.

Everything read from the ring's memory comes from another process and is checked
before it is used: ``head`` against what the writer may have written, each frame
header against the ring's size, pads against where a writer puts them, and each
spill record's name against the form of this pool's names. Any inconsistency is a
:class:`FrameError` that breaks the ring for good; no input makes a read loop for
longer than one lap of the ring, or map or unlink a file of anyone else's.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable

from .doorbell import Doorbell, PeerWatch
from .errors import FrameError, ProtocolVersionError, RingClosed
from .ring import (
    BULK_MAX,
    DEFAULT_SPIN,
    FRAME_MAGIC,
    FRAME_VERSION,
    H_HEAD,
    H_READER_CLOSED,
    H_READER_WAITING,
    H_TAIL,
    H_WRITER_CLOSED,
    H_WRITER_WAITING,
    KIND_DATA,
    KIND_PAD,
    KIND_SPILL,
    LEN_MASK,
    SPILL_BULK,
    RingEnd,
    align8,
)
from .segment import NAME_MAX, Segment, name_creator, unlink_name

# A spill record: payload size (u64), flags (u8), then the segment's name.
_SPILL_MIN = 9 + 1
_SPILL_MAX = 9 + NAME_MAX


class Frame:
    """One received frame; ``data`` is a view of ring memory valid until :meth:`release`."""

    __slots__ = ("_end", "_reader", "_segment", "data", "released")

    def __init__(
        self, reader: RingReader, end: int, data: memoryview, segment: Segment | None
    ) -> None:
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


class RingReader(RingEnd):
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
        # The release position we last published; the writer never gets more than one
        # capacity ahead of it, which bounds every head we accept.
        self._tail: int = self._hdr[H_TAIL]
        self._pos: int = self._tail
        self._pending: deque[Frame | int] = deque()
        self._broken: FrameError | None = None
        self._bulk: Segment | None = None  # the writer's reusable bulk segment, once seen
        if self._tail % 8:
            self._fail(FrameError(f"ring tail {self._tail} is not on a frame boundary"))

    def has_unread(self) -> bool:
        """A frame waits unread (a cheap look at one shared word; it may be a frame
        :meth:`try_read` then finds invalid)."""
        return bool(self._hdr[H_HEAD] != self._pos)

    def try_read(self) -> Frame | None:
        """The next frame, or None if the ring is empty right now."""
        if self._broken is not None:
            raise self._broken
        hdr = self._hdr
        while True:
            pos = self._pos
            head = hdr[H_HEAD]
            if pos == head:
                if self._closed_and_drained(pos):
                    raise RingClosed("the writer closed this ring")
                if hdr[H_HEAD] != pos:
                    continue  # a last frame landed just before the close
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
                head = hdr[H_HEAD]
                if pos == head:
                    if not handled and self._closed_and_drained(pos):
                        raise RingClosed("the writer closed this ring")
                    if hdr[H_HEAD] != pos:
                        continue  # a last frame landed just before the close
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
            if self._pos != hdr[H_TAIL] and self._broken is None:
                self._advance_tail(self._pos)

    def _closed_and_drained(self, pos: int) -> bool:
        """True once the writer closed and every frame it wrote before is read. The
        writer publishes its last head before the flag; re-reading head after seeing
        the flag (load-load ordered, a fence on aarch64) catches that last frame."""
        hdr = self._hdr
        if not hdr[H_WRITER_CLOSED]:
            return False
        self._fence.publish()
        return hdr[H_HEAD] == pos

    def _header(self, pos: int, head: int) -> tuple[int, int, int, int]:
        """Validate ``head`` (not ``pos``) and the frame header at ``pos``: (offset,
        length, kind, size). The frame lies within the ring and before ``head``."""
        self._fence.publish()  # head load before frame loads (no-op on x86-64)
        cap = self.capacity
        if not pos < head <= self._tail + cap:
            # Behind us, or more than a lap ahead of what we released: no writer put it
            # there, and trusting it would re-read stale frames lap after lap.
            raise self._fail(
                FrameError(
                    f"impossible ring head {head}: read position {pos}, released up to "
                    f"{self._tail}, capacity {cap}"
                )
            )
        off = pos % cap
        word = self._words[off >> 3]
        length = word & LEN_MASK
        if (word >> 32) & 0xFFFF != FRAME_MAGIC:
            raise self._fail(FrameError(f"corrupt frame at ring position {pos}: bad magic"))
        if (word >> 48) & 0xFF != FRAME_VERSION:
            raise self._fail(
                ProtocolVersionError(
                    f"frame at ring position {pos} has version {(word >> 48) & 0xFF}, "
                    f"this build reads {FRAME_VERSION}"
                )
            )
        size = 8 + align8(length)
        if off + size > cap or pos + size > head:
            raise self._fail(
                FrameError(
                    f"truncated frame at ring position {pos}: {length} bytes declared, "
                    f"{min(cap - off, head - pos) - 8} available"
                )
            )
        kind = word >> 56
        if kind == KIND_PAD:
            # A writer pads only the rest of the ring, from past its start: so a pad is
            # always followed by a frame at offset 0, never by another pad.
            if off == 0 or off + size != cap:
                raise self._fail(FrameError(f"corrupt pad at ring position {pos}: {length} bytes"))
        elif kind != KIND_DATA and kind != KIND_SPILL:
            raise self._fail(FrameError(f"corrupt frame at ring position {pos}: kind {kind}"))
        return off, length, kind, size

    def _open_spill(self, pos: int, off: int, length: int) -> tuple[Segment, memoryview]:
        """Map the segment a spill record names: only a name of this pool's form, and
        only a segment the size the writer makes for that record."""
        if not _SPILL_MIN <= length <= _SPILL_MAX:
            raise self._fail(FrameError(f"corrupt spill frame at ring position {pos}"))
        record = bytes(self._data[off + 8 : off + 8 + length])
        size = int.from_bytes(record[:8], "little")
        flags = record[8]
        bulk = flags & SPILL_BULK
        name = record[9:].decode("ascii", "replace")
        if flags & ~SPILL_BULK or name_creator(name) is None:
            raise self._fail(
                FrameError(f"corrupt spill frame at ring position {pos}: {record[8:]!r}")
            )
        if bulk and self._bulk is not None and self._bulk.name == name:
            seg = self._bulk
        else:
            # A one-off segment is exactly the frame's size; a bulk one at most BULK_MAX.
            limit = BULK_MAX if bulk else max(size, 1)
            try:
                seg = Segment.attach(name, unlink=True, populate=True, max_size=limit)
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
        """Names of spill segments in frames not read yet (best effort, never raises).

        Checked as a read checks them (this ends the reader: a failure here marks it
        broken), so a forged record cannot get a file unlinked that is not ours.
        """
        names = []
        pos, head = self._pos, self._hdr[H_HEAD]
        try:
            while pos != head:
                off, length, kind, size = self._header(pos, head)
                if kind == KIND_SPILL and _SPILL_MIN <= length <= _SPILL_MAX:
                    raw = bytes(self._data[off + 17 : off + 8 + length])
                    name = raw.decode("ascii", "replace")
                    if name_creator(name) is not None:
                        names.append(name)
                pos += size
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
        hdr[H_TAIL] = self._tail = tail
        self._fence.full()
        if hdr[H_WRITER_WAITING]:
            self.peer_bell.ring()

    # -- waiting -----------------------------------------------------------

    def spin(self, spin: float) -> bool:
        """Poll for data up to ``spin`` seconds, yielding the CPU between polls."""
        if spin <= 0:
            return False
        hdr = self._hdr
        pos = self._pos
        deadline = time.perf_counter() + spin
        while hdr[H_HEAD] == pos:
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
        hdr[H_READER_WAITING] = 1
        self._fence.full()
        if self._pos != hdr[H_HEAD] or hdr[H_WRITER_CLOSED]:
            hdr[H_READER_WAITING] = 0
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
        self._hdr[H_READER_WAITING] = 0

    def close(self) -> None:
        """Tell the writer nothing more will be read; its writes raise :class:`RingClosed`."""
        self._hdr[H_READER_CLOSED] = 1
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
