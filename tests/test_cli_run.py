"""``wool-local run``: a real subprocess running a script with the ambient pool."""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

TIMEOUT = 60


def wool_local_run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    return subprocess.run(
        [sys.executable, "-m", "wool_local", "run", *args],
        capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def script(tmp_path: Path, body: str, name: str = "job.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def test_given_a_script_then_it_runs_as_main_with_the_ambient_pool(tmp_path):
    """Given a script with a routine, a plain function mapped by Executor() and a lambda,
    run with arguments, then it sees its argv and its directory as sys.path[0], every
    call runs in a worker, and the command exits with the script's status."""
    path = script(
        tmp_path,
        """
        import asyncio, os, sys
        import wool_local

        @wool_local.routine
        async def where(x):
            return x, os.getpid()

        def cube(x):
            return x ** 3

        async def main():
            results = await asyncio.gather(*(where(i) for i in range(4)))
            assert all(pid != os.getpid() for _, pid in results)
            with wool_local.Executor() as ex:
                elsewhere = ex.submit(lambda: os.getpid()).result() != os.getpid()
                print(list(ex.map(cube, range(4))), elsewhere)
            print(sys.argv, sys.path[0] == os.path.dirname(os.path.abspath(__file__)))

        asyncio.run(main())
        sys.exit(3)
    """,
    )
    done = wool_local_run(str(path), "a", "--flag", cwd=tmp_path)
    assert done.returncode == 3, done.stderr
    assert done.stdout.splitlines() == ["[0, 1, 8, 27] True", f"['{path}', 'a', '--flag'] True"]


def test_given_a_worker_exception_then_its_traceback_is_printed_and_the_exit_is_1(tmp_path):
    """Given a script whose routine raises, the command prints the traceback with the
    worker's part (the routine's own line) and none of the runner's frames, and exits 1."""
    path = script(
        tmp_path,
        """
        import asyncio, wool_local

        @wool_local.routine
        async def explode(x):
            raise KeyError(f"no such key {x}")

        asyncio.run(explode(3))
    """,
    )
    done = wool_local_run(str(path))
    assert done.returncode == 1
    assert 'raise KeyError(f"no such key {x}")' in done.stderr
    assert "KeyError: 'no such key 3'" in done.stderr.splitlines()[-1]
    assert "runpy" not in done.stderr and "wool_local/run.py" not in done.stderr


def test_given_a_module_then_it_runs_with_its_own_options(tmp_path):
    """Given -m with a module and --help after it, the module gets --help (as python -m)."""
    done = wool_local_run("-m", "json.tool", "--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: python -m json.tool")


SIZE = """
    import wool_local, wool_local.background as bg
    with wool_local.Executor() as ex:
        ex.submit(abs, 1).result()
    print(bg.ambient.pool.options.size)
"""


def test_given_options_and_environment_then_the_command_line_wins(tmp_path):
    """Given WOOL_LOCAL_WORKERS=1, the pool has 1 worker; with -n 2 as well, it has 2."""
    path = script(tmp_path, SIZE)
    assert wool_local_run(str(path), env={"WOOL_LOCAL_WORKERS": "1"}).stdout == "1\n"
    done = wool_local_run("-n", "2", str(path), env={"WOOL_LOCAL_WORKERS": "1"})
    assert done.stdout == "2\n", done.stderr


def test_given_a_bad_option_then_a_usage_error_names_it(tmp_path):
    """Given --max-rss lots or WOOL_LOCAL_MAX_AGE=soon, the command exits 2 naming it."""
    path = script(tmp_path, SIZE)
    done = wool_local_run("--max-rss", "lots", str(path))
    assert done.returncode == 2 and "--max-rss: cannot read 'lots'" in done.stderr
    done = wool_local_run(str(path), env={"WOOL_LOCAL_MAX_AGE": "soon"})
    assert done.returncode == 2 and "--max-age" in done.stderr


def test_given_a_timeout_then_every_routine_call_is_bounded_by_it(tmp_path):
    """Given --timeout 200ms, a routine that sleeps 30 s fails with a TimeoutError that
    names it and the limit."""
    path = script(
        tmp_path,
        """
        import asyncio, wool_local

        @wool_local.routine
        async def nap():
            await asyncio.sleep(30)

        asyncio.run(nap())
    """,
    )
    done = wool_local_run("--timeout", "200ms", str(path))
    assert done.returncode == 1
    assert "nap() exceeded dispatch_timeout=0.2 s" in done.stderr


def test_given_workers_printing_and_logging_then_lines_are_whole_and_prefixed_with_v(tmp_path):
    """Given two workers each printing 200 long lines and logging through the script's
    logging setup, with -v every line of output starts with a worker's pid and is whole."""
    path = script(
        tmp_path,
        """
        import asyncio, logging, os, wool_local
        logging.basicConfig(level=logging.INFO, format="LOG %(message)s")

        @wool_local.routine
        async def chatter(tag):
            for i in range(200):
                print(tag * 300, i)
            logging.info("done %s", tag)
            return os.getpid()

        async def main():
            print("pids", *await asyncio.gather(chatter("a"), chatter("b")))

        asyncio.run(main())
    """,
    )
    done = wool_local_run("-v", "-n", "2", str(path))
    assert done.returncode == 0, done.stderr
    *worker_lines, last = done.stdout.splitlines()
    pids = last.split()[1:]
    line = re.compile(r"\[(\d+)\] (a{300}|b{300}) \d+$")
    assert len(worker_lines) == 400
    assert all((m := line.match(x)) and m.group(1) in pids for x in worker_lines), worker_lines[:3]
    logs = [x for x in done.stderr.splitlines() if "LOG done" in x]
    assert len(logs) == 2 and all(re.match(r"\[\d+\] LOG done [ab]$", x) for x in logs)


#: How long a signalled run may take to exit: well under pytest-timeout's limit, so a
#: run that hangs fails the test here and is killed, not left behind.
EXIT_TIMEOUT = 20


@contextlib.contextmanager
def _running_until(path: Path, marker: Path, *args: str) -> Iterator[subprocess.Popen]:
    """``wool-local run`` of ``path``, once its routine has written to ``marker``; killed
    (its zygote and workers die with it) if the test leaves it running."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "wool_local", "run", *args, str(path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + EXIT_TIMEOUT
        # The routine says it runs (polled: another process), once its pid is in.
        while not (marker.exists() and marker.read_text()):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the routine never started"
            time.sleep(0.02)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=EXIT_TIMEOUT)


def _gone(pids: list[int]) -> bool:
    return not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]


def test_given_ctrl_c_then_work_is_cancelled_remote_finally_runs_and_the_exit_is_130(tmp_path):
    """Given a routine waiting forever, a first SIGINT cancels it (its finally runs in the
    worker), the command exits 130 within the stop timeout, and no worker or shared
    memory of it is left."""
    started, finished = tmp_path / "started", tmp_path / "finally"
    path = script(
        tmp_path,
        f"""
        import asyncio, os, wool_local

        @wool_local.routine
        async def wait_forever():
            open({str(started)!r}, "w").write(str(os.getpid()))
            try:
                await asyncio.Event().wait()
            finally:
                open({str(finished)!r}, "w").write("ran")

        asyncio.run(wait_forever())
    """,
    )
    with _running_until(path, started, "--stop-timeout", "5s") as proc:
        worker = int(started.read_text())
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=EXIT_TIMEOUT)
    assert proc.returncode == 130
    assert time.monotonic() - t0 < 5
    assert finished.read_text() == "ran"
    assert _gone([worker])
    assert not [n for n in os.listdir("/dev/shm") if f"-{proc.pid}-" in n or f"-{worker}-" in n]


def test_given_a_second_ctrl_c_then_the_workers_are_killed_at_once(tmp_path):
    """Given a routine that blocks ignoring cancellation and a stop timeout of 30 s, a
    second SIGINT during the stop kills the worker: the command exits within seconds."""
    started = tmp_path / "started"
    path = script(
        tmp_path,
        f"""
        import asyncio, os, time, wool_local

        @wool_local.routine
        async def stubborn():
            open({str(started)!r}, "w").write(str(os.getpid()))
            time.sleep(60)

        asyncio.run(stubborn())
    """,
    )
    with _running_until(path, started, "--stop-timeout", "30s") as proc:
        worker = int(started.read_text())
        proc.send_signal(signal.SIGINT)
        # Stopping now (nothing was read from stderr before: select sees all there is).
        assert select.select([proc.stderr], [], [], EXIT_TIMEOUT)[0], "no word of stopping"
        assert "Ctrl-C again kills the workers" in proc.stderr.readline()
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=EXIT_TIMEOUT)
    assert proc.returncode == 130, err
    assert time.monotonic() - t0 < 5
    assert "killing the workers" in err
    assert _gone([worker])


def test_given_progress_then_maps_draw_a_bar(tmp_path):
    """Given --progress, a map with no progress argument draws a tqdm bar on stderr."""
    path = script(
        tmp_path,
        """
        import wool_local
        with wool_local.Executor() as ex:
            assert len(list(ex.map(abs, range(500)))) == 500
    """,
    )
    done = wool_local_run("--progress", str(path))
    assert done.returncode == 0 and "100%" in done.stderr


def test_given_the_readme_example_then_it_prints_what_the_readme_shows():
    """Given the README's `wool-local run` example, the command prints the lines shown."""
    root = Path(__file__).resolve().parents[1]
    section = (root / "README.md").read_text().split("## `wool-local run`", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0].splitlines()
    command, *expected = block
    assert command.startswith("$ wool-local run ")
    done = wool_local_run(*command.split()[3:], cwd=root)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == expected
