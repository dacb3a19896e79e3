"""The ProcessPoolExecutor example of the Python docs (``concurrent.futures``), ported to
wool_local by changing its constructor (and importing wool_local): nothing else differs.

Run: python examples/executor_primes.py
"""

# The docs' code, kept verbatim (its style is not this project's):
# ruff: noqa: RUF046, B905, UP031

import concurrent.futures  # noqa: F401  # the docs' import, kept as it was
import math

import wool_local

PRIMES = [
    112272535095293,
    112582705942171,
    112272535095293,
    115280095190773,
    115797848077099,
    1099726899285419,
]


def is_prime(n):
    if n < 2:
        return False
    if n == 2:
        return True
    if n % 2 == 0:
        return False

    sqrt_n = int(math.floor(math.sqrt(n)))
    for i in range(3, sqrt_n + 1, 2):
        if n % i == 0:
            return False
    return True


def main():
    with wool_local.Executor() as executor:  # was: concurrent.futures.ProcessPoolExecutor()
        for number, prime in zip(PRIMES, executor.map(is_prime, PRIMES)):
            print("%d is prime: %s" % (number, prime))


if __name__ == "__main__":
    main()
