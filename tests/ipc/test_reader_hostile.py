"""A corrupt or hostile writer cannot hang, crash or misuse the reading process.

Each test forges what another process could write into a ring (indices, frame
headers, pads, spill records) and checks that the reader answers with
:class:`FrameError` instead of looping, re-reading stale frames, or opening
and unlinking files that are not the pool's.
"""

from __future__ import annotations

import os

import pytest

from tests.forking import fork, join
from tests.ipc.forge import CAP, decoy_file, forged_ring, shm_exists
from wool_local.ipc import (
    Doorbell,
    FrameError,
    Segment,
    SegmentError,
    SlotTable,
    SlotTableError,
    init_ring,
    ring_size,
)
from wool_local.ipc.reader import RingReader
from wool_local.ipc.ring import H_CAPACITY, H_TAIL, SPILL_BULK
from wool_local.ipc.segment import make_name, name_creator, unlink_name
from wool_local.workers import protocol


def test_given_head_fifty_laps_ahead_over_stale_frames_when_draining_then_frame_error():
    """Given a ring whose memory holds a lap of stale frames, when the head claims fifty
    laps more than were written, then drain raises FrameError without handling any
    stale frame (it used to hand out each one fifty times)."""
    with forged_ring() as ring:
        ring.fill_lap()
        ring.head = ring.tail + 50 * CAP
        seen: list[int] = []
        with pytest.raises(FrameError, match="impossible ring head"):
            ring.reader.drain(lambda view: seen.append(len(view)))
        assert seen == []


def test_given_head_behind_the_reader_when_reading_then_frame_error():
    """Given a head that went backwards past what was read, when reading, then
    FrameError, and the ring stays failed."""
    with forged_ring() as ring:
        ring.fill_lap()
        ring.head = ring.tail - 64
        for _ in range(2):
            with pytest.raises(FrameError, match="impossible ring head"):
                ring.reader.try_read()


def test_given_ring_of_pads_and_a_far_head_when_reading_then_frame_error_not_a_spin():
    """Given a ring that is one pad from start to end and a head a thousand laps ahead
    (an endless loop over padding, bounded here), when reading, then FrameError at once."""
    with forged_ring() as ring:
        ring.put_pad(0, CAP - 8)
        ring.head = 1000 * CAP
        with pytest.raises(FrameError):
            ring.reader.try_read()
        assert ring.tail == 0  # nothing was skipped


def test_given_pad_that_does_not_end_at_the_ring_end_when_reading_then_frame_error():
    """Given a pad that stops short of the ring's end (no writer pads like that), when
    reading, then FrameError."""
    with forged_ring() as ring:
        end = ring.put_pad(0, 56)
        end = ring.put_data(end, b"after the pad")
        ring.head = end
        with pytest.raises(FrameError, match="corrupt pad"):
            ring.reader.try_read()


def test_given_misaligned_tail_when_attaching_a_reader_then_reads_fail_with_frame_error():
    """Given a ring whose tail is not on a frame boundary, when a reader attaches and
    reads, then FrameError."""
    with forged_ring() as ring:
        ring.hdr[H_TAIL] = 12
        ring.head = 64
        bell = Doorbell()
        reader = RingReader(ring.buf, 0, bell=bell, peer_bell=bell)
        try:
            with pytest.raises(FrameError, match="frame boundary"):
                reader.try_read()
        finally:
            reader.discard()
            bell.close()


def test_given_capacity_beyond_the_mapping_when_attaching_then_frame_error():
    """Given a ring header that claims more data than the mapping holds, when a reader
    attaches, then FrameError (rather than index errors on later reads)."""
    buf = memoryview(bytearray(ring_size(CAP)))
    init_ring(buf, 0, CAP)
    buf.cast("Q")[H_CAPACITY] = 1 << 40
    bell = Doorbell()
    try:
        with pytest.raises(FrameError, match="impossible capacity"):
            RingReader(buf, 0, bell=bell, peer_bell=bell)
    finally:
        bell.close()


# -- spill records ---------------------------------------------------------------


@pytest.mark.parametrize("bulk", [0, SPILL_BULK])
def test_given_spill_record_naming_an_unrelated_file_when_reading_then_frame_error_and_it_stays(
    bulk,
):
    """Given a spill record that names a file in /dev/shm that is not the pool's, when
    reading, then FrameError and the file is neither unlinked nor mapped."""
    with decoy_file() as decoy, forged_ring() as ring:
        ring.head = ring.put_spill(0, 10, decoy.encode(), flags=bulk)
        with pytest.raises(FrameError, match="corrupt spill"):
            ring.reader.try_read()
        assert shm_exists(decoy)


def test_given_unread_spill_record_naming_an_unrelated_file_when_discarding_then_it_stays():
    """Given an unread spill record that names a file that is not the pool's, when the
    reader discards the ring (removing the spills nobody will read), then the file stays."""
    with decoy_file() as decoy:
        with forged_ring() as ring:
            ring.head = ring.put_spill(0, 10, decoy.encode())
        assert shm_exists(decoy)


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda n: n.replace(f"-{os.getuid()}-", f"-{os.getuid() + 1}-"), id="uid"),
        pytest.param(lambda n: n + "\n", id="newline"),
        pytest.param(lambda n: n[:-1] + "\u0663", id="unicode-digit"),
        pytest.param(lambda n: n + "/../x", id="path"),
        pytest.param(lambda n: n.lstrip("/"), id="no-slash"),
    ],
)
def test_given_names_almost_of_the_pool_form_then_none_is_recognised(forge):
    """Given names that differ from the pool's form in one way (another uid, a trailing
    newline, a non-ASCII digit, a path, no slash), then none is taken as the pool's,
    while the name make_name gives is."""
    name = make_name()
    assert name_creator(name) == os.getpid()
    assert name_creator(forge(name)) is None


def test_given_pool_form_segment_larger_than_its_record_when_reading_then_frame_error():
    """Given a spill record of 100 bytes naming a segment of the pool's form that holds
    1 MiB (no writer makes such a one-off segment), when reading, then FrameError before
    it is mapped, and the segment is left alone."""
    seg = Segment.create(1 << 20)
    try:
        with forged_ring() as ring:
            ring.head = ring.put_spill(0, 100, seg.name.encode())
            with pytest.raises(FrameError, match="more than the 100 expected"):
                ring.reader.try_read()
        assert shm_exists(seg.name)
    finally:
        seg.unlink()
        seg.close()


def test_given_spill_record_with_unknown_flags_when_reading_then_frame_error():
    """Given a spill record with flag bits no writer sets, when reading, then FrameError."""
    with forged_ring() as ring:
        ring.head = ring.put_spill(0, 10, make_name().encode(), flags=0x80)
        with pytest.raises(FrameError, match="corrupt spill"):
            ring.reader.try_read()


def _read_spill_named_with_nul() -> None:
    with forged_ring() as ring:
        name = make_name()[:-1].encode() + b"\0"
        ring.head = ring.put_spill(0, 10, name)
        with pytest.raises(FrameError):
            ring.reader.try_read()
    with pytest.raises(SegmentError, match="invalid"):
        Segment.attach("/wl-\0x")


def test_given_spill_name_with_a_nul_byte_when_reading_then_frame_error_not_a_segfault():
    """Given a spill record whose name holds a NUL byte (posix_ipc segfaults on it),
    when a process reads it, then it gets FrameError and lives on."""
    # In a child: without the check the segfault would take the test run with it.
    assert join(fork(_read_spill_named_with_nul)) == 0


def _attach_table_naming_a_nul_lock(name: str) -> None:
    with pytest.raises(SlotTableError, match="no lock of ours"):
        SlotTable.attach(name)


def test_given_slot_table_naming_its_lock_with_a_nul_byte_when_attaching_then_error():
    """Given a slot table whose lock name (read from shared memory) holds a NUL byte,
    when another process attaches it, then SlotTableError, not a segfault."""
    table = SlotTable.create(slots=4, holders_per_slot=2)
    try:
        table.segment.buf[64:72] = b"/wl-\0zzz"
        assert join(fork(_attach_table_naming_a_nul_lock, table.name)) == 0
    finally:
        table.unlink()
        table.close()


# -- what the reader hands on ------------------------------------------------------


def test_given_frame_with_negative_out_of_band_size_when_decoded_then_protocol_error():
    """Given a frame through the ring whose envelope declares an out-of-band buffer of
    -15 bytes, when it is decoded, then ProtocolError (it used to yield wrong bytes)."""
    env = protocol._encoder.encode(
        protocol.Envelope(protocol.PROTOCOL_VERSION, protocol.Ping(), (-15,))
    )
    frame = b"\xff" + len(env).to_bytes(4, "little") + env + b"0123456789abcdefghij"
    with forged_ring() as ring:
        assert ring.writer.try_write(frame)
        with pytest.raises(protocol.ProtocolError, match="-15 bytes"):
            ring.reader.drain(protocol.decode)


def test_given_frame_whose_envelope_length_overruns_it_when_decoded_then_protocol_error():
    """Given a frame whose envelope length runs past its end, when decoded, then
    ProtocolError."""
    env = protocol._encoder.encode(protocol.Envelope(protocol.PROTOCOL_VERSION, protocol.Ping()))
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(b"\xff" + (len(env) + 100).to_bytes(4, "little") + env)


def test_given_valid_spill_frames_then_they_still_read_intact():
    """Given well-formed one-off and bulk spill frames, when reading, then each arrives
    intact and its segment is gone from /dev/shm (the checks reject nothing real)."""
    with forged_ring() as ring:
        small, large = b"b" * 10_000, b"o" * 20_000
        assert ring.writer.try_write(small)  # takes the bulk segment
        assert ring.writer.try_write(large)  # bulk busy: a one-off segment
        names = ring.writer.pending_spills
        first = ring.reader.try_read()
        second = ring.reader.try_read()
        assert first is not None and second is not None
        assert (bytes(first.data), bytes(second.data)) == (small, large)
        first.release()
        second.release()
        assert not any(shm_exists(n) for n in names)
    for name in names:
        unlink_name(name)
