"""Where a routine dispatches from: the hub's pool, or, in a worker, up to the hub.

:class:`HubClient` is a worker's dispatcher: it sends a routine's nested calls
up its link, and the hub schedules them like any other.
"""

from __future__ import annotations

import contextvars
from collections.abc import Sequence
from typing import Any

from .dispatch import Dispatcher, Pending, Target
from .link import Link
from .protocol import Call, Message

#: The dispatcher routines use: the pool of the enclosing ``WorkerPool`` block
#: in the hub. In a worker it is unset and :data:`process_dispatcher` applies.
current_dispatcher: contextvars.ContextVar[Dispatcher | None] = contextvars.ContextVar(
    "wool_local.dispatcher", default=None
)
process_dispatcher: Dispatcher | None = None  # set by the worker service


def get_dispatcher() -> Dispatcher | None:
    """Where a routine called here dispatches to, or None outside any pool."""
    return current_dispatcher.get() or process_dispatcher


class _HubTarget(Target):
    def __init__(self, link: Link) -> None:
        super().__init__("hub")
        self.link = link

    def send(self, message: Message, buffers: Sequence[Any] = ()) -> None:
        self.link.send(message, buffers)


class HubClient(Dispatcher):
    """Nested dispatch from a worker: calls go up to the hub, which schedules them."""

    def __init__(self, link: Link) -> None:
        super().__init__(main_has=lambda fn: False)
        self.target = _HubTarget(link)

    def submit(self, rid: int, pending: Pending, call: Call, buffers: Sequence[Any] = ()) -> None:
        self.send_call(self.target, pending, call, buffers)  # the hub does the scheduling
