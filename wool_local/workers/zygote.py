"""The zygote: a single-threaded process with no event loop that forks every worker.

Forking a worker straight from the hub would copy whatever the hub has at
that moment: other threads (holding locks that then stay held forever,
CPython gh-90622) and a running uvloop loop (libuv is not fork-safe once
used). So the hub forks the zygote once, when the pool starts, and from then
on asks it to fork workers. The zygote never touches the loop it inherited.

Hub and zygote talk over a ``SOCK_SEQPACKET`` socket pair, one msgpack tuple
per packet. The hub sends ``("spawn", seq, segment name, capacity)`` with the
worker's fds attached (``SCM_RIGHTS``): the channel's two doorbells, then the
eventfd the hub rings to ask the worker for its unstarted calls back. The
zygote answers ``("spawned", seq, pid)``, or ``("failed", seq, error)`` when
it could not fork (no memory, a pids limit, a vanished segment), and whenever
a worker ends it sends ``("exited", pid, wait status)``: it is the workers'
parent, so only it can reap them and learn how they died.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import os
import select
import signal
import socket
import sys
import threading
import traceback
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import msgspec

from ..ipc import Segment

_PR_SET_PDEATHSIG = 1
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_MAX_MSG = 4096
_MAX_FDS = 4  # fds a spawn request may carry (it sends three)
_encode = msgspec.msgpack.encode
_decode = msgspec.msgpack.decode

#: Names bound in ``__main__`` when the newest live zygote was forked, mapped to
#: weak references of their values: a worker can import such an object by name.
_main_snapshots: weakref.WeakKeyDictionary[Zygote, dict[str, Any]] = weakref.WeakKeyDictionary()


class ThreadedForkWarning(RuntimeWarning):
    """The hub had other threads when the zygote was forked."""


_warned_threads = False
#: Open threads_accounted_for() blocks: forks give no ThreadedForkWarning meanwhile.
_accounted = 0


@contextlib.contextmanager
def threads_accounted_for() -> Iterator[None]:
    """Zygotes forked inside give no :class:`ThreadedForkWarning`: the caller knows
    the other threads are harmless here, or has warned about them in its own terms."""
    global _accounted
    _accounted += 1
    try:
        yield
    finally:
        _accounted -= 1


def _forget_accounted() -> None:
    # A statement about this process's threads: a forked child (the zygote, and the
    # workers after it) has other threads, and starts pools of its own.
    global _accounted
    _accounted = 0


os.register_at_fork(after_in_child=_forget_accounted)

#: Threads of wool_local's own that hold nothing a forked child uses (a worker's
#: returner: the child never touches its parent's link); the warning leaves them out.
_harmless: weakref.WeakSet[threading.Thread] = weakref.WeakSet()


def harmless_to_fork(thread: threading.Thread) -> None:
    """Leave ``thread`` out of the :class:`ThreadedForkWarning` of later forks."""
    _harmless.add(thread)


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL us when our parent dies; exit now if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    # The parent may have died between fork and prctl: re-check (closes the race).
    if os.getppid() != parent_pid:
        os._exit(1)


def reset_signals() -> None:
    """Drop every handler inherited from the hub; ignore SIGINT (the hub handles Ctrl-C)."""
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD, signal.SIGALRM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


def main_has(obj: Any) -> bool:
    """True if every live zygote was forked with ``obj`` bound at its name in ``__main__``."""
    name = getattr(obj, "__qualname__", None)
    if not _main_snapshots or not name or "." in name:
        return False
    for snapshot in _main_snapshots.values():
        ref = snapshot.get(name)
        if ref is None or ref() is not obj:
            return False
    return True


def _snapshot_main() -> dict[str, Any]:
    main = sys.modules.get("__main__")
    out = {}
    for name, value in list(vars(main).items()) if main else []:
        try:
            out[name] = weakref.ref(value)
        except TypeError:
            continue
    return out


#: ``worker_main(segment, ring capacity, fds, hub pid) -> exit code``, where ``fds``
#: are those of the spawn request: the two doorbells, then the hand-back eventfd.
WorkerMain = Callable[[Segment, int, list[int], int], int]


class Zygote:
    """Hub-side handle of the zygote process: forks it, asks it for workers, and reads
    its reports ("spawned", "failed", "exited")."""

    def __init__(self, worker_main: WorkerMain) -> None:
        self._worker_main = worker_main
        self.pid = -1
        self.sock: socket.socket | None = None

    def start(self) -> None:
        """Fork the zygote from the calling process (the hub)."""
        global _warned_threads
        me = threading.current_thread()
        others = [t for t in threading.enumerate() if t is not me and t not in _harmless]
        if others and not _warned_threads and not _accounted:
            _warned_threads = True
            names = ", ".join(t.name for t in others)
            warnings.warn(
                f"wool_local is forking its zygote while this process runs other threads "
                f"({names}). A lock one of them holds stays locked forever in every worker; "
                f"start the pool before starting threads.",
                ThreadedForkWarning,
                stacklevel=4,
            )
        snapshot = _snapshot_main()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        hub_pid = os.getpid()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the zygote
            code = 1
            try:
                ours.close()
                code = _zygote_main(theirs, hub_pid, self._worker_main)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        theirs.close()
        ours.setblocking(False)
        self.pid, self.sock = pid, ours
        _main_snapshots[self] = snapshot

    def request_spawn(self, seq: int, segment: str, capacity: int, fds: list[int]) -> None:
        """Ask for a worker on channel ``segment``; the answer, tagged ``seq``, comes
        through :meth:`recv`. The zygote closes its copies of ``fds`` either way."""
        assert self.sock is not None
        socket.send_fds(self.sock, [_encode(("spawn", seq, segment, capacity))], fds)

    def recv(self) -> tuple[Any, ...] | None:
        """One message from the zygote, or None if none is waiting; EOFError if it is gone."""
        assert self.sock is not None
        try:
            data = self.sock.recv(_MAX_MSG)
        except BlockingIOError:
            return None
        except ConnectionResetError:
            data = b""
        if not data:
            raise EOFError("the zygote process exited")
        return tuple(_decode(data))

    def stop(self, timeout: float) -> None:
        """Close the socket (the zygote then reaps its workers and exits) and reap it."""
        _main_snapshots.pop(self, None)
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.pid > 0:
            if not _wait_exit(self.pid, timeout):
                os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
            self.pid = -1


def _wait_exit(pid: int, timeout: float) -> bool:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def keep_freed_memory() -> None:
    """Make glibc malloc keep freed memory mapped for reuse (workers only).

    A worker that receives a large payload copies it into a fresh ``bytes``.
    By default glibc serves allocations above 32 MiB with a new ``mmap`` and
    unmaps them when freed, so every large payload pays a page fault per
    4 KiB (about 28 ms per 64 MiB on a VM). Serving them from the heap and
    not trimming it lets the next payload land in pages already mapped. The
    cost is a worker that holds on to its peak heap; memory limits recycle it.
    """
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    except (OSError, AttributeError):
        pass  # not glibc: keep the defaults


def _zygote_main(sock: socket.socket, hub_pid: int, worker_main: WorkerMain) -> int:
    die_with_parent(hub_pid)
    reset_signals()
    keep_freed_memory()
    # Forked inside the hub's running loop: forget it, never touch it.
    asyncio.events._set_running_loop(None)
    # Objects that exist now are shared copy-on-write with every worker; keep the
    # cyclic GC from touching (and so copying) their pages in each worker.
    gc.freeze()
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    children: set[int] = set()
    me = os.getpid()
    while True:
        for fd, _ in poller.poll():
            if fd == wake_r:
                while True:
                    try:
                        if not os.read(wake_r, 512):
                            break
                    except BlockingIOError:
                        break
                _reap(sock, children)
                continue
            try:
                data, fds, _, _ = socket.recv_fds(sock, _MAX_MSG, _MAX_FDS)
            except ConnectionResetError:
                data, fds = b"", []
            if not data:
                return _shutdown(children)
            msg = _decode(data)
            if msg[0] == "spawn":
                _, seq, segment, capacity = msg
                try:
                    pid = _fork_worker(
                        me, hub_pid, sock, (wake_r, wake_w), worker_main, segment, capacity, fds
                    )
                except Exception as exc:  # no memory, a pids limit, a vanished segment...
                    for fd in fds:
                        try:
                            os.close(fd)
                        except OSError:
                            pass
                    sock.send(_encode(("failed", seq, f"{type(exc).__name__}: {exc}")))
                    continue
                children.add(pid)
                sock.send(_encode(("spawned", seq, pid)))


def _fork_worker(
    zygote_pid: int,
    hub_pid: int,
    sock: socket.socket,
    wake: tuple[int, int],
    worker_main: WorkerMain,
    segment: str,
    capacity: int,
    fds: list[int],
) -> int:
    # Map before forking: the worker inherits the mapping, so the hub may unlink
    # the name as soon as we answer "spawned".
    seg = Segment.attach(segment)
    pid = os.fork()
    if pid == 0:  # the worker
        code = 1
        try:
            sock.close()
            signal.set_wakeup_fd(-1)
            for fd in wake:
                os.close(fd)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            die_with_parent(zygote_pid)
            code = worker_main(seg, capacity, fds, hub_pid)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    seg.close()
    for fd in fds:
        os.close(fd)
    return pid


def _reap(sock: socket.socket, children: set[int]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        try:
            sock.send(_encode(("exited", pid, status)))
        except OSError:
            pass


def _shutdown(children: set[int], timeout: float = 5.0) -> int:
    """The hub is gone or done: give workers ``timeout`` to exit, then kill and reap them."""
    for pid in list(children):
        if not _wait_exit(pid, timeout):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    for pid in list(children):
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    return 0
