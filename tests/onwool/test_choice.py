"""Choosing the backend: the checks made before anything starts, and the cost of the
choice (wool is imported only when a wool-backed pool starts)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import wool_local
from wool_local import WorkerLimits

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(30)


def test_given_an_unknown_backend_then_the_pool_refuses_it():
    """Given backend="wol", when a WorkerPool or an Executor is made, then ValueError
    names the two backends."""
    with pytest.raises(ValueError, match=r"backend must be 'local' or 'wool', got 'wol'"):
        wool_local.WorkerPool(backend="wol")
    with pytest.raises(ValueError, match="got 'wol'"):
        wool_local.Executor(backend="wol")


def test_given_options_of_forked_workers_then_the_wool_backend_refuses_them(monkeypatch):
    """Given the wool backend and options only forked workers have (limits, max_inflight),
    then ValueError names them; their defaults, and stop_timeout, are accepted."""
    monkeypatch.setattr("wool_local.onwool.check_installed", lambda: None)
    with pytest.raises(ValueError, match=r"^limits, max_inflight: not an option of the wool"):
        wool_local.WorkerPool(2, backend="wool", limits=WorkerLimits(max_rss=1), max_inflight=3)
    pool = wool_local.WorkerPool(2, backend="wool", limits=WorkerLimits(), stop_timeout=2)
    assert (pool.backend, pool.spawn) == ("wool", 2)


def test_given_discovery_on_the_local_backend_then_it_is_refused():
    """Given discovery= without backend="wool", then ValueError says it needs wool."""
    with pytest.raises(ValueError, match=r"discovery= needs backend='wool'"):
        wool_local.WorkerPool(discovery="myjob")


def test_given_wool_is_not_installed_then_choosing_it_says_how_to_install_it(monkeypatch):
    """Given no importable wool package, when a wool-backed pool is made, then ImportError
    tells to pip install wool-local[wool]."""
    monkeypatch.setitem(sys.modules, "wool", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"pip install 'wool-local\[wool\]'"):
        wool_local.WorkerPool(backend="wool")


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wool_local", "run", *args], capture_output=True, text=True,
        timeout=20, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
    )  # fmt: skip


def test_given_a_bad_backend_option_then_wool_local_run_exits_2_with_a_message():
    """Given --backend wol, WOOL_LOCAL_BACKEND=wol, or --discovery without the wool
    backend, then wool-local run exits 2 saying what is wrong, before running the script."""
    for args, env, message in (
        (("--backend", "wol"), None, "--backend must be 'local' or 'wool', got 'wol'"),
        ((), {"WOOL_LOCAL_BACKEND": "wol"}, "--backend must be 'local' or 'wool'"),
        (("--discovery", "myjob"), None, "--discovery needs --backend wool"),
    ):
        done = run_cli(*args, "examples/both_backends.py", env=env)
        assert done.returncode == 2, done.stderr
        assert message in done.stderr
        assert done.stdout == ""


def test_given_the_wool_backend_chosen_then_wool_is_imported_only_when_a_pool_starts():
    """Given a fresh interpreter, when wool_local is imported, a wool-backed pool and
    executor are made and routines defined, then wool (and grpc) are not imported."""
    code = textwrap.dedent(
        """
        import sys
        import wool_local

        @wool_local.routine
        async def f():
            return 1

        wool_local.WorkerPool(2, backend="wool")
        wool_local.Executor(2, backend="wool").shutdown()
        import wool_local.onwool, wool_local.run
        print(sorted(m for m in ("wool", "grpc") if m in sys.modules))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=20,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
