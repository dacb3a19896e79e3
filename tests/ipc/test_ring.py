"""Frames through a ring between two real processes: order, integrity, waits, failures."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import Callable

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.forking import Rendezvous, fork, join, kill
from tests.helpers import run
from wool_local.ipc import (
    Channel,
    Doorbell,
    FrameError,
    PeerDied,
    ProtocolVersionError,
    RingClosed,
    RingWriter,
    init_ring,
    ring_size,
)
from wool_local.ipc.reader import RingReader
from wool_local.ipc.ring import H_MAGIC, HEADER_SIZE, RingState
from wool_local.ipc.segment import unlink_name
from wool_local.ipc.writer import SpillSegment

CAP = 4096


def _drop_views(end) -> None:
    """Release one end's views of a segment the other end (same process) will close."""
    end.writer.discard()
    end.reader.discard()
    end.status.release()


def corrupt_first_frame_header(chan: Channel, ring: int, change: Callable[[int], int]) -> None:
    """Deliberately damage ring ``ring``'s first frame header (``word = change(word)``),
    writing through the channel's segment at the place the ring layout puts it."""
    at = ring * ring_size(chan.capacity) + HEADER_SIZE
    with chan.segment.buf[at : at + 8] as raw, raw.cast("Q") as word:
        word[0] = change(word[0])


def bulk_of(writer: RingWriter) -> SpillSegment:
    """The writer's bulk segment, which a test expects to exist."""
    bulk = writer.bulk
    assert bulk is not None, "no frame has used the bulk segment yet"
    return bulk


def payload(i: int, size: int) -> bytes:
    return random.Random(i * 7919 + size).randbytes(size)


def produce(chan: Channel, sizes: list[int]) -> None:
    end = chan.end(1, peer_pid=os.getppid())
    for i, size in enumerate(sizes):
        end.writer.write_blocking(payload(i, size), timeout=10)
    end.writer.close()
    end.discard()


def consume_and_verify(chan: Channel, sizes: list[int]) -> None:
    end = chan.end(1, peer_pid=os.getppid())
    for i, size in enumerate(sizes):
        with end.reader.read_blocking(timeout=10) as frame:
            assert frame.data == payload(i, size), f"frame {i} ({size} bytes) differs"
    with pytest.raises(RingClosed):
        end.reader.read_blocking(timeout=10)
    end.discard()


# Sizes around the header, the inline limit (CAP/2 - 8), the capacity and wrap
# points, and far above capacity (spilled).
sizes_strategy = st.lists(
    st.one_of(
        st.integers(0, 64),
        st.integers(CAP // 2 - 40, CAP // 2 + 40),
        st.integers(CAP - 40, CAP + 40),
        st.integers(0, 3 * CAP),
        st.sampled_from([CAP * 25, 1 << 20]),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=sizes_strategy)
def test_given_random_frame_sizes_when_child_produces_then_parent_reads_all_intact_in_order(sizes):
    """Given random frame sizes, when a forked child writes them, then the parent reads
    every frame intact and in order."""
    chan = Channel.create(CAP)
    pid = fork(produce, chan, sizes)
    end = chan.end(0, peer_pid=pid)
    try:
        for i, size in enumerate(sizes):
            with end.reader.read_blocking(timeout=10) as frame:
                assert frame.data == payload(i, size), f"frame {i} ({size} bytes) differs"
        with pytest.raises(RingClosed):
            end.reader.read_blocking(timeout=10)
    finally:
        assert join(pid) == 0
        end.discard()


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sizes=sizes_strategy)
def test_given_random_frame_sizes_when_parent_produces_then_child_verifies_all(sizes):
    """Given random frame sizes, when the parent writes them, then a forked child reads
    every frame intact and in order."""
    chan = Channel.create(CAP)
    pid = fork(consume_and_verify, chan, sizes)
    end = chan.end(0, peer_pid=pid)
    try:
        for i, size in enumerate(sizes):
            end.writer.write_blocking(payload(i, size), timeout=10)
        end.writer.close()
    finally:
        assert join(pid) == 0
        end.discard()


def _fits(state: RingState, cap: int, need: int) -> bool:
    """Whether a frame of ``need`` bytes fits contiguously right now (a pad may be needed)."""
    free = cap - (state.head - state.tail)
    to_end = cap - state.head % cap
    return free >= (to_end + need if need > to_end else need)


def _writer_blocked(state: RingState, cap: int, need: int) -> bool:
    """Whether the writer announced that it waits for space and ``need`` bytes really
    cannot fit. (The flag alone can be up for a moment while it re-checks the tail.)"""
    return state.writer_waiting and not _fits(state, cap, need)


def test_given_a_slow_consumer_when_ring_fills_then_producer_waits_and_nothing_is_lost():
    """Given a consumer that holds frames, when the ring fills, then the producer waits for
    space and every frame still arrives intact."""
    frames = 200
    chan = Channel.create(CAP)
    pid = fork(produce, chan, [1000] * frames)
    end = chan.end(0, peer_pid=pid)
    seen_waiting = 0
    try:
        for i in range(frames):
            frame = end.reader.read_blocking(timeout=10)
            assert frame.data == payload(i, 1000)
            if i % 20 == 0:
                # Hold the frame until the producer is blocked on its next one.
                while not _writer_blocked(end.reader.state(), end.reader.capacity, 1008):
                    os.sched_yield()
                seen_waiting += 1
            frame.release()
        with pytest.raises(RingClosed):
            end.reader.read_blocking(timeout=10)
    finally:
        assert join(pid) == 0
        end.discard()
    assert seen_waiting == frames // 20


def test_given_producer_killed_mid_stream_when_reading_then_peer_died_after_drain():
    """Given a producer SIGKILLed mid-stream, when the reader reads on, then it gets the
    frames written before the death and then PeerDied naming the producer."""
    chan = Channel.create(CAP)
    sync = Rendezvous()

    def child():
        end = chan.end(1, peer_pid=os.getppid())
        end.writer.write_blocking(b"before death")
        sync.ready_and_park()

    pid = fork(child)
    end = chan.end(0, peer_pid=pid)
    try:
        sync.wait_ready()
        assert kill(pid) == -signal.SIGKILL
        with end.reader.read_blocking(timeout=5) as frame:
            assert frame.data == b"before death"
        with pytest.raises(PeerDied) as info:
            end.reader.read_blocking(timeout=5)
        assert info.value.pid == pid
    finally:
        sync.close()
        end.discard()


def parked_peer(chan: Channel, sync: Rendezvous) -> tuple[int, object]:
    """Fork a peer that takes side 1 of ``chan`` and parks; return its pid and our end."""

    def child():
        chan.end(1, peer_pid=os.getppid())
        sync.ready_and_park()

    pid = fork(child)
    return pid, chan.end(0, peer_pid=pid)


def test_given_consumer_killed_when_producer_blocks_on_full_ring_then_peer_died():
    """Given a full ring whose consumer is SIGKILLed, when the producer waits for space,
    then it gets PeerDied, not a hang."""
    chan = Channel.create(CAP)
    sync = Rendezvous()
    pid, end = parked_peer(chan, sync)
    try:
        sync.wait_ready()
        while end.writer.try_write(b"x" * 500):
            pass
        assert kill(pid) == -signal.SIGKILL
        with pytest.raises(PeerDied):
            end.writer.write_blocking(b"x" * 500, timeout=5)
    finally:
        sync.close()
        end.discard()


def test_given_peer_killed_while_awaiting_when_async_read_then_peer_died():
    """Given a coroutine awaiting a frame on uvloop, when the peer is SIGKILLed, then the
    coroutine wakes with PeerDied."""
    chan = Channel.create(CAP)
    sync = Rendezvous()
    pid, end = parked_peer(chan, sync)

    async def main():
        reader = asyncio.ensure_future(end.reader.read())
        await asyncio.sleep(0)
        sync.wait_ready()
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(PeerDied):
            await asyncio.wait_for(reader, 5)

    try:
        run(main)
    finally:
        join(pid)
        sync.close()
        end.discard()


def test_given_two_coroutines_when_ping_pong_over_async_rings_then_every_reply_matches():
    """Given both ends on one uvloop loop, when frames ping-pong through async writes and
    reads, then every reply matches its request."""
    chan = Channel.create(CAP)
    a = chan.end(0)
    b = chan.end(1)

    async def echo():
        while True:
            try:
                frame = await b.reader.read()
            except RingClosed:
                return
            data = bytes(frame.data)
            frame.release()
            await b.writer.write(data)

    async def main():
        task = asyncio.ensure_future(echo())
        for i in range(300):
            msg = payload(i, (i * 37) % (3 * CAP))
            await a.writer.write(msg)
            with await a.reader.read() as frame:
                assert frame.data == msg
        a.writer.close()
        await asyncio.wait_for(task, 5)

    try:
        run(main)
    finally:
        a.discard()
        _drop_views(b)


def test_given_msgpack_frame_when_read_then_decodes_straight_from_ring_memory():
    """Given a msgspec-encoded frame, when it is read, then its view points into the shared
    mapping (no copy), decodes in place, and cannot be read once released."""
    chan = Channel.create(CAP)
    a, b = chan.end(0), chan.end(1)
    try:
        a.writer.write_blocking(msgspec.msgpack.encode({"x": [1, 2, 3]}))
        frame = b.reader.read_blocking(timeout=1)
        assert isinstance(frame.data.obj, type(chan.segment.buf.obj))
        assert msgspec.msgpack.decode(frame.data) == {"x": [1, 2, 3]}
        frame.release()
        with pytest.raises(ValueError):
            frame.data.tobytes()  # released views cannot be read by mistake
    finally:
        a.discard()
        _drop_views(b)


class TestBrokenFrames:
    def setup_method(self):
        self.chan = Channel.create(CAP)
        self.a, self.b = self.chan.end(0), self.chan.end(1)

    def teardown_method(self):
        self.a.discard()
        _drop_views(self.b)

    def _write_then_corrupt_header(self, change: Callable[[int], int]) -> None:
        self.a.writer.write_blocking(b"hello world")
        corrupt_first_frame_header(self.chan, 0, change)

    def test_given_bad_magic_when_reading_then_frame_error_and_ring_stays_failed(self):
        """Given a frame header with a bad magic, when reading, then FrameError is raised,
        and again on every later read."""
        self._write_then_corrupt_header(lambda w: w ^ (0xFF << 32))
        for _ in range(2):
            with pytest.raises(FrameError, match="bad magic"):
                self.b.reader.try_read()

    def test_given_unknown_frame_version_when_reading_then_protocol_version_error(self):
        """Given a frame of another frame version, when reading, then ProtocolVersionError."""
        self._write_then_corrupt_header(lambda w: (w & ~(0xFF << 48)) | (9 << 48))
        with pytest.raises(ProtocolVersionError, match="version 9"):
            self.b.reader.try_read()

    def test_given_length_beyond_head_when_reading_then_truncated_frame_error(self):
        """Given a header that claims more bytes than were written, when reading, then
        FrameError says the frame is truncated."""
        self._write_then_corrupt_header(lambda w: (w & ~0xFFFF_FFFF) | 3000)
        with pytest.raises(FrameError, match="truncated"):
            self.b.reader.try_read()

    def test_given_spill_segment_removed_when_reading_then_frame_error(self):
        """Given a spilled frame whose segment vanished, when reading, then FrameError says
        the segment is gone."""
        self.a.writer.write_blocking(b"z" * (CAP * 2))
        unlink_name(self.a.writer.pending_spills[0])
        with pytest.raises(FrameError, match="is gone"):
            self.b.reader.try_read()

    def test_given_reader_closed_when_writing_then_ring_closed(self):
        """Given a reader that closed the ring, when writing, then RingClosed, not a hang."""
        self.b.reader.close()
        with pytest.raises(RingClosed):
            self.a.writer.write_blocking(b"late", timeout=1)

    def test_given_empty_ring_when_reading_with_timeout_then_timeout_error(self):
        """Given nothing to read from a live peer, when reading with a timeout, then
        TimeoutError, and the reader no longer announces that it sleeps."""
        with pytest.raises(TimeoutError):
            self.b.reader.read_blocking(timeout=0.05)
        assert not self.b.reader.state().reader_waiting


def test_given_ring_of_another_layout_version_when_attaching_then_protocol_version_error():
    """Given ring memory formatted by another layout version, when attaching a reader, then
    ProtocolVersionError."""
    buf = memoryview(bytearray(ring_size(CAP)))
    init_ring(buf, 0, CAP)
    words = buf.cast("Q")
    words[H_MAGIC] += 1 << 32
    bell = Doorbell()
    try:
        with pytest.raises(ProtocolVersionError):
            RingReader(buf, 0, bell=bell, peer_bell=bell)
    finally:
        bell.close()


def test_given_repeated_large_frames_then_one_bulk_segment_is_reused_and_data_intact():
    """Given frames above the inline limit, when written one after another, then they all
    reuse one bulk segment, a larger frame replaces it with a bigger one, and data is intact."""
    chan = Channel.create(CAP)
    a, b = chan.end(0), chan.end(1)
    try:
        names = set()
        for i in range(6):
            msg = payload(i, 300_000 + i)
            a.writer.write_blocking(msg, timeout=5)
            names.add(bulk_of(a.writer).name)
            with b.reader.read_blocking(timeout=5) as frame:
                assert frame.data == msg
            assert a.writer.pending_spills == ()  # released: nothing left for the writer
        assert len(names) == 1
        big = payload(99, 3 << 20)  # larger than the bulk area: it is replaced by a bigger one
        a.writer.write_blocking(big, timeout=5)
        with b.reader.read_blocking(timeout=5) as frame:
            assert frame.data == big
        assert bulk_of(a.writer).name not in names and bulk_of(a.writer).size >= len(big)
    finally:
        a.discard()
        _drop_views(b)


def test_given_spilled_frame_never_read_when_both_ends_discard_then_no_segment_is_left():
    """Given spilled frames the reader never took (one in the bulk segment, one in a one-off
    segment), when both ends discard, then no segment is left (the leak check verifies)."""
    chan = Channel.create(CAP)
    a, b = chan.end(0), chan.end(1)
    a.writer.write_blocking(b"q" * 100_000, timeout=5)
    a.writer.write_blocking(b"r" * 100_000, timeout=5)  # bulk busy: a one-off segment
    a.discard()  # the reader is alive and open: the writer leaves the segments for it
    b.writer.discard()
    b.reader.discard()  # ... and the reader, closing unread, removes them
