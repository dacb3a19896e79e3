"""Shared-memory transport: segments, SPSC rings, doorbells and the lease table.

This layer moves bytes between processes on one host and counts leases. It
knows nothing of tasks or routines.
"""

from .channel import DEFAULT_CAPACITY, Channel, ChannelEnd
from .doorbell import Doorbell, PeerWatch
from .errors import (
    FrameError,
    IpcError,
    LockTimeout,
    PeerDied,
    ProtocolVersionError,
    RingClosed,
    SegmentError,
    SlotTableError,
)
from .reader import Frame, RingReader
from .ring import init_ring, ring_size
from .segment import Segment, sweep
from .slots import SlotTable
from .writer import RingWriter

__all__ = [
    "DEFAULT_CAPACITY",
    "Channel",
    "ChannelEnd",
    "Doorbell",
    "Frame",
    "FrameError",
    "IpcError",
    "LockTimeout",
    "PeerDied",
    "PeerWatch",
    "ProtocolVersionError",
    "RingClosed",
    "RingReader",
    "RingWriter",
    "Segment",
    "SegmentError",
    "SlotTable",
    "SlotTableError",
    "init_ring",
    "ring_size",
    "sweep",
]
