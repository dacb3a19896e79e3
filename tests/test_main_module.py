"""Routines defined in ``__main__`` (a script), before and after the pool starts."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import wool_local

SCRIPT = textwrap.dedent(
    """
    import asyncio, os, wool_local

    @wool_local.routine
    async def before(x):
        return x + 1, os.getpid()

    def make_closure(k):
        @wool_local.routine
        async def closure(x):
            return x * k
        return closure

    async def main():
        async with wool_local.WorkerPool(spawn=2) as pool:
            value, pid = await before(1)
            assert value == 2 and pid in pool.pids, (value, pid)

            @wool_local.routine
            async def after(x):
                return x - 1

            globals()["later"] = after
            assert await after(10) == 9
            assert await make_closure(3)(5) == 15
            square = lambda v: v * v
            @wool_local.routine
            async def uses_lambda(v):
                return square(v)
            assert await uses_lambda(7) == 49
        print("ok")

    asyncio.run(main())
    """
)


def test_given_script_with_routines_in_main_then_all_dispatch(tmp_path):
    """Given routines defined in __main__ before and after the pool starts, all run."""
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    root = os.path.dirname(os.path.dirname(wool_local.__file__))
    env = {**os.environ, "PYTHONPATH": root}
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
