"""The hub's pool under stress: crashes at random points, callables sent once, big payloads."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import threading
import warnings

import pytest

import wool_local
from tests import routines as r
from tests.helpers import run, watch_messages
from wool_local.workers import protocol


def test_given_workers_killed_at_random_points_under_load_then_every_call_ends_in_bound():
    """Given SIGKILLs at random moments during 600 calls, each call ends with its result or
    WorkerCrashed within a bound, and the pool keeps serving afterwards."""
    rng = random.Random(1234)

    async def main():
        async with wool_local.WorkerPool(spawn=2) as pool:

            async def one(i):
                try:
                    return await r.echo(i)
                except wool_local.WorkerCrashed:
                    return "crashed"

            calls = [asyncio.ensure_future(one(i)) for i in range(600)]
            kills = 0
            for _ in range(6):
                await asyncio.sleep(rng.uniform(0, 0.01))  # a random moment, not a sync
                pids = pool.pids
                if pids:
                    try:
                        os.kill(rng.choice(pids), signal.SIGKILL)
                        kills += 1
                    except ProcessLookupError:
                        pass
            results = await asyncio.wait_for(asyncio.gather(*calls), 30)
            assert all(res == i or res == "crashed" for i, res in enumerate(results))
            assert pool.hub.crashes >= 1
            # A call may still meet a worker whose death is not reported yet;
            # once the pool has seen every kill, calls succeed again.
            for _ in range(kills + 1):
                try:
                    assert await asyncio.wait_for(r.square(6), 10) == 36
                    break
                except wool_local.WorkerCrashed:
                    continue
            else:
                pytest.fail("the pool did not recover from the kills")

    run(main)


def test_given_many_calls_then_each_callable_is_sent_once_per_worker(monkeypatch):
    """Given 200 calls of one routine on 2 workers, its pickled form travels at most twice."""
    sent_defs = []

    def spy(message):
        if isinstance(message, protocol.Call) and message.fn_def is not None:
            sent_defs.append(message.fn)

    watch_messages(monkeypatch, spy)

    async def main():
        async with wool_local.WorkerPool(spawn=2):
            await asyncio.gather(*(r.square(i) for i in range(200)))

    run(main)
    assert 1 <= len(sent_defs) <= 2 and len(set(sent_defs)) == 1


@pytest.mark.parametrize("size", [10, 70_000, 3 << 20])
def test_given_large_bytes_and_bytearray_payloads_then_they_round_trip_exactly(size):
    """Given bytes and bytearray payloads small and large (out of band), echoes are exact."""
    blob = random.Random(size).randbytes(size)

    async def main():
        async with wool_local.WorkerPool(spawn=1):
            assert await r.echo(blob) == blob
            back = await r.echo(bytearray(blob))
            assert type(back) is bytearray and back == blob
            nested = await r.echo({"a": [blob, blob], "b": (blob,)})
            assert nested == {"a": [blob, blob], "b": (blob,)}
            assert [v async for v in r.countdown(2)] == [2, 1]

    run(main)


def test_given_hub_has_threads_when_pool_starts_then_one_clear_warning():
    """Given another thread running in the hub, starting pools warns once, clearly."""
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="busy-bystander")
    thread.start()
    try:
        from wool_local.workers import zygote

        zygote._warned_threads = False

        async def main():
            for _ in range(2):
                async with wool_local.WorkerPool(spawn=1):
                    assert await r.square(2) == 4

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run(main)
        fork_warnings = [
            w for w in caught if issubclass(w.category, wool_local.ThreadedForkWarning)
        ]
        assert len(fork_warnings) == 1
        assert "busy-bystander" in str(fork_warnings[0].message)
    finally:
        stop.set()
        thread.join()
