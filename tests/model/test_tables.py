"""The transition tables are total: every (role, phase, input) of a stream handler and every
(role, state, event) of a peering row has exactly one answer, with and without each bug."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerkit.model import BUGS
from peerkit.model.state import DONE, DRAINING, NEW, OPEN
from peerkit.model.tables import EFFECTS as EFFECT_DOCS
from peerkit.model.tables import (
    ENDPOINT,
    ENDPOINT_BUGS,
    IMPOSSIBLE,
    INPUTS,
    LIFECYCLE,
    LIFECYCLE_BUGS,
    LIFECYCLE_EVENTS,
    LIFECYCLE_STATES,
    PHASES,
    REMOVED,
    ROLES,
    ROUTINE_BUGS,
    Refused,
    endpoint_table,
    lifecycle_table,
)

ALL_BUG_SETS = [frozenset(), *(frozenset({b}) for b in BUGS), frozenset(BUGS)]


@pytest.mark.parametrize("bugs", ALL_BUG_SETS, ids=lambda b: "+".join(sorted(b)) or "fixed")
def test_endpoint_table_is_total(bugs: frozenset[str]) -> None:
    table = endpoint_table(bugs)
    for key in itertools.product(ROLES, PHASES, INPUTS):
        in_table = key in table
        impossible = key in IMPOSSIBLE
        assert in_table != impossible, f"{key}: in table={in_table}, impossible={impossible}"


@given(st.sampled_from(ROLES), st.sampled_from(PHASES), st.sampled_from(INPUTS),
       st.sampled_from(ALL_BUG_SETS))
def test_endpoint_table_total_hypothesis(role: str, phase: int, inp: str,
                                         bugs: frozenset[str]) -> None:
    # the h2 style: any (state, input) either has a defined outcome or is a protocol error
    table = endpoint_table(bugs)
    assert ((role, phase, inp) in table) != ((role, phase, inp) in IMPOSSIBLE)


def test_endpoint_outcomes_are_well_formed() -> None:
    for table in (ENDPOINT, *ENDPOINT_BUGS.values()):
        for (role, phase, _inp), outcome in table.items():
            assert outcome.next in (NEW, OPEN, DRAINING, DONE)
            assert phase != DONE, "a finished handler has no transitions"
            for effect in outcome.effects:
                assert effect in EFFECT_DOCS, f"undocumented effect {effect!r}"
            if role == "dialer":
                assert outcome.next != NEW


def test_bug_overlays_only_change_possible_entries() -> None:
    for bug, overlay in ENDPOINT_BUGS.items():
        assert bug in BUGS
        for key in overlay:
            assert key in ENDPOINT, f"{bug} adds {key}, which the fixed table calls impossible"
    for bug, overlay in LIFECYCLE_BUGS.items():
        assert bug in BUGS
        for key in overlay:
            assert key in LIFECYCLE


def test_every_bug_is_a_table_overlay_or_a_routine_bug() -> None:
    covered = set(ENDPOINT_BUGS) | set(LIFECYCLE_BUGS) | set(ROUTINE_BUGS)
    assert covered == set(BUGS)


@pytest.mark.parametrize("bugs", ALL_BUG_SETS, ids=lambda b: "+".join(sorted(b)) or "fixed")
def test_lifecycle_table_is_total(bugs: frozenset[str]) -> None:
    table = lifecycle_table(bugs)
    for key in itertools.product(ROLES, LIFECYCLE_STATES, LIFECYCLE_EVENTS):
        assert key in table, f"missing lifecycle entry {key}"
        nxt = table[key]
        assert isinstance(nxt, Refused) or nxt in (*[s for s in LIFECYCLE_STATES if s], REMOVED)


def test_lifecycle_key_facts() -> None:
    from peerkit.model.state import DELETING, ESTABLISHING, PENDING, TERMINATED

    assert LIFECYCLE["acceptor", None, "GenerateToken"] == PENDING
    assert LIFECYCLE["dialer", None, "Establish"] == ESTABLISHING
    for role, active in (("acceptor", PENDING), ("dialer", ESTABLISHING)):
        assert LIFECYCLE[role, active, "user delete"] == DELETING
        assert LIFECYCLE[role, active, "Terminated received"] == TERMINATED
        # the fix of #14364: a TERMINATED peering can be deleted
        assert LIFECYCLE[role, TERMINATED, "user delete"] == DELETING
        # TERMINATED rows are kept; DELETING rows go
        assert isinstance(LIFECYCLE[role, TERMINATED, "deletion routine finished"], Refused)
        assert LIFECYCLE[role, DELETING, "deletion routine finished"] == REMOVED
        # with the bug, the delete RPC returns early
        assert isinstance(lifecycle_table(frozenset({"terminated-undeletable"}))[
            role, TERMINATED, "user delete"], Refused)
