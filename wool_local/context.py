"""``RuntimeContext``: ambient settings for the dispatches made in a block."""

from __future__ import annotations

from typing import Any

from .workers.context import ContextVar, Token

# A wool_local context variable: it travels with each dispatch, so routines
# that dispatch onward from a worker inherit the timeout of their caller.
_dispatch_timeout: ContextVar[float | None] = ContextVar(
    "dispatch_timeout", namespace="wool_local", default=None
)


def ambient_dispatch_timeout() -> float | None:
    return _dispatch_timeout.get()


class RuntimeContext:
    """Override the dispatch timeout for every dispatch made inside the ``with`` block."""

    def __init__(self, *, dispatch_timeout: float | None = None) -> None:
        if dispatch_timeout is not None and dispatch_timeout <= 0:
            raise ValueError(f"dispatch_timeout must be positive, got {dispatch_timeout}")
        self.dispatch_timeout = dispatch_timeout
        self._token: Token[float | None] | None = None

    def __enter__(self) -> RuntimeContext:
        self._token = _dispatch_timeout.set(self.dispatch_timeout)
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._token is not None
        _dispatch_timeout.reset(self._token)
        self._token = None
