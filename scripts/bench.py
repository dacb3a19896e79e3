#!/usr/bin/env python3
"""Benchmark: wool_local routine dispatch against the process pools Python users reach for.

What is measured (one run, one machine, every implementation side by side)
    1. Sequential round trip. A no-op call is made and awaited (or waited on) one at a time;
       each call is timed with ``time.perf_counter_ns`` around the call and its answer.
       Median and p99 in microseconds over ``calls`` timed calls after ``warm-up`` untimed
       ones, with 1 and with 2 workers. wool_local: ``await routine()``;
       ProcessPoolExecutor: ``submit(fn).result()``; multiprocessing.Pool:
       ``apply_async(fn).get()`` (what ``Pool.apply`` does, with a timeout added); loky:
       ``submit(fn).result()``; wool: ``await routine()``.

    2. Throughput. N no-op calls, each dispatched on its own (no batching by the caller),
       2 workers, timed from the first dispatch to the last result; tasks/s = N / time of
       the median of several rounds in one pool (the table shows the rounds' range too).
       wool_local and wool: ``asyncio.gather`` over windows of 10,000 calls (each window is
       gathered before the next one starts, so at most 10,000 calls are in flight); wool_local
       runs a second time with windows of 1,000, to show how its throughput depends on the
       number of calls in flight (the target is checked on each row);
       ProcessPoolExecutor and loky: ``map(fn, range(N), chunksize=1)``;
       multiprocessing.Pool: ``imap_unordered(fn, range(N), chunksize=1)``. The peers are far
       slower per task, so they run a smaller N (stated in the table); a warm-up batch runs
       first so worker start-up is not timed. Every result is summed and checked.

    3. Echo of a large payload. The routine returns its ``bytes`` argument and the caller gets
       ``bytes`` back (checked equal to what was sent, outside the timed region); 1 worker.
       Median and min round trip in ms, and GB/s = 2 x size / median (1 GB = 1e9 bytes).
       Peers: ProcessPoolExecutor ``submit().result()``, multiprocessing.Pool
       ``apply_async().get()``, loky ``submit().result()``.

    "x vs best peer" is speed relative to the fastest peer of the same group (worker count or
    payload size): best peer median / median for latencies, tasks/s / best peer tasks/s for
    throughput. Above 1.00x is faster than every peer; the best peer itself shows 1.00x.
    "others' CPU" is the CPU time processes outside this benchmark used while the case ran,
    in percent of all CPUs (busy time from /proc/stat minus this process tree's): on a small
    shared machine a case that ran while something else was busy is not comparable.

Why
    wool_local promises an async-native pool that is much cheaper per dispatch than what
    Python ships with. This checks its targets against the alternatives on the same machine
    in the same run: a round-trip median at most 1/5 of the fastest peer's, at least 100,000
    individually dispatched calls per second, and a 64 MiB echo at least 5x as fast as
    ProcessPoolExecutor's.

Fairness
    Every implementation gets its own fresh pool per case, started before timing and shut down
    after. ProcessPoolExecutor and multiprocessing.Pool use the ``fork`` start method (the
    cheapest start-up, like wool_local's forked workers); loky uses its own process start
    (it has no fork mode) and wool spawns its workers (gRPC servers on localhost). The hub (the
    caller's process) runs a uvloop event loop for wool_local and wool by default
    (``--hub-loop asyncio`` for the stock loop); the synchronous peers need no loop. Garbage
    collection stays on (as for real callers); ``gc.collect()`` runs before each case. The
    wool cases run after all others, since wool imports gRPC. The machine is a shared VM, so
    load average and CPU steal time over the run are reported with the results.

Safety
    Nothing may hang: synchronous calls carry a per-call timeout, async cases run under
    ``asyncio.timeout``, and a faulthandler backstop ends the process (printing every
    thread's stack) if the whole run exceeds its budget. A failed case is recorded and its
    pool is killed, not drained. At the end the script stops the resource trackers the peers
    started and reports any child process still alive and any ``/dev/shm`` entry that
    appeared during the run.

Usage
    python scripts/bench.py [--quick] [--json PATH] [--hub-loop {uvloop,asyncio}]
                            [--sections 1,2,3] [--case-timeout S] [--wait-quiet S]

    --quick is a ~15 s smoke run (fewer calls, smaller N); --wait-quiet S waits before each
    case, up to S seconds, for other programs to leave the CPUs idle (the time waited is not
    part of any measurement, so the run takes longer). wool_local is imported from
    PYTHONPATH (else the installed package); the report's head names the machine and the
    commit, and the JSON adds a digest of the source wool_local was imported from.

The exit status is 1 if a case failed or the cleanup check found something; a missed target
is reported, not turned into a failure.
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import contextlib
import importlib.util
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

import uvloop
from benchlib import (
    CaseTimeout,
    MiB,
    Run,
    TargetCheck,
    arguments,
    attempt,
    positive,
    print_targets,
    ratio,
    summary,
    table,
)
from benchpeers import ForkExecutor, Peer, peers

import wool_local

# wool's spawned workers import this module as __mp_main__; keep their INFO logs quiet.
logging.getLogger("wool").setLevel(logging.WARNING)

T = TypeVar("T")

# Targets (see "Why").
TARGET_RT_FRACTION = 1 / 5
TARGET_TASKS_PER_S = 100_000
TARGET_ECHO_VS_PPE = 5.0
TARGET_ECHO_SIZE = 64 * MiB


# -- the work ----------------------------------------------------------------------------------


def peer_noop(x: Any = None) -> Any:
    """The peers' no-op task: returns its argument."""
    return x


def peer_echo(data: bytes) -> bytes:
    """The peers' echo task: the payload goes back to the caller."""
    return data


@wool_local.routine
async def wl_noop(x: Any = None) -> Any:
    """wool_local's no-op routine: returns its argument."""
    return x


@wool_local.routine
async def wl_echo(data: bytes) -> bytes:
    """wool_local's echo routine: the payload goes back to the caller."""
    return data


# -- settings ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EchoSpec:
    size: int
    warmup: int
    reps: int


@dataclass(frozen=True)
class Settings:
    rt_warmup: int
    rt_calls: int
    thr_calls: int  # wool_local
    thr_peer_calls: int  # ProcessPoolExecutor, multiprocessing.Pool, loky
    thr_wool_calls: int  # wool (gRPC per call: about 1,000 calls/s)
    thr_warmup: int
    thr_rounds: int  # timed rounds of N calls in one pool; the median round is reported
    windows: tuple[int, ...]  # wool_local runs once per window; wool uses the first
    echo: tuple[EchoSpec, ...]
    call_timeout: float  # one synchronous call or wait
    case_timeout: float  # one whole case (async cases; sync ones are bounded per call)
    budget: float  # the whole run (faulthandler backstop)


FULL = Settings(
    rt_warmup=300,
    rt_calls=3_000,
    thr_calls=100_000,
    thr_peer_calls=20_000,
    thr_wool_calls=1_000,
    thr_warmup=1_000,
    thr_rounds=5,
    windows=(10_000, 1_000),
    echo=(EchoSpec(1 * MiB, 5, 30), EchoSpec(64 * MiB, 1, 5)),
    call_timeout=40.0,
    case_timeout=40.0,  # the longest case (wool round trips) takes about 10 s
    budget=600.0,
)

QUICK = Settings(
    rt_warmup=30,
    rt_calls=300,
    thr_calls=20_000,
    thr_peer_calls=4_000,
    thr_wool_calls=200,
    thr_warmup=200,
    thr_rounds=2,
    windows=(10_000, 1_000),
    echo=(EchoSpec(1 * MiB, 2, 10), EchoSpec(64 * MiB, 1, 2)),
    call_timeout=15.0,
    case_timeout=15.0,  # every quick case takes a few seconds at most
    budget=180.0,
)


# -- implementations ---------------------------------------------------------------------------


class Impl(abc.ABC):
    """One way to run tasks in other processes."""

    name: str
    is_peer = True
    rt_method = ""
    thr_method = ""
    echo_method = ""

    @abc.abstractmethod
    def roundtrip(self, workers: int, s: Settings) -> list[int]:
        """Nanoseconds of each timed sequential no-op call."""

    @abc.abstractmethod
    def throughput(self, workers: int, n: int, s: Settings, window: int) -> list[float]:
        """Seconds to run ``n`` individually dispatched no-op calls, for each of
        ``s.thr_rounds`` rounds in one pool (``window``: async only)."""

    @abc.abstractmethod
    def echo(
        self, specs: Iterable[EchoSpec], payloads: dict[int, bytes], s: Settings
    ) -> dict[int, list[int]]:
        """Nanoseconds of each timed echo, by payload size (one worker)."""


def _check_echo(got: Any, want: bytes) -> None:
    if type(got) is not bytes or got != want:
        raise AssertionError(f"echo came back as {type(got).__name__}, not the bytes sent")


def _check_sum(total: int, n: int) -> None:
    if total != n * (n - 1) // 2:
        raise AssertionError(f"results of {n} calls sum to {total}, not {n * (n - 1) // 2}")


class SyncPeer(Impl):
    """A peer of benchpeers, driven with blocking calls that each carry a timeout."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.name = peer.name
        self.rt_method = self.echo_method = peer.call_method
        self.thr_method = peer.many_method

    def roundtrip(self, workers: int, s: Settings) -> list[int]:
        deadline = time.monotonic() + s.case_timeout
        clock = time.perf_counter_ns
        samples: list[int] = []
        with self.peer.pool(workers) as pool:
            for _ in range(s.rt_warmup):
                self.peer.call(pool, s.call_timeout, peer_noop)
            for i in range(s.rt_calls):
                t0 = clock()
                self.peer.call(pool, s.call_timeout, peer_noop)
                samples.append(clock() - t0)
                if i % 256 == 0 and time.monotonic() > deadline:
                    raise CaseTimeout(f"round trips ran over {s.case_timeout:g} s")
        return samples

    def throughput(self, workers: int, n: int, s: Settings, window: int) -> list[float]:
        rounds = []
        many = self.peer.many
        with self.peer.pool(workers) as pool:
            warm = many(pool, peer_noop, range(s.thr_warmup), s.case_timeout)
            _check_sum(sum(warm), s.thr_warmup)
            for _ in range(s.thr_rounds):
                t0 = time.perf_counter()
                total = 0
                for result in many(pool, peer_noop, range(n), s.case_timeout):
                    total += result
                rounds.append(time.perf_counter() - t0)
                _check_sum(total, n)
        return rounds

    def echo(
        self, specs: Iterable[EchoSpec], payloads: dict[int, bytes], s: Settings
    ) -> dict[int, list[int]]:
        clock = time.perf_counter_ns
        out: dict[int, list[int]] = {}
        with self.peer.pool(1) as pool:
            for spec in specs:
                payload = payloads[spec.size]
                samples = out[spec.size] = []
                for rep in range(spec.warmup + spec.reps):
                    t0 = clock()
                    got = self.peer.call(pool, s.call_timeout, peer_echo, payload)
                    dt = clock() - t0
                    _check_echo(got, payload)
                    del got
                    if rep >= spec.warmup:
                        samples.append(dt)
        return out


class AsyncImpl(Impl):
    """An implementation driven from a coroutine on the hub's event loop."""

    rt_method = "await routine()"
    thr_method = "gather, windows of {window:,}"
    echo_method = "await routine(payload)"

    def __init__(self, hub_loop: str) -> None:
        self.hub_loop = hub_loop

    @abc.abstractmethod
    def _pool(self, workers: int) -> contextlib.AbstractAsyncContextManager[Any]: ...

    @abc.abstractmethod
    def _noop(self) -> Callable[..., Coroutine[Any, Any, Any]]: ...

    @abc.abstractmethod
    def _echo(self) -> Callable[..., Coroutine[Any, Any, Any]]: ...

    def _run(self, coro: Coroutine[Any, Any, T], s: Settings) -> T:
        factory = uvloop.new_event_loop if self.hub_loop == "uvloop" else None
        with asyncio.Runner(loop_factory=factory) as runner:
            try:
                return runner.run(coro)
            except TimeoutError as exc:
                raise CaseTimeout(f"did not finish within {s.case_timeout:g} s") from exc

    @contextlib.asynccontextmanager
    async def _bounded_pool(self, workers: int, s: Settings) -> Any:
        # The outer bound also covers pool start-up and shutdown; the inner one the work.
        async with asyncio.timeout(2 * s.case_timeout), self._pool(workers) as pool:
            self._started(pool)
            async with asyncio.timeout(s.case_timeout):
                yield

    def _started(self, pool: Any) -> None:
        """Called with the running pool (the value of its ``async with``)."""

    def roundtrip(self, workers: int, s: Settings) -> list[int]:
        return self._run(self._roundtrip(workers, s), s)

    async def _roundtrip(self, workers: int, s: Settings) -> list[int]:
        noop = self._noop()
        clock = time.perf_counter_ns
        samples: list[int] = []
        async with self._bounded_pool(workers, s):
            for _ in range(s.rt_warmup):
                await noop()
            for _ in range(s.rt_calls):
                t0 = clock()
                await noop()
                samples.append(clock() - t0)
        return samples

    def throughput(self, workers: int, n: int, s: Settings, window: int) -> list[float]:
        return self._run(self._throughput(workers, n, s, window), s)

    async def _throughput(self, workers: int, n: int, s: Settings, window: int) -> list[float]:
        noop = self._noop()
        rounds = []
        async with self._bounded_pool(workers, s):
            warm = await asyncio.gather(*(noop(i) for i in range(s.thr_warmup)))
            _check_sum(sum(warm), s.thr_warmup)
            for _ in range(s.thr_rounds):
                t0 = time.perf_counter()
                total = 0
                for start in range(0, n, window):
                    stop = min(n, start + window)
                    total += sum(await asyncio.gather(*(noop(i) for i in range(start, stop))))
                rounds.append(time.perf_counter() - t0)
                _check_sum(total, n)
        return rounds

    def echo(
        self, specs: Iterable[EchoSpec], payloads: dict[int, bytes], s: Settings
    ) -> dict[int, list[int]]:
        return self._run(self._echo_all(list(specs), payloads, s), s)

    async def _echo_all(
        self, specs: list[EchoSpec], payloads: dict[int, bytes], s: Settings
    ) -> dict[int, list[int]]:
        echo = self._echo()
        clock = time.perf_counter_ns
        out: dict[int, list[int]] = {}
        async with self._bounded_pool(1, s):
            for spec in specs:
                payload = payloads[spec.size]
                samples = out[spec.size] = []
                for rep in range(spec.warmup + spec.reps):
                    t0 = clock()
                    got = await echo(payload)
                    dt = clock() - t0
                    _check_echo(got, payload)
                    del got
                    if rep >= spec.warmup:
                        samples.append(dt)
        return out


class WoolLocal(AsyncImpl):
    name = "wool_local"
    is_peer = False

    def __init__(self, hub_loop: str, pids: set[int]) -> None:
        super().__init__(hub_loop)
        self.pids = pids  # the run's creators of /dev/shm names, for its cleanup check

    def _pool(self, workers: int) -> contextlib.AbstractAsyncContextManager[Any]:
        return wool_local.WorkerPool(spawn=workers)

    def _started(self, pool: Any) -> None:
        self.pids.update(pool.pids)  # their shared-memory names carry these pids

    def _noop(self) -> Callable[..., Coroutine[Any, Any, Any]]:
        return wl_noop

    def _echo(self) -> Callable[..., Coroutine[Any, Any, Any]]:
        return wl_echo


class WoolPeer(AsyncImpl):
    """wool, the distributed runtime; its module is imported on first use (see bench_peer_wool)."""

    name = "wool"

    def _module(self) -> Any:
        import bench_peer_wool

        return bench_peer_wool

    def _pool(self, workers: int) -> contextlib.AbstractAsyncContextManager[Any]:
        return self._module().pool(workers)

    def _noop(self) -> Callable[..., Coroutine[Any, Any, Any]]:
        return self._module().wool_noop

    def _echo(self) -> Callable[..., Coroutine[Any, Any, Any]]:
        return self._module().wool_echo


def wool_installed() -> bool:
    """Whether wool can be found (it is imported only when its cases run)."""
    try:
        return importlib.util.find_spec("wool") is not None
    except (ImportError, ValueError):
        return False


def wool_importable() -> str | None:
    """None if the wool peer module imports, else why not."""
    try:
        import bench_peer_wool  # noqa: F401
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


# -- results -----------------------------------------------------------------------------------


@dataclass
class Case:
    """One measurement: an implementation in one section with one setting."""

    section: int
    impl: str
    method: str
    workers: int
    is_peer: bool
    size: int = 0  # echo payload size (section 3)
    calls: int = 0  # timed calls (or tasks)
    stats: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    others_cpu: float | None = None  # see benchlib.Outcome
    waited_for_quiet: float = 0.0


class Bench:
    """Runs cases one at a time and keeps their results (a failed case keeps its error)."""

    def __init__(self, s: Settings, wait_quiet: float = 0.0) -> None:
        self.s = s
        self.wait_quiet = wait_quiet
        self.cases: list[Case] = []

    def _attempt(self, case: Case, what: str, fn: Callable[[], T]) -> T | None:
        value, outcome = attempt(what, fn, self.wait_quiet)
        case.error, case.others_cpu = outcome.error, outcome.others_cpu
        case.waited_for_quiet = outcome.waited_for_quiet
        self.cases.append(case)
        return value

    def roundtrip(self, impl: Impl, workers: int) -> None:
        case = Case(1, impl.name, impl.rt_method, workers, impl.is_peer, calls=self.s.rt_calls)
        samples = self._attempt(
            case,
            f"round trip: {impl.name}, {workers} worker(s)",
            lambda: impl.roundtrip(workers, self.s),
        )
        if samples:
            case.stats = summary(samples, 1e3)  # microseconds

    def throughput(self, impl: Impl, workers: int, window: int) -> None:
        s = self.s
        n = {"wool_local": s.thr_calls, "wool": s.thr_wool_calls}.get(impl.name, s.thr_peer_calls)
        method = impl.thr_method.format(window=window)
        case = Case(2, impl.name, method, workers, impl.is_peer, calls=n)
        rounds = self._attempt(
            case,
            f"throughput: {impl.name}, {s.thr_rounds} x {n:,} calls, {method}",
            lambda: impl.throughput(workers, n, s, window),
        )
        if rounds:
            seconds = statistics.median(rounds)
            case.stats = {
                "seconds": seconds,
                "tasks_per_s": n / seconds,
                "slowest_per_s": n / max(rounds),
                "fastest_per_s": n / min(rounds),
                "rounds": rounds,
            }

    def echo(self, impl: Impl, payloads: dict[int, bytes]) -> None:
        specs = self.s.echo
        box = [
            Case(3, impl.name, impl.echo_method, 1, impl.is_peer, size=spec.size, calls=spec.reps)
            for spec in specs
        ]
        first, rest = box[0], box[1:]
        samples = self._attempt(
            first, f"echo: {impl.name}", lambda: impl.echo(specs, payloads, self.s)
        )
        self.cases.extend(rest)
        for case in box:
            case.others_cpu = first.others_cpu  # one pool, one measurement for all sizes
            if samples is None:
                case.error = first.error
                continue
            stats = summary(samples[case.size], 1e6)  # milliseconds
            stats["gb_per_s"] = 2 * case.size / (stats["median"] / 1e3) / 1e9
            case.stats = stats


# -- reporting ---------------------------------------------------------------------------------


def speedup(case: Case, group: list[Case], key: str, higher_is_better: bool) -> float | None:
    """Speed of ``case`` relative to the fastest peer in ``group`` (>1: faster than all)."""
    best = best_peer(group, key, higher_is_better)
    if best is None or case.error is not None or not case.stats:
        return None
    if higher_is_better:
        return case.stats[key] / best.stats[key]
    return best.stats[key] / case.stats[key]


def best_peer(group: list[Case], key: str, higher_is_better: bool) -> Case | None:
    peers = [c for c in group if c.is_peer and c.error is None and c.stats]
    if not peers:
        return None
    pick = max if higher_is_better else min
    return pick(peers, key=lambda c: c.stats[key])


def print_table(headers: list[str], cases: list[Case], cells: Callable[[Case], list[str]]) -> None:
    """One row per case (failed cases say so; their errors follow the table).

    The last column, "others' CPU", is the CPU time used by other programs while the case ran.
    """
    headers = [*headers, "others' CPU"]
    rows = []
    for case in cases:
        others = "-" if case.others_cpu is None else f"{case.others_cpu:.0f}%"
        if case.error:
            rows.append([case.impl, case.method, "FAILED", *[""] * (len(headers) - 4), others])
        else:
            rows.append([case.impl, case.method, *cells(case), others])
    print(table(headers, rows))
    for case in cases:
        if case.error:
            print(f"  {case.impl} ({case.method}) failed: {case.error}")


def _ours(group: list[Case]) -> list[Case]:
    return [c for c in group if not c.is_peer]


def report_roundtrip(cases: list[Case], s: Settings) -> list[TargetCheck]:
    print(
        f"\n1. Sequential round trip of a no-op call ({s.rt_calls:,} timed calls after "
        f"{s.rt_warmup:,} warm-up, one at a time)"
    )
    checks: list[TargetCheck] = []
    for workers in sorted({c.workers for c in cases}):
        group = [c for c in cases if c.workers == workers]
        print(f"\n  {workers} worker{'s' if workers > 1 else ''}")
        print_table(
            ["implementation", "call", "median us", "p99 us", "x vs best peer"],
            group,
            lambda c, group=group: [
                f"{c.stats['median']:.1f}",
                f"{c.stats['p99']:.1f}",
                ratio(speedup(c, group, "median", higher_is_better=False)),
            ],
        )
        best = best_peer(group, "median", higher_is_better=False)
        for ours in _ours(group):
            checks.append(_rt_check(ours, best, workers))
            print(f"  {checks[-1].line()}")
    return checks


def _rt_check(ours: Case, best: Case | None, workers: int) -> TargetCheck:
    target = f"round-trip median <= 1/5 of the fastest peer's, {workers} worker(s)"
    need = 1 / TARGET_RT_FRACTION
    if ours.error:
        return TargetCheck(target, False, f"wool_local failed: {ours.error}", need)
    if best is None:
        return TargetCheck(target, None, "no peer to compare with", need)
    limit = best.stats["median"] * TARGET_RT_FRACTION
    got = ours.stats["median"]
    faster = best.stats["median"] / got
    detail = (
        f"wool_local {got:.1f} us vs {best.impl} {best.stats['median']:.1f} us: "
        f"{faster:.2f}x faster, need {need:g}x (<= {limit:.1f} us)"
    )
    return TargetCheck(target, got <= limit, detail, need, {f"vs {best.impl}": faster})


def report_throughput(cases: list[Case], s: Settings) -> list[TargetCheck]:
    print(
        f"\n2. Throughput of individually dispatched no-op calls (2 workers; median of "
        f"{s.thr_rounds} rounds; the peers run a smaller N, see 'calls')"
    )
    print_table(
        [
            "implementation",
            "dispatch",
            "calls",
            "seconds",
            "tasks/s",
            "rounds' range",
            "x vs best peer",
        ],
        cases,
        lambda c: [
            f"{c.calls:,}",
            f"{c.stats['seconds']:.2f}",
            f"{c.stats['tasks_per_s']:,.0f}",
            f"{c.stats['slowest_per_s'] / 1e3:,.1f}k-{c.stats['fastest_per_s'] / 1e3:,.1f}k",
            ratio(speedup(c, cases, "tasks_per_s", higher_is_better=True)),
        ],
    )
    checks = []
    for ours in _ours(cases):
        target = f"at least {TARGET_TASKS_PER_S:,} dispatches/s ({ours.method})"
        if ours.error:
            failed = f"wool_local failed: {ours.error}"
            check = TargetCheck(target, False, failed, TARGET_TASKS_PER_S)
        else:
            rate = ours.stats["tasks_per_s"]
            detail = f"wool_local {rate:,.0f}/s, {rate / TARGET_TASKS_PER_S:.2f}x of the target"
            met = rate >= TARGET_TASKS_PER_S
            check = TargetCheck(target, met, detail, TARGET_TASKS_PER_S, {"tasks/s": rate})
        checks.append(check)
        print(f"  {check.line()}")
    return checks


def report_echo(cases: list[Case], s: Settings) -> list[TargetCheck]:
    print("\n3. Echo of a bytes payload (1 worker; GB/s = 2 x size / median round trip)")
    checks: list[TargetCheck] = []
    for spec in s.echo:
        group = [c for c in cases if c.size == spec.size]
        print(f"\n  {spec.size // MiB} MiB ({spec.reps} timed after {spec.warmup} warm-up)")
        print_table(
            ["implementation", "call", "median ms", "min ms", "GB/s", "x vs best peer"],
            group,
            lambda c, group=group: [
                f"{c.stats['median']:.2f}",
                f"{c.stats['min']:.2f}",
                f"{c.stats['gb_per_s']:.2f}",
                ratio(speedup(c, group, "median", higher_is_better=False)),
            ],
        )
        if spec.size == TARGET_ECHO_SIZE:
            for ours in _ours(group):
                checks.append(_echo_check(ours, group))
                print(f"  {checks[-1].line()}")
    return checks


def _echo_check(ours: Case, group: list[Case]) -> TargetCheck:
    target = (
        f"{TARGET_ECHO_SIZE // MiB} MiB echo at least {TARGET_ECHO_VS_PPE:g}x as fast as "
        "ProcessPoolExecutor"
    )
    ppe = next((c for c in group if c.impl == ForkExecutor.name), None)
    need = TARGET_ECHO_VS_PPE
    if ours.error:
        return TargetCheck(target, False, f"wool_local failed: {ours.error}", need)
    if ppe is None or ppe.error:
        return TargetCheck(target, None, "ProcessPoolExecutor was not measured", need)
    faster = ppe.stats["median"] / ours.stats["median"]
    detail = (
        f"wool_local {ours.stats['gb_per_s']:.2f} GB/s vs ProcessPoolExecutor "
        f"{ppe.stats['gb_per_s']:.2f} GB/s: {faster:.2f}x"
    )
    return TargetCheck(target, faster >= need, detail, need, {"vs ProcessPoolExecutor": faster})


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = arguments(__doc__, "short smoke run (~15 s)", sections=3)
    parser.add_argument(
        "--hub-loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="event loop of the calling process for wool_local and wool (default: uvloop)",
    )
    parser.add_argument(
        "--case-timeout", type=positive, metavar="S", help="time limit of one case, in seconds"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="before each case, wait up to S seconds for other programs to leave the CPUs idle",
    )
    return parser.parse_args(argv)


def run_cases(
    bench: Bench, impls: list[Impl], late: list[Impl], sections: set[int], notes: list[str]
) -> None:
    """Every case, section by section; the ``late`` implementations after all others."""
    s = bench.s
    if late and (why := wool_importable()) is not None:
        notes.append(f"wool skipped: it does not import ({why})")
        late = []
    for group in (impls, late):
        if 1 in sections:
            for workers in (1, 2):
                for impl in group:
                    bench.roundtrip(impl, workers)
        if 2 in sections:
            for impl in group:
                windows = s.windows if isinstance(impl, WoolLocal) else s.windows[:1]
                for window in windows:
                    bench.throughput(impl, 2, window)
        if 3 in sections and group is impls:  # wool: round trips and throughput only
            payloads = {spec.size: os.urandom(spec.size) for spec in s.echo}
            for impl in group:
                bench.echo(impl, payloads)
            del payloads


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    s = QUICK if args.quick else FULL
    if args.case_timeout is not None:
        s = replace(s, case_timeout=args.case_timeout, call_timeout=args.case_timeout)
    mode = "quick" if args.quick else "full"
    run = Run(
        f"wool_local benchmark, {mode} run, hub loop {args.hub_loop}",
        # The whole run's budget; waiting for a quiet machine (about 25 cases) comes on top.
        s.budget + 25 * args.wait_quiet,
        hub_loop=args.hub_loop,
    )
    found, notes = peers()
    impls: list[Impl] = [WoolLocal(args.hub_loop, run.pids), *map(SyncPeer, found)]
    late: list[Impl] = []  # wool imports gRPC: run it after everything else
    if wool_installed():
        late.append(WoolPeer(args.hub_loop))
    else:
        notes.append("wool skipped: not installed (pip install wool)")
    if args.wait_quiet > 0:
        print(
            f"  before each case: wait up to {args.wait_quiet:g} s for other programs to use "
            "under 10% of the CPUs (for half a second)"
        )
    for note in notes:
        print(f"  note: {note}")

    bench = Bench(s, args.wait_quiet)
    with run:
        run_cases(bench, impls, late, args.sections, notes)

    order = [impl.name for impl in impls + late]
    cases = sorted(bench.cases, key=lambda c: (c.workers, c.size, order.index(c.impl)))
    reports = {1: report_roundtrip, 2: report_throughput, 3: report_echo}
    checks: list[TargetCheck] = []
    for section, report in reports.items():
        in_section = [c for c in cases if c.section == section]
        if in_section:
            checks += report(in_section, s)
    print_targets(checks, notes)
    waited = sum(c.waited_for_quiet for c in cases)
    run.summary.update(wait_quiet_limit=args.wait_quiet, waited_for_quiet_seconds=waited)
    run.report(waited)
    run.write_json(
        args.json,
        mode=mode,
        settings=asdict(s),
        notes=notes,
        cases=[asdict(c) for c in cases],
        targets=[asdict(c) for c in checks],
    )
    failures = [c for c in cases if c.error]
    if failures:
        print(f"{len(failures)} case(s) failed (exit status 1)")
    return 1 if failures or not run.clean else 0


if __name__ == "__main__":
    sys.exit(main())
