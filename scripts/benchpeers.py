"""The process pools wool_local is measured against, driven the way their users drive them.

Each peer is driven with blocking calls, and every call and wait carries a timeout; a pool
whose case failed is killed, not drained. ProcessPoolExecutor and multiprocessing.Pool use
the ``fork`` start method (the cheapest start-up, like wool_local's forked workers); loky
uses its own process start (it has no fork mode). Used by bench.py and bench_cpu.py.
"""

from __future__ import annotations

import abc
import contextlib
import importlib
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from benchlib import deadline_iter


class Peer(abc.ABC):
    """One way Python users run tasks in other processes."""

    name: str
    call_method: str  # how one call is made and waited on
    many_method: str  # how many calls are dispatched one task each

    @abc.abstractmethod
    def _open(self, workers: int) -> Any: ...

    @abc.abstractmethod
    def call(self, pool: Any, timeout: float, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in a worker, waited on for at most ``timeout`` seconds."""

    @abc.abstractmethod
    def many(
        self, pool: Any, fn: Callable[[Any], Any], items: Iterable[Any], timeout: float
    ) -> Iterable[Any]:
        """Results of ``fn(item)`` for every item, dispatched one task each, all within
        ``timeout`` seconds (in the order they arrive)."""

    @abc.abstractmethod
    def _close(self, pool: Any, failed: bool) -> None:
        """Shut down; after a failure kill the workers instead of waiting for them."""

    @contextlib.contextmanager
    def pool(self, workers: int) -> Iterator[Any]:
        """A fresh pool of ``workers`` processes, shut down (killed after a failure) on exit."""
        pool = self._open(workers)
        failed = True
        try:
            yield pool
            failed = False
        finally:
            self._close(pool, failed)


class ForkExecutor(Peer):
    name = "ProcessPoolExecutor (fork)"
    call_method = "submit().result()"
    many_method = "map(chunksize=1)"

    def _open(self, workers: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))

    def call(
        self, pool: ProcessPoolExecutor, timeout: float, fn: Callable[..., Any], *args: Any
    ) -> Any:
        return pool.submit(fn, *args).result(timeout=timeout)

    def many(
        self,
        pool: ProcessPoolExecutor,
        fn: Callable[[Any], Any],
        items: Iterable[Any],
        timeout: float,
    ) -> Iterable[Any]:
        # map's timeout runs from this call to the last result.
        return pool.map(fn, items, chunksize=1, timeout=timeout)

    def _close(self, pool: ProcessPoolExecutor, failed: bool) -> None:
        if failed:
            for proc in list((pool._processes or {}).values()):  # no public kill
                proc.kill()
        pool.shutdown(wait=True, cancel_futures=True)


class ForkMpPool(Peer):
    name = "multiprocessing.Pool (fork)"
    call_method = "apply_async().get()"  # what Pool.apply does, with a timeout added
    many_method = "imap_unordered(chunksize=1)"

    def _open(self, workers: int) -> Any:
        return multiprocessing.get_context("fork").Pool(workers)

    def call(self, pool: Any, timeout: float, fn: Callable[..., Any], *args: Any) -> Any:
        return pool.apply_async(fn, args).get(timeout)

    def many(
        self, pool: Any, fn: Callable[[Any], Any], items: Iterable[Any], timeout: float
    ) -> Iterable[Any]:
        results = pool.imap_unordered(fn, items, chunksize=1)
        return deadline_iter(results.next, timeout)

    def _close(self, pool: Any, failed: bool) -> None:
        if failed:
            pool.terminate()
        else:
            pool.close()
        pool.join()


class LokyExecutor(Peer):
    name = "loky"
    call_method = "submit().result()"
    many_method = "map(chunksize=1)"

    def _open(self, workers: int) -> Any:
        import loky

        return loky.ProcessPoolExecutor(max_workers=workers)

    def call(self, pool: Any, timeout: float, fn: Callable[..., Any], *args: Any) -> Any:
        return pool.submit(fn, *args).result(timeout=timeout)

    def many(
        self, pool: Any, fn: Callable[[Any], Any], items: Iterable[Any], timeout: float
    ) -> Iterable[Any]:
        return pool.map(fn, items, chunksize=1, timeout=timeout)

    def _close(self, pool: Any, failed: bool) -> None:
        pool.shutdown(wait=True, kill_workers=failed)


def peers(loky: bool = True) -> tuple[list[Peer], list[str]]:
    """The peers that can run here, and a note for each one skipped."""
    found: list[Peer] = [ForkExecutor(), ForkMpPool()]
    notes = []
    if loky:
        try:
            importlib.import_module("loky")
        except ImportError:
            notes.append("loky skipped: not importable (pip install loky)")
        else:
            found.append(LokyExecutor())
    return found, notes
