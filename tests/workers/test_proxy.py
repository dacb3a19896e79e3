"""__proxy__: forward-only travel, canonical restore, leases, old frames, failed starts."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import traceback

import pytest

import wool_local
from tests import routines as r
from tests.helpers import Pipe, cancel_midway, run, watch_messages
from wool_local.workers import protocol
from wool_local.workers.proxy import PROXY_KEY, WorkerProxy


def test_given_worker_rebinds_proxy_then_the_caller_never_sees_it():
    """Given a routine that sets __proxy__ to None, the caller's binding is untouched."""

    async def main():
        async with wool_local.WorkerPool(spawn=1) as wp:
            assert await r.rebind_proxy() is True
            assert wool_local.__proxy__.get() is wp.hub.proxy

    run(main)


def test_given_dispatches_to_a_worker_then_one_canonical_lazy_proxy_there():
    """Given repeated dispatches, the worker restores the same proxy object each time, and
    starts it only when a routine dispatches onward."""

    async def main():
        async with wool_local.WorkerPool(spawn=1):
            first_id, started = await r.proxy_identity()
            again_id, _ = await r.proxy_identity()
            assert first_id == again_id and started is False
            await r.nested_read()
            assert (await r.proxy_identity())[1] is True

    run(main)


def test_given_a_reused_proxy_then_no_state_leaks_between_dispatches():
    """Given the cached proxy reused by a later dispatch, it runs under that dispatch's
    context: a value set for the first dispatch is not seen by the second."""

    async def main():
        async with wool_local.WorkerPool(spawn=1):
            token = r.request_id.set("first")
            assert await r.nested_read() == "first"
            r.request_id.reset(token)
            assert await r.nested_read() == "none"

    run(main)


def _lease_state(pool):
    return pool.leases.snapshot()


def test_given_many_dispatches_then_every_lease_is_returned_and_the_table_does_not_grow():
    """Given 1,000 sequential and 1,000 concurrent dispatches (nested, raising, cancelled),
    only the pool block's own lease remains."""

    async def main():
        async with wool_local.WorkerPool(spawn=2) as wp:
            pool = wp.hub
            baseline = {pool.id: {os.getpid(): 1}}
            assert _lease_state(pool) == baseline
            for i in range(1000):
                try:
                    await (r.fail("x") if i % 7 == 0 else r.square(i))
                except ValueError:
                    pass

            await asyncio.gather(
                *(r.square(i) for i in range(850)),
                *(r.nested_sum(2) for _ in range(50)),
                *(cancel_midway(r.square(1)) for _ in range(50)),
                *(r.fail("y") for _ in range(50)),
                return_exceptions=True,
            )
            await asyncio.gather(*(r.square(1) for _ in range(8)))  # acknowledgements drain
            # A worker gives its process lease back once it has lingered unused
            # (LeaseBook.linger) after its last binding ended. That happens in the
            # worker, after its answer went out, and is visible only in the shared
            # table: poll it (bounded), there is no event to wait on from here.
            async with asyncio.timeout(5):
                while _lease_state(pool) != baseline:
                    await asyncio.sleep(0.001)
            assert len(pool.leases) == 1

    run(main)


def test_given_worker_killed_holding_leases_then_hub_reclaims_them():
    """Given a worker SIGKILLed mid-routine (holding a lease), its lease is reclaimed."""
    started = Pipe()

    async def main():
        async with wool_local.WorkerPool(spawn=1) as wp:
            pool = wp.hub
            call = asyncio.ensure_future(r.die("hang", started.w))
            await started.read()
            (pid,) = wp.pids
            assert pool.leases.holders(pool.id) == {os.getpid(): 1, pid: 1}
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(wool_local.WorkerCrashed):
                await call
            assert pool.leases.holders(pool.id) == {os.getpid(): 1}

    try:
        run(main)
    finally:
        started.close()


@pytest.mark.parametrize("frame", ["chain", "fields", "both"])
def test_given_old_and_new_frame_layouts_then_same_behaviour_and_one_acquisition(
    monkeypatch, frame
):
    """Given Call frames carrying the proxy in the context chain, in the deprecated fields,
    or in both, the worker gets the same proxy, materialised exactly once per dispatch."""

    def rewrite(message):
        if isinstance(message, protocol.Call) and message.context:
            proxy_bytes = message.context.get(PROXY_KEY)
            if frame in ("fields", "both") and proxy_bytes is not None:
                import pickle

                message.proxy = proxy_bytes
                message.proxy_id = pickle.loads(proxy_bytes).id
            if frame == "fields":
                message.context = {k: v for k, v in message.context.items() if k != PROXY_KEY}

    watch_messages(monkeypatch, rewrite)

    async def main():
        async with wool_local.WorkerPool(spawn=1):
            before, ok = await r.proxy_acquisitions()
            after, ok_again = await r.proxy_acquisitions()
            assert ok and ok_again
            assert after - before == 1
            assert await r.nested_read() == "none"  # and it dispatches onward

    run(main)


class FlakyProxy(WorkerProxy):
    """A proxy whose start fails until told otherwise."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.failing = True
        self.attempts = 0

    async def _connect(self):
        self.attempts += 1
        if self.failing:
            try:
                raise OSError("the hub is unreachable")
            except OSError as cause:
                raise ConnectionError("cannot start the proxy", 17) from cause
        return object()


def test_given_start_failure_then_cached_as_class_and_args_without_traceback_growth():
    """Given a failing start, the first caller gets the original exception and chain; the
    next callers in the back-off window get fresh, equal exceptions whose tracebacks do
    not grow, the cached state does not grow, and a start after the window succeeds."""

    async def main():
        proxy = FlakyProxy(b"p" * 16, retry_after=0.2)
        with pytest.raises(ConnectionError) as first:
            await proxy.start()
        assert isinstance(first.value.__cause__, OSError)
        cached = proxy.failure
        assert cached[:2] == (ConnectionError, ("cannot start the proxy", 17))
        size = sys.getsizeof(cached) + sum(sys.getsizeof(x) for x in cached)
        seen, depths = [], []
        for _ in range(12):
            try:
                await proxy.start()
            except ConnectionError as exc:
                seen.append(exc)
                depths.append(len(traceback.extract_tb(exc.__traceback__)))
        assert len(seen) == 12 and len({id(e) for e in seen}) == 12
        assert all(e.args == ("cannot start the proxy", 17) for e in seen)
        assert all(e is not first.value for e in seen)
        assert len(set(depths)) == 1
        assert proxy.attempts == 1  # cached: no retry inside the window
        assert sys.getsizeof(proxy.failure) + sum(sys.getsizeof(x) for x in proxy.failure) == size
        assert not any(isinstance(x, BaseException) for x in proxy.failure)
        proxy.failing = False
        await asyncio.sleep(max(0.0, proxy.failure[2] - time.monotonic()) + 0.01)  # the window
        assert await proxy.start() is not None
        assert proxy.failure is None and proxy.started and proxy.attempts == 2

    run(main)


def test_given_concurrent_first_dispatches_then_the_proxy_starts_once():
    """Given many coroutines starting a lazy proxy at once, it connects exactly once."""

    async def main():
        proxy = FlakyProxy(b"q" * 16)
        proxy.failing = False
        results = await asyncio.gather(*(proxy.start() for _ in range(20)))
        assert proxy.attempts == 1 and len({id(x) for x in results}) == 1

    run(main)


class CodedError(Exception):
    """An exception whose __init__ does not take its own args."""

    def __init__(self, code: int) -> None:
        super().__init__(f"failed with code {code}", code)
        self.code = code

    def __str__(self) -> str:
        return f"code {self.code}"


class CodedFailure(FlakyProxy):
    async def _connect(self):
        self.attempts += 1
        raise CodedError(7)


def test_given_cached_start_failure_whose_init_differs_from_its_args_then_rebuilt_as_is():
    """Given a start failing with an exception whose __init__ cannot take its own args,
    callers in the back-off window get that exception class, with the same args and
    plain attributes (not a TypeError from rebuilding it)."""

    async def main():
        proxy = CodedFailure(b"c" * 16, retry_after=30)
        with pytest.raises(CodedError):
            await proxy.start()
        for _ in range(3):
            with pytest.raises(CodedError) as again:
                await proxy.start()
            assert again.value.args == ("failed with code 7", 7)
            assert again.value.code == 7 and str(again.value) == "code 7"
        assert proxy.attempts == 1

    run(main)
