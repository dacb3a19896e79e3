"""A SIGKILLed hub takes its zygote and workers with it and leaves nothing in /dev/shm."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import psutil

import wool_local
from wool_local.ipc.segment import owned_leftovers

HUB = textwrap.dedent(
    """
    import asyncio, json, os, sys, wool_local

    @wool_local.routine
    async def hang():
        await asyncio.sleep(3600)

    async def main():
        async with wool_local.WorkerPool(spawn=2) as wp:
            calls = [asyncio.ensure_future(hang()) for _ in range(4)]
            await asyncio.sleep(0.1)
            print(json.dumps({"zygote": wp.hub.zygote_pid, "workers": wp.pids}), flush=True)
            sys.stdin.readline()  # parks until killed

    asyncio.run(main())
    """
)


def test_given_hub_sigkilled_mid_work_then_zygote_and_workers_exit_and_shm_is_clean(tmp_path):
    """Given a hub killed with SIGKILL while its workers run tasks, every process of its
    tree exits within seconds and no segment of theirs stays in /dev/shm."""
    script = tmp_path / "hub.py"
    script.write_text(HUB)
    root = os.path.dirname(os.path.dirname(wool_local.__file__))
    hub = subprocess.Popen(
        [sys.executable, str(script)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": root},
    )
    try:
        line = hub.stdout.readline()
        tree = json.loads(line)
        procs = [psutil.Process(pid) for pid in [tree["zygote"], *tree["workers"]]]
        hub.kill()
        hub.wait(10)
        _, alive = psutil.wait_procs(procs, timeout=10)
        assert alive == [], f"survived their hub: {[p.pid for p in alive]}"
        pids = {hub.pid, *(p.pid for p in procs)}
        assert [n for n, pid, _ in owned_leftovers() if pid in pids] == []
    finally:
        if hub.poll() is None:
            hub.send_signal(signal.SIGKILL)
            hub.wait(10)
        hub.stdin.close()
        hub.stdout.close()
