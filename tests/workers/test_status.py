"""The status socket: a running pool answers from another process, only to its own user."""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import stat

import pytest

import wool_local
from tests.forking import fork, join
from tests.helpers import run
from wool_local.workers import status

NOBODY = 65534


@pytest.fixture(autouse=True)
def own_status_dir(tmp_path, monkeypatch):
    """Each test gets its own runtime directory (as a login session has)."""
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    return runtime / "wool_local"


def test_given_a_running_pool_then_status_lists_it_and_answers_with_its_workers(own_status_dir):
    """Given a pool of 2, its socket is listed, answers with both workers' pids, states and
    counters, is mode 0600 in a 0700 directory, and is gone when the pool stops."""

    async def main():
        async with wool_local.WorkerPool(spawn=2) as wp:
            (path,) = status.list_pools()
            assert path.parent == own_status_dir
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert stat.S_IMODE(own_status_dir.stat().st_mode) == 0o700
            snap = await asyncio.to_thread(status.query, path)  # a client elsewhere
            assert snap["pid"] == os.getpid()
            workers = snap["stats"]["workers"]
            assert sorted(w["pid"] for w in workers) == sorted(wp.pids)
            assert {w["state"] for w in workers} == {"idle"}
            return path

    path = run(main)
    assert not path.exists()
    assert status.list_pools() == []


def test_given_a_socket_whose_hub_died_then_listing_removes_it(own_status_dir):
    """Given a status socket left by a hub that no longer runs, listing sweeps it."""
    own_status_dir.mkdir(mode=0o700)
    pid = fork(lambda: None)
    join(pid)
    stale = own_status_dir / f"{pid}-0123456789ab.sock"
    stale.touch()
    assert status.list_pools() == []
    assert not stale.exists()


def test_given_a_status_directory_open_to_others_then_it_is_refused_and_the_pool_serves(
    own_status_dir, caplog
):
    """Given a status directory of mode 0777, the pool does not listen there (a warning
    says why) and serves calls all the same."""
    own_status_dir.mkdir()
    own_status_dir.chmod(0o777)

    async def main():
        async with wool_local.WorkerPool(spawn=1) as wp:
            assert wp.hub.status is None
            assert [x async for x in wp.map(abs, [-1])] == [1]

    run(main)
    assert any("mode 0700" in r.getMessage() for r in caplog.records)


def _as_nobody_cannot_connect(path: str) -> None:
    os.setgid(NOBODY)
    os.setuid(NOBODY)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
        except PermissionError as exc:
            assert exc.errno == errno.EACCES
        else:
            raise AssertionError("another uid connected to the status socket")


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another uid needs root")
def test_given_a_running_pool_then_another_uid_cannot_connect():
    """Given a running pool, a process running as another uid (nobody) gets EACCES when it
    connects to the pool's status socket."""

    async def main():
        async with wool_local.WorkerPool(spawn=1):
            (path,) = status.list_pools()
            assert join(fork(_as_nobody_cannot_connect, str(path))) == 0

    run(main)
