"""Where a routine dispatches from: the hub's pool, or, in a worker, up to the hub.

:class:`HubClient` is a worker's dispatcher: it sends a routine's nested calls
up its link, and the hub schedules them like any other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .dispatch import Dispatcher, Pending, Target
from .link import Link
from .protocol import Message

#: A worker's dispatcher, for code that runs there without a ``__proxy__`` bound
#: (a task it started itself, say); set by the worker service. Routines normally
#: dispatch through ``__proxy__``, which the hub's ``WorkerPool`` block binds.
process_dispatcher: Dispatcher | None = None

#: Where a routine dispatches in a process with neither a ``__proxy__`` bound nor a
#: worker's dispatcher: a function giving one (the ambient pool's, set by
#: ``wool_local.background.install_ambient``), or None.
fallback: Callable[[], Dispatcher] | None = None


def get_dispatcher() -> Dispatcher | None:
    """Where a routine dispatches when no ``__proxy__`` is bound, or None."""
    if process_dispatcher is None and fallback is not None:
        return fallback()
    return process_dispatcher


class _HubTarget(Target):
    def __init__(self, link: Link) -> None:
        super().__init__()
        self.link = link

    def send(self, message: Message, buffers: Sequence[Any] = ()) -> None:
        self.link.send(message, buffers)


class HubClient(Dispatcher):
    """Nested dispatch from a worker: calls go up to the hub, which schedules them."""

    def __init__(self, link: Link, cancel_grace: float) -> None:
        super().__init__(main_has=lambda fn: False, cancel_grace=cancel_grace)
        self.target = _HubTarget(link)

    def submit(self, pending: Pending) -> None:
        self.send_call(self.target, pending)  # the hub does the scheduling
