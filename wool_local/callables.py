"""What a worker runs for a callable that is not a routine: plain functions as call bodies.

A worker awaits ``fn(*args, **kwargs)``. A routine's body, and any ``async
def`` function, can be sent as it is; a plain function (a ``def``, a builtin,
a lambda, a closure) is wrapped in a :class:`SyncBody` whose call runs it
and returns its result. The wrapper keeps the function's name (for error
messages) and is cached per function, so a function is pickled once per
pool, not once per call.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

from .routine import Routine


class ByIdentity:
    """A small cache keyed by an object's identity (functions, bound methods and
    partials need not be hashable, and equal ones may differ). Each entry keeps its
    key alive, so an id stays its key's; the cache empties when it reaches ``most``."""

    def __init__(self, most: int = 1024) -> None:
        self._most = most
        self._entries: dict[int, tuple[Any, Any]] = {}

    def get(self, key: Any) -> Any:
        """The value kept for ``key``, or None."""
        entry = self._entries.get(id(key))
        return entry[1] if entry is not None and entry[0] is key else None

    def put(self, key: Any, value: Any) -> Any:
        """Keep ``value`` for ``key``; ``value``."""
        if len(self._entries) >= self._most:
            self._entries.clear()
        self._entries[id(key)] = (key, value)
        return value

    def clear(self) -> None:
        self._entries.clear()


#: The SyncBody of each plain function wrapped so far.
_wrappers = ByIdentity()


class SyncBody:
    """Runs the plain function ``fn`` as a call body (in the worker's loop)."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self.__qualname__ = getattr(fn, "__qualname__", None) or type(fn).__qualname__
        self.__module__ = getattr(fn, "__module__", None) or "builtins"

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __reduce__(self) -> Any:
        return (SyncBody, (self.fn,))

    def __repr__(self) -> str:
        return f"<SyncBody {self.__qualname__}>"


def body_of(fn: Any) -> Any:
    """What a worker awaits for ``fn``: a routine's body, an ``async def`` function
    itself, or ``fn`` wrapped in a :class:`SyncBody`. Raises TypeError for an async
    generator function (stream it with ``async for`` over the routine instead) and
    for what is not callable."""
    if isinstance(fn, Routine):
        _no_stream(fn)
        return fn._body
    if isinstance(fn, functools.partial) and isinstance(fn.func, Routine):
        # A routine used as a method: ``obj.method`` is the routine bound by a partial.
        _no_stream(fn.func)
        return functools.partial(fn.func._body, *fn.args, **fn.keywords)
    if not callable(fn):
        raise TypeError(f"{fn!r} is not callable")
    if inspect.isasyncgenfunction(fn):
        raise TypeError(f"{fn!r} is an async generator function; it cannot be submitted")
    if inspect.iscoroutinefunction(fn):
        return fn
    return _wrappers.get(fn) or _wrappers.put(fn, SyncBody(fn))


def _no_stream(routine: Routine) -> None:
    if routine._streams:
        raise TypeError(
            f"{routine.__qualname__} is an async generator routine; iterate it with "
            "'async for' instead of submitting it"
        )
