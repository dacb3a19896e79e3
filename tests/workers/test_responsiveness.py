"""A busy worker stays responsive: results leave as calls finish, Cancel and Stop are read
between calls, and a call blocked behind others is moved at most once."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time

import pytest

import wool_local
from tests.helpers import run

CALL_SECONDS = 0.03


@wool_local.routine
async def spin(seconds: float, i: int) -> int:
    """Plain CPU work for ``seconds`` (no await): the worker's loop runs nothing else."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return i


@wool_local.routine
async def spin_then_record(path: str, seconds: float, i: int) -> int:
    """CPU work, then a side effect: a line per run, so a test counts what ran."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{i}\n".encode())
    finally:
        os.close(fd)
    if i == 3:
        raise ValueError("item 3")
    return i


def _lines(path: str) -> list[int]:
    try:
        with open(path) as f:
            return [int(line) for line in f]
    except FileNotFoundError:
        return []


@pytest.mark.timeout(30)
def test_given_cpu_bound_calls_sent_at_once_then_each_result_arrives_as_its_call_ends():
    """Given one worker and 8 CPU-bound calls of 30 ms sent in one burst (so its loop
    starts them in one iteration), when they run, then their results arrive one by one as
    each call ends, not in one burst at the end: the first arrives while most calls
    still have to run."""

    async def main():
        async with wool_local.WorkerPool(spawn=1) as wp:
            wp.hub.watchdog.stall_after = 30.0  # no hand-back: this is about one worker
            await spin(0, -1)  # the worker knows spin
            start = time.perf_counter()
            arrivals = []
            for fut in asyncio.as_completed([spin(CALL_SECONDS, i) for i in range(8)]):
                await fut
                arrivals.append(time.perf_counter() - start)
            # All 8 take >= 240 ms of CPU; held back to the end, the spread would be ~0.
            assert arrivals[-1] - arrivals[0] >= 4 * CALL_SECONDS, arrivals
            gaps = [b - a for a, b in itertools.pairwise(arrivals)]
            assert sum(1 for g in gaps if g >= CALL_SECONDS / 2) >= 4, arrivals

    run(main)


@pytest.mark.timeout(30)
def test_given_a_raise_in_a_gather_of_cpu_bound_calls_then_leaving_the_pool_is_quick(
    tmp_path, caplog
):
    """Given 2 workers each with about 100 CPU-bound calls of 30 ms waiting in their loop,
    when one call raises and the block is left, then the workers read Stop before their
    next call starts: leaving takes well under stop_timeout, no worker is killed, and
    calls that had not started never run."""
    log = str(tmp_path / "runs")
    caplog.set_level(logging.WARNING, logger="wool_local")

    async def main():
        with pytest.raises(ValueError, match="item 3"):
            async with wool_local.WorkerPool(spawn=2, stop_timeout=20) as wp:
                wp.hub.watchdog.stall_after = 30.0  # calls stay where they were sent
                await asyncio.gather(*(spin_then_record(log, CALL_SECONDS, i) for i in range(200)))
        return wp

    start = time.monotonic()
    run(main)
    took = time.monotonic() - start
    assert took < 4.0, f"leaving took {took:.2f} s"
    assert not [r for r in caplog.records if "killed" in r.getMessage()]
    assert len(_lines(log)) < 50, "calls that had not started ran after Stop"


@pytest.mark.timeout(30)
def test_given_a_cancelled_gather_of_cpu_bound_calls_then_every_call_is_answered_and_none_killed(
    tmp_path,
):
    """Given 2 workers each with about 100 CPU-bound calls of 30 ms waiting in their loop,
    when the gather is cancelled (as Ctrl-C does), then each worker reads the Cancels
    before its next call starts: every cancelled call is answered within about one call's
    time (not after the others ran, nor by a kill after cancel_grace), and the unstarted
    ones never run."""
    log = str(tmp_path / "runs")

    async def main():
        async with wool_local.WorkerPool(spawn=2, cancel_grace=20) as wp:
            wp.hub.watchdog.stall_after = 30.0
            batch = asyncio.gather(
                *(spin_then_record(log, CALL_SECONDS, 100 + i) for i in range(200))
            )
            while len(_lines(log)) < 2:  # both workers are in the batch
                await asyncio.sleep(0.005)
            batch.cancel()
            cancelled = time.monotonic()
            with pytest.raises(asyncio.CancelledError):
                await batch
            async with asyncio.timeout(10):
                await wp.hub.drained()  # every Cancel answered
            answered = time.monotonic() - cancelled
            assert answered < 2.0, f"the cancels took {answered:.2f} s to be answered"
            assert wp.hub.crashes == 0
            ran = len(_lines(log))
            assert ran < 50, f"{ran} calls ran"
            assert await spin(0, 7) == 7  # the pool serves on

    run(main)


@pytest.mark.timeout(60)
def test_given_a_batch_of_calls_longer_than_stall_after_then_each_moves_at_most_once(caplog):
    """Given 2 workers and 120 CPU-bound calls of 60 ms (longer than the stall watchdog's
    period, so the calls queued behind them are handed back), when the batch runs, then
    no call is handed back twice, fewer moves happen than there are calls, and INFO
    gets a summary rather than a line per hand-back (those are DEBUG)."""
    caplog.set_level(logging.DEBUG, logger="wool_local")

    async def main():
        async with wool_local.WorkerPool(spawn=2) as wp:
            assert sorted(await asyncio.gather(*(spin(0.06, i) for i in range(120)))) == list(
                range(120)
            )
            watchdog = wp.hub.watchdog
            assert watchdog.moved_again == 0
            assert watchdog.handed_back < 120
        return watchdog.handed_back

    moved = run(main)
    about = [r for r in caplog.records if "moved" in r.getMessage()]
    infos = [r for r in about if r.levelno == logging.INFO]
    debugs = [r for r in about if r.levelno == logging.DEBUG]
    assert len(infos) <= 2, [r.getMessage() for r in infos]
    if moved:
        assert debugs and infos
