"""Exceptions raised by the shared-memory transport."""

from __future__ import annotations


class IpcError(Exception):
    """Base class for every transport failure."""


class SegmentError(IpcError):
    """A shared-memory segment could not be created, attached or mapped."""


class FrameError(IpcError):
    """A frame in a ring is corrupt or truncated; the ring cannot be read further."""


class ProtocolVersionError(FrameError):
    """A ring or frame was written by an incompatible version of the transport."""


class RingClosed(IpcError):
    """The other end closed the ring in an orderly way; no more frames will come."""


class PeerDied(IpcError):
    """The process at the other end of a ring exited before closing it."""

    def __init__(self, pid: int, detail: str = "") -> None:
        self.pid = pid
        msg = f"peer process {pid} died"
        super().__init__(f"{msg}: {detail}" if detail else msg)


class SlotTableError(IpcError):
    """The lease slot table is full, or a release does not match an acquire."""


class LockTimeout(IpcError):
    """A cross-process lock stayed held by a live process past the wait bound."""
