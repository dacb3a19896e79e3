"""The wool backend end to end: the same programs on both backends print the same.

Each program runs in a subprocess: wool's workers are spawned processes with gRPC
servers, and gRPC keeps threads and fds for the life of a process that used it,
which the suite's leak check would (rightly) count against the test. The
subprocess ends its wool workers as it exits.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "both_backends.py"
#: A run's bound; a wool pool starts in about 0.3 s, a program here takes 1-3 s.
RUN_TIMEOUT = 50

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(
        importlib.util.find_spec("wool") is None,
        reason="the wool backend needs wool: pip install 'wool-local[wool]' (CI installs it)",
    ),
]


def run(*argv: str, cwd: Path = ROOT) -> str:
    """Run ``python argv...``; it must succeed; its stdout."""
    done = subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=RUN_TIMEOUT, cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def script(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "job.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_given_the_example_program_then_both_backends_print_the_same():
    """Given examples/both_backends.py (coroutines, an async generator driven with asend,
    a context variable set by the caller and changed by routines, a nested dispatch, an
    exception caught by its type, a map), when it runs on forked workers, on wool, and
    on wool through ``wool-local run --backend wool``, then the three outputs are equal."""
    local = run(str(EXAMPLE))
    on_wool = run(str(EXAMPLE), "--backend", "wool")
    through_run = run("-m", "wool_local", "run", "--backend", "wool", str(EXAMPLE))
    assert "caught: OutOfStock no mango left | took mango" in local
    assert "basket: 70 | priced by basket after set by caller" in local
    assert on_wool == local
    assert through_run == local


EXECUTOR = """
    import sys
    import wool_local

    def cube(x):
        return x ** 3

    @wool_local.routine
    async def plus_one(x):
        return x + 1

    if __name__ == "__main__":
        backend = sys.argv[1] if len(sys.argv) > 1 else None
        options = {} if backend is None else {"backend": backend}
        with wool_local.Executor(2, **options) as ex:
            print(ex.submit(cube, 3).result(), ex.submit(plus_one, 41).result())
            print(ex.submit(lambda n: n * 2, 21).result())
            print(sum(ex.map(cube, range(2000))))
            try:
                ex.submit(int, "x").result()
            except ValueError as exc:
                print("ValueError:", exc)
            try:
                list(ex.map(int, ["1", "2", "y"]))
            except ValueError as exc:
                print("map stopped:", exc, exc.__notes__)
"""


def test_given_an_executor_then_submit_and_map_work_on_wool_as_on_forked_workers(tmp_path):
    """Given a program using Executor(2, backend=...) for submit (a function, a routine, a
    lambda), map (chunked) and two failures, then wool prints what forked workers do."""
    path = script(tmp_path, EXECUTOR)
    local = run(str(path), "local", cwd=tmp_path)
    assert local.splitlines()[0] == "27 42"
    assert "map stopped: invalid literal for int() with base 10: 'y'" in local
    assert run(str(path), "wool", cwd=tmp_path) == local


AMBIENT = """
    import asyncio, os, sys
    import wool_local

    mark = wool_local.ContextVar("mark", default="none")

    @wool_local.routine
    async def square(x):
        mark.set(f"squared {x}")
        return x * x

    @wool_local.routine
    async def count(n):
        for i in range(n):
            mark.set(f"at {i}")
            yield i

    @wool_local.routine
    async def sleeper():
        try:
            await asyncio.sleep(30)
        finally:
            pass

    @wool_local.routine
    async def die():
        os._exit(3)

    def cube(x):
        return x ** 3

    async def main():
        print(sum(await asyncio.gather(*(square(i) for i in range(100)))))
        mark.set("caller")
        print(await square(3), mark.get())
        print([i async for i in count(3)], mark.get())
        task = asyncio.ensure_future(sleeper())
        await asyncio.sleep(0.2)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            print("cancelled")
        with wool_local.Executor() as ex:  # the ambient pool's
            print(list(ex.map(cube, range(4))))
        try:  # last: wool does not replace a worker that died
            await die()
        except wool_local.WorkerCrashed:
            print("a worker died: WorkerCrashed")
        print(await square(4))

    if __name__ == "__main__":
        asyncio.run(main())
"""


def test_given_wool_local_run_with_the_wool_backend_then_the_ambient_pool_is_wool(tmp_path):
    """Given a script that calls routines outside any pool block (the ambient pool, whose
    loop runs in another thread), cancels one, loses a worker and uses Executor(), when
    run by ``wool-local run`` on each backend, then the outputs are equal: context
    changes come back, the cancel reaches the worker, a lost worker is WorkerCrashed
    and the pool goes on."""
    path = script(tmp_path, AMBIENT)
    local = run("-m", "wool_local", "run", "-n", "2", str(path), cwd=tmp_path)
    assert local.splitlines() == [
        "328350",
        "9 squared 3",
        "[0, 1, 2] at 2",
        "cancelled",
        "[0, 1, 8, 27]",
        "a worker died: WorkerCrashed",
        "16",
    ]
    wool_run = ("-m", "wool_local", "run", "--backend", "wool", "-n", "2")
    assert run(*wool_run, str(path), cwd=tmp_path) == local


AFTER_EXIT = """
    import asyncio
    import wool_local

    @wool_local.routine
    async def one():
        return 1

    async def main():
        async with wool_local.WorkerPool(1, backend="wool") as pool:
            hub = pool.hub
            print(await one())
        try:
            await one()
        except wool_local.NoPoolError:
            print("NoPoolError")
        try:
            await hub.call(one._body, (), {})
        except wool_local.PoolClosed:
            print("PoolClosed")

    if __name__ == "__main__":
        asyncio.run(main())
"""


def test_given_a_wool_pool_that_exited_then_calls_fail_as_on_a_local_one(tmp_path):
    """Given a wool-backed pool that has exited, when a routine is called, then it raises
    NoPoolError; and through the pool's hub kept from inside the block, PoolClosed."""
    assert run(str(script(tmp_path, AFTER_EXIT)), cwd=tmp_path).split() == [
        "1",
        "NoPoolError",
        "PoolClosed",
    ]


AT_EXIT = """
    import asyncio, os, sys, time
    import wool_local

    @wool_local.routine
    async def nap(marker, seconds):
        open(marker, "w").close()  # running now
        await asyncio.sleep(seconds)
        return "woke"

    async def main(backend):
        start = time.perf_counter()
        async with wool_local.WorkerPool(1, backend=backend, stop_timeout=2):
            markers = [f"started-{backend}-{i}" for i in range(2)]
            naps = [asyncio.ensure_future(nap(m, s)) for m, s in zip(markers, (10, 20))]
            while not all(os.path.exists(m) for m in markers):  # another process: polled
                await asyncio.sleep(0.01)
        for task in naps:
            try:
                print(await task)
            except wool_local.PoolClosed:
                print("PoolClosed")
        print(time.perf_counter() - start < 5)

    if __name__ == "__main__":
        asyncio.run(main(sys.argv[1]))
"""


def test_given_calls_in_flight_when_the_block_ends_then_they_fail_with_pool_closed(tmp_path):
    """Given two calls running (each has said so) when a pool's block ends, then on both
    backends they fail with PoolClosed and the exit does not wait for them (wool itself
    would let them run to the end)."""
    path = script(tmp_path, AT_EXIT)
    expected = ["PoolClosed", "PoolClosed", "True"]
    assert run(str(path), "local", cwd=tmp_path).split() == expected
    assert run(str(path), "wool", cwd=tmp_path).split() == expected


HOST_JOB = """
    import os
    import wool_local

    seen = wool_local.ContextVar("seen", default="nobody")

    @wool_local.routine
    async def where(x):
        seen.set(f"worker saw {x}")
        return x * 2, os.getppid()
"""

WORKER_HOST = """
    import asyncio, functools, sys
    import wool, wool_local
    import hostjob  # noqa: F401  (the routines these workers run)

    async def main(namespace):
        discovery = functools.partial(wool.LocalDiscovery, namespace)
        async with wool_local.WorkerPool(2, backend="wool", discovery=discovery):
            print("serving", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    if __name__ == "__main__":
        asyncio.run(main(sys.argv[1]))
"""

CLIENT = """
    import asyncio, functools, sys
    import wool, wool_local
    from hostjob import seen, where

    async def main(namespace):
        discovery = functools.partial(wool.LocalDiscovery, namespace)
        async with wool_local.WorkerPool(backend="wool", discovery=discovery):
            results = await asyncio.gather(*(where(i) for i in range(4)))
            print([x for x, _ in results], *sorted({parent for _, parent in results}))
            print((await where(9))[0], seen.get())

    if __name__ == "__main__":
        asyncio.run(main(sys.argv[1]))
"""


def test_given_workers_published_under_a_namespace_then_a_pool_joining_it_uses_them(tmp_path):
    """Given a process serving 2 wool workers under a discovery namespace (the several
    hosts recipe, on one host: wool's LocalDiscovery in place of LanDiscovery), when a
    pool with discovery and no workers of its own calls routines of an importable
    module, then they run in the other process's workers and context changes come back."""
    import select
    import uuid

    (tmp_path / "hostjob.py").write_text(textwrap.dedent(HOST_JOB))
    namespace = f"wool-local-test-{uuid.uuid4().hex[:12]}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    host = subprocess.Popen(
        [sys.executable, str(script(tmp_path, WORKER_HOST)), namespace], cwd=tmp_path, env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        ready, _, _ = select.select([host.stdout], [], [], RUN_TIMEOUT)
        assert ready and host.stdout.readline().strip() == "serving"
        client = tmp_path / "client.py"
        client.write_text(textwrap.dedent(CLIENT))
        done = subprocess.run(
            [sys.executable, str(client), namespace], capture_output=True, text=True,
            timeout=RUN_TIMEOUT, cwd=tmp_path, env=env,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        # The workers' parent is the worker host: none runs in the client's process tree.
        assert done.stdout.splitlines() == [f"[0, 2, 4, 6] {host.pid}", "18 worker saw 9"]
    finally:
        host.stdin.close()  # the worker host leaves its pool and exits
        try:
            host.wait(timeout=RUN_TIMEOUT)
        finally:
            if host.poll() is None:
                host.kill()
                host.wait()
            host.stdout.close()


OPEN_STREAM_AND_GRPC_ERROR = """
    import asyncio, sys
    import grpc
    import wool_local

    @wool_local.routine
    async def ticks(path):
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            with open(path, "a") as f:
                f.write("closed\\n")

    @wool_local.routine
    async def pay():
        # A routine that calls some other gRPC service, which is down.
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(),
            details="payments service down",
        )

    async def main(backend, path):
        async with wool_local.WorkerPool(1, backend=backend, stop_timeout=30):
            try:
                await pay()
            except Exception as exc:
                print(type(exc).__name__, isinstance(exc, wool_local.WorkerCrashed))
            gen = ticks(path)
            print(await gen.__anext__())
        print(open(path).read().split())
        try:
            await gen.__anext__()
        except Exception as exc:
            print(type(exc).__name__)

    if __name__ == "__main__":
        asyncio.run(main(*sys.argv[1:]))
"""


def test_given_a_stream_open_and_a_routines_own_grpc_error_then_both_backends_agree(tmp_path):
    """Given a routine that lets a gRPC UNAVAILABLE error of its own out, and a stream
    still open (between steps) when the pool's block ends, then on both backends the
    error arrives as the routine's (not as a lost worker), the stream's remote
    ``finally`` has run by the time the block is left, and its next step raises
    PoolClosed."""
    path = script(tmp_path, OPEN_STREAM_AND_GRPC_ERROR)
    expected = ["AioRpcError", "False", "0", "['closed']", "PoolClosed"]
    for backend in ("local", "wool"):
        marker = tmp_path / f"closed-{backend}.txt"
        out = run(str(path), backend, str(marker), cwd=tmp_path)
        assert out.split() == expected, backend
