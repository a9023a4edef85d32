"""The kit catches the plausible mistakes nobody has made yet: every mutant of the catalog that is
not shown equivalent is killed by the CI configurations, within the mutation runner's state
budget; the systematic part of the catalog covers every table entry it claims to; every
equivalent mutant has its argument in specs/mutants.md and is not killed by `ci`.

Imports: the model, the checker and peerkit.mutation (which runs the checker per mutant).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from peerkit.checker.engine import check, replay
from peerkit.model import PeeringModel, get_config
from peerkit.model.mutants import EQUIVALENT, MUTANTS, NO_OP_EFFECTS
from peerkit.model.tables import ENDPOINT, LIFECYCLE, Refused
from peerkit.model.vocabulary import (
    NO_TEARDOWN_OF_ACTIVE,
    SETTLED_IS_CLEAN,
    TERMINATED_ONLY_IF_PEER_DELETED,
    TERMINATED_ONLY_WHEN_INACTIVE,
)
from peerkit.mutation import SETUP, STATE_BUDGET, catalog_kills, run_one

ROOT = Path(__file__).resolve().parents[2]
KILLABLE = sorted(name for name in MUTANTS if name not in EQUIVALENT)


def test_the_catalog_is_large_and_systematic() -> None:
    assert len(MUTANTS) >= 30
    drops = {(m.family, *key) for m in MUTANTS.values() for key in m.endpoint
             if m.name.startswith("drop-")}
    for key, outcome in ENDPOINT.items():
        if any(e not in NO_OP_EFFECTS for e in outcome.effects):
            assert ("table", *key) in drops, f"no drop mutant for {key}"
    refused = {key for m in MUTANTS.values() if m.name.startswith("refuse:")
               for key in m.lifecycle}
    for key, nxt in LIFECYCLE.items():
        if not isinstance(nxt, Refused):
            assert key in refused, f"no refusal mutant for {key}"
    for m in MUTANTS.values():
        assert m.summary and (m.lifecycle or m.endpoint or m.switch), m.name


@pytest.mark.parametrize("name", KILLABLE)
def test_every_mutant_not_shown_equivalent_is_killed(name: str) -> None:
    kill = catalog_kills()[name]
    assert kill.killed, f"mutant {name} survives every CI configuration: {MUTANTS[name].summary}"
    assert kill.states <= STATE_BUDGET


def test_killed_counterexamples_replay() -> None:
    """A kill is a real run of the mutated model, not an artefact of the search."""
    for name in ("dialer-no-drain", "sync-list-before-snapshot",
                 "drop-send-terminated-only:acceptor-new-open-peering-marked-for-deletion"):
        kill = catalog_kills()[name]
        model = PeeringModel(get_config(kill.config), mutant=name)
        result = check(model)
        ce = result.counterexample
        assert ce is not None and ce.property_id == kill.property_id
        states = replay(model, ce.initial, ce.actions)
        assert states[-1] == (ce.steps[-1].state if ce.steps else ce.initial)


def test_the_dialers_drain_is_load_bearing() -> None:
    """Issue 6 point 1: a dialer that half-closes and stops draining loses Terminated."""
    kill = catalog_kills()["dialer-no-drain"]
    assert (kill.config, kill.property_id) == ("race", SETTLED_IS_CLEAN) or (
        kill.property_id == SETTLED_IS_CLEAN and kill.steps <= 10)


def test_a_mistake_that_breaks_the_happy_path_is_killed_at_setup() -> None:
    kill = catalog_kills()["refuse:acceptor-none-generatetoken"]
    assert kill.killed and kill.property_id == SETUP


def test_stored_map_is_caught_by_its_real_harm_too() -> None:
    """Without no-teardown-of-active, the stored-map bug still fails: a healthy dialer is
    marked TERMINATED although its peer's operator never deleted anything."""
    model = PeeringModel(get_config("ci"), {"stored-map"})
    direct = {NO_TEARDOWN_OF_ACTIVE, TERMINATED_ONLY_WHEN_INACTIVE}  # the rule itself
    model.transition_invariants = tuple(t for t in model.transition_invariants
                                        if t.id not in direct)
    ce = check(model).counterexample
    assert ce is not None and ce.property_id == TERMINATED_ONLY_IF_PEER_DELETED


def test_every_equivalent_mutant_has_its_argument_in_the_specs() -> None:
    text = (ROOT / "specs" / "mutants.md").read_text()
    for name, why in EQUIVALENT.items():
        assert name in MUTANTS
        section = why.split(":")[0]
        assert f"## {section}:" in text, f"specs/mutants.md has no section {section} ({name})"


@pytest.mark.parametrize("name", sorted(EQUIVALENT))
def test_equivalent_mutants_survive_the_ci_configuration(name: str) -> None:
    """The cheap half of the evidence (benchmarks/mutants.py explores every CI configuration)."""
    assert not run_one(name, configs=("ci", "race")).killed


def test_every_routine_switch_is_read_by_the_machine() -> None:
    """A misspelt switch would be a no-op mutant that survives (or an equivalence that holds
    vacuously): each switch name must appear in machine.py, where the routines read it."""
    from peerkit.model.mutants import SWITCHES

    source = (ROOT / "model" / "machine.py").read_text()
    missing = sorted(s for s in SWITCHES if f'"{s}"' not in source)
    assert not missing, f"switches machine.py never reads: {missing}"
