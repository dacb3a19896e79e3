"""``@routine``: an async function or async generator that runs in the pool."""

from __future__ import annotations

import functools
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import asyncio
    from collections.abc import AsyncGenerator, Callable
    from typing import Any

    from .workers import get_dispatcher, zygote_main_has

# Importing this module (it runs when ``import wool_local`` does) and decorating a
# function import nothing of the runtime: asyncio, the hub and the ipc layer come in
# at the first call of any routine, through _load_runtime, which rebinds the names
# below to the real things (so later calls pay nothing for the laziness).


def _load_runtime() -> None:
    """Import the runtime and bind what calls use: the two wool_local variables every
    call reads (declared in every process that runs the runtime, so their raw getters
    are exact and save a call), asyncio, and the dispatcher lookups."""
    global asyncio, get_dispatcher, zygote_main_has, _proxy_value, _timeout_value
    import asyncio

    declared = "wool_local.context" in sys.modules
    from .context import _dispatch_timeout
    from .workers import __proxy__, get_dispatcher, zygote_main_has

    _proxy_value = __proxy__.raw_get
    # WorkerPool declares the timeout before it forks workers. Declared only now, a
    # value received before (kept aside as unbound) is visible to get(), not raw_get.
    _timeout_value = _dispatch_timeout.raw_get if declared else _dispatch_timeout.get


def _loading(name: str) -> Callable[..., Any]:
    """A stand-in for the runtime function ``name``: loads the runtime, then calls it."""

    def first_call(*args: Any) -> Any:
        _load_runtime()
        return globals()[name](*args)

    return first_call


_proxy_value: Callable[[Any], Any] = _loading("_proxy_value")
_timeout_value: Callable[[Any], Any] = _loading("_timeout_value")
if not TYPE_CHECKING:
    get_dispatcher = _loading("get_dispatcher")
    zygote_main_has = _loading("zygote_main_has")


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
        streams = _is_stream_function(fn)
        if dispatch_timeout is not None and dispatch_timeout <= 0:
            raise ValueError(f"dispatch_timeout must be positive, got {dispatch_timeout}")
        functools.update_wrapper(self, fn)
        self._kind = kind
        self._streams = streams
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
            coro: Any = _started_call(proxy, self, args, kwargs)
            coro.__qualname__ = self.__qualname__
            return coro
        timeout = self.dispatch_timeout or _timeout_value(None)
        if self._streams:
            gen = dispatcher.stream(self._body, args, kwargs)
            return gen if timeout is None else _relay(self, lambda: gen, timeout=timeout)
        if timeout is None:
            coro = dispatcher.call(self._body, args, kwargs)
        else:
            coro = _timed_call(self, dispatcher, args, kwargs, timeout)
        # Named like the routine: a forgotten await warns "coroutine 'scale' was
        # never awaited", not about the dispatcher's method.
        coro.__qualname__ = self.__qualname__
        return coro

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


_CO_COROUTINE = 0x80  # inspect.CO_COROUTINE and CO_ASYNC_GENERATOR, without inspect
_CO_ASYNC_GENERATOR = 0x200
_FUNCTION = type(_load_runtime)


def _is_stream_function(fn: Any) -> bool:
    """Whether ``fn`` is an async generator function (False: an ``async def``); a
    TypeError for anything else. A plain function is told by its code flags; other
    callables (partials, methods, marked functions) by inspect, imported only then."""
    if type(fn) is _FUNCTION:
        flags = fn.__code__.co_flags
        if flags & _CO_COROUTINE:
            return False
        if flags & _CO_ASYNC_GENERATOR:
            return True
    import inspect

    if inspect.iscoroutinefunction(fn):
        return False
    if inspect.isasyncgenfunction(fn):
        return True
    raise TypeError(
        f"@routine needs an 'async def' function or async generator, got {fn!r}; "
        "make it 'async def' (blocking code in it still runs in the worker)"
    )


def _timed_out(routine: Routine, timeout: float, what: str = "") -> TimeoutError:
    """The TimeoutError of a dispatch past its limit, naming the routine and the limit."""
    return TimeoutError(f"{routine.__qualname__}() exceeded dispatch_timeout={timeout} s{what}")


async def _started_call(proxy: Any, routine: Routine, args: Any, kwargs: Any) -> Any:
    await proxy.start()
    return await routine(*args, **kwargs)


def _started_stream(proxy: Any, routine: Routine, args: Any, kwargs: Any) -> AsyncGenerator:
    return _relay(routine, lambda: routine(*args, **kwargs), start=proxy.start())


async def _timed_call(
    routine: Routine, dispatcher: Any, args: Any, kwargs: Any, timeout: float
) -> Any:
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            return await dispatcher.call(routine._body, args, kwargs)
    except TimeoutError:
        if deadline.expired():  # this limit, not a TimeoutError the routine raised
            raise _timed_out(routine, timeout) from None
        raise


async def _step(routine: Routine, step: Any, timeout: float | None) -> Any:
    """Await one step of a stream, bounded by ``timeout`` if given."""
    if timeout is None:
        return await step
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            return await step
    except TimeoutError:
        if deadline.expired():
            raise _timed_out(routine, timeout, " waiting for its next item") from None
        raise


async def _relay(
    routine: Routine, make: Any, *, start: Any = None, timeout: float | None = None
) -> AsyncGenerator:
    """Forward the stream ``make()`` returns, step by step (asend, athrow and aclose
    pass through): after awaiting ``start`` if given, each step bounded by ``timeout``."""
    if start is not None:
        await start
    gen = make()
    try:
        item = await _step(routine, gen.__anext__(), timeout)
        while True:
            try:
                sent = yield item
            except GeneratorExit:
                raise
            except BaseException as exc:
                item = await _step(routine, gen.athrow(exc), timeout)
            else:
                item = await _step(routine, gen.asend(sent), timeout)
    except StopAsyncIteration:
        return
    finally:
        await gen.aclose()


def routine(fn: Any = None, /, *, dispatch_timeout: float | None = None) -> Any:
    """Make ``fn`` dispatch to the pool: ``@routine`` or ``@routine(dispatch_timeout=5)``."""
    if fn is None:
        return lambda f: Routine(f, dispatch_timeout=dispatch_timeout)
    return Routine(fn, dispatch_timeout=dispatch_timeout)
