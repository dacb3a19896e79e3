"""Count the primes below N on every core; meant for ``wool-local run``.

    wool-local run examples/primes_below.py 1000000
    wool-local run -n 2 --progress examples/primes_below.py 1000000

A plain script: the routine and the Executor use the pool ``wool-local run``
gives the script (started at first use, stopped at exit). Run with plain
``python`` it fails with NoPoolError, since nothing starts a pool.
"""

import asyncio
import math
import sys

import wool_local


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, math.isqrt(n) + 1))


@wool_local.routine
async def count_primes(lo: int, hi: int) -> int:
    return sum(1 for n in range(lo, hi) if is_prime(n))


async def count_below(limit: int) -> int:
    step = max(1, limit // 64)
    spans = [(lo, min(lo + step, limit)) for lo in range(0, limit, step)]
    return sum(await asyncio.gather(*(count_primes(lo, hi) for lo, hi in spans)))


def main() -> None:
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    print(f"{asyncio.run(count_below(limit))} primes below {limit:,}")
    # The same count through an Executor() built with no arguments: the same pool.
    with wool_local.Executor() as ex:
        print(f"{sum(ex.map(is_prime, range(limit)))} again, one number per item")


if __name__ == "__main__":
    main()
