"""Async helpers for tests: run a coroutine on uvloop, wait for bytes on a pipe."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

import uvloop

#: How long a test's event loop may run: a hung test fails with TimeoutError
#: before pytest-timeout's backstop (60 s) ends the whole run.
RUN_TIMEOUT = 45.0


def run(main: Callable[[], Awaitable[Any]], timeout: float = RUN_TIMEOUT) -> Any:
    """Run ``main()`` on uvloop, bounded by ``timeout`` seconds."""

    async def bounded() -> Any:
        async with asyncio.timeout(timeout):
            return await main()

    return uvloop.run(bounded())


async def read_pipe(fd: int, timeout: float = 10.0) -> bytes:
    """Wait (bounded, event-driven) until ``fd`` is readable and return what is there."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, lambda: fut.done() or fut.set_result(None))
    try:
        await asyncio.wait_for(fut, timeout)
    finally:
        loop.remove_reader(fd)
    return os.read(fd, 4096)


class Pipe:
    """A pipe made before the pool starts, so forked workers inherit its write end."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()

    async def read(self, timeout: float = 10.0) -> bytes:
        return await read_pipe(self.r, timeout)

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


async def cancel_midway(coro: Awaitable[Any]) -> bool:
    """Start ``coro`` as a task, let it be sent, cancel it; True if it ended cancelled.

    (try/except, not pytest.raises: keeping exception info alive would make cycles
    through the caller's frames, which tests with the cyclic GC off must avoid.)
    """
    task = asyncio.ensure_future(coro)
    await asyncio.sleep(0)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return True
    return False


def watch_messages(monkeypatch: Any, see: Callable[[Any], None]) -> None:
    """Call ``see(message)`` on every message this process sends, before it is
    encoded (``see`` may change it, to make a frame as another writer would)."""
    from wool_local.workers import protocol

    encode, encode_body = protocol.encode, protocol.encode_body

    def spy_encode(message: Any, buffers: Any = ()) -> Any:
        see(message)
        return encode(message, buffers)

    def spy_body(message: Any) -> bytes:
        see(message)
        return encode_body(message)

    monkeypatch.setattr(protocol, "encode", spy_encode)
    monkeypatch.setattr(protocol, "encode_body", spy_body)


def replies_on(end: Any) -> list[tuple[int, int]]:
    """Drain what has been written to channel ``end`` and return the (id, status) of
    every reply in it, in order, a Batch's replies one by one."""
    from wool_local.workers.protocol import Batch, decode

    replies = []

    def read(view: Any) -> None:
        msg, _ = decode(view)
        for one in msg.messages if type(msg) is Batch else [msg]:
            replies.append((one.id, one.status))

    end.reader.drain(read)
    return replies
