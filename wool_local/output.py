"""Worker output on a shared terminal: whole lines, optionally prefixed with the worker's pid.

Workers inherit the hub's stdout and stderr. When those are pipes or files,
Python buffers stdout in blocks (or, unbuffered, writes every piece of a
``print`` on its own), so two workers' output can mix mid-line.
:func:`whole_lines` makes every process forked from here on (the zygote and
its workers) write line by line: a line goes out in one ``write``, which the
kernel keeps whole on a pipe up to ``PIPE_BUF`` (4 KiB) and on a terminal.
With ``prefix``, each line a worker prints or logs starts with ``[pid]``.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from typing import Any, TextIO

_installed = False
_prefix = False


def whole_lines(prefix: bool = False) -> None:
    """From now on, forked children write whole lines (``[pid] `` first with ``prefix``)."""
    global _installed, _prefix
    _prefix = _prefix or prefix
    if not _installed:
        _installed = True
        os.register_at_fork(after_in_child=_in_child)


class Prefixed(io.TextIOBase):
    """A text stream that writes each complete line to ``raw`` as ``prefix + line``."""

    def __init__(self, raw: TextIO, prefix: str) -> None:
        self.raw = raw
        self.prefix = prefix
        self._partial = ""

    def write(self, s: str) -> int:
        text = self._partial + s
        lines = text.split("\n")
        self._partial = lines.pop()
        if lines:
            self.raw.write("".join(f"{self.prefix}{line}\n" for line in lines))
            self.raw.flush()
        return len(s)

    def flush(self) -> None:
        if self._partial:
            self.raw.write(self.prefix + self._partial)
            self._partial = ""
        self.raw.flush()

    def fileno(self) -> int:
        return self.raw.fileno()

    def isatty(self) -> bool:
        return self.raw.isatty()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self.raw.encoding

    def writable(self) -> bool:
        return True


def _in_child() -> None:
    """After a fork, in the child: line buffering, and the pid prefix if asked for."""
    for name in ("stdout", "stderr"):
        stream: Any = getattr(sys, name)
        if isinstance(stream, Prefixed):
            stream.prefix = f"[{os.getpid()}] "  # a worker of the zygote: its own pid
            continue
        try:
            # Not write_through (PYTHONUNBUFFERED sets it): each print() argument would
            # be a write of its own, and a line could be cut by another process's.
            stream.reconfigure(line_buffering=True, write_through=False)
        except (AttributeError, ValueError):
            pass  # not a TextIOWrapper (replaced by the script): leave it
        if _prefix:
            wrapped = Prefixed(stream, f"[{os.getpid()}] ")
            setattr(sys, name, wrapped)
            _repoint_handlers(stream, wrapped)


def _repoint_handlers(old: TextIO, new: Any) -> None:
    """Logging handlers writing to ``old`` write to ``new`` (so log lines get the prefix)."""
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is old:
                handler.stream = new  # not setStream: it flushes and locks, in a fresh fork
