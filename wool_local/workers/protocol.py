"""The messages hub and workers exchange, as msgspec Structs on the rings.

Both directions carry the same messages: the hub sends ``Call`` to a worker,
and a worker sends ``Call`` up to the hub for a nested dispatch. Every
message is a tagged ``array_like`` Struct (compact, fast to decode straight
from ring memory); payloads (callables, arguments, results, exceptions) are
opaque pickled bytes here. Every frame starts with the protocol version.
See ``docs/protocol.md``.
"""

from __future__ import annotations

import msgspec

PROTOCOL_VERSION = 1

# Call kinds
COROUTINE, GENERATOR = 0, 1

# Generator steps (Call.op for the first step of a generator, Step.op after)
NEXT, SEND, THROW, CLOSE = 0, 1, 2, 3

# Reply statuses
RETURNED, RAISED, YIELDED, EXHAUSTED, CANCELLED, REJECTED = 0, 1, 2, 3, 4, 5


class Call(msgspec.Struct, array_like=True, tag=1, gc=False):
    """Start a routine. ``fn_def`` is the pickled callable, sent once per receiver."""

    id: int
    fn: int
    fn_def: bytes | None
    args: bytes
    kind: int = COROUTINE
    op: int = NEXT
    value: bytes | None = None


class Step(msgspec.Struct, array_like=True, tag=2, gc=False):
    """Advance a remote async generator one step: next, send, throw or close."""

    id: int
    op: int
    value: bytes | None = None


class Cancel(msgspec.Struct, array_like=True, tag=3, gc=False):
    """Cancel the remote task (or generator step) of call ``id``."""

    id: int


class Reply(msgspec.Struct, array_like=True, tag=4, gc=False):
    """Outcome of a call or of one generator step."""

    id: int
    status: int
    value: bytes | None = None


class Stop(msgspec.Struct, array_like=True, tag=5, gc=False):
    """Ask the receiver to finish and exit."""


Message = Call | Step | Cancel | Reply | Stop


class Envelope(msgspec.Struct, array_like=True, gc=False):
    version: int
    message: Message


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Envelope)


class ProtocolError(Exception):
    """A frame that is not a valid message of this protocol version."""


def encode(message: Message) -> bytes:
    return _encoder.encode(Envelope(PROTOCOL_VERSION, message))


def decode(data: memoryview | bytes) -> Message:
    try:
        env = _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"undecodable message frame: {exc}") from exc
    if env.version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"message of protocol version {env.version}; this build speaks {PROTOCOL_VERSION}"
        )
    return env.message
