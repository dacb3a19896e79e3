"""Units of work for ``pytest --wool``: which items run together, in which order.

A unit is a list of indices into ``session.items``, run by one worker in one call,
in collection order; what its last item leaves set up is torn down when the
worker's next unit starts, as far as that unit's first item does not share it
(see :mod:`.worker`). ``--wool-dist`` chooses the grouping, with pytest-xdist's
meanings:

``loadscope`` (the default)
    the items of one class together (the innermost class), and the module-level
    items of one module together: a module runs class by class, and its classes
    may go to different workers (each worker then sets up the module's fixtures
    for the classes it runs).
``loadfile``
    the items of one file (module) together.
``loadgroup``
    the items marked ``@pytest.mark.xdist_group(name)`` with the same name (the
    names of an item's marks, sorted and joined with ``_``, as xdist does) together;
    the others as ``load``.
``load``
    no grouping: runs of consecutive items in chunks.

Every unit but a ``loadgroup`` group is *splittable*: at the end of the run the
controller may give the second half of its items not yet started to an idle
worker (work stealing, see :mod:`.controller`), which then sets up the module
and class fixtures those items need itself (as xdist's ``load`` would), so a
fixture of the unit's scope may be set up once more. The items of one
``xdist_group`` always run on one worker, as xdist promises.

Order: longest first. A unit's weight is the sum of its items' durations in the
previous run (pytest's cache, :data:`CACHE_KEY`); an item with no recorded
duration counts as the mean of the known ones, and when none is known each item
counts 1, so units are ordered by their number of items. Ties keep the order of
their first item.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest

from wool_local.pytest_plugin import DEFAULT_DIST, DISTS

__all__ = ["DEFAULT_DIST", "DISTS", "Unit", "make_units", "scope_key"]

#: Where the per-item durations (seconds, by nodeid) are kept in pytest's cache.
CACHE_KEY = "wool_local/durations"

#: ``load`` chunks: about this many per worker at the start of a run.
CHUNKS_PER_WORKER = 4


@dataclass
class Unit:
    indices: list[int]
    splittable: bool = False
    weight: float = 0.0


def scope_key(item: pytest.Item, dist: str) -> str | None:
    """The key grouping ``item`` under ``dist``; None: not grouped (``load``)."""
    import pytest

    if dist == "loadscope":
        parent = item.parent
        return parent.nodeid if parent is not None else item.nodeid
    if dist == "loadfile":
        file = item.getparent(pytest.File)  # type: ignore[type-abstract]
        return file.nodeid if file is not None else item.nodeid.split("::", 1)[0]
    if dist == "loadgroup":
        names = set()
        for mark in item.iter_markers("xdist_group"):
            names.add(str(mark.args[0] if mark.args else mark.kwargs.get("name", "default")))
        return "@" + "_".join(sorted(names)) if names else None
    return None


def make_units(
    items: list[pytest.Item],
    dist: str = DEFAULT_DIST,
    workers: int = 1,
    durations: dict[str, float] | None = None,
) -> list[Unit]:
    """The units of ``items`` under ``dist`` for ``workers`` workers, longest first."""
    groups: dict[str, list[int]] = {}
    loose: list[int] = []  # items no key groups, in order
    for i, item in enumerate(items):
        key = scope_key(item, dist)
        if key is None:
            loose.append(i)
        else:
            groups.setdefault(key, []).append(i)
    units = [Unit(indices, dist != "loadgroup") for indices in groups.values()]
    if loose:
        size = max(1, math.ceil(len(loose) / (max(1, workers) * CHUNKS_PER_WORKER)))
        units += [Unit(loose[k : k + size], True) for k in range(0, len(loose), size)]
    weigh(units, items, durations or {})
    units.sort(key=lambda u: (-u.weight, u.indices[0]))
    return units


def weigh(units: list[Unit], items: list[pytest.Item], durations: dict[str, float]) -> None:
    """Set each unit's weight (see the module's docstring)."""
    known = [durations[item.nodeid] for item in items if item.nodeid in durations]
    default = sum(known) / len(known) if known else 1.0
    for unit in units:
        unit.weight = sum(durations.get(items[i].nodeid, default) for i in unit.indices)
