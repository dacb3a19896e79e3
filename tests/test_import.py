"""``import wool_local`` is cheap: the runtime comes in when a pool starts or a routine
is first called, and everything public still works as if imported eagerly.

Each check runs in a fresh interpreter: in this one the runtime is imported already.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import wool_local

ROOT = Path(__file__).resolve().parent.parent

#: What ``import wool_local`` and ``@routine`` must not import.
HEAVY = (
    "asyncio",
    "uvloop",
    "psutil",
    "posix_ipc",
    "msgspec",
    "cloudpickle",
    "wool_local.workers",
    "wool_local.ipc",
    "wool_local.pool",
)

#: A loose bound on the cumulative import time of wool_local (it is a few ms on the
#: development machine; CI machines differ).
IMPORT_BOUND_US = 60_000


def python(code: str, cwd: Path | None = None, *flags: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (bounded); it must succeed."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), str(cwd or "")])))
    done = subprocess.run(
        [sys.executable, *flags, "-c", textwrap.dedent(code)],
        cwd=cwd or ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done


def test_given_fresh_interpreter_when_importing_and_decorating_then_no_runtime_is_imported():
    """Given a fresh interpreter,
    When it imports wool_local and decorates async functions with @routine,
    Then neither imports asyncio, uvloop, psutil, posix_ipc, msgspec, cloudpickle, nor
    the hub or the ipc layer."""
    done = python(
        """
        import sys
        import wool_local
        after_import = [m for m in HEAVY if m in sys.modules]

        @wool_local.routine
        async def f(x):
            return x

        @wool_local.routine(dispatch_timeout=5)
        async def g():
            yield 1

        class C:
            @wool_local.routine
            async def m(self):
                pass

            @wool_local.routine
            @staticmethod
            async def s():
                pass

        after_decorating = [m for m in HEAVY if m in sys.modules]
        print(after_import, after_decorating)
        """.replace("HEAVY", repr(HEAVY))
    )
    assert done.stdout.split() == ["[]", "[]"]


def test_given_fresh_interpreter_then_import_time_of_wool_local_is_small():
    """Given a fresh interpreter with -X importtime,
    When it imports wool_local,
    Then the cumulative import time of wool_local (best of 3) is under a loose bound."""
    times = []
    for _ in range(3):
        done = python("import wool_local", None, "-X", "importtime")
        [line] = [
            ln for ln in done.stderr.splitlines() if ln.split("|")[-1].strip() == "wool_local"
        ]
        times.append(int(line.split("|")[1]))
    assert min(times) < IMPORT_BOUND_US, f"import wool_local took {min(times)} us (best of 3)"


def test_given_lazy_names_then_public_api_resolves_as_before():
    """Given a fresh interpreter that imported wool_local only,
    When it uses every public name (star import, attributes, dir, isinstance),
    Then each resolves to the same object as in its submodule, and a wrong name is an
    AttributeError."""
    done = python(
        """
        import pickle, sys
        import wool_local
        assert wool_local.routine.__module__ == "wool_local.routine"
        assert set(wool_local.__all__) <= set(dir(wool_local))
        namespace = {}
        exec("from wool_local import *", namespace)
        missing = [n for n in wool_local.__all__ if n not in namespace]
        assert not missing, missing
        from wool_local import workers, pool, context
        assert wool_local.WorkerPool is pool.WorkerPool
        assert wool_local.RuntimeContext is context.RuntimeContext
        assert wool_local.ContextVar is workers.ContextVar
        assert wool_local.__proxy__ is workers.__proxy__
        assert issubclass(wool_local.WorkerCrashed, Exception)
        assert issubclass(wool_local.ThreadedForkWarning, Warning)
        try:
            wool_local.NoSuchThing
        except AttributeError as exc:
            assert "NoSuchThing" in str(exc)
        else:
            raise AssertionError("no AttributeError")
        print("ok")
        """
    )
    assert done.stdout.strip() == "ok"


JOBS = """
import pickle
import sys

import wool_local


@wool_local.routine
async def inner(seconds):
    import asyncio

    await asyncio.sleep(seconds)


@wool_local.routine(dispatch_timeout=20)
async def outer():
    try:
        await inner(3)
    except TimeoutError as exc:
        return str(exc)
    return "inner() ran unbounded"


@wool_local.routine
async def double(x):
    return 2 * x


def pickled_without_runtime():
    data = pickle.dumps(double)
    assert pickle.loads(data) is double
    assert isinstance(double, wool_local.Routine)
    return not any(m in sys.modules for m in ("asyncio", "wool_local.workers"))


async def main():
    pool = wool_local.WorkerPool(1)
    assert "wool_local.context" in sys.modules  # declared before the workers fork
    async with pool:
        assert await double(21) == 42
        # RuntimeContext is first touched here, after the workers were forked.
        with wool_local.RuntimeContext(dispatch_timeout=0.3):
            return await outer()
"""


def test_given_lazy_import_when_pool_runs_then_routines_pickle_and_timeouts_travel(tmp_path):
    """Given a module of routines in a fresh interpreter that imported wool_local only,
    When it pickles a routine (before any runtime is loaded), starts a pool, calls a
    routine, and enters RuntimeContext for the first time after the workers were forked,
    Then the routine pickles by reference without loading the runtime, the call works,
    and the ambient timeout reaches a nested call in the worker, whose TimeoutError
    names it."""
    (tmp_path / "jobs.py").write_text(JOBS)
    done = python(
        """
        import jobs
        print(jobs.pickled_without_runtime())
        import asyncio
        print(asyncio.run(jobs.main()))
        """,
        tmp_path,
    )
    assert done.stdout.splitlines() == ["True", "inner() exceeded dispatch_timeout=0.3 s"]


def test_given_timeout_variable_declared_after_a_value_arrived_then_routines_still_see_it():
    """Given a fresh process where a dispatch_timeout value arrives before wool_local.context
    is imported (a worker forked by a pool that did not declare it),
    When a routine is first called there (which imports it),
    Then the ambient timeout the routine calls read is that value."""
    done = python(
        """
        import sys
        import wool_local
        from wool_local.workers import context
        context.apply({"wool_local:dispatch_timeout": 0.5})  # what a dispatch brings
        assert "wool_local.context" not in sys.modules
        routine_module = sys.modules["wool_local.routine"]
        routine_module._load_runtime()
        print(routine_module._timeout_value(None))
        """
    )
    assert done.stdout.strip() == "0.5"


def test_given_this_process_then_lazy_names_are_the_real_objects():
    """Given this (test) process, where the runtime is loaded,
    When the lazy names are read,
    Then they are the runtime's objects and cached as plain module attributes."""
    from wool_local import workers

    assert wool_local.PoolClosed is workers.PoolClosed
    assert "PoolClosed" in vars(wool_local)
