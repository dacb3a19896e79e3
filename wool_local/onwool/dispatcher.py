"""The caller's side of the wool backend: a dispatcher with the hub's interface.

Routines, ``map`` and the executor dispatch through an object with
``call(fn, args, kwargs)`` (awaitable) and ``stream(fn, args, kwargs)`` (an
async generator); the hub is one, :class:`WoolDispatcher` is the other. It
sends ``fn`` through the trampolines of :mod:`.trampolines` on the wool pool
whose ``wool.WorkerProxy`` it holds, with the caller's context snapshot, and
applies what comes back. ``__proxy__`` holds a :class:`WoolProxy` while a
wool-backed pool runs; in a wool worker, the trampolines bind the worker's
own (:func:`worker_proxy`), whose dispatcher uses the ``wool.__proxy__`` wool
bound for the routine, so nested calls dispatch through wool again.

Calls from another event loop than the pool's (a script under ``wool-local
run`` whose ambient pool runs in a thread) run on the pool's loop, as the
hub's do (:mod:`wool_local.workers.crossloop`): wool's connections belong to
the loop that opened them.

Errors: what the callable raised arrives with its type (wool pickles it with
its traceback); wool's transport errors become wool_local's (:mod:`.errors`);
a call through a pool that has stopped raises :class:`~wool_local.PoolClosed`.
"""

from __future__ import annotations

import asyncio
import contextvars
import sys
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine
from typing import Any, NoReturn

from ..routine import _Body
from ..workers import context, crossloop
from ..workers.errors import PoolClosed
from ..workers.proxy import PROXY_KEY
from . import trampolines
from .errors import translate
from .trampolines import BACK_ATTR, DONE, NEXT, RAISED, THROW


class WoolProxy:
    """What ``wool_local.__proxy__`` holds where routines dispatch through wool."""

    __wool_immutable__ = True  # its pickle never changes: encoders may reuse it

    def __init__(self, dispatcher: WoolDispatcher) -> None:
        self._dispatcher = dispatcher

    @property
    def dispatcher(self) -> WoolDispatcher:
        return self._dispatcher

    async def start(self) -> WoolDispatcher:
        return self._dispatcher

    def __reduce__(self) -> Any:
        # Never sent by the backend itself (it binds the worker's proxy); a copy the
        # user sends somewhere is the receiving process's own.
        return (worker_proxy, (self._dispatcher.by_name,))

    def __repr__(self) -> str:
        return f"<WoolProxy {self._dispatcher!r}>"


class WoolDispatcher:
    """Dispatches calls and streams through a wool pool.

    ``wool_context``: the context the wool pool was entered in, which dispatches
    run in (None in a wool worker: the routine's context has what wool needs).
    ``home``: the loop the pool runs on (None: any). ``by_name``: send routines of
    ``__main__`` by name (every worker is a spawned child that re-ran the script)
    rather than by value (workers elsewhere, found through discovery).
    """

    def __init__(
        self,
        wool_context: contextvars.Context | None,
        home: asyncio.AbstractEventLoop | None,
        *,
        by_name: bool,
    ) -> None:
        self.wool_context = wool_context
        self.loop = home
        self.by_name = by_name
        self.closed = False
        self.proxy = WoolProxy(self)
        self._running: set[asyncio.Task[Any]] = set()  # dispatches in flight
        #: Remote generators of streams open here (between steps too), with the context
        #: their steps run in: closed with the pool.
        self._open: dict[Any, contextvars.Context | None] = {}

    # -- calls ------------------------------------------------------------------

    async def call(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Run ``fn(*args, **kwargs)`` (a coroutine function) in a wool worker."""
        self._check()
        fn = self._shippable(fn)
        snapshot = _outgoing()
        home = self.loop
        try:
            if home is None or home is asyncio.get_running_loop():
                result, back = await self._exchange(fn, args, kwargs, snapshot)
            else:
                result, back = await crossloop.run_on(
                    home, self._exchange(fn, args, kwargs, snapshot)
                )
        except asyncio.CancelledError:
            self._stopped_under()
            raise
        except Exception as exc:
            _raise_translated(exc, _apply_here)
        if back:  # what the routine set comes back, as in one process
            _apply_here(context.decode(back))
        if type(result) is trampolines.Raised:
            raise result.exc
        return result

    async def _exchange(
        self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], snapshot: Any
    ) -> tuple[Any, Any]:
        return await self._in_pool(trampolines.run_call(fn, args, kwargs, snapshot, self.by_name))

    def _in_pool(self, coro: Coroutine[Any, Any, Any], ctx: Any = None) -> Awaitable[Any]:
        """``coro`` run in a copy of the context the pool was entered in (or ``ctx``).

        wool keeps the pool's state in stdlib context variables (its proxy, the
        discovery subscribers, its context chain) set when the pool is entered; a
        dispatch from a task that does not descend from that context (a thread's
        call, the background pool's tasks) would wait forever. Awaiting the task
        passes a cancellation on to it."""
        base = self.wool_context
        if base is None:  # in a wool worker: the routine's own context has them
            return coro
        task = asyncio.get_running_loop().create_task(
            coro, context=ctx if ctx is not None else base.copy()
        )
        self._running.add(task)  # (for close; done tasks leave the set)
        task.add_done_callback(self._running.discard)
        return task

    async def close(self, timeout: float) -> None:
        """The pool is stopping: refuse new dispatches and cancel those in flight (in
        their workers too), waiting up to ``timeout`` seconds for them to end; their
        callers get PoolClosed, as a local pool's do (wool itself would let them run)."""
        self.closed = True
        running = list(self._running)
        for task in running:
            task.cancel()
        # A stream paused between steps has no task to cancel: close its remote
        # generator (its finally runs there), or wool's worker would never stop.
        open_streams, self._open = self._open, {}
        for remote, ctx in open_streams.items():
            running.append(asyncio.ensure_future(self._in_pool(_aclose(remote), ctx)))
        if running:
            await asyncio.wait(running, timeout=timeout)

    def _stopped_under(self) -> None:
        """A dispatch ended cancelled: PoolClosed if the pool's close did it (not a
        cancellation of the caller's own)."""
        task = asyncio.current_task()
        if self.closed and (task is None or not task.cancelling()):
            raise PoolClosed("the pool stopped while this dispatch ran") from None

    # -- streams ----------------------------------------------------------------

    def stream(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> AsyncGenerator:
        """Iterate the async generator function ``fn`` in a wool worker, one step per
        pull; ``asend``, ``athrow`` and ``aclose`` reach the remote generator."""
        self._check()
        fn = self._shippable(fn)
        home = self.loop
        here: asyncio.AbstractEventLoop | None
        try:
            here = asyncio.get_running_loop()
        except RuntimeError:
            here = home
        if home is None or home is here:
            return self._steps(fn, args, kwargs, _apply_here)
        changes: list[dict[str, Any]] = []
        return crossloop.relay_stream(home, self._steps(fn, args, kwargs, changes.append), changes)

    async def _steps(
        self,
        fn: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        on_back: Callable[[dict[str, Any]], None],
    ) -> AsyncGenerator:
        sent = _outgoing() or {}
        remote = trampolines.run_stream(fn, args, kwargs, sent or None, self.by_name)
        # Every step in one context: the pool's, as for calls (see _in_pool).
        ctx = None if self.wool_context is None else self.wool_context.copy()
        self._open[remote] = ctx
        try:
            kind, item, back = await self._in_pool(remote.__anext__(), ctx)
            while True:
                if back:
                    on_back(context.decode(back))
                    sent.update(back)  # the caller has them now: not news to send
                if kind == DONE:
                    return
                if kind == RAISED:
                    setattr(item, BACK_ATTR, None)  # the routine's own: raised as it is
                    raise item
                try:
                    value = yield item
                except GeneratorExit:
                    raise
                except BaseException as exc:
                    message: tuple[int, Any, Any] = (THROW, exc, _news(sent))
                else:
                    message = (NEXT, value, _news(sent))
                if self.closed:  # (and close() closed the remote generator)
                    raise PoolClosed("the pool stopped while this stream was open")
                kind, item, back = await self._in_pool(remote.asend(message), ctx)
        except asyncio.CancelledError:
            self._stopped_under()
            raise
        except Exception as exc:
            _raise_translated(exc, on_back)
        finally:
            if self._open.pop(remote, False) is not False:  # (else close() closes it)
                await self._in_pool(remote.aclose(), ctx)

    # -- helpers ----------------------------------------------------------------

    def _check(self) -> None:
        if self.closed:
            raise PoolClosed("this wool-backed pool has stopped: it takes no more dispatches")

    def _shippable(self, fn: Any) -> Any:
        """``fn``, or for a routine of the main script, a stand-in that names it."""
        if self.by_name and type(fn) is _Body:
            routine = fn.routine
            module = sys.modules.get(routine.__module__)
            name = routine.__qualname__
            if (
                routine.__module__ in ("__main__", "__mp_main__")
                and module is not None
                and vars(module).get(name) is routine
            ):
                return _MainBody(name)
        return fn

    def __repr__(self) -> str:
        where = "worker" if self.wool_context is None else "pool"
        return f"<WoolDispatcher {where}{' closed' if self.closed else ''}>"


class _MainBody:
    """A routine of ``__main__`` sent by name: the worker looks it up in its own
    ``__main__`` (the script, re-run by the spawn start method)."""

    __slots__ = ("qualname",)

    def __init__(self, qualname: str) -> None:
        self.qualname = qualname

    def __reduce__(self) -> Any:
        return (trampolines.main_body, (self.qualname,))


def _outgoing() -> context.Snapshot | None:
    """The caller's context snapshot, less ``__proxy__`` (the worker binds its own)."""
    snapshot = context.snapshot()
    if snapshot:
        snapshot.pop(PROXY_KEY, None)
    return snapshot or None


def _news(sent: dict[str, bytes]) -> context.Snapshot | None:
    """What the caller set since ``sent`` (now brought up to date)."""
    now = _outgoing()
    if not now:
        return None
    news = {key: data for key, data in now.items() if sent.get(key) != data}
    sent.update(news)
    return news or None


def _apply_here(values: dict[str, Any]) -> None:
    context.apply(values, back=True)


def _raise_translated(exc: Exception, on_back: Callable[[dict[str, Any]], None]) -> NoReturn:
    """Raise what a dispatch failed with: the routine's own exception as it is (after
    ``on_back`` applied the context changes it carried), wool's transport errors as
    wool_local's (:func:`.errors.translate`). A gRPC error the routine let out (it
    called some other service) is the routine's, not a lost worker."""
    if _apply_carried(exc, on_back):
        raise exc
    translated = translate(exc)
    if translated is exc:
        raise exc
    raise translated from exc


def _apply_carried(exc: BaseException, on_back: Callable[[dict[str, Any]], None]) -> bool:
    """Apply the context changes an exception carries from the worker, and drop them;
    whether it came from the callable (see :data:`.trampolines.BACK_ATTR`)."""
    if not hasattr(exc, BACK_ATTR):
        return False
    back = getattr(exc, BACK_ATTR)
    try:
        delattr(exc, BACK_ATTR)
    except AttributeError:
        pass
    if back is not None:
        on_back(context.decode(back))
    return True


async def _aclose(remote: Any) -> None:
    """Close a remote generator as the pool stops; one that is stepping (its step is
    cancelled) or already gone needs nothing more, and an error there has nobody
    left to tell."""
    try:
        await remote.aclose()
    except Exception:
        pass


_worker_proxies: dict[bool, WoolProxy] = {}


def worker_proxy(by_name: bool = True) -> WoolProxy:
    """In a wool worker: the proxy routines dispatch through (one per process)."""
    proxy = _worker_proxies.get(by_name)
    if proxy is None:
        proxy = _worker_proxies[by_name] = WoolProxy(WoolDispatcher(None, None, by_name=by_name))
    return proxy
