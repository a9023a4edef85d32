"""The generated parts of specs/ are current: they are rebuilt from the model's tables (and a
checker run per bug) and compared with what is committed; and the state counts specs/model.md
gives for the small configurations are the checker's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("config", ["tiny", "ci"])
def test_state_counts_in_the_model_spec_are_the_checkers(config: str) -> None:
    from peerkit.checker.engine import check
    from peerkit.model import PeeringModel, get_config

    table = (ROOT / "specs" / "model.md").read_text()
    row = re.search(rf"^\| `{config}` \| ([\d,]+) \| ([\d,]+) \| (\d+) \|", table, re.M)
    assert row, f"no row for {config} in the state-count table of specs/model.md"
    result = check(PeeringModel(get_config(config)))
    assert result.complete and result.ok
    said = tuple(int(g.replace(",", "")) for g in row.groups())
    assert said == (result.distinct_states, result.transitions, result.depth), (
        f"specs/model.md says {said} for {config}; measure the table again")
