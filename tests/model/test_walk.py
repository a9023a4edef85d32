"""Random walks through the model far beyond the checker's bounds (3 clusters, generous budgets,
every fault kind, ACKs, the split sync pass), checking every property on the way.

Safety properties are checked on every state and every step. The liveness property is checked
where a walk can check it: now and then, a search over protocol steps alone (no operator, no
fault) from the current state must reach a settled state; settled states must be clean (the
invariant settled-is-clean, checked on every state anyway)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from peerkit.model import PeeringModel, get_config
from peerkit.model import actions as A
from peerkit.model.properties import unsettled_reason
from peerkit.model.state import World

WALK = get_config("default").with_(
    name="walk", clusters=3, tokens=3, establishes=3, deletes=4, cleanups=3, churn=6,
    faults=4, failovers=3, heartbeat_faults=True, acks=True, split_sync=True,
)

SETTLE_SEARCH_LIMIT = 20_000


def settles(model: PeeringModel, start: World) -> bool | None:
    """Whether a settled state is reachable by protocol steps alone (None: search too big).

    Depth first: protocol steps mostly make progress, so a settled state is usually found on the
    first path tried; a livelock shows up as a search that exhausts its states."""
    seen = {start}
    stack = [start]
    while stack:
        w = stack.pop()
        if unsettled_reason(model, w) is None:
            return True
        for action, nxt in model.successors(w):
            if A.is_protocol(action) and nxt not in seen:
                seen.add(nxt)
                if len(seen) > SETTLE_SEARCH_LIMIT:
                    return None
                stack.append(nxt)
    return False


class ModelWalk(RuleBasedStateMachine):
    bugs: frozenset[str] = frozenset()

    def __init__(self) -> None:
        super().__init__()
        self.model = PeeringModel(WALK, self.bugs)
        self.world = self.model.initial()
        self.steps = 0

    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        enabled = self.model.enabled(self.world)
        if not enabled:
            return
        action = data.draw(st.sampled_from(enabled), label="action")
        before = self.world
        self.world = self.model.step(before, action)
        self.steps += 1
        for tinv in self.model.transition_invariants:
            assert tinv.holds(before, action, self.world), (
                tinv.id, tinv.explain(before, action, self.world) if tinv.explain else "")

    @rule()
    def check_it_settles(self) -> None:
        assert settles(self.model, self.world) is not False, "stuck: no settled state reachable"

    @invariant()
    def every_invariant_holds(self) -> None:
        for inv in self.model.invariants:
            assert inv.holds(self.world), (inv.id, inv.explain(self.world) if inv.explain else "")


ModelWalk.TestCase.settings = settings(
    max_examples=150, stateful_step_count=100, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestModelWalk = ModelWalk.TestCase


class BuggyWalk(ModelWalk):
    bugs = frozenset({"stored-map"})

    def check_it_settles(self) -> None:  # only safety matters here; keep shrinking quick
        pass


def test_the_walk_catches_a_bug() -> None:
    """The walk is not vacuous: with a bug switched on it fails (and Hypothesis shrinks it)."""
    with pytest.raises(AssertionError, match="no-teardown-of-active"):
        run_state_machine_as_test(BuggyWalk, settings=settings(
            max_examples=100, stateful_step_count=50, deadline=None, database=None,
            suppress_health_check=[HealthCheck.too_slow]))
