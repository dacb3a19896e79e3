#!/usr/bin/env python3
"""Batch jobs as users run them: results as they finish, streams, leaving on an error.

What is measured (2 workers; median of ``--rounds`` rounds, each in a fresh pool)
    1. Results as they finish: 200 calls of 40 ms of plain CPU work, all submitted at
       once, results taken as they complete. "first" is the time to the first result,
       "p50 gap"/"max gap" the median and largest time between two consecutive results
       (a burst shows as a large max gap), "last" the whole batch. wool_local:
       ``asyncio.as_completed`` over the routine's calls; ProcessPoolExecutor (fork):
       ``concurrent.futures.as_completed`` over ``submit``.
    2. Streams: 40,000 small records (a dict of 3 fields each) from a remote async
       generator iterated with ``async for``, against the same records returned as one
       list and as 40 lists of 1,000 (``gather``). "x list" is the time over the
       one-list time.
    3. Leaving on an error: 1,000 calls of 50 ms of CPU work, the 11th raising. wool_local:
       ``asyncio.gather`` inside ``async with WorkerPool()``, timed from the error
       reaching the caller to the block being left ("killed" counts workers SIGKILLed on
       the way out); ProcessPoolExecutor (fork): ``submit`` all, wait for the failing
       future, then ``shutdown(wait=True, cancel_futures=True)``. Fresh pools, no warm-up
       call (whether the workers handed calls back before the error changes the case).

Why
    Issue 11: results of CPU-bound calls left a worker in bursts, streams cost a round
    trip per item, and leaving a pool mid-batch waited for every queued call, then
    killed the workers.

Usage
    python scripts/bench_batch.py [--quick] [--rounds R] [--sections 1,2,3] [--json PATH]
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import itertools
import logging
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import uvloop
from benchlib import Run, arguments, at_least, attempt, ratio, table

import wool_local

WORKERS = 2
TIMEOUT = 120.0  # seconds for one round of any case


def spin(seconds: float, i: int = 0) -> int:
    """Keep one CPU busy for ``seconds``; returns ``i``."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return i


def spin_raising(seconds: float, i: int) -> int:
    spin(seconds)
    if i == 10:
        raise ValueError("item 10")
    return i


@wool_local.routine
async def wl_spin(seconds: float, i: int) -> int:
    return spin(seconds, i)


@wool_local.routine
async def wl_spin_raising(seconds: float, i: int) -> int:
    return spin_raising(seconds, i)


def record(i: int) -> dict[str, Any]:
    return {"id": i, "name": f"user{i}", "score": i * 0.5}


@wool_local.routine
async def wl_records(n: int):
    for i in range(n):
        yield record(i)


@wool_local.routine
async def wl_record_list(lo: int, hi: int) -> list[dict[str, Any]]:
    return [record(i) for i in range(lo, hi)]


def _fork_executor() -> cf.ProcessPoolExecutor:
    return cf.ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("fork"))


# -- 1. results as they finish -----------------------------------------------------------------

CALLS, CALL_SECONDS = 200, 0.040


def _spread(arrivals: list[float]) -> dict[str, float]:
    gaps = sorted(b - a for a, b in itertools.pairwise(arrivals))
    return {
        "first": arrivals[0],
        "p50_gap": statistics.median(gaps),
        "max_gap": gaps[-1],
        "last": arrivals[-1],
    }


def wool_local_finish(rounds: int, pids: set[int]) -> dict[str, float]:
    async def one() -> dict[str, float]:
        async with wool_local.WorkerPool(spawn=WORKERS) as pool:
            pids.update(pool.pids)
            await asyncio.gather(*(wl_spin(0, i) for i in range(20)))  # warm
            t0 = time.perf_counter()
            arrivals = []
            async with asyncio.timeout(TIMEOUT):
                for fut in asyncio.as_completed([wl_spin(CALL_SECONDS, i) for i in range(CALLS)]):
                    await fut
                    arrivals.append(time.perf_counter() - t0)
            return _spread(arrivals)

    return _median_of([uvloop.run(one()) for _ in range(rounds)])


def executor_finish(rounds: int) -> dict[str, float]:
    def one() -> dict[str, float]:
        with _fork_executor() as ex:
            list(ex.map(spin, [0] * 20))  # warm
            t0 = time.perf_counter()
            futures = [ex.submit(spin, CALL_SECONDS, i) for i in range(CALLS)]
            arrivals = []
            for fut in cf.as_completed(futures, timeout=TIMEOUT):
                fut.result()
                arrivals.append(time.perf_counter() - t0)
            return _spread(arrivals)

    return _median_of([one() for _ in range(rounds)])


def _median_of(samples: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(s[k] for s in samples) for k in samples[0]}


# -- 2. streams ----------------------------------------------------------------------------------

RECORDS = 40_000


def wool_local_streams(rounds: int, pids: set[int]) -> dict[str, float]:
    async def main() -> dict[str, float]:
        async with wool_local.WorkerPool(spawn=WORKERS) as pool:
            pids.update(pool.pids)
            await wl_record_list(0, 10)
            async for _ in wl_records(10):
                pass
            times: dict[str, list[float]] = {"stream": [], "one list": [], "40 lists": []}
            for _ in range(rounds):
                t0 = time.perf_counter()
                n = 0
                async for _ in wl_records(RECORDS):
                    n += 1
                t1 = time.perf_counter()
                whole = await wl_record_list(0, RECORDS)
                t2 = time.perf_counter()
                parts = await asyncio.gather(
                    *(wl_record_list(i, i + 1000) for i in range(0, RECORDS, 1000))
                )
                t3 = time.perf_counter()
                if n != RECORDS or len(whole) != RECORDS or sum(map(len, parts)) != RECORDS:
                    raise AssertionError("records missing")
                times["stream"].append(t1 - t0)
                times["one list"].append(t2 - t1)
                times["40 lists"].append(t3 - t2)
            return {k: statistics.median(v) for k, v in times.items()}

    return uvloop.run(main())


# -- 3. leaving on an error ----------------------------------------------------------------------

MANY, MANY_SECONDS = 1000, 0.050


class _Kills(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "killed" in record.getMessage():
            self.count += 1


def wool_local_leave(rounds: int, pids: set[int]) -> dict[str, float]:
    kills = _Kills()
    logger = logging.getLogger("wool_local")
    logger.addHandler(kills)
    logger.propagate = False

    async def one() -> float:
        error_at = 0.0
        try:
            async with wool_local.WorkerPool(spawn=WORKERS) as pool:
                pids.update(pool.pids)
                try:
                    await asyncio.gather(*(wl_spin_raising(MANY_SECONDS, i) for i in range(MANY)))
                finally:
                    error_at = time.perf_counter()
        except ValueError:
            pass
        return time.perf_counter() - error_at

    try:
        times = [uvloop.run(one()) for _ in range(rounds)]
    finally:
        logger.removeHandler(kills)
        logger.propagate = True
    return {"leave": statistics.median(times), "killed": kills.count / rounds}


def executor_leave(rounds: int) -> dict[str, float]:
    def one() -> float:
        ex = _fork_executor()
        try:
            futures = [ex.submit(spin_raising, MANY_SECONDS, i) for i in range(MANY)]
            try:
                futures[10].result(timeout=TIMEOUT)
            except ValueError:
                pass
            t0 = time.perf_counter()
        finally:
            ex.shutdown(wait=True, cancel_futures=True)
        return time.perf_counter() - t0

    return {"leave": statistics.median(one() for _ in range(rounds)), "killed": 0.0}


# -- report -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__, "one round per case", sections=3)
    parser.add_argument("--rounds", type=at_least(1), help="rounds per case (3)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    run = Run(f"Batch jobs, {WORKERS} workers, median of {rounds} rounds", 600 * rounds)
    results: dict[str, Any] = {}
    errors: list[str] = []

    def measure(key: str, fn: Callable[[], Any]) -> Any:
        value, outcome = attempt(key, fn)
        if outcome.error:
            errors.append(f"{key}: {outcome.error}")
        results[key] = value
        return value

    with run:
        if 1 in args.sections:
            measure("finish/wool_local", lambda: wool_local_finish(rounds, run.pids))
            measure("finish/ProcessPoolExecutor", lambda: executor_finish(rounds))
        if 2 in args.sections:
            measure("streams/wool_local", lambda: wool_local_streams(rounds, run.pids))
        if 3 in args.sections:
            measure("leave/wool_local", lambda: wool_local_leave(rounds, run.pids))
            measure("leave/ProcessPoolExecutor", lambda: executor_leave(rounds))

    if 1 in args.sections:
        print(
            f"\n1. Results as they finish: {CALLS} calls of {CALL_SECONDS * 1000:.0f} ms of CPU"
            f" (ideal {CALLS * CALL_SECONDS / WORKERS:.1f} s)"
        )
        rows = []
        for impl, how in (
            ("wool_local", "asyncio.as_completed"),
            ("ProcessPoolExecutor", "cf.as_completed(submit)"),
        ):
            r = results.get(f"finish/{impl}")
            if r is None:
                rows.append([impl, how, "FAILED", "", "", ""])
                continue
            rows.append(
                [
                    impl,
                    how,
                    f"{r['first'] * 1000:.0f}",
                    f"{r['p50_gap'] * 1000:.1f}",
                    f"{r['max_gap'] * 1000:.0f}",
                    f"{r['last']:.2f}",
                ]
            )
        print(
            table(
                ["implementation", "taken with", "first ms", "p50 gap ms", "max gap ms", "last s"],
                rows,
            )
        )
    if 2 in args.sections:
        print(f"\n2. Streams: {RECORDS:,} records of 3 fields")
        r = results.get("streams/wool_local")
        if r is None:
            print("  FAILED")
        else:
            base = r["one list"]
            rows = [
                [
                    "async for over a remote generator",
                    f"{r['stream']:.3f}",
                    f"{r['stream'] / RECORDS * 1e6:.1f}",
                    ratio(r["stream"] / base),
                ],
                [
                    "one call returning a list",
                    f"{r['one list']:.3f}",
                    f"{r['one list'] / RECORDS * 1e6:.1f}",
                    ratio(1.0),
                ],
                [
                    "40 calls returning 1,000 (gather)",
                    f"{r['40 lists']:.3f}",
                    f"{r['40 lists'] / RECORDS * 1e6:.1f}",
                    ratio(r["40 lists"] / base),
                ],
            ]
            print(table(["wool_local", "seconds", "us/record", "x list"], rows, left=1))
    if 3 in args.sections:
        print(
            f"\n3. Leaving on an error: {MANY} calls of {MANY_SECONDS * 1000:.0f} ms,"
            " the 11th raising"
        )
        rows = []
        best = results.get("leave/ProcessPoolExecutor")
        for impl, how in (
            ("wool_local", "gather in async with WorkerPool"),
            ("ProcessPoolExecutor", "shutdown(cancel_futures=True)"),
        ):
            r = results.get(f"leave/{impl}")
            if r is None:
                rows.append([impl, how, "FAILED", "", ""])
                continue
            vs = ratio(r["leave"] / best["leave"]) if best else "-"
            rows.append([impl, how, f"{r['leave']:.3f}", f"{r['killed']:.0f}", vs])
        print(table(["implementation", "how", "leave s", "killed", "x PPE"], rows))
    for line in errors:
        print(f"  failed: {line}")
    run.report()
    run.write_json(args.json, results=results)
    return 1 if errors or not run.clean else 0


if __name__ == "__main__":
    sys.exit(main())
