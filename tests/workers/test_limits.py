"""WorkerLimits parsing and validation, and the pure evaluate_recycle decision."""

from __future__ import annotations

import resource

import pytest

from wool_local import RecycleReason, WorkerHealth, WorkerLimits, evaluate_recycle
from wool_local.workers.limits import parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [(1024, 1024), ("1GiB", 1 << 30), ("512 MiB", 512 << 20), ("2GB", 2 * 10**9),
     ("64k", 64000), ("1.5KiB", 1536), ("100", 100)],
)  # fmt: skip
def test_given_human_sizes_then_bytes(text, expected):
    """Given sizes with units, parse_size returns bytes."""
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (30, 30.0),
        ("30s", 30.0),
        ("10m", 600.0),
        ("1.5h", 5400.0),
        ("250ms", 0.25),
        ("2d", 172800.0),
    ],
)
def test_given_human_durations_then_seconds(text, expected):
    """Given durations with units, parse_duration returns seconds."""
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_rss": "lots"}, ValueError, "max_rss: cannot read 'lots'"),
        ({"max_rss": "3 parsecs"}, ValueError, "unknown size unit 'parsecs'"),
        ({"max_rss": 0}, ValueError, "must be positive"),
        ({"max_age": "-5m"}, ValueError, "cannot read"),
        ({"idle_ttl": "10 fortnights"}, ValueError, "unknown time unit"),
        ({"max_tasks": 2.5}, TypeError, "whole number"),
        ({"max_fds": True}, TypeError, "whole number"),
        ({"max_age": [1]}, TypeError, "must be a number or a string"),
        ({"hard_rss": "huge"}, ValueError, "hard_rss: cannot read 'huge'"),
        ({"hard_rss": "512MiB"}, ValueError, r"hard_rss \(512.0 MiB\) must be above max_rss"),
        ({"max_rss": "1GiB", "hard_rss": "1GiB"}, ValueError, "must be above max_rss"),
    ],
)
def test_given_nonsense_limits_then_clear_errors(kwargs, error, match):
    """Given an unreadable or non-positive limit, WorkerLimits says what is wrong."""
    with pytest.raises(error, match=match):
        WorkerLimits(**kwargs)


def test_given_defaults_then_documented_values_and_fd_margin_below_rlimit():
    """Given no arguments, limits are 1 GiB, a margin below RLIMIT_NOFILE, 10 min, 30 s,
    no task limit and no hard ceiling."""
    limits = WorkerLimits()
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert limits.max_rss == 1 << 30
    assert limits.max_fds is not None and 16 <= limits.max_fds < soft
    assert (limits.max_age, limits.idle_ttl, limits.max_tasks) == (600.0, 30.0, None)
    assert limits.hard_rss is None


def test_given_unlimited_then_every_limit_is_off_and_nothing_trips():
    """Given WorkerLimits.unlimited(), every field is None and no reading, however large,
    trips; given one limit by name, only that one is set."""
    off = WorkerLimits.unlimited()
    assert all(getattr(off, name) is None for name in off.__dataclass_fields__)
    huge = WorkerHealth(
        pid=1, rss=1 << 40, private_rss=1 << 40, fds=10**6, age=1e9, idle=1e9, tasks_completed=10**9
    )
    assert evaluate_recycle(huge, off) is None
    one = WorkerLimits.unlimited(max_age="1s")
    assert one == WorkerLimits(None, None, 1.0, None, None, None)
    with pytest.raises(TypeError, match="no limit max_memory"):
        WorkerLimits.unlimited(max_memory="1GiB")


def test_given_hard_rss_then_bytes_and_the_lowest_memory_limit_gates_reads():
    """Given hard_rss in human units, it holds bytes; memory_ceiling is the lower memory
    limit set, or None without one."""
    limits = WorkerLimits(max_rss="1GiB", hard_rss="1.5GiB")
    assert limits.hard_rss == 3 << 29 and limits.memory_ceiling == 1 << 30
    assert WorkerLimits.unlimited(hard_rss="2GiB").memory_ceiling == 2 << 30
    assert WorkerLimits.unlimited().memory_ceiling is None


def _health(**kw):
    base = dict(pid=1, rss=10, private_rss=10, fds=10, age=1.0, idle=0.0, tasks_completed=0)
    base.update(kw)
    return WorkerHealth(**base)


LIMITS = WorkerLimits(max_rss=100, max_fds=50, max_age=60, idle_ttl=5, max_tasks=1000, hard_rss=200)


@pytest.mark.parametrize(
    ("health", "reason"),
    [
        (_health(), None),
        (_health(private_rss=201, fds=51, age=61), RecycleReason.HARD_MEMORY),
        (_health(private_rss=None, rss=201), RecycleReason.HARD_MEMORY),
        (_health(rss=10**9, private_rss=50), None),  # shared pages never count
        (_health(private_rss=101, fds=51, age=61, tasks_completed=1000), RecycleReason.MEMORY),
        (_health(fds=51, age=61, tasks_completed=1000), RecycleReason.FDS),
        (_health(age=61, tasks_completed=1000), RecycleReason.AGE),
        (_health(tasks_completed=1000), RecycleReason.TASKS),
        (_health(idle=6.0), RecycleReason.IDLE),
        (_health(idle=6.0, inflight=1), None),
        (_health(private_rss=None, rss=None, fds=None, age=None, idle=None), None),
        (_health(private_rss=None, rss=101), RecycleReason.MEMORY),
    ],
)
def test_given_health_then_most_pressing_reason_in_priority_order(health, reason):
    """Given readings, hard memory > memory > fds > age > tasks > idle; memory is judged
    on private_rss (rss only without it), and None readings never trip."""
    assert evaluate_recycle(health, LIMITS) is reason


def test_given_reasons_then_readable_text():
    """Given each reason, str() is a readable phrase for logs."""
    assert str(RecycleReason.MEMORY) == "memory above max_rss"
    assert {str(r) for r in RecycleReason} == {
        "memory above hard_rss", "memory above max_rss", "open files above max_fds",
        "older than max_age", "ran max_tasks tasks", "idle past idle_ttl",
    }  # fmt: skip
