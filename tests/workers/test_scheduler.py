"""The scheduler alone: least-loaded choice, the queue, given-up calls, per-worker room."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from wool_local.workers.dispatch import Pending
from wool_local.workers.scheduler import Scheduler


def worker(name, load=0, limit=4, **state):
    fields = {"cancelling": 0, "stalled": False, "asked": False, "alive": True, "nested": 0}
    fields["link"] = SimpleNamespace(lost=state.pop("lost", None))
    return SimpleNamespace(name=name, load=load, limit=limit, **{**fields, **state})


class Harness:
    """A scheduler over fake workers; sending a call just counts it on the worker."""

    def __init__(self, *workers, max_inflight=4):
        self.table: dict[int, Pending] = {}
        self.sent: list[tuple[str, int]] = []
        self.queued_events = 0
        self.scheduler = Scheduler(max_inflight, self.table, self.send, self.fail, self.on_queued)
        self.scheduler.serving = list(workers)

    def send(self, handle, pending):
        handle.load += 1
        self.sent.append((handle.name, pending.id))

    def fail(self, pending, exc):
        del self.table[pending.id]
        if pending.future is not None:
            pending.future.set_exception(exc)

    def on_queued(self):
        self.queued_events += 1

    def call(self, rid):
        pending = self.table[rid] = Pending(rid, None)
        self.scheduler.submit(pending)
        return pending


def test_given_workers_with_room_when_calls_arrive_then_each_goes_to_the_least_loaded():
    """Given two workers loaded 2 and 0, when three calls arrive, then the idle one gets
    calls until it is as loaded as the other, ties going to the first."""
    a, b = worker("a", load=2), worker("b", load=0)
    h = Harness(a, b)
    for rid in (1, 2, 3):
        h.call(rid)
    assert h.sent == [("b", 1), ("b", 2), ("a", 3)]


def test_given_every_worker_full_when_a_call_arrives_then_it_waits_and_goes_when_room_is_made():
    """Given one worker at its limit, when a call arrives it is queued (the hub is told,
    so it may fork), and when an answer makes room, send_queued sends it."""
    a = worker("a", load=4)
    h = Harness(a)
    h.call(1)
    assert h.sent == [] and h.scheduler.queued() == 1 and h.queued_events == 1
    a.load = 3
    h.scheduler.send_queued()
    assert h.sent == [("a", 1)] and h.scheduler.queued() == 0


def test_given_a_queued_call_whose_caller_gave_up_then_it_is_skipped():
    """Given two queued calls, the first given up (gone from the table), when room is
    made, then only the second is sent."""
    a = worker("a", load=4)
    h = Harness(a)
    h.call(1)
    h.call(2)
    del h.table[1]
    a.load = 0
    h.scheduler.send_queued()
    assert h.sent == [("a", 2)]


def test_given_blocked_cancelling_or_dead_workers_then_none_of_them_is_picked():
    """Given a stalled worker, one whose loop has not answered the watchdog yet, one with
    a cancel outstanding, a dead one and one whose link failed, a call waits rather than
    go to any of them."""
    workers = [
        worker("stalled", stalled=True),
        worker("asked", asked=True),
        worker("cancelling", cancelling=1),
        worker("dead", alive=False),
        worker("lost", lost=RuntimeError("its channel failed")),
    ]
    h = Harness(*workers)
    h.call(1)
    assert h.sent == [] and h.scheduler.queued() == 1


def test_given_a_worker_waiting_on_nested_calls_then_those_do_not_count_against_it():
    """Given a worker at its limit whose calls all wait on nested calls, it still takes one."""
    a = worker("a", load=4, nested=4)
    h = Harness(a)
    h.call(1)
    assert h.sent == [("a", 1)]


def test_given_calls_handed_back_then_they_go_first_in_order():
    """Given a queued call, when two calls are handed back, they are sent before it."""
    a = worker("a", load=4)
    h = Harness(a)
    h.call(3)
    back = [Pending(1, None), Pending(2, None)]
    for p in back:
        h.table[p.id] = p
    h.scheduler.requeue_first(back)
    a.load = 0
    h.scheduler.send_queued()
    assert [rid for _, rid in h.sent] == [1, 2, 3]


def test_given_a_throttled_worker_then_its_room_doubles_back_to_max_inflight():
    """Given a worker cut to one call at a time, each run of as many answers as its limit
    doubles the limit, up to max_inflight (8 here)."""
    a = worker("a", limit=8)
    h = Harness(a, max_inflight=8)
    h.scheduler.throttle(a)
    limits = [a.limit]
    for _ in range(1 + 2 + 4):
        h.scheduler.on_finished(a)
        limits.append(a.limit)
    assert limits == [1, 2, 2, 4, 4, 4, 4, 8]


def test_given_a_refusal_then_submit_raises_it_and_queued_calls_fail_with_it():
    """Given a queued call with a future, when the hub refuses calls, the call fails with
    the hub's reason and new calls are refused with it, even after a later reason."""

    class Future:
        exc = None

        def done(self):
            return self.exc is not None

        def set_exception(self, exc):
            self.exc = exc

    h = Harness(worker("a", load=4))
    pending = h.table[1] = Pending(1, Future())
    h.scheduler.submit(pending)
    closed = RuntimeError("closed")
    h.scheduler.refuse(closed)
    assert pending.future.exc is closed and 1 not in h.table
    h.scheduler.refuse(RuntimeError("a later reason"))
    with pytest.raises(RuntimeError, match="closed"):
        h.call(2)
