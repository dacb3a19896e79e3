"""The proxy lease follows the binding: taken when ``__proxy__`` is bound in a worker,
given back on reset or when the binding's frame ends, counted locally so that calls back
to back touch no shared memory, visible in ``pool.stats()``, drained at stop; and the
worker's ``__proxy_pool__`` stays bounded."""

from __future__ import annotations

import asyncio
import contextvars
import os

import pytest

import wool_local
from tests import routines as r
from tests.helpers import Pipe, read_pipe, run
from wool_local.ipc import SlotTable
from wool_local.workers import proxy
from wool_local.workers.proxy import (
    LeaseBook,
    ProxyRegistry,
    __proxy__,
    __proxy_pool__,
    describe_holders,
    drain_leases,
    lease_holders,
    restore_proxy,
)

OTHER = b"o" * 16  # a proxy id of no pool: binding it still takes a lease


# -- routines (module level: workers import them by reference) --------------------------


@wool_local.routine
async def bind_then_reset(other: bytes, tell_fd: int, go_fd: int) -> bool:
    """Binds ``other``, says so, waits; resets, says so, waits; returns."""
    token = __proxy__.set(restore_proxy(other))
    os.write(tell_fd, b"bound")
    await read_pipe(go_fd)
    __proxy__.reset(token)
    os.write(tell_fd, b"reset")
    await read_pipe(go_fd)
    return __proxy__.get() is not None and __proxy__.get().id != other


@wool_local.routine
async def bind_and_leave(other: bytes, tell_fd: int, go_fd: int) -> None:
    """Binds ``other`` (also in a child task) and returns without resetting."""
    __proxy__.set(restore_proxy(other))

    async def child() -> None:
        __proxy__.set(restore_proxy(other))

    await asyncio.create_task(child())
    os.write(tell_fd, b"bound")
    await read_pipe(go_fd)


@wool_local.routine
async def stream_bound(other: bytes):
    """A generator binding ``other`` and never resetting it."""
    __proxy__.set(restore_proxy(other))
    yield 1
    yield 2


@wool_local.routine
async def live_bindings() -> dict[bytes, int]:
    """This worker's live bindings (this call's own included)."""
    book = __proxy_pool__.leases
    assert book is not None
    return book.live()


@wool_local.routine
async def restore_many(n: int) -> tuple[int, int]:
    """Restores ``n`` proxies of pools that do not exist; the registry's size then."""
    for _ in range(n):
        restore_proxy(os.urandom(16))
    return len(__proxy_pool__), __proxy_pool__.capacity


# -- through a pool ---------------------------------------------------------------------


def test_given_routine_binds_a_proxy_then_its_lease_is_held_until_reset():
    """Given a routine that sets __proxy__ to another pool's proxy, its worker holds a
    lease on that proxy while the binding lives, and gives it back when it is reset
    (while the routine still runs)."""
    tell, go = Pipe(), Pipe()

    async def main():
        async with wool_local.WorkerPool(spawn=1) as wp:
            table = wp.hub.leases
            call = asyncio.ensure_future(bind_then_reset(OTHER, tell.w, go.r))
            assert await tell.read() == b"bound"
            (pid,) = wp.pids
            assert table.holders(OTHER) == {pid: 1}
            assert wp.stats().leases == {os.getpid(): 1, pid: 2}
            os.write(go.w, b"go")
            assert await tell.read() == b"reset"
            assert table.holders(OTHER) == {}
            assert table.holders(wp.hub.id) == {os.getpid(): 1, pid: 1}  # the call's own
            os.write(go.w, b"go")
            assert await call is True

    try:
        run(main)
    finally:
        tell.close()
        go.close()


def test_given_routine_ends_without_reset_then_its_bindings_are_given_back():
    """Given a routine (and a child task of it) binding a proxy without resetting it,
    the lease is held while the routine runs and every lease drains once it ended."""
    tell, go = Pipe(), Pipe()

    async def main():
        async with wool_local.WorkerPool(spawn=1) as wp:
            table = wp.hub.leases
            call = asyncio.ensure_future(bind_and_leave(OTHER, tell.w, go.r))
            assert await tell.read() == b"bound"
            (pid,) = wp.pids
            assert table.holders(OTHER) == {pid: 1}
            os.write(go.w, b"go")
            await call
            assert OTHER not in await live_bindings()
            assert await drain_leases(table, 5.0, keep={os.getpid()}) == {}
            assert table.holders(OTHER) == {}

    try:
        run(main)
    finally:
        tell.close()
        go.close()


def test_given_generator_binds_a_proxy_then_the_lease_lives_as_long_as_the_session():
    """Given a generator routine that binds a proxy and never resets it, the lease is
    held across its steps and drains once the session is closed."""

    async def main():
        async with wool_local.WorkerPool(spawn=1) as wp:
            table = wp.hub.leases
            (pid,) = wp.pids
            gen = stream_bound(OTHER)
            assert await gen.__anext__() == 1
            assert table.holders(OTHER) == {pid: 1}
            assert await gen.__anext__() == 2
            assert table.holders(OTHER) == {pid: 1}
            await gen.aclose()
            assert await drain_leases(table, 5.0, keep={os.getpid()}) == {}

    run(main)


def test_given_a_hanging_call_then_drain_reports_its_worker_until_it_ends():
    """Given a call that hangs, drain_leases gives up at its timeout and reports the
    worker holding the pool's lease (and stats show it); once the call is cancelled,
    the leases drain and stats show only the pool block's."""
    started = Pipe()

    async def main():
        async with wool_local.WorkerPool(spawn=1) as wp:
            hub = wp.hub
            call = asyncio.ensure_future(r.die("hang", started.w))
            await started.read()
            (pid,) = wp.pids
            left = await drain_leases(hub.leases, 0.05, keep={os.getpid()})
            assert left == {pid: {hub.id: 1}}
            assert f"process {pid} holds 1 on pool {hub.id.hex()[:12]}" in describe_holders(left)
            assert wp.stats().leases == {os.getpid(): 1, pid: 1}
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            assert await drain_leases(hub.leases, 5.0, keep={os.getpid()}) == {}
            assert wp.stats().leases == {os.getpid(): 1}
            assert lease_holders(hub.leases) == {os.getpid(): {hub.id: 1}}

    try:
        run(main)
    finally:
        started.close()


def test_given_calls_one_after_another_then_no_lease_traffic_per_call():
    """Given 200 calls awaited one after another, with a millisecond between them (so
    the worker goes idle after each answer), the worker keeps its lease between them:
    the table's lock is taken a handful of times at most, not twice per call."""

    async def main():
        async with wool_local.WorkerPool(spawn=1) as wp:
            table = wp.hub.leases
            for i in range(20):
                await r.square(i)
            before = table.lock_state().epoch
            for i in range(200):
                await r.square(i)
                await asyncio.sleep(0.001)  # the caller's own work between calls
            assert table.lock_state().epoch - before <= 10

    run(main)


def test_given_many_foreign_proxies_restored_then_the_worker_pool_stays_bounded():
    """Given routines restoring 100 proxies of other pools, twice, the worker's
    __proxy_pool__ does not grow past its capacity (it held 100, then 200, before)."""

    async def main():
        async with wool_local.WorkerPool(spawn=1):
            first, capacity = await restore_many(100)
            second, _ = await restore_many(100)
            assert first <= capacity + 1 and second <= capacity + 1
            assert await r.nested_read() == "none"  # its own pool's proxy still works

    run(main)


# -- in this process ----------------------------------------------------------------------


def test_given_evicted_proxy_still_referenced_then_restoring_it_gives_the_same_one():
    """Given a registry past its capacity, a proxy something still refers to stays the
    canonical one for its id, and the pinned proxies are never evicted."""
    registry = ProxyRegistry()
    pinned = proxy.WorkerProxy(b"p" * 16)
    registry.register(pinned)
    held = registry.get_or_insert(b"h" * 16)
    for i in range(3 * registry.capacity):
        registry.get_or_insert(i.to_bytes(16, "little"))
    assert len(registry) <= registry.capacity + 2
    assert registry.get_or_insert(b"h" * 16) is held
    assert registry.get_or_insert(b"p" * 16) is pinned


@pytest.fixture
def table():
    t = SlotTable.create(slots=64, holders_per_slot=4)
    t.unlink()
    yield t
    t.close()


def test_given_bindings_then_the_book_counts_them_and_the_table_holds_one_per_proxy(table):
    """Given a frame with a dispatch binding and a set()/reset() pair, the table holds
    one count for this process while any binding lives; a reset of the last binding
    gives it back at once, a frame's end leaves it for release_idle; a binding made
    once its frame is closed stays until it is reset."""
    book = LeaseBook(table)
    p, q = proxy.WorkerProxy(b"a" * 16), proxy.WorkerProxy(b"b" * 16)
    open_frames = {7}
    book.frame_open = open_frames.__contains__
    saved = __proxy__._binder
    __proxy__._binder = book
    try:

        def routine() -> tuple[bytes | None, contextvars.Context]:
            lease = book.open_frame(7, p)
            token = __proxy__.set(q)
            assert table.holders(q.id) == {os.getpid(): 1}
            __proxy__.reset(token)
            assert table.holders(q.id) == {}  # reset: given back now
            __proxy__.set(q)  # left for the frame's end
            return lease, contextvars.copy_context()

        lease, orphan = contextvars.Context().run(routine)
        assert book.live() == {p.id: 1, q.id: 1}
        book.end_frame(7, lease)
        open_frames.clear()
        assert book.live() == {}
        assert table.holders(p.id) == {os.getpid(): 1}  # lingers for the next call
        book.release_idle()
        assert table.snapshot() == {}
        token = orphan.run(__proxy__.set, q)  # a task that outlived its routine
        book.end_frame(7, None)
        assert book.live() == {q.id: 1}
        orphan.run(__proxy__.reset, token)
        assert book.live() == {} and table.snapshot() == {}
    finally:
        __proxy__._binder = saved
