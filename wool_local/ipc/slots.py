"""A refcounted slot table in shared memory: the ledger behind leases.

Each slot is keyed by 16 bytes and records, per holding process, how many
times that process acquired it. The count of a key is the sum over its
holders, so a process that dies mid-update can leave at most its own entry
one step behind, and :meth:`SlotTable.reclaim` drops everything a dead
process held in one pass.

Mutual exclusion: a POSIX semaphore (posix_ipc) guards the table; the holder
records its pid and bumps an epoch right after taking it. A waiter that times
out looks at the recorded owner: if that process is dead, the waiter
recovers the lock. Recoveries are serialised by an ``fcntl`` record lock on
the segment, which the kernel drops if the recoverer dies too, and each
recovery re-checks the (owner, epoch) pair it saw, so a dead owner is
recovered exactly once. A holder that dies between taking the semaphore and
recording its pid leaves owner 0: that is recovered only after the same
(0, epoch) has been seen for ``stale_after`` seconds.

Layout (header fields little-endian u64, slot fields little-endian u32)::

    +0    magic ("SLOTW1")   +8  slots   +16 holders_per_slot
    +24   owner  (pid that holds the lock; 0 when free or not yet recorded)
    +32   epoch  (bumped on every take and every recovery of the lock)
    +64   semaphore name, NUL-padded to 64 bytes
    +128  slot[slots], each 6 + 2 * holders_per_slot u32 words:

          word 0-3    key (16 bytes)
          word 4      state: 0 empty, 1 used, 2 tombstone (freed; probing goes on past it)
          word 5      unused (keeps every slot and holder entry 8-byte aligned)
          word 6+2h   pid of holder h (0: entry free)
          word 7+2h   count of holder h

A key's slot is found by linear probing from its first 8 bytes modulo
``slots``; a process's entry in a slot is the one with its pid.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import posix_ipc

from .errors import LockTimeout, SlotTableError
from .segment import Segment, make_name, name_creator

_MAGIC = 0x534C_4F54_5731  # "SLOTW1"
KEY_SIZE = 16

# u64 word indexes into the header, and its size in bytes.
_H_MAGIC, _H_SLOTS, _H_HOLDERS, _H_OWNER, _H_EPOCH = 0, 1, 2, 3, 4
_HEADER_SIZE = 64
# Byte offsets: the semaphore's name (NUL-padded), then the slots.
_NAME_OFF, _NAME_SIZE = 64, 64
_TABLE_OFF = 128

# u32 word indexes into a slot, and the bytes of one word.
_WORD_BYTES = 4
_S_KEY = 0  # KEY_SIZE bytes
_S_STATE = 4
_S_ENTRIES = 6  # the first holder entry
# Slot states.
_EMPTY, _USED, _TOMB = 0, 1, 2
# u32 word indexes into a holder entry, and its size in words.
_E_PID, _E_COUNT = 0, 1
_ENTRY_WORDS = 2


def _slot_words(holders_per_slot: int) -> int:
    """u32 words one slot takes."""
    return _S_ENTRIES + _ENTRY_WORDS * holders_per_slot


class LockState(NamedTuple):
    """What :meth:`SlotTable.lock_state` reads."""

    #: Pid recorded as holding the lock; 0 when it is free (or not recorded yet).
    owner: int
    #: Bumped on every take and every recovery of the lock.
    epoch: int
    #: The semaphore's value: 1 when the lock is free, 0 while it is held.
    value: int


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SlotTable:
    """Fixed-size table of refcounted slots shared by every process that maps it.

    Create it before forking (children inherit the mapping and the
    semaphore) or :meth:`attach` by name; :meth:`unlink` the names once every
    party has it.
    """

    def __init__(
        self,
        segment: Segment,
        sem: posix_ipc.Semaphore,
        *,
        lock_timeout: float = 5.0,
        stale_after: float = 1.0,
    ) -> None:
        self.segment = segment
        self._sem = sem
        hdr = segment.buf[:_HEADER_SIZE].cast("Q")
        if hdr[_H_MAGIC] != _MAGIC:
            hdr.release()
            raise SlotTableError(f"{segment.name} is not a slot table")
        self._hdr = hdr
        self.slots: int = hdr[_H_SLOTS]
        self.holders_per_slot: int = hdr[_H_HOLDERS]
        self._stride = _slot_words(self.holders_per_slot)
        self._words = segment.buf[_TABLE_OFF:].cast("I")
        self._bytes = segment.buf[_TABLE_OFF:]
        self._fd = os.open(f"/dev/shm{segment.name}", os.O_RDWR) if not segment.unlinked else -1
        self._thread_lock = threading.Lock()
        self._cache: dict[bytes, int] = {}  # key -> word index of our holder entry
        self.lock_timeout = lock_timeout
        self.stale_after = stale_after
        self._pid = os.getpid()

    # -- construction -------------------------------------------------------

    @staticmethod
    def size_for(slots: int, holders_per_slot: int) -> int:
        """Bytes a table of ``slots`` slots of ``holders_per_slot`` holders occupies."""
        return _TABLE_OFF + slots * _slot_words(holders_per_slot) * _WORD_BYTES

    @classmethod
    def create(cls, slots: int = 1024, holders_per_slot: int = 16, **kw: float) -> SlotTable:
        if slots < 1 or holders_per_slot < 1:
            raise ValueError("slots and holders_per_slot must be positive")
        seg = Segment.create(cls.size_for(slots, holders_per_slot))
        sem_name = make_name()
        try:
            sem = posix_ipc.Semaphore(sem_name, posix_ipc.O_CREX, mode=0o600, initial_value=1)
        except BaseException:
            seg.unlink()
            seg.close()
            raise
        hdr = seg.buf[:_HEADER_SIZE].cast("Q")
        hdr[_H_SLOTS] = slots
        hdr[_H_HOLDERS] = holders_per_slot
        seg.buf[_NAME_OFF : _NAME_OFF + len(sem_name)] = sem_name.encode()
        hdr[_H_MAGIC] = _MAGIC
        hdr.release()
        return cls(seg, sem, **kw)

    @classmethod
    def attach(cls, name: str, **kw: float) -> SlotTable:
        seg = Segment.attach(name)
        raw = bytes(seg.buf[_NAME_OFF : _NAME_OFF + _NAME_SIZE]).rstrip(b"\0")
        sem_name = raw.decode("ascii", "replace")
        if name_creator(sem_name) is None:  # posix_ipc crashes on a NUL byte
            seg.close()
            raise SlotTableError(f"slot table {name} names no lock of ours: {raw!r}")
        try:
            sem = posix_ipc.Semaphore(sem_name)
        except posix_ipc.ExistentialError as exc:
            seg.close()
            raise SlotTableError(f"the lock of slot table {name} is gone") from exc
        return cls(seg, sem, **kw)

    @property
    def name(self) -> str:
        return self.segment.name

    def unlink(self) -> None:
        """Remove the table's names; mappings (and inherited handles) stay valid."""
        if self._fd < 0 and not self.segment.unlinked:
            self._fd = os.open(f"/dev/shm{self.segment.name}", os.O_RDWR)
        self.segment.unlink()
        try:
            self._sem.unlink()
        except posix_ipc.ExistentialError:
            pass

    def close(self) -> None:
        for view in (self._hdr, self._words, self._bytes):
            view.release()
        self.segment.close()
        self._sem.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- the lock ----------------------------------------------------------

    def _lock(self) -> None:
        self._thread_lock.acquire()
        self._pid = os.getpid()  # holder identity, correct in forked children too
        try:
            self._sem.acquire(0)
        except posix_ipc.BusyError:
            try:
                self._lock_slow()
            except BaseException:
                self._thread_lock.release()
                raise
        self._hdr[_H_OWNER] = self._pid
        self._hdr[_H_EPOCH] += 1

    def _lock_slow(self) -> None:
        deadline = time.monotonic() + self.lock_timeout
        seen = (self._hdr[_H_OWNER], self._hdr[_H_EPOCH])
        seen_at = time.monotonic()
        while True:
            try:
                self._sem.acquire(0.02)
                return
            except posix_ipc.BusyError:
                pass
            now = time.monotonic()
            state = (self._hdr[_H_OWNER], self._hdr[_H_EPOCH])
            if state != seen:
                seen, seen_at = state, now
            owner = state[0]
            if (owner and not _pid_alive(owner)) or (
                not owner and now - seen_at >= self.stale_after
            ):
                self._recover(state)
            elif now >= deadline:
                raise LockTimeout(
                    f"slot table {self.name} lock held by live process {owner or 'unknown'} "
                    f"for over {self.lock_timeout}s"
                )

    def _recover(self, seen: tuple[int, int]) -> None:
        """Release the semaphore on behalf of a dead holder, exactly once."""
        if self._fd < 0:
            return  # cannot serialise recovery without the file; keep waiting
        fcntl.lockf(self._fd, fcntl.LOCK_EX)
        try:
            if (self._hdr[_H_OWNER], self._hdr[_H_EPOCH]) != seen or self._sem.value > 0:
                return
            self._hdr[_H_OWNER] = 0
            self._hdr[_H_EPOCH] += 1
            self._sem.release()
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)

    def _unlock(self) -> None:
        self._hdr[_H_OWNER] = 0
        self._sem.release()
        self._thread_lock.release()

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the table's lock for the block, as every acquire and release does.

        Nothing changes the table meanwhile, in any process. For debugging and
        tests; the lock is not re-entrant, so call no other method of the table
        inside, and keep the block short: every other user of the table waits
        (and one that waits past ``lock_timeout`` raises LockTimeout).
        """
        self._lock()
        try:
            yield
        finally:
            self._unlock()

    def lock_state(self) -> LockState:
        """The lock's recorded owner, epoch and semaphore value, read without taking it.

        For debugging and tests: the three reads are not one snapshot.
        """
        return LockState(self._hdr[_H_OWNER], self._hdr[_H_EPOCH], self._sem.value)

    # -- slots -------------------------------------------------------------

    def _check_key(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError(f"slot keys are {KEY_SIZE} bytes, got {len(key)}")

    def _probe(self, key: bytes) -> Iterator[int]:
        start = int.from_bytes(key[:8], "little") % self.slots
        for i in range(self.slots):
            yield (start + i) % self.slots

    def _find(self, key: bytes, insert: bool) -> int:
        """Slot index of ``key``; with ``insert`` claim a free one. -1 if absent."""
        words, stride, raw = self._words, self._stride, self._bytes
        free = -1
        for idx in self._probe(key):
            base = idx * stride
            state = words[base + _S_STATE]
            if state == _EMPTY:
                if free < 0:
                    free = idx
                break
            if state == _TOMB:
                if free < 0:
                    free = idx
                continue
            k = (base + _S_KEY) * _WORD_BYTES
            if raw[k : k + KEY_SIZE] == key:
                return idx
        if not insert:
            return -1
        if free < 0:
            raise SlotTableError(f"slot table {self.name} is full ({self.slots} slots)")
        base = free * stride
        k = (base + _S_KEY) * _WORD_BYTES
        raw[k : k + KEY_SIZE] = key
        for i in range(_S_ENTRIES, stride):
            words[base + i] = 0
        words[base + _S_STATE] = _USED
        return free

    def _holder(self, idx: int, pid: int, insert: bool) -> int:
        """Word index of ``pid``'s entry in slot ``idx``; with ``insert`` claim a free one."""
        words = self._words
        base = idx * self._stride + _S_ENTRIES
        free = -1
        for h in range(self.holders_per_slot):
            at = base + _ENTRY_WORDS * h
            if words[at + _E_PID] == pid:
                return at
            if free < 0 and words[at + _E_PID] == 0:
                free = at
        if not insert:
            return -1
        if free < 0:
            raise SlotTableError(
                f"slot has {self.holders_per_slot} holding processes already (table {self.name})"
            )
        words[free + _E_COUNT] = 0
        words[free + _E_PID] = pid
        return free

    def _total(self, idx: int) -> int:
        words = self._words
        base = idx * self._stride + _S_ENTRIES
        return sum(
            words[base + _E_COUNT : base + _ENTRY_WORDS * self.holders_per_slot : _ENTRY_WORDS]
        )

    def _locate(self, key: bytes, insert: bool) -> int:
        """Word index of this process's (pid, count) entry for ``key``; -1 if absent.

        The position is cached per key and re-checked under the lock (another
        process may have freed and reused the slot since).
        """
        at = self._cache.get(key, -1)
        if at >= 0:
            words = self._words
            base = (at // self._stride) * self._stride
            k = (base + _S_KEY) * _WORD_BYTES
            if (
                words[at + _E_PID] == self._pid
                and words[base + _S_STATE] == _USED
                and self._bytes[k : k + KEY_SIZE] == key
            ):
                return at
        idx = self._find(key, insert)
        at = self._holder(idx, self._pid, insert) if idx >= 0 else -1
        if at >= 0:
            if len(self._cache) > 4 * self.slots:
                self._cache.clear()
            self._cache[key] = at
        return at

    def acquire(self, key: bytes) -> int:
        """Take one count on ``key`` for this process (inserting it); returns the new total."""
        if len(key) != KEY_SIZE:
            self._check_key(key)
        self._lock()
        try:
            at = self._locate(key, insert=True)
            self._words[at + _E_COUNT] += 1
            return self._total(at // self._stride)
        finally:
            self._unlock()

    def release(self, key: bytes) -> int:
        """Drop one of this process's counts on ``key``; returns the new total (0 = freed)."""
        if len(key) != KEY_SIZE:
            self._check_key(key)
        self._lock()
        try:
            at = self._locate(key, insert=False)
            words = self._words
            if at < 0 or words[at + _E_COUNT] == 0:
                raise SlotTableError(f"process {self._pid} holds no count on key {key.hex()}")
            words[at + _E_COUNT] -= 1
            if words[at + _E_COUNT] == 0:
                words[at + _E_PID] = 0
            idx = at // self._stride
            total = self._total(idx)
            if total == 0:
                words[idx * self._stride + _S_STATE] = _TOMB
            return total
        finally:
            self._unlock()

    def count(self, key: bytes) -> int:
        """Total count on ``key`` over every holder (0 if absent)."""
        return sum(self.holders(key).values())

    def holders(self, key: bytes) -> dict[int, int]:
        """``{pid: count}`` of the processes holding ``key``."""
        self._check_key(key)
        self._lock()
        try:
            idx = self._find(key, insert=False)
            return {} if idx < 0 else self._holders_of(idx)
        finally:
            self._unlock()

    def _holders_of(self, idx: int) -> dict[int, int]:
        words = self._words
        base = idx * self._stride + _S_ENTRIES
        out = {}
        for h in range(self.holders_per_slot):
            at = base + _ENTRY_WORDS * h
            pid, n = words[at + _E_PID], words[at + _E_COUNT]
            if pid and n:
                out[pid] = n
        return out

    def reclaim(self, pid: int) -> int:
        """Drop every count held by ``pid`` (a dead process); returns how many were dropped."""
        dropped = 0
        self._lock()
        try:
            words, stride = self._words, self._stride
            for idx in range(self.slots):
                base = idx * stride
                if words[base + _S_STATE] != _USED:
                    continue
                for h in range(self.holders_per_slot):
                    at = base + _S_ENTRIES + _ENTRY_WORDS * h
                    if words[at + _E_PID] == pid:
                        dropped += words[at + _E_COUNT]
                        words[at + _E_COUNT] = 0
                        words[at + _E_PID] = 0
                if self._total(idx) == 0:
                    words[base + _S_STATE] = _TOMB
            return dropped
        finally:
            self._unlock()

    def snapshot(self) -> dict[bytes, dict[int, int]]:
        """Every live key with its holders: introspection for tests and stats."""
        self._lock()
        try:
            out = {}
            for idx in range(self.slots):
                base = idx * self._stride
                if self._words[base + _S_STATE] == _USED:
                    holders = self._holders_of(idx)
                    if holders:
                        k = (base + _S_KEY) * _WORD_BYTES
                        key = bytes(self._bytes[k : k + KEY_SIZE])
                        out[key] = holders
            return out
        finally:
            self._unlock()

    def __len__(self) -> int:
        """Number of keys with a non-zero count."""
        return len(self.snapshot())
