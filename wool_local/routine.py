"""``@routine``: an async function or async generator that runs in the pool."""

from __future__ import annotations

import asyncio
import functools
import inspect
import sys
from collections.abc import AsyncGenerator
from typing import Any

from .context import _dispatch_timeout
from .workers import __proxy__, get_dispatcher, zygote_main_has

# The two wool_local variables every call reads: both are declared in every process
# (this package is imported there), so their raw getters are exact, and save a call.
_proxy_value = __proxy__.raw_get
_timeout_value = _dispatch_timeout.raw_get


class NoPoolError(RuntimeError):
    """A routine was called with no pool to dispatch it to."""


_KINDS = ("function", "staticmethod", "classmethod")


class Routine:
    """A dispatching wrapper around an ``async def`` or async generator function.

    Called where a pool is active, it runs the function in a worker; inside a
    worker the body runs locally and the routines it calls dispatch again.
    """

    # Set by functools.update_wrapper from the wrapped function.
    __qualname__: str
    __wrapped__: Any

    def __init__(self, fn: Any, *, dispatch_timeout: float | None = None) -> None:
        kind = "function"
        if isinstance(fn, staticmethod):
            kind, fn = "staticmethod", fn.__func__
        elif isinstance(fn, classmethod):
            kind, fn = "classmethod", fn.__func__
        if not (inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)):
            raise TypeError(
                f"@routine needs an 'async def' function or async generator, got {fn!r}; "
                "make it 'async def' (blocking code in it still runs in the worker)"
            )
        if dispatch_timeout is not None and dispatch_timeout <= 0:
            raise ValueError(f"dispatch_timeout must be positive, got {dispatch_timeout}")
        functools.update_wrapper(self, fn)
        self._kind = kind
        self._streams = inspect.isasyncgenfunction(fn)
        self.dispatch_timeout = dispatch_timeout
        self._body = _Body(self)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        proxy = _proxy_value(None)
        dispatcher = get_dispatcher() if proxy is None else proxy.dispatcher
        if dispatcher is None:
            if proxy is None:
                raise NoPoolError(
                    f"{self.__qualname__}() was called outside a worker pool; start one with "
                    "'async with wool_local.WorkerPool(): ...' and call the routine inside it"
                )
            # The first dispatch through this proxy in this process: start it first.
            if self._streams:
                return _started_stream(proxy, self, args, kwargs)
            return _started_call(proxy, self, args, kwargs)
        timeout = self.dispatch_timeout or _timeout_value(None)
        if self._streams:
            return _timed_stream(dispatcher.stream(self._body, args, kwargs), timeout)
        if timeout is None:
            return dispatcher.call(self._body, args, kwargs)
        return _timed_call(dispatcher.call(self._body, args, kwargs), timeout)

    def __get__(self, obj: Any, cls: type | None = None) -> Any:
        if self._kind == "staticmethod":
            return self
        if self._kind == "classmethod":
            return functools.partial(self, cls if cls is not None else type(obj))
        if obj is None:
            return self
        return functools.partial(self, obj)

    def __reduce__(self) -> Any:
        module, qualname = self.__module__, self.__qualname__
        if _importable(self, module, qualname):
            return (_resolve, (module, qualname))
        fn = self.__wrapped__
        if self._kind == "staticmethod":
            fn = staticmethod(fn)
        elif self._kind == "classmethod":
            fn = classmethod(fn)
        return (_rebuild, (fn, self.dispatch_timeout))

    def __repr__(self) -> str:
        return f"<routine {self.__module__}.{self.__qualname__}>"


class _Body:
    """What is sent to a worker: runs the routine's function locally there."""

    def __init__(self, routine: Routine) -> None:
        self.routine = routine
        # Named like the routine, in error messages and when deciding how to pickle.
        self.__qualname__ = routine.__qualname__
        self.__module__ = routine.__module__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.routine.__wrapped__(*args, **kwargs)

    def __reduce__(self) -> Any:
        return (_body_of, (self.routine,))


def _body_of(routine: Routine) -> _Body:
    return routine._body


def _rebuild(fn: Any, dispatch_timeout: float | None) -> Routine:
    return Routine(fn, dispatch_timeout=dispatch_timeout)


def _lookup(module: str, qualname: str) -> Any:
    obj: Any = sys.modules.get(module)
    if obj is None:
        obj = __import__(module, fromlist=["_"])
    for part in qualname.split("."):
        # vars() first: a class attribute lookup would bind classmethods.
        attrs = getattr(obj, "__dict__", {})
        obj = attrs[part] if part in attrs else getattr(obj, part)
    if isinstance(obj, staticmethod | classmethod):
        obj = obj.__func__
    return obj


def _resolve(module: str, qualname: str) -> Routine:
    obj = _lookup(module, qualname)
    if not isinstance(obj, Routine):
        raise LookupError(f"{module}.{qualname} is not a wool_local routine here")
    return obj


def _importable(routine: Routine, module: str, qualname: str) -> bool:
    if "<locals>" in qualname or module not in sys.modules:
        return False
    if module == "__main__" and not zygote_main_has(_lookup_top(module, qualname)):
        return False
    try:
        return _lookup(module, qualname) is routine
    except Exception:
        return False


def _lookup_top(module: str, qualname: str) -> Any:
    return vars(sys.modules[module]).get(qualname.split(".")[0])


async def _started_call(proxy: Any, routine: Routine, args: Any, kwargs: Any) -> Any:
    await proxy.start()
    return await routine(*args, **kwargs)


def _started_stream(proxy: Any, routine: Routine, args: Any, kwargs: Any) -> AsyncGenerator:
    return _relay(lambda: routine(*args, **kwargs), start=proxy.start())


async def _timed_call(coro: Any, timeout: float) -> Any:
    async with asyncio.timeout(timeout):
        return await coro


def _timed_stream(gen: AsyncGenerator, timeout: float | None) -> AsyncGenerator:
    if timeout is None:
        return gen
    return _relay(lambda: gen, timeout=timeout)


async def _relay(make: Any, *, start: Any = None, timeout: float | None = None) -> AsyncGenerator:
    """Forward the stream ``make()`` returns, step by step (asend, athrow and aclose
    pass through): after awaiting ``start`` if given, each step bounded by ``timeout``."""
    if start is not None:
        await start
    gen = make()
    try:
        async with asyncio.timeout(timeout):
            item = await gen.__anext__()
        while True:
            try:
                sent = yield item
            except GeneratorExit:
                raise
            except BaseException as exc:
                async with asyncio.timeout(timeout):
                    item = await gen.athrow(exc)
            else:
                async with asyncio.timeout(timeout):
                    item = await gen.asend(sent)
    except StopAsyncIteration:
        return
    finally:
        await gen.aclose()


def routine(fn: Any = None, /, *, dispatch_timeout: float | None = None) -> Any:
    """Make ``fn`` dispatch to the pool: ``@routine`` or ``@routine(dispatch_timeout=5)``."""
    if fn is None:
        return lambda f: Routine(f, dispatch_timeout=dispatch_timeout)
    return Routine(fn, dispatch_timeout=dispatch_timeout)
