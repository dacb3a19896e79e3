"""What runs in a worker of ``pytest --wool``: the items of one unit, by index.

The controller fills :data:`state` and registers the fork hooks below before it
starts the pool, so the zygote, and every worker forked from it, inherit the
collected session: a worker never imports or collects. A unit is one call of
:func:`run_unit` with the indices of its items in ``session.items``; the worker
runs each through ``pytest_runtest_protocol`` with ``nextitem`` the unit's next
item (None for the last one), and writes what pytest would have reported (log
start and finish, the reports, the warnings) to the call's spool, which the
controller replays.

Fixtures are torn down as a serial run of the worker's own sequence of items
would: the last item of a unit tears down only itself (:func:`_defer_teardowns`),
the next unit starts by tearing down what its first item does not share (a
``late`` teardown of the previous item, :func:`_teardown_last`), and the worker
tears down the rest when it stops serving (the run's end, a recycle), into an
exit spool of its own (``exit-<pid>.spool``) that the controller replays after
the pool stopped. So a module's fixture stays up between two units of that
module on one worker, and session fixtures live as long as the worker.

Numbering. Each worker gets ``gw<k>``: ``k`` counts the forks of the current
zygote (the fork hooks count them in the zygote, which is single-threaded), so
the first workers are ``gw0``..``gw<n-1>`` and a replacement gets the next number.

Set up once per worker, at its first unit (:func:`_setup_worker`): the
``PYTEST_XDIST_*`` variables and ``config.workerinput`` (pytest-xdist's own
``worker_id`` and ``testrun_uid`` fixtures read it), a basetemp of its own under
the session's, fresh capture files (the inherited ones are shared with every
other process of the run), and the terminal reporter and junitxml writer taken
out: the controller reports. ``random`` is reseeded after every fork by CPython
itself.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import pickle
import signal
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

import pytest

from . import spool

if TYPE_CHECKING:
    import mmap
    from pathlib import Path


@dataclass
class State:
    """What the controller hands its workers through the fork."""

    session: pytest.Session
    workercount: int
    testrunuid: str
    #: Shared memory: byte 0 is set when the controller stops the run (-x, Ctrl-C,
    #: an error); from :data:`SLOTS_AT`, a call's slot (see :func:`claim`).
    stop: mmap.mmap
    basetemp: Path | None
    #: Where the spools are (a worker writes its exit spool there).
    spool_dir: str = ""
    #: Guards the slots (a ``multiprocessing.Lock``, shared through the fork).
    lock: Any = None
    controller_pid: int = field(default_factory=os.getpid)
    # -- set after the fork: the zygote's pid and fork count, this worker's number --
    zygote_pid: int | None = None
    forks: int = 0
    number: int | None = None
    last: int | None = None  # the index of the last item this worker ran
    retiring: bool = False  # tearing the session down: teardown_exact(None) is whole


#: Where the calls' slots start in :attr:`State.stop`, and the size of one: two
#: int32, the number of the call's items the worker has claimed and the cut (the
#: worker runs the items before it; the controller lowers it to give the rest of a
#: ``load`` unit to an idle worker).
SLOTS_AT = 8
SLOT = struct.Struct("<ii")


def slot_get(shared: mmap.mmap, slot: int) -> tuple[int, int]:
    claimed, cut = SLOT.unpack_from(shared, SLOTS_AT + SLOT.size * slot)
    return claimed, cut


def slot_set(shared: mmap.mmap, slot: int, claimed: int, cut: int) -> None:
    SLOT.pack_into(shared, SLOTS_AT + SLOT.size * slot, claimed, cut)


#: Set by the controller before the pool starts; None in other processes.
state: State | None = None
_hooks_registered = False


def register_fork_hooks() -> None:
    """Count the zygote's forks (once per process; the hooks do nothing without state)."""
    global _hooks_registered
    if not _hooks_registered:
        _hooks_registered = True
        os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


def _before_fork() -> None:
    st = state
    if st is not None and st.zygote_pid == os.getpid():
        st.forks += 1


def _after_fork_in_child() -> None:
    st = state
    if st is None:
        return
    ppid = os.getppid()
    if ppid == st.controller_pid and st.zygote_pid is None:  # a zygote (or its replacement)
        st.zygote_pid, st.forks = os.getpid(), 0
    elif ppid == st.zygote_pid and st.number is None:  # a worker
        st.number = st.forks - 1
        wid = f"gw{st.number}"
        os.environ["PYTEST_XDIST_WORKER"] = wid
        os.environ["PYTEST_XDIST_WORKER_COUNT"] = str(st.workercount)
        os.environ["PYTEST_XDIST_TESTRUNUID"] = st.testrunuid
    # Anything forked below a worker (a test that forks) is left alone.


def worker_id() -> str:
    st = state
    return "master" if st is None or st.number is None else f"gw{st.number}"


class _Recorder:
    """The worker's reporting hooks: each event goes to the current unit's spool.

    Events are held and written together, one pickle and one write for several:
    ``start`` at once (after a crash the controller knows which item was running),
    then up to the call's report, or to any report that did not pass (a crash in
    the teardown that follows must not lose the failure), then up to ``done``."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.out: BinaryIO | None = None
        self._held: list[tuple[Any, ...]] = []
        #: Where events go instead while not None (a late teardown's, see _teardown_last).
        self.aside: list[tuple[Any, ...]] | None = None

    def emit(self, event: tuple[Any, ...], flush: bool = False) -> None:
        if self.out is None:
            return
        if self.aside is not None:
            self.aside.append(event)
            return
        self._held.append(event)
        if flush:
            self.flush()

    def flush(self) -> None:
        """Write the events held so far."""
        held, self._held = self._held, []
        if not held or self.out is None:
            return
        try:
            spool.write(self.out, held)
        except Exception:  # something in a report does not pickle: user_properties
            spool.write(self.out, [_picklable(e) for e in held])

    @pytest.hookimpl
    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        self.emit(("logstart", nodeid, location))

    @pytest.hookimpl
    def pytest_runtest_logfinish(self, nodeid: str, location: Any) -> None:
        self.emit(("logfinish", nodeid, location))

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = self.config.hook.pytest_report_to_serializable(config=self.config, report=report)
        self.emit(("report", data), flush=report.when == "call" or not report.passed)

    @pytest.hookimpl
    def pytest_warning_recorded(
        self, warning_message: Any, when: str, nodeid: str, location: Any
    ) -> None:
        category = warning_message.category or UserWarning
        data = {
            "message": str(warning_message.message),
            "category": (category.__module__, category.__qualname__),
            "filename": warning_message.filename,
            "lineno": warning_message.lineno,
            "when": when,
            "nodeid": nodeid,
            "location": location,
        }
        self.emit(("warning", data))


def _picklable(event: tuple[Any, ...]) -> tuple[Any, ...]:
    """``event``, a report's ``user_properties`` made reprs if it does not pickle."""
    try:
        pickle.dumps(event)
    except Exception:
        if event[0] != "report":
            raise
        data = dict(event[1])
        data["user_properties"] = [(k, repr(v)) for k, v in data.get("user_properties", ())]
        return ("report", data)
    return event


class _QuietReporter:
    """Stands in for the terminal reporter in a worker: plugins that ask for it (its
    ``_tw``, through ``config.get_terminal_writer()``) still find it, but none of its
    hooks runs, so the worker writes no report of its own to the terminal."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


_recorder: _Recorder | None = None


def _setup_worker(st: State) -> _Recorder:
    global _recorder
    config = st.session.config
    wid = worker_id()
    config.workerinput = {  # type: ignore[attr-defined]
        "workerid": wid,
        "workercount": st.workercount,
        "testrunuid": st.testrunuid,
        "mainargv": list(sys.argv),
    }
    config.workeroutput = {}  # type: ignore[attr-defined]
    # The thread that forked the zygote was the pool's: in a serial run tests run in
    # the main thread, and some look at its name.
    threading.current_thread().name = "MainThread"
    pm = config.pluginmanager
    tr = pm.get_plugin("terminalreporter")
    if tr is not None:
        pm.unregister(tr)
        pm.register(_QuietReporter(tr), "terminalreporter")
    try:
        from _pytest.junitxml import xml_key

        xml = config.stash.get(xml_key, None)
        if xml is not None and pm.is_registered(xml):
            pm.unregister(xml)
    except ImportError:
        pass
    capman = pm.get_plugin("capturemanager")
    inherited = getattr(capman, "_global_capturing", None)
    if inherited is not None:
        # Its temporary files are shared (one offset) with every process of the run:
        # let go of them without reading them, and capture into files of our own.
        inherited.stop_capturing()
        capman._global_capturing = None  # type: ignore[union-attr]
        capman.start_global_capturing()  # type: ignore[union-attr]
        capman.suspend_global_capture()  # type: ignore[union-attr]
        _name_stderr_file(capman._global_capturing, stderr_path(st.spool_dir, os.getpid()))  # type: ignore[union-attr]
    factory = getattr(config, "_tmp_path_factory", None)
    if st.basetemp is not None and factory is not None:
        mine = st.basetemp / wid
        mine.mkdir(exist_ok=True)
        factory._basetemp = mine
    recorder = _Recorder(config)
    pm.register(recorder, "wool_local-worker")
    _recorder = recorder
    _defer_teardowns(st)
    from wool_local.workers.worker import at_exit

    at_exit(lambda: _teardown_session(st, recorder))
    return recorder


def stderr_path(spool_dir: str, pid: int) -> str:
    """Where worker ``pid`` captures its tests' stderr (see :func:`_name_stderr_file`)."""
    return os.path.join(spool_dir, f"stderr-{pid}")


def _name_stderr_file(capturing: Any, path: str) -> None:
    """Move the file fd-capture keeps stderr in to ``path``, by putting a named file
    under the same descriptor: capture works as before, and after a crash the
    controller finds there what the crashed test wrote (each phase starts it afresh).
    Nothing to do when stderr is not captured at the fd level."""
    tmpfile = getattr(getattr(capturing, "err", None), "tmpfile", None)
    try:
        target = tmpfile.fileno()  # type: ignore[union-attr]
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    except (AttributeError, OSError, ValueError):
        return
    try:
        os.dup2(fd, target)
    finally:
        os.close(fd)


class _Collectors:
    """A stand-in next item that descends from the given collectors: tearing down to it
    tears down the rest of the stack (the item just run) and keeps them."""

    def __init__(self, chain: list[Any]) -> None:
        self._chain = chain

    def listchain(self) -> list[Any]:
        return self._chain


def _defer_teardowns(st: State) -> None:
    """Make the worker's teardowns to ``nextitem=None`` (a unit's end, a stop) tear
    down the item alone and keep its collectors (class, module, package, session)
    set up: the worker's next unit first tears down what its first item does not
    share (:func:`_teardown_last`), as pytest would with that item as ``nextitem``,
    and the worker tears down the rest when it retires. Hooks still see
    ``nextitem=None``: only the setup state's idea of what comes next changes."""
    setupstate = st.session._setupstate
    teardown_exact = setupstate.teardown_exact

    def teardown_to(nextitem: Any) -> None:
        if nextitem is None and not st.retiring:
            nextitem = _Collectors([n for n in setupstate.stack if not isinstance(n, pytest.Item)])
        teardown_exact(nextitem)

    setupstate.teardown_exact = teardown_to  # type: ignore[method-assign]


def _teardown_last(st: State, recorder: _Recorder, nextitem: pytest.Item | None) -> None:
    """Tear down what the worker's last item left set up that ``nextitem`` (None: the
    worker retires) does not need, as a teardown phase of that item run once more
    (``call_and_report``: capture and logging apply), and write its events as one
    ``("late", index, worker id, events)``; nothing when nothing is to go."""
    stack = st.session._setupstate.stack
    if st.last is None or not stack:
        return
    if nextitem is not None:
        chain = nextitem.listchain()
        if all(node in chain for node in stack):
            return
    from _pytest.runner import call_and_report

    item = st.session.items[st.last]
    try:
        # The logging plugin's teardown hook expects what its setup hook left (and
        # removed it at the item's first teardown).
        from _pytest.logging import caplog_records_key

        item.stash.setdefault(caplog_records_key, {})
    except ImportError:
        pass
    events: list[tuple[Any, ...]] = []
    recorder.aside = events
    try:
        call_and_report(item, "teardown", log=True, nextitem=nextitem)
    finally:
        recorder.aside = None
    recorder.emit(("late", st.last, worker_id(), events), flush=True)


def _teardown_session(st: State, recorder: _Recorder) -> None:
    """The worker stops serving: tear down everything, writing to its exit spool."""
    st.retiring = True
    path = os.path.join(st.spool_dir, f"exit-{os.getpid()}.spool")
    with open(path, "ab", buffering=0) as out:
        recorder.out = out
        try:
            _teardown_last(st, recorder, None)
        finally:
            recorder.flush()
            recorder.out = None


def run_unit(path: str, indices: list[int], slot: int) -> int:
    """Run the items ``indices`` of the inherited session in order, writing their
    events to the spool at ``path``, up to the cut in shared ``slot``; the number of
    items run."""
    st = state
    if st is None:
        raise RuntimeError("wool_local: run_unit called outside a pytest --wool worker")
    recorder = _recorder or _setup_worker(st)  # (set in this worker by its first unit)
    # This runs in the worker's event loop thread, blocking it: the tests see a plain
    # process, as in a serial run: no running loop (asyncio.run() and pytest-asyncio's
    # loops work), no pool bound (a fresh context), and no worker's dispatcher (a
    # routine called with no pool of its own raises NoPoolError, as it would there),
    # and SIGINT raising KeyboardInterrupt (a worker ignores it, and the processes a
    # test starts would inherit that).
    from wool_local.workers import hubclient

    sigint = signal.signal(signal.SIGINT, signal.default_int_handler)

    loop = asyncio.events._get_running_loop()
    asyncio.events._set_running_loop(None)
    asyncio.set_event_loop(None)
    dispatcher, hubclient.process_dispatcher = hubclient.process_dispatcher, None
    try:
        return contextvars.Context().run(_run_items, st, recorder, path, indices, slot)
    finally:
        signal.signal(signal.SIGINT, sigint)
        hubclient.process_dispatcher = dispatcher
        asyncio.events._set_running_loop(loop)
        asyncio.set_event_loop(loop)


def _run_items(st: State, recorder: _Recorder, path: str, indices: list[int], slot: int) -> int:
    session = st.session
    items = session.items
    ran = 0
    with open(path, "ab", buffering=0) as out:
        recorder.out = out
        try:
            try:
                _teardown_last(st, recorder, items[indices[0]])
            except (pytest.exit.Exception, KeyboardInterrupt) as exc:
                recorder.emit(_exit_event(exc), flush=True)
                return 0
            for k, index in enumerate(indices):
                if st.stop[0]:
                    break
                # Claim item k unless the controller cut the unit before it; the cut
                # it may set later is past k + 1, so k + 1 stays this worker's.
                with st.lock:
                    _, cut = slot_get(st.stop, slot)
                    if k >= cut:
                        break
                    slot_set(st.stop, slot, k + 1, cut)
                item = items[index]
                nextitem = None if k + 1 >= cut else items[indices[k + 1]]
                recorder.emit(("start", index, worker_id()), flush=True)
                st.last = index
                t0 = time.perf_counter()
                try:
                    item.config.hook.pytest_runtest_protocol(item=item, nextitem=nextitem)
                except (pytest.exit.Exception, KeyboardInterrupt) as exc:
                    recorder.emit(_exit_event(exc), flush=True)
                    break
                recorder.emit(("done", index, time.perf_counter() - t0), flush=True)
                ran += 1
                if session.shouldfail or session.shouldstop:
                    break  # -x / --maxfail seen in this worker: the controller stops too
            # Cut short (a stop, the rest given away) or not, what the last item
            # left set up waits for the next unit (or the worker's exit).
        finally:
            recorder.flush()
            recorder.out = None
    return ran


def _exit_event(exc: BaseException) -> tuple[Any, ...]:
    """The spool event of ``pytest.exit()`` or a KeyboardInterrupt: the run stops."""
    if isinstance(exc, pytest.exit.Exception):
        return ("exit", exc.msg, exc.returncode)
    return ("exit", "KeyboardInterrupt", pytest.ExitCode.INTERRUPTED)
