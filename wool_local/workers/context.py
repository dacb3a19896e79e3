"""Context variables that follow a dispatch to its worker and back.

:class:`ContextVar` has the surface of :class:`contextvars.ContextVar` and is
built on one: inside a process it behaves exactly like the stdlib (asyncio
tasks get copies, tokens reset, ...). Across a dispatch, the values the
caller *set* (defaults stay home) travel with the call; when the routine
returns (or an async generator yields), the values set in the routine's
context travel back and are set in the caller's, so ``await routine()``
observes what ``await coroutine()`` would in one process. A
``forward_only`` variable travels to the worker but never back.

On the wire a variable is its key, ``"<namespace>:<name>"`` (the namespace
defaults to the declaring module), so both processes agree without a
registry. A value whose variable this process has not declared yet (its
module is not imported here) is kept as is and passed along: it becomes
visible the moment the variable is declared. Tokens do not travel: a token
belongs to the context (and so the process) that made it.
"""

from __future__ import annotations

import contextvars
import pickle
import sys
import warnings
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

from . import payload

T = TypeVar("T")

#: What :attr:`Token.old_value` is when the variable was not set before.
MISSING = contextvars.Token.MISSING

_NO_DEFAULT: Any = object()
_UNSET: Any = object()

#: Every declared variable of this process, by key. Variables are meant to be
#: declared once, at module level, like stdlib ones; they are never dropped.
_registry: dict[str, ContextVar[Any]] = {}
#: ``(key, stdlib getter)`` of each, for the loops every dispatch runs; and of
#: those whose values may travel back (not forward-only).
_getters: list[tuple[str, Any]] = []
_back_getters: list[tuple[str, Any]] = []

#: Bumped by every set and reset of a variable of this process, in any context, and by
#: :func:`apply`: while it reads the same, nothing was set (the converse need not hold:
#: a set in another task bumps it too): a cheap first look for a hot path that wants to
#: know whether the current context's values may have changed.
writes = 0

#: Values received for keys no variable of this process has declared (yet).
_unbound: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "wool_local.unbound", default=None
)


class Binding(Protocol):
    """What a :class:`Binder` makes of one set: released once, by the reset."""

    def release(self) -> None: ...


class Binder(Protocol):
    """Follows the sets and resets of one variable (see ``ContextVar._binder``)."""

    def bind(self, value: Any) -> Binding | None: ...


class ContextDecodeWarning(RuntimeWarning):
    """A context variable's value could not be rebuilt here; the dispatch went on without it.

    Turn it into an error with ``warnings.simplefilter("error", ContextDecodeWarning)``.
    """


class ContextVar(Generic[T]):
    """A :class:`contextvars.ContextVar` whose values propagate across dispatches."""

    __slots__ = ("_binder", "_default", "_inner", "forward_only", "key", "name")

    def __init__(
        self,
        name: str,
        *,
        default: T = _NO_DEFAULT,
        namespace: str | None = None,
        forward_only: bool = False,
    ) -> None:
        if not isinstance(name, str):
            raise TypeError("context variable name must be a str")
        if namespace is None:
            namespace = sys._getframe(1).f_globals.get("__name__", "__main__")
            if namespace == "__mp_main__":
                # The main script re-run by a spawned process (wool's workers): its
                # variables are the caller's ``__main__`` ones.
                namespace = "__main__"
        key = f"{namespace}:{name}"
        if key in _registry:
            raise ValueError(
                f"a wool_local.ContextVar with key {key!r} already exists in this process; "
                "declare each variable once (at module level), or pass another namespace="
            )
        self.name = name
        self.key = key
        self.forward_only = forward_only
        self._default = default
        self._inner: contextvars.ContextVar[T] = contextvars.ContextVar(name)
        # Told of every set() and of the reset() that undoes it (``__proxy__`` in a
        # worker: a binding holds a lease); None for most variables.
        self._binder: Binder | None = None
        _registry[key] = self
        _getters.append((key, self._inner.get))
        if not forward_only:
            _back_getters.append((key, self._inner.get))

    @property
    def raw_get(self) -> Callable[[Any], Any]:
        """The underlying stdlib variable's ``get(default)``, for hot paths. It skips
        values received before the variable was declared, so it is exact only for a
        variable every process declares on import (``__proxy__``, the timeout)."""
        return self._inner.get

    def get(self, default: T = _NO_DEFAULT) -> T:
        """The value in the current context, else ``default``, else the variable's default."""
        value = self._inner.get(_UNSET)  # a sentinel, not LookupError: this is hot
        if value is not _UNSET:
            return value
        unbound = _unbound.get()
        if unbound is not None and self.key in unbound:
            return unbound[self.key]  # received before this variable was declared
        if default is not _NO_DEFAULT:
            return default
        if self._default is not _NO_DEFAULT:
            return self._default
        raise LookupError(self)

    def set(self, value: T) -> Token[T]:
        """Set the value in the current context; the token undoes exactly this set."""
        global writes
        writes += 1
        binder = self._binder
        if binder is None:
            return Token(self, self._inner.set(value))
        binding = binder.bind(value)  # first: if it fails, nothing was set
        try:
            return Token(self, self._inner.set(value), binding)
        except BaseException:
            if binding is not None:
                binding.release()
            raise

    def reset(self, token: Token[T]) -> None:
        """Restore the value from before ``token``'s set (stdlib rules and errors)."""
        if not isinstance(token, Token):
            raise TypeError(f"expected an instance of Token, got {type(token).__name__!r}")
        if token.var is not self:
            raise ValueError(f"{token!r} was created by a different ContextVar")
        global writes
        self._inner.reset(token._inner)
        writes += 1
        if token._binding is not None:
            token._binding.release()

    @property
    def default(self) -> Any:
        return MISSING if self._default is _NO_DEFAULT else self._default

    def __class_getitem__(cls, item: Any) -> Any:
        return cls

    def __repr__(self) -> str:
        default = "" if self._default is _NO_DEFAULT else f" default={self._default!r}"
        return f"<wool_local.ContextVar name={self.name!r} key={self.key!r}{default}>"


class Token(Generic[T]):
    """What :meth:`ContextVar.set` returns: undoes that one set, once, in its context."""

    __slots__ = ("_binding", "_inner", "var")

    MISSING = MISSING

    def __init__(
        self, var: ContextVar[T], inner: contextvars.Token[T], binding: Binding | None = None
    ) -> None:
        self.var = var
        self._inner = inner
        self._binding = binding  # what the set holds until this token resets it

    @property
    def old_value(self) -> Any:
        return self._inner.old_value

    def __class_getitem__(cls, item: Any) -> Any:
        return cls

    def __repr__(self) -> str:
        used = " used" if _token_used(self._inner) else ""
        return f"<wool_local.Token{used} var={self.var!r} at {id(self):#x}>"


def _token_used(inner: contextvars.Token[Any]) -> bool:
    return " used " in repr(inner)


# -- moving values across a dispatch -------------------------------------------

Snapshot = dict[str, bytes]


def snapshot() -> Snapshot | None:
    """Every value set in the current context (unbound keys too), each pickled on its
    own: what a dispatch sends (the hot path)."""
    out: Snapshot | None = None
    unbound = _unbound.get()
    if unbound:
        out = encode(dict(unbound))
    for key, get in _getters:
        value = get(_UNSET)
        if value is _UNSET:
            continue
        last = _last_pickled.get(key)
        if last is not None and last[0] is value:
            data = last[1]
        else:
            data = _pickle(key, value)
        if out is None:
            out = {}
        out[key] = data
    return out


_last_pickled: dict[str, tuple[Any, bytes]] = {}  # key -> (value, its pickle), one per key
_IMMUTABLE = (str, bytes, int, float, bool, type(None))


def forget_caches() -> None:
    """Drop values cached from another process (call in a freshly forked worker)."""
    _last_pickled.clear()
    _last_decoded.clear()


def _reusable(value: Any) -> bool:
    """Whether a value's pickle can be reused while it is the same object: immutable ones
    (a proxy says so with ``__wool_immutable__``); a mutable one may change in between."""
    return type(value) in _IMMUTABLE or getattr(value, "__wool_immutable__", False)


def encode(values: dict[str, Any]) -> Snapshot | None:
    """Pickle each value on its own; a value that cannot travel is a TypeError naming it."""
    if not values:
        return None
    return {key: _pickle(key, value) for key, value in values.items()}


def _pickle(key: str, value: Any) -> bytes:
    """The pickle of variable ``key``'s ``value``; a TypeError naming it if it cannot travel."""
    last = _last_pickled.get(key)
    if last is not None and last[0] is value:
        return last[1]  # the same immutable object as last time: reuse its pickle
    try:
        data = pickle.dumps(value, 5)
    except Exception:
        try:
            data = payload.by_value_dumps(value)
        except Exception as exc:
            raise TypeError(
                f"cannot send context variable {key!r} (a {type(value).__name__}) to "
                f"another process: {payload.safe_str(exc)}"
            ) from None
    if _reusable(value):
        _last_pickled[key] = (value, data)
    return data


class _Unsendable:
    """Stands in for a value set in a worker that could not be pickled back."""

    def __init__(self, key: str, kind: str, error: str) -> None:
        self.key, self.kind, self.error = key, kind, error

    def __reduce__(self) -> Any:
        return (_unsendable, (self.key, self.kind, self.error))


def _unsendable(key: str, kind: str, error: str) -> Any:
    raise TypeError(f"the worker set it to a {kind} that cannot be pickled: {error}")


def encode_back(synced: dict[str, Any]) -> tuple[Snapshot | None, dict[str, Any]]:
    """The values of the current context that differ from ``synced`` (what the caller
    already has), pickled for the trip back, and those values. Unchanged ones stay
    home, so the caller keeps its own objects. Never raises: an unpicklable value
    becomes a ContextDecodeWarning on the other side, and the result still goes."""
    values = {}
    unbound = _unbound.get()
    if unbound:
        for key, value in unbound.items():
            if synced.get(key, _UNSET) is not value:
                values[key] = value
    for key, get in _back_getters:
        value = get(_UNSET)
        if value is not _UNSET and synced.get(key, _UNSET) is not value:
            values[key] = value
    if not values:
        return None, values
    try:
        return encode(values), values
    except BaseException:  # a hostile __reduce__ may raise anything: sort them out below
        pass
    out = {}
    for key, value in values.items():
        try:
            out[key] = _pickle(key, value)
        except BaseException as exc:
            stand_in = _Unsendable(key, type(value).__name__, payload.safe_str(exc))
            out[key] = pickle.dumps(stand_in, 5)
    return out, values


#: key -> (pickle, value) for immutable builtins, (pickle, (constructor, args)) for
#: values that declare ``__wool_immutable__`` (proxies: rebuilt from their pool).
_last_decoded: dict[str, tuple[bytes, Any]] = {}


def decode(snapshot: Snapshot | None, step: bool = False) -> dict[str, Any]:
    """Rebuild each value; one that cannot be rebuilt is skipped with a ContextDecodeWarning.

    ``step``: the snapshot came with a generator step, not a dispatch; forward-only
    variables travel at dispatch only, so theirs are left out (a generator that set
    ``__proxy__`` itself keeps its setting at its next step).
    """
    if not snapshot:
        return {}
    values = {}
    for key, data in snapshot.items():
        if step:
            var = _registry.get(key)
            if var is not None and var.forward_only:
                continue
        last = _last_decoded.get(key)
        if last is not None and last[0] == data:
            rebuild = last[1]
            # The same pickle as last time: an immutable value is reused as is; a
            # proxy is rebuilt through its reduce constructor (a pool lookup),
            # without the pickle machinery.
            values[key] = rebuild[0](*rebuild[1]) if type(rebuild) is tuple else rebuild
            continue
        try:
            value = values[key] = pickle.loads(data)
            if type(value) in _IMMUTABLE:
                _last_decoded[key] = (data, value)
            elif getattr(value, "__wool_immutable__", False):
                _last_decoded[key] = (data, value.__reduce__())
        except Exception as exc:
            warnings.warn(
                f"context variable {key!r} could not be rebuilt in this process and is left "
                f"out: {exc!r}",
                ContextDecodeWarning,
                stacklevel=2,
            )
    return values


def apply(values: dict[str, Any], back: bool = False) -> None:
    """Set ``values`` in the current context (``back``: never touch forward-only ones)."""
    global writes
    writes += 1
    unbound = None
    for key, value in values.items():
        var = _registry.get(key)
        if var is None:
            if unbound is None:
                unbound = dict(_unbound.get() or {})
            unbound[key] = value
            continue
        if back and var.forward_only:
            continue
        if var._inner.get(_UNSET) is value:
            continue  # unchanged: no new token, no copy
        var._inner.set(value)
    if unbound is not None:
        _unbound.set(unbound)
