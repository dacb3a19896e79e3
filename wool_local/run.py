"""``wool-local run``: run a script or module as ``__main__`` with an ambient pool.

The script runs as ``python script.py`` would run it (``sys.argv``,
``sys.path[0]``, ``__main__``), in this process. Routines it calls, and
``Executor()``s it builds with no options of their own, use one pool that
starts at its first use and stops when the script ends (see
:mod:`wool_local.ambient`). Every option has a ``WOOL_LOCAL_*`` environment
variable; the command line wins.

Exit: the script's own status; 1 with the traceback (a worker's part
included) for an uncaught exception; 130 after Ctrl-C, which cancels the
work in flight (remote ``finally`` blocks run) and stops the pool within
``--stop-timeout``; a second Ctrl-C kills the workers at once.
"""

from __future__ import annotations

import argparse
import os
import runpy
import signal
import sys
import traceback
from typing import Any

#: The prefix of the environment variables that stand in for the options.
_ENV = "WOOL_LOCAL_"


def add_parser(commands: Any) -> None:
    run = commands.add_parser(
        "run",
        usage=(
            "wool-local run [options] SCRIPT [ARGS...]\n"
            "       wool-local run [options] -m MODULE [ARGS...]"
        ),
        help="run a script with a pool on every core",
        description=(
            "Run SCRIPT (or -m MODULE) as __main__ with an ambient pool: the routines it "
            "calls and the Executor()s it builds without options of their own use it. The "
            "pool starts at first use and stops when the script ends. Every option has an "
            "environment variable; the command line wins."
        ),
        epilog=(
            "Sizes take units (512MiB, 1GiB, 2GB), durations too (250ms, 30s, 10m, 2h); "
            "'off' switches a limit off. Exit status: the script's; 1 for an uncaught "
            "exception; 130 after Ctrl-C (a second Ctrl-C kills the workers at once)."
        ),
    )
    env = os.environ.get

    def option(*flags: str, var: str, help: str, **kw: Any) -> None:
        name = _ENV + var
        run.add_argument(*flags, default=env(name), help=f"{help} [{name}]", **kw)

    option(
        "-n",
        "--workers",
        var="WORKERS",
        metavar="N|auto",
        help="worker processes (default: auto, the CPUs this process may use)",
    )
    option(
        "--max-rss",
        var="MAX_RSS",
        metavar="SIZE",
        help="recycle a worker whose own memory passes SIZE (default 1GiB)",
    )
    option(
        "--max-fds",
        var="MAX_FDS",
        metavar="N",
        help="recycle a worker with more than N open files (default: a share of the limit)",
    )
    option(
        "--max-age",
        var="MAX_AGE",
        metavar="DURATION",
        help="recycle a worker older than DURATION (default 10m)",
    )
    option(
        "--idle-ttl",
        var="IDLE_TTL",
        metavar="DURATION",
        help="retire a worker idle for DURATION (default 30s)",
    )
    option(
        "--max-tasks",
        var="MAX_TASKS",
        metavar="N",
        help="recycle a worker after N calls (default off)",
    )
    option(
        "--timeout",
        var="TIMEOUT",
        metavar="DURATION",
        help="default dispatch timeout of every routine call (default none)",
    )
    option("--stop-timeout", var="STOP_TIMEOUT", metavar="DURATION",
           help="at exit or Ctrl-C, how long workers get to stop before being killed "
           "(default 5s)")  # fmt: skip
    option(
        "--backend",
        var="BACKEND",
        metavar="local|wool",
        help="where routines run: forked workers on this host (local, the default), or a "
        "wool pool (pip install 'wool-local[wool]'); WorkerPool()s of the script follow it",
    )
    option(
        "--discovery",
        var="DISCOVERY",
        metavar="NAMESPACE",
        help="with --backend wool: also use the wool workers other hosts publish under "
        "NAMESPACE on the LAN (--workers then defaults to none here)",
    )
    run.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=_flag(env(_ENV + "PROGRESS")),
        help=f"progress bars for maps and Executor.map (needs tqdm) [{_ENV}PROGRESS=1|0]",
    )
    run.add_argument(
        "-v", "--verbose", action="count", default=int(env(_ENV + "VERBOSE") or 0),
        help=f"log the pool's events; prefix workers' output with their pid [{_ENV}VERBOSE=N]",
    )  # fmt: skip
    run.add_argument("-q", "--quiet", action="count", default=0, help="log only errors of the pool")
    run.add_argument("-m", dest="module", metavar="MODULE", help="run a module, as python -m")
    run.set_defaults(handler=command, parser=run, target=None, args=[])


def subparser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``run`` subcommand's parser in the ``wool-local`` parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices["run"]
    raise LookupError("no run subcommand")


def split_argv(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], list[str]]:
    """``run``'s own options, and the script's part: from SCRIPT (or what follows
    ``-m MODULE``) on, everything belongs to the script, ``--help`` included, as with
    ``python script.py`` and ``python -m``."""
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            return argv[:i], argv[i + 1 :]
        if not token.startswith("-") or token == "-":
            return argv[:i], argv[i:]
        name = token.split("=", 1)[0]
        action = parser._option_string_actions.get(name)
        takes_value = action is not None and action.nargs != 0 and "=" not in token
        if name == "-m" or (len(token) > 2 and token.startswith("-m") and token[1] != "-"):
            if takes_value:
                return argv[: i + 2], argv[i + 2 :]
            return argv[: i + 1], argv[i + 1 :]  # -mMODULE
        i += 2 if takes_value else 1
    return argv, []


def _flag(value: str | None) -> bool | None:
    if value is None or value == "":
        return None
    return value.strip().lower() not in ("0", "no", "false", "off")


def pool_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``WorkerPool`` keyword arguments the options ask for; ValueError if one is bad."""
    from .workers import WorkerLimits
    from .workers.limits import parse_duration, parse_size

    def off(v: str | None) -> bool:
        return v is not None and v.strip().lower() in ("off", "none")

    limits: dict[str, Any] = {}
    for key, parse in (
        ("max_rss", parse_size),
        ("max_age", parse_duration),
        ("idle_ttl", parse_duration),
        ("max_fds", _count),
        ("max_tasks", _count),
    ):
        value = getattr(args, key)
        if value is not None:
            limits[key] = None if off(value) else parse(value, "--" + key.replace("_", "-"))
    options: dict[str, Any] = {"limits": WorkerLimits(**limits)}
    backend = args.backend.strip().lower() if args.backend else None
    if backend is not None:
        if backend not in ("local", "wool"):
            raise ValueError(f"--backend must be 'local' or 'wool', got {args.backend!r}")
        options["backend"] = backend
    if args.discovery:
        if backend != "wool":
            raise ValueError("--discovery needs --backend wool")
        options["discovery"] = args.discovery
    workers = args.workers
    if workers is not None and workers.strip().lower() != "auto":
        options["spawn"] = _count(workers, "--workers")
    if args.stop_timeout is not None:
        options["stop_timeout"] = parse_duration(args.stop_timeout, "--stop-timeout")
    return options


def _count(value: str, name: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{name}: {value!r} is not a whole number") from None
    if n < 1:
        raise ValueError(f"{name} must be at least 1, got {n}")
    return n


def command(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.parser
    if args.module is None:
        if not args.args:
            parser.error("give a SCRIPT to run (or -m MODULE)")
        args.target = args.args.pop(0)
    try:
        options = pool_options(args)
        timeout = None if args.timeout is None else _duration(args.timeout, "--timeout")
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    _configure_logging(args.verbose - args.quiet)

    from . import ambient
    from . import pool as pools

    # The script's own WorkerPool()s run on the chosen backend too.
    pools.default_backend = options.get("backend", pools.default_backend)
    pools.default_discovery = options.get("discovery")
    try:
        pool = ambient.install(options, timeout=timeout, progress=args.progress,
                               prefix_output=args.verbose > 0)  # fmt: skip
    except (TypeError, ValueError, ImportError) as exc:
        parser.error(str(exc))
    code, aborted = 1, True
    try:
        code, aborted = _run_main(args)
    finally:
        pool.finish(aborted, interrupted=code == 128 + signal.SIGINT)
    return code


def _duration(value: str, name: str) -> float:
    from .workers.limits import parse_duration

    return parse_duration(value, name)


def _run_main(args: argparse.Namespace) -> tuple[int, bool]:
    """Run the script as ``__main__``: its exit status (130 after Ctrl-C), and whether
    it ended by an exception (the pool's work in flight is then cancelled)."""
    try:
        if args.module is not None:
            sys.argv = [args.module, *args.args]  # runpy sets argv[0] to the module's file
            runpy.run_module(args.module, run_name="__main__", alter_sys=True)
        else:
            sys.argv = [args.target, *args.args]
            sys.path[0] = os.path.dirname(os.path.abspath(args.target))
            runpy.run_path(args.target, run_name="__main__")
    except SystemExit as exc:
        return _exit_status(exc.code), False
    except KeyboardInterrupt:
        return 128 + signal.SIGINT, True
    except BaseException as exc:
        _print_traceback(exc)
        return 1, True
    return 0, False


def _print_traceback(exc: BaseException) -> None:
    """The traceback ``python script.py`` would print: from the script's frames on
    (not this module's or runpy's), with the chained worker traceback."""
    tb = exc.__traceback__
    while tb is not None and (
        tb.tb_frame.f_code.co_filename == __file__
        or tb.tb_frame.f_code.co_filename.startswith("<frozen runpy")
    ):
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb)


def _exit_status(code: Any) -> int:
    """What ``sys.exit(code)`` makes the process exit with."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _configure_logging(verbosity: int) -> None:
    """Show the pool's own log (``wool_local``) at a level set by -v/-q, unless the
    script configures logging itself."""
    import logging

    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(
        max(-1, min(verbosity, 2)), logging.DEBUG
    )
    logger = logging.getLogger("wool_local")
    logger.setLevel(level)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
