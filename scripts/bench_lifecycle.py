#!/usr/bin/env python3
"""Lifecycle costs: the health monitor's CPU share, and a 100k-dispatch soak.

1. Monitor cost: a pool of 8 workers under steady load and then idle, with the
   monitor sampling every 0.5 s (the default) and every 0.05 s. Reports the
   CPU seconds the monitor spent per round (``WorkerPool.stats()``) and as a
   share of one core.
2. Soak: 100,000 dispatches in windows of 10,000 with the cyclic GC off in the
   hub and the workers; after each window, the live count of the hub's
   sessions (wool_local's per-call ``Pending`` objects), finished futures and
   tasks, and the hub's RSS.

Both run on the stdlib event loop.

    python scripts/bench_lifecycle.py [--quick] [--sections 1,2] [--json PATH]
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from typing import Any

import psutil
from benchlib import Run, arguments, table

import wool_local


@wool_local.routine
async def noop(x: int = 0) -> int:
    return x


@wool_local.routine
async def gc_off() -> None:
    gc.disable()


async def monitor_cost(
    workers: int, interval: float, seconds: float, pids: set[int]
) -> dict[str, float]:
    limits = wool_local.WorkerLimits(idle_ttl=None)
    async with wool_local.WorkerPool(spawn=workers, limits=limits, monitor_interval=interval) as wp:
        pids.update(wp.pids)  # their shared-memory names carry these pids
        before = wp.stats()
        start = time.perf_counter()
        calls = 0
        while time.perf_counter() - start < seconds:  # busy half
            await asyncio.gather(*(noop(i) for i in range(2000)))
            calls += 2000
        busy_wall = time.perf_counter() - start
        middle = wp.stats()
        await asyncio.sleep(seconds)  # idle half
        after = wp.stats()
    busy_cpu = middle.monitor_cpu - before.monitor_cpu
    busy_rounds = middle.monitor_rounds - before.monitor_rounds
    idle_cpu = after.monitor_cpu - middle.monitor_cpu
    idle_rounds = after.monitor_rounds - middle.monitor_rounds
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


def session_class() -> type | None:
    """wool_local's per-call session class (``Pending``), wherever its internals keep it."""
    for name, module in list(sys.modules.items()):
        if name.startswith("wool_local.") and isinstance(getattr(module, "Pending", None), type):
            return module.Pending
    return None


async def soak(total: int, window: int, pids: set[int]) -> list[dict[str, Any]]:
    me = psutil.Process()
    pending = session_class()
    rows = []
    async with wool_local.WorkerPool(spawn=2) as wp:
        pids.update(wp.pids)
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
                    "sessions": None if pending is None else sum(type(o) is pending for o in objs),
                    "finished_futures": sum(
                        1 for o in objs if isinstance(o, asyncio.Future) and o.done()
                    ),
                    "tasks": len(asyncio.all_tasks()),
                    "hub_rss_mib": me.memory_info().rss / 2**20,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__, "a short smoke run", sections=2)
    args = parser.parse_args(argv)
    seconds = 1.0 if args.quick else 5.0
    total = 20_000 if args.quick else 100_000
    run = Run("wool_local lifecycle costs", 300.0)
    monitor: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    with run:
        if 1 in args.sections:
            for interval in (0.5, 0.05):
                monitor.append(asyncio.run(monitor_cost(8, interval, seconds, run.pids)))
        if 2 in args.sections:
            gc.collect()
            gc.disable()
            try:
                rows = asyncio.run(soak(total, 10_000, run.pids))
            finally:
                gc.enable()

    if monitor:
        print("\n1. Monitor cost, 8 workers")
        cells = [
            [
                f"{row['interval_s']:g} s",
                state,
                f"{row[f'{state}_rounds']:.0f}",
                f"{row[f'{state}_us_per_round']:.0f}",
                f"{row[f'{state}_share_of_core_pct']:.3f}%",
            ]
            for row in monitor
            for state in ("busy", "idle")
        ]
        print(table(["interval", "state", "rounds", "us/round", "% of a core"], cells))
    if rows:
        print(f"\n2. Soak: {total:,} dispatches, cyclic GC off")
        cells = [
            [
                f"{row['dispatches']:,}",
                "-" if row["sessions"] is None else str(row["sessions"]),
                str(row["finished_futures"]),
                str(row["tasks"]),
                f"{row['hub_rss_mib']:.1f}",
            ]
            for row in rows
        ]
        print(table(["dispatches", "sessions", "done futs", "tasks", "hub RSS MiB"], cells, left=0))
        growth = rows[-1]["hub_rss_mib"] - rows[1]["hub_rss_mib"] if len(rows) > 1 else 0.0
        print(f"  hub RSS growth after the first window: {growth:+.1f} MiB")
        if rows[0]["sessions"] is None:
            print("  note: sessions not counted (wool_local has no class named Pending)")
    run.report()
    run.write_json(args.json, monitor=monitor, soak=rows)
    return 0 if run.clean else 1


if __name__ == "__main__":
    sys.exit(main())
