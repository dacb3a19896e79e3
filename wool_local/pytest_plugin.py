"""The pytest plugin: ``pytest --wool N|auto`` runs the session on a wool_local pool.

pytest loads this module in every run (the ``pytest11`` entry point ``wool_local``;
``-p no:wool_local`` disables it), so it imports nothing but pytest until
``--wool`` asks for workers; the machinery is in :mod:`wool_local.testing`.

The controller collects once, as pytest always does, then starts the pool, so
every worker is forked with the collected session in memory and runs items by
index: no worker imports or collects. Units of work are grouped by
``--wool-dist`` (:mod:`wool_local.testing.units`; by default a class, or a
module's functions); a worker runs its items with the right ``nextitem`` (for the
last of a unit, the first of its next unit, as far as teardown goes), so fixtures
are set up and torn down as a serial run of the worker's sequence of items would.
The reports come back and are replayed in this process.
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


#: The ``--wool-*`` options: (name, metavar, default, help); each has an ini
#: equivalent of the same name with underscores (``wool_max_rss = 1GiB``), which
#: the command line overrides.
OPTIONS: list[tuple[str, str, str, str]] = [
    (
        "wool-dist",
        "MODE",
        DEFAULT_DIST,
        "how items are grouped into units that one worker runs (pytest-xdist's "
        "meanings): loadscope (the default: a class's items together, a module's "
        "functions together), loadfile, loadgroup (the xdist_group marker), load",
    ),
    (
        "wool-max-rss",
        "SIZE",
        DEFAULT_MAX_RSS,
        "recycle a worker whose private memory passes SIZE, after its current unit "
        f"(default {DEFAULT_MAX_RSS}; 'off')",
    ),
    (
        "wool-max-fds",
        "N",
        str(DEFAULT_MAX_FDS),
        f"recycle a worker with more than N open files (default {DEFAULT_MAX_FDS}; 'off')",
    ),
    (
        "wool-max-age",
        "DURATION",
        DEFAULT_MAX_AGE,
        f"recycle a worker older than DURATION (default {DEFAULT_MAX_AGE}; 'off')",
    ),
    ("wool-max-tests", "N", "off", "recycle a worker after N units (default off)"),
    (
        "wool-max-restarts",
        "N",
        "",
        "stop the run when more than N workers have crashed (default 4 per worker)",
    ),
]


def _n_alias_applies(pluginmanager: pytest.PytestPluginManager) -> bool:
    """``-n N`` means ``--wool N`` when pytest-xdist cannot claim it: not installed, or
    blocked with ``-p no:xdist``."""
    if pluginmanager.is_blocked("xdist"):
        return True
    import importlib.util

    return importlib.util.find_spec("xdist") is None


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    group = parser.getgroup("wool_local", "parallel runs on a wool_local pool")
    group.addoption(
        "--wool",
        dest="wool",
        metavar="N",
        default=None,
        help="run the tests in N worker processes forked after collection "
        "('auto': one per usable CPU, at most one per unit; 0: a normal run)",
    )
    if _n_alias_applies(pluginmanager):
        # Lowercase short options are pytest's; plugins (xdist's -n) use this way in.
        group._addoption(
            "-n",
            dest="wool_n",
            metavar="N",
            default=None,
            help="--wool N (an alias while pytest-xdist is not installed or is disabled)",
        )
    for name, metavar, default, text in OPTIONS:
        dest = name.replace("-", "_")
        group.addoption("--" + name, dest=dest, metavar=metavar, default=None, help=text)
        parser.addini(dest, f"{text} (--{name})", default=default)
    group.addoption(
        "--wool-no-recycle",
        action="store_true",
        default=False,
        help="never recycle workers (every --wool-max-* off)",
    )
    parser.addini("wool_no_recycle", "never recycle workers (--wool-no-recycle)", type="bool")


def setting(config: pytest.Config, dest: str) -> str:
    """A ``--wool-*`` option's value: the command line's, else the ini file's."""
    value = config.getoption(dest)
    return str(config.getini(dest) if value is None else value).strip()


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

    if config.getoption("wool_no_recycle") or config.getini("wool_no_recycle"):
        return WorkerLimits.unlimited()

    def opt(name: str) -> str | None:
        value = setting(config, name)
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
    wool, alias = config.getoption("wool"), getattr(config.option, "wool_n", None)
    if alias is not None and wool is not None and alias != wool:
        raise pytest.UsageError(f"-n {alias} and --wool {wool} disagree")
    workers = workers_option(wool if wool is not None else alias)
    if workers == 0 or hasattr(config, "workerinput"):  # off, or inside an xdist worker
        return
    if getattr(config.option, "numprocesses", None):
        raise pytest.UsageError("--wool and pytest-xdist's -n cannot be used together")
    if config.getoption("usepdb", False):
        raise pytest.UsageError("--pdb does not work with --wool (the tests run in workers)")
    dist = setting(config, "wool_dist") or DEFAULT_DIST
    if dist not in DISTS:
        raise pytest.UsageError(f"--wool-dist: one of {', '.join(DISTS)}, not {dist!r}")
    restarts = setting(config, "wool_max_restarts")
    try:
        max_restarts = None if not restarts else int(restarts)
    except ValueError:
        raise pytest.UsageError(f"--wool-max-restarts: not a number: {restarts!r}") from None
    from wool_local.testing.controller import Controller

    config.pluginmanager.register(
        Controller(config, workers, limits_from(config), dist, max_restarts),
        "wool_local.controller",
    )
