"""The kit catches every known bug: for each bug switch the checker finds a violation, with a
shortest counterexample, and replaying that counterexample step by step reproduces it. With no bug
switched on, the `ci` configuration passes completely."""

from __future__ import annotations

import pytest

from peerkit.checker.engine import check, replay
from peerkit.model import BUGS, PeeringModel, get_config
from peerkit.model.vocabulary import (
    ACCEPT_ONLY_WHEN_ACTIVE,
    NO_TEARDOWN_OF_ACTIVE,
    ROUTINES_ONLY_ON_LEADER,
    SETTLED_IS_CLEAN,
)

#: bug -> (the property the shortest counterexample breaks, its length in the default config).
#: specs/bugs.md quotes these numbers; if the model changes them, update both.
EXPECTED = {
    "stored-map": (NO_TEARDOWN_OF_ACTIVE, 1),
    "termination-race": (SETTLED_IS_CLEAN, 9),
    "terminated-undeletable": (SETTLED_IS_CLEAN, 13),
    "no-reconnect": (SETTLED_IS_CLEAN, 3),
    "deletion-no-stop": (ROUTINES_ONLY_ON_LEADER, 2),
    "dial-deleted": (ACCEPT_ONLY_WHEN_ACTIVE, 5),
}


def test_every_bug_has_an_expectation() -> None:
    assert set(EXPECTED) == set(BUGS)


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_checker_finds_the_bug_and_the_counterexample_replays(bug: str) -> None:
    model = PeeringModel(get_config("default"), {bug})
    result = check(model)
    assert not result.ok
    ce = result.counterexample
    assert ce is not None
    prop, length = EXPECTED[bug]
    assert ce.property_id == prop
    assert len(ce.steps) == length
    # replay: every step is enabled in turn and leads to the recorded states
    states = replay(model, ce.initial, ce.actions)
    assert states[1:] == [s.state for s in ce.steps]
    final = states[-1]
    if ce.kind == "invariant":
        inv = next(p for p in model.invariants if p.id == prop)
        assert not inv.holds(final)
        assert inv.explain is not None and inv.explain(final)
        # and the state before it was fine: the violation is the last step's doing
        assert inv.holds(states[-2]) if len(states) > 1 else True
    else:
        tinv = next(p for p in model.transition_invariants if p.id == prop)
        assert not tinv.holds(states[-2], ce.actions[-1], final)


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_the_same_run_is_fine_without_the_bug(bug: str) -> None:
    """The counterexample is the bug's doing: replayed on the fixed model, either some step is
    not possible (the fix changes the path) or the property holds at the end."""
    buggy = PeeringModel(get_config("default"), {bug})
    ce = check(buggy).counterexample
    assert ce is not None
    fixed = PeeringModel(get_config("default"))
    try:
        states = replay(fixed, ce.initial, ce.actions)
    except ValueError:
        return
    final = states[-1]
    for inv in fixed.invariants:
        assert inv.holds(final), (bug, inv.id)
    for tinv in fixed.transition_invariants:
        assert tinv.holds(states[-2], ce.actions[-1], final), (bug, tinv.id)


def test_ci_configuration_passes_without_bugs() -> None:
    result = check(PeeringModel(get_config("ci")))
    assert result.complete
    assert result.ok
    assert {p.verdict for p in result.properties} == {"holds"}
    assert result.distinct_states > 1000


@pytest.mark.parametrize("bug", sorted(set(BUGS) - {"deletion-no-stop"}))
def test_ci_configuration_finds_every_bug_it_can_reach(bug: str) -> None:
    assert not check(PeeringModel(get_config("ci"), {bug})).ok


def test_all_bugs_at_once_are_caught() -> None:
    assert not check(PeeringModel(get_config("default"), set(BUGS))).ok
