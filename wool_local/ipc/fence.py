"""Memory fences for lock-free handshakes over shared memory, from pure Python.

Python has no fence primitive, but an uncontended ``threading.Lock`` release
followed by an acquire executes glibc's ``sem_post`` then ``sem_trywait``:

* x86-64: both are ``lock``-prefixed read-modify-writes, each a full barrier.
  Plain stores and loads are otherwise already ordered (TSO) except a store
  followed by a load of another address, which is exactly what the
  sleep/wake handshake needs ordered.
* aarch64: a store-release (``stlxr``/``ldaddl``) followed by a load-acquire
  (``ldaxr``/``casa``) is observed in program order (RCsc), so every access
  before the release happens-before every access after the acquire.

Each ``Fence`` owns its lock, so two threads never share one: give each ring
endpoint its own.
"""

from __future__ import annotations

import platform
import threading

#: True where plain stores are not reordered with older stores and plain loads
#: not with older loads (TSO), so publishing data then an index needs no fence.
STRONGLY_ORDERED = platform.machine().lower() in {"x86_64", "amd64", "i386", "i686"}


class Fence:
    """A full memory barrier (store-load included), about 0.1 us a call."""

    __slots__ = ("_lock", "full", "publish")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self.full = self._full
        # On TSO hardware store-store and load-load/load-store order is free.
        self.publish = _noop if STRONGLY_ORDERED else self._full

    def _full(self) -> None:
        self._lock.release()
        self._lock.acquire()


def _noop() -> None:
    return None
