"""One program, two engines: the same routines on wool_local's forked workers or on wool.

It exercises what both backends share: coroutine routines, an async generator
(with ``asend``), a context variable set by the caller and changed by a
routine, a nested dispatch (a routine that calls routines), an exception
caught by its type, and ``map``. Its output is the same on both.

Run:
    python examples/both_backends.py                  # forked workers (local)
    python examples/both_backends.py --backend wool   # a wool pool
    wool-local run --backend wool examples/both_backends.py

(The wool backend needs ``pip install 'wool-local[wool]'``.)
"""

from __future__ import annotations

import asyncio
import sys

import wool_local

#: Set by the caller, read and changed by the routines: travels both ways.
stage = wool_local.ContextVar("stage", default="unset")


class OutOfStock(Exception):
    """Raised in a worker, caught by the caller by its type."""


@wool_local.routine
async def price(item: str) -> int:
    await asyncio.sleep(0)
    return len(item) * 10


@wool_local.routine
async def basket(items: list[str]) -> int:
    """A nested dispatch: one routine awaiting others."""
    prices = await asyncio.gather(*(price(item) for item in items))
    stage.set(f"priced by basket after {stage.get()}")
    return sum(prices)


@wool_local.routine
async def take(item: str) -> str:
    stage.set(f"took {item}")
    raise OutOfStock(f"no {item} left")


@wool_local.routine
async def running_total(start: int):
    """An async generator: adds what the caller sends, records each step in ``stage``."""
    total = start
    while True:
        stage.set(f"total {total}")
        added = yield total
        if added is None:
            return
        total += added


def weight(item: str) -> int:
    return sum(map(ord, item)) % 97


async def main(backend: str | None) -> None:
    async with wool_local.WorkerPool(2, backend=backend) as pool:
        print("price:", await price("apple"))
        print("many:", await asyncio.gather(*(price(i) for i in ("fig", "kiwi", "pear"))))

        stage.set("set by caller")
        print("basket:", await basket(["fig", "plum"]), "|", stage.get())

        try:
            await take("mango")
        except OutOfStock as exc:
            print("caught:", type(exc).__name__, exc, "|", stage.get())

        steps = running_total(100)
        seen = [await steps.asend(None)]
        for n in (1, 2, 3):
            seen.append(await steps.asend(n))
        await steps.aclose()
        print("stream:", seen, "|", stage.get())

        async for total in running_total(7):
            print("first of a stream:", total, "|", stage.get())
            break

        weights = [w async for w in pool.map(weight, ["fig", "kiwi", "pear", "plum"])]
        print("map:", weights)


if __name__ == "__main__":  # required: wool's workers re-import this script
    chosen = sys.argv[sys.argv.index("--backend") + 1] if "--backend" in sys.argv else None
    asyncio.run(main(chosen))
