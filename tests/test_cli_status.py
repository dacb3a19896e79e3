"""``wool-local status`` (as ``python -m wool_local status``) against a real running pool."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys

import pytest

import wool_local
from tests.helpers import run


@pytest.fixture(autouse=True)
def own_status_dir(tmp_path, monkeypatch):
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))


async def _status(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "wool_local", "status", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert not err, err.decode()
    return proc.returncode, out.decode()


def test_given_a_running_pool_then_status_shows_its_workers():
    """Given a pool of 2 that finished 5 calls, `status` names the pool and each worker's
    pid, and `status PID --json` gives the same snapshot a script can read."""

    async def main():
        async with wool_local.WorkerPool(spawn=2) as wp:
            assert [x async for x in wp.map(abs, range(5))] == list(range(5))
            code, text = await _status()
            assert code == 0
            assert f"pool {os.getpid()}" in text and "2/2 workers" in text
            for pid in wp.pids:
                assert str(pid) in text
            code, text = await _status(str(os.getpid()), "--json")
            snap = json.loads(text)
            assert code == 0 and snap["pid"] == os.getpid()
            assert sorted(w["pid"] for w in snap["stats"]["workers"]) == sorted(wp.pids)

    run(main)


def test_given_no_such_pool_then_status_of_a_pid_fails():
    """Given no pool, `status` says so and exits 0; `status 1` exits 1."""

    async def main():
        assert await _status() == (0, "no running pool of this user\n")
        code, text = await _status("1")
        assert code == 1 and "hub pid 1" in text

    run(main)


def test_given_watch_then_it_redraws_until_ctrl_c():
    """Given a running pool, `status --watch 0.05` redraws the screen (twice at least)
    and exits 0 on Ctrl-C."""

    async def main():
        async with wool_local.WorkerPool(spawn=1):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "wool_local", "status", "--watch", "0.05",
                stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            seen = b""
            async with asyncio.timeout(20):
                while seen.count(b"\x1b[2J") < 2:
                    seen += await proc.stdout.read(4096)
                proc.send_signal(signal.SIGINT)
                await proc.communicate()
            assert proc.returncode == 0
            assert f"pool {os.getpid()}".encode() in seen

    run(main)
