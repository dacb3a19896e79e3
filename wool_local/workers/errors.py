"""Exceptions the worker layer raises to callers."""

from __future__ import annotations

import os
import signal


class WorkerCrashed(Exception):
    """The worker running a dispatch died before answering it.

    ``exitcode`` is the worker's exit status when it exited, ``signal`` the
    signal number when a signal killed it (SIGKILL, SIGSEGV, ...).
    """

    def __init__(
        self,
        pid: int,
        *,
        exitcode: int | None = None,
        signal: int | None = None,
        detail: str = "",
    ) -> None:
        self.pid = pid
        self.exitcode = exitcode
        self.signal = signal
        self.detail = detail
        super().__init__(pid, exitcode, signal, detail)

    @classmethod
    def from_wait_status(cls, pid: int, status: int, detail: str = "") -> WorkerCrashed:
        code = os.waitstatus_to_exitcode(status)
        if code < 0:
            return cls(pid, signal=-code, detail=detail)
        return cls(pid, exitcode=code, detail=detail)

    def __str__(self) -> str:
        if self.signal is not None:
            try:
                how = f"killed by {signal.Signals(self.signal).name}"
            except ValueError:
                how = f"killed by signal {self.signal}"
        elif self.exitcode is not None:
            how = f"exited with code {self.exitcode}"
        else:
            how = "was lost"
        text = f"worker process {self.pid} {how} while running this dispatch"
        return f"{text} ({self.detail})" if self.detail else text


class PoolClosed(RuntimeError):
    """The pool was stopped, or is broken, and takes no more dispatches."""


class SpawnFailed(RuntimeError):
    """The zygote could not fork a worker (out of memory or processes, say)."""
