"""The pytest plugin: ``pytest --wool N|auto`` runs the session on a wool_local pool.

pytest loads this module in every run (the ``pytest11`` entry point ``wool_local``;
``-p no:wool_local`` disables it), so it imports nothing but pytest until
``--wool`` asks for workers; the machinery is in :mod:`wool_local.testing`.

The controller collects once, as pytest always does, then starts the pool, so
every worker is forked with the collected session in memory and runs items by
index: no worker imports or collects. Units of work are the items of one
module; a worker runs a unit with the right ``nextitem`` for each item and
``None`` after the last, so module and class fixtures are set up and torn down
as a serial run would on that worker (session fixtures: once per unit, in this
version). The reports come back and are replayed in this process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from wool_local.workers import WorkerLimits

#: ``--wool-dist``'s choices (see :mod:`wool_local.testing.units`; kept here so that
#: loading the plugin imports nothing more).
DISTS = ("loadscope", "loadfile", "loadgroup", "load")
DEFAULT_DIST = "loadscope"

#: The recycling defaults for test workers (``--wool-max-*``).
DEFAULT_MAX_RSS = "1GiB"
DEFAULT_MAX_FDS = 200
DEFAULT_MAX_AGE = "10m"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("wool_local", "parallel runs on a wool_local pool")
    group.addoption(
        "--wool",
        dest="wool",
        metavar="N",
        default=None,
        help="run the tests in N worker processes forked after collection "
        "('auto': one per usable CPU, at most one per module; 0: a normal run)",
    )
    group.addoption(
        "--wool-dist",
        dest="wool_dist",
        metavar="MODE",
        default=None,
        choices=DISTS,
        help="how items are grouped into units that one worker runs (pytest-xdist's "
        "meanings): loadscope (the default: a class's items together, a module's "
        "functions together), loadfile, loadgroup (the xdist_group marker), load",
    )
    group.addoption(
        "--wool-max-rss",
        metavar="SIZE",
        default=DEFAULT_MAX_RSS,
        help="recycle a worker whose private memory passes SIZE, after its current "
        f"module (default {DEFAULT_MAX_RSS}; 'off')",
    )
    group.addoption(
        "--wool-max-fds",
        metavar="N",
        default=str(DEFAULT_MAX_FDS),
        help=f"recycle a worker with more than N open files (default {DEFAULT_MAX_FDS}; 'off')",
    )
    group.addoption(
        "--wool-max-age",
        metavar="DURATION",
        default=DEFAULT_MAX_AGE,
        help=f"recycle a worker older than DURATION (default {DEFAULT_MAX_AGE}; 'off')",
    )
    group.addoption(
        "--wool-max-tests",
        metavar="N",
        default="off",
        help="recycle a worker after N units (modules) in this version (default off)",
    )
    group.addoption(
        "--wool-no-recycle",
        action="store_true",
        default=False,
        help="never recycle workers (every --wool-max-* off)",
    )


def workers_option(value: str | None) -> int | None:
    """``--wool``'s value: 0 for a normal run, None for ``auto``, else the count."""
    if value is None:
        return 0
    if value.strip().lower() == "auto":
        return None
    try:
        n = int(value)
    except ValueError:
        n = -1
    if n < 0:
        raise pytest.UsageError(f"--wool takes a number of workers or 'auto', not {value!r}")
    return n


def limits_from(config: pytest.Config) -> WorkerLimits:
    """The workers' :class:`~wool_local.workers.WorkerLimits` from the ``--wool-*`` options."""
    from wool_local.workers import WorkerLimits

    if config.getoption("wool_no_recycle"):
        return WorkerLimits.unlimited()

    def opt(name: str) -> str | None:
        value = str(config.getoption(name)).strip()
        return None if value.lower() in ("off", "none", "0") else value

    def count(name: str) -> int | None:
        value = opt(name)
        try:
            return None if value is None else int(value)
        except ValueError:
            flag = "--" + name.replace("_", "-")
            raise pytest.UsageError(f"{flag}: not a number: {value!r}") from None

    try:
        return WorkerLimits(
            max_rss=opt("wool_max_rss"),
            max_fds=count("wool_max_fds"),
            max_age=opt("wool_max_age"),
            idle_ttl=None,
            max_tasks=count("wool_max_tests"),
        )
    except (TypeError, ValueError) as exc:
        raise pytest.UsageError(f"--wool-max-*: {exc}") from None


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    if not config.pluginmanager.hasplugin("xdist"):
        from wool_local.testing import fixtures

        config.pluginmanager.register(fixtures, "wool_local.fixtures")
    workers = workers_option(config.getoption("wool"))
    if workers == 0 or hasattr(config, "workerinput"):  # off, or inside an xdist worker
        return
    if getattr(config.option, "numprocesses", None):
        raise pytest.UsageError("--wool and pytest-xdist's -n cannot be used together")
    if config.getoption("usepdb", False):
        raise pytest.UsageError("--pdb does not work with --wool (the tests run in workers)")
    from wool_local.testing.controller import Controller

    dist = config.getoption("wool_dist") or DEFAULT_DIST
    config.pluginmanager.register(
        Controller(config, workers, limits_from(config), dist), "wool_local.controller"
    )
