"""The status socket: a running pool answers ``wool-local status`` from another terminal.

Each hub listens on a Unix socket named ``<hub pid>-<pool id>.sock`` in the
user's status directory: ``$XDG_RUNTIME_DIR/wool_local`` when that runtime
directory is set, else ``wool_local-<uid>`` under the temp directory. The
directory is the user's and mode 0700 (an existing one that is not is
refused), and the socket is mode 0600, so another user can neither list
the pools nor connect. A client connects and reads one JSON document, the
pool's :meth:`~wool_local.workers.hub.Hub.stats` with who runs it; then the
hub closes the connection. The socket is removed when the pool stops; one
whose hub died is removed by the next :func:`list_pools`.

Listening costs nothing while nobody connects: the listening descriptor
sits in the hub's event loop like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import stat
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: Longest a client waits for a pool's answer.
ANSWER_TIMEOUT = 5.0


def status_dir(create: bool = False) -> Path:
    """This user's directory of status sockets; ``create`` makes it (mode 0700).

    Raises PermissionError if it exists but is not this user's, or is open to others.
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "wool_local" if runtime else Path(tempfile.gettempdir())
    path = base if runtime else base / f"wool_local-{os.getuid()}"
    if create:
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700, parents=bool(runtime))
    try:
        info = path.lstat()
    except FileNotFoundError:
        return path
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(
            f"{path} must be a directory of uid {os.getuid()} with mode 0700 "
            f"(found uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o}); remove it"
        )
    return path


class StatusServer:
    """Serves a snapshot of the pool to whoever connects (the user's own processes).

    A plain listening socket in the hub's loop (``add_reader``), answered in the
    accept callback: the answer is a few kilobytes, which a Unix socket's buffer
    takes at once, so nothing waits on a slow client (one that cannot take it
    all is dropped). Closing it frees its descriptor at once.
    """

    def __init__(self, pool_id: bytes, snapshot: Any) -> None:
        self._snapshot = snapshot  # () -> a JSON-able dict
        self.path = status_dir(create=True) / f"{os.getpid()}-{pool_id.hex()[:12]}.sock"
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale one of a reused pid
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.path))
            # The directory already keeps others out; the mode says so on the socket too.
            os.chmod(self.path, 0o600)
            sock.listen(8)
            sock.setblocking(False)
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(sock.fileno(), self._answer)
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    def _answer(self) -> None:
        assert self._sock is not None
        try:
            conn, _ = self._sock.accept()
        except OSError:
            return  # the client gave up already
        with conn:
            try:
                data = json.dumps(self._snapshot(), default=str).encode()
                conn.setblocking(False)
                conn.send(data)  # all of it, or the client sees a truncated answer
            except Exception:
                pass  # a client that went away, or a snapshot that failed: not the pool's

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(sock.fileno())
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def snapshot_of(stats: Any, **about: Any) -> dict[str, Any]:
    """``stats`` (a PoolStats) as a JSON-able dict, with ``about`` the pool."""
    return {
        "pid": os.getpid(),
        "argv": sys.argv,
        "taken_at": time.time(),
        **about,
        "stats": dataclasses.asdict(stats),
    }


def list_pools() -> list[Path]:
    """This user's pools' sockets, oldest first; sockets of dead hubs are removed."""
    try:
        directory = status_dir()
        entries = list(directory.iterdir())
    except (FileNotFoundError, PermissionError):
        return []
    live = []
    for path in entries:
        if path.suffix != ".sock":
            continue
        try:
            pid = int(path.name.split("-", 1)[0])
        except ValueError:
            continue
        if _alive(pid):
            live.append(path)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    return sorted(live, key=lambda p: p.stat().st_mtime)


def query(path: Path, timeout: float = ANSWER_TIMEOUT) -> dict[str, Any]:
    """The snapshot the pool listening at ``path`` serves."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        chunks = []
        while True:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    return json.loads(b"".join(chunks))


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"
