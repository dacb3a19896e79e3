#!/usr/bin/env python3
"""Soak: a million dispatches of every kind, and afterwards nothing left behind.

What is run
    ``--dispatches`` dispatches (1,000,000 by default) on a pool of ``--workers`` workers
    that recycles each worker after ``--max-tasks`` tasks, in windows of ``--window`` calls
    in flight. Every ten calls mix: four that succeed, one that raises, one cancelled once
    sent, one that times out (``asyncio.wait_for``), one stream read to its end, one stream
    closed after its first item, and one nested call (a routine awaiting another: two
    dispatches). Every outcome is checked; a wrong one is counted as unexpected.

What is checked
    Before the pool starts and after it stops: the hub's descriptors, threads, child
    processes and the /dev/shm entries made by the hub or any of the workers; while the
    pool runs, its leases (``pool.stats()``) once the load is gone against those after the
    first window. Reported: throughput, the hub's RSS after each tenth of the run (its
    growth from the first window to the last), recycles and crashes.

Usage
    python scripts/bench_soak.py [--quick] [--dispatches N] [--workers W] [--max-tasks K]
                                 [--window C] [--json PATH]
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import psutil
import uvloop
from benchlib import Run, arguments, at_least, table

import wool_local
from wool_local.ipc.segment import owned_leftovers

MiB = 1 << 20
#: Ten calls of the mix, and the dispatches each makes (a nested call makes two).
MIX = (
    "ok", "ok", "ok", "ok", "raise", "cancel", "timeout", "stream", "stream_closed", "nested"
)  # fmt: skip
DISPATCHES = {"nested": 2}


@wool_local.routine
async def work(x: int) -> tuple[int, int]:
    """Succeeds; tells which worker ran it (their /dev/shm names carry the pid)."""
    return os.getpid(), x * x


@wool_local.routine
async def fail(x: int) -> None:
    raise ValueError(x)


@wool_local.routine
async def nap(seconds: float) -> None:
    await asyncio.sleep(seconds)


@wool_local.routine
async def count(n: int):
    for i in range(n):
        yield i


@wool_local.routine
async def nested(x: int) -> int:
    _, square = await work(x)
    return square + 1


@dataclass
class Soak:
    """What a soak did and what it left: see :func:`soak`."""

    dispatches: int = 0
    seconds: float = 0.0
    outcomes: Counter = field(default_factory=Counter)
    unexpected: Counter = field(default_factory=Counter)
    workers_seen: set[int] = field(default_factory=set)
    recycles: dict[str, int] = field(default_factory=dict)
    crashes: int = 0
    rss: list[tuple[int, float]] = field(default_factory=list)  # (dispatches, hub RSS MiB)
    leases_warm: dict[int, int] = field(default_factory=dict)
    leases_end: dict[int, int] = field(default_factory=dict)
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.dispatches / self.seconds if self.seconds else 0.0

    @property
    def rss_growth(self) -> float:
        """MiB the hub's RSS grew from the end of the first window to the end."""
        return self.rss[-1][1] - self.rss[0][1] if self.rss else 0.0

    def leftovers(self) -> dict[str, Any]:
        """What is not back at its baseline (empty when everything is)."""
        out: dict[str, Any] = {}
        b, a = self.before, self.after
        if a["fds"] - b["fds"]:
            out["fds"] = sorted(a["fds"] - b["fds"])
        for key in ("threads", "tasks"):
            if a[key] > b[key]:
                out[key] = (b[key], a[key])
        if a["children"]:
            out["children"] = a["children"]
        if a["shm"] - b["shm"]:
            out["shm"] = sorted(a["shm"] - b["shm"])
        if self.leases_end != self.leases_warm:
            out["leases"] = (self.leases_warm, self.leases_end)
        return out

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d["outcomes"], d["unexpected"] = dict(self.outcomes), dict(self.unexpected)
        d["workers_seen"] = len(self.workers_seen)
        for k in ("before", "after"):
            d[k] = {key: len(v) if isinstance(v, set | list) else v for key, v in d[k].items()}
        d |= {"rate": self.rate, "rss_growth_mib": self.rss_growth, "leftovers": self.leftovers()}
        return d


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def _shm(creators: set[int]) -> set[str]:
    return {name for name, creator, _ in owned_leftovers() if creator in creators}


def _children(wait: float = 5.0) -> list[int]:
    """Descendants still alive after up to ``wait`` seconds for them to be reaped."""
    me = psutil.Process()
    _, alive = psutil.wait_procs(me.children(recursive=True), timeout=wait)
    return [p.pid for p in alive]


def _snapshot(creators: set[int]) -> dict[str, Any]:
    gc.collect()  # a descriptor only a dead object holds does not count
    return {
        "fds": _fds(),
        "threads": _threads(),
        "tasks": len(asyncio.all_tasks()),
        "children": _children(),
        "shm": _shm(creators),
    }


def _leases(pool: wool_local.WorkerPool) -> dict[int, int]:
    """Leases held in the pool's table, by pid (``pool.stats().leases`` where the pool
    reports them, else read from the table)."""
    leases = getattr(pool.stats(), "leases", None)
    if leases is not None:
        return dict(leases)
    table = pool.hub.leases
    out: Counter = Counter()
    if table is not None:
        for holders in table.snapshot().values():
            out.update(holders)
    return dict(out)


async def _one(kind: str, i: int, result: Soak) -> None:
    """Make one call of the mix and check how it ended."""
    try:
        if kind == "ok":
            pid, square = await work(i)
            result.workers_seen.add(pid)
            ok = square == i * i
        elif kind == "raise":
            try:
                await fail(i)
                ok = False
            except ValueError as exc:
                ok = exc.args == (i,)
        elif kind == "cancel":
            task = asyncio.ensure_future(nap(60))
            await asyncio.sleep(0)  # sent (or queued)
            task.cancel()
            try:
                await task
                ok = False
            except asyncio.CancelledError:
                ok = True
        elif kind == "timeout":
            try:
                await asyncio.wait_for(nap(60), 0.002)
                ok = False
            except TimeoutError:
                ok = True
        elif kind == "stream":
            ok = [x async for x in count(3)] == [0, 1, 2]
        elif kind == "stream_closed":
            gen = count(1000)
            try:
                ok = await gen.__anext__() == 0
            finally:
                await gen.aclose()
        else:
            ok = await nested(i) == i * i + 1
    except Exception as exc:  # recorded, not raised: the soak goes on and reports it
        result.unexpected[f"{kind}: {type(exc).__name__}: {exc}"[:200]] += 1
        return
    if ok:
        result.outcomes[kind] += 1
    else:
        result.unexpected[f"{kind}: wrong outcome"] += 1


async def soak(
    dispatches: int,
    *,
    workers: int = 2,
    max_tasks: int = 5000,
    window: int = 2000,
    checkpoints: int = 10,
    progress: Any = None,
) -> Soak:
    """Run ``dispatches`` dispatches of the mix and measure what is left afterwards."""
    result = Soak()
    hub_pid = os.getpid()
    result.before = _snapshot({hub_pid})
    me = psutil.Process()
    limits = wool_local.WorkerLimits(max_tasks=max_tasks)
    per_mix = sum(DISPATCHES.get(kind, 1) for kind in MIX)
    every = max(1, dispatches // checkpoints)
    next_mark = every
    started = time.perf_counter()
    async with wool_local.WorkerPool(spawn=workers, limits=limits, monitor_interval=0.1) as pool:
        i = 0
        while result.dispatches < dispatches:
            calls = min(window, (dispatches - result.dispatches) * len(MIX) // per_mix or 1)
            await asyncio.gather(
                *(_one(MIX[(i + k) % len(MIX)], i + k, result) for k in range(calls))
            )
            result.dispatches += sum(
                DISPATCHES.get(MIX[(i + k) % len(MIX)], 1) for k in range(calls)
            )
            i += calls
            if not result.rss:  # the end of the first window: warm
                result.rss.append((result.dispatches, me.memory_info().rss / MiB))
                result.leases_warm = await _settled_leases(pool)
            elif result.dispatches >= next_mark or result.dispatches >= dispatches:
                result.rss.append((result.dispatches, me.memory_info().rss / MiB))
                if progress is not None:
                    progress(result, time.perf_counter() - started)
            while next_mark <= result.dispatches:
                next_mark += every
        result.seconds = time.perf_counter() - started
        result.leases_end = await _settled_leases(pool)
        stats = pool.stats()
        result.recycles, result.crashes = dict(stats.recycles), stats.crashes
    result.after = _snapshot({hub_pid} | result.workers_seen)
    return result


async def _settled_leases(pool: wool_local.WorkerPool, within: float = 5.0) -> dict[int, int]:
    """The pool's leases once the workers are idle: a worker gives its back when its loop
    goes idle, a beat after its last answer; wait (bounded) until two readings agree."""
    deadline = time.monotonic() + within
    last = _leases(pool)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        now = _leases(pool)
        if now == last and set(now) <= {os.getpid()}:
            return now
        last = now
    return last


def _progress(result: Soak, elapsed: float) -> None:
    print(
        f"  ... {result.dispatches:,} dispatches in {elapsed:.0f} s, "
        f"hub RSS {result.rss[-1][1]:.1f} MiB",
        file=sys.stderr,
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__, "20,000 dispatches")
    parser.add_argument("--dispatches", type=at_least(100), help="dispatches (1,000,000)")
    parser.add_argument("--workers", type=at_least(1), default=2, help="workers (2)")
    parser.add_argument(
        "--max-tasks", type=at_least(1), default=5000, help="recycle a worker after K tasks (5000)"
    )
    parser.add_argument("--window", type=at_least(10), default=2000, help="calls in flight (2000)")
    args = parser.parse_args(argv)
    total = args.dispatches or (20_000 if args.quick else 1_000_000)
    run = Run(
        f"soak: {total:,} dispatches, {args.workers} workers, recycled every "
        f"{args.max_tasks:,} tasks, {args.window:,} calls in flight",
        120 + total * 1e-3,  # a millisecond per dispatch: ten times the usual
        loop="uvloop",
    )
    with run:
        result = uvloop.run(
            soak(
                total,
                workers=args.workers,
                max_tasks=args.max_tasks,
                window=args.window,
                progress=_progress,
            )
        )
        run.pids |= result.workers_seen
    print(
        f"\n{result.dispatches:,} dispatches in {result.seconds:.1f} s: "
        f"{result.rate:,.0f} dispatches/s"
    )
    mix = ", ".join(f"{kind} {n:,}" for kind, n in sorted(result.outcomes.items()))
    print(f"  outcomes as expected: {mix}")
    print(f"  unexpected outcomes: {sum(result.unexpected.values()):,}")
    for what, n in result.unexpected.most_common(10):
        print(f"    {n:,} x {what}")
    recycles = ", ".join(f"{k} {v:,}" for k, v in sorted(result.recycles.items())) or "none"
    print(f"  recycles: {recycles}; crashes: {result.crashes}; workers: {len(result.workers_seen)}")
    print("\nHub RSS")
    print(table(["dispatches", "MiB"], [[f"{n:,}", f"{m:.1f}"] for n, m in result.rss], left=0))
    print(f"  growth from the first window to the end: {result.rss_growth:+.1f} MiB")
    b, a = result.before, result.after
    print("\nBack at baseline (before the pool -> after it)")
    rows = [
        ["descriptors", str(len(b["fds"])), str(len(a["fds"]))],
        ["threads", str(b["threads"]), str(a["threads"])],
        ["asyncio tasks", str(b["tasks"]), str(a["tasks"])],
        ["child processes", str(len(b["children"])), str(len(a["children"]))],
        ["/dev/shm entries of the pool", str(len(b["shm"])), str(len(a["shm"]))],
        ["leases (after window 1 -> end)", str(result.leases_warm), str(result.leases_end)],
    ]
    print(table(["what", "before", "after"], rows, left=1))
    left = result.leftovers()
    print("  " + ("everything back at baseline" if not left else f"NOT BACK: {left}"))
    run.report()
    run.write_json(args.json, soak=result.summary())
    failed = bool(left or result.unexpected) or not run.clean
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
