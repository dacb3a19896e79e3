"""Lifecycle costs: the health monitor's CPU share, and a 100k-dispatch soak.

1. Monitor cost: a pool of 8 workers under steady load and then idle, with the
   monitor sampling every 0.5 s (the default) and every 0.05 s. Reports the
   CPU seconds the monitor spent per round and as a share of one core.
2. Soak: 100,000 dispatches in windows of 10,000 with the cyclic GC off in the
   hub and the workers; after each window, the live count of the hub's
   sessions, finished futures and tasks, and the hub's RSS.

    python scripts/bench_lifecycle.py [--json PATH] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import time

import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchlib import machine

import wool_local
from wool_local.workers.dispatch import Pending


@wool_local.routine
async def noop(x: int = 0) -> int:
    return x


@wool_local.routine
async def gc_off() -> None:
    gc.disable()


async def monitor_cost(workers: int, interval: float, seconds: float) -> dict[str, float]:
    limits = wool_local.WorkerLimits(idle_ttl=None)
    async with wool_local.WorkerPool(spawn=workers, limits=limits, monitor_interval=interval) as wp:
        monitor = wp.pool.monitor
        cpu0, rounds0 = monitor.cpu_seconds, monitor.rounds
        start = time.perf_counter()
        calls = 0
        while time.perf_counter() - start < seconds:  # busy half
            await asyncio.gather(*(noop(i) for i in range(2000)))
            calls += 2000
        busy_wall = time.perf_counter() - start
        busy_cpu, busy_rounds = monitor.cpu_seconds - cpu0, monitor.rounds - rounds0
        cpu1, rounds1 = monitor.cpu_seconds, monitor.rounds
        await asyncio.sleep(seconds)  # idle half
        idle_cpu, idle_rounds = monitor.cpu_seconds - cpu1, monitor.rounds - rounds1
    return {
        "workers": workers,
        "interval_s": interval,
        "busy_rounds": busy_rounds,
        "busy_us_per_round": busy_cpu / max(busy_rounds, 1) * 1e6,
        "busy_share_of_core_pct": busy_cpu / busy_wall * 100,
        "idle_rounds": idle_rounds,
        "idle_us_per_round": idle_cpu / max(idle_rounds, 1) * 1e6,
        "idle_share_of_core_pct": idle_cpu / seconds * 100,
        "dispatches_during_busy": calls,
    }


async def soak(total: int, window: int) -> list[dict[str, float]]:
    me = psutil.Process()
    rows = []
    async with wool_local.WorkerPool(spawn=2):
        await asyncio.gather(*(gc_off() for _ in range(4)))
        done = 0
        start = time.perf_counter()
        while done < total:
            await asyncio.gather(*(noop(i) for i in range(window)))
            await asyncio.sleep(0)  # let the resuming step drop the finished gather first
            done += window
            objs = gc.get_objects()
            rows.append(
                {
                    "dispatches": done,
                    "elapsed_s": time.perf_counter() - start,
                    "sessions": sum(1 for o in objs if type(o) is Pending),
                    "finished_futures": sum(
                        1 for o in objs if isinstance(o, asyncio.Future) and o.done()
                    ),
                    "tasks": len(asyncio.all_tasks()),
                    "hub_rss_mib": me.memory_info().rss / 2**20,
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args()
    seconds = 1.0 if args.quick else 5.0
    total = 20_000 if args.quick else 100_000

    results: dict[str, object] = {"machine": machine(), "monitor": [], "soak": []}
    print("1. Monitor cost, 8 workers")
    print(f"{'interval':>9} {'state':>5} {'rounds':>7} {'us/round':>9} {'% of a core':>12}")
    for interval in (0.5, 0.05):
        row = asyncio.run(monitor_cost(8, interval, seconds))
        results["monitor"].append(row)  # type: ignore[union-attr]
        for state in ("busy", "idle"):
            print(
                f"{interval:>8}s {state:>5} {row[f'{state}_rounds']:>7.0f} "
                f"{row[f'{state}_us_per_round']:>9.0f} {row[f'{state}_share_of_core_pct']:>11.3f}%"
            )

    print(f"\n2. Soak: {total:,} dispatches, cyclic GC off")
    gc.collect()
    gc.disable()
    try:
        rows = asyncio.run(soak(total, 10_000))
    finally:
        gc.enable()
    results["soak"] = rows
    print(f"{'dispatches':>10} {'sessions':>9} {'done futs':>10} {'tasks':>6} {'hub RSS MiB':>12}")
    for row in rows:
        print(
            f"{row['dispatches']:>10,} {row['sessions']:>9} {row['finished_futures']:>10} "
            f"{row['tasks']:>6} {row['hub_rss_mib']:>12.1f}"
        )
    growth = rows[-1]["hub_rss_mib"] - rows[1]["hub_rss_mib"] if len(rows) > 1 else 0.0
    print(f"hub RSS growth after the first window: {growth:+.1f} MiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
