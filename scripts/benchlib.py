"""Machine details shared by the benchmark scripts (so every result says where it ran)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


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
    """Output of a git command in ``root`` (this repository by default), or None."""
    try:
        done = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def machine() -> dict[str, str]:
    """Where a result was measured: CPU, kernel, Python, the commit."""
    return {
        "cpu": cpu_model(),
        "cpus": str(os.cpu_count()),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "commit": git("rev-parse", "--short", "HEAD") or "unknown",
    }


def machine_line() -> str:
    """:func:`machine` on one line, for the head of a report."""
    return ", ".join(f"{k} {v}" for k, v in machine().items())


def write_json(path: str | None, rows: list[dict[str, object]]) -> None:
    """Write ``rows`` with the machine details to ``path`` (nothing if it is None)."""
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump({"machine": machine(), "rows": rows}, f, indent=2)
