"""The controller of ``pytest --wool N``: it runs in the pytest process, after collection.

``pytest_runtestloop`` (tried before pytest's own) groups ``session.items`` into
units (the items of one module, in collection order), hands the worker state
to :mod:`.worker`, and only then starts the pool, so the zygote and every
worker inherit the collected session. Each unit is one call of
:func:`.worker.run_unit` on a ``wool_local.Executor`` whose workers take one
call at a time (``max_inflight=1``); the controller keeps at most one more
unit per worker waiting in the pool, so an idle worker pulls the next unit
and the rest stay here, where they can be dropped (``-x``) or preceded by the
rest of a crashed unit.

While the calls run the controller reads their spools every few milliseconds
and replays each item once its events are complete, through the item's own
hooks, as a serial run would call them (``pytest_runtest_logstart``, each
report through ``pytest_runtest_logreport``, the warnings,
``pytest_runtest_logfinish``): the terminal, ``-rA``, junitxml, the cache
(``--lf``), ``--maxfail`` and the exit status see a serial sequence of items.
When the session should stop (``-x``, ``--maxfail``) the controller drops the
units not started and sets the shared stop byte: each worker stops after its
current item and tears down what it had set up.

A worker that dies fails its call with ``WorkerCrashed``; the item it had
started is reported failed (``worker crashed while running <nodeid>``, with
the signal or exit code), never run again, and the rest of its unit goes back
to the front of the queue. The pool forks a replacement.
"""

from __future__ import annotations

import concurrent.futures
import mmap
import os
import shutil
import tempfile
import uuid
import warnings
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import pytest

from . import spool, units, worker

if TYPE_CHECKING:
    from wool_local.workers import WorkerLimits

#: How often the controller reads the spools of running units (seconds).
POLL = 0.02


@dataclass
class _Call:
    """One unit in flight: its items, its spool, what the worker reported so far."""

    indices: list[int]
    path: str
    reader: spool.Reader
    future: Any = None
    done: set[int] = field(default_factory=set)
    started: int | None = None  # the item whose events are not complete yet
    pending: list[tuple[Any, ...]] = field(default_factory=list)  # its events so far
    replayed: set[str] = field(default_factory=set)  # whens of its reports replayed


class Controller:
    """The ``pytest_runtestloop`` of a ``--wool`` run (registered by the plugin)."""

    def __init__(
        self,
        config: pytest.Config,
        workers: int | None,
        limits: WorkerLimits,
        dist: str = units.DEFAULT_DIST,
    ) -> None:
        self.config = config
        self.workers = workers  # None: auto
        self.limits = limits
        self.dist = dist
        self.exit: tuple[str, int | None] | None = None
        self.crashes = 0

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool:
        if session.testsfailed and not session.config.option.continue_on_collection_errors:
            n = session.testsfailed
            raise session.Interrupted(f"{n} error{'s' if n != 1 else ''} during collection")
        if session.config.option.collectonly:
            return True
        from wool_local.pool import available_cpus

        wanted = available_cpus() if self.workers is None else self.workers
        todo = units.make_units(session.items, self.dist, wanted)
        if todo:
            self._run(session, todo, wanted)
        if self.exit is not None:
            raise pytest.exit.Exception(self.exit[0], self.exit[1])
        if session.shouldfail:
            raise session.Failed(session.shouldfail)
        if session.shouldstop:
            raise session.Interrupted(session.shouldstop)
        return True

    # -- the run ------------------------------------------------------------------

    def _run(self, session: pytest.Session, todo: list[units.Unit], wanted: int) -> None:
        from wool_local import Executor

        n = max(1, min(wanted, len(todo)))
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None and self.config.option.verbose >= 0:
            tr.write_line(
                f"wool_local: {n} worker{'s' if n != 1 else ''}, {len(todo)} units ({self.dist}), "
                f"{len(session.items)} items"
            )
        factory = getattr(self.config, "_tmp_path_factory", None)
        basetemp = factory.getbasetemp() if factory is not None else None
        stop = mmap.mmap(-1, 1)
        spool_dir = tempfile.mkdtemp(prefix="wool_local-pytest-")
        worker.state = worker.State(
            session=session,
            workercount=n,
            testrunuid=uuid.uuid4().hex,
            stop=stop,
            basetemp=basetemp,
        )
        worker.register_fork_hooks()
        queue: deque[list[int]] = deque(u.indices for u in todo)
        inflight: dict[Any, _Call] = {}
        seq = 0
        stopping = False
        ex = Executor(max_workers=n, limits=self.limits, max_inflight=1)
        try:
            with ex:
                while queue or inflight:
                    while queue and not stopping and len(inflight) < 2 * n:
                        indices = queue.popleft()
                        seq += 1
                        path = os.path.join(spool_dir, f"{seq}.spool")
                        open(path, "wb").close()
                        call = _Call(indices, path, spool.Reader(path))
                        call.future = ex.submit(worker.run_unit, path, indices)
                        inflight[call.future] = call
                    finished, _ = concurrent.futures.wait(
                        list(inflight), timeout=POLL, return_when=concurrent.futures.FIRST_COMPLETED
                    )
                    for call in inflight.values():
                        self._pump(session, call)
                    for fut in finished:
                        call = inflight.pop(fut)
                        self._pump(session, call)
                        rest = self._finish(session, call)
                        if rest:
                            queue.appendleft(rest)
                    if not stopping and (
                        session.shouldfail or session.shouldstop or self.exit is not None
                    ):
                        stopping = True
                        stop[0] = 1
                        queue.clear()
        except BaseException:
            stop[0] = 1  # Ctrl-C, an error: the workers stop after their current item
            raise
        finally:
            for call in inflight.values():
                call.reader.close()
            worker.state = None
            shutil.rmtree(spool_dir, ignore_errors=True)
            stop.close()

    def _pump(self, session: pytest.Session, call: _Call) -> None:
        """Replay the items of ``call`` whose events are all in."""
        for event in call.reader.read():
            kind = event[0]
            if kind == "start":
                call.started, call.pending, call.replayed = event[1], [], set()
            elif kind == "done":
                self._replay(session, call.started, call.pending, call.replayed)
                call.done.add(event[1])
                call.started, call.pending = None, []
            elif kind == "exit":
                self.exit = (event[1], event[2])
            else:
                call.pending.append(event)

    def _finish(self, session: pytest.Session, call: _Call) -> list[int]:
        """A call ended: the indices of its unit to run again (after a crash)."""
        call.reader.close()
        exc = call.future.exception()
        if exc is None:
            return []
        from wool_local import WorkerCrashed

        if not isinstance(exc, WorkerCrashed):
            raise exc
        self.crashes += 1
        crashed = call.started
        if crashed is not None:
            item = session.items[crashed]
            why = f"worker crashed while running {item.nodeid}"
            pending = [*call.pending, ("crash", why, exc)]
            if not any(e[0] == "logfinish" for e in pending):
                pending.append(("logfinish", item.nodeid, item.location))
            self._replay(session, crashed, pending, call.replayed)
            call.done.add(crashed)
        else:
            tr = self.config.pluginmanager.get_plugin("terminalreporter")
            if tr is not None:
                tr.write_line(f"wool_local: a worker crashed between items: {exc}")
        return [i for i in call.indices if i not in call.done]

    def _replay(
        self,
        session: pytest.Session,
        index: int | None,
        events: list[tuple[Any, ...]],
        replayed: set[str],
    ) -> None:
        if index is None:
            return
        item = session.items[index]
        ihook = item.ihook
        config = self.config
        for event in events:
            kind = event[0]
            if kind == "logstart":
                replayed.add("logstart")
                ihook.pytest_runtest_logstart(nodeid=event[1], location=event[2])
            elif kind == "report":
                rep = config.hook.pytest_report_from_serializable(config=config, data=event[1])
                replayed.add(rep.when)
                ihook.pytest_runtest_logreport(report=rep)
            elif kind == "warning":
                _replay_warning(ihook, event[1])
            elif kind == "logfinish":
                ihook.pytest_runtest_logfinish(nodeid=event[1], location=event[2])
            elif kind == "crash":
                if "logstart" not in replayed:
                    ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
                when: Literal["call", "teardown"] = "call" if "call" not in replayed else "teardown"
                rep = pytest.TestReport(
                    nodeid=item.nodeid,
                    location=item.location,
                    keywords=dict.fromkeys(item.keywords, 1),
                    outcome="failed",
                    longrepr=f"{event[1]}: {event[2]}",
                    when=when,
                    sections=[],
                    duration=0.0,
                    start=0.0,
                    stop=0.0,
                    user_properties=[],
                )
                ihook.pytest_runtest_logreport(report=rep)


def _replay_warning(ihook: Any, data: dict[str, Any]) -> None:
    module, name = data["category"]
    category: Any = UserWarning
    try:
        import importlib

        obj: Any = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
        if isinstance(obj, type) and issubclass(obj, Warning):
            category = obj
    except Exception:
        pass
    message = warnings.WarningMessage(
        category(data["message"]), category, data["filename"], data["lineno"]
    )
    ihook.pytest_warning_recorded.call_historic(
        kwargs={
            "warning_message": message,
            "when": data["when"],
            "nodeid": data["nodeid"],
            "location": data["location"],
        }
    )
