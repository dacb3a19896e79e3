"""Routines for the `wool` peer of ``scripts/bench.py``, kept apart so wool is imported late.

``wool`` (the distributed runtime) pulls in gRPC, which registers fork handlers and may
start threads; bench.py imports this module only when it runs the wool cases, after every
other case, so nothing it sets up can affect the others. wool starts its workers with the
``spawn`` start method; they find these routines by importing this module (the parent's
``sys.path``, which holds ``scripts/``, is handed to them).
"""

from __future__ import annotations

import logging
from typing import Any

import wool

# wool logs every worker start and stop at INFO; the benchmark output has no use for it.
logging.getLogger("wool").setLevel(logging.WARNING)


@wool.routine
async def wool_noop(x: Any = None) -> Any:
    """Return the argument: a dispatch with (almost) nothing to do."""
    return x


@wool.routine
async def wool_echo(data: bytes) -> bytes:
    """Return the payload, which then travels back."""
    return data


def pool(workers: int) -> Any:
    """A wool pool of ``workers`` local worker processes (an async context manager)."""
    return wool.WorkerPool(spawn=workers)
