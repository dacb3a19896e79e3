"""The recycler alone: which worker retires, when, and what the hub is asked to do."""

from __future__ import annotations

from types import SimpleNamespace

from wool_local.workers.limits import RecycleReason, WorkerHealth, WorkerLimits
from wool_local.workers.recycler import Recycler


class FakeHub:
    """Records what the recycler asks of the hub."""

    def __init__(self, *handles):
        self.handles = list(handles)
        self.calls: list[tuple[str, int | None]] = []
        self.reasons: list[str] = []  # what each kill said
        self.spawning = 0

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
        handle.kill_reason = reason
        self.calls.append(("kill", handle.pid))
        self.reasons.append(reason)

    def changed_membership(self):
        pass


def handle(pid, open_calls=0):
    return SimpleNamespace(
        pid=pid, open=open_calls, retiring=None, stopping=False, alive=True, kill_reason=""
    )


def health(pid, rss=0, idle=0.0):
    return WorkerHealth(pid=pid, rss=rss, private_rss=rss, fds=10, age=1.0, idle=idle)


LIMITS = WorkerLimits(max_rss="100MiB", idle_ttl="10s")


def test_given_two_workers_over_memory_then_one_is_replaced_per_round():
    """Given two idle workers over their memory limit, one round recycles only the first:
    a replacement is forked, then the worker is stopped (it has no calls)."""
    hub = FakeHub(handle(1), handle(2))
    recycler = Recycler(hub, LIMITS, min_workers=0)
    recycler.apply({1: health(1, rss=200 << 20), 2: health(2, rss=200 << 20)})
    assert hub.calls == [("spawn", None), ("stop", 1)]
    assert recycler.recycles == {RecycleReason.MEMORY: 1}


def test_given_idle_workers_then_one_retires_per_round_down_to_min_workers():
    """Given three idle workers and min_workers=2, the first round retires one (no
    replacement), and the next round retires none."""
    hub = FakeHub(handle(1), handle(2), handle(3))
    recycler = Recycler(hub, LIMITS, min_workers=2)
    idle = {pid: health(pid, idle=60.0) for pid in (1, 2, 3)}
    recycler.apply(idle)
    recycler.apply(idle)
    assert hub.calls == [("stop", 1)]
    assert recycler.recycles == {RecycleReason.IDLE: 1}


def test_given_a_busy_worker_recycled_then_it_is_never_stopped_or_killed_by_the_recycler():
    """Given a worker over its limit with a call still open, it is retired and replaced,
    and however many rounds follow, the recycler neither stops nor kills it (the hub
    stops it when its last call ends)."""
    busy = handle(1, open_calls=1)
    hub = FakeHub(busy)
    recycler = Recycler(hub, LIMITS, min_workers=0)
    for _ in range(5):
        recycler.apply({1: health(1, rss=200 << 20)})
    assert hub.calls == [("spawn", None)] and busy.retiring is RecycleReason.MEMORY
    assert recycler.recycles == {RecycleReason.MEMORY: 1}


def test_given_a_worker_being_forked_then_no_recycle_that_round():
    """Given a worker over its limit while another is being forked, nothing is recycled
    that round; the next round, with the fork done, replaces it."""
    hub = FakeHub(handle(1))
    recycler = Recycler(hub, LIMITS, min_workers=0)
    hub.spawning = 1
    recycler.apply({1: health(1, rss=200 << 20)})
    assert hub.calls == []
    hub.spawning = 0
    recycler.apply({1: health(1, rss=200 << 20)})
    assert hub.calls == [("spawn", None), ("stop", 1)]


HARD = WorkerLimits.unlimited(max_rss="100MiB", hard_rss="200MiB")


def test_given_a_worker_over_hard_rss_then_it_is_replaced_and_killed_with_the_reading():
    """Given a busy serving worker above hard_rss, it is taken out of service, a
    replacement is forked and it is killed with a reason naming the ceiling and reading."""
    busy = handle(1, open_calls=3)
    hub = FakeHub(busy)
    recycler = Recycler(hub, HARD, min_workers=0)
    recycler.apply({1: health(1, rss=300 << 20)})
    assert hub.calls == [("spawn", None), ("kill", 1)]
    assert busy.retiring is RecycleReason.HARD_MEMORY
    assert hub.reasons == [
        "it passed the hard memory ceiling hard_rss=200.0 MiB: private memory 300.0 MiB"
    ]
    recycler.apply({1: health(1, rss=300 << 20)})  # its exit not yet seen: once only
    assert recycler.recycles == {RecycleReason.HARD_MEMORY: 1} and len(hub.calls) == 2


def test_given_a_retiring_worker_over_hard_rss_then_it_is_killed_without_another_spawn():
    """Given a worker already retiring on max_rss (its replacement forked) that grows past
    hard_rss, the next round kills it and forks nothing more."""
    busy = handle(1, open_calls=1)
    hub = FakeHub(busy)
    recycler = Recycler(hub, HARD, min_workers=0)
    recycler.apply({1: health(1, rss=150 << 20)})
    recycler.apply({1: health(1, rss=250 << 20)})
    assert hub.calls == [("spawn", None), ("kill", 1)]
    assert recycler.recycles == {RecycleReason.MEMORY: 1, RecycleReason.HARD_MEMORY: 1}
