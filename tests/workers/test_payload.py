"""Every failure to encode an answer still answers: hostile exceptions, results and items."""

from __future__ import annotations

import asyncio
import pickle

import pytest

import wool_local
from tests import routines as r
from tests.helpers import run
from wool_local.workers import payload

#: How long a call whose answer cannot be encoded may take to fail (it fails at once;
#: without an answer it would hang until this bound ends it).
BOUND = 5.0


class Unprintable(Exception):
    """Cannot be pickled (not even by cloudpickle), and neither str() nor repr() works."""

    def __reduce__(self):
        raise TypeError("Unprintable cannot be pickled")

    def __str__(self):
        raise RuntimeError("no str for you")

    def __repr__(self):
        raise RuntimeError("no repr either")


class Hostile(BaseException):
    """A BaseException (not an Exception) raised while pickling."""


class RaisesUnprintable:
    """Pickling it raises an exception that cannot even be printed."""

    def __reduce__(self):
        raise Unprintable()


class RaisesBase:
    """Pickling it raises a BaseException that is not an Exception."""

    def __reduce__(self):
        raise Hostile("from __reduce__")


@wool_local.routine
async def raise_unprintable() -> None:
    raise Unprintable()


@wool_local.routine
async def return_hostile(kind: str) -> object:
    return RaisesUnprintable() if kind == "unprintable" else RaisesBase()


@wool_local.routine
async def yield_hostile(kind: str):
    yield 1
    yield RaisesUnprintable() if kind == "unprintable" else RaisesBase()


def test_given_unpicklable_exception_whose_str_raises_then_dumps_exception_still_encodes():
    """Given an exception that neither pickle nor cloudpickle can send and whose __str__
    and __repr__ raise, dumps_exception returns a stand-in naming its type and the
    routine, and it loads as a RemoteError."""
    try:
        raise Unprintable()
    except Unprintable as exc:
        data = payload.dumps_exception(exc, raise_unprintable)
    error = payload.loads_exception(data)
    assert isinstance(error, payload.RemoteError)
    message = str(error)
    assert "Unprintable" in message and "raise_unprintable" in message
    assert "could not be pickled" in message
    assert "<unprintable>" in message


def test_given_every_encoding_fails_then_the_failure_answer_is_still_bytes():
    """Given failures whose own description raises, dumps_failure and describe never
    raise, and what they encode names the routine and what could not be sent."""
    assert payload.describe(Unprintable()).endswith("Unprintable: <unprintable>")
    data = payload.dumps_failure("the result", return_hostile, Unprintable())
    error = pickle.loads(data)[0]
    assert isinstance(error, payload.UnpicklableError)
    assert "the result of return_hostile" in str(error)


def test_given_routine_raises_unprintable_unpicklable_exception_then_caller_gets_an_answer():
    """Given a routine raising an exception that cannot be pickled and whose __str__
    raises, the caller gets a RemoteError naming the routine and the type at once, and
    the pool serves the next call."""

    async def main():
        async with wool_local.WorkerPool(spawn=1):
            async with asyncio.timeout(BOUND):
                with pytest.raises(payload.RemoteError) as info:
                    await raise_unprintable()
                assert "Unprintable" in str(info.value)
                assert "raise_unprintable" in str(info.value)
                assert await r.square(3) == 9

    run(main)


@pytest.mark.parametrize("kind", ["unprintable", "base"])
def test_given_result_whose_pickling_raises_anything_then_caller_gets_unpicklable_error(kind):
    """Given a result whose __reduce__ raises an unprintable exception or a bare
    BaseException, the caller gets UnpicklableError naming the routine at once, and the
    pool serves the next call."""

    async def main():
        async with wool_local.WorkerPool(spawn=1):
            async with asyncio.timeout(BOUND):
                with pytest.raises(wool_local.UnpicklableError, match="return_hostile"):
                    await return_hostile(kind)
                assert await r.square(4) == 16

    run(main)


@pytest.mark.parametrize("kind", ["unprintable", "base"])
def test_given_yielded_value_whose_pickling_raises_anything_then_stream_ends_with_error(kind):
    """Given an async generator routine yielding a value whose __reduce__ raises, the
    caller's stream ends with UnpicklableError naming the generator, and the pool serves
    the next call."""

    async def main():
        async with wool_local.WorkerPool(spawn=1):
            async with asyncio.timeout(BOUND):
                seen = []
                with pytest.raises(wool_local.UnpicklableError, match="yield_hostile"):
                    async for item in yield_hostile(kind):
                        seen.append(item)
                assert seen == [1]
                assert await r.square(5) == 25

    run(main)
