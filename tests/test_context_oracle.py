"""Differential test: context propagation across dispatches matches one process.

A random script of set/get/reset operations is split into caller segments and
routine segments. It runs once against wool_local variables with each routine
segment dispatched to a worker, and once against plain stdlib variables with
each routine segment awaited in place; every observation must agree. (Tokens
are reset only on the side that made them: a token does not travel.)
"""

from __future__ import annotations

import contextvars

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wool_local
from tests import routines as r
from tests.helpers import run

stdlib_vars = [
    contextvars.ContextVar("oracle_a"),
    contextvars.ContextVar("oracle_b", default="b0"),
    contextvars.ContextVar("oracle_c", default=None),
]

op = st.tuples(st.sampled_from(["get", "set", "reset"]), st.integers(0, 2), st.integers(0, 9))
segment = st.lists(op, max_size=8)
script = st.lists(st.tuples(segment, segment), min_size=1, max_size=3)


def reference(parts):
    """The script in one process: each routine segment runs in the caller's context."""

    async def main():
        tokens: list = []
        seen = []
        for caller_ops, routine_ops in parts:
            seen.append(r.run_ops(caller_ops, stdlib_vars, tokens))

            async def routine(ops=routine_ops):
                return r.run_ops(ops, stdlib_vars, [])

            seen.append(await routine())
        seen.append(r.run_ops([("get", i, 0) for i in range(3)], stdlib_vars, []))
        return seen

    return contextvars.Context().run(run, main)


def distributed(parts):
    async def main():
        tokens: list = []
        seen = []
        async with wool_local.WorkerPool(spawn=1):
            for caller_ops, routine_ops in parts:
                seen.append(r.run_ops(caller_ops, r.oracle_vars, tokens))
                seen.append(await r.run_script(routine_ops))
            seen.append(r.run_ops([("get", i, 0) for i in range(3)], r.oracle_vars, []))
        return seen

    return contextvars.Context().run(run, main)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=script)
def test_given_random_scripts_then_dispatch_observes_what_one_process_would(parts):
    """Given a random set/get/reset script split between caller and routine, every
    observation with a worker matches the same script run in one process."""
    assert distributed(parts) == reference(parts)
