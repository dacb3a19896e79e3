"""``WorkerPool.map``: lazy chunked map over the workers, in order or as results come."""

from __future__ import annotations

import asyncio
import itertools
import os

import pytest

import wool_local
from tests.helpers import run


def square(x: int) -> int:
    return x * x


def fail_at(bad: int, x: int) -> int:
    if x == bad:
        raise ValueError(f"item {x} is bad")
    return x


async def add_async(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


@wool_local.routine
async def triple(x: int) -> int:
    return 3 * x


def worker_pid(_: int) -> int:
    return os.getpid()


def test_given_many_small_items_then_results_come_in_order_in_few_dispatches():
    """Given 20,000 tiny items, when mapped, then the results come in input order, and the
    hub made far fewer dispatches than items (chunks)."""

    async def main():
        async with wool_local.WorkerPool(spawn=2) as wp:
            out = [y async for y in wp.map(square, range(20_000))]
            assert out == [x * x for x in range(20_000)]
            assert wp.hub.completed < 2_000

    run(main)


def test_given_several_kinds_of_callables_then_each_maps():
    """Given a lambda closing over a local, a builtin, an async function over two
    iterables (zip semantics: the shortest ends it) and a routine, each maps correctly."""

    async def main():
        k = 7
        async with wool_local.WorkerPool(spawn=2) as wp:
            assert [y async for y in wp.map(lambda x: x + k, range(5))] == [7, 8, 9, 10, 11]
            assert [y async for y in wp.map(abs, [-1, -2])] == [1, 2]
            assert [y async for y in wp.map(add_async, range(4), range(10, 13))] == [10, 12, 14]
            assert [y async for y in wp.map(triple, range(3))] == [0, 3, 6]

    run(main)


def test_given_an_item_that_raises_then_earlier_results_come_first_and_the_error_names_it():
    """Given 2,000 items of which item 777 raises, when mapped in order, then the 777
    results before it are yielded, then its ValueError, noted with its index."""

    async def main():
        seen = []
        async with wool_local.WorkerPool(spawn=2) as wp:
            with pytest.raises(ValueError, match="item 777 is bad") as info:
                async for y in wp.map(fail_at, itertools.repeat(777), range(2_000)):
                    seen.append(y)
            assert seen == list(range(777))
            assert "raised by item 777 of map(fail_at)" in info.value.__notes__
            assert [y async for y in wp.map(square, range(3))] == [0, 1, 4]

    run(main)


def test_given_unordered_then_every_result_comes_once():
    """Given ordered=False, every result arrives exactly once."""

    async def main():
        async with wool_local.WorkerPool(spawn=2) as wp:
            out = [y async for y in wp.map(square, range(5_000), ordered=False)]
            assert sorted(out) == [x * x for x in range(5_000)]

    run(main)


def test_given_an_infinite_input_and_a_slow_consumer_then_reading_ahead_is_bounded():
    """Given an endless generator and a consumer that stops after 10 results, at most a
    window of chunks was read from the input, and closing the map ends it cleanly."""
    read = 0

    def endless():
        nonlocal read
        for i in itertools.count():
            read += 1
            yield i

    async def main():
        async with wool_local.WorkerPool(spawn=2) as wp:
            results = wp.map(square, endless(), chunksize=10)
            got = [await results.__anext__() for _ in range(10)]
            await asyncio.sleep(0.05)  # give a runaway reader time to show itself
            assert got == [x * x for x in range(10)]
            window = 3 * 2  # chunks per worker x workers
            assert read <= 10 + window * 10 + 1
            await results.aclose()

    run(main)


def test_given_a_progress_callback_then_it_counts_every_item():
    """Given a progress callback, it is called as chunks finish, with the total known
    from the input's length, ending at the total."""
    calls = []

    async def main():
        async with wool_local.WorkerPool(spawn=2) as wp:
            items = list(range(1_000))
            results = wp.map(square, items, progress=lambda d, t: calls.append((d, t)))
            out = [y async for y in results]
            assert len(out) == 1_000

    run(main)
    assert calls[-1] == (1_000, 1_000)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_given_progress_true_then_a_tqdm_bar_is_drawn(capsys):
    """Given progress=True, a tqdm bar named after the function reaches 100%."""

    async def main():
        async with wool_local.WorkerPool(spawn=1) as wp:
            assert len([y async for y in wp.map(square, range(100), progress=True)]) == 100

    run(main)
    err = capsys.readouterr().err
    assert "square" in err and "100%" in err


def test_given_few_expensive_items_then_they_spread_over_the_workers():
    """Given 8 items on 2 workers, chunks start at one item, so both workers get some."""

    async def main():
        async with wool_local.WorkerPool(spawn=2) as wp:
            pids = {p async for p in wp.map(worker_pid, range(8))}
            assert pids == set(wp.pids)

    run(main)


def test_given_a_bad_chunksize_or_no_iterable_then_a_clear_error():
    """Given chunksize=0, or no iterable at all, map raises at once."""

    async def main():
        async with wool_local.WorkerPool(spawn=1) as wp:
            with pytest.raises(ValueError, match="chunksize"):
                wp.map(square, range(3), chunksize=0)
            with pytest.raises(TypeError, match="at least one iterable"):
                wp.map(square)

    run(main)


class Scaler:
    def __init__(self, k: int) -> None:
        self.k = k

    @wool_local.routine
    async def scale(self, x: int) -> int:
        return self.k * x


def test_given_a_routine_used_as_a_method_then_it_maps():
    """Given a routine defined as a method, mapping the bound method runs its body in the
    workers with the instance."""

    async def main():
        async with wool_local.WorkerPool(spawn=2) as wp:
            assert [y async for y in wp.map(Scaler(4).scale, range(3))] == [0, 4, 8]

    run(main)
