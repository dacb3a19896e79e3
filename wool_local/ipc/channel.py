"""A duplex channel: two rings in one segment and one doorbell per side.

Side 0 writes ring 0 and reads ring 1; side 1 the reverse. Each side sleeps
on its own doorbell, for data to read and for space to write alike, and
rings the other side's. Create the channel before ``fork``; then each
process takes its end with :meth:`Channel.end`.

After the rings, :data:`STATUS_WORDS` u64 words are free for the two sides'
own use (``ChannelEnd.status``), for example a progress counter one side
bumps and the other reads; give each word a single writer.
"""

from __future__ import annotations

from .doorbell import Doorbell, PeerWatch
from .reader import RingReader
from .ring import init_ring, ring_size
from .segment import Segment
from .writer import RingWriter

#: Default data capacity of each ring (the pages are touched lazily).
DEFAULT_CAPACITY = 1 << 20
#: Shared u64 words after the rings, free for the two ends to use.
STATUS_WORDS = 8


class Channel:
    """The shared parts of a duplex channel, as created by one process."""

    def __init__(self, segment: Segment, bells: tuple[Doorbell, Doorbell], capacity: int) -> None:
        self.segment = segment
        self.bells = bells
        self.capacity = capacity

    @classmethod
    def create(cls, capacity: int = DEFAULT_CAPACITY) -> Channel:
        seg = Segment.create(2 * ring_size(capacity) + 8 * STATUS_WORDS)
        init_ring(seg.buf, 0, capacity)
        init_ring(seg.buf, ring_size(capacity), capacity)
        return cls(seg, (Doorbell(), Doorbell()), capacity)

    def end(
        self, side: int, *, peer_pid: int | None = None, inline_max: int | None = None
    ) -> ChannelEnd:
        """This process's end; it takes ownership of the mapping and both doorbells."""
        if side not in (0, 1):
            raise ValueError(f"side must be 0 or 1, got {side}")
        return ChannelEnd(self, side, peer_pid, inline_max)

    def close(self) -> None:
        """Release everything without taking an end (the creator after handing off)."""
        self.segment.unlink()
        self.segment.close()
        for bell in self.bells:
            bell.close()


class ChannelEnd:
    """One process's view of a channel: a writer, a reader and its own doorbell."""

    def __init__(
        self, chan: Channel, side: int, peer_pid: int | None, inline_max: int | None
    ) -> None:
        self.segment = chan.segment
        self.bell = chan.bells[side]
        self.peer_bell = chan.bells[1 - side]
        self.peer = PeerWatch(peer_pid) if peer_pid is not None else None
        size = ring_size(chan.capacity)
        buf = chan.segment.buf
        self.writer = RingWriter(
            buf,
            side * size,
            bell=self.bell,
            peer_bell=self.peer_bell,
            peer=self.peer,
            inline_max=inline_max,
        )
        self.reader = RingReader(
            buf, (1 - side) * size, bell=self.bell, peer_bell=self.peer_bell, peer=self.peer
        )
        self.status = buf[2 * size : 2 * size + 8 * STATUS_WORDS].cast("Q")

    def close(self) -> None:
        """Close both rings for the peer, then free every local resource."""
        self.writer.close()
        self.reader.close()
        self.discard()

    def discard(self) -> None:
        """Free local resources without telling the peer (after it died, or in a fork)."""
        self.writer.discard()
        self.reader.discard()
        self.status.release()
        self.segment.unlink()
        self.segment.close()
        self.bell.close()
        self.peer_bell.close()
        if self.peer is not None:
            self.peer.close()
