"""A single-producer/single-consumer byte ring in shared memory: layout and shared parts.

The producing end is :class:`~wool_local.ipc.writer.RingWriter`, the consuming end
:class:`~wool_local.ipc.reader.RingReader`.

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
exceeds ``inline_max`` travels outside the ring, and the name of the segment
holding it is sent through the ring: the writer reuses one bulk segment per
ring (replaced by a larger one when a frame does not fit it) and makes a
one-off segment only when the bulk one is still in use or the frame exceeds
:data:`BULK_MAX`. Size is then bounded only by memory.

Wake-up handshake (see ``docs/architecture.md``): the consumer sets
``reader_waiting``, runs a full fence, re-reads ``head`` and only then
sleeps on its doorbell; the producer stores ``head``, runs a full fence and
rings the doorbell only if ``reader_waiting`` is set. With the fences on both
sides at least one of them sees the other's store, so no wake-up is lost; a
busy consumer costs the producer no syscall. Free space works the same way
with the roles swapped.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import NamedTuple

from .doorbell import Doorbell, PeerWatch
from .errors import FrameError, PeerDied, ProtocolVersionError
from .fence import Fence

HEADER_SIZE = 256
RING_MAGIC = 0x474E_5257  # "WRNG"
RING_VERSION = 1
FRAME_MAGIC = 0x574C
FRAME_VERSION = 1
KIND_DATA, KIND_PAD, KIND_SPILL = 1, 2, 3

# u64 word indexes into the header.
H_MAGIC, H_CAPACITY = 0, 1
H_HEAD, H_WRITER_WAITING, H_WRITER_CLOSED = 8, 9, 10
H_TAIL, H_READER_WAITING, H_READER_CLOSED = 16, 17, 18

SPILL_WORD = (FRAME_MAGIC << 32) | (FRAME_VERSION << 48) | (KIND_SPILL << 56)
DATA_WORD = (FRAME_MAGIC << 32) | (FRAME_VERSION << 48) | (KIND_DATA << 56)
PAD_WORD = (FRAME_MAGIC << 32) | (FRAME_VERSION << 48) | (KIND_PAD << 56)
LEN_MASK = 0xFFFF_FFFF

#: Largest frame that reuses a ring's persistent bulk segment (larger ones get a
#: one-off segment each, so a single huge frame does not pin its memory).
BULK_MAX = 256 << 20
SPILL_BULK = 1

#: How long :meth:`~wool_local.ipc.reader.RingReader.read_blocking` polls by default
#: before sleeping, in seconds. The async ``read`` spins only when asked; the
#: worker layer's links spin adaptively, up to ``SPIN_WINDOW`` (100 us) in
#: ``workers/link.py``.
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
    hdr[H_CAPACITY] = capacity
    hdr[H_MAGIC] = RING_MAGIC | (RING_VERSION << 32)
    hdr.release()


def align8(n: int) -> int:
    return (n + 7) & ~7


def round_mib(n: int) -> int:
    return (n + (1 << 20) - 1) & ~((1 << 20) - 1)


def copy_into(dest: memoryview, pos: int, views: Sequence[Buffer]) -> None:
    for v in views:
        n = len(v)
        dest[pos : pos + n] = v
        pos += n


_SINGLE = (bytes, bytearray, memoryview)


def as_parts(parts: Parts) -> Sequence[Buffer]:
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


class RingState(NamedTuple):
    """The header words of a ring, as :meth:`RingEnd.state` reads them."""

    head: int  # bytes ever written
    tail: int  # bytes ever released
    writer_waiting: bool  # the writer sleeps (or is about to) until space is freed
    writer_closed: bool
    reader_waiting: bool  # the reader sleeps (or is about to) until a frame arrives
    reader_closed: bool


class RingEnd:
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
        word = hdr[H_MAGIC]
        if word & 0xFFFF_FFFF != RING_MAGIC:
            hdr.release()
            raise FrameError(f"no ring at offset {offset} (magic {word & 0xFFFF_FFFF:#x})")
        if word >> 32 != RING_VERSION:
            hdr.release()
            raise ProtocolVersionError(
                f"ring layout version {word >> 32}, this build speaks {RING_VERSION}"
            )
        capacity = hdr[H_CAPACITY]
        if capacity < 64 or capacity % 8 or offset + ring_size(capacity) > len(buf):
            # Every index the ends compute is taken modulo this: it must be a real size.
            hdr.release()
            raise FrameError(f"ring at offset {offset} claims an impossible capacity {capacity}")
        self.capacity: int = capacity
        self._hdr = hdr
        self._data = buf[offset + HEADER_SIZE : offset + HEADER_SIZE + self.capacity]
        self._words = self._data.cast("Q")
        self.bell = bell
        self.peer_bell = peer_bell
        self.peer = peer
        self._fence = Fence()

    def state(self) -> RingState:
        """The ring's header words now, for debugging and tests.

        Each word is read on its own while the other end may be moving: the
        result is not one consistent snapshot.
        """
        hdr = self._hdr
        return RingState(
            head=hdr[H_HEAD],
            tail=hdr[H_TAIL],
            writer_waiting=bool(hdr[H_WRITER_WAITING]),
            writer_closed=bool(hdr[H_WRITER_CLOSED]),
            reader_waiting=bool(hdr[H_READER_WAITING]),
            reader_closed=bool(hdr[H_READER_CLOSED]),
        )

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
