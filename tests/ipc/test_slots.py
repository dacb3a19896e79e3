"""The lease slot table: exact counts across processes, reclaim, and lock recovery."""

from __future__ import annotations

import os
import struct
import uuid

import pytest

from tests.forking import Rendezvous, fork, join, kill
from wool_local.ipc import LockTimeout, SlotTable, SlotTableError


@pytest.fixture
def table():
    t = SlotTable.create(slots=64, holders_per_slot=8, lock_timeout=5.0, stale_after=0.5)
    yield t
    t.unlink()
    t.close()


def key(i: int) -> bytes:
    return uuid.UUID(int=i + 1).bytes


def test_given_acquires_and_releases_then_counts_follow_and_slot_is_freed_at_zero(table):
    """Given a key, when it is acquired twice and released twice, then the count goes
    1, 2, 1, 0 and the key leaves the table."""
    k = key(1)
    assert table.acquire(k) == 1
    assert table.acquire(k) == 2
    assert table.holders(k) == {os.getpid(): 2}
    assert table.release(k) == 1
    assert table.release(k) == 0
    assert table.count(k) == 0
    assert len(table) == 0


def test_given_release_without_acquire_then_slot_table_error(table):
    """Given no count on a key, when releasing it, then SlotTableError, not a negative count."""
    with pytest.raises(SlotTableError, match="holds no count"):
        table.release(key(2))


def test_given_bad_key_length_then_value_error(table):
    """Given a key that is not 16 bytes, when acquiring it, then ValueError."""
    with pytest.raises(ValueError, match="16 bytes"):
        table.acquire(b"short")


def test_given_table_full_when_inserting_then_slot_table_error(table):
    """Given every slot in use, when a new key is acquired, then SlotTableError says full."""
    for i in range(table.slots):
        table.acquire(key(i))
    with pytest.raises(SlotTableError, match="full"):
        table.acquire(key(10_000))
    for i in range(table.slots):
        table.release(key(i))
    assert len(table) == 0


def test_given_freed_slots_when_reused_many_times_then_table_does_not_fill(table):
    """Given five times as many keys as slots, when each is acquired and released in turn,
    then freed slots (tombstones) are reused and the table never fills."""
    for i in range(table.slots * 5):
        table.acquire(key(i))
        table.release(key(i))
    assert len(table) == 0


def _churn(table: SlotTable, keys: list[bytes], rounds: int, keep: int) -> None:
    for _ in range(rounds):
        for k in keys:
            table.acquire(k)
        for k in keys:
            table.release(k)
    for k in keys[:keep]:
        table.acquire(k)


def test_given_four_processes_churning_concurrently_then_counts_are_exact(table):
    """Given 4 processes racing acquire/release on shared keys, when they finish, then
    every count and holder is exact, and reclaiming their pids empties the table."""
    keys = [key(i) for i in range(8)]
    pids = [fork(_churn, table, keys, 300, n) for n in (1, 2, 3, 4)]
    # Children exit after churning; their last acquires stay in the table.
    assert [join(p, 30) for p in pids] == [0, 0, 0, 0]
    expected = {k: sum(1 for n in (1, 2, 3, 4) if i < n) for i, k in enumerate(keys)}
    assert {k: table.count(k) for k in keys} == expected
    for i, k in enumerate(keys[:4]):
        assert sorted(table.holders(k).values()) == [1] * expected[k], i
    assert sum(table.reclaim(pid) for pid in pids) == 10
    assert len(table) == 0


def test_given_sigkilled_holder_when_reclaimed_then_its_counts_are_dropped(table):
    """Given a child SIGKILLed while holding counts, when its pid is reclaimed, then
    exactly its counts are dropped and ours stay."""
    sync = Rendezvous()

    def child():
        table.acquire(key(1))
        table.acquire(key(1))
        table.acquire(key(2))
        sync.ready_and_park()

    table.acquire(key(1))
    pid = fork(child)
    try:
        sync.wait_ready()
        kill(pid)
        assert table.count(key(1)) == 3
        assert table.reclaim(pid) == 3
        assert table.holders(key(1)) == {os.getpid(): 1}
        assert table.count(key(2)) == 0
        table.release(key(1))
        assert len(table) == 0
    finally:
        sync.close()


def test_given_holder_killed_inside_the_lock_when_acquiring_then_lock_is_recovered(table):
    """Given a process SIGKILLed while holding the table lock, when acquiring, then the
    lock is recovered (once: it ends free, with no owner)."""
    sync = Rendezvous()

    def child():
        with table.locked():
            sync.ready_and_park()

    pid = fork(child)
    try:
        sync.wait_ready()
        assert table.lock_state().owner == pid
        kill(pid)
        assert table.acquire(key(3)) == 1  # would wedge forever without recovery
        assert table.release(key(3)) == 0
        state = table.lock_state()
        assert (state.owner, state.value) == (0, 1)
    finally:
        sync.close()


def test_given_live_process_holding_the_lock_when_acquiring_then_bounded_lock_timeout(table):
    """Given a live process that keeps the table lock, when acquiring, then LockTimeout
    names it; once it lets go, acquiring works again."""
    sync = Rendezvous()

    def child():
        with table.locked():
            sync.ready_and_park()

    pid = fork(child)
    table.lock_timeout = 0.3
    try:
        sync.wait_ready()
        with pytest.raises(LockTimeout, match=str(pid)):
            table.acquire(key(4))
        sync.release()
        assert join(pid) == 0
        assert table.acquire(key(4)) == 1
        table.release(key(4))
    finally:
        sync.close()


def test_given_table_attached_by_name_then_both_views_share_counts(table):
    """Given a second handle attached by name, when counts are taken through either, then
    both see them."""
    other = SlotTable.attach(table.name)
    try:
        table.acquire(key(5))
        assert other.count(key(5)) == 1
        other.release(key(5))
        assert table.count(key(5)) == 0
    finally:
        other.close()


def test_given_a_key_held_twice_then_its_bytes_sit_where_the_documented_layout_says(table):
    """Given a key acquired twice by this process, when reading the raw segment, then the
    header, the key, its state and this process's (pid, count) entry are where the layout
    in slots.py puts them (offsets written out here, not taken from the module)."""
    k = key(7)
    table.acquire(k)
    table.acquire(k)
    buf = table.segment.buf
    magic, slots, holders, owner, epoch = struct.unpack_from("<5Q", buf, 0)
    assert (magic, slots, holders, owner) == (0x534C_4F54_5731, 64, 8, 0)
    assert epoch >= 2  # bumped on each take of the lock
    assert bytes(buf[64:68]) == b"/wl-"  # the semaphore's name
    base = 128 + (int.from_bytes(k[:8], "little") % slots) * (6 + 2 * holders) * 4
    assert bytes(buf[base : base + 16]) == k
    assert struct.unpack_from("<I", buf, base + 16) == (1,)  # used
    assert struct.unpack_from("<2I", buf, base + 24) == (os.getpid(), 2)
    assert table.size_for(slots, holders) == 128 + slots * (6 + 2 * holders) * 4
