"""wool_local.ContextVar: stdlib surface, propagation to workers and back, and errors."""

from __future__ import annotations

import asyncio
import contextvars
import os
import pickle
import warnings

import pytest

import wool_local
from tests import routines as r
from tests.helpers import run, watch_messages
from wool_local.workers import protocol

# -- the stdlib surface ---------------------------------------------------------------


def test_given_var_when_get_set_reset_then_behaves_like_stdlib():
    """Given a wool ContextVar and a stdlib one, get/set/reset/Token agree step by step."""
    ours = wool_local.ContextVar("surface_a", default=1)
    theirs = contextvars.ContextVar("surface_a", default=1)
    assert ours.get() == theirs.get() == 1
    assert ours.get(5) == theirs.get(5) == 5
    t1, s1 = ours.set(2), theirs.set(2)
    assert t1.var is ours and s1.var is theirs
    assert t1.old_value is wool_local.Token.MISSING is contextvars.Token.MISSING
    t2, s2 = ours.set(3), theirs.set(3)
    assert t2.old_value == s2.old_value == 2
    ours.reset(t2)
    theirs.reset(s2)
    assert ours.get() == theirs.get() == 2
    with pytest.raises(RuntimeError, match="has already been used once"):
        ours.reset(t2)
    with pytest.raises(RuntimeError, match="has already been used once"):
        theirs.reset(s2)


def test_given_wrong_tokens_then_stdlib_exceptions():
    """Given tokens from another var or another context, reset raises ValueError as stdlib."""
    a = wool_local.ContextVar("surface_b")
    b = wool_local.ContextVar("surface_c")
    with pytest.raises(LookupError):
        a.get()
    token = a.set(1)
    with pytest.raises(ValueError, match="different ContextVar"):
        b.reset(token)
    other = contextvars.copy_context()
    with pytest.raises(ValueError, match="different Context"):
        other.run(a.reset, token)
    with pytest.raises(TypeError):
        a.reset("not a token")


def test_given_duplicate_key_then_clear_error():
    """Given two variables with one namespace and name, the second is refused."""
    wool_local.ContextVar("dupe", namespace="tests.dupes")
    with pytest.raises(ValueError, match="already exists"):
        wool_local.ContextVar("dupe", namespace="tests.dupes")


# -- propagation -------------------------------------------------------------------


def test_given_caller_set_value_then_worker_sees_it_and_defaults_stay_home(monkeypatch):
    """Given a value set by the caller, the routine sees it; an unset var sends nothing."""
    sent = []

    def spy(message):
        if isinstance(message, protocol.Call):
            sent.append(dict(message.context or {}))

    watch_messages(monkeypatch, spy)

    async def main():
        async with wool_local.WorkerPool(spawn=1):
            assert await r.read_var() == "none"
            assert r.request_id.key not in sent[-1]
            r.request_id.set("abc")
            assert await r.read_var() == "abc"
            assert r.request_id.key in sent[-1]

    run(main)


def test_given_routine_sets_value_then_it_flows_back_on_return_and_on_raise():
    """Given a routine that sets a var, the caller sees it after return (and after a raise)."""

    async def main():
        async with wool_local.WorkerPool(spawn=1):
            r.request_id.set("before")
            assert await r.set_var("after") == "before"
            assert r.request_id.get() == "after"
            with pytest.raises(KeyError):
                await r.set_then_fail("failed-but-set")
            assert r.request_id.get() == "failed-but-set"

    run(main)


def test_given_concurrent_dispatches_then_they_never_see_each_others_values():
    """Given 40 concurrent calls with distinct values, each routine sees only its own."""

    async def main():
        async with wool_local.WorkerPool(spawn=2):

            async def one(i):
                r.request_id.set(f"caller-{i}")
                return await r.echo_var_after(0.01)

            assert await asyncio.gather(*(one(i) for i in range(40))) == [
                f"caller-{i}" for i in range(40)
            ]

    run(main)


def test_given_create_task_in_worker_then_child_gets_a_copy():
    """Given a routine that spawns a task, the child sees a copy, as in the stdlib."""

    async def main():
        async with wool_local.WorkerPool(spawn=1):
            assert await r.child_task_sees_copy() == ("parent", "parent")

    run(main)


def test_given_stream_then_values_flow_at_every_yield_and_every_send():
    """Given a generator that sets a var before each yield, the caller sees it at each
    step; values the caller sets or sends are seen by the generator at the next step."""

    async def main():
        async with wool_local.WorkerPool(spawn=1):
            r.request_id.set("start")
            gen = r.stream_vars(3)
            assert await gen.__anext__() == "start"
            assert r.trail.get() == 0
            r.request_id.set("changed by caller")
            assert await gen.__anext__() == "changed by caller"
            assert r.trail.get() == 1
            assert await gen.asend("sent") == "sent"
            assert r.trail.get() == 2
            assert r.request_id.get() == "sent"  # the generator set it, it flowed back
            await gen.aclose()

    run(main)


def test_given_var_unknown_to_worker_then_kept_until_declared_and_passed_back():
    """Given a var the worker has never declared, its value survives the trip and is
    visible once the routine declares the variable."""
    ns = f"tests.late_{os.getpid()}"

    async def main():
        async with wool_local.WorkerPool(spawn=1):
            late = wool_local.ContextVar("late", namespace=ns)  # declared after the fork
            late.set("from the caller")
            assert await r.declare_and_read(ns, "late") == "from the caller"
            assert await r.read_var() == "none"  # an unknown extra var is ignored safely
            assert late.get() == "from the caller"

    run(main)


def test_given_unpicklable_value_then_type_error_naming_the_var():
    """Given a var holding something that cannot be pickled, dispatch fails naming it."""
    import threading

    holder = wool_local.ContextVar("holds_a_lock")

    async def main():
        async with wool_local.WorkerPool(spawn=1):
            holder.set(threading.Lock())
            with pytest.raises(TypeError, match=r"holds_a_lock.*lock"):
                await r.square(2)
            holder.set(None)
            assert await r.square(2) == 4

    run(main)


class RebuildsOnlyInHub:
    """Pickles fine; unpickling fails in any process but the one that made it."""

    def __init__(self) -> None:
        self.pid = os.getpid()

    def __reduce__(self):
        return (_rebuild_in, (self.pid,))


def _rebuild_in(pid: int) -> RebuildsOnlyInHub:
    if os.getpid() != pid:
        raise RuntimeError("cannot be rebuilt outside the hub")
    return RebuildsOnlyInHub()


def test_given_value_undecodable_in_worker_then_warning_and_result_delivered():
    """Given a value the worker cannot rebuild, the routine still runs and returns; the
    worker warns with ContextDecodeWarning (and a strict filter turns it into an error)."""
    odd = wool_local.ContextVar("odd_value")

    async def main():
        async with wool_local.WorkerPool(spawn=1):
            odd.set(RebuildsOnlyInHub())
            assert await r.square(3) == 9

    run(main)
    # The same decoding, here: a warning by default, an error under a strict filter.
    from wool_local.workers import context

    snapshot = {odd.key: b"\x80\x05not a pickle", r.request_id.key: pickle.dumps("kept")}
    with pytest.warns(wool_local.ContextDecodeWarning, match="odd_value"):
        assert context.decode(snapshot) == {r.request_id.key: "kept"}
    with warnings.catch_warnings():
        warnings.simplefilter("error", wool_local.ContextDecodeWarning)
        with pytest.raises(wool_local.ContextDecodeWarning, match="odd_value"):
            context.decode(snapshot)


def test_given_runtime_context_then_nested_dispatches_inherit_the_timeout():
    """Given RuntimeContext(dispatch_timeout=...), a routine two levels down sees it."""

    async def main():
        async with wool_local.WorkerPool(spawn=2):
            assert await r.inner_timeout() is None
            with wool_local.RuntimeContext(dispatch_timeout=42.0):
                assert await r.inner_timeout() == 42.0

    run(main)


# -- forward-only variables travel at dispatch, not at every step ------------------------------

_OTHER_POOL = b"x" * 16


@wool_local.routine
async def proxy_of_each_step():
    """Sets __proxy__ to another pool's proxy, then yields the id bound at each step."""
    from wool_local.workers.proxy import restore_proxy

    wool_local.__proxy__.set(restore_proxy(_OTHER_POOL))
    while True:
        yield wool_local.__proxy__.get().id


def test_given_generator_sets_its_own_proxy_then_later_steps_keep_it():
    """Given a generator routine that sets __proxy__ itself, its next steps still see its
    own proxy (the caller's travelled at dispatch only), while the caller's binding is
    untouched and its other variables still travel at each step."""

    async def main():
        async with wool_local.WorkerPool(spawn=1) as wp:
            gen = proxy_of_each_step()
            assert await gen.__anext__() == _OTHER_POOL
            r.request_id.set("changed between steps")
            assert await gen.__anext__() == _OTHER_POOL
            assert await gen.asend(None) == _OTHER_POOL
            await gen.aclose()
            assert wool_local.__proxy__.get() is wp.hub.proxy

    run(main)


def test_given_a_step_snapshot_then_decode_leaves_forward_only_values_out():
    """Given a snapshot with __proxy__ and an ordinary variable, decoding it for a step
    keeps the ordinary one only; decoding it for a dispatch keeps both."""
    from wool_local.workers import context
    from wool_local.workers.proxy import PROXY_KEY, WorkerProxy

    snapshot = {
        PROXY_KEY: pickle.dumps(WorkerProxy(_OTHER_POOL)),
        r.request_id.key: pickle.dumps("kept"),
    }
    assert context.decode(snapshot, step=True) == {r.request_id.key: "kept"}
    assert set(context.decode(snapshot)) == {PROXY_KEY, r.request_id.key}
