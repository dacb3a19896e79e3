"""Shared-memory segments: private, exclusive, unlinked early, swept when orphaned."""

from __future__ import annotations

import os
import re
import select
import stat

import psutil
import pytest

from tests.forking import Rendezvous, fork, join, kill
from wool_local.ipc import Segment, SegmentError, sweep
from wool_local.ipc.segment import SHM_DIR, make_name, owned_leftovers


def _path(name: str) -> str:
    return os.path.join(SHM_DIR, name.lstrip("/"))


def test_given_new_segment_then_name_carries_uid_pid_and_random_part_and_mode_is_0600():
    """Given a new segment, when looking at its name and file, then the name carries uid,
    pid and a random part, the mode is 0600, and no two names repeat."""
    with Segment.create(4096) as seg:
        assert re.fullmatch(rf"/wl-{os.getuid()}-{os.getpid()}-[0-9a-f]{{16}}", seg.name)
        assert stat.S_IMODE(os.stat(_path(seg.name)).st_mode) == 0o600
        assert make_name() != make_name()


def test_given_existing_name_when_creating_again_then_segment_error():
    """Given a name in use, when creating a segment with it again, then SegmentError."""
    with Segment.create(64) as seg, pytest.raises(SegmentError):
        Segment.create(64, name=seg.name)


def test_given_attached_with_unlink_then_name_is_gone_and_both_mappings_share_bytes():
    """Given a second mapping that unlinks on attach, when writing through the first, then
    the second sees the bytes although the name is gone from /dev/shm."""
    seg = Segment.create(4096)
    other = Segment.attach(seg.name, unlink=True)
    try:
        assert not os.path.exists(_path(seg.name))
        seg.buf[:5] = b"hello"
        assert bytes(other.buf[:5]) == b"hello"
        with pytest.raises(SegmentError, match="does not exist"):
            Segment.attach(seg.name)
    finally:
        seg.unlinked = True
        seg.close()
        other.close()


def test_given_every_party_mapped_when_creator_is_sigkilled_then_nothing_stays_in_dev_shm():
    """Given a segment its creator and the parent both mapped (and unlinked), when the
    creator is SIGKILLed, then nothing of it stays in /dev/shm."""
    sync = Rendezvous()
    r, w = os.pipe()

    def child():
        seg = Segment.create(4096)
        seg.buf[:4] = b"ping"
        os.write(w, seg.name.encode().ljust(64))
        sync.ready_and_park()

    pid = fork(child)
    try:
        name = os.read(r, 64).decode().strip()
        sync.wait_ready()
        seg = Segment.attach(name, unlink=True)
        assert bytes(seg.buf[:4]) == b"ping"
        kill(pid)
        assert name not in {n for n, _, _ in owned_leftovers()}
        seg.close()
    finally:
        os.close(r)
        os.close(w)
        sync.close()


def test_given_segment_of_dead_creator_when_sweeping_then_it_is_removed_and_live_ones_kept():
    """Given a leftover of a dead creator and a live segment, when sweeping, then only the
    leftover is removed."""
    r, w = os.pipe()

    def child():
        seg = Segment.create(4096)
        os.write(w, seg.name.encode().ljust(64))
        seg.close()  # exits without unlinking: a leftover

    pid = fork(child)
    live = Segment.create(4096)
    try:
        name = os.read(r, 64).decode().strip()
        assert join(pid) == 0
        assert os.path.exists(_path(name))
        removed = sweep()
        assert name in removed
        assert not os.path.exists(_path(name))
        assert os.path.exists(_path(live.name))
    finally:
        os.close(r)
        os.close(w)
        live.unlink()
        live.close()


def test_given_bad_size_when_creating_then_value_error():
    """Given a non-positive size, when creating a segment, then ValueError."""
    with pytest.raises(ValueError, match="positive"):
        Segment.create(0)


def test_given_segment_of_an_unreaped_zombie_when_sweeping_then_it_is_removed():
    """Given a leftover whose creator exited but was not reaped yet (a zombie, as workers
    killed with their hub are until someone waits for them), when sweeping, then the
    leftover is removed: a zombie is dead."""
    r, w = os.pipe()

    def child():
        seg = Segment.create(4096)
        os.write(w, seg.name.encode().ljust(64))
        seg.close()  # exits without unlinking: a leftover

    pid = fork(child)
    pidfd = os.pidfd_open(pid)
    try:
        name = os.read(r, 64).decode().strip()
        # Readable once the child has exited; not reaped, so it stays a zombie.
        assert select.select([pidfd], [], [], 10)[0], "the child did not exit"
        assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        assert name in sweep()
        assert not os.path.exists(_path(name))
    finally:
        os.close(pidfd)
        os.close(r)
        os.close(w)
        assert join(pid) == 0
