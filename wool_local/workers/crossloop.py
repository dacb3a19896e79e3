"""Calls from another event loop than the pool's: run each exchange on the pool's loop.

A dispatcher's state (its table of requests, its futures, the hub's
scheduler and links) belongs to the loop it runs on and is not thread-safe.
Code on another loop, in another thread (``asyncio.run`` in a thread that
inherited the pool's context, say), still calls routines: each exchange is
handed to the dispatcher's loop with ``run_coroutine_threadsafe`` and its
answer awaited on the caller's loop. Cancelling the caller cancels the
exchange there, which cancels the remote call as usual.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Coroutine
from typing import Any

from . import context
from .errors import PoolClosed


async def run_on(home: asyncio.AbstractEventLoop, aw: Awaitable[Any]) -> Any:
    """Run ``aw`` on ``home`` (a loop in another thread) and await its result here."""
    coro = aw if isinstance(aw, Coroutine) else _awaiting(aw)
    if home.is_closed() or not home.is_running():
        coro.close()
        raise PoolClosed(
            "this pool's event loop is not running: a routine called from another thread "
            "or loop runs only while the loop that started the pool runs"
        )
    try:
        future = asyncio.run_coroutine_threadsafe(coro, home)
    except RuntimeError as exc:  # closed between the check and the call
        coro.close()
        raise PoolClosed(f"this pool's event loop is gone: {exc}") from None
    return await asyncio.wrap_future(future)


async def _awaiting(aw: Awaitable[Any]) -> Any:
    return await aw


async def relay_stream(
    home: asyncio.AbstractEventLoop, steps: AsyncGenerator, changes: list[dict[str, Any]]
) -> AsyncGenerator:
    """Iterate ``steps`` (a stream living on ``home``) from this loop: every step,
    ``asend``, ``athrow`` and the final close run there. ``changes`` collects what the
    routine changed in its context; it is applied here, in the caller's context."""

    async def step(aw: Awaitable[Any]) -> Any:
        try:
            return await run_on(home, aw)
        finally:
            while changes:
                context.apply(changes.pop(0), back=True)

    try:
        item = await step(steps.__anext__())
        while True:
            try:
                sent = yield item
            except GeneratorExit:
                raise
            except BaseException as exc:
                item = await step(steps.athrow(exc))
            else:
                item = await step(steps.asend(sent))
    except StopAsyncIteration:
        return
    finally:
        if not home.is_closed() and home.is_running():
            await step(steps.aclose())
