"""The engine against brute force on random small graphs (Hypothesis).

A graph is a random successor table over the ints 0..n-1. The model steps from s with action
(s, j) to table[s][j]; some states are "bad" (an invariant fails there), some are targets of a
liveness property, and some actions are not counted by it. Every answer the engine gives is
recomputed here by the simplest possible means: a plain BFS for reachability and distances, and
one forward search per state for "can a target still be reached".
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from peerkit.checker.api import Invariant, Liveness, StepModel, TransitionInvariant
from peerkit.checker.engine import Bounds, Counterexample, Result, check, replay

Action = tuple[int, int]


@dataclass(frozen=True)
class Graph:
    table: Mapping[int, tuple[int, ...]]
    initial: tuple[int, ...]
    bad: frozenset[int]
    target: frozenset[int]
    uncounted: frozenset[Action]
    bad_edges: frozenset[Action]

    def edges(self, s: int) -> list[tuple[Action, int]]:
        return [((s, j), t) for j, t in enumerate(self.table[s])]

    def model(
        self,
        *,
        invariant: bool = False,
        liveness: bool = False,
        transition: bool = False,
    ) -> StepModel[int, Action]:
        bad, target, uncounted, bad_edges = self.bad, self.target, self.uncounted, self.bad_edges
        return StepModel(
            name="random graph",
            initial=lambda: list(self.initial),
            enabled=lambda s: [(s, j) for j in range(len(self.table[s]))],
            step=lambda s, a: self.table[s][a[1]],
            invariants=(Invariant("good", "not bad", lambda s: s not in bad),) if invariant else (),
            transition_invariants=(
                (TransitionInvariant("edge", "no bad edge", lambda s, a, t: a not in bad_edges),)
                if transition
                else ()
            ),
            liveness=(
                (Liveness("live", "a target stays reachable", lambda s: s in target,
                          lambda a: a not in uncounted),)
                if liveness
                else ()
            ),
        )


@st.composite
def graphs(draw: st.DrawFn) -> Graph:
    n = draw(st.integers(1, 12))
    node = st.integers(0, n - 1)
    table = {s: tuple(draw(st.lists(node, max_size=4))) for s in range(n)}
    initial = tuple(draw(st.lists(node, min_size=1, max_size=3)))
    actions = [(s, j) for s in range(n) for j in range(len(table[s]))]
    subset_of_actions = st.sets(st.sampled_from(actions)) if actions else st.just(set())
    return Graph(
        table=table,
        initial=initial,
        bad=frozenset(draw(st.sets(node, max_size=3))),
        target=frozenset(draw(st.sets(node, max_size=4))),
        uncounted=frozenset(draw(subset_of_actions)),
        bad_edges=frozenset(draw(subset_of_actions)) if draw(st.booleans()) else frozenset(),
    )


# -- brute force ------------------------------------------------------------------------------


def distances(g: Graph) -> dict[int, int]:
    dist: dict[int, int] = {}
    queue: deque[int] = deque()
    for s in g.initial:
        if s not in dist:
            dist[s] = 0
            queue.append(s)
    while queue:
        s = queue.popleft()
        for t in g.table[s]:
            if t not in dist:
                dist[t] = dist[s] + 1
                queue.append(t)
    return dist


def can_reach_target(g: Graph, start: int) -> bool:
    """A forward search from `start` over counted edges only."""
    seen = {start}
    stack = [start]
    while stack:
        s = stack.pop()
        if s in g.target:
            return True
        for a, t in g.edges(s):
            if a not in g.uncounted and t not in seen:
                seen.add(t)
                stack.append(t)
    return False


def verdict(result: Result[Any, Any], pid: str) -> str:
    (prop,) = [p for p in result.properties if p.id == pid]
    return prop.verdict


def only_ce(result: Result[int, Action], pid: str) -> Counterexample[int, Action]:
    (ce,) = [c for c in result.counterexamples if c.property_id == pid]
    return ce


def path_states(model: StepModel[int, Action], ce: Counterexample[int, Action]) -> list[int]:
    states = replay(model, ce.initial, ce.actions)
    assert states == [ce.initial, *(s.state for s in ce.steps)]
    return states


SETTINGS = settings(max_examples=300, deadline=None)


# -- properties -------------------------------------------------------------------------------


@SETTINGS
@given(graphs())
def test_reachable_counts_match_plain_bfs(g: Graph) -> None:
    dist = distances(g)
    result = check(g.model())
    assert result.complete
    assert result.distinct_states == len(dist)
    assert result.transitions == sum(len(g.table[s]) for s in dist)
    assert result.depth == max(dist.values())
    # the same answers with the dict-based (non-lean) loop that liveness forces
    rich = check(g.model(liveness=True))
    assert (rich.distinct_states, rich.transitions, rich.depth) == (
        result.distinct_states, result.transitions, result.depth
    )


@SETTINGS
@given(graphs())
def test_invariant_counterexample_is_shortest(g: Graph) -> None:
    dist = distances(g)
    violating = [d for s, d in dist.items() if s in g.bad]
    for liveness in (False, True):  # lean and non-lean loops
        model = g.model(invariant=True, liveness=liveness)
        result = check(model)
        if not violating:
            assert result.complete and verdict(result, "good") == "holds"
            continue
        assert verdict(result, "good") == "violated"
        ce = only_ce(result, "good")
        assert ce.initial in g.initial
        assert len(ce.steps) == min(violating)
        states = path_states(model, ce)
        assert states[-1] in g.bad
        assert not any(s in g.bad for s in states[:-1])


@SETTINGS
@given(graphs())
def test_liveness_matches_brute_force(g: Graph) -> None:
    dist = distances(g)
    stuck = {s for s in dist if not can_reach_target(g, s)}
    model = g.model(liveness=True)
    result = check(model)
    assert result.complete
    if not stuck:
        assert verdict(result, "live") == "holds" and result.counterexamples == []
        return
    assert verdict(result, "live") == "violated"
    ce = only_ce(result, "live")
    assert ce.kind == "liveness"
    states = path_states(model, ce)
    # the reported state really cannot reach a target, and no stuck state is nearer
    assert states[-1] in stuck
    assert len(ce.steps) == dist[states[-1]] == min(dist[s] for s in stuck)
    # the loop: counted steps among stuck states, ending in a dead end or a repeat
    loop_states = replay(model, states[-1], [s.action for s in ce.loop])
    assert loop_states[1:] == [s.state for s in ce.loop]
    assert all(s.action not in g.uncounted for s in ce.loop)
    assert all(s in stuck for s in loop_states)
    last = loop_states[-1]
    if "dead end" in ce.explanation:
        assert all(a in g.uncounted for a, _t in g.edges(last))
    else:
        assert "livelock" in ce.explanation
        assert last in loop_states[:-1]


@SETTINGS
@given(graphs())
def test_transition_invariant_matches_brute_force(g: Graph) -> None:
    dist = distances(g)
    # the shortest run ending in a bad edge: reach its source, then take it
    lengths = [dist[s] + 1 for (s, _j) in g.bad_edges if s in dist]
    model = g.model(transition=True)
    result = check(model)
    if not lengths:
        assert result.complete and verdict(result, "edge") == "holds"
        return
    assert verdict(result, "edge") == "violated"
    ce = only_ce(result, "edge")
    assert ce.kind == "transition"
    assert len(ce.steps) == min(lengths)
    path_states(model, ce)
    assert ce.actions[-1] in g.bad_edges
    assert not any(a in g.bad_edges for a in ce.actions[:-1])


@SETTINGS
@given(graphs())
def test_every_property_at_once(g: Graph) -> None:
    dist = distances(g)
    model = g.model(invariant=True, liveness=True, transition=True)
    result = check(model, Bounds(stop_at_first=False))
    assert result.complete and result.distinct_states == len(dist)
    expect_bad = any(s in g.bad for s in dist)
    expect_edge = any(s in dist for (s, _j) in g.bad_edges)
    expect_stuck = any(not can_reach_target(g, s) for s in dist)
    assert verdict(result, "good") == ("violated" if expect_bad else "holds")
    assert verdict(result, "edge") == ("violated" if expect_edge else "holds")
    assert verdict(result, "live") == ("violated" if expect_stuck else "holds")
    lengths = [len(c.steps) for c in result.counterexamples]
    assert lengths == sorted(lengths)
    for ce in result.counterexamples:
        path_states(model, ce)


@SETTINGS
@given(graphs(), st.integers(0, 14))
def test_state_bound(g: Graph, limit: int) -> None:
    dist = distances(g)
    result = check(g.model(liveness=True), Bounds(max_states=limit))
    assert result.distinct_states == min(limit, len(dist))
    assert result.complete == (limit >= len(dist))
    if not result.complete:
        assert verdict(result, "live") == "unknown"


@SETTINGS
@given(graphs(), st.integers(0, 12))
def test_depth_bound(g: Graph, k: int) -> None:
    dist = distances(g)
    result = check(g.model(invariant=True, liveness=True), Bounds(max_depth=k,
                                                                  stop_at_first=False))
    assert result.distinct_states == sum(1 for d in dist.values() if d <= k)
    # the search stops before expanding depth k, so it is complete only if nothing lies there
    assert result.complete == (max(dist.values()) < k)
    if not result.complete:
        assert verdict(result, "live") == "unknown"
    near_bad = any(s in g.bad for s, d in dist.items() if d <= k)
    if near_bad:
        assert verdict(result, "good") == "violated"
    elif result.complete:
        assert verdict(result, "good") == "holds"
    else:  # no violation among the explored states, which is no proof for the rest
        assert verdict(result, "good") in ("holds", "unknown")



@settings(max_examples=120, deadline=None)
@given(graphs(), st.booleans(), st.one_of(st.none(), st.integers(0, 14)),
       st.one_of(st.none(), st.integers(0, 12)))
def test_fingerprint_mode_gives_the_exact_modes_answers(
    g: Graph, stop_at_first: bool, max_states: int | None, max_depth: int | None
) -> None:
    """check(fingerprints=True) agrees with the exact mode on counts, verdicts and every
    counterexample, step for step, under any bounds."""
    model = g.model(invariant=True, liveness=True, transition=True)
    bounds = Bounds(stop_at_first=stop_at_first, max_states=max_states, max_depth=max_depth)
    exact = check(model, bounds)
    fp = check(model, bounds, fingerprints=True)
    assert (fp.distinct_states, fp.transitions, fp.depth, fp.complete, fp.stopped_because) == (
        exact.distinct_states, exact.transitions, exact.depth, exact.complete,
        exact.stopped_because)
    assert fp.properties == exact.properties
    assert fp.counterexamples == exact.counterexamples
