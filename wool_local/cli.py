"""The ``wool-local`` command (also ``python -m wool_local``).

``wool-local run`` runs a script with an ambient pool (:mod:`wool_local.run`);
``wool-local status`` inspects the running pools of this user. The command
line uses argparse: the standard library's parser does all this needs
(subcommands, typed options, help with units), and a command that starts
in milliseconds matters more here than a richer library.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    tokens = list(sys.argv[1:] if argv is None else argv)
    script: list[str] = []
    if tokens[:1] == ["run"]:
        from . import run

        own, script = run.split_argv(run.subparser(parser), tokens[1:])
        tokens = ["run", *own]
    args = parser.parse_args(tokens)
    if script:
        args.args = script
    if args.command is None:
        parser.print_help()
        return 2
    return int(args.handler(args))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wool-local",
        description="Run Python on every core of this machine, and look at running pools.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    status = commands.add_parser(
        "status",
        help="show this user's running pools",
        description=(
            "List this user's running wool_local pools, and show one in detail: each "
            "worker's pid, state, calls in flight and finished, memory, open files and "
            "age, and the pool's recycles by reason."
        ),
    )
    status.add_argument("pid", nargs="?", type=int, help="the pool's process (its hub) to show")
    status.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=1.0,
        metavar="SECONDS",
        help="refresh every SECONDS (default 1) until Ctrl-C, like top",
    )
    status.add_argument("--json", action="store_true", help="print the snapshots as JSON")
    status.set_defaults(handler=_status)
    from . import run

    run.add_parser(commands)
    return parser


# -- status ----------------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    from .workers import status

    def take() -> list[dict[str, Any]]:
        found = []
        for path in status.list_pools():
            if args.pid is not None and not path.name.startswith(f"{args.pid}-"):
                continue
            try:
                found.append(status.query(path))
            except (OSError, ValueError) as exc:
                found.append({"pid": _pid_of(path), "error": f"no answer: {exc}"})
        return found

    if args.watch is None:
        return _show(take(), args)
    try:
        while True:
            snaps = take()
            sys.stdout.write("\x1b[H\x1b[2J")  # home, clear: redraw like top
            _show(snaps, args)
            sys.stdout.flush()
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0


def _show(snaps: list[dict[str, Any]], args: argparse.Namespace) -> int:
    if args.json:
        one: dict[str, Any] | None = snaps[0] if snaps else None
        print(json.dumps(snaps if args.pid is None else one, indent=2))
        return 0 if snaps or args.pid is None else 1
    if not snaps:
        who = f"pool with hub pid {args.pid}" if args.pid is not None else "running pool"
        print(f"no {who} of this user")
        return 0 if args.pid is None else 1
    for snap in snaps:
        print(_headline(snap))
    if len(snaps) == 1 or args.pid is not None:
        print()
        print(_details(snaps[0]))
    return 0


def _headline(snap: dict[str, Any]) -> str:
    if "error" in snap:
        return f"pool {snap['pid']}: {snap['error']}"
    s = snap["stats"]
    command = " ".join(Path(a).name if i == 0 else a for i, a in enumerate(snap["argv"]))
    return (
        f"pool {snap['pid']}  {command[:40]}  {len(s['workers'])}/{s['size']} workers  "
        f"completed {s['completed']:,}  queued {s['queued']:,}  crashes {s['crashes']}  "
        f"handed back {s['handed_back']:,}"
    )


def _details(snap: dict[str, Any]) -> str:
    if "error" in snap:
        return ""
    s = snap["stats"]
    rows = [["pid", "state", "in flight", "finished", "rss", "private", "fds", "age"]]
    for w in sorted(s["workers"], key=lambda w: w["pid"]):
        rows.append(
            [
                str(w["pid"]),
                w["state"] or "-",
                str(w["inflight"]),
                f"{w['tasks_completed']:,}",
                _mib(w["rss"]),
                _mib(w["private_rss"]),
                "-" if w["fds"] is None else str(w["fds"]),
                _age(w["age"]),
            ]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(n) for c, n in zip(r, widths, strict=True)).rstrip() for r in rows]
    recycles = ", ".join(f"{k} {v}" for k, v in sorted(s["recycles"].items())) or "none"
    leases = sum(s.get("leases", {}).values())
    lines.append(f"recycles: {recycles}; leases held: {leases}")
    return "\n".join(lines)


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def _pid_of(path: Path) -> int | str:
    head = path.name.split("-", 1)[0]
    return int(head) if head.isdigit() else head


if __name__ == "__main__":
    sys.exit(main())
