"""The wool backend: routines of ``wool_local`` dispatched through a *wool* pool.

``WorkerPool(backend="wool")`` (and ``wool-local run --backend wool``) runs the
same routines on the distributed runtime wool instead of forked workers: its
workers are processes spawned locally or found on the network through wool's
discovery. wool is an optional dependency (``pip install 'wool-local[wool]'``)
imported only here, and this package only when that backend is chosen.

* :mod:`.trampolines`: the two wool routines every dispatch goes through; they
  run the ``wool_local`` callable in the wool worker and carry the
  ``wool_local`` context variables both ways.
* :mod:`.dispatcher`: the caller's side, the same ``call``/``stream``
  interface as the hub's, and the proxy routines find in ``__proxy__``.
* :mod:`.errors`: wool's transport failures as wool_local's exceptions.
* :mod:`.hub`: starts and stops the ``wool.WorkerPool`` behind a ``WorkerPool``.
"""

from __future__ import annotations

from types import ModuleType

INSTALL_HINT = "pip install 'wool-local[wool]'"


def check_installed() -> None:
    """ImportError saying how to install wool if it is not installed (without
    importing it: that takes a fifth of a second, paid when the pool starts)."""
    import importlib.util

    if importlib.util.find_spec("wool") is None:
        raise ImportError(
            f"the wool backend needs the wool package, which is not installed: {INSTALL_HINT}"
        )


def import_wool() -> ModuleType:
    """The ``wool`` module; ImportError saying how to install it if it is missing."""
    try:
        import wool
    except ImportError as exc:
        raise ImportError(
            f"the wool backend needs the wool package, which is not installed: {INSTALL_HINT} "
            f"(or pip install wool) [{exc}]"
        ) from exc
    return wool
