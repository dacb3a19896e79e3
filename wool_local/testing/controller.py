"""The controller of ``pytest --wool N``: it runs in the pytest process, after collection.

``pytest_runtestloop`` (tried before pytest's own) groups ``session.items`` into
units (:mod:`.units`: ``--wool-dist``, longest first), hands the worker state
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
current item, and tears down what it had set up as it stops.

A worker that dies fails its call with ``WorkerCrashed``; the item it had
started is reported failed (``worker crashed while running <nodeid>``, with
the signal or exit code), never run again, and the rest of its unit goes back
to the front of the queue. The pool forks a replacement; past
``--wool-max-restarts`` crashes the run stops.

Work stealing: each call has a slot in the shared memory (the number of items its
worker claimed, and the cut before which they are its own). When a worker is idle
and nothing is queued, the controller lowers the cut of a splittable call (any
unit but a ``loadgroup`` group, see :mod:`.units`) that has at least two items
unclaimed and queues the items past it; the item after the running one stays
with its worker, so the fixtures they share are not torn down early.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import mmap
import os
import shutil
import signal
import sys
import tempfile
import uuid
import warnings
from collections import deque
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Literal

import pytest

from . import spool, units, worker

if TYPE_CHECKING:
    from wool_local.workers import WorkerLimits

#: How often the controller reads the spools of running units (seconds).
POLL = 0.02

#: How long the pool waits for its workers to tear down their sessions and exit
#: (seconds) before killing them.
STOP_TIMEOUT = 60.0


@dataclass
class _Call:
    """One unit in flight: its items, its spool, what the worker reported so far."""

    indices: list[int]
    path: str
    reader: spool.Reader
    slot: int = 0  # its slot in the shared memory (claimed, cut)
    future: Any = None
    splittable: bool = False
    cut: int = 0  # the items before it are this call's (the rest were stolen)
    done: set[int] = field(default_factory=set)
    started: int | None = None  # the item whose events are not complete yet
    pending: list[tuple[Any, ...]] = field(default_factory=list)  # its events so far
    replayed: set[str] = field(default_factory=set)  # whens of its reports replayed
    wid: str = "gw?"  # the worker that runs it (from its first "start" event)


#: Why workers were recycled, by the pool's reason (``PoolStats.recycles``' keys).
RECYCLE_REASONS = {
    "memory": "private memory above --wool-max-rss",
    "hard_memory": "memory above the hard limit (killed)",
    "fds": "open files above --wool-max-fds",
    "age": "older than --wool-max-age",
    "tasks": "ran --wool-max-tests units",
    "idle": "idle",
}


class _WorkerNode:
    """What a replayed report carries as ``report.node``, as under pytest-xdist: the
    terminal's ``-v`` lines show ``[gw0]``, a failure's section names the worker."""

    def __init__(self, wid: str) -> None:
        self.gateway = SimpleNamespace(id=wid)
        self.workerinfo = {
            "id": wid,
            "sysplatform": sys.platform,
            "version_info": tuple(sys.version_info),
            "executable": sys.executable,
        }


class Controller:
    """The ``pytest_runtestloop`` of a ``--wool`` run (registered by the plugin)."""

    def __init__(
        self,
        config: pytest.Config,
        workers: int | None,
        limits: WorkerLimits,
        dist: str = units.DEFAULT_DIST,
        max_restarts: int | None = None,
    ) -> None:
        self.config = config
        self.workers = workers  # None: auto
        self.limits = limits
        self.dist = dist
        self.max_restarts = max_restarts  # None: 4 per worker
        self.exit: tuple[str, int | None] | None = None
        self.crashes = 0
        self.steals = 0
        self.recycles: dict[str, int] = {}
        self.durations: dict[str, float] = {}  # seconds, by nodeid, of this run
        self.nodes: dict[str, _WorkerNode] = {}
        self.spool_dir = ""

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool:
        if session.testsfailed and not session.config.option.continue_on_collection_errors:
            n = session.testsfailed
            raise session.Interrupted(f"{n} error{'s' if n != 1 else ''} during collection")
        if session.config.option.collectonly:
            return True
        from wool_local.pool import available_cpus

        wanted = available_cpus() if self.workers is None else self.workers
        cache = getattr(self.config, "cache", None)
        known: dict[str, float] = {}
        if cache is not None:
            known = cache.get(units.CACHE_KEY, None) or {}
        todo = units.make_units(session.items, self.dist, wanted, known)
        if todo:
            from wool_local.workers import zygote

            warned = self._warn_threads(session)
            try:
                with zygote.threads_accounted_for() if warned else contextlib.nullcontext():
                    self._run(session, todo, wanted)
            finally:
                if cache is not None and self.durations:
                    cache.set(units.CACHE_KEY, {**known, **self.durations})
        if self.exit is not None:
            raise pytest.exit.Exception(self.exit[0], self.exit[1])
        if session.shouldfail:
            raise session.Failed(session.shouldfail)
        if session.shouldstop:
            raise session.Interrupted(session.shouldstop)
        return True

    def _node(self, wid: str) -> _WorkerNode:
        node = self.nodes.get(wid)
        if node is None:
            node = self.nodes[wid] = _WorkerNode(wid)
        return node

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        """One line on the pool: workers recycled and why, crashes, units split."""
        parts = []
        recycled = sum(self.recycles.values())
        if recycled:
            why = ", ".join(
                f"{n} {RECYCLE_REASONS.get(reason, reason)}"
                for reason, n in sorted(self.recycles.items())
            )
            parts.append(f"{recycled} worker{'s' if recycled != 1 else ''} recycled ({why})")
        if self.crashes:
            parts.append(f"{self.crashes} crash{'es' if self.crashes != 1 else ''}")
        if self.steals:
            parts.append(f"{self.steals} unit{'s' if self.steals != 1 else ''} split at the end")
        if parts and self.config.option.verbose >= 0:
            terminalreporter.write_line("wool_local: " + "; ".join(parts))

    # -- the run ------------------------------------------------------------------

    def _run(self, session: pytest.Session, todo: list[units.Unit], wanted: int) -> None:
        import multiprocessing

        from wool_local import Executor

        n = max(1, min(wanted, len(todo)))
        max_restarts = 4 * n if self.max_restarts is None else self.max_restarts
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None and self.config.option.verbose >= 0:
            tr.write_line(
                f"wool_local: {n} worker{'s' if n != 1 else ''}, {len(todo)} units ({self.dist}), "
                f"{len(session.items)} items"
            )
        factory = getattr(self.config, "_tmp_path_factory", None)
        basetemp = factory.getbasetemp() if factory is not None else None
        nslots = 2 * n + 1
        shared = mmap.mmap(-1, worker.SLOTS_AT + worker.SLOT.size * nslots)
        free_slots = list(range(nslots))
        lock = multiprocessing.get_context("fork").Lock()
        spool_dir = self.spool_dir = tempfile.mkdtemp(prefix="wool_local-pytest-")
        worker.state = worker.State(
            session=session,
            workercount=n,
            testrunuid=uuid.uuid4().hex,
            stop=shared,
            basetemp=basetemp,
            spool_dir=spool_dir,
            lock=lock,
        )
        worker.register_fork_hooks()
        if self.config.getoption("capture", None) == "no":
            # -s: workers write to the terminal themselves; a line at a time, so the
            # lines of two workers never mix.
            from wool_local.output import whole_lines

            whole_lines()
        queue: deque[units.Unit] = deque(todo)
        inflight: dict[Any, _Call] = {}
        seq = 0
        stopping = False
        # Stopping, each worker tears its session down (see .worker): wait for that as
        # a serial run would, within reason.
        ex = Executor(max_workers=n, limits=self.limits, max_inflight=1, stop_timeout=STOP_TIMEOUT)
        try:
            with ex:
                try:
                    while queue or inflight:
                        while queue and not stopping and len(inflight) < 2 * n:
                            unit = queue.popleft()
                            seq += 1
                            path = os.path.join(spool_dir, f"{seq}.spool")
                            open(path, "wb").close()
                            slot = free_slots.pop()
                            worker.slot_set(shared, slot, 0, len(unit.indices))
                            call = _Call(unit.indices, path, spool.Reader(path), slot=slot)
                            call.splittable, call.cut = unit.splittable, len(unit.indices)
                            call.future = ex.submit(worker.run_unit, path, unit.indices, slot)
                            inflight[call.future] = call
                        finished, _ = concurrent.futures.wait(
                            list(inflight),
                            timeout=POLL,
                            return_when=concurrent.futures.FIRST_COMPLETED,
                        )
                        for call in inflight.values():
                            self._pump(session, call)
                        for fut in finished:
                            call = inflight.pop(fut)
                            self._pump(session, call)
                            free_slots.append(call.slot)
                            rest = self._finish(session, call)
                            if rest:
                                queue.appendleft(units.Unit(rest, call.splittable))
                        if self.crashes > max_restarts and not session.shouldfail:
                            session.shouldfail = (
                                f"wool_local: {self.crashes} workers crashed, more than "
                                f"--wool-max-restarts {max_restarts}: stopping"
                            )
                        if not stopping and (
                            session.shouldfail or session.shouldstop or self.exit is not None
                        ):
                            stopping = True
                            shared[0] = 1
                            queue.clear()
                        if not stopping and not queue:
                            for _ in range(n - len(inflight)):
                                stolen = self._steal(inflight, shared, lock)
                                if not stolen:
                                    break
                                queue.append(units.Unit(stolen, True))
                except BaseException:
                    self._abort(ex, shared)
                    raise
                self._note_recycles(ex)
            self._replay_exits(session, spool_dir)
        except BaseException:
            shared[0] = 1  # the workers stop after their current item
            raise
        finally:
            for call in inflight.values():
                call.reader.close()
            worker.state = None
            shutil.rmtree(spool_dir, ignore_errors=True)
            shared.close()

    def _steal(self, inflight: dict[Any, _Call], shared: mmap.mmap, lock: Any) -> list[int]:
        """A worker is idle and nothing is queued: take the second half of the items
        not yet claimed of the splittable call that has the most (at least 2) by
        lowering its cut; the indices taken (none: nothing to take)."""
        if not lock.acquire(timeout=0.5):  # a worker died holding it (never, but)
            return []
        try:
            best, most = None, 1
            for call in inflight.values():
                if not call.splittable:
                    continue
                claimed, cut = worker.slot_get(shared, call.slot)
                if claimed and cut - claimed > most:
                    best, most = call, cut - claimed
            if best is None:
                return []
            claimed, cut = worker.slot_get(shared, best.slot)
            new_cut = cut - most // 2
            worker.slot_set(shared, best.slot, claimed, new_cut)
        finally:
            lock.release()
        best.cut = new_cut
        self.steals += 1
        return best.indices[new_cut:cut]

    def _abort(self, ex: Any, shared: mmap.mmap) -> None:
        """Ctrl-C or an error, before the pool stops: no worker starts another item, and
        the tests running now are interrupted (KeyboardInterrupt, as in a serial run),
        so leaving does not wait for them. Ctrl-C in a terminal reaches the workers
        anyway; a SIGINT sent to this process alone (an IDE, a CI runner) would not."""
        shared[0] = 1
        try:
            pids = list(ex.pool.pids)
        except Exception:  # the pool never started, or has stopped
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGINT)
            except OSError:
                pass

    def _warn_threads(self, session: pytest.Session) -> bool:
        """Threads run in this process now, after collection (a test module or conftest
        started them at import, or a plugin): say so in the warnings summary, in
        pytest's terms; whether it did (then the pool's general warning is not given)."""
        import threading

        threads = [t for t in threading.enumerate() if t is not threading.current_thread()]
        if not threads:
            return False
        names = ", ".join(sorted(t.name for t in threads))
        message = (
            f"wool_local: {len(threads)} thread{'s' if len(threads) != 1 else ''} "
            f"({names}) ran in the pytest process after collection (started when a test "
            "module or conftest was imported, or by a plugin). Workers are forked after "
            "collection: those threads do not run there, and a lock one held at the fork "
            "stays locked in every worker. Start them in a fixture instead (a session "
            "fixture runs once per worker)."
        )
        data = {
            "message": message,
            "category": ("wool_local.workers.zygote", "ThreadedForkWarning"),
            "filename": __file__,
            "lineno": 0,
            "when": "collect",
            "nodeid": "",
            "location": None,
        }
        _replay_warning(session.ihook, data)
        return True

    def _replay_exits(self, session: pytest.Session, spool_dir: str) -> None:
        """The workers have stopped: replay what their last teardowns reported."""
        for name in sorted(os.listdir(spool_dir)):
            if name.startswith("exit-"):
                reader = spool.Reader(os.path.join(spool_dir, name))
                try:
                    for event in reader.read():
                        if event[0] == "late":
                            self._replay_late(session, event)
                finally:
                    reader.close()

    def _replay_late(self, session: pytest.Session, event: tuple[Any, ...]) -> None:
        """A worker tore down, late, what its last item left set up (at its next unit,
        or as it stopped): a failure is an error at that item's teardown, as in a
        serial run; a teardown that passed adds nothing (the item was reported)."""
        _, index, wid, events = event
        kept = [
            e
            for e in events
            if e[0] == "warning" or (e[0] == "report" and e[1].get("outcome") == "failed")
        ]
        self._replay(session, index, kept, {"logstart"}, wid)

    def _note_recycles(self, ex: Any) -> None:
        try:
            self.recycles = dict(ex.pool.stats().recycles)
        except Exception:  # the pool stopped already: nothing to say
            self.recycles = {}

    def _pump(self, session: pytest.Session, call: _Call) -> None:
        """Replay the items of ``call`` whose events are all in."""
        for event in call.reader.read():
            kind = event[0]
            if kind == "start":
                call.started, call.pending, call.replayed = event[1], [], set()
                call.wid = event[2]
            elif kind == "done":
                self.durations[session.items[event[1]].nodeid] = event[2]
                self._replay(session, call.started, call.pending, call.replayed, call.wid)
                call.done.add(event[1])
                call.started, call.pending = None, []
            elif kind == "exit":
                self.exit = (event[1], event[2])
            elif kind == "late":
                self._replay_late(session, event)
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
            stderr = _tail(worker.stderr_path(self.spool_dir, exc.pid))
            pending = [*call.pending, ("crash", why, exc, stderr)]
            if not any(e[0] == "logfinish" for e in pending):
                pending.append(("logfinish", item.nodeid, item.location))
            self._replay(session, crashed, pending, call.replayed, call.wid)
            call.done.add(crashed)
        else:
            tr = self.config.pluginmanager.get_plugin("terminalreporter")
            if tr is not None:
                tr.write_line(f"wool_local: a worker crashed between items: {exc}")
        return [i for i in call.indices[: call.cut] if i not in call.done]

    def _replay(
        self,
        session: pytest.Session,
        index: int | None,
        events: list[tuple[Any, ...]],
        replayed: set[str],
        wid: str,
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
                rep.node = self._node(wid)
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
                    sections=[(f"Captured stderr {when}", event[3])] if event[3] else [],
                    duration=0.0,
                    start=0.0,
                    stop=0.0,
                    user_properties=[],
                )
                rep.node = self._node(wid)  # type: ignore[attr-defined]
                ihook.pytest_runtest_logreport(report=rep)


#: How much of a crashed worker's captured stderr its test's report shows (bytes).
STDERR_TAIL = 8192


def _tail(path: str) -> str:
    """The end of the file at ``path`` (a crashed worker's captured stderr), or ''."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - STDERR_TAIL))
            data = f.read()
    except OSError:
        return ""
    return data.decode("utf-8", "replace")


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
