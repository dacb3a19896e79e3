#!/usr/bin/env python3
"""The same program on both backends: wool_local's forked workers against a wool pool.

What is measured
    One program of routines, run on ``WorkerPool(2, backend=...)`` for each backend,
    each run in a fresh interpreter (``--runs`` runs per backend; medians):
    "import", the backend's own import (wool and gRPC; nothing for local, which
    imports with the pool); "start", entering the pool (workers up); "round trip",
    the median of 300 sequential calls of a routine that returns at once, after 20
    warm-up calls; "gather 1000", 1000 concurrent calls of a small routine;
    "stream 1000", 1000 items of an async generator routine; "map 100k", 100,000
    calls of a cheap function through ``pool.map`` (chunked: one dispatch per chunk on
    both); "exit", leaving the pool.

Why
    docs/scaling.md shows users what moving to wool costs on one host: the network
    stack (gRPC over TCP) in every dispatch, before any other host is involved.

Usage
    python scripts/bench_backends.py [--runs N] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import wool_local

WORKERS = 2


@wool_local.routine
async def noop(x: Any = None) -> Any:
    return x


@wool_local.routine
async def square(x: int) -> int:
    return x * x


@wool_local.routine
async def count(n: int):
    for i in range(n):
        yield i


def cheap(x: int) -> int:
    return x * 3 + 1


async def measure(backend: str) -> dict[str, float]:
    """One run on ``backend``: seconds per case."""
    out: dict[str, float] = {}
    t = time.perf_counter()
    if backend == "wool":
        import logging

        import wool  # noqa: F401  # what choosing the backend costs, timed on its own

        # wool logs every worker start and stop at INFO; none of that here.
        logging.getLogger("wool").setLevel(logging.WARNING)
    out["import"] = time.perf_counter() - t
    t = time.perf_counter()
    pool = wool_local.WorkerPool(WORKERS, backend=backend)
    await pool.__aenter__()
    out["start"] = time.perf_counter() - t
    try:
        for _ in range(20):
            await noop()
        samples = []
        for _ in range(300):
            t = time.perf_counter()
            await noop()
            samples.append(time.perf_counter() - t)
        out["round trip"] = statistics.median(samples)
        t = time.perf_counter()
        await asyncio.gather(*(square(i) for i in range(1000)))
        out["gather 1000"] = time.perf_counter() - t
        t = time.perf_counter()
        async for _ in count(1000):
            pass
        out["stream 1000"] = time.perf_counter() - t
        t = time.perf_counter()
        async for _ in pool.map(cheap, range(100_000)):
            pass
        out["map 100k"] = time.perf_counter() - t
    finally:
        t = time.perf_counter()
        await pool.__aexit__(None, None, None)
        out["exit"] = time.perf_counter() - t
    return out


CASES = ("import", "start", "round trip", "gather 1000", "stream 1000", "map 100k", "exit")


def show(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="fresh interpreters per backend")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--one", choices=("local", "wool"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # a child: one run, as JSON on stdout
        print(json.dumps(asyncio.run(measure(args.one))))
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from benchlib import machine, machine_line, table

    runs: dict[str, list[dict[str, float]]] = {"local": [], "wool": []}
    for _ in range(args.runs):
        for backend in runs:
            done = subprocess.run(
                [sys.executable, __file__, "--one", backend],
                capture_output=True, text=True, timeout=300, check=True,
            )  # fmt: skip
            runs[backend].append(json.loads(done.stdout.splitlines()[-1]))
    medians = {
        b: {case: statistics.median(r[case] for r in rs) for case in CASES}
        for b, rs in runs.items()
    }
    info = machine(workers=WORKERS, runs=args.runs)
    print(machine_line(info))
    print(f"{WORKERS} workers, median of {args.runs} runs per backend (a fresh interpreter each)")
    rows = []
    for case in CASES:
        local, wool = medians["local"][case], medians["wool"][case]
        if case == "import":  # local's runtime comes in with the pool: in "start"
            rows.append([case, "-", show(wool), "-"])
        else:
            rows.append([case, show(local), show(wool), f"{wool / local:.1f}x"])
    print(table(["case", "local", "wool", "wool/local"], rows, left=1))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "runs": runs, "medians": medians}))
    return 0


if __name__ == "__main__":  # required: wool's workers re-import this script
    sys.exit(main())
