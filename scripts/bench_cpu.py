#!/usr/bin/env python3
"""CPU-bound batches: a mix of long and short calls on every core, against the peers.

What is measured
    A batch of calls that each spin the CPU for a set time (no sleeping, no I/O), all
    submitted at once, 2 workers, timed from the first submission to the last result;
    median of ``--rounds`` rounds in one pool per implementation. Two batches: "mixed",
    8 calls of 100 ms among 100 of 1 ms in a shuffled order (a few long calls a deep
    per-worker queue would strand short ones behind), and "even", 200 calls of 5 ms.
    "ideal" is the batch's total CPU time divided by the workers. wool_local:
    ``asyncio.gather``; ProcessPoolExecutor: ``map(chunksize=1)``;
    multiprocessing.Pool: ``imap_unordered(chunksize=1)`` (both with fork).

Why
    Batch jobs are what wool_local is for: it must keep every core busy whatever the
    calls' lengths, which is a matter of scheduling, not of dispatch speed.

Usage
    python scripts/bench_cpu.py [--rounds R] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor

import uvloop
from benchlib import machine_line, write_json

import wool_local

WORKERS = 2


def spin(ms: float) -> float:
    """Keep one CPU busy for ``ms`` milliseconds."""
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass
    return ms


@wool_local.routine
async def wl_spin(ms: float) -> float:
    return spin(ms)


def batches() -> dict[str, list[float]]:
    mixed = [100.0] * 8 + [1.0] * 100
    random.Random(1).shuffle(mixed)
    return {"mixed": mixed, "even": [5.0] * 200}


def _rounds(run: Callable[[list[float]], list[float]], batch: list[float], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        done = run(batch)
        times.append(time.perf_counter() - t0)
        assert sorted(done) == sorted(batch), "a call's result is missing or wrong"
    return statistics.median(times)


def wool_local_case(batch: list[float], rounds: int) -> float:
    async def main() -> float:
        async with wool_local.WorkerPool(spawn=WORKERS):
            await asyncio.gather(*(wl_spin(0) for _ in range(20)))  # warm

            times = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                done = await asyncio.gather(*(wl_spin(ms) for ms in batch))
                times.append(time.perf_counter() - t0)
                assert sorted(done) == sorted(batch), "a call's result is missing or wrong"
            return statistics.median(times)

    return uvloop.run(main())


def ppe_case(batch: list[float], rounds: int) -> float:
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(WORKERS, mp_context=ctx) as pool:
        list(pool.map(spin, [0] * 20))
        return _rounds(lambda b: list(pool.map(spin, b, chunksize=1)), batch, rounds)


def mp_case(batch: list[float], rounds: int) -> float:
    with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
        list(pool.imap_unordered(spin, [0] * 20))
        return _rounds(lambda b: list(pool.imap_unordered(spin, b, chunksize=1)), batch, rounds)


CASES = {
    "wool_local": wool_local_case,
    "ProcessPoolExecutor (fork)": ppe_case,
    "multiprocessing.Pool (fork)": mp_case,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    print(f"CPU-bound batches, {WORKERS} workers, median of {args.rounds} rounds")
    print(f"  {machine_line()}")
    rows = []
    for name, batch in batches().items():
        ideal = sum(batch) / 1000 / WORKERS
        cpu = sum(batch) / 1000
        print(f"\n  {name}: {len(batch)} calls, {cpu:.2f} s of CPU, ideal {ideal:.2f} s")
        results = {impl: case(batch, args.rounds) for impl, case in CASES.items()}
        best_peer = min(t for impl, t in results.items() if impl != "wool_local")
        for impl, seconds in results.items():
            print(
                f"  {impl:28s} {seconds:6.3f} s  {seconds / ideal:5.2f}x ideal  "
                f"{best_peer / seconds:5.2f}x vs best peer"
            )
            rows.append({"batch": name, "impl": impl, "seconds": seconds, "ideal": ideal})
    write_json(args.json, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
