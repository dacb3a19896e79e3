"""The trust boundary of docs/security.md: shared memory is private to the user who made it."""

from __future__ import annotations

import errno
import os
import signal
import stat

import posix_ipc
import pytest

import wool_local
from tests.forking import fork, join
from tests.helpers import run
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


@wool_local.routine
async def answer_in_garbage() -> str:
    """From here on this worker writes frames no decoder accepts (its answer included)."""
    from wool_local.workers import protocol

    protocol.encode = lambda message, buffers=(): b"\xc1 not a frame"
    protocol.encode_body = lambda message: b"\xc1"
    return "never seen"


def test_given_a_worker_writing_corrupt_frames_then_it_is_killed_and_the_pool_serves():
    """Given a worker whose frames are no valid message, when the hub reads its answer,
    then the call fails with WorkerCrashed naming the failed channel, that worker is killed
    (no one trusts it further), and the pool serves the next call on a new worker."""

    async def main():
        async with wool_local.WorkerPool(spawn=1) as wp:
            (bad,) = wp.pids
            with pytest.raises(wool_local.WorkerCrashed, match="channel failed") as info:
                await answer_in_garbage()
            assert info.value.pid == bad and info.value.signal == signal.SIGKILL
            assert await ok() == "ok"
            assert bad not in wp.pids and wp.stats().crashes == 1

    run(main)


@wool_local.routine
async def ok() -> str:
    return "ok"
