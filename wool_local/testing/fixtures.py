"""``worker_id`` and ``testrun_uid``, as pytest-xdist defines them, for runs without it.

Registered by the plugin only when pytest-xdist is not loaded (its own fixtures
read the same ``config.workerinput`` that a ``--wool`` worker sets).
"""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture(scope="session")
def worker_id(request: pytest.FixtureRequest) -> str:
    """``gw0``, ``gw1``, ... in a worker of ``pytest --wool``; ``master`` otherwise."""
    workerinput = getattr(request.config, "workerinput", None)
    return "master" if workerinput is None else workerinput["workerid"]


@pytest.fixture(scope="session")
def testrun_uid(request: pytest.FixtureRequest) -> str:
    """The run's id, the same in every worker of one run."""
    workerinput = getattr(request.config, "workerinput", None)
    return uuid.uuid4().hex if workerinput is None else workerinput["testrunuid"]
