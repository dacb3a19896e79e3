"""The pytest plugin (``pytest --wool N``) through real pytest runs in subprocesses."""

from __future__ import annotations

import collections
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest

pytest_plugins = ["pytester"]

TIMEOUT = 60  # each run takes about a second

OUTCOMES = """
import pytest

@pytest.fixture
def broken():
    raise RuntimeError("fixture broke")

def test_pass():
    print("said on stdout")

def test_fail():
    assert 1 == 2

@pytest.mark.skip(reason="not today")
def test_skip():
    pass

@pytest.mark.xfail
def test_xfail():
    assert 0

@pytest.mark.xfail
def test_xpass():
    pass

def test_error(broken):
    pass

@pytest.mark.parametrize("n", range(4))
def test_param(n):
    assert n != 3
"""

# Each fixture appends "<pid> <event> <name>" to events.txt.
FIXTURES = """
import os
import pytest

def log(event, name):
    with open({path!r}, "a") as f:
        f.write(f"{{os.getpid()}} {{event}} {{name}}\\n")

@pytest.fixture(scope="module", autouse=True)
def per_module(request):
    log("setup", request.module.__name__)
    yield
    log("teardown", request.module.__name__)

@pytest.fixture(scope="class")
def per_class(request):
    log("setup", request.cls.__name__)
    yield
    log("teardown", request.cls.__name__)
"""

MODULE = """
import pytest

class TestOne:
    def test_a(self, per_class): pass
    def test_b(self, per_class): pass

class TestTwo:
    def test_c(self, per_class): pass

def test_d(): pass
"""


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=TIMEOUT)


def test_outcomes_match_a_serial_run(pytester: pytest.Pytester) -> None:
    """Given a module with every kind of outcome and a second module
    When it runs serially and with --wool 2
    Then the counts, the exit status and the -rA summary lines are the same."""
    pytester.makepyfile(test_kinds=OUTCOMES, test_other="def test_x(): pass\n")
    serial = run(pytester, "-rA")
    wool = run(pytester, "-rA", "--wool", "2")
    assert wool.parseoutcomes() == serial.parseoutcomes()
    assert serial.parseoutcomes() == {
        "passed": 5,
        "failed": 2,
        "skipped": 1,
        "xfailed": 1,
        "xpassed": 1,
        "errors": 1,
    }
    assert wool.ret == serial.ret == pytest.ExitCode.TESTS_FAILED
    wool.stdout.fnmatch_lines(["wool_local: 2 workers, 2 units (loadscope), 11 items"])

    def summary(result: pytest.RunResult) -> list[str]:
        lines = result.stdout.lines
        start = next(i for i, line in enumerate(lines) if "short test summary" in line)
        return sorted(line for line in lines[start + 1 : -1])

    assert summary(wool) == summary(serial)
    # Captured output and the failure's explanation come through as well.
    wool.stdout.fnmatch_lines(["*Captured stdout call*", "said on stdout", "*assert 1 == 2*"])


def fixture_events(path: pathlib.Path) -> list[tuple[str, str, str]]:
    """The (pid, event, name) lines FIXTURES wrote, checked per worker: nothing set
    up twice while live, tear-downs in reverse order, nothing left live."""
    lines = [tuple(line.split()) for line in path.read_text().splitlines()]
    by_pid: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    for pid, event, name in lines:
        by_pid[pid].append((event, name))
    for seq in by_pid.values():
        live: list[str] = []
        for event, name in seq:
            if event == "setup":
                assert name not in live
                live.append(name)
            else:
                assert live.pop() == name
        assert live == []
    return lines  # type: ignore[return-value]


def test_module_and_class_fixtures_per_unit(pytester: pytest.Pytester) -> None:
    """Given three modules with a module-scoped and a class-scoped fixture, two
    classes and a function each
    When they run with --wool 2 (loadscope: units of a class, or of a module's
    functions) and with --wool-dist loadfile (units of a module)
    Then every class runs on one worker and its fixture is set up once (a unit of
    two is never split); each worker tears down what it set up, in order (a
    module's fixture once per unit of it that the worker ran); with loadfile each
    module's fixture is set up once, or twice when the end of the run split it
    between the two workers (its last test only: the classes stay whole)."""
    events = pytester.path / "events.txt"
    pytester.makeconftest(FIXTURES.format(path=str(events)))
    pytester.makepyfile(test_m1=MODULE, test_m2=MODULE, test_m3=MODULE)
    result = run(pytester, "--wool", "2")
    result.assert_outcomes(passed=12)
    result.stdout.fnmatch_lines(["wool_local: 2 workers, 9 units (loadscope), 12 items"])
    lines = fixture_events(events)
    counts = collections.Counter((event, name) for _, event, name in lines)
    assert len({pid for pid, _, _ in lines}) == 2
    assert counts["setup", "TestOne"] == counts["teardown", "TestOne"] == 3
    assert counts["setup", "TestTwo"] == counts["teardown", "TestTwo"] == 3
    for module in ("test_m1", "test_m2", "test_m3"):
        assert 1 <= counts["setup", module] == counts["teardown", module] <= 3

    events.unlink()
    result = run(pytester, "--wool", "2", "--wool-dist", "loadfile")
    result.assert_outcomes(passed=12)
    lines = fixture_events(events)
    counts = collections.Counter((event, name) for _, event, name in lines)
    for module in ("test_m1", "test_m2", "test_m3"):
        assert counts["setup", module] == counts["teardown", module]
        workers = {pid for pid, _, name in lines if name == module}
        assert counts["setup", module] == len(workers) in (1, 2)
    assert counts["setup", "TestOne"] == counts["teardown", "TestOne"] == 3


# Each test appends "<worker_id> <nodeid>" to where.txt.
WHERE = """
import os
import pytest

@pytest.fixture(autouse=True)
def where(request, worker_id):
    with open({path!r}, "a") as f:
        f.write(f"{{worker_id}} {{request.node.nodeid}}\\n")
"""

GROUPED = """
import time
import pytest

@pytest.mark.xdist_group("db")
def test_db{n}(): time.sleep(0.05)

@pytest.mark.xdist_group(name="net")
class TestNet{n}:
    def test_a(self): time.sleep(0.05)
    def test_b(self): time.sleep(0.05)

@pytest.mark.parametrize("k", range(6))
def test_free(k): time.sleep(0.05)
"""


def test_dist_loadgroup_and_load(pytester: pytest.Pytester) -> None:
    """Given two modules with tests marked xdist_group("db") and a class marked
    xdist_group(name="net") in each, and unmarked parametrized tests
    When run with --wool 2 --wool-dist loadgroup, then with --wool-dist load
    Then with loadgroup every "db" test runs on one worker and every "net" test on
    one worker, and the unmarked ones on both; with load everything passes too."""
    where = pytester.path / "where.txt"
    pytester.makeconftest(WHERE.format(path=str(where)))
    pytester.makepyfile(test_g1=GROUPED.format(n=1), test_g2=GROUPED.format(n=2))
    result = run(pytester, "--wool", "2", "--wool-dist", "loadgroup")
    result.assert_outcomes(passed=18)
    rows = [line.split() for line in where.read_text().splitlines()]
    assert len({w for w, nodeid in rows if "test_db" in nodeid}) == 1
    assert len({w for w, nodeid in rows if "TestNet" in nodeid}) == 1
    assert len({w for w, nodeid in rows if "test_free" in nodeid}) == 2
    where.unlink()
    result = run(pytester, "--wool", "2", "--wool-dist", "load")
    result.assert_outcomes(passed=18)
    assert len({line.split()[0] for line in where.read_text().splitlines()}) == 2
    result = run(pytester, "--wool", "2", "--wool-dist", "nonesuch")
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_exitfirst_stops_the_run(pytester: pytest.Pytester) -> None:
    """Given a module whose first test fails (the largest module, so it runs first)
    and eight modules of slow tests
    When run with --wool 2 -x
    Then the run stops after the failure: status 1, the stop is reported, and most
    of the slow tests never run."""
    failing = "def test_fail():\n    assert False\n"
    failing += "".join(f"def test_ok{i}():\n    pass\n" for i in range(4))
    pytester.makepyfile(test_0fail=failing)
    slow = "import time\n" + "".join(f"def test_{i}():\n    time.sleep(0.1)\n" for i in range(3))
    pytester.makepyfile(**{f"test_slow{i}": slow for i in range(8)})
    result = run(pytester, "--wool", "2", "-x")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*stopping after 1 failures*"])
    outcomes = result.parseoutcomes()
    assert outcomes["failed"] == 1
    assert outcomes.get("passed", 0) < 12


CRASHES = """
import os
import signal
import sys

def test_before(): pass
def test_exit():
    print("last words before exiting", file=sys.stderr)
    os._exit(3)
def test_between(): pass
def test_kill(): os.kill(os.getpid(), signal.SIGKILL)
def test_after(): pass
"""


def test_crashing_tests_fail_and_the_rest_of_their_module_runs(pytester: pytest.Pytester) -> None:
    """Given a module with one test that calls os._exit and one that SIGKILLs itself
    When it runs with --wool 2 next to another module
    Then each crashing test fails once, naming itself and how the worker ended, with
    the stderr it left, and every other test passes (the rest of the module ran on a
    replacement worker)."""
    pytester.makepyfile(test_crash=CRASHES, test_other="def test_x(): pass\n")
    result = run(pytester, "--wool", "2", "-rA")
    result.assert_outcomes(passed=4, failed=2)
    result.stdout.fnmatch_lines_random(
        [
            "*worker crashed while running test_crash.py::test_exit*exited with code 3*",
            "*worker crashed while running test_crash.py::test_kill*SIGKILL*",
            "PASSED test_crash.py::test_between",
            "PASSED test_crash.py::test_after",
        ]
    )
    result.stdout.fnmatch_lines(
        ["*exited with code 3*", "*Captured stderr call*", "last words before exiting"]
    )


def test_collection_errors_stop_the_run_before_any_worker(pytester: pytest.Pytester) -> None:
    """Given a module that fails to import and one that imports
    When run with --wool 2
    Then the collection error is reported and the run is interrupted (status 2),
    as in a serial run; with --continue-on-collection-errors the good one runs."""
    pytester.makepyfile(test_bad="import no_such_module_here\n", test_good="def test_ok(): pass\n")
    result = run(pytester, "--wool", "2")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*ERROR collecting test_bad.py*", "*1 error during collection*"])
    result = run(pytester, "--wool", "2", "--continue-on-collection-errors")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(passed=1, errors=1)


def test_no_tests_exit_5(pytester: pytest.Pytester) -> None:
    """Given tests that -k deselects, all of them
    When run with --wool 2
    Then no pool is started and the status is 5, as in a serial run."""
    pytester.makepyfile(test_one="def test_a(): pass\n")
    result = run(pytester, "--wool", "2", "-k", "nothing")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED
    assert "wool_local:" not in result.stdout.str()


def test_junitxml(pytester: pytest.Pytester) -> None:
    """Given the module with every kind of outcome
    When run with --wool 2 --junitxml
    Then the XML file is written with the serial run's counts."""
    pytester.makepyfile(test_kinds=OUTCOMES)
    run(pytester, "--wool", "2", "--junitxml=wool.xml")
    run(pytester, "--junitxml=serial.xml")

    def counts(name: str) -> dict[str, str]:
        suite = ET.parse(pytester.path / name).getroot().find("testsuite")
        assert suite is not None
        return {k: suite.attrib[k] for k in ("tests", "errors", "failures", "skipped")}

    assert counts("wool.xml") == counts("serial.xml")


XDIST_SURFACE = """
import os
import random

def test_surface(worker_id, testrun_uid, tmp_path, request):
    assert os.environ["PYTEST_XDIST_WORKER"] == worker_id
    assert os.environ["PYTEST_XDIST_WORKER_COUNT"] == "2"
    assert request.config.workerinput["workerid"] == worker_id
    assert tmp_path.parent.name == worker_id
    with open({path!r}, "a") as f:
        f.write(f"{{worker_id}} {{testrun_uid}} {{random.random()}}\\n")
"""


def test_xdist_compatibility_surface(pytester: pytest.Pytester) -> None:
    """Given two modules whose test reads worker_id, testrun_uid, the xdist variables
    and tmp_path
    When run with --wool 2 (pytest-xdist is installed: its fixtures answer)
    Then the workers are gw0 and gw1, share the run's uid, have a basetemp each and
    draw different random numbers."""
    out = pytester.path / "seen.txt"
    pytester.makepyfile(
        test_s1=XDIST_SURFACE.format(path=str(out)),
        test_s2=XDIST_SURFACE.format(path=str(out)),
    )
    result = run(pytester, "--wool", "2")
    result.assert_outcomes(passed=2)
    rows = [line.split() for line in out.read_text().splitlines()]
    assert sorted(r[0] for r in rows) == ["gw0", "gw1"]
    assert len({r[1] for r in rows}) == 1
    assert len({r[2] for r in rows}) == 2


def test_options(pytester: pytest.Pytester) -> None:
    """Given a trivial test
    When run with --wool 0, with -p no:wool_local --wool 2, with --wool 2 -n 2, and
    with -p no:xdist -n 2
    Then the first is a normal run, the second does not know the option, the third
    is refused (-n is xdist's), and in the fourth -n means --wool (xdist disabled)."""
    pytester.makepyfile(test_one="def test_a(): pass\n")
    result = run(pytester, "--wool", "0")
    result.assert_outcomes(passed=1)
    assert "wool_local:" not in result.stdout.str()
    result = run(pytester, "-p", "no:wool_local", "--wool", "2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*unrecognized arguments: --wool*"])
    result = run(pytester, "--wool", "2", "-n", "2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--wool and pytest-xdist's -n cannot be used together*"])
    result = run(pytester, "-p", "no:xdist", "-n", "2")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["wool_local: 1 worker, 1 units (loadscope), 1 items"])


def test_durations_from_the_cache_order_units_longest_first(pytester: pytest.Pytester) -> None:
    """Given a module of two quick tests and one of a single slower test
    When run twice with --wool 1 and pytest's cache
    Then the first run takes the larger module first (no durations known), records
    every item's duration in the cache, and the second run takes the slower one first."""
    where = pytester.path / "where.txt"
    pytester.makeconftest(WHERE.format(path=str(where)))
    pytester.makepyfile(
        test_a="def test_1(): pass\ndef test_2(): pass\n",
        test_b="import time\ndef test_slow(): time.sleep(0.2)\n",
    )
    args = ("--wool", "1")
    result = pytester.runpytest_subprocess(*args, timeout=TIMEOUT)
    result.assert_outcomes(passed=3)
    assert where.read_text().splitlines()[0].split()[1].startswith("test_a.py")
    durations = pytester.path / ".pytest_cache/v/wool_local/durations"
    recorded = json.loads(durations.read_text())
    assert set(recorded) == {"test_a.py::test_1", "test_a.py::test_2", "test_b.py::test_slow"}
    assert recorded["test_b.py::test_slow"] >= 0.2
    where.unlink()
    result = pytester.runpytest_subprocess(*args, timeout=TIMEOUT)
    result.assert_outcomes(passed=3)
    assert where.read_text().splitlines()[0].split()[1] == "test_b.py::test_slow"


def test_load_splits_a_unit_for_an_idle_worker_and_v_names_workers(
    pytester: pytest.Pytester,
) -> None:
    """Given 24 tests whose first sleeps 1 s (--wool-dist load: 8 chunks of 3 for 2
    workers) and the others are quick
    When run with --wool 2 --wool-dist load --wool-max-tests 1 -v
    Then the worker running the slow chunk gives its last item to the other, idle
    worker (the summary says one unit was split), -v shows the worker of each
    test as [gwN], and the summary counts the workers recycled after each unit."""
    where = pytester.path / "where.txt"
    pytester.makeconftest(WHERE.format(path=str(where)))
    pytester.makepyfile(
        test_steal="import time\n"
        "import pytest\n"
        "@pytest.mark.parametrize('k', range(24))\n"
        "def test_k(k):\n"
        "    time.sleep(1.0 if k == 0 else 0.01)\n"
    )
    result = run(pytester, "--wool", "2", "--wool-dist", "load", "--wool-max-tests", "1", "-v")
    result.assert_outcomes(passed=24)
    result.stdout.fnmatch_lines(["wool_local: 2 workers, 8 units (load), 24 items"])
    result.stdout.re_match_lines([r"\[gw\d+\] .*PASSED test_steal.py::test_k\[0\]"])
    rows = dict(reversed(line.split()) for line in where.read_text().splitlines())
    assert rows["test_steal.py::test_k[0]"] == rows["test_steal.py::test_k[1]"]
    assert rows["test_steal.py::test_k[2]"] != rows["test_steal.py::test_k[0]"]
    result.stdout.re_match_lines(
        [r"wool_local: \d+ workers? recycled \(\d+ ran --wool-max-tests units\); 1 unit split.*"]
    )


# A -v line of a test of test_big.py; group 1 is its worker.
BIG_LINE = re.compile(r"\[(gw\d+)\] .*(?:PASSED|FAILED) test_big\.py::test_k\[\d\]")


def test_loadscope_splits_a_long_module_and_keeps_fixtures_paired(
    pytester: pytest.Pytester,
) -> None:
    """Given a module of six tests (one fails) that take 0.3 s in a worker, with a
    module-scoped fixture, and a module of one quick test and one skipped
    When run serially and with --wool 2 -v (loadscope: one unit per module)
    Then the worker done with the small module takes the second half of the big
    module's tests not yet started: -v shows both workers running tests of the big
    module, the summary says a unit was split, the outcome counts and status are
    the serial run's, and each worker sets up the module fixture once and tears it
    down once."""
    events = pytester.path / "events.txt"
    pytester.makeconftest(FIXTURES.format(path=str(events)))
    pytester.makepyfile(
        test_big="import os\n"
        "import time\n"
        "import pytest\n"
        "@pytest.mark.parametrize('k', range(6))\n"
        "def test_k(k):\n"
        "    if 'PYTEST_XDIST_WORKER' in os.environ:  # the serial run need not wait\n"
        "        time.sleep(0.3)\n"
        "    assert k != 4\n",
        test_tiny="import pytest\n"
        "def test_quick(): pass\n"
        "@pytest.mark.skip(reason='not today')\n"
        "def test_skipped(): pass\n",
    )
    serial = run(pytester)
    events.unlink()
    result = run(pytester, "--wool", "2", "-v")
    expected = {"passed": 6, "failed": 1, "skipped": 1}
    assert result.parseoutcomes() == serial.parseoutcomes() == expected
    assert result.ret == serial.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["wool_local: 2 workers, 2 units (loadscope), 8 items"])
    big = [m for m in map(BIG_LINE.match, result.stdout.lines) if m]
    assert len(big) == 6
    assert {m.group(1) for m in big} == {"gw0", "gw1"}
    result.stdout.re_match_lines([r"wool_local: .*\d+ units? split at the end"])
    lines = fixture_events(events)
    per_worker = collections.Counter(
        (pid, event) for pid, event, name in lines if name == "test_big"
    )
    assert sorted(per_worker.values()) == [1, 1, 1, 1]


def test_max_restarts_from_the_ini_file_stops_the_run(pytester: pytest.Pytester) -> None:
    """Given a module of three tests that each kill their worker, and a pytest.ini
    setting wool_max_restarts = 1 and wool_dist = loadfile
    When run with --wool 1
    Then the ini settings apply: two crashes are reported, the run stops there with a
    message naming --wool-max-restarts, and the third crashing test never runs."""
    pytester.makeini("[pytest]\nwool_max_restarts = 1\nwool_dist = loadfile\n")
    pytester.makepyfile(
        test_crashy="import os\n" + "".join(f"def test_{i}(): os._exit(1)\n" for i in range(3))
    )
    result = run(pytester, "--wool", "1")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "wool_local: 1 worker, 1 units (loadfile), 3 items",
            "*2 workers crashed, more than --wool-max-restarts 1: stopping*",
        ]
    )
    result.assert_outcomes(failed=2)


SESSION_FIXTURE = """
import os
import pytest

@pytest.fixture(scope="session", autouse=True)
def per_session():
    with open({path!r}, "a") as f:
        f.write(f"{{os.getpid()}} setup session\\n")
    yield
    with open({path!r}, "a") as f:
        f.write(f"{{os.getpid()}} teardown session\\n")
    if os.environ.get("BREAK_SESSION"):
        raise RuntimeError("session teardown broke")

@pytest.fixture(scope="class")
def per_class():
    yield
"""


def test_session_fixtures_live_as_long_as_their_worker(pytester: pytest.Pytester) -> None:
    """Given an autouse session fixture and three modules of four tests (nine units)
    When they run with --wool 2 and with --wool 2 --wool-max-tests 2 (recycling)
    Then each worker sets the session fixture up once, before its first test, and
    tears it down once, when it stops (the run's end or its recycle): two workers,
    two setups; with recycling, one per worker the run used, each torn down."""
    events = pytester.path / "events.txt"
    pytester.makeconftest(SESSION_FIXTURE.format(path=str(events)))
    pytester.makepyfile(test_m1=MODULE, test_m2=MODULE, test_m3=MODULE)
    result = run(pytester, "--wool", "2")
    result.assert_outcomes(passed=12)
    lines = fixture_events(events)
    assert collections.Counter(event for _, event, _ in lines) == {"setup": 2, "teardown": 2}

    events.unlink()
    result = run(pytester, "--wool", "2", "--wool-max-tests", "2")
    result.assert_outcomes(passed=12)
    result.stdout.re_match_lines([r"wool_local: \d+ workers recycled \(\d+ ran --wool-max-tests"])
    lines = fixture_events(events)
    pids = {pid for pid, _, _ in lines}
    assert len(pids) >= 4  # 9 units, 2 per worker
    assert collections.Counter(event for _, event, _ in lines) == {
        "setup": len(pids),
        "teardown": len(pids),
    }


def test_a_failing_session_teardown_is_an_error_of_the_workers_last_test(
    pytester: pytest.Pytester,
) -> None:
    """Given a session fixture whose teardown raises
    When the suite runs with --wool 1 (one worker, so one session)
    Then the run reports one error at the teardown of the last test that worker ran,
    with the fixture's exception, and exits 1, as a serial run does."""
    events = pytester.path / "events.txt"
    pytester.makeconftest(SESSION_FIXTURE.format(path=str(events)))
    pytester.makepyfile(test_m1=MODULE)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BREAK_SESSION", "1")
        serial = run(pytester, "-rE")
        result = run(pytester, "-rE", "--wool", "1")
    assert result.ret == serial.ret == pytest.ExitCode.TESTS_FAILED
    assert result.parseoutcomes() == serial.parseoutcomes() == {"passed": 4, "errors": 1}
    result.stdout.fnmatch_lines(["ERROR test_m1.py::* - RuntimeError: session teardown broke"])


def test_s_writes_whole_lines_from_every_worker(pytester: pytest.Pytester) -> None:
    """Given two modules whose tests print 400 lines of 60 characters each, every
    line in two writes
    When run with --wool 2 -s (output not captured; here a file, so block-buffered)
    Then every line reaches the output whole: none is cut or mixed with another."""
    pytester.makepyfile(
        **{
            f"test_talk{m}": "import pytest\n"
            "@pytest.mark.parametrize('k', range(4))\n"
            "def test_talk(k):\n"
            "    for i in range(100):\n"
            f"        print('m{m}-', k, '-', i, '-', sep='', end='')\n"
            "        print('x' * 50)\n"
            for m in (1, 2)
        }
    )
    result = run(pytester, "--wool", "2", "-s", "-p", "no:randomly")
    result.assert_outcomes(passed=8)
    said = [m.group(0) for m in map(re.compile(r"m\d-\d-\d+-.*").search, result.stdout.lines) if m]
    whole = re.compile(r"m\d-\d-\d+-x{50}")
    assert [line for line in said if not whole.fullmatch(line)] == []
    assert len(said) == 800


def test_threads_started_at_import_are_named_in_the_warnings_summary(
    pytester: pytest.Pytester,
) -> None:
    """Given a test module that starts a thread (named "ticker") when imported
    When run with --wool 1
    Then the tests pass and the warnings summary names the thread and says to start
    it in a fixture, once (not also the pool's general warning)."""
    pytester.makepyfile(
        test_threads="import threading\n"
        "stop = threading.Event()\n"
        "threading.Thread(target=stop.wait, name='ticker', daemon=True).start()\n"
        "def test_a(): pass\n"
    )
    result = run(pytester, "--wool", "1")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines(
        ["*ThreadedForkWarning: wool_local: 1 thread (ticker) ran in the pytest process*"]
    )
    assert "Start them in a fixture" in result.stdout.str()
    assert "start the pool before starting threads" not in result.stdout.str()


def test_last_failed_and_selection_options_apply_before_the_workers(
    pytester: pytest.Pytester,
) -> None:
    """Given two modules of three tests, one failing, and pytest's cache on
    When run with --wool 2, then again with --lf, then with -k and --deselect
    Then --lf reruns only the failure (the first run's reports reached the cache),
    as a serial --lf does, and -k / --deselect leave the tests a serial run would."""
    pytester.makepyfile(
        test_one="def test_a(): pass\ndef test_b(): assert 0\ndef test_c(): pass\n",
        test_two="def test_d(): pass\ndef test_e(): pass\ndef test_f(): pass\n",
    )

    def wool(*args: str) -> pytest.RunResult:
        return pytester.runpytest_subprocess("--wool", "2", *args, timeout=TIMEOUT)

    first = wool()
    first.assert_outcomes(passed=5, failed=1)
    serial = pytester.runpytest_subprocess("--lf", timeout=TIMEOUT)
    again = wool("--lf")
    assert again.parseoutcomes() == serial.parseoutcomes()
    assert again.parseoutcomes()["failed"] == 1 and "passed" not in again.parseoutcomes()
    again.stdout.fnmatch_lines(["*rerun previous 1 failure*", "FAILED test_one.py::test_b*"])
    select = ("-k", "test_a or test_d or test_e", "--deselect", "test_two.py::test_e")
    picked = wool(*select)
    picked.assert_outcomes(passed=2, deselected=4)
    serial = pytester.runpytest_subprocess(*select, timeout=TIMEOUT)
    assert serial.parseoutcomes() == picked.parseoutcomes()


def test_a_property_that_does_not_pickle_reaches_the_report_as_its_repr(
    pytester: pytest.Pytester,
) -> None:
    """Given a test that records a property whose value cannot be pickled (a lock)
    and one that records a plain number
    When run with --wool 1 --junitxml
    Then both pass, and the XML has the number as is and the lock as its repr."""
    pytester.makepyfile(
        test_props="import threading\n"
        "def test_lock(record_property): record_property('lock', threading.Lock())\n"
        "def test_number(record_property): record_property('n', 42)\n"
    )
    result = run(pytester, "--wool", "1", "--junitxml=out.xml")
    result.assert_outcomes(passed=2)
    props = {
        p.get("name"): p.get("value")
        for p in ET.parse(pytester.path / "out.xml").getroot().iter("property")
    }
    assert props["n"] == "42"
    assert "lock" in props["lock"] and "unlocked" in props["lock"]


def test_a_failure_then_a_crash_in_teardown_keeps_the_failure(pytester: pytest.Pytester) -> None:
    """Given a fixture that kills its worker in its teardown, a test using it that
    fails, and one that passes
    When run with --wool 1
    Then the failure is reported with its own assertion, the passing test passes, and
    each gets an error at teardown naming the crash (1 failed, 1 passed, 2 errors)."""
    pytester.makepyfile(
        test_dying="import os\n"
        "import pytest\n"
        "@pytest.fixture\n"
        "def dies():\n"
        "    yield\n"
        "    os._exit(3)\n"
        "def test_fails(dies): assert 1 == 2, 'the real failure'\n"
        "def test_passes(dies): pass\n"
    )
    result = run(pytester, "--wool", "1", "-rA")
    result.assert_outcomes(failed=1, passed=1, errors=2)
    result.stdout.fnmatch_lines_random(
        [
            "*AssertionError: the real failure*",
            "ERROR test_dying.py::test_fails - worker crashed while running*",
            "ERROR test_dying.py::test_passes - worker crashed while running*",
        ]
    )


def test_sigint_to_the_pytest_process_alone_interrupts_the_running_tests(
    pytester: pytest.Pytester,
) -> None:
    """Given two modules whose test announces its start in a file and then sleeps
    60 s, running with --wool 2
    When SIGINT reaches the pytest process alone (as from an IDE's stop button), once
    both have started
    Then the run ends interrupted (exit 2) well before the sleeps would: the workers'
    tests get KeyboardInterrupt, as in a serial run, and nothing is left running."""
    started = pytester.path / "started"
    started.mkdir()
    pytester.makepyfile(
        **{
            f"test_sleepy{k}": "import os, time\n"
            "def test_sleep():\n"
            f"    open(os.path.join({str(started)!r}, '{k}'), 'w').close()\n"
            "    time.sleep(60)\n"
            for k in range(2)
        }
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--wool", "2", "-q"],
        cwd=pytester.path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        while len(os.listdir(started)) < 2 and proc.poll() is None:
            assert time.monotonic() < deadline, "the tests never started"
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)  # the sleeps would take 60 s
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    assert "KeyboardInterrupt" in out


def test_one_worker_sets_up_and_tears_down_as_a_serial_run(pytester: pytest.Pytester) -> None:
    """Given a module with a module-scoped fixture, two classes with a class-scoped one
    and a function: three loadscope units, run in collection order by one worker
    When it runs serially and with --wool 1
    Then the fixtures are set up and torn down in the same order, each once: a unit's
    end does not tear down the module the next unit shares (its first test is the
    ``nextitem`` that decides, as in a serial run)."""
    events = pytester.path / "events.txt"
    pytester.makeconftest(FIXTURES.format(path=str(events)))
    pytester.makepyfile(test_m1=MODULE)
    run(pytester).assert_outcomes(passed=4)
    serial = [line.split()[1:] for line in events.read_text().splitlines()]
    events.unlink()
    result = run(pytester, "--wool", "1")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["wool_local: 1 worker, 3 units (loadscope), 4 items"])
    wool = [line.split()[1:] for line in events.read_text().splitlines()]
    assert wool == serial
    assert serial[0] == ["setup", "test_m1"] and serial[-1] == ["teardown", "test_m1"]


def test_a_failing_module_teardown_is_reported_once_as_in_a_serial_run(
    pytester: pytest.Pytester,
) -> None:
    """Given two modules whose module-scoped fixture fails in its teardown
    When they run serially and with --wool 1 (the failure of the first module's
    teardown surfaces as the next unit starts, of the second's as the worker stops)
    Then both runs report the same counts (4 passed, 2 errors) and exit status."""
    pytester.makeconftest(
        "import pytest\n"
        "@pytest.fixture(scope='module', autouse=True)\n"
        "def breaks_at_the_end():\n"
        "    yield\n"
        "    raise RuntimeError('module teardown broke')\n"
    )
    module = "def test_a(): pass\ndef test_b(): pass\n"
    pytester.makepyfile(test_one=module, test_two=module)
    serial = run(pytester)
    result = run(pytester, "--wool", "1")
    assert result.parseoutcomes() == serial.parseoutcomes() == {"passed": 4, "errors": 2}
    assert result.ret == serial.ret == pytest.ExitCode.TESTS_FAILED
    assert result.stdout.str().count("RuntimeError: module teardown broke") >= 2
