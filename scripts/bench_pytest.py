#!/usr/bin/env python3
"""Real test suites: ``pytest --wool 2`` against a serial run and ``pytest -n 2`` (xdist).

What is measured
    The test suites that public projects ship in their sdists (parso, Jinja2 and Pygments),
    each unpacked into a throwaway directory and run in a throwaway venv (``python -m venv``)
    that has the project installed from its sdist, pytest, pytest-xdist and wool_local (built
    from the commit at HEAD of this checkout, or its working tree with ``--tree``). Each suite
    runs whole, four ways: ``pytest --collect-only``, serially, ``pytest -n 2`` and ``pytest
    --wool 2``, all with ``-q -p no:cacheprovider`` (so durations one run caches do not help
    another) after an untimed collection that compiles the bytecode. Figures are wall times
    of the pytest process, from its start to its exit, median of ``--rounds``. The ideal is
    one collection plus the rest of the serial run split across the 2 workers: ``collect +
    (serial - collect) / 2``. The pass/fail/skip/xfail/xpass/error counts of the three runs
    must be identical (warnings are not compared: xdist repeats some); a MISMATCH line says
    otherwise, and the three runs are repeated untimed with ``--junitxml`` to list the tests
    whose outcomes differ.

Why
    Running real-world suites in parallel, faster than pytest-xdist and with the outcomes of
    a serial run, is one of the uses this project exists for (issue 13).

Targets (2 workers)
    Faster than xdist on every suite; within 15% of the ideal on every suite.

Usage
    python scripts/bench_pytest.py [--quick] [--keep DIR] [--rounds R] [--json PATH]
        [--suites NAMES] [--tree] [--timeout S] [--wait-quiet S]

    Needs PyPI (the sdists, pytest, pytest-xdist and the suites' own test dependencies).
    ``--keep DIR`` keeps the venv and the downloaded sdists in DIR and reuses them in later
    runs; wool_local is reinstalled into it every run.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchlib import (
    ROOT,
    CpuMeter,
    Run,
    TargetCheck,
    arguments,
    at_least,
    git,
    positive,
    print_targets,
    ratio,
    table,
    wait_until_quiet,
)

WORKERS = 2
IDEAL_SLACK = 1.15  # wool within 15% of the ideal
MODES = ("serial", "xdist", "wool")
OUTCOMES = ("passed", "failed", "skipped", "xfailed", "xpassed", "error")
COMMON = ("-q", "-p", "no:cacheprovider", "-rfEX")
MODE_ARGS: dict[str, tuple[str, ...]] = {
    "collect": ("--collect-only",),
    "serial": (),
    "xdist": ("-n", str(WORKERS)),
    "wool": ("--wool", str(WORKERS)),
}


@dataclass(frozen=True)
class Suite:
    name: str  # the distribution's name on PyPI
    version: str
    deps: tuple[str, ...] = ()  # what its tests import besides pytest
    args: tuple[str, ...] = ()  # pytest arguments besides the run's own


# Versions whose suites pass on Python 3.11 with pytest 8-9 (checked for this script).
SUITES = (
    Suite("parso", "0.8.4"),
    Suite("Jinja2", "3.1.4"),
    Suite("Pygments", "2.19.1", deps=("wcag-contrast-ratio",)),
)
QUICK = ("Jinja2",)


# -- subprocesses --------------------------------------------------------------------------


class Failed(Exception):
    """A step of the set-up failed (its output is in the message)."""


@dataclass
class Done:
    returncode: int
    output: str
    seconds: float
    timed_out: bool = False


def bounded(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> Done:
    """Run ``cmd`` in its own session, stdout and stderr together; after ``timeout`` s the
    whole process group is killed (pytest's workers too) and ``timed_out`` is set."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, _ = proc.communicate()
        timed_out = True
    seconds = time.perf_counter() - t0
    # Whatever the run left in its process group (a worker that outlived its controller).
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return Done(proc.returncode, out, seconds, timed_out)


def checked(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float, what: str) -> str:
    done = bounded(cmd, cwd, env, timeout)
    if done.timed_out or done.returncode != 0:
        why = f"timed out after {timeout:g} s" if done.timed_out else f"exit {done.returncode}"
        tail = "\n".join(done.output.splitlines()[-30:])
        raise Failed(f"{what}: {why}\n{tail}")
    return done.output


def clean_env(venv: Path) -> dict[str, str]:
    """The environment of every command: the venv first on PATH, nothing that would change
    what pytest does or which wool_local imports."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTEST_", "PYTHON", "WOOL_LOCAL", "VIRTUAL_ENV", "COV_"))
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    env["PY_COLORS"] = "0"
    env["COLUMNS"] = "120"
    return env


# -- the venv ------------------------------------------------------------------------------


def sdist(suite: Suite, where: Path, env: dict[str, str], pip: list[str], timeout: float) -> Path:
    """The sdist of ``suite`` in ``where``, downloaded from PyPI unless already there."""
    stem = f"{suite.name.lower()}-{suite.version}"
    found = [p for p in where.glob("*.tar.gz") if p.name.lower().startswith(stem + ".tar")]
    if not found:
        spec = f"{suite.name}=={suite.version}"
        cmd = [*pip, "download", "--no-binary", ":all:", "--no-deps", "-d", str(where), spec]
        checked(cmd, where, env, timeout, f"pip download {spec}")
        found = [p for p in where.glob("*.tar.gz") if p.name.lower().startswith(stem + ".tar")]
    if not found:
        raise Failed(f"pip download {suite.name}=={suite.version} left no sdist in {where}")
    return found[0]


def unpack(archive: Path, into: Path) -> Path:
    """Unpack an sdist into ``into`` and return its top directory (which holds the tests)."""
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
        top = {Path(m.name).parts[0] for m in tar.getmembers() if m.name not in ("", ".")}
    if len(top) != 1:
        raise Failed(f"{archive.name}: expected one top directory, found {sorted(top)}")
    return into / top.pop()


def wool_local_source(tree: bool, into: Path) -> tuple[Path, str]:
    """The wool_local source to install and what it is: this checkout's HEAD exported with
    ``git archive`` (so the figures are those of a commit), or the working tree."""
    head = git("rev-parse", "--short", "HEAD") or "unknown"
    if tree:
        dirty = git("status", "--porcelain", "--", "wool_local", "setup.cfg", "pyproject.toml")
        return ROOT, f"working tree at {head}" + (" (modified)" if dirty else "")
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", "HEAD"],
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout
    tar = subprocess.run(
        ["tar", "-x", "-C", str(into)], input=archive, capture_output=True, timeout=60
    )
    if tar.returncode != 0:
        raise Failed(f"unpacking git archive HEAD: {tar.stderr.decode(errors='replace')}")
    return into, f"commit {head}"


def prepare_venv(
    venv: Path, sdists: list[Path], suites: list[Suite], wool: Path, timeout: float
) -> dict[str, str | None]:
    """Create ``venv`` unless it exists, install what the suites need (once: a marker file
    records it), then (re)install wool_local from ``wool``; the versions installed."""
    env = clean_env(venv)
    python = str(venv / "bin" / "python")
    if not (venv / "bin" / "python").exists():
        checked([sys.executable, "-m", "venv", str(venv)], venv.parent, env, timeout, "venv")
    pip = [python, "-m", "pip", "--disable-pip-version-check", "-q"]
    wants = sorted(
        [str(p) for p in sdists] + ["pytest", "pytest-xdist"] + [d for s in suites for d in s.deps]
    )
    marker = venv / "bench_pytest-installed.txt"
    have = marker.read_text().splitlines() if marker.exists() else []
    if not set(wants) <= set(have):
        checked([*pip, "install", *wants], venv.parent, env, timeout, "pip install")
        marker.write_text("\n".join(sorted(set(wants) | set(have))) + "\n")
    if "wool_local's dependencies" not in have:  # the first time only
        checked([*pip, "install", str(wool)], venv.parent, env, timeout, "pip install wool_local")
        with marker.open("a") as fh:
            fh.write("wool_local's dependencies\n")
    # wool_local itself, fresh every run.
    checked(
        [*pip, "install", "--no-deps", "--force-reinstall", "--no-cache-dir", str(wool)],
        venv.parent,
        env,
        timeout,
        "pip install wool_local",
    )
    probe = (
        "import importlib.metadata as m, sys\n"
        "for d in sys.argv[1:]:\n"
        "    try: print(d, m.version(d))\n"
        "    except m.PackageNotFoundError: print(d, '-')\n"
    )
    dists = ["pytest", "pytest-xdist", "wool_local", *(s.name for s in suites)]
    out = checked([python, "-c", probe, *dists], venv.parent, env, 60, "versions")
    versions: dict[str, str | None] = {}
    for line in out.splitlines():
        name, _, ver = line.partition(" ")
        versions[name] = None if ver == "-" else ver
    return versions


# -- one pytest run ------------------------------------------------------------------------

_COUNT = re.compile(r"(\d+) (passed|failed|skipped|xfailed|xpassed|errors?|deselected)\b")
_COLLECTED = re.compile(r"(\d+)(?: tests?)? collected")
_SUMMARY = re.compile(r"\bin \d+(?:\.\d+)?s\b")


@dataclass
class Result:
    seconds: float  # wall time of the pytest process
    counts: dict[str, int]
    returncode: int
    others_cpu: float | None  # other programs' CPU meanwhile, % of all CPUs
    failing: list[str] = field(default_factory=list)  # FAILED/ERROR/XPASS lines, -rfEX
    tail: str = ""
    problem: str | None = None  # timed out, crashed, summary not found


def parse(output: str, collect: bool) -> dict[str, int] | None:
    """Outcome counts from pytest's last summary line (``5175 passed, 16 skipped, 3 warnings
    in 22.61s``; with --collect-only ``1351 tests collected in 0.63s``), or None."""
    lines = [ln.strip("= ") for ln in output.splitlines() if _SUMMARY.search(ln)]
    if not lines:
        return None
    last = lines[-1]
    counts = dict.fromkeys(("collected",) if collect else OUTCOMES, 0)
    for n, what in _COUNT.findall(last):
        counts["error" if what.startswith("error") else what] = int(n)
    if collect:
        found = _COLLECTED.search(last)
        if found:
            counts["collected"] = int(found.group(1))
        elif "no tests collected" not in last and "no tests ran" not in last:
            return None
    return counts


def pytest_run(
    suite: Suite, mode: str, src: Path, venv: Path, timeout: float, extra: tuple[str, ...] = ()
) -> Result:
    cmd = [str(venv / "bin" / "python"), "-m", "pytest", *COMMON, *MODE_ARGS[mode]]
    cmd += [*suite.args, *extra]
    meter = CpuMeter()
    done = bounded(cmd, src, clean_env(venv), timeout)
    others = meter.others_percent()
    counts = parse(done.output, mode == "collect")
    lines = done.output.splitlines()
    failing = [ln for ln in lines if ln.startswith(("FAILED ", "ERROR ", "XPASS "))]
    problem = None
    if done.timed_out:
        problem = f"timed out after {timeout:g} s"
    elif counts is None:
        problem = f"no summary line (exit {done.returncode})"
    elif done.returncode not in (0, 1):  # 1: some tests failed, which the counts show
        problem = f"exit {done.returncode}"
    return Result(
        seconds=done.seconds,
        counts=counts or {},
        returncode=done.returncode,
        others_cpu=others,
        failing=failing,
        tail="\n".join(lines[-40:]),
        problem=problem,
    )


def outcomes_by_test(
    suite: Suite, mode: str, src: Path, venv: Path, timeout: float, xml: Path
) -> dict[str, str]:
    """nodeid-ish key -> outcome, from an untimed run of ``mode`` with --junitxml."""
    pytest_run(suite, mode, src, venv, timeout, ("--junitxml", str(xml)))
    got: dict[str, str] = {}
    if not xml.exists():
        return got
    for case in ET.parse(xml).getroot().iter("testcase"):
        key = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = child.tag
            elif child.tag == "skipped":
                outcome = "xfailed" if child.get("type") == "pytest.xfail" else "skipped"
        # A test can appear twice (a failure in call and an error in teardown).
        got[key] = outcome if key not in got else f"{got[key]}+{outcome}"
    return got


# -- one suite -----------------------------------------------------------------------------


@dataclass
class SuiteResult:
    suite: Suite
    rounds: dict[str, list[Result]] = field(default_factory=dict)
    mismatches: list[str] = field(default_factory=list)
    differing_tests: dict[str, list[str]] = field(default_factory=dict)

    def median(self, mode: str) -> float | None:
        runs = [r for r in self.rounds.get(mode, []) if r.problem is None]
        if not runs or len(runs) != len(self.rounds[mode]):
            return None
        return statistics.median(r.seconds for r in runs)

    def ideal(self) -> float | None:
        collect, serial = self.median("collect"), self.median("serial")
        if collect is None or serial is None:
            return None
        return collect + (serial - collect) / WORKERS


def run_suite(suite: Suite, archive: Path, work: Path, venv: Path, args: Any) -> SuiteResult:
    src = unpack(archive, work / "src" / f"{suite.name}-{suite.version}")
    result = SuiteResult(suite)
    print(f"  ... {suite.name} {suite.version}: warming up (collection)", file=sys.stderr)
    pytest_run(suite, "collect", src, venv, args.timeout)  # compiles the bytecode
    for r in range(args.rounds):
        for mode in ("collect", *MODES):
            if args.wait_quiet:
                wait_until_quiet(args.wait_quiet)
            print(f"  ... {suite.name}: {mode}, round {r + 1}", file=sys.stderr, flush=True)
            got = pytest_run(suite, mode, src, venv, args.timeout)
            result.rounds.setdefault(mode, []).append(got)
            if got.problem:
                print(f"  !!! {suite.name} {mode}: {got.problem}\n{got.tail}", file=sys.stderr)
        base = result.rounds["serial"][-1]
        for mode in ("xdist", "wool"):
            other = result.rounds[mode][-1]
            if other.counts != base.counts or other.problem or base.problem:
                line = (
                    f"MISMATCH {suite.name} round {r + 1}: serial {fmt_counts(base)} "
                    f"vs {mode} {fmt_counts(other)}"
                )
                result.mismatches.append(line)
                print(line, flush=True)
    collected = result.rounds["collect"][-1].counts.get("collected")
    ran = sum(result.rounds["serial"][-1].counts.get(k, 0) for k in OUTCOMES if k != "error")
    if collected is not None and collected != ran:
        note = f"note {suite.name}: {collected} collected, {ran} ran serially"
        print(note)
    if result.mismatches:
        diagnose(result, src, work, venv, args.timeout)
    return result


def diagnose(result: SuiteResult, src: Path, work: Path, venv: Path, timeout: float) -> None:
    """Repeat the runs untimed with --junitxml and print the tests whose outcomes differ."""
    suite = result.suite
    print(f"  ... {suite.name}: repeating the runs with --junitxml", file=sys.stderr)
    by_mode = {
        mode: outcomes_by_test(suite, mode, src, venv, timeout, work / f"{suite.name}-{mode}.xml")
        for mode in MODES
    }
    base = by_mode["serial"]
    for mode in ("xdist", "wool"):
        other = by_mode[mode]
        lines = []
        for key in sorted(set(base) | set(other)):
            a, b = base.get(key, "absent"), other.get(key, "absent")
            if a != b:
                lines.append(f"{key}: serial {a}, {mode} {b}")
        result.differing_tests[mode] = lines
        if lines:
            print(f"  {suite.name}: {len(lines)} tests whose outcome differs, serial vs {mode}:")
            for line in lines[:40]:
                print(f"    {line}")
            if len(lines) > 40:
                print(f"    ... and {len(lines) - 40} more (all in --json)")
        for failing in result.rounds[mode][-1].failing[:20]:
            print(f"    {mode}: {failing}")


def fmt_counts(r: Result) -> str:
    if r.problem and not r.counts:
        return f"[{r.problem}]"
    shown = ", ".join(f"{n} {k}" for k, n in r.counts.items() if n) or "nothing"
    return shown + (f" [{r.problem}]" if r.problem else "")


# -- report --------------------------------------------------------------------------------


def report(results: list[SuiteResult], rounds: int) -> list[TargetCheck]:
    rows: list[list[str] | None] = []
    for res in results:
        serial = res.rounds["serial"][-1]
        c = serial.counts
        tests = c.get("passed", 0) + c.get("failed", 0) + c.get("xfailed", 0)
        tests += c.get("xpassed", 0) + c.get("skipped", 0)
        cells = [res.suite.name, res.suite.version, f"{tests:,}"]
        for mode in ("collect", *MODES):
            m = res.median(mode)
            cells.append("failed" if m is None else f"{m:.2f}")
        ideal, wool = res.ideal(), res.median("wool")
        cells.append("-" if ideal is None else f"{ideal:.2f}")
        xdist, ser = res.median("xdist"), res.median("serial")
        cells.append(ratio(wool / xdist if wool and xdist else None))
        cells.append(ratio(wool / ser if wool and ser else None))
        cells.append(ratio(wool / ideal if wool and ideal else None))
        cells.append("same" if not res.mismatches else "MISMATCH")
        busy = [r.others_cpu for rs in res.rounds.values() for r in rs if r.others_cpu is not None]
        cells.append(f"{max(busy):.0f}%" if busy else "-")
        rows.append(cells)
    print(f"\nWall seconds per run, median of {rounds}; {WORKERS} workers")
    headers = ["suite", "version", "tests", "collect", "serial", "xdist", "wool", "ideal"]
    headers += ["wool/xdist", "wool/serial", "wool/ideal", "counts", "others"]
    print(table(headers, rows))
    print(
        "\n  ideal: collect + (serial - collect) / 2; ratios < 1: wool took less time.\n"
        "  counts: passed/failed/skipped/xfailed/xpassed/error of serial, xdist and wool\n"
        "  others: the most CPU other programs used during one of the suite's timed runs,\n"
        "  in % of all CPUs (above ~10% the figures are disturbed; see --wait-quiet)"
    )
    print("\nOutcome counts (last round)")
    count_rows = []
    for res in results:
        for mode in MODES:
            count_rows.append([res.suite.name, mode, fmt_counts(res.rounds[mode][-1])])
    print(table(["suite", "run", "counts"], count_rows, left=3))
    busy = [
        r.others_cpu for res in results for rs in res.rounds.values() for r in rs if r.others_cpu
    ]
    if busy:
        print(
            f"\n  other programs' CPU during the timed runs: median {statistics.median(busy):.0f}%,"
            f" max {max(busy):.0f}% of all CPUs"
        )

    faster = {
        res.suite.name: (
            res.median("xdist") / res.median("wool")
            if res.median("xdist") and res.median("wool")
            else None
        )
        for res in results
    }
    near = {
        res.suite.name: (
            res.median("wool") / res.ideal() if res.median("wool") and res.ideal() else None
        )
        for res in results
    }
    same = {res.suite.name: float(not res.mismatches) for res in results}

    def verdict(values: dict[str, float | None], ok: Any) -> bool | None:
        if any(v is None for v in values.values()):
            return None
        return all(ok(v) for v in values.values())

    checks = [
        TargetCheck(
            "identical outcome counts, serial, xdist and wool",
            all(same.values()),
            ", ".join(f"{k}: {'same' if v else 'MISMATCH'}" for k, v in same.items()),
            measured=dict(same),
        ),
        TargetCheck(
            "faster than xdist on every suite",
            verdict(faster, lambda v: v > 1.0),
            ", ".join(f"{k}: xdist/wool {ratio(v)}" for k, v in faster.items()),
            required=1.0,
            measured=faster,
        ),
        TargetCheck(
            f"within {IDEAL_SLACK - 1:.0%} of the ideal on every suite",
            verdict(near, lambda v: v <= IDEAL_SLACK),
            ", ".join(f"{k}: wool/ideal {ratio(v)}" for k, v in near.items()),
            required=IDEAL_SLACK,
            measured=near,
        ),
    ]
    print_targets(checks)
    return checks


def as_json(results: list[SuiteResult]) -> list[dict[str, Any]]:
    out = []
    for res in results:
        out.append({
            "suite": res.suite.name,
            "version": res.suite.version,
            "median_seconds": {m: res.median(m) for m in ("collect", *MODES)},
            "ideal_seconds": res.ideal(),
            "mismatches": res.mismatches,
            "differing_tests": res.differing_tests,
            "runs": {
                mode: [
                    {
                        "seconds": r.seconds,
                        "counts": r.counts,
                        "returncode": r.returncode,
                        "others_cpu": r.others_cpu,
                        "problem": r.problem,
                        "failing": r.failing,
                        "tail": r.tail if r.problem or r.failing else None,
                    }
                    for r in rs
                ]
                for mode, rs in res.rounds.items()
            },
        })  # fmt: skip
    return out


def main() -> int:
    parser = arguments(__doc__, "Jinja2 only (~30 s with a --keep venv)")
    parser.add_argument("--rounds", type=at_least(1), default=1, help="rounds, median (1)")
    parser.add_argument(
        "--keep", metavar="DIR", help="keep the venv and sdists in DIR, reuse them next time"
    )
    parser.add_argument(
        "--tree", action="store_true", help="install wool_local's working tree, not HEAD"
    )
    parser.add_argument("--timeout", type=positive, default=600.0, help="seconds per command (600)")
    parser.add_argument(
        "--wait-quiet",
        type=positive,
        metavar="S",
        default=None,
        help="before each timed run, wait up to S s for other programs to go quiet",
    )
    parser.add_argument(
        "--suites",
        metavar="NAMES",
        help="only these suites, by name, separated by commas ("
        + ",".join(s.name for s in SUITES)
        + ")",
    )
    args = parser.parse_args()
    suites = [s for s in SUITES if not args.quick or s.name in QUICK]
    if args.suites:
        chosen = {n.strip().lower() for n in args.suites.split(",") if n.strip()}
        unknown = chosen - {s.name.lower() for s in SUITES}
        if unknown:
            parser.error(f"--suites: unknown {', '.join(sorted(unknown))}")
        suites = [s for s in suites if s.name.lower() in chosen]
    work = Path(tempfile.mkdtemp(prefix="bench_pytest-"))
    keep = Path(args.keep).resolve() if args.keep else None
    results: list[SuiteResult] = []
    checks: list[TargetCheck] = []
    status = 0
    budget = 900.0 + args.timeout * (2 + 5 * args.rounds) * len(suites)
    run = Run(f"Real test suites through pytest, {WORKERS} workers", budget=budget)
    try:
        with run:
            home = keep or work
            (home / "sdists").mkdir(parents=True, exist_ok=True)
            venv = home / "venv"
            boot = clean_env(Path(sys.prefix))
            pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
            print("  ... downloading sdists, preparing the venv", file=sys.stderr, flush=True)
            archives = {s.name: sdist(s, home / "sdists", boot, pip, args.timeout) for s in suites}
            wool, installed = wool_local_source(args.tree, work / "wool_local-src")
            versions = prepare_venv(venv, list(archives.values()), suites, wool, args.timeout)
            run.machine["bench_pytest"] = {"wool_local_installed": installed, **versions}
            print(
                f"  venv: wool_local {installed}, pytest {versions.get('pytest')}, "
                f"pytest-xdist {versions.get('pytest-xdist')}"
                + (f", kept in {venv}" if keep else ""),
                flush=True,
            )
            for suite in suites:
                results.append(run_suite(suite, archives[suite.name], work, venv, args))
            checks = report(results, args.rounds)
    except Failed as exc:
        print(f"\nset-up failed: {exc}")
        status = 2
    finally:
        shutil.rmtree(work, ignore_errors=True)
    run.report()
    run.write_json(
        args.json,
        suites=as_json(results),
        targets=[
            {"target": c.target, "met": c.met, "detail": c.detail, "measured": c.measured}
            for c in checks
        ],
    )
    if status:
        return status
    if any(res.mismatches for res in results):
        return 1
    return 0 if run.clean else 1


if __name__ == "__main__":
    sys.exit(main())
