"""The producing end of a ring: copies frames in, spills large ones, waits when full."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from typing import NamedTuple

from .doorbell import Doorbell, PeerWatch
from .errors import RingClosed
from .ring import (
    BULK_MAX,
    DATA_WORD,
    H_HEAD,
    H_READER_CLOSED,
    H_READER_WAITING,
    H_TAIL,
    H_WRITER_CLOSED,
    H_WRITER_WAITING,
    PAD_WORD,
    SPILL_BULK,
    SPILL_WORD,
    Buffer,
    Parts,
    RingEnd,
    align8,
    as_parts,
    copy_into,
    round_mib,
)
from .segment import Segment, make_name, unlink_name


class SpillSegment(NamedTuple):
    """A segment that carries frames too large for the ring: its name and size in bytes."""

    name: str
    size: int


class RingWriter(RingEnd):
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
        self._head: int = self._hdr[H_HEAD]
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
        if hdr[H_READER_CLOSED]:
            raise RingClosed("the reader closed this ring")
        if self.closed:
            raise RingClosed("this ring was closed for writing")
        views = as_parts(parts)
        total = len(views[0]) if len(views) == 1 else sum(map(len, views))
        if total > self.inline_max:
            written = self._write_spill(views, total)
        else:
            written = self._write_inline(views, total, DATA_WORD)
        if written and wake:
            self.wake_reader()
        return written

    def _write_inline(self, views: Sequence[Buffer], total: int, word: int) -> bool:
        hdr = self._hdr
        cap = self.capacity
        need = 8 + align8(total)
        head = self._head
        free = cap - (head - hdr[H_TAIL])
        off = head % cap
        to_end = cap - off
        if need > to_end:
            # The frame must stay contiguous: pad out the end, then retry at 0.
            if free < to_end:
                return False
            self._words[off >> 3] = PAD_WORD | (to_end - 8)
            head += to_end
            free -= to_end
            off = 0
            if need > free:
                self._publish(head)
                self.wake_reader()  # it must take the pad before the frame can fit
                return False
        elif need > free:
            return False
        copy_into(self._data, off + 8, views)
        self._words[off >> 3] = word | total
        self._publish(head + need)
        return True

    def _publish(self, head: int) -> None:
        self._fence.publish()  # frame bytes before head (no-op on x86-64)
        self._hdr[H_HEAD] = self._head = head
        if self._spills:
            self._forget_spills()

    def wake_reader(self) -> None:
        """Ring the reader's doorbell if it announced that it sleeps."""
        self._fence.full()  # head store before reader_waiting load
        if self._hdr[H_READER_WAITING]:
            self.peer_bell.ring()

    def _fits(self, nbytes: int) -> bool:
        """Whether an inline frame of ``nbytes`` payload fits now (pad included)."""
        cap = self.capacity
        need = 8 + align8(nbytes)
        free = cap - (self._head - self._hdr[H_TAIL])
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
        reusable = total <= BULK_MAX and self._hdr[H_TAIL] >= self._bulk_free_at
        # The segment this frame goes to if it exists already: the bulk one, when
        # it is free and large enough; otherwise a fresh one is made below.
        seg = bulk if reusable and bulk is not None and bulk.size >= total else None
        fresh = seg is None
        name = make_name() if seg is None else seg.name
        flags = SPILL_BULK if reusable else 0
        record = total.to_bytes(8, "little") + bytes((flags,)) + name.encode()
        # Check ring room first, so a full ring never strands a segment; room only
        # grows while we hold the producer role.
        if not self._fits(len(record)):
            return False
        if seg is None:
            size = max(total, 1)
            if reusable:
                old = bulk.size if bulk is not None else 0
                size = min(BULK_MAX, max(round_mib(total), 2 * old))
            seg = Segment.create(size, name=name)
            if reusable:
                if bulk is not None:
                    bulk.close()  # the reader took it: it released the frame that used it
                self._bulk = seg
        try:
            copy_into(seg.buf, 0, views)
        except BaseException:
            if fresh:
                seg.unlink()
            raise
        finally:
            if not reusable:
                seg.close()
        written = self._write_inline((record,), len(record), SPILL_WORD)
        assert written, "ring room shrank under the only producer"
        if fresh:
            self._spills.append((self._head, name))
        if reusable:
            self._bulk_free_at = self._head
        return True

    @property
    def bulk(self) -> SpillSegment | None:
        """The ring's reusable bulk segment; None until a frame needed one.

        For debugging and tests; the segment stays owned by this end.
        """
        bulk = self._bulk
        return None if bulk is None else SpillSegment(bulk.name, bulk.size)

    @property
    def pending_spills(self) -> tuple[str, ...]:
        """Names of the spill segments this end created for frames the reader has not
        released yet (the reader unlinks each when it maps it). For debugging and tests."""
        tail = self._hdr[H_TAIL]
        return tuple(name for end, name in self._spills if end > tail)

    def _forget_spills(self) -> None:
        # The reader unlinks a spill segment when it maps it, before releasing its
        # frame; the name is unlinked here too (gone already: a no-op), because a
        # corrupt or forged ring can release a frame whose spill was never mapped,
        # and its segment would then outlive the channel. One syscall per spill,
        # which is a frame of hundreds of kilobytes or more.
        tail = self._hdr[H_TAIL]
        spills = self._spills
        while spills and spills[0][0] <= tail:
            unlink_name(spills.popleft()[1])

    # -- waiting -----------------------------------------------------------

    def arm(self, tail: int) -> bool:
        """Announce a wait for space, where ``tail`` is :meth:`tail` read before the
        failed write. False means the reader moved meanwhile: retry instead of sleeping.
        While armed, the reader rings our doorbell when it frees space."""
        hdr = self._hdr
        hdr[H_WRITER_WAITING] = 1
        self._fence.full()
        if hdr[H_TAIL] != tail or hdr[H_READER_CLOSED]:
            hdr[H_WRITER_WAITING] = 0
            return False
        return True

    def disarm(self) -> None:
        self._hdr[H_WRITER_WAITING] = 0

    def tail(self) -> int:
        """The reader's release position (pass it to :meth:`arm`)."""
        return self._hdr[H_TAIL]

    def write_blocking(self, parts: Parts, timeout: float | None = None) -> None:
        """Write one frame, blocking while the ring is full."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            tail = self._hdr[H_TAIL]
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
            tail = self._hdr[H_TAIL]
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
        self._hdr[H_WRITER_CLOSED] = 1
        self._fence.full()
        self.peer_bell.ring()

    def discard(self) -> None:
        """Drop this end and unmap its views.

        Spill segments the reader has not taken yet are unlinked only if the
        reader can no longer take them (it closed the ring or died); otherwise
        they stay for it to read after we are gone.
        """
        self._forget_spills()
        reader_gone = self._hdr[H_READER_CLOSED] or (
            self.peer is not None and not self.peer.alive()
        )
        if reader_gone:
            for _, name in self._spills:
                unlink_name(name)
        self._spills.clear()
        if self._bulk is not None:
            self._bulk.close()
            self._bulk = None
        self._release_views()
