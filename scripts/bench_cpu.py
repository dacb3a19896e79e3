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
    multiprocessing.Pool: ``imap_unordered(chunksize=1)`` (both with fork). "others' CPU"
    is the CPU time other programs used while the case ran, in percent of all CPUs.

Why
    Batch jobs are what wool_local is for: it must keep every core busy whatever the
    calls' lengths, which is a matter of scheduling, not of dispatch speed.

Usage
    python scripts/bench_cpu.py [--quick] [--rounds R] [--json PATH]
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import uvloop
from benchlib import Run, arguments, at_least, attempt, ratio, table
from benchpeers import ForkExecutor, ForkMpPool, Peer

import wool_local

WORKERS = 2
TIMEOUT = 60.0  # seconds for one batch (the longest takes about 0.6 s)


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


def _check(done: list[float], batch: list[float]) -> None:
    if sorted(done) != sorted(batch):
        raise AssertionError("a call's result is missing or wrong")


def wool_local_case(batch: list[float], rounds: int, pids: set[int]) -> float:
    async def main() -> float:
        async with wool_local.WorkerPool(spawn=WORKERS) as pool:
            pids.update(pool.pids)  # their shared-memory names carry these pids
            await asyncio.gather(*(wl_spin(0) for _ in range(20)))  # warm
            times = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                async with asyncio.timeout(TIMEOUT):
                    done = await asyncio.gather(*(wl_spin(ms) for ms in batch))
                times.append(time.perf_counter() - t0)
                _check(done, batch)
            return statistics.median(times)

    return uvloop.run(main())


def peer_case(peer: Peer, batch: list[float], rounds: int) -> float:
    with peer.pool(WORKERS) as pool:
        list(peer.many(pool, spin, [0] * 20, TIMEOUT))  # warm
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            done = list(peer.many(pool, spin, batch, TIMEOUT))
            times.append(time.perf_counter() - t0)
            _check(done, batch)
        return statistics.median(times)


def print_batch(name: str, batch: list[float], rows: list[dict[str, Any]]) -> None:
    ideal = sum(batch) / 1000 / WORKERS
    print(f"\n  {name}: {len(batch)} calls, {sum(batch) / 1000:.2f} s of CPU, ideal {ideal:.2f} s")
    peers = [r["seconds"] for r in rows if r["impl"] != "wool_local" and not r["error"]]
    best_peer = min(peers, default=None)
    cells = []
    for r in rows:
        others = "-" if r["others_cpu"] is None else f"{r['others_cpu']:.0f}%"
        if r["error"]:
            cells.append([r["impl"], r["method"], "FAILED", "", "", others])
        else:
            seconds = r["seconds"]
            vs_peer = ratio(best_peer / seconds if best_peer else None)
            cells.append(
                [r["impl"], r["method"], f"{seconds:.3f}", ratio(seconds / ideal), vs_peer, others]
            )
    headers = ["implementation", "dispatch", "seconds", "x ideal", "x vs best peer"]
    print(table([*headers, "others' CPU"], cells))
    for r in rows:
        if r["error"]:
            print(f"  {r['impl']} failed: {r['error']}")


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__, "one round per batch")
    parser.add_argument("--rounds", type=at_least(1), help="rounds per batch (3)")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    run = Run(f"CPU-bound batches, {WORKERS} workers, median of {rounds} rounds", 300 * rounds)
    cases: list[tuple[str, str, Callable[[list[float]], float]]] = [
        ("wool_local", "gather", partial(wool_local_case, rounds=rounds, pids=run.pids))
    ]
    for peer in (ForkExecutor(), ForkMpPool()):
        cases.append((peer.name, peer.many_method, partial(peer_case, peer, rounds=rounds)))
    rows: list[dict[str, Any]] = []
    with run:
        for name, batch in batches().items():
            for impl, method, case in cases:
                seconds, outcome = attempt(f"{name}: {impl}", partial(case, batch))
                rows.append(
                    {
                        "batch": name,
                        "impl": impl,
                        "method": method,
                        "seconds": seconds,
                        "ideal": sum(batch) / 1000 / WORKERS,
                        "others_cpu": outcome.others_cpu,
                        "error": outcome.error,
                    }
                )
    for name, batch in batches().items():
        print_batch(name, batch, [r for r in rows if r["batch"] == name])
    run.report()
    run.write_json(args.json, rows=rows)
    return 1 if any(r["error"] for r in rows) or not run.clean else 0


if __name__ == "__main__":
    sys.exit(main())
