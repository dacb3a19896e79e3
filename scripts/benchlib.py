"""The benchmark scripts' harness: what every run needs besides its own cases.

Machine details for the head of each report (figures move 2-3x between machine types, so
only ratios measured in one run compare), command-line options, bounds that keep a case from
hanging, statistics, tables, target checks, the CPU other programs used meanwhile, the check
for child processes, /dev/shm entries and descriptors left behind, and the JSON results file.

wool_local is imported from PYTHONPATH or the installed package; failing both, from the
checkout these scripts are in. This module never imports it (the wake-up study does not).
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import gc
import hashlib
import importlib.util
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import psutil

T = TypeVar("T")
MiB = 1 << 20
ROOT = Path(__file__).resolve().parent.parent  # this checkout

if importlib.util.find_spec("wool_local") is None:
    sys.path.append(str(ROOT))

# Distributions whose versions go with every result (absent ones are recorded as None).
PACKAGES = ("uvloop", "msgspec", "psutil", "posix-ipc", "cloudpickle", "loky", "wool", "grpcio")


# -- where a result was measured ---------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def version(dist: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git(*args: str, root: Path = ROOT) -> str | None:
    """Output of a git command in ``root`` (this checkout by default), or None."""
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def wool_local_package() -> Path | None:
    """The wool_local package directory that imports here, found without importing it."""
    try:
        spec = importlib.util.find_spec("wool_local")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))).resolve()


def source_digest(package: Path) -> str:
    """SHA-256 over a package's Python source, to tell apart runs of an edited tree."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def machine(**extra: Any) -> dict[str, Any]:
    """Where a result was measured: CPU, kernel, Python, the commit of the wool_local tree
    that imports here, and the packages the figures depend on; ``extra`` adds a script's own
    details (the hub's event loop, say)."""
    package = wool_local_package()
    tree = package.parent if package else ROOT
    status = git("status", "--porcelain", "--", "wool_local", root=tree)
    wool_local = sys.modules.get("wool_local")
    return {
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "allowed_cpus": sorted(os.sched_getaffinity(0)),
        "available_cpus": wool_local.available_cpus() if wool_local else None,
        "kernel": platform.release(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "commit": git("rev-parse", "--short", "HEAD", root=tree) or "unknown",
        "git_head": git("rev-parse", "HEAD", root=tree),
        "git_dirty": None if status is None else bool(status),
        "wool_local_path": str(tree),
        "wool_local_source_sha256": source_digest(package) if package else None,
        "packages": {
            "wool_local": getattr(wool_local, "__version__", None) or version("wool_local"),
            **{dist: version(dist) for dist in PACKAGES},
        },
        **extra,
    }


def machine_line(m: dict[str, Any]) -> str:
    """The head of a report, from :func:`machine`: CPU model and count, kernel, Python,
    commit (and the tree wool_local came from, if not this checkout)."""
    line = (
        f"machine: {m['cpu']}, {m['cpus']} CPUs, kernel {m['kernel']}, Python {m['python']}, "
        f"commit {m['commit']}{' (modified)' if m['git_dirty'] else ''}"
    )
    if m["wool_local_path"] != str(ROOT):
        line += f", wool_local from {m['wool_local_path']}"
    return line


# -- command line ------------------------------------------------------------------------------


def arguments(doc: str | None, quick: str, sections: int = 0) -> argparse.ArgumentParser:
    """A parser with the options every script takes: ``--quick``, ``--json`` and, for a script
    of several sections, ``--sections`` (a set of section numbers)."""
    parser = argparse.ArgumentParser(description=(doc or "").strip().split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    if sections:
        everything = ",".join(str(i) for i in range(1, sections + 1))
        parser.add_argument(
            "--sections",
            type=section_set(sections),
            default=everything,
            help=f"sections to run, e.g. 1,{sections} (default {everything})",
        )
    return parser


def section_set(highest: int) -> Callable[[str], set[int]]:
    """An argparse type: section numbers 1-``highest`` separated by commas."""

    def parse(text: str) -> set[int]:
        try:
            chosen = {int(x) for x in text.split(",") if x.strip()}
        except ValueError:
            chosen = set()
        if not chosen or not chosen <= set(range(1, highest + 1)):
            raise argparse.ArgumentTypeError(f"takes numbers 1-{highest} separated by commas")
        return chosen

    return parse


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum``."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}")
        return value

    return parse


def positive(text: str) -> float:
    """An argparse type: a positive number of seconds."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


# -- bounds ------------------------------------------------------------------------------------


class CaseTimeout(Exception):
    """A case ran over its time limit."""


def deadline_iter(next_item: Callable[[float], T], timeout: float) -> Iterator[T]:
    """Yield ``next_item(seconds left)`` until StopIteration, all within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise CaseTimeout(f"results did not arrive within {timeout:g} s")
        try:
            yield next_item(left)
        except StopIteration:
            return


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# -- statistics, tables, targets ---------------------------------------------------------------


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank ``q``-th percentile (0-100) of ascending samples."""
    rank = max(1, math.ceil(len(ordered) * q / 100))
    return float(ordered[min(rank, len(ordered)) - 1])


def summary(samples: Sequence[float], unit: float = 1.0) -> dict[str, float]:
    """Median, p99 (nearest rank), mean, min and max of ``samples``, each divided by ``unit``."""
    ordered = sorted(samples)
    return {
        "median": statistics.median(ordered) / unit,
        "p99": percentile(ordered, 99) / unit,
        "mean": statistics.fmean(ordered) / unit,
        "min": ordered[0] / unit,
        "max": ordered[-1] / unit,
    }


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str] | None],
    indent: str = "  ",
    left: int = 2,
) -> str:
    """Columns padded to width, the first ``left`` left-aligned and the rest (numbers)
    right-aligned; a None row is a blank line between groups."""
    real = [headers, *(r for r in rows if r is not None)]
    widths = [max(len(r[i]) for r in real) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return indent + "  ".join(padded).rstrip()

    rule = indent + "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *("" if r is None else line(r) for r in rows)])


def ratio(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}x"


@dataclass
class TargetCheck:
    """A design target, the ratios or rates measured against it, and whether it holds."""

    target: str
    met: bool | None  # None: it could not be checked (the peer to compare with failed, say)
    detail: str
    required: float | None = None  # the ratio or rate the target asks for
    measured: dict[str, float | None] = field(default_factory=dict)  # where -> value
    excluded: dict[str, str] = field(default_factory=dict)  # where -> why it does not count

    def line(self) -> str:
        verdict = {True: "MET", False: "MISSED", None: "NOT CHECKED"}[self.met]
        return f"target: {self.target}: {verdict} ({self.detail})"


def print_targets(checks: Sequence[TargetCheck], notes: Sequence[str] = ()) -> None:
    print("\nTargets")
    for check in checks:
        print(f"  {check.line()}")
        for where, why in check.excluded.items():
            print(f"    not counted: {where}: {why}")
    for note in notes:
        print(f"  note: {note}")


# -- the rest of the machine -------------------------------------------------------------------


def cpu_times() -> dict[str, int]:
    """Aggregate jiffies from /proc/stat."""
    try:
        with open("/proc/stat", encoding="utf-8") as fh:
            fields = fh.readline().split()[1:]
    except OSError:
        return {}
    names = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    return {name: int(v) for name, v in zip(names, fields, strict=False)}


def steal_percent(before: dict[str, int], after: dict[str, int]) -> float | None:
    """CPU steal between two :func:`cpu_times` readings, in percent of all CPU time."""
    if not before or not after:
        return None
    total = sum(after.values()) - sum(before.values())
    return 100 * (after.get("steal", 0) - before.get("steal", 0)) / total if total else None


class CpuMeter:
    """CPU time the rest of the machine used since creation, from /proc/stat and os.times().

    Busy time of all CPUs minus the CPU time of this process and of its reaped descendants
    (every pool of a case is shut down and reaped before the case ends, so their workers'
    time is included). On a small shared VM another busy process takes the CPU a worker or
    the hub would have run on, which shows in round trips at once.
    """

    def __init__(self) -> None:
        self.wall = time.monotonic()
        self.busy = self._busy()
        self.ours = self._ours()

    @staticmethod
    def _busy() -> float | None:
        times = cpu_times()
        if not times:
            return None
        busy = sum(times.get(k, 0) for k in ("user", "nice", "system", "irq", "softirq"))
        return busy / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _ours() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def others_percent(self) -> float | None:
        """Their CPU time since creation, in percent of all CPUs over the time passed."""
        busy = self._busy()
        wall = time.monotonic() - self.wall
        if busy is None or self.busy is None or wall <= 0:
            return None
        others = (busy - self.busy) - (self._ours() - self.ours)
        return max(0.0, 100 * others / (wall * (os.cpu_count() or 1)))


def wait_until_quiet(
    limit: float, threshold: float = 10.0, window: float = 0.5
) -> tuple[float | None, float]:
    """Wait up to ``limit`` seconds for a ``window`` in which other programs use less than
    ``threshold`` percent of the CPUs; (their last reading, seconds waited)."""
    started = time.monotonic()
    while True:
        meter = CpuMeter()
        time.sleep(window)
        busy = meter.others_percent()
        waited = time.monotonic() - started
        if busy is None or busy < threshold or waited >= limit:
            return busy, waited


@dataclass
class Outcome:
    """What a case records besides its figures."""

    error: str | None = None
    # CPU used by processes outside this benchmark's process tree while the case ran, in
    # percent of all CPUs: other programs competing for the machine (see CpuMeter).
    others_cpu: float | None = None
    waited_for_quiet: float = 0.0  # seconds waited before the case (--wait-quiet)


def attempt(what: str, fn: Callable[[], T], wait_quiet: float = 0.0) -> tuple[T | None, Outcome]:
    """Run one case: say so on stderr, wait up to ``wait_quiet`` s for a quiet machine,
    collect garbage, and meter the other programs meanwhile. A failure is printed with its
    traceback and recorded (the value is then None), not raised."""
    print(f"  ... {what}", file=sys.stderr, flush=True)
    outcome = Outcome()
    if wait_quiet > 0:
        _, outcome.waited_for_quiet = wait_until_quiet(wait_quiet)
    gc.collect()
    meter = CpuMeter()
    try:
        return fn(), outcome
    except Exception as exc:
        outcome.error = describe(exc)
        print(f"  !!! {what} failed:", file=sys.stderr)
        traceback.print_exc()
        return None, outcome
    finally:
        outcome.others_cpu = meter.others_percent()


# -- what a run leaves behind ------------------------------------------------------------------

# wool_local names its shared memory [sem.]wl-<uid>-<creator pid>-<random>.
_WL_SHM_NAME = re.compile(r"(?:sem\.)?wl-\d+-(\d+)-")


def shm_entries() -> set[str]:
    try:
        return set(os.listdir("/dev/shm"))
    except OSError:
        return set()


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def stop_resource_trackers() -> None:
    """Stop the resource-tracker helpers the peers may have started (they outlive pools)."""
    from multiprocessing import resource_tracker

    trackers = [resource_tracker._resource_tracker]
    if sys.modules.get("loky") is not None:  # imported by a peer
        from loky.backend import resource_tracker as loky_tracker

        trackers.append(loky_tracker._resource_tracker)
    for tracker in trackers:
        with contextlib.suppress(Exception):
            tracker._stop()  # private, but the only way short of exiting


class Run:
    """One run of a script, from the head of its report to the check for leftovers.

    Creating it prints the title and the machine line. Inside ``with run:`` a faulthandler
    backstop ends the process (printing every thread's stack) after ``budget`` seconds; on
    leaving, the resource trackers are stopped and :attr:`cleanup` lists the child processes
    still alive, the /dev/shm entries that appeared (a wool_local name counts only if one of
    :attr:`pids` made it; others' are listed apart; any other name only if it is still there a
    second later) and, with ``fds``, the descriptors left open. :attr:`summary` holds the
    time, load average and CPU steal over the run.
    """

    def __init__(self, title: str, budget: float, *, fds: bool = False, **details: Any) -> None:
        self.machine = machine(**details)
        print(f"{title}\n  {machine_line(self.machine)}", flush=True)
        self.budget = budget
        self.pids: set[int] = {os.getpid()}  # creators whose /dev/shm names are ours
        self.cleanup: dict[str, Any] = {}
        self.summary: dict[str, Any] = {}
        self._shm = shm_entries()
        self._fds = open_fds() if fds else None
        self._started = time.monotonic()
        self._cpu = cpu_times()
        self._load = os.getloadavg()

    def __enter__(self) -> Run:
        faulthandler.dump_traceback_later(self.budget, exit=True)
        return self

    def __exit__(self, *exc: object) -> None:
        faulthandler.cancel_dump_traceback_later()
        self.cleanup = self._leftovers()
        self.summary = {
            "seconds": time.monotonic() - self._started,
            "loadavg_before": self._load,
            "loadavg_after": os.getloadavg(),
            "cpu_steal_percent": steal_percent(self._cpu, cpu_times()),
        }

    def _leftovers(self) -> dict[str, Any]:
        stop_resource_trackers()
        me = psutil.Process()
        deadline = time.monotonic() + 5
        children = me.children(recursive=True)
        while children and time.monotonic() < deadline:
            time.sleep(0.1)
            children = me.children(recursive=True)
        left = []
        for child in children:
            with contextlib.suppress(psutil.Error):
                left.append(f"{child.pid} {child.status()} {' '.join(child.cmdline())[:80]}")
        ours, others, unknown = [], [], []
        for name in sorted(shm_entries() - self._shm):
            match = _WL_SHM_NAME.match(name)
            if match is None:
                unknown.append(name)
            else:
                (ours if int(match.group(1)) in self.pids else others).append(name)
        if unknown:
            time.sleep(1.0)
            unknown = sorted(set(unknown) & shm_entries())
        report: dict[str, Any] = {
            "children_left": left,
            "shm_new": ours + unknown,
            "shm_new_of_other_programs": others,
        }
        if self._fds is not None:
            gc.collect()  # a descriptor only a dead object holds does not count
            report["leaked_fds"] = sorted(open_fds() - self._fds)
        return report

    @property
    def clean(self) -> bool:
        return not any(self.cleanup.get(k) for k in ("children_left", "shm_new", "leaked_fds"))

    def report(self, waited: float | None = None) -> None:
        """Print the run's time, load and steal, and what it left behind."""
        s = self.summary
        steal = s["cpu_steal_percent"]
        print(
            f"\nRun took {s['seconds']:.0f} s"
            + (f" ({waited:.0f} s of it waiting for a quiet machine)" if waited is not None else "")
            + f"; load average {s['loadavg_before'][0]:.2f} -> {s['loadavg_after'][0]:.2f}"
            + (f"; CPU steal {steal:.1f}% of CPU time over the run" if steal is not None else "")
        )
        what = "child process or /dev/shm entry" + (" or descriptor" if self._fds else "")
        print("Cleanup: " + (f"no {what} left" if self.clean else "LEFT BEHIND"))
        for line in self.cleanup.get("children_left", []):
            print(f"  child still there: {line}")
        for name in self.cleanup.get("shm_new", []):
            print(f"  new /dev/shm entry: {name}")
        if self.cleanup.get("leaked_fds"):
            print(f"  descriptors left open: {self.cleanup['leaked_fds']}")

    def write_json(self, path: str | None, **sections: Any) -> None:
        """Write the machine details, ``sections``, the run's summary and its cleanup check to
        ``path`` as JSON (nothing if it is None)."""
        if path:
            document = {"machine": self.machine, **sections}
            document |= {"run": self.summary, "cleanup": self.cleanup}
            Path(path).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
            print(f"Results written to {path}")
