"""Run a function in a forked child and collect how it ended, with bounded waits."""

from __future__ import annotations

import os
import select
import signal
import sys
import traceback
from collections.abc import Callable
from typing import Any


def fork(fn: Callable[..., Any], *args: Any) -> int:
    """Run ``fn(*args)`` in a forked child; exit code 0 on success, 1 on an exception."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.signal(signal.SIGALRM, signal.SIG_DFL)  # pytest-timeout's alarm
            fn(*args)
            code = 0
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            os._exit(code)
    return pid


def join(pid: int, timeout: float = 10.0) -> int:
    """Wait for ``pid`` to exit (bounded) and return its exit code (-signal if killed)."""
    fd = os.pidfd_open(pid)
    try:
        if not select.select([fd], [], [], timeout)[0]:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise TimeoutError(f"child {pid} did not exit within {timeout}s")
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def kill(pid: int) -> int:
    """SIGKILL ``pid`` and reap it."""
    os.kill(pid, signal.SIGKILL)
    return join(pid)


class Rendezvous:
    """A child says "ready" and then parks until killed or released; the parent waits for it."""

    def __init__(self) -> None:
        self._ready = os.pipe()
        self._park = os.pipe()

    def ready_and_park(self) -> None:
        """In the child: announce readiness, then block until :meth:`release` or death."""
        os.write(self._ready[1], b"!")
        os.read(self._park[0], 1)

    def wait_ready(self, timeout: float = 10.0) -> None:
        """In the parent: wait (bounded) for the child's announcement."""
        if not select.select([self._ready[0]], [], [], timeout)[0]:
            raise TimeoutError("child never became ready")
        os.read(self._ready[0], 1)

    def release(self) -> None:
        os.write(self._park[1], b"!")

    def close(self) -> None:
        for fd in (*self._ready, *self._park):
            os.close(fd)
