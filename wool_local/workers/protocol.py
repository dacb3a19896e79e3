"""The messages hub and workers exchange, as msgspec Structs on the rings.

Both directions carry the same messages: the hub sends ``Call`` to a worker,
and a worker sends ``Call`` up to the hub for a nested dispatch. Every
message is a tagged ``array_like`` Struct (compact, fast to decode straight
from ring memory); payloads (callables, arguments, results, exceptions) are
opaque pickled bytes here. Every frame starts with the protocol version.
See ``docs/protocol.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

PROTOCOL_VERSION = 3  # 2: Batch; 3: Step.ahead, Reply.more, Call.keep

# Call kinds
COROUTINE, GENERATOR = 0, 1

# Generator steps (Call.op for the first step of a generator, Step.op after)
NEXT, SEND, THROW, CLOSE = 0, 1, 2, 3

# Reply statuses
RETURNED, RAISED, YIELDED, EXHAUSTED, CANCELLED = 0, 1, 2, 3, 4

#: The status word (index in the channel end's status words) the worker bumps
#: whenever its loop runs; the hub's stall watchdog reads it.
TICK = 0


class Call(msgspec.Struct, array_like=True, tag=1, gc=False):
    """Start a routine. ``fn_def`` is the pickled callable, sent once per receiver."""

    id: int
    fn: int
    fn_def: bytes | None
    args: bytes
    kind: int = COROUTINE
    op: int = NEXT
    value: bytes | None = None
    context: dict[str, bytes] | None = None  # the caller's context variables, by key
    proxy: bytes | None = None  # deprecated: the proxy now travels in ``context``
    proxy_id: bytes | None = None  # deprecated, with ``proxy``; removed at the next major
    keep: bool = False  # handed back once already: the receiver never hands it back


class Step(msgspec.Struct, array_like=True, tag=2, gc=False):
    """Advance a remote async generator one step: next, send, throw or close.

    ``ahead`` (with ``NEXT``): after answering this step, take up to this many more
    ``NEXT`` steps unasked, answering each with its own ``Reply``, while the
    generator yields (a stream's prefetch window; see docs/protocol.md)."""

    id: int
    op: int
    value: bytes | None = None
    context: dict[str, bytes] | None = None  # the caller's context variables now
    ahead: int = 0


class Cancel(msgspec.Struct, array_like=True, tag=3, gc=False):
    """Cancel the remote task (or generator step) of call ``id``."""

    id: int


class Reply(msgspec.Struct, array_like=True, tag=4, gc=False):
    """Outcome of a call or of one generator step."""

    id: int
    status: int
    value: bytes | None = None
    context: dict[str, bytes] | None = None  # variables the routine's context holds now
    #: YIELDED only: the values yielded after ``value``, each answering one more step
    #: (a generator running ahead; ``context`` is as after the last of them).
    more: list[bytes] | None = None


class Stop(msgspec.Struct, array_like=True, tag=5, gc=False):
    """Ask the receiver to finish and exit."""


class Returned(msgspec.Struct, array_like=True, tag=6, gc=False):
    """Worker to hub: these calls were never started here; schedule them elsewhere."""

    ids: list[int]


class Ping(msgspec.Struct, array_like=True, tag=7, gc=False):
    """Hub to worker, and back: the worker's loop answers it with a Ping, which
    proves to the hub's stall watchdog that the loop runs."""


class Batch(msgspec.Struct, array_like=True, tag=8, gc=False):
    """Several messages in one frame, handled in order (see :func:`batch_frame`)."""

    messages: list[Call | Step | Cancel | Reply | Stop | Returned | Ping]


Message = Call | Step | Cancel | Reply | Stop | Returned | Ping | Batch


class Envelope(msgspec.Struct, array_like=True, gc=False):
    version: int
    message: Message
    oob: tuple[int, ...] = ()  # sizes of the raw buffers that follow the envelope


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Envelope)

# A frame with out-of-band buffers starts with this byte (a msgpack envelope,
# a fixarray, never does), then the envelope's length as u32, the envelope,
# and the buffers back to back.
_OOB_MARK = 0xFF


class ProtocolError(Exception):
    """A frame that is not a valid message of this protocol version."""


def encode(message: Message, buffers: Sequence[Any] = ()) -> bytes | list[Any]:
    """The frame for ``message``: bytes, or a list of parts when buffers follow it."""
    if not buffers:
        return _encoder.encode(Envelope(PROTOCOL_VERSION, message))
    env = _encoder.encode(Envelope(PROTOCOL_VERSION, message, tuple(map(_nbytes, buffers))))
    return [bytes((_OOB_MARK,)) + len(env).to_bytes(4, "little") + env, *buffers]


#: ``encode_body(message)``: the message alone, to go into a frame with :func:`batch_frame`.
encode_body = _encoder.encode


# ``[PROTOCOL_VERSION, message]``: an envelope with no out-of-band sizes.
_ENVELOPE_HEAD = b"\x92" + _encoder.encode(PROTOCOL_VERSION)
# ``[PROTOCOL_VERSION, [8, [...]]]``: a Batch envelope up to its array's length.
_BATCH_HEAD = _ENVELOPE_HEAD + b"\x92" + _encoder.encode(8)


def batch_frame(bodies: list[bytes]) -> bytes:
    """One frame holding the messages ``bodies`` (from :func:`encode_body`), in order.

    Assembled by hand from bodies encoded one by one, so a sender knows the
    size of what it has queued; a msgpack array is its length followed by its
    elements, so this decodes as an envelope holding one ``Batch``.
    """
    n = len(bodies)
    if n == 1:
        return _ENVELOPE_HEAD + bodies[0]
    head = bytes((0x90 | n,)) if n < 16 else b"\xdd" + n.to_bytes(4, "big")
    return b"".join((_BATCH_HEAD, head, *bodies))


def _nbytes(buffer: Any) -> int:
    return memoryview(buffer).nbytes


def decode(data: memoryview | bytes) -> tuple[Message, Sequence[bytes]]:
    """The message in a frame and its out-of-band buffers (copied out of the frame)."""
    buffers: list[bytes] = []
    try:
        if data[0] != _OOB_MARK:
            env = _decoder.decode(data)
            if env.version == PROTOCOL_VERSION:
                return env.message, ()
        else:
            end = 5 + int.from_bytes(data[1:5], "little")
            if end > len(data):
                raise ProtocolError("a frame ends inside its envelope")
            env = _decoder.decode(data[5:end])
            for size in env.oob:
                # A negative size would slice backwards: wrong bytes, no error.
                if size < 0 or end + size > len(data):
                    raise ProtocolError(
                        f"a frame of {len(data)} bytes cannot hold an out-of-band buffer "
                        f"of {size} bytes at {end}"
                    )
                buffers.append(bytes(data[end : end + size]))
                end += size
    except (msgspec.DecodeError, IndexError) as exc:
        raise ProtocolError(f"undecodable message frame: {exc}") from exc
    if env.version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"message of protocol version {env.version}; this build speaks {PROTOCOL_VERSION}"
        )
    return env.message, buffers
