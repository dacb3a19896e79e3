"""Routines the tests dispatch; module-level so workers import them by reference."""

from __future__ import annotations

import asyncio
import ctypes
import os
import threading
import time

import wool_local


@wool_local.routine
async def square(x: int) -> int:
    return x * x


@wool_local.routine
async def whoami() -> int:
    return os.getpid()


@wool_local.routine
async def echo(value):
    return value


@wool_local.routine
async def fail(message: str) -> None:
    raise ValueError(message)


@wool_local.routine
async def countdown(n: int):
    while n:
        yield n
        n -= 1


@wool_local.routine
async def conversation(done_fd: int):
    """Echoes what is sent, reports what is thrown, signals done_fd when closed."""
    try:
        received = yield "ready"
        while True:
            try:
                received = yield f"got {received}"
            except KeyError as exc:
                received = yield f"caught {exc.args[0]}"
    finally:
        os.write(done_fd, b"closed")


@wool_local.routine
async def wait_forever(started_fd: int, finally_fd: int) -> None:
    os.write(started_fd, b"started")
    try:
        await asyncio.sleep(3600)
    finally:
        os.write(finally_fd, b"finally")


@wool_local.routine
async def block_cpu(started_fd: int, seconds: float) -> int:
    """Blocking code that ignores cancellation (the loop never gets control)."""
    os.write(started_fd, b"started")
    time.sleep(seconds)
    return os.getpid()


@wool_local.routine
async def die(how: str, started_fd: int = -1) -> None:
    if started_fd >= 0:
        os.write(started_fd, b"started")
    if how == "exit":
        os._exit(3)
    if how == "segfault":
        import faulthandler

        faulthandler.disable()  # inherited from pytest: a deliberate crash prints no dump
        ctypes.string_at(0)
    if how == "hang":
        await asyncio.sleep(3600)


@wool_local.routine
async def lock_result():
    return threading.Lock()


@wool_local.routine
async def raise_unpicklable():
    class Local(Exception):
        pass

    raise Local("made in a function")


@wool_local.routine
async def nested_sum(n: int) -> int:
    values = await asyncio.gather(*(square(i) for i in range(n)))
    return sum(values)


@wool_local.routine
async def nested_depth(depth: int) -> int:
    if depth == 0:
        return os.getpid()
    return await nested_depth(depth - 1)


@wool_local.routine
async def nested_stream(n: int) -> list[int]:
    return [v async for v in countdown(n)]


class Calculator:
    def __init__(self, base: int) -> None:
        self.base = base

    @wool_local.routine
    async def add(self, x: int) -> int:
        return self.base + x

    @wool_local.routine
    @staticmethod
    async def double(x: int) -> int:
        return 2 * x

    @wool_local.routine
    @classmethod
    async def name(cls) -> str:
        return cls.__name__


@wool_local.routine
async def hog_cpu(seconds: float) -> int:
    """Plain CPU work: blocks the worker's loop for ``seconds``."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return os.getpid()


@wool_local.routine
async def record(path: str, i: int) -> int:
    """A side effect per run, so tests can count how often each call ran."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{i}\n".encode())
    finally:
        os.close(fd)
    return i


_hoard: list[bytearray] = []
_leaked_fds: list[int] = []


@wool_local.routine
async def hoard(mib: int) -> int:
    """Leak ``mib`` MiB of touched memory in this worker."""
    block = bytearray(mib << 20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    _hoard.append(block)
    return os.getpid()


@wool_local.routine
async def leak_fds(n: int) -> int:
    """Leak ``n`` open files in this worker."""
    _leaked_fds.extend(os.open(os.devnull, os.O_RDONLY) for _ in range(n))
    return os.getpid()


@wool_local.routine
async def fingerprint() -> tuple[int, int, int]:
    return os.getpid(), id(asyncio.get_running_loop()), threading.get_ident()


@wool_local.routine
async def gc_off() -> bool:
    import gc

    gc.disable()
    return gc.isenabled()


@wool_local.routine
async def finished_tasks_alive() -> int:
    """Finished asyncio tasks still in memory here (with the cyclic GC off, a leak)."""
    import gc

    # A task that finished a moment ago (a call running beside this one) is let go
    # by its done-callback one loop turn later; a leaked one never is. So count
    # again after each turn, up to 50, and report the lowest count. Hold no
    # reference to our own task (it would make a cycle with this frame).
    me = id(asyncio.current_task())
    lowest = None
    for _ in range(50):
        found = 0
        for o in gc.get_objects():
            if isinstance(o, asyncio.Task) and o.done() and id(o) != me:
                found += 1
        lowest = found if lowest is None else min(lowest, found)
        if not lowest:
            break
        await asyncio.sleep(0)
    return lowest


# -- context propagation ----------------------------------------------------------

request_id = wool_local.ContextVar("request_id", default="none")
trail = wool_local.ContextVar("trail")


@wool_local.routine
async def read_var() -> str:
    return request_id.get()


@wool_local.routine
async def set_var(value: str) -> str:
    old = request_id.get()
    request_id.set(value)
    return old


@wool_local.routine
async def set_then_fail(value: str) -> None:
    request_id.set(value)
    raise KeyError("after setting")


@wool_local.routine
async def echo_var_after(delay: float) -> str:
    mine = request_id.get()
    await asyncio.sleep(delay)
    assert request_id.get() == mine
    return mine


@wool_local.routine
async def child_task_sees_copy() -> tuple[str, str]:
    request_id.set("parent")

    async def child():
        seen = request_id.get()
        request_id.set("child")
        return seen

    seen = await asyncio.create_task(child())
    return seen, request_id.get()


@wool_local.routine
async def stream_vars(n: int):
    """Yields what it sees; sets trail to the step number before each yield."""
    for i in range(n):
        trail.set(i)
        got = yield request_id.get()
        if got is not None:
            request_id.set(got)


@wool_local.routine
async def rebind_proxy() -> bool:
    wool_local.__proxy__.set(None)
    return wool_local.__proxy__.get() is None


@wool_local.routine
async def proxy_identity() -> tuple[int, bool]:
    proxy = wool_local.__proxy__.get()
    return id(proxy), proxy.started


@wool_local.routine
async def declare_and_read(namespace: str, name: str) -> str:
    """Declares a variable this worker had not seen, then reads the value it was sent."""
    var = wool_local.ContextVar(name, namespace=namespace)
    return var.get()


@wool_local.routine
async def nested_timeout() -> float | None:
    from wool_local.context import ambient_dispatch_timeout

    return ambient_dispatch_timeout()


@wool_local.routine
async def inner_timeout() -> float | None:
    return await nested_timeout()


@wool_local.routine
async def nested_read() -> str:
    """Reads request_id one dispatch further down, through this worker's proxy."""
    return await read_var()


@wool_local.routine
async def proxy_acquisitions() -> tuple[int, bool]:
    from wool_local.workers.proxy import __proxy_pool__

    proxy = wool_local.__proxy__.get()
    return __proxy_pool__.acquisitions, proxy is not None and proxy.id == _pool_id()


def _pool_id() -> bytes | None:
    from wool_local.workers.proxy import __proxy_pool__

    return __proxy_pool__.local_id


# -- the context oracle: the same script against wool vars here and stdlib vars there --

oracle_vars = [
    wool_local.ContextVar("oracle_a"),
    wool_local.ContextVar("oracle_b", default="b0"),
    wool_local.ContextVar("oracle_c", default=None),
]


def run_ops(ops: list[tuple[str, int, int]], variables: list, tokens: list) -> list:
    """Apply a script of (op, var, arg) to ``variables``; return what it observed."""
    seen: list = []
    for op, i, arg in ops:
        var = variables[i]
        if op == "get":
            try:
                seen.append(var.get())
            except LookupError:
                seen.append("<unset>")
        elif op == "set":
            tokens.append(var.set(arg))
            seen.append(None)
        elif tokens:
            token = tokens[arg % len(tokens)]
            try:
                token.var.reset(token)
                seen.append("reset")
            except RuntimeError:
                seen.append("<used>")
            except ValueError:
                seen.append("<foreign>")
    return seen


@wool_local.routine
async def run_script(ops: list[tuple[str, int, int]]) -> list:
    return run_ops(ops, oracle_vars, [])


@wool_local.routine
async def triple(x: int) -> int:
    """Used by one test only, so no worker knows it beforehand."""
    return 3 * x


@wool_local.routine
async def slow_ticks(started_fd: int, done_fd: int):
    """Yields 0, then (after telling started_fd) 1 after 50 ms; its finally tells done_fd."""
    try:
        yield 0
        os.write(started_fd, b"s")
        await asyncio.sleep(0.05)
        yield 1
        await asyncio.sleep(3600)
        yield 2
    finally:
        os.write(done_fd, b"finally")


@wool_local.routine
async def who_holds_finished_tasks() -> list:
    import gc

    me = asyncio.current_task()
    out = []
    for o in gc.get_objects():
        if isinstance(o, asyncio.Task) and o.done() and o is not me:
            out.append([type(r).__name__ + ":" + repr(r)[:120] for r in gc.get_referrers(o)][:4])
    return out


class RefusesWorkers:
    """Pickles in the hub, cannot be rebuilt in a worker."""

    def __reduce__(self):
        return (_refuse_outside, (os.getpid(),))


def _refuse_outside(hub_pid: int) -> RefusesWorkers:
    if os.getpid() != hub_pid:
        raise ValueError("cannot be rebuilt in a worker")
    return RefusesWorkers()


@wool_local.routine
async def one_item(x):
    yield x


@wool_local.routine
async def answer_then_exit(delay: float) -> str:
    """Answer, then end the worker process right after the answer went out."""
    await asyncio.sleep(delay)
    asyncio.get_running_loop().call_soon(os._exit, 1)
    return "answered"


@wool_local.routine
async def nap(seconds: float) -> int:
    await asyncio.sleep(seconds)
    return os.getpid()


def _note_exit(path: str) -> None:
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")


@wool_local.routine
async def note_exit_then_nest(path: str) -> tuple[int, int]:
    """Register an exit hook in this worker that appends its pid to ``path``, then
    run a call on a pool of this worker's own; (this pid, the nested worker's)."""
    from wool_local.workers.worker import at_exit

    at_exit(lambda: _note_exit(path))
    async with wool_local.WorkerPool(1):
        inner = await whoami()
    return os.getpid(), inner
