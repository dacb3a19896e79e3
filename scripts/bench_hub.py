#!/usr/bin/env python3
"""Where a dispatch's time goes in the hub: wool_local against asyncio's own floor.

What is measured
    floor: the cheapest thing ``asyncio.gather`` over N coroutines can do: each coroutine
    awaits a future that the loop resolves at once (a Task, a future, a wake-up, gather's
    bookkeeping; no other process). wool_local: the same gather over a no-op routine on a
    pool of 2 workers. Both in windows of 10,000 and 1,000 calls in flight, with the cyclic
    GC on (as callers run) and off (to show its share). Reported per call: wall time, and
    for wool_local the CPU time of the hub process and of the workers (from psutil). Medians
    of ``--rounds`` rounds of ``--calls`` calls.

Why
    The throughput target (100,000 calls/s) is a budget of 10 us per call for the hub, which
    runs every caller's task. This shows how much of it asyncio itself takes at each
    number of calls in flight, and how much is wool_local's.

Usage
    python scripts/bench_hub.py [--quick] [--calls N] [--rounds R] [--json PATH]
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psutil
import uvloop
from benchlib import Run, arguments, at_least, table

import wool_local

WINDOWS = (10_000, 1_000)


@wool_local.routine
async def noop(x: Any = None) -> Any:
    return x


async def _resolved(loop: asyncio.AbstractEventLoop, x: int) -> int:
    fut = loop.create_future()
    loop.call_soon(fut.set_result, x)
    return await fut


async def _rounds(
    make: Callable[[int], Awaitable[Any]], calls: int, window: int, rounds: int, workers: list[Any]
) -> dict[str, float]:
    walls, hubs, others = [], [], []
    for _ in range(rounds):
        gc.collect()
        w0 = sum(sum(p.cpu_times()[:2]) for p in workers)
        h0 = time.process_time()
        t0 = time.perf_counter()
        for start in range(0, calls, window):
            await asyncio.gather(*(make(i) for i in range(start, start + window)))
        walls.append((time.perf_counter() - t0) / calls * 1e6)
        hubs.append((time.process_time() - h0) / calls * 1e6)
        others.append((sum(sum(p.cpu_times()[:2]) for p in workers) - w0) / calls * 1e6)
    return {
        "wall_us": statistics.median(walls),
        "hub_cpu_us": statistics.median(hubs),
        "workers_cpu_us": statistics.median(others),
        "calls_per_s": 1e6 / statistics.median(walls),
    }


async def measure(calls: int, rounds: int, pids: set[int]) -> list[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    rows = []
    async with wool_local.WorkerPool(spawn=2) as pool:
        pids.update(pool.pids)  # their shared-memory names carry these pids
        workers = [psutil.Process(pid) for pid in pool.pids]
        await asyncio.gather(*(noop(i) for i in range(2_000)))  # warm: callables sent
        for gc_on in (True, False):
            (gc.enable if gc_on else gc.disable)()
            try:
                for window in WINDOWS:
                    for what, make, procs in (
                        ("asyncio floor", lambda i: _resolved(loop, i), []),
                        ("wool_local", noop, workers),
                    ):
                        gc_state = "on" if gc_on else "off"
                        print(f"  ... {what}, window {window:,}, GC {gc_state}", file=sys.stderr)
                        stats = await _rounds(make, calls, window, rounds, procs)
                        rows.append({"what": what, "window": window, "gc": gc_on, **stats})
            finally:
                gc.enable()
    return rows


def _cells(r: dict[str, Any]) -> list[str]:
    ours = r["what"] == "wool_local"
    return [
        r["what"],
        "on" if r["gc"] else "off",
        f"{r['window']:,}",
        f"{r['wall_us']:.1f}",
        f"{r['calls_per_s']:,.0f}",
        f"{r['hub_cpu_us']:.1f}" if ours else "",
        f"{r['workers_cpu_us']:.1f}" if ours else "",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__, "one round of 10,000 calls per row")
    parser.add_argument("--calls", type=at_least(max(WINDOWS)), help="calls per round (100,000)")
    parser.add_argument("--rounds", type=at_least(1), help="rounds per row (3)")
    args = parser.parse_args(argv)
    calls = args.calls or (10_000 if args.quick else 100_000)
    rounds = args.rounds or (1 if args.quick else 3)
    run = Run(
        f"hub cost per call, {rounds} rounds of {calls:,} calls, 2 workers",
        60 + 8 * rounds * calls * 100e-6,  # 8 rows at 100 us per call (ten times the usual)
    )
    with run:
        rows = uvloop.run(measure(calls, rounds, run.pids))
    headers = ["what", "GC", "window", "us/call", "calls/s", "hub CPU us", "workers' CPU us"]
    print()
    print(table(headers, [_cells(r) for r in rows]))
    run.report()
    run.write_json(args.json, rows=rows)
    return 0 if run.clean else 1


if __name__ == "__main__":
    sys.exit(main())
