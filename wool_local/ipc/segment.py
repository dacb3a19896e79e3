"""POSIX shared-memory segments: exclusive, private, and unlinked early.

Names look like ``/wl-<uid>-<pid>-<random>``: the uid and creating pid let
:func:`sweep` find leftovers of dead processes; the random part makes names
unguessable. Segments are created ``O_CREAT|O_EXCL`` with mode 0600, and
should be :meth:`Segment.unlink`-ed as soon as every party has mapped them,
so that a SIGKILL of anyone leaves nothing in ``/dev/shm``.
"""

from __future__ import annotations

import mmap
import os
import re
import secrets

import posix_ipc
import psutil

from .errors import SegmentError

SHM_DIR = "/dev/shm"
PREFIX = "wl"
# The form of every name make_name() gives: ASCII digits only (a str pattern's \d
# would take any Unicode digit), and fullmatch (a "$" would let a trailing newline in).
_NAME_RE = re.compile(rf"/{PREFIX}-([0-9]{{1,10}})-([0-9]{{1,10}})-[0-9a-f]{{16}}", re.ASCII)
#: The longest name :func:`make_name` gives (uid and pid of up to 10 digits).
NAME_MAX = len(PREFIX) + 2 * 10 + 16 + 4


def make_name(pid: int | None = None) -> str:
    """A fresh, unguessable segment name owned by this uid and ``pid``."""
    pid = os.getpid() if pid is None else pid
    return f"/{PREFIX}-{os.getuid()}-{pid}-{secrets.token_hex(8)}"


def name_creator(name: str) -> int | None:
    """The creating pid if ``name`` has the form :func:`make_name` gives for this uid,
    else None.

    The one test of "a name of ours": a name read from memory another process can
    write (a spill record in a ring) is opened or unlinked only if it passes, so a
    forged one can neither remove an unrelated file nor reach ``posix_ipc`` with a
    NUL byte (which crashes it).
    """
    m = _NAME_RE.fullmatch(name)
    if m is None or int(m.group(1)) != os.getuid():
        return None
    return int(m.group(2))


def _check_name(name: str) -> None:
    # posix_ipc segfaults on a name with a NUL byte instead of raising.
    if "\0" in name:
        raise SegmentError(f"invalid shared memory name {name!r}")


class Segment:
    """A mapped shared-memory segment.

    ``buf`` is a writable memoryview of the whole mapping. Closing unmaps it;
    unlinking removes the name (mappings stay valid). Both are idempotent.
    """

    __slots__ = ("_mmap", "buf", "name", "size", "unlinked")

    def __init__(self, name: str, mapping: mmap.mmap, *, unlinked: bool = False) -> None:
        self.name = name
        self.size = len(mapping)
        self._mmap: mmap.mmap | None = mapping
        self.buf = memoryview(mapping)
        self.unlinked = unlinked

    @classmethod
    def create(cls, size: int, *, name: str | None = None, populate: bool = False) -> Segment:
        """Create and map a new segment of ``size`` bytes (exclusive, mode 0600)."""
        if size <= 0:
            raise ValueError(f"segment size must be positive, got {size}")
        name = make_name() if name is None else name
        _check_name(name)
        try:
            shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=size)
        except (posix_ipc.Error, OSError) as exc:
            raise SegmentError(f"cannot create shared memory {name} ({size} bytes): {exc}") from exc
        try:
            # Reserve the pages now: on a full /dev/shm this is a clear error here,
            # where a write into the mapping later would be a SIGBUS.
            os.posix_fallocate(shm.fd, 0, size)
            mapping = _map(shm.fd, size, populate)
        except OSError as exc:
            shm.close_fd()
            unlink_name(name)
            raise SegmentError(
                f"cannot reserve {size} bytes of shared memory in {SHM_DIR}: {exc} "
                f"(is {SHM_DIR} full or too small?)"
            ) from exc
        except BaseException:
            shm.close_fd()
            unlink_name(name)
            raise
        shm.close_fd()
        return cls(name, mapping)

    @classmethod
    def attach(
        cls,
        name: str,
        *,
        unlink: bool = False,
        populate: bool = False,
        max_size: int | None = None,
    ) -> Segment:
        """Map an existing segment by name; with ``unlink=True`` remove its name at once.

        A segment larger than ``max_size`` is refused before it is mapped (and before
        ``populate`` would fault in all of it).
        """
        _check_name(name)
        try:
            shm = posix_ipc.SharedMemory(name)
        except posix_ipc.ExistentialError as exc:
            raise SegmentError(f"shared memory {name} does not exist (already unlinked?)") from exc
        except (posix_ipc.Error, OSError) as exc:
            raise SegmentError(f"cannot open shared memory {name}: {exc}") from exc
        try:
            if shm.size <= 0:
                raise SegmentError(f"shared memory {name} is empty")
            if max_size is not None and shm.size > max_size:
                raise SegmentError(
                    f"shared memory {name} holds {shm.size} bytes, more than the "
                    f"{max_size} expected"
                )
            mapping = _map(shm.fd, shm.size, populate)
        finally:
            shm.close_fd()
        seg = cls(name, mapping)
        if unlink:
            seg.unlink()
        return seg

    def unlink(self) -> None:
        """Remove the name from ``/dev/shm``; existing mappings stay valid."""
        if not self.unlinked:
            self.unlinked = True
            unlink_name(self.name)

    def close(self) -> None:
        """Unmap. If views into ``buf`` are still alive, the unmap waits for them."""
        mapping, self._mmap = self._mmap, None
        if mapping is None:
            return
        self.buf.release()
        try:
            mapping.close()
        except BufferError:
            # Someone still holds a view; the mapping goes when they drop it.
            pass

    @property
    def closed(self) -> bool:
        return self._mmap is None

    def __enter__(self) -> Segment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unlink()
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "mapped"
        return f"<Segment {self.name} {self.size}B {state}{' unlinked' if self.unlinked else ''}>"


def _map(fd: int, size: int, populate: bool) -> mmap.mmap:
    flags = mmap.MAP_SHARED
    if populate:
        flags |= getattr(mmap, "MAP_POPULATE", 0)
    try:
        return mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    except OSError as exc:
        raise SegmentError(f"cannot map {size} bytes of shared memory: {exc}") from exc


def unlink_name(name: str) -> None:
    """Remove a segment name; a name that is already gone is not an error."""
    try:
        posix_ipc.unlink_shared_memory(name)
    except posix_ipc.ExistentialError:
        pass


def owned_leftovers() -> list[tuple[str, int, bool]]:
    """``(name, creator pid, is_semaphore)`` of every entry in ``/dev/shm`` made by this uid."""
    found = []
    try:
        entries = os.listdir(SHM_DIR)
    except OSError:
        return []
    for entry in entries:
        # Semaphores made by posix_ipc show up in /dev/shm as "sem.<name>".
        is_sem = entry.startswith("sem.")
        name = "/" + (entry[4:] if is_sem else entry)
        pid = name_creator(name)
        if pid is not None:
            found.append((name, pid, is_sem))
    return found


def _creator_gone(path: str, pid: int) -> bool:
    """True if ``pid`` is dead, or is a newer process that reused the pid."""
    try:
        proc = psutil.Process(pid)
        started = proc.create_time()
        # An unreaped zombie has exited: only its parent's wait() is missing (a
        # worker killed together with its hub stays one until someone reaps it).
        if proc.status() == psutil.STATUS_ZOMBIE:
            return True
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return True
    except psutil.Error:
        return False
    try:
        made = os.stat(path).st_mtime
    except OSError:
        return False
    # A segment older than its "creator" was made by an earlier owner of the pid.
    return made + 1.0 < started


def sweep() -> list[str]:
    """Unlink leftover segments and semaphores of this uid whose creator is gone.

    Returns the names removed. Safe to call at any time: entries of live
    processes are never touched.
    """
    removed = []
    for name, pid, is_sem in owned_leftovers():
        path = os.path.join(SHM_DIR, ("sem." if is_sem else "") + name.lstrip("/"))
        if pid == os.getpid() or not _creator_gone(path, pid):
            continue
        try:
            if is_sem:
                posix_ipc.unlink_semaphore(name)
            else:
                posix_ipc.unlink_shared_memory(name)
        except posix_ipc.ExistentialError:
            continue
        removed.append(name)
    return removed
