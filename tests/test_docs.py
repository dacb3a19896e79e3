"""The docs state facts the code defines; these keep the cheap ones true."""

from __future__ import annotations

import re
from pathlib import Path

import wool_local.workers as workers_pkg
from wool_local.ipc import ring
from wool_local.workers import link, protocol

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def test_given_protocol_md_then_its_reply_statuses_are_exactly_the_protocols():
    """Given the reply-status table in docs/protocol.md, its (code, name) rows are
    exactly the statuses workers/protocol.py defines."""
    text = (DOCS / "protocol.md").read_text()
    documented = set(re.findall(r"^\s*\|\s*(\d+)\s*\|\s*`([A-Z]+)`\s*\|", text, re.M))
    names = ("RETURNED", "RAISED", "YIELDED", "EXHAUSTED", "CANCELLED")
    defined = {(str(getattr(protocol, name)), name) for name in names}
    assert documented == defined
    assert not hasattr(protocol, "REJECTED")


def test_given_architecture_md_then_its_spin_figures_are_the_codes():
    """Given the spin windows architecture.md quotes, they are the link's SPIN_WINDOW
    and the ring's DEFAULT_SPIN."""
    text = (DOCS / "architecture.md").read_text()
    assert f"`SPIN_WINDOW` ({link.SPIN_WINDOW * 1e6:.0f} us)" in text
    assert f"spins {ring.DEFAULT_SPIN * 1e6:.0f} us by default (`DEFAULT_SPIN`" in text


def test_given_the_workers_readme_then_it_lists_every_module():
    """Given wool_local/workers/README.md, every module of the package has a row."""
    package = Path(workers_pkg.__file__).parent
    text = (package / "README.md").read_text()
    modules = {p.name for p in package.glob("*.py") if p.name != "__init__.py"}
    missing = {m for m in modules if f"`{m}`" not in text}
    assert not missing
