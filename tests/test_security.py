"""The trust boundary of docs/security.md: shared memory is private to the user who made it."""

from __future__ import annotations

import errno
import os
import stat

import posix_ipc
import pytest

from tests.forking import fork, join
from wool_local.ipc import SegmentError, SlotTable
from wool_local.ipc.segment import SHM_DIR, Segment, owned_leftovers

NOBODY = 65534


def _path(name: str, semaphore: bool = False) -> str:
    return os.path.join(SHM_DIR, ("sem." if semaphore else "") + name.lstrip("/"))


@pytest.fixture
def open_umask():
    """A umask that restricts nothing, so that a mode of 0600 is the code's own choice."""
    old = os.umask(0)
    yield
    os.umask(old)


def test_given_an_open_umask_then_segments_and_the_lease_table_lock_are_created_0600(open_umask):
    """Given umask 0, when a segment and a slot table (a segment and a semaphore) are created,
    then every /dev/shm entry is owned by this uid and readable and writable by it alone."""
    before = set(owned_leftovers())
    seg = Segment.create(4096)
    table = SlotTable.create(slots=4, holders_per_slot=2)
    try:
        made = [e for e in set(owned_leftovers()) - before if e[1] == os.getpid()]
        assert sorted(sem for _, _, sem in made) == [False, False, True], made
        for name, _, semaphore in made:
            path = _path(name, semaphore)
            st = os.stat(path)
            assert stat.S_IMODE(st.st_mode) == 0o600, (path, oct(st.st_mode))
            assert st.st_uid == os.getuid(), path
    finally:
        seg.unlink()
        seg.close()
        table.unlink()
        table.close()


def _as_nobody_cannot_open(name: str) -> None:
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    try:
        Segment.attach(name)
    except SegmentError as exc:
        assert isinstance(exc.__cause__, posix_ipc.PermissionsError), repr(exc.__cause__)
    else:
        raise AssertionError("another uid mapped the segment")
    try:
        os.open(_path(name), os.O_RDONLY)
    except PermissionError as exc:
        assert exc.errno == errno.EACCES
    else:
        raise AssertionError("another uid opened the segment's file")


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root")
@pytest.mark.timeout(30)
def test_given_a_segment_then_another_uid_gets_eacces():
    """Given a segment made by this uid, when a process running as another uid (nobody)
    opens it by name, through posix_ipc or as a file, then it gets EACCES."""
    seg = Segment.create(4096)
    try:
        assert join(fork(_as_nobody_cannot_open, seg.name)) == 0
    finally:
        seg.unlink()
        seg.close()
