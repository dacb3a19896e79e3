"""``map`` over a pool: lazy input, chunks sized by measured cost, results in order or as they come.

A call per item costs the hub a dispatch (tens of microseconds) and an
asyncio task; for small items that is most of the work. ``map`` instead
sends *chunks*: lists of argument tuples that a worker runs as one tight
loop (a plain function is called directly, no coroutine or task per item;
an async one runs its items concurrently), answering with the results and
the seconds the chunk took. From those seconds the hub keeps an estimate of
the cost per item and sizes the next chunks to about :data:`CHUNK_SECONDS`
each, starting from one item (so a few expensive items are spread over the
workers at once) and growing at most :data:`GROWTH` times per answer.

Input is read lazily: a chunk is formed only when there is room for it in
the window of :data:`WINDOW_PER_WORKER` chunks per worker, counted from the
oldest chunk not yet yielded, so memory stays bounded when the consumer is
slow or a chunk is, and an infinite iterator works. An item that raises
ends the map: results before it are yielded first (in order, or as they
came), then its exception is raised with a note naming the item's index.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

from .callables import SyncBody, body_of
from .workers import payload

#: Seconds of work a chunk aims at: long enough that a dispatch per chunk costs
#: under 1% of it, short enough for steady progress and balance at the end.
CHUNK_SECONDS = 0.01
#: Most items in one chunk.
MAX_CHUNK = 100_000
#: How much a chunk may grow over the last one (a noisy first reading must not
#: make one worker take the whole input).
GROWTH = 16
#: Chunks sent or finished-but-not-yielded, per worker.
WINDOW_PER_WORKER = 3

Progress = Callable[[int, "int | None"], None]

#: What ``progress=None`` means (``wool-local run --progress`` sets it).
default_progress: bool = False


class Items(list):
    """A chunk's arguments. Not a plain list on purpose: the dispatch looks one level
    into a call's arguments for large ``bytes`` to send out of band, and walking
    thousands of items for them would cost more than the chunk's pickling."""

    __slots__ = ()


class ChunkRunner:
    """Runs one chunk of a map in a worker: ``(first, items)`` to ``(results, failure,
    seconds)``; ``failure`` is ``(index, pickled exception)`` for the first item that
    raised (results stop before it)."""

    def __init__(self, body: Any, star: bool) -> None:
        self.body = body
        # Items are argument tuples (several iterables), or the arguments themselves.
        self.star = star
        # Named after the mapped function, in messages and when deciding how to
        # pickle it (a function of __main__ goes by value).
        self.__qualname__ = f"map({payload.name_of(body)})"
        self.__module__ = getattr(body, "__module__", None) or __name__

    async def __call__(self, first: int, items: list[Any]) -> tuple[Any, ...]:
        start = time.perf_counter()
        body = self.body
        results: list[Any] = []
        failure: tuple[int, bytes] | None = None
        if type(body) is SyncBody:
            fn = body.fn
            append = results.append
            try:  # the tight loop: the failing item's index is len(results)
                if self.star:
                    for args in items:
                        append(fn(*args))
                else:
                    for arg in items:
                        append(fn(arg))
            except Exception as exc:
                failure = (first + len(results), payload.dumps_exception(exc, fn))
        else:
            calls = (body(*a) for a in items) if self.star else (body(a) for a in items)
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            for k, out in enumerate(outcomes):
                if isinstance(out, BaseException):
                    failure = (first + k, payload.dumps_exception(out, body))
                    break
                results.append(out)
        return results, failure, time.perf_counter() - start

    def __reduce__(self) -> Any:
        return (ChunkRunner, (self.body, self.star))


class _Sizer:
    """The next chunk's size, from the cost per item the workers measure."""

    def __init__(
        self, chunksize: int | str, workers: int, total: int | None, seconds: float = CHUNK_SECONDS
    ) -> None:
        self.fixed = chunksize if isinstance(chunksize, int) else None
        self.seconds = seconds  # the work a chunk aims at
        self.per_item: float | None = None
        self.size = 1
        # With a known length, at least a few chunks per worker: balance at the end.
        self.cap = MAX_CHUNK
        if total is not None:
            self.cap = max(1, min(MAX_CHUNK, -(-total // (4 * workers))))

    def next(self) -> int:
        return self.fixed if self.fixed is not None else self.size

    def measured(self, items: int, seconds: float) -> None:
        if self.fixed is not None or items == 0:
            return
        cost = seconds / items
        self.per_item = cost if self.per_item is None else 0.5 * (self.per_item + cost)
        want = int(self.seconds / self.per_item) if self.per_item > 0 else self.cap
        self.size = max(1, min(want, self.cap, self.size * GROWTH))


def map_over(
    dispatcher: Any,
    workers: int,
    fn: Any,
    iterables: tuple[Iterable[Any], ...],
    *,
    chunksize: int | str = "auto",
    ordered: bool = True,
    progress: bool | Progress | None = None,
    chunks: bool = False,
) -> AsyncIterator[Any]:
    """``fn(*args)`` for the argument tuples ``zip(*iterables)``, run on ``dispatcher``'s
    workers in chunks; see the module's docstring. With ``chunks``, each chunk's
    results come as one list (for consumers that hand them on in bulk)."""
    if not iterables:
        raise TypeError("map() needs at least one iterable")
    if chunksize != "auto" and not (isinstance(chunksize, int) and chunksize >= 1):
        raise ValueError(f"chunksize must be a positive int or 'auto', got {chunksize!r}")
    star = len(iterables) > 1
    runner = ChunkRunner(body_of(fn), star)
    total = _length(iterables)
    # A dispatcher whose dispatches cost more (the wool backend's) asks for longer chunks.
    seconds = getattr(dispatcher, "chunk_seconds", CHUNK_SECONDS)
    sizer = _Sizer(chunksize, workers, total, seconds)
    if progress is None:
        progress = default_progress
    report = _progress(progress, total, payload.name_of(fn))
    # One iterable: its items are the arguments; several: tuples, the shortest ends it.
    items = zip(*iterables, strict=False) if star else iter(iterables[0])
    return _run(dispatcher, workers, runner, items, sizer, ordered, report, not chunks)


async def _run(
    dispatcher: Any,
    workers: int,
    runner: ChunkRunner,
    items: Iterator[Any],
    sizer: _Sizer,
    ordered: bool,
    report: Callable[[int], None] | None,
    flat: bool,
) -> AsyncIterator[Any]:
    window = WINDOW_PER_WORKER * max(1, workers)
    chunks: deque[asyncio.Future[Any]] = deque()  # ordered: oldest not yet yielded first
    running: set[asyncio.Future[Any]] = set()  # unordered: not yet finished
    next_index = 0
    exhausted = False
    try:
        while True:
            # Fill the window with new chunks, reading the input only as needed.
            while not exhausted and len(chunks) + len(running) < window:
                batch = Items(itertools.islice(items, sizer.next()))
                if not batch:
                    exhausted = True
                    break
                task = asyncio.ensure_future(dispatcher.call(runner, (next_index, batch), {}))
                next_index += len(batch)
                if ordered:
                    chunks.append(task)
                else:
                    running.add(task)
            if ordered:
                if not chunks:
                    return
                done = await chunks[0]
                chunks.popleft()
                outcomes = [done]
            else:
                if not running:
                    return
                finished, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                running -= finished
                outcomes = [t.result() for t in finished]
            for results, failure, seconds in outcomes:
                sizer.measured(len(results) + (failure is not None), seconds)
                if report is not None:
                    report(len(results) + (failure is not None))
                if flat:
                    for result in results:
                        yield result
                elif results:
                    yield results
                if failure is not None:
                    index, data = failure
                    exc = payload.loads_exception(data)
                    exc.add_note(f"raised by item {index} of {runner.__qualname__}")
                    raise exc
    finally:
        pending = [t for t in (*chunks, *running) if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        if report is not None:
            report(0)  # lets a bar close


def _length(iterables: tuple[Iterable[Any], ...]) -> int | None:
    """How many items ``zip(*iterables)`` gives, if every iterable knows its length."""
    try:
        return min(len(it) for it in iterables)  # type: ignore[arg-type]
    except TypeError:
        return None


def _progress(
    progress: bool | Progress, total: int | None, name: str
) -> Callable[[int], None] | None:
    """A function taking the number of items just finished (0 at the end)."""
    if progress is False or progress is None:
        return None
    done = 0
    if callable(progress):
        callback = progress

        def report(n: int) -> None:
            nonlocal done
            done += n
            if n:
                callback(done, total)

        return report
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise ImportError(
            "map(progress=True) draws its bar with tqdm: pip install 'wool-local[progress]' "
            "(or pass a callback: progress=lambda done, total: ...)"
        ) from None
    bar = tqdm(total=total, desc=name, unit="item")

    def draw(n: int) -> None:
        if n:
            bar.update(n)
        else:
            bar.close()

    return draw
