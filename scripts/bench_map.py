#!/usr/bin/env python3
"""Batch jobs through ``map``: wool_local's chunked map against the peers' maps.

What is measured
    Three batches on 2 workers, each timed from the first submission to the last
    result, median of ``--rounds`` rounds in one pool per implementation:
    "tiny", 200,000 calls of ``str`` on an int (nothing but overhead); "sha256",
    20,000 sha256 digests of 1 KiB blobs; "cpu", 200 calls spinning the CPU for
    40 ms, where the time to the first result counts too. wool_local:
    ``WorkerPool.map`` with its automatic chunk size (and, for reference on "tiny",
    20,000 routine calls through ``asyncio.gather``); ProcessPoolExecutor and
    multiprocessing.Pool (fork) with the chunk sizes their users pick (100 for tiny
    items, 8 for small ones, 1 for long ones); mpire and loky where installed. "cpu"
    uses each peer's unordered path (``as_completed``, ``imap_unordered``).

Why
    Users port batch jobs from these tools; map is the call they port.

Usage
    python scripts/bench_map.py [--quick] [--rounds R] [--json PATH]
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from functools import partial
from typing import Any

import uvloop
from benchlib import Run, arguments, at_least, attempt, ratio, table

import wool_local

WORKERS = 2
TIMEOUT = 120.0


def spin(ms: float) -> float:
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass
    return ms


def digest(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


@wool_local.routine
async def wl_str(x: int) -> str:
    return str(x)


def batches(quick: bool) -> dict[str, tuple[Callable[[Any], Any], list[Any], int]]:
    """name -> (function, items, the chunk size peers' users pick)."""
    tiny = 20_000 if quick else 200_000
    blobs = [i.to_bytes(4, "little") * 256 for i in range(2_000 if quick else 20_000)]
    return {
        "tiny": (str, list(range(tiny)), 100),
        "sha256": (digest, blobs, 8),
        "cpu": (spin, [40.0] * (40 if quick else 200), 1),
    }


Timing = tuple[float, float]  # (total seconds, seconds to the first result)


def timed(results: Iterable[Any], expected: int) -> Timing:
    t0 = time.perf_counter()
    first = None
    n = 0
    for _ in results:
        if first is None:
            first = time.perf_counter() - t0
        n += 1
    if n != expected:
        raise AssertionError(f"{n} results for {expected} items")
    return time.perf_counter() - t0, first or 0.0


def wool_local_case(name: str, fn: Any, items: list[Any], rounds: int, pids: set[int]) -> Timing:
    async def main() -> Timing:
        async with wool_local.WorkerPool(spawn=WORKERS) as pool:
            pids.update(pool.pids)
            [x async for x in pool.map(str, range(100))]  # warm
            times = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                first = None
                n = 0
                async with asyncio.timeout(TIMEOUT):
                    async for _ in pool.map(fn, items, ordered=name != "cpu"):
                        if first is None:
                            first = time.perf_counter() - t0
                        n += 1
                assert n == len(items)
                times.append((time.perf_counter() - t0, first or 0.0))
            return _median(times)

    return uvloop.run(main())


def gather_case(items: list[Any], rounds: int, pids: set[int]) -> Timing:
    async def main() -> Timing:
        async with wool_local.WorkerPool(spawn=WORKERS) as pool:
            pids.update(pool.pids)
            times = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                async with asyncio.timeout(TIMEOUT):
                    out = await asyncio.gather(*(wl_str(x) for x in items))
                assert len(out) == len(items)
                times.append((time.perf_counter() - t0, 0.0))
            return _median(times)

    return uvloop.run(main())


def executor_case(fn: Any, items: list[Any], chunk: int, rounds: int, unordered: bool) -> Timing:
    with ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("fork")) as ex:
        return _futures_case(ex, fn, items, chunk, rounds, unordered)


def _futures_case(
    ex: Any, fn: Any, items: list[Any], chunk: int, rounds: int, unordered: bool
) -> Timing:
    """A concurrent.futures executor: ``as_completed`` over submits, or ``map``."""
    list(ex.map(str, range(100)))
    times = []
    for _ in range(rounds):
        if unordered:
            futures = [ex.submit(fn, x) for x in items]
            times.append(timed(as_completed(futures, timeout=TIMEOUT), len(items)))
        else:
            times.append(timed(ex.map(fn, items, chunksize=chunk, timeout=TIMEOUT), len(items)))
    return _median(times)


def mp_case(fn: Any, items: list[Any], chunk: int, rounds: int, unordered: bool) -> Timing:
    with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
        pool.map(str, range(100))
        times = []
        for _ in range(rounds):
            run = pool.imap_unordered if unordered else pool.imap
            times.append(timed(run(fn, items, chunksize=chunk), len(items)))
        return _median(times)


def mpire_case(fn: Any, items: list[Any], chunk: int, rounds: int, unordered: bool) -> Timing:
    from mpire import WorkerPool

    with WorkerPool(n_jobs=WORKERS, start_method="fork") as pool:
        pool.map(str, range(100))
        times = []
        for _ in range(rounds):
            run = pool.imap_unordered if unordered else pool.imap
            times.append(timed(run(fn, items, chunk_size=chunk), len(items)))
        return _median(times)


def loky_case(fn: Any, items: list[Any], chunk: int, rounds: int, unordered: bool) -> Timing:
    import loky

    ex = loky.ProcessPoolExecutor(max_workers=WORKERS)
    try:
        return _futures_case(ex, fn, items, chunk, rounds, unordered)
    finally:
        ex.shutdown(wait=True)


def _median(times: list[Timing]) -> Timing:
    return statistics.median(t for t, _ in times), statistics.median(f for _, f in times)


def _installed(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def main() -> int:
    try:  # mpire draws its bars with tqdm, whose monitor thread would warn at every fork
        import tqdm

        tqdm.tqdm.monitor_interval = 0
    except ImportError:
        pass
    parser = arguments(__doc__, "a tenth of the items, one round (~15 s)")
    parser.add_argument("--rounds", type=at_least(1), default=3, help="rounds per case (3)")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    run = Run("Batch jobs through map, 2 workers", budget=900.0)
    results: dict[str, dict[str, Any]] = {}
    notes = [] if _installed("mpire") else ["mpire skipped: not installed (pip install mpire)"]
    if not _installed("loky"):
        notes.append("loky skipped: not installed")
    with run:
        for name, (fn, items, chunk) in batches(args.quick).items():
            unordered = name == "cpu"
            how = "as_completed" if unordered else f"map(chunksize={chunk})"
            how_mp = "imap_unordered(chunksize=1)" if unordered else f"imap(chunksize={chunk})"
            peer_args = (fn, items, chunk, rounds, unordered)
            cases: list[tuple[str, str, Callable[[], Timing]]] = [
                ("wool_local", "pool.map(auto)",
                 partial(wool_local_case, name, fn, items, rounds, run.pids)),
                ("ProcessPoolExecutor (fork)", how, partial(executor_case, *peer_args)),
                ("multiprocessing.Pool (fork)", how_mp, partial(mp_case, *peer_args)),
            ]  # fmt: skip
            if name == "tiny":
                few = items[: len(items) // 10]
                gather = partial(gather_case, few, rounds, run.pids)
                cases.insert(1, ("wool_local", f"gather, {len(few):,} calls", gather))
            if _installed("mpire"):
                how_mpire = how_mp.replace("chunksize", "chunk_size")
                cases.append(("mpire (fork)", how_mpire, partial(mpire_case, *peer_args)))
            if _installed("loky"):
                cases.append(("loky", how, partial(loky_case, *peer_args)))
            print(f"  ... {name}: {len(items):,} items", flush=True)
            got = {}
            for impl, call, case in cases:
                value, outcome = attempt(f"{name}: {impl} {call}", case)
                got[(impl, call)] = (value, outcome)
            results[name] = {f"{i} {c}": (v if v else None) for (i, c), (v, _) in got.items()}
            ours = got[("wool_local", "pool.map(auto)")][0]
            rows = []
            for (impl, call), (value, outcome) in got.items():
                if value is None:
                    rows.append([impl, call, "failed", "", "", outcome.error or ""])
                    continue
                vs = None
                if ours is not None and impl != "wool_local":
                    vs = value[0] / ours[0]
                rows.append([
                    impl, call, f"{value[0]:.3f}", f"{value[1] * 1000:.0f}",
                    ratio(vs), f"{len(items) / value[0]:,.0f}/s",
                ])  # fmt: skip
            print(f"\n{name}: {len(items):,} items, median of {rounds}")
            print(table(["implementation", "call", "seconds", "first ms", "peer/ours", "rate"],
                        rows))  # fmt: skip
        print("\n  peer/ours > 1: the peer took longer than wool_local's map")
        for note in notes:
            print(f"  note: {note}")
    run.report()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": run.machine, "results": results}, f, indent=2, default=str)
    return 0 if run.clean else 1


if __name__ == "__main__":
    sys.exit(main())
