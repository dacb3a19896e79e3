"""Fuzzing the ring reader with forged memory: every input ends, soon, in frames or FrameError.

A ring is first used honestly (so its memory holds real and stale frames, and
spill segments exist), then hostile writes forge its head, frame headers,
pads and spill records. Reading must then, for every input, hand out frames
or raise :class:`FrameError`: within one lap of the ring per call, without
large allocations, and without unlinking any file that is not the pool's.
"""

from __future__ import annotations

import os
import time
import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.ipc.forge import CAP, ForgedRing, decoy_file, forged_ring, shm_exists
from wool_local.ipc import FrameError
from wool_local.ipc.reader import Frame, RingReader
from wool_local.ipc.ring import (
    FRAME_MAGIC,
    FRAME_VERSION,
    H_TAIL,
    LEN_MASK,
    PAD_WORD,
    SPILL_WORD,
)
from wool_local.workers import protocol

FUZZ = settings(
    max_examples=150,
    deadline=1000,  # ms; one example takes about a millisecond
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

U64_MAX = (1 << 64) - 1
U64 = st.integers(0, U64_MAX)
LENGTHS = st.one_of(st.integers(0, CAP + 64), st.integers(0, LEN_MASK))

# Spill names: the decoy (a file that is not the pool's), names of the pool's form
# that exist or not, near misses of that form, and arbitrary bytes.
DECOY, REAL = b"<decoy>", b"<real>"
_HEX = st.binary(min_size=8, max_size=8).map(bytes.hex)
POOL_FORM = st.builds(
    lambda pid, h: f"/wl-{os.getuid()}-{pid}-{h}".encode(), st.integers(1, 9), _HEX
)
NAMES = st.one_of(
    st.sampled_from([DECOY, REAL]),
    POOL_FORM,
    POOL_FORM.map(lambda n: n + b"\n"),
    POOL_FORM.map(lambda n: n[:-3] + b"\0" + n[-2:]),
    st.builds(lambda h: f"/wl-{os.getuid() + 1}-1-{h}".encode(), _HEX),
    st.binary(max_size=60),
)


def _forge_head(ring: ForgedRing, data: st.DataObject) -> None:
    pos = ring.reader._pos
    head = data.draw(
        st.one_of(
            st.integers(0, 8 * CAP).map(lambda d: pos + d),
            st.integers(0, 8 * CAP).map(lambda d: max(pos - d, 0)),
            st.integers(0, 2 * CAP).map(lambda d: pos + 8 * d),
            st.integers(1, 64).map(lambda laps: pos + laps * CAP),
            U64,
        ),
        label="head",
    )
    ring.head = min(head, U64_MAX)


def _where(ring: ForgedRing, data: st.DataObject) -> int:
    """A ring position to forge at: mostly where the reader reads next."""
    pos = ring.reader._pos
    return data.draw(
        st.one_of(
            st.just(pos),
            st.integers(0, CAP // 8 - 1).map(lambda i: pos - pos % CAP + 8 * i),
        ),
        label="at",
    )


def _forge_header(ring: ForgedRing, data: st.DataObject) -> None:
    kind = data.draw(st.integers(0, 5), label="kind")
    word = FRAME_MAGIC << 32 | FRAME_VERSION << 48 | kind << 56
    length = data.draw(LENGTHS, label="length")
    ring.put(_where(ring, data), data.draw(st.one_of(st.just(word | length), U64), label="word"))


def _forge_pad(ring: ForgedRing, data: st.DataObject) -> None:
    at = _where(ring, data)
    to_end = CAP - at % CAP
    length = data.draw(st.one_of(st.just(to_end - 8), LENGTHS), label="pad")
    ring.put(at, PAD_WORD | length & LEN_MASK)


def _forge_spill(ring: ForgedRing, data: st.DataObject, decoy: str, real: str) -> None:
    at = _where(ring, data)
    name = data.draw(NAMES, label="name")
    name = {DECOY: decoy.encode(), REAL: real.encode()}.get(name, name)
    size = data.draw(st.one_of(st.integers(0, 1 << 21), U64), label="size")
    flags = data.draw(st.integers(0, 255), label="flags")
    record = size.to_bytes(8, "little") + bytes((flags,)) + name
    if at % CAP + 8 + len(record) <= CAP:
        length = data.draw(st.one_of(st.just(len(record)), LENGTHS), label="record length")
        ring.put(at, SPILL_WORD | length, record)


def _forge_bytes(ring: ForgedRing, data: st.DataObject) -> None:
    at = _where(ring, data) % CAP
    junk = data.draw(st.binary(max_size=64), label="junk")[: CAP - at]
    ring.data[at : at + len(junk)] = junk


def _reattach(ring: ForgedRing, data: st.DataObject) -> None:
    """A fresh reader over the forged ring, starting at a forged tail."""
    ring.hdr[H_TAIL] = data.draw(
        st.one_of(st.integers(0, 4 * CAP), U64, st.just(ring.head)), label="tail"
    )
    ring.reader.discard()
    ring.reader = RingReader(ring.buf, 0, bell=ring.bells[1], peer_bell=ring.bells[0])


def _prime(ring: ForgedRing, data: st.DataObject) -> int:
    """Use the ring honestly first; returns the largest payload written."""
    if data.draw(st.booleans(), label="stale lap"):
        ring.fill_lap()  # well-formed frames all over the ring's memory
    sizes = data.draw(
        st.lists(st.one_of(st.integers(0, 200), st.integers(0, 3 * CAP)), max_size=12),
        label="honest frames",
    )
    for size in sizes:
        if not ring.writer.try_write(b"h" * size):
            break
        if data.draw(st.booleans(), label="read it"):
            ring.reader.drain(len)
    return max(sizes, default=0)


def _read_all(ring: ForgedRing, data: st.DataObject, largest: int) -> None:
    """Read until empty or FrameError. Nothing writes meanwhile, so however the reads
    go, together they may cover one lap of the ring at most."""
    reader = ring.reader
    start = reader._pos
    limit = max(largest, 1 << 20)  # a forged record may name a real 1 MiB bulk segment

    def check(view: memoryview) -> None:
        # Inside drain, so that a reader that would loop for ever fails here at once.
        assert reader._pos - start <= CAP, "read more than a lap"
        assert len(view) <= limit

    held: list[Frame] = []
    try:
        for _ in range(2 * CAP // 8 + 4):
            if data.draw(st.booleans(), label="drain"):
                for frame in held:
                    frame.release()
                held.clear()
                if reader.drain(check) == 0:
                    return
            else:
                frame = reader.try_read()
                if frame is None:
                    return
                held.append(frame)
                check(frame.data)
        raise AssertionError("the reader never ran dry")
    except FrameError:
        for _ in range(2):  # a failed ring stays failed
            with pytest.raises(FrameError):
                reader.try_read()
    finally:
        for frame in held:
            frame.release()


FORGERIES: list[Callable[..., None]] = [
    _forge_head,
    _forge_header,
    _forge_pad,
    _forge_spill,
    _forge_bytes,
    _reattach,
]


@FUZZ
@given(data=st.data())
def test_given_forged_ring_memory_when_reading_then_frames_or_frame_error_in_bounded_time(data):
    """Given a ring used honestly and then forged (head, headers, pads, spill records,
    raw bytes, a fresh reader at a forged tail), when reading until empty, then every call
    ends within one lap with frames no larger than what was written, or FrameError;
    allocations stay small and the decoy file in /dev/shm survives."""
    with decoy_file() as decoy:
        with forged_ring() as ring, forged_ring() as other:
            largest = _prime(ring, data)
            assert other.writer.try_write(b"r" * (CAP * 2))
            real = other.writer.pending_spills[0]  # a real spill segment of the pool's form
            ops = data.draw(st.lists(st.sampled_from(FORGERIES), max_size=6))
            if data.draw(st.booleans(), label="head last"):
                ops.append(_forge_head)  # forged head over whatever the ring holds
            for op in ops:
                if op is _forge_spill:
                    op(ring, data, decoy, real)
                else:
                    op(ring, data)
            tracemalloc.start()
            started = time.monotonic()
            try:
                _read_all(ring, data, largest)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert time.monotonic() - started < 0.5
            assert peak < 256 << 10
        # Closing discarded the reader, which unlinks unread spills of the pool's form only.
        assert shm_exists(decoy)


@FUZZ
@given(
    frame=st.sampled_from([8 << i for i in range(9)]),
    head=st.one_of(st.integers(-2 * CAP, 80 * CAP), U64),
    data=st.data(),
)
def test_given_a_lap_of_stale_frames_and_any_head_when_reading_then_at_most_one_lap(
    frame, head, data
):
    """Given a ring whose memory is a lap of well-formed frames already read, when the
    head is forged to any value, then reading covers one lap at most (no frame handed
    out twice) before it runs dry or raises FrameError."""
    with forged_ring() as ring:
        ring.fill_lap(frame - 8)
        ring.head = min(max(ring.tail + head, 0), U64_MAX)
        _read_all(ring, data, frame)


@FUZZ
@given(
    sizes=st.lists(st.one_of(st.integers(-(1 << 40), 64), U64), max_size=4),
    tail=st.binary(max_size=96),
    envelope_delta=st.integers(-8, 8),
)
def test_given_forged_out_of_band_sizes_when_decoding_then_exact_buffers_or_protocol_error(
    sizes, tail, envelope_delta
):
    """Given frames whose envelope declares arbitrary out-of-band sizes (negative, huge)
    and an envelope length that may be off, when decoded, then ProtocolError, or buffers of
    exactly the declared sizes cut from the frame in order."""
    env = protocol._encoder.encode(
        protocol.Envelope(protocol.PROTOCOL_VERSION, protocol.Ping(), tuple(sizes))
    )
    declared = max(len(env) + envelope_delta, 0)
    frame = b"\xff" + declared.to_bytes(4, "little") + env + tail
    try:
        _, buffers = protocol.decode(frame)
    except protocol.ProtocolError:
        return
    assert envelope_delta == 0
    assert [len(b) for b in buffers] == sizes
    assert b"".join(buffers) == tail[: sum(sizes)]
