"""A ring whose memory a test writes as a hostile peer would: forged indices and frames."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

from wool_local.ipc import Doorbell, RingWriter, init_ring, ring_size
from wool_local.ipc.reader import RingReader
from wool_local.ipc.ring import (
    DATA_WORD,
    H_HEAD,
    H_TAIL,
    HEADER_SIZE,
    PAD_WORD,
    SPILL_WORD,
    align8,
)
from wool_local.ipc.segment import SHM_DIR, unlink_name

CAP = 4096


class ForgedRing:
    """One ring in private memory with both ends in this process.

    The writer produces well-formed frames; the test then overwrites header
    words and frame headers the way a corrupt or hostile writer could, and
    reads with the reader.
    """

    def __init__(self, cap: int = CAP) -> None:
        self.cap = cap
        self.buf = memoryview(bytearray(ring_size(cap)))
        init_ring(self.buf, 0, cap)
        self.bells = (Doorbell(), Doorbell())
        self.writer = RingWriter(self.buf, 0, bell=self.bells[0], peer_bell=self.bells[1])
        self.reader = RingReader(self.buf, 0, bell=self.bells[1], peer_bell=self.bells[0])
        self.hdr = self.buf[:HEADER_SIZE].cast("Q")
        self.data = self.buf[HEADER_SIZE:]
        self.words = self.data.cast("Q")

    @property
    def head(self) -> int:
        return self.hdr[H_HEAD]

    @head.setter
    def head(self, value: int) -> None:
        self.hdr[H_HEAD] = value

    @property
    def tail(self) -> int:
        return self.hdr[H_TAIL]

    def put(self, pos: int, word: int, body: bytes = b"") -> int:
        """Write a frame header ``word`` and ``body`` at ring position ``pos`` (no head
        update); returns the position after it."""
        off = pos % self.cap
        self.words[off >> 3] = word
        self.data[off + 8 : off + 8 + len(body)] = body
        return pos + 8 + align8(len(body))

    def put_data(self, pos: int, body: bytes) -> int:
        return self.put(pos, DATA_WORD | len(body), body)

    def put_pad(self, pos: int, length: int) -> int:
        return self.put(pos, PAD_WORD | length) + align8(length)

    def put_spill(self, pos: int, size: int, name: bytes, flags: int = 0) -> int:
        record = size.to_bytes(8, "little") + bytes((flags,)) + name
        return self.put(pos, SPILL_WORD | len(record), record)

    def fill_lap(self, payload: int = 56) -> None:
        """Write and read back one whole lap of data frames, so that the ring's memory
        holds well-formed stale frames everywhere."""
        assert self.cap % (8 + align8(payload)) == 0
        for _ in range(self.cap // (8 + align8(payload))):
            assert self.writer.try_write(b"s" * payload)
        self.reader.drain(len)

    def close(self) -> None:
        """Discard both ends; unlink what the writer made that the reader never took."""
        leftovers = list(self.writer.pending_spills)
        if self.writer.bulk is not None:
            leftovers.append(self.writer.bulk.name)
        self.reader.discard()
        self.writer.discard()
        for name in leftovers:
            unlink_name(name)
        for view in (self.words, self.data, self.hdr):
            view.release()
        for bell in self.bells:
            bell.close()


@contextmanager
def forged_ring(cap: int = CAP) -> Iterator[ForgedRing]:
    ring = ForgedRing(cap)
    try:
        yield ring
    finally:
        ring.close()


@contextmanager
def decoy_file() -> Iterator[str]:
    """A file in /dev/shm that is none of the pool's: yields its shm name ("/decoy-...")."""
    name = f"/decoy-{os.getpid()}-{secrets.token_hex(4)}"
    path = SHM_DIR + name
    with open(path, "wb") as f:
        f.write(b"not yours" * 512)
    try:
        yield name
    finally:
        if os.path.exists(path):
            os.unlink(path)


def shm_exists(name: str) -> bool:
    return os.path.exists(SHM_DIR + name)
