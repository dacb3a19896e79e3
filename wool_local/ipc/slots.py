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
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator

import posix_ipc

from .errors import LockTimeout, SlotTableError
from .segment import Segment, make_name

_MAGIC = 0x534C_4F54_5731  # "SLOTW1"
KEY_SIZE = 16
_EMPTY, _USED, _TOMB = 0, 1, 2
# u64 header words
_H_MAGIC, _H_SLOTS, _H_HOLDERS, _H_OWNER, _H_EPOCH = 0, 1, 2, 3, 4
_HEADER = 64
_NAME_OFF = 64  # semaphore name, NUL-padded, 64 bytes
_TABLE_OFF = 128


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
        hdr = segment.buf[:_HEADER].cast("Q")
        if hdr[_H_MAGIC] != _MAGIC:
            hdr.release()
            raise SlotTableError(f"{segment.name} is not a slot table")
        self._hdr = hdr
        self.slots: int = hdr[_H_SLOTS]
        self.holders_per_slot: int = hdr[_H_HOLDERS]
        self._stride = 6 + 2 * self.holders_per_slot  # u32 words per slot
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
        return _TABLE_OFF + slots * (6 + 2 * holders_per_slot) * 4

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
        hdr = seg.buf[:_HEADER].cast("Q")
        hdr[_H_SLOTS] = slots
        hdr[_H_HOLDERS] = holders_per_slot
        seg.buf[_NAME_OFF : _NAME_OFF + len(sem_name)] = sem_name.encode()
        hdr[_H_MAGIC] = _MAGIC
        hdr.release()
        return cls(seg, sem, **kw)

    @classmethod
    def attach(cls, name: str, **kw: float) -> SlotTable:
        seg = Segment.attach(name)
        raw = bytes(seg.buf[_NAME_OFF : _NAME_OFF + 64]).rstrip(b"\0").decode()
        try:
            sem = posix_ipc.Semaphore(raw)
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
            state = words[base + 4]
            if state == _EMPTY:
                if free < 0:
                    free = idx
                break
            if state == _TOMB:
                if free < 0:
                    free = idx
                continue
            if raw[base * 4 : base * 4 + KEY_SIZE] == key:
                return idx
        if not insert:
            return -1
        if free < 0:
            raise SlotTableError(f"slot table {self.name} is full ({self.slots} slots)")
        base = free * stride
        raw[base * 4 : base * 4 + KEY_SIZE] = key
        for i in range(6, stride):
            words[base + i] = 0
        words[base + 4] = _USED
        return free

    def _holder(self, idx: int, pid: int, insert: bool) -> int:
        words = self._words
        base = idx * self._stride + 6
        free = -1
        for h in range(self.holders_per_slot):
            at = base + 2 * h
            if words[at] == pid:
                return at
            if free < 0 and words[at] == 0:
                free = at
        if not insert:
            return -1
        if free < 0:
            raise SlotTableError(
                f"slot has {self.holders_per_slot} holding processes already (table {self.name})"
            )
        words[free + 1] = 0
        words[free] = pid
        return free

    def _total(self, idx: int) -> int:
        words = self._words
        base = idx * self._stride + 6
        return sum(words[base + 1 : base + 2 * self.holders_per_slot : 2])

    def _locate(self, key: bytes, insert: bool) -> int:
        """Word index of this process's (pid, count) entry for ``key``; -1 if absent.

        The position is cached per key and re-checked under the lock (another
        process may have freed and reused the slot since).
        """
        at = self._cache.get(key, -1)
        if at >= 0:
            words = self._words
            base = (at // self._stride) * self._stride
            if (
                words[at] == self._pid
                and words[base + 4] == _USED
                and self._bytes[base * 4 : base * 4 + KEY_SIZE] == key
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
            self._words[at + 1] += 1
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
            if at < 0 or words[at + 1] == 0:
                raise SlotTableError(f"process {self._pid} holds no count on key {key.hex()}")
            words[at + 1] -= 1
            if words[at + 1] == 0:
                words[at] = 0
            idx = at // self._stride
            total = self._total(idx)
            if total == 0:
                words[idx * self._stride + 4] = _TOMB
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
        base = idx * self._stride + 6
        out = {}
        for h in range(self.holders_per_slot):
            pid, n = words[base + 2 * h], words[base + 2 * h + 1]
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
                if words[base + 4] != _USED:
                    continue
                for h in range(self.holders_per_slot):
                    at = base + 6 + 2 * h
                    if words[at] == pid:
                        dropped += words[at + 1]
                        words[at + 1] = 0
                        words[at] = 0
                if self._total(idx) == 0:
                    words[base + 4] = _TOMB
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
                if self._words[base + 4] == _USED:
                    holders = self._holders_of(idx)
                    if holders:
                        key = bytes(self._bytes[base * 4 : base * 4 + KEY_SIZE])
                        out[key] = holders
            return out
        finally:
            self._unlock()

    def __len__(self) -> int:
        """Number of keys with a non-zero count."""
        return len(self.snapshot())
