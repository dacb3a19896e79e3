"""Pickling of what crosses a process boundary: callables, arguments, results, exceptions.

Plain pickle (protocol 5) first, because it is several times faster;
cloudpickle when pickle cannot (lambdas, closures, classes defined in a
function). What neither can send raises :class:`UnpicklableError`, naming the
object, instead of failing somewhere deep in a worker.
"""

from __future__ import annotations

import hashlib
import pickle
import traceback
from collections.abc import Sequence
from typing import Any

PROTOCOL = 5

#: ``bytes``/``bytearray`` at least this large travel out of band: the frame
#: carries them raw after the message, so they are copied once on each side
#: instead of being copied into the pickle, then into the frame, and back.
OOB_MIN = 64 << 10

#: A pickled payload: the pickle stream and its out-of-band buffers.
Pickled = tuple[bytes, Sequence[Any]]


class UnpicklableError(TypeError):
    """An argument, result or exception could not be sent between processes."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker, as text (set as ``__cause__``)."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


class RemoteError(Exception):
    """Stands in for a worker exception that could not be pickled."""


def dumps(obj: Any, what: str, of: Any = None) -> Pickled:
    """Pickle ``obj``; ``what`` names it in the error ("argument 'x' of f", or
    "the result of" with ``of`` the routine: its name is looked up only if needed).

    Large ``bytes``/``bytearray`` at the top of ``obj`` or one container level
    down go out of band; deeper ones stay in the stream (still correct).
    """
    if _has_big(obj, 2):
        return _dumps_oob(obj, _named(what, of, obj))
    try:
        return pickle.dumps(obj, PROTOCOL), ()
    except Exception:
        return _by_value(obj, _named(what, of, obj)), ()


def dumps_small_first(obj: Any, what: str, of: Any = None) -> Pickled:
    """:func:`dumps` for values that are mostly small (a generator's yields): plain
    pickle first, since a pickle shorter than ``OOB_MIN`` holds no bytes that would go
    out of band, so the look for them (which costs more than pickling a small record)
    is taken only for larger ones."""
    try:
        data = pickle.dumps(obj, PROTOCOL)
    except Exception:
        return dumps(obj, what, of)
    if len(data) < OOB_MIN or not _has_big(obj, 2):
        return data, ()
    return dumps(obj, what, of)  # with its large bytes apart


def _named(what: str, of: Any, obj: Any) -> str:
    return what if of is None else f"{what} {name_of(of)} ({type(obj).__name__})"


def _by_value(obj: Any, what: str) -> bytes:
    """cloudpickle, for what plain pickle cannot do; else a clear error naming ``what``."""
    try:
        return by_value_dumps(obj)
    except Exception as exc:
        raise UnpicklableError(f"cannot send {what} between processes: {safe_str(exc)}") from exc


def by_value_dumps(obj: Any) -> bytes:
    """cloudpickle's pickle of ``obj``: functions and classes by value. Imported on
    first use: most programs never need it, and its few thousand objects would
    otherwise sit in every hub's heap for the cyclic GC to walk."""
    import cloudpickle

    return cloudpickle.dumps(obj, PROTOCOL)


def loads(data: bytes | memoryview, what: str, buffers: Sequence[Any] = (), of: Any = None) -> Any:
    """Unpickle ``what`` (``of`` a routine, if given: named only if this fails)."""
    try:
        return pickle.loads(data, buffers=buffers)
    except Exception as exc:
        if of is not None:
            what = f"{what} {name_of(of)}"
        raise UnpicklableError(f"cannot rebuild {what} in this process: {exc!r}") from exc


def name_of(fn: Any) -> str:
    """A callable's name for messages."""
    return getattr(fn, "__qualname__", None) or type(fn).__qualname__


def _is_big(obj: Any) -> bool:
    t = type(obj)
    return (t is bytes or t is bytearray) and len(obj) >= OOB_MIN


def _has_big(obj: Any, depth: int) -> bool:
    # Plain loops, not any(<genexpr>): this runs for every call's arguments.
    t = type(obj)
    if t is bytes or t is bytearray:
        return len(obj) >= OOB_MIN
    if depth:
        if t is tuple or t is list:
            items = obj
        elif t is dict:
            items = obj.values()
        else:
            return False
        if depth == 1:
            # The last level inline: a map's chunk holds thousands of items, and a
            # call per item would cost more than pickling them.
            for x in items:
                tx = type(x)
                if (tx is bytes or tx is bytearray) and len(x) >= OOB_MIN:
                    return True
            return False
        for x in items:
            if _has_big(x, depth - 1):
                return True
    return False


_CONTAINERS = (bytes, bytearray, tuple, list, dict)


def _bytes_from(buffer: Any) -> bytes:
    # The receiver hands us the bytes it already copied out of shared memory.
    return buffer if type(buffer) is bytes else bytes(buffer)


def _bytearray_from(buffer: Any) -> bytearray:
    return bytearray(buffer)


class _OutOfBand:
    """Pickles a large bytes/bytearray as an out-of-band buffer.

    Needed because pickle never offers exact ``bytes`` to ``reducer_override``.
    """

    __slots__ = ("buffer", "rebuild")

    def __init__(self, obj: bytes | bytearray, ours: list[pickle.PickleBuffer]) -> None:
        self.buffer = pickle.PickleBuffer(obj)
        self.rebuild = _bytes_from if type(obj) is bytes else _bytearray_from
        ours.append(self.buffer)

    def __reduce_ex__(self, protocol: Any) -> Any:
        return (self.rebuild, (self.buffer,))


def _wrap(obj: Any, depth: int, ours: list[pickle.PickleBuffer]) -> Any:
    if _is_big(obj):
        return _OutOfBand(obj, ours)
    if depth:
        t = type(obj)
        if t is tuple:
            return tuple(_wrap(x, depth - 1, ours) for x in obj)
        if t is list:
            return [_wrap(x, depth - 1, ours) for x in obj]
        if t is dict:
            return {k: _wrap(v, depth - 1, ours) for k, v in obj.items()}
    return obj


def _dumps_oob(obj: Any, what: str) -> Pickled:
    ours: list[pickle.PickleBuffer] = []
    wrapped = _wrap(obj, 2, ours)
    ids = {id(pb) for pb in ours}
    buffers: list[Any] = []

    def out_of_band(pb: pickle.PickleBuffer) -> bool:
        if id(pb) in ids:
            buffers.append(pb.raw())
            return False
        return True  # someone else's buffer (numpy, ...): keep it in band

    try:
        return pickle.dumps(wrapped, PROTOCOL, buffer_callback=out_of_band), buffers
    except Exception:
        return _by_value(obj, what), ()


def dumps_args(args: tuple[Any, ...], kwargs: dict[str, Any], fn: Any) -> Pickled:
    """Pickle a call's arguments; on failure, name the argument that cannot travel."""
    big = False
    for a in args:  # inline: most calls pass a few scalars
        if type(a) in _CONTAINERS and _has_big(a, 1):
            big = True
            break
    if not big and kwargs:
        big = _has_big(kwargs, 2)
    if not big:
        try:
            return pickle.dumps((args, kwargs), PROTOCOL), ()
        except Exception:
            pass
    try:
        return dumps((args, kwargs), "")
    except UnpicklableError as exc:
        fn_name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
        for i, arg in enumerate(args):  # each dumps raises, naming the one that fails
            dumps(arg, f"positional argument {i} ({type(arg).__name__}) of {fn_name}()")
        for name, arg in kwargs.items():
            dumps(arg, f"argument {name!r} ({type(arg).__name__}) of {fn_name}()")
        raise UnpicklableError(f"cannot send the arguments of {fn_name}(): {exc}") from None


def callable_id(data: bytes) -> int:
    """A stable 63-bit id for a pickled callable, the same in every process."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


def dumps_exception(exc: BaseException, of: Any = None) -> bytes:
    """Pickle an exception with its formatted traceback; never fails.

    ``of``, the routine that raised it (if known), is named in the stand-in
    sent when the exception itself cannot travel.
    """
    try:
        text = "".join(traceback.format_exception(exc))
    except BaseException as why:
        text = f"(the traceback could not be formatted: {describe(why)})\n"
    try:
        return pickle.dumps((exc, text), PROTOCOL)
    except BaseException:  # a hostile __reduce__ may raise anything; the caller still hears
        pass
    try:
        return by_value_dumps((exc, text))
    except BaseException as why:
        raised = f" raised by {_name_or_unknown(of)}" if of is not None else ""
        return _stand_in(
            f"{_type_name(exc)}: {safe_str(exc)} (the exception{raised} could not be "
            f"pickled: {describe(why)})",
            text,
        )


def dumps_failure(what: str, of: Any, why: BaseException) -> bytes:
    """The error sent instead of an answer that could not be encoded: names the
    routine ``of`` and ``what`` of it failed ("the result"); never fails."""
    if isinstance(why, UnpicklableError):
        message = safe_str(why)
    else:
        message = f"cannot send {what} of {_name_or_unknown(of)} back: {describe(why)}"
    try:
        error = UnpicklableError(message)
        return pickle.dumps((error, f"{_type_name(error)}: {message}\n"), PROTOCOL)
    except BaseException:
        return _stand_in(message, "")


def _stand_in(message: str, text: str) -> bytes:
    try:
        return pickle.dumps((RemoteError(message), text), PROTOCOL)
    except BaseException:
        return _LAST_RESORT


#: What is sent when not even a stand-in can be pickled (it cannot happen with str
#: messages, but an answer must go whatever happens).
_LAST_RESORT = pickle.dumps(
    (RemoteError("a worker raised an exception that could not be described"), ""), PROTOCOL
)


def describe(exc: BaseException) -> str:
    """``Type: message`` of an exception, for messages; never raises (``__str__``
    and ``__repr__`` are user code and may)."""
    return f"{_type_name(exc)}: {safe_str(exc)}"


def _type_name(obj: Any) -> str:
    try:
        cls = type(obj)
        return f"{cls.__module__}.{cls.__qualname__}"
    except BaseException:
        return "<unnamed type>"


def safe_str(obj: Any) -> str:
    """``str(obj)``, else its ``repr``, else a placeholder: never raises."""
    for render in (str, repr):
        try:
            text = render(obj)
            if type(text) is str:
                return text
        except BaseException:
            pass
    return "<unprintable>"


def _name_or_unknown(fn: Any) -> str:
    try:
        return str(name_of(fn))
    except BaseException:
        return "<a routine>"


def loads_exception(data: bytes | memoryview) -> BaseException:
    """Rebuild a worker's exception with its remote traceback as ``__cause__``."""
    try:
        exc, text = pickle.loads(data)
    except Exception as why:
        return RemoteError(
            f"a worker raised an exception that cannot be rebuilt here: {describe(why)}"
        )
    if not isinstance(exc, BaseException):
        return RemoteError(
            f"a worker raised an exception that was rebuilt as a {_type_name(exc)} here"
        )
    exc.__cause__ = RemoteTraceback(text if type(text) is str else "")
    return exc


def dumps_callable(fn: Any, main_has: Any) -> bytes:
    """Pickle a callable by reference where the receiver can import it, else by value.

    A function of ``__main__`` goes by reference only if ``main_has(fn)``:
    the zygote was forked with it, so every worker already has it.
    """
    if getattr(fn, "__module__", None) != "__main__" or main_has(fn):
        try:
            return pickle.dumps(fn, PROTOCOL)
        except Exception:
            pass
    return _by_value(fn, f"callable {fn!r}")
