"""The generated parts of specs/ are current: they are rebuilt from the model's tables (and a
checker run per bug) and compared with what is committed."""

from __future__ import annotations

from pathlib import Path

from peerkit.specgen import GENERATED, documents

ROOT = Path(__file__).resolve().parents[1]


def test_generated_specs_are_current() -> None:
    stale = []
    for name, text in documents().items():
        path = ROOT / GENERATED / name
        if not path.exists() or path.read_text() != text:
            stale.append(name)
    assert not stale, f"stale: {stale}; run `peerkit specs` and commit specs/generated"


def test_diagrams_come_from_the_tables() -> None:
    from peerkit.model.diagrams import endpoint_diagram, lifecycle_diagram

    assert "ESTABLISHING --> TERMINATED: Terminated received" in lifecycle_diagram("dialer")
    assert "OPEN --> DRAINING: Terminated, teardown" in endpoint_diagram("dialer")
