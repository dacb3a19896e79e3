"""The recycler alone: which worker retires, when, and what the hub is asked to do."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from tests.helpers import run
from wool_local.workers.limits import RecycleReason, WorkerHealth, WorkerLimits
from wool_local.workers.recycler import Recycler


class FakeHub:
    """Records what the recycler asks of the hub."""

    def __init__(self, *handles):
        self.handles = list(handles)
        self.calls: list[tuple[str, int | None]] = []
        self.killed: asyncio.Event | None = None  # set at a kill, if a test waits for one

    def workers(self):
        return list(self.handles)

    def worker(self, pid):
        return next((h for h in self.handles if h.pid == pid), None)

    def serving_count(self):
        return sum(1 for h in self.handles if h.retiring is None and not h.stopping)

    def spawn_worker(self):
        self.calls.append(("spawn", None))

    def stop_worker(self, handle):
        handle.stopping = True
        self.calls.append(("stop", handle.pid))

    def kill(self, handle, reason):
        self.calls.append(("kill", handle.pid))
        if self.killed is not None:
            self.killed.set()

    def changed_membership(self):
        pass


def handle(pid, open_calls=0):
    return SimpleNamespace(pid=pid, open=open_calls, retiring=None, stopping=False, alive=True)


def health(pid, rss=0, idle=0.0):
    return WorkerHealth(pid=pid, rss=rss, private_rss=rss, fds=10, age=1.0, idle=idle)


LIMITS = WorkerLimits(max_rss="100MiB", idle_ttl="10s")


def test_given_two_workers_over_memory_then_one_is_replaced_per_round():
    """Given two idle workers over their memory limit, one round recycles only the first:
    a replacement is forked, then the worker is stopped (it has no calls)."""
    hub = FakeHub(handle(1), handle(2))
    recycler = Recycler(hub, LIMITS, min_workers=0, recycle_grace=30)
    recycler.apply({1: health(1, rss=200 << 20), 2: health(2, rss=200 << 20)})
    assert hub.calls == [("spawn", None), ("stop", 1)]
    assert recycler.recycles == {RecycleReason.MEMORY: 1}


def test_given_idle_workers_then_one_retires_per_round_down_to_min_workers():
    """Given three idle workers and min_workers=2, the first round retires one (no
    replacement), and the next round retires none."""
    hub = FakeHub(handle(1), handle(2), handle(3))
    recycler = Recycler(hub, LIMITS, min_workers=2, recycle_grace=30)
    idle = {pid: health(pid, idle=60.0) for pid in (1, 2, 3)}
    recycler.apply(idle)
    recycler.apply(idle)
    assert hub.calls == [("stop", 1)]
    assert recycler.recycles == {RecycleReason.IDLE: 1}


def test_given_a_busy_worker_recycled_then_it_is_killed_after_the_grace():
    """Given a worker over its limit with a call still open, it is not stopped but killed
    once recycle_grace has passed with the call unfinished."""
    busy = handle(1, open_calls=1)
    hub = FakeHub(busy)
    recycler = Recycler(hub, LIMITS, min_workers=0, recycle_grace=0.01)

    async def main():
        hub.killed = asyncio.Event()
        recycler.apply({1: health(1, rss=200 << 20)})
        assert hub.calls == [("spawn", None)] and busy.retiring is RecycleReason.MEMORY
        async with asyncio.timeout(5):
            await hub.killed.wait()

    run(main)
    assert hub.calls == [("spawn", None), ("kill", 1)]
