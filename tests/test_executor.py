"""wool_local.Executor's own behaviours: crashes, threads and loops, context, quick exits,
routines, initializer, options. (What it shares with ProcessPoolExecutor is in
test_executor_conformance.py.)"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import wool_local
from wool_local import executor_map

from . import routines
from .test_executor_conformance import Gate, square, wait_gate

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.filterwarnings("ignore::wool_local.ThreadedForkWarning"),
]

ROOT = Path(__file__).resolve().parent.parent
WAIT = 10.0

# -- what the workers run --------------------------------------------------------------


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def pid() -> int:
    return os.getpid()


def read_request_id() -> str:
    return routines.request_id.get()


async def async_read_request_id() -> str:
    return routines.request_id.get()


_init_runs: list[int] = []  # in a worker: the initializer's runs there


def init(tag: str) -> None:
    _init_runs.append(os.getpid())
    os.environ["WOOL_TEST_INIT"] = tag


def init_seen(_: object = None) -> tuple[int, int, str]:
    return os.getpid(), len(_init_runs), os.environ.get("WOOL_TEST_INIT", "")


async def async_init_seen(_: object = None) -> tuple[int, int, str]:
    return init_seen()


def init_fails() -> None:
    raise OSError("no database")


@wool_local.routine(dispatch_timeout=0.2)
async def sleeps_past_its_limit() -> None:
    await asyncio.sleep(WAIT)


@wool_local.routine
async def sleeps(seconds: float) -> None:
    await asyncio.sleep(seconds)


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Gate]:
    g = Gate(tmp_path / "gate")
    yield g
    g.close()


@pytest.fixture
def ex(gate: Gate) -> Iterator[wool_local.Executor]:
    executor = wool_local.Executor(2)
    yield executor
    gate.open(10_000)
    executor.shutdown(wait=True, cancel_futures=True)


# -- crashes ---------------------------------------------------------------------------


def test_given_a_worker_dies_then_only_its_future_fails_and_the_executor_serves_on(ex, gate):
    """Given one worker busy on the gate, when a call kills the other worker, then only
    that call fails (WorkerCrashed), the busy call finishes once the gate opens, and
    new calls run (the dead worker is replaced)."""
    busy = ex.submit(wait_gate, gate.path, "alive")
    first = ex.submit(pid).result(WAIT)  # the idle worker answers: busy is running
    fatal = ex.submit(die)
    error = fatal.exception(WAIT)
    assert isinstance(error, wool_local.WorkerCrashed)
    assert error.signal == signal.SIGKILL
    gate.open()
    assert busy.result(WAIT) == "alive"
    assert [ex.submit(square, i).result(WAIT) for i in range(5)] == [0, 1, 4, 9, 16]
    assert first not in ex.pool.pids


# -- threads and loops -----------------------------------------------------------------


def test_given_many_threads_submitting_at_once_then_every_call_gets_its_result(ex):
    """Given 8 plain threads each submitting 100 calls at once, then every future holds
    its own call's result."""
    results: dict[int, list[int]] = {}

    def work(t: int) -> None:
        futures = [ex.submit(square, t * 1000 + i) for i in range(100)]
        results[t] = [f.result(WAIT) for f in futures]

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert results == {t: [(t * 1000 + i) ** 2 for i in range(100)] for t in range(8)}


def test_given_run_in_executor_on_uvloop_then_calls_and_cancellation_work(ex, gate):
    """Given a uvloop loop, when it runs calls through run_in_executor, then it awaits
    their results; and cancelling a task awaiting a pending call cancels the call."""
    import uvloop

    async def main() -> tuple[list[int], bool]:
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(*(loop.run_in_executor(ex, square, i) for i in range(5)))
        # Busy workers, then a call that stays pending behind 200 others.
        for _ in range(2):
            loop.run_in_executor(ex, wait_gate, gate.path)
        for i in range(200):
            loop.run_in_executor(ex, square, i)
        captured: list[cf.Future] = []
        submit = ex.submit

        def spy(*args, **kwargs):  # the concurrent future behind the asyncio one
            captured.append(submit(*args, **kwargs))
            return captured[-1]

        ex.submit = spy  # type: ignore[method-assign]
        try:
            waiting = asyncio.ensure_future(loop.run_in_executor(ex, square, -1))
            await asyncio.sleep(0)
        finally:
            del ex.submit
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
        gate.open(2)
        return results, captured[0].cancelled()

    results, cancelled = uvloop.run(asyncio.wait_for(main(), WAIT))
    assert results == [0, 1, 4, 9, 16]
    assert cancelled


def test_given_a_done_callback_that_blocks_on_a_result_then_runtime_error_not_a_hang(ex):
    """Given a done-callback (it runs in the executor's loop thread), when it waits on
    another call's result, on a map, or on shutdown(wait=True), then each raises a
    RuntimeError that says why, instead of waiting forever; submitting works there."""
    errors: list[BaseException] = []
    submitted: list[cf.Future] = []
    ran = threading.Event()

    def callback(_: cf.Future) -> None:
        try:
            try:
                submitted.append(ex.submit(square, 5))
                submitted[-1].result()
            except RuntimeError as exc:
                errors.append(exc)
            try:
                ex.map(square, range(3))
            except RuntimeError as exc:
                errors.append(exc)
            try:
                ex.shutdown(wait=True)
            except RuntimeError as exc:
                errors.append(exc)
        finally:
            ran.set()

    ex.submit(square, 1).add_done_callback(callback)
    assert ran.wait(WAIT)
    assert len(errors) == 3
    assert all("loop thread" in str(e) for e in errors)
    assert submitted[0].result(WAIT) == 25


# -- context ---------------------------------------------------------------------------


def test_given_a_context_var_set_by_the_caller_then_the_call_sees_it(ex):
    """Given a wool_local.ContextVar set in the submitting thread, then a submitted plain
    function, async function, routine and map see the value set at submit time; a
    thread with its own value passes its own."""
    token = routines.request_id.set("main")
    try:
        assert ex.submit(read_request_id).result(WAIT) == "main"
        assert ex.submit(async_read_request_id).result(WAIT) == "main"
        assert ex.submit(routines.read_var).result(WAIT) == "main"
        assert list(ex.map(lambda _: routines.request_id.get(), range(3))) == ["main"] * 3
        later = ex.submit(read_request_id)
        routines.request_id.set("changed after submit")
        assert later.result(WAIT) == "main"

        seen: list[str] = []

        def other_thread() -> None:
            routines.request_id.set("thread")
            seen.append(ex.submit(read_request_id).result(WAIT))

        t = threading.Thread(target=other_thread)
        t.start()
        t.join(WAIT)
        assert seen == ["thread"]
    finally:
        routines.request_id.reset(token)


# -- routines --------------------------------------------------------------------------


def test_given_routines_then_submit_and_map_run_their_bodies(ex):
    """Given routines, when submitted or mapped, then their bodies run in a worker, and
    routines they call dispatch again (nested calls work)."""
    assert ex.submit(routines.square, 9).result(WAIT) == 81
    assert ex.submit(routines.nested_sum, 10).result(WAIT) == sum(i * i for i in range(10))
    assert list(ex.map(routines.square, range(5))) == [0, 1, 4, 9, 16]
    with pytest.raises(TypeError, match="async generator"):
        ex.submit(routines.countdown, 3)


def test_given_routines_with_time_limits_then_the_future_fails_naming_routine_and_limit(ex):
    """Given a routine with dispatch_timeout=0.2 that sleeps longer, and a routine
    submitted under RuntimeContext(dispatch_timeout=0.1), then each future fails with a
    TimeoutError naming the routine and its limit, as a call in a pool block would."""
    with pytest.raises(
        TimeoutError, match=r"sleeps_past_its_limit\(\) exceeded dispatch_timeout=0.2"
    ):
        ex.submit(sleeps_past_its_limit).result(WAIT)
    with wool_local.RuntimeContext(dispatch_timeout=0.1):
        future = ex.submit(sleeps, WAIT)
    with pytest.raises(TimeoutError, match=r"sleeps\(\) exceeded dispatch_timeout=0.1"):
        future.result(WAIT)


def test_given_unpicklable_arguments_then_the_future_says_which(ex):
    """Given an argument that cannot be pickled, then the future fails with
    UnpicklableError."""
    future = ex.submit(square, threading.Lock())
    assert isinstance(future.exception(WAIT), wool_local.UnpicklableError)


# -- quick exits -----------------------------------------------------------------------


def sleep_then(seconds: float, value: int) -> int:
    time.sleep(seconds)  # the work itself
    return value


def test_given_an_error_in_the_with_block_then_leaving_it_is_quick():
    """Given 1,000 calls of 50 ms in flight and one that raised, when the error leaves
    the with block, then the block exits within about a second (queued calls dropped,
    running ones cancelled), with no worker killed, and every future is done."""
    started = None
    with pytest.raises(ValueError):
        with wool_local.Executor(2) as ex:
            futures = [
                ex.submit(fails_now) if i == 3 else ex.submit(sleep_then, 0.05, i)
                for i in range(1000)
            ]
            try:
                for f in futures:
                    f.result(WAIT)
            finally:
                started = time.monotonic()
    assert started is not None
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, elapsed
    assert all(f.done() for f in futures)
    assert sum(f.cancelled() for f in futures) > 900


def signal_then_wait(started: str, gate: str) -> None:
    with open(started, "wb", buffering=0) as f:
        f.write(b"s")
    wait_gate(gate)


def test_given_a_call_that_ignores_cancellation_then_leaving_on_error_waits_stop_timeout(
    tmp_path,
):
    """Given stop_timeout=0.3 and a running call blocked on a gate (it cannot be
    cancelled), when an error leaves the with block, then the block exits after about
    stop_timeout (its worker is killed) and the call's future is done."""
    import select

    started, gate = Gate(tmp_path / "started"), Gate(tmp_path / "gate")
    try:
        with pytest.raises(RuntimeError, match="leave"):
            with wool_local.Executor(1, stop_timeout=0.3) as ex:
                blocked = ex.submit(signal_then_wait, started.path, gate.path)
                assert select.select([started.fd], [], [], WAIT)[0], "the call never started"
                leaving = time.monotonic()
                raise RuntimeError("leave")
        elapsed = time.monotonic() - leaving
    finally:
        started.close()
        gate.close()
    assert 0.25 < elapsed < 2.0, elapsed
    assert blocked.done()


def fails_now() -> None:
    raise ValueError("item failed")


CTRL_C = """
import sys, time, wool_local
from tests.test_executor import sleep_then

with wool_local.Executor(2, stop_timeout=5) as ex:
    futures = [ex.submit(sleep_then, 0.05, i) for i in range(1000)]
    futures[0].result()
    print("running", flush=True)
    for f in futures:
        f.result()
"""

CTRL_C_NO_WITH = """
import sys, time, wool_local
from tests.test_executor import sleep_then

ex = wool_local.Executor(2, stop_timeout=5)
futures = [ex.submit(sleep_then, 0.05, i) for i in range(1000)]
futures[0].result()
print("running", flush=True)
for f in futures:
    f.result()
"""


@pytest.mark.parametrize("script", [CTRL_C, CTRL_C_NO_WITH], ids=["with", "no-with"])
def test_given_ctrl_c_mid_batch_then_the_program_ends_quickly_and_quietly(script):
    """Given a program running 1,000 calls of 50 ms (in a with block, or with no
    shutdown at all), when it gets SIGINT, then it ends with KeyboardInterrupt within
    about a second, kills no worker and logs nothing about stopping."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "running"
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=WAIT)
        elapsed = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "KeyboardInterrupt" in err
    assert "kill" not in err.lower() and "did not stop" not in err, err
    assert elapsed < 1.5, elapsed


def test_given_no_shutdown_at_all_then_the_program_still_exits_after_its_work():
    """Given a program that submits calls and never shuts its executor down, then it
    exits normally once its work is done (nothing hangs at interpreter exit) and says
    nothing about threads."""
    script = textwrap.dedent(
        """
        import wool_local
        from tests.test_executor import sleep_then
        ex = wool_local.Executor(2)
        futures = [ex.submit(sleep_then, 0.01, i) for i in range(10)]
        print(futures[0].result(), flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=WAIT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"
    assert "ThreadedForkWarning" not in done.stderr


# -- initializer and options -----------------------------------------------------------


def test_given_an_initializer_then_it_runs_once_in_each_worker_before_its_calls():
    """Given initializer=init, initargs=("ready",), then every call (plain, async, in a
    map) sees it ran, exactly once in its worker process."""
    with wool_local.Executor(2, initializer=init, initargs=("ready",)) as ex:
        seen = [f.result(WAIT) for f in [ex.submit(init_seen) for _ in range(50)]]
        seen += [ex.submit(async_init_seen).result(WAIT) for _ in range(5)]
        seen += list(ex.map(init_seen, range(50)))
        seen += list(ex.map(async_init_seen, range(5)))
    assert {(runs, tag) for _, runs, tag in seen} == {(1, "ready")}
    assert os.getpid() not in {p for p, _, _ in seen}


def test_given_an_initializer_that_fails_then_the_calls_fail_with_its_error():
    """Given an initializer that raises, then calls fail with its exception (the
    executor is not broken: it retries in each call's worker)."""
    with wool_local.Executor(1, initializer=init_fails) as ex:
        with pytest.raises(OSError, match="no database"):
            ex.submit(square, 2).result(WAIT)


def test_given_pool_options_then_they_reach_the_pool():
    """Given limits, max_tasks_per_child and other WorkerPool options, then the pool
    has them; a worker past max_tasks_per_child is replaced."""
    limits = wool_local.WorkerLimits(max_rss="2GiB")
    ex = wool_local.Executor(
        1, limits=limits, stop_timeout=2.5, cancel_grace=1.5, max_inflight=8, min_workers=1
    )
    options = ex.pool.options
    assert options.limits is limits and options.stop_timeout == 2.5
    assert options.cancel_grace == 1.5 and options.max_inflight == 8 and options.min_workers == 1
    assert ex.max_workers == 1 and ex._max_workers == 1
    ex.shutdown()

    with wool_local.Executor(1, max_tasks_per_child=2, monitor_interval=0.05) as ex:
        assert ex.pool.options.limits.max_tasks == 2
        first = ex.submit(pid).result(WAIT)
        deadline = time.monotonic() + WAIT
        while ex.submit(pid).result(WAIT) == first:  # each call is a task
            assert time.monotonic() < deadline, "the worker was never replaced"


def test_given_bad_arguments_then_the_constructor_says_so():
    """Given arguments ProcessPoolExecutor takes that make no sense here, or bad values,
    then the constructor raises a clear error and starts nothing."""
    with pytest.raises(TypeError, match="mp_context"):
        wool_local.Executor(2, mp_context=object())
    with pytest.raises(ValueError, match="max_workers"):
        wool_local.Executor(0)
    with pytest.raises(TypeError, match="initializer"):
        wool_local.Executor(1, initializer="nope")  # type: ignore[arg-type]


def test_given_the_pool_cannot_start_then_submit_says_why_and_the_executor_is_broken(
    monkeypatch,
):
    """Given a pool whose start fails, when a call is submitted, then the start's error
    is raised, the executor's thread ends, and later submits raise BrokenExecutor."""

    async def no_start(self):
        raise OSError("no shared memory")

    monkeypatch.setattr(wool_local.WorkerPool, "__aenter__", no_start)
    ex = wool_local.Executor(1)
    with pytest.raises(OSError, match="no shared memory"):
        ex.submit(square, 2)
    with pytest.raises(cf.BrokenExecutor, match="no shared memory"):
        ex.submit(square, 2)
    assert not any(t.name == "wool_local.Executor" for t in threading.enumerate())
    ex.shutdown()


def test_given_a_forked_child_then_the_parents_executor_refuses_calls(ex):
    """Given a running executor, when the process forks, then in the child submitting
    raises BrokenExecutor (the executor's thread and pool are the parent's) instead of
    hanging; the parent's executor serves on."""
    from .forking import fork, join

    assert ex.submit(square, 2).result(WAIT) == 4

    def child() -> None:
        try:
            ex.submit(square, 3)
        except cf.BrokenExecutor:
            return
        raise AssertionError("the child could submit")

    assert join(fork(child)) == 0
    assert ex.submit(square, 4).result(WAIT) == 16


# -- map -------------------------------------------------------------------------------


def test_given_a_slow_consumer_then_map_reads_its_input_a_bounded_way_ahead(monkeypatch):
    """Given a map over an endless generator whose results are not taken, then the
    map pauses with a bounded number of items read, and goes on when they are taken."""
    monkeypatch.setattr(executor_map, "MAP_BUFFER", 64)
    read = 0

    def naturals() -> Iterator[int]:
        nonlocal read
        while True:
            read += 1
            yield read

    with wool_local.Executor(2) as ex:
        results = ex.map(square, naturals(), chunksize=4)
        assert next(results) == 1
        relay = results.gi_frame.f_locals["relay"]  # type: ignore[attr-defined]
        deadline = time.monotonic() + WAIT
        while not relay.paused:  # the producer's own state: it stops when full
            assert time.monotonic() < deadline, "the map never paused"
            time.sleep(0.001)
        # Read so far: the batch the caller holds and the buffer (64 at most each), and
        # the chunks in the map's window (3 per worker, of 4 items).
        assert read <= 64 + 64 + 2 * 3 * 4
        taken = [next(results) for _ in range(200)]
        assert taken == [i * i for i in range(2, 202)]
        results.close()  # type: ignore[attr-defined]


def test_given_a_map_dropped_unfinished_then_shutdown_does_not_wait_for_it():
    """Given a map over an endless generator, when its iterator is dropped, then the
    map stops and leaving the with block does not hang."""

    def naturals() -> Iterator[int]:
        n = 0
        while True:
            yield n
            n += 1

    with wool_local.Executor(2) as ex:
        results = ex.map(square, naturals())
        assert next(results) == 0
        del results


def test_given_map_unordered_then_every_result_comes():
    """Given map(ordered=False), then every result comes once (in any order)."""
    with wool_local.Executor(2) as ex:
        assert sorted(ex.map(square, range(300), ordered=False)) == [i * i for i in range(300)]


# -- the porting example ---------------------------------------------------------------


def test_given_the_python_docs_example_ported_by_its_constructor_then_it_runs():
    """Given examples/executor_primes.py (the concurrent.futures docs' is_prime example
    with only its constructor changed), when run, then it prints the docs' output and
    no warning."""
    done = subprocess.run(
        [sys.executable, "examples/executor_primes.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "112272535095293 is prime: True",
        "112582705942171 is prime: True",
        "112272535095293 is prime: True",
        "115280095190773 is prime: True",
        "115797848077099 is prime: True",
        "1099726899285419 is prime: False",
    ]
    assert done.stderr == ""


def test_given_the_readme_section_from_processpoolexecutor_then_its_snippet_runs():
    """Given the README's "From ProcessPoolExecutor" section, when its Python snippet
    runs as a program, then it prints what it promises."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## From `ProcessPoolExecutor`", 1)[1].split("\n## ", 1)[0]
    snippet = section.split("```python\n", 1)[1].split("```", 1)[0]
    done = subprocess.run(
        [sys.executable, "-c", snippet], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["ba7816bf8f01cfea", "20000", "42"]
