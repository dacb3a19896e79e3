"""The spool a worker writes one unit's events to, and the controller reads while it runs.

Each call (one unit) has a file of its own. The worker appends frames, each a 4-byte
little-endian length and the pickle of a list of events (those of one item, or its
``start``), in one ``write`` on an unbuffered file, so
what the controller reads is a prefix of whole frames and at most one partial frame,
which it keeps until the rest arrives. A file survives its writer: after a crash the
controller still reads what the worker wrote before it died.

Events (tuples): ``("start", index)`` before an item's protocol, ``("logstart",
nodeid, location)``, ``("report", data)`` (``pytest_report_to_serializable``),
``("warning", data)``, ``("logfinish", nodeid, location)``, ``("done", index,
seconds)`` after it, and ``("exit", reason, returncode)`` for ``pytest.exit``.
"""

from __future__ import annotations

import pickle
import struct
from typing import Any, BinaryIO

_HEADER = struct.Struct("<I")


def write(out: BinaryIO, events: list[tuple[Any, ...]]) -> None:
    """Append ``events`` to the spool ``out`` as one frame, in one write."""
    data = pickle.dumps(events, protocol=pickle.HIGHEST_PROTOCOL)
    out.write(_HEADER.pack(len(data)) + data)


class Reader:
    """Reads the whole frames appended to a spool file since the last :meth:`read`."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "rb", buffering=0)  # closed by close()
        self._buf = b""

    def read(self) -> list[tuple[Any, ...]]:
        """The events that arrived whole since the last call (possibly none)."""
        chunk = self._file.read()
        if chunk:
            self._buf += chunk
        events = []
        buf, pos, size = self._buf, 0, len(self._buf)
        while size - pos >= _HEADER.size:
            (length,) = _HEADER.unpack_from(buf, pos)
            end = pos + _HEADER.size + length
            if end > size:
                break
            events.extend(pickle.loads(buf[pos + _HEADER.size : end]))
            pos = end
        self._buf = buf[pos:]
        return events

    def close(self) -> None:
        self._file.close()
