"""The ambient pool of ``wool-local run``: one pool for the whole script, started at first use.

:func:`install` builds a :class:`~wool_local.background.BackgroundPool` with
the command's options and makes it the process's ambient pool: routines the
script calls where no pool is bound, and ``Executor()``s it builds with no
arguments, run on it. It also applies the command's defaults (a dispatch
timeout for every routine call, progress bars for maps) and makes forked
workers write whole lines. :meth:`Ambient.finish` stops the pool when the
script is over: its work finishes, or is cancelled after an exception or a
Ctrl-C; a Ctrl-C during that stop kills the workers at once.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import TYPE_CHECKING, Any

from . import output

if TYPE_CHECKING:
    from .workers import Hub


class Ambient:
    """The pool ``wool-local run`` gives a script, and its end."""

    def __init__(self, options: dict[str, Any]) -> None:
        from .background import BackgroundPool, install_ambient
        from .pool import WorkerPool

        self.background = BackgroundPool(WorkerPool(**options), name="wool_local.run")
        self._hub: Hub | None = None
        install_ambient(self.background)

    def finish(self, aborted: bool, interrupted: bool = False) -> None:
        """Stop the pool: let its work finish, or (``aborted``) cancel it, within the
        stop timeout; a Ctrl-C meanwhile kills the workers at once (``interrupted``:
        the script ended by one; say so)."""
        from .background import uninstall_ambient

        uninstall_ambient()
        try:
            self._hub = self.background.pool.hub  # (the pool lets go of it as it stops)
        except RuntimeError:
            self._hub = None  # never started
        previous = signal.signal(signal.SIGINT, self._kill_now)
        if interrupted and self._hub is not None:
            print("wool-local: interrupted; stopping (Ctrl-C again kills the workers)",
                  file=sys.stderr, flush=True)  # fmt: skip
        try:
            self.background.stop(wait=True, abort=aborted)
        finally:
            signal.signal(signal.SIGINT, previous)

    def _kill_now(self, signum: int, frame: Any) -> None:
        """A second Ctrl-C: kill the workers (the zygote reports their deaths, so the
        stop in progress ends at once)."""
        print("wool-local: killing the workers", file=sys.stderr)
        hub = self._hub
        for handle in hub.workers() if hub is not None else ():
            try:
                os.kill(handle.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.background.stop(wait=False, abort=True)


def install(
    options: dict[str, Any],
    *,
    timeout: float | None = None,
    progress: bool | None = None,
    prefix_output: bool = False,
) -> Ambient:
    """Make a pool with ``options`` the ambient one (it starts at first use), with a
    default dispatch ``timeout`` and map ``progress`` for the rest of the process."""
    output.whole_lines(prefix=prefix_output)
    if timeout is not None:
        from .context import _dispatch_timeout

        _dispatch_timeout.set(timeout)  # the script's context inherits it
    if progress is not None:
        from . import mapping

        mapping.default_progress = progress
    return Ambient(options)
