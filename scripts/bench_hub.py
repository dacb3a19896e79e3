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
    python scripts/bench_hub.py [--calls N] [--rounds R] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psutil
import uvloop
from benchlib import machine_line, write_json

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


async def measure(calls: int, rounds: int) -> list[dict[str, Any]]:
    loop = asyncio.get_running_loop()
    rows = []
    async with wool_local.WorkerPool(spawn=2) as pool:
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
                        stats = await _rounds(make, calls, window, rounds, procs)
                        rows.append({"what": what, "window": window, "gc": gc_on, **stats})
                        print(_line(rows[-1]), file=sys.stderr, flush=True)
            finally:
                gc.enable()
    return rows


def _line(r: dict[str, Any]) -> str:
    cpu = (
        f"  hub CPU {r['hub_cpu_us']:5.1f} us  workers' CPU {r['workers_cpu_us']:4.1f} us"
        if r["what"] == "wool_local"
        else ""
    )
    return (
        f"  {r['what']:14s} window {r['window']:>6,}  GC {'on ' if r['gc'] else 'off'}  "
        f"{r['wall_us']:5.1f} us/call ({r['calls_per_s']:>9,.0f}/s){cpu}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args()
    print(f"hub cost per call, {args.rounds} rounds of {args.calls:,} calls, 2 workers")
    print(f"  {machine_line()}")
    rows = uvloop.run(measure(args.calls, args.rounds))
    print("\n".join(_line(r) for r in rows))
    write_json(args.json, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
