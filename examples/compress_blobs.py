"""Batch job: compress many generated blobs on every core, and compare with serial.

Each task makes a deterministic pseudo-random blob (text-like, so it
compresses), compresses it with zlib at level 9 and returns the compressed size
and a SHA-256 of the output. The serial run does exactly the same work in this
process, so the two totals must match.

    python examples/compress_blobs.py [--blobs 200] [--size 131072]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import random
import time
import zlib

import wool_local

WORDS = [
    "pool", "worker", "ring", "shared", "memory", "frame", "zygote", "fork", "loop",
    "dispatch", "routine", "lease", "doorbell", "spin", "wake", "batch", "core",
]  # fmt: skip


def compress_one(seed: int, size: int) -> tuple[int, str]:
    rng = random.Random(seed)
    words = []
    length = 0
    while length < size:
        word = rng.choice(WORDS)
        words.append(word)
        length += len(word) + 1
    blob = " ".join(words).encode()[:size]
    packed = zlib.compress(blob, 9)
    return len(packed), hashlib.sha256(packed).hexdigest()


@wool_local.routine
async def compress(seed: int, size: int) -> tuple[int, str]:
    return compress_one(seed, size)


async def parallel(blobs: int, size: int) -> list[tuple[int, str]]:
    async with wool_local.WorkerPool():
        return await asyncio.gather(*(compress(seed, size) for seed in range(blobs)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blobs", type=int, default=200)
    parser.add_argument("--size", type=int, default=128 * 1024)
    args = parser.parse_args()

    start = time.perf_counter()
    serial = [compress_one(seed, args.size) for seed in range(args.blobs)]
    serial_s = time.perf_counter() - start

    start = time.perf_counter()
    pooled = asyncio.run(parallel(args.blobs, args.size))
    pooled_s = time.perf_counter() - start

    assert pooled == serial, "the pool computed something different"
    total_in = args.blobs * args.size
    total_out = sum(n for n, _ in pooled)
    print(
        f"{args.blobs} blobs of {args.size // 1024} KiB: {total_in / 2**20:.0f} MiB -> "
        f"{total_out / 2**20:.1f} MiB compressed"
    )
    print(f"serial:     {serial_s:7.2f} s")
    print(
        f"wool_local: {pooled_s:7.2f} s on {wool_local.available_cpus()} workers "
        f"(pool start and stop included), {serial_s / pooled_s:.2f}x faster"
    )


if __name__ == "__main__":
    main()
