"""Message frames: batches, out-of-band buffers, version and corruption checks, and the
order a link delivers a burst in."""

from __future__ import annotations

import asyncio
import os

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers import run
from wool_local.ipc import Channel, Doorbell, Segment
from wool_local.workers import protocol
from wool_local.workers.link import BATCH_COUNT, Link
from wool_local.workers.protocol import (
    Batch,
    Call,
    Cancel,
    Ping,
    ProtocolError,
    Reply,
    Returned,
    Step,
    Stop,
)

ids = st.integers(min_value=0, max_value=2**62)
blobs = st.binary(max_size=300)
contexts = st.none() | st.dictionaries(st.text(max_size=20), blobs, max_size=3)

messages = st.one_of(
    st.builds(Call, ids, ids, st.none() | blobs, blobs, st.integers(0, 1), st.integers(0, 3)),
    st.builds(Step, ids, st.integers(0, 3), st.none() | blobs, contexts),
    st.builds(Cancel, ids),
    st.builds(Reply, ids, st.integers(0, 5), st.none() | blobs, contexts),
    st.builds(Stop),
    st.builds(Returned, st.lists(ids, max_size=5)),
    st.builds(Ping),
)


@given(st.lists(messages, min_size=1, max_size=40))
@settings(max_examples=200, deadline=None)
def test_given_messages_framed_as_a_batch_then_they_decode_in_order(batch):
    """Given any messages encoded one by one, the hand-built batch frame decodes to the
    same messages in the same order (one message: a plain frame holding just it)."""
    frame = protocol.batch_frame([protocol.encode_body(m) for m in batch])
    msg, buffers = protocol.decode(frame)
    assert list(buffers) == []
    if len(batch) == 1:
        assert msg == batch[0]
    else:
        assert type(msg) is Batch
        assert msg.messages == batch


def test_given_a_message_with_buffers_then_they_come_back_after_it():
    """Given a reply with two out-of-band buffers, decoding gives the reply and the
    buffers' bytes, in order."""
    reply = Reply(7, protocol.RETURNED, b"pickle")
    frame = protocol.encode(reply, [b"a" * 10, bytearray(b"b" * 5)])
    msg, buffers = protocol.decode(b"".join(bytes(p) for p in frame))
    assert msg == reply
    assert list(buffers) == [b"a" * 10, b"b" * 5]


def test_given_another_protocol_version_then_protocol_error_names_both():
    """Given a frame written by a build of another protocol version, decoding fails with
    an error naming both versions."""
    frame = msgspec.msgpack.encode(protocol.Envelope(protocol.PROTOCOL_VERSION + 1, Ping()))
    with pytest.raises(ProtocolError, match=f"version {protocol.PROTOCOL_VERSION + 1}"):
        protocol.decode(frame)


@pytest.mark.parametrize("frame", [b"\x00", b"\x92\x02", b"\xff\x00\x00\x00\x10abc", b"\x93"])
def test_given_a_corrupt_frame_then_protocol_error(frame):
    """Given bytes that are no valid frame, decoding raises ProtocolError, never anything else."""
    with pytest.raises(ProtocolError):
        protocol.decode(frame)


def test_given_a_burst_with_a_buffered_message_inside_then_the_peer_gets_all_in_order():
    """Given 3 x BATCH_COUNT messages sent in one loop iteration, one of them carrying an
    out-of-band buffer, the other end of the link receives every message once, in order,
    and the buffer with its message."""
    chan = Channel.create(1 << 16)
    # The receiving end maps the segment and holds the doorbells on its own, as a
    # worker process does, so each link frees only what it owns.
    bells = tuple(Doorbell(os.dup(bell.fd)) for bell in chan.bells)
    twin = Channel(Segment.attach(chan.segment.name), bells, chan.capacity)  # type: ignore[arg-type]
    received: list[tuple[int, list[bytes]]] = []
    n = 3 * BATCH_COUNT

    async def main():
        done = asyncio.get_running_loop().create_future()

        def on_message(msg, buffers):
            received.append((msg.id, list(buffers)))
            if len(received) == n and not done.done():
                done.set_result(None)

        a = Link(chan.end(0), lambda m, b: None, lambda exc: None)
        b = Link(twin.end(1), on_message, lambda exc: None)
        a.start()
        b.start()
        try:
            for i in range(n):
                a.send(Cancel(i), [b"x" * 100] if i == BATCH_COUNT + 3 else ())
            await asyncio.wait_for(done, 5)
        finally:
            a.close()
            b.close()

    run(main)
    assert [rid for rid, _ in received] == list(range(n))
    assert [bufs for rid, bufs in received if bufs] == [[b"x" * 100]]
    assert received[BATCH_COUNT + 3][1] == [b"x" * 100]
