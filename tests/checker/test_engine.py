"""The checker engine on toy models whose answers are known by hand or by formula.

Every expected number here is derived independently of the engine: from a closed formula
(counters), by hand (ring_lock, dead_end, the small graphs), or by the plain breadth-first
search in `_bfs_distances` below.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import pairwise
from typing import Any

import pytest

from peerkit.checker.api import (
    Invariant,
    Liveness,
    Reduction,
    StepModel,
    TransitionInvariant,
)
from peerkit.checker.engine import (
    Bounds,
    Counterexample,
    Progress,
    PropertyResult,
    Result,
    check,
    replay,
)
from peerkit.checker.toys import Counters, counters, dead_end, ring_lock

# --------------------------------------------------------------------------------------------
# helpers


def _bfs_distances(
    initial: Iterable[Any], successors: Callable[[Any], Iterable[Any]]
) -> dict[Any, int]:
    """Plain BFS, independent of the engine: state -> distance from the nearest initial state."""
    dist: dict[Any, int] = {}
    queue: deque[Any] = deque()
    for s in initial:
        if s not in dist:
            dist[s] = 0
            queue.append(s)
    while queue:
        s = queue.popleft()
        for t in successors(s):
            if t not in dist:
                dist[t] = dist[s] + 1
                queue.append(t)
    return dist


def _verdicts(result: Result[Any, Any]) -> dict[str, str]:
    return {p.id: p.verdict for p in result.properties}


def _no_claim_beyond_explored(prop: PropertyResult) -> None:
    """After an incomplete search a safety property may not simply "hold": it holds with a note
    that only the explored states were checked, or it is "unknown" (either way, not violated)."""
    assert prop.kind != "liveness"
    assert prop.verdict in ("holds", "unknown"), prop
    assert "explored" in prop.note, prop


def _ce_for(result: Result[Any, Any], pid: str) -> Counterexample[Any, Any]:
    matching = [c for c in result.counterexamples if c.property_id == pid]
    assert len(matching) == 1, f"expected one counterexample for {pid}, got {matching}"
    return matching[0]


def _replayed_states(model: Any, ce: Counterexample[Any, Any]) -> list[Any]:
    """Replay the counterexample concretely; its recorded states must be what replay visits."""
    states: list[Any] = replay(model, ce.initial, ce.actions)
    assert states == [ce.initial, *(step.state for step in ce.steps)]
    return states


def _graph_model(
    table: Mapping[int, Sequence[int]],
    initial: Sequence[int],
    *,
    invariants: Sequence[Invariant[int]] = (),
    transition_invariants: Sequence[TransitionInvariant[int, tuple[int, int]]] = (),
    liveness: Sequence[Liveness[int, tuple[int, int]]] = (),
    name: str = "graph",
) -> StepModel[int, tuple[int, int]]:
    """A model over ints: from s, action (s, j) leads to table[s][j]."""
    return StepModel(
        name=name,
        initial=lambda: list(initial),
        enabled=lambda s: [(s, j) for j in range(len(table.get(s, ())))],
        step=lambda s, a: table[s][a[1]],
        invariants=invariants,
        transition_invariants=transition_invariants,
        liveness=liveness,
    )


# --------------------------------------------------------------------------------------------
# counters: closed formulas


@pytest.mark.parametrize(
    ("n", "top"), [(1, 0), (1, 4), (2, 0), (2, 3), (3, 1), (3, 3), (4, 2), (5, 2)]
)
def test_counters_counts(n: int, top: int) -> None:
    result = check(counters(n, top))
    assert result.complete
    assert result.stopped_because == "explored every reachable state"
    assert result.distinct_states == (top + 1) ** n
    assert result.transitions == n * top * (top + 1) ** (n - 1)
    assert result.depth == n * top
    assert _verdicts(result) == {"in-range": "holds"}
    assert result.counterexamples == []
    assert result.ok
    assert result.reductions == []


def test_counters_benchmark_model() -> None:
    result = check(counters(7, 5))
    assert result.distinct_states == 279_936 == 6**7
    assert result.transitions == 7 * 5 * 6**6
    assert result.depth == 35
    assert result.complete and result.ok
    assert result.states_per_second > 0


@pytest.mark.parametrize(("n", "top"), [(1, 3), (2, 2), (3, 3), (4, 2), (7, 5)])
def test_counters_symmetry_reduction(n: int, top: int) -> None:
    model = counters(n, top, symmetric=True)
    result = check(model)
    assert result.complete and result.ok
    # multisets of size n over top+1 values
    assert result.distinct_states == math.comb(n + top, n)
    assert result.depth == n * top
    assert len(result.reductions) == 1
    reduction = result.reductions[0]
    assert reduction["name"] == "counter symmetry"
    assert reduction["why_sound"] == model.reductions[0].why_sound
    assert "interchangeable" in reduction["why_sound"]


def test_counters_reject_bad_parameters() -> None:
    for n, top in [(0, 3), (-1, 3), (2, -1)]:
        with pytest.raises(ValueError):
            counters(n, top)


# --------------------------------------------------------------------------------------------
# ring_lock


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_ring_lock_holds(n: int) -> None:
    result = check(ring_lock(n))
    assert result.complete and result.ok
    assert _verdicts(result) == {"mutex": "holds", "back-to-idle": "holds"}
    # phases in {idle, waiting}^n with nobody critical, or exactly one critical (who holds the lock)
    assert result.distinct_states == 2**n + n * 2 ** (n - 1)
    assert result.counterexamples == []


def test_ring_lock_buggy_shortest_counterexample() -> None:
    model = ring_lock(3, buggy=True)
    result = check(model)
    assert not result.ok and not result.complete
    assert result.stopped_because == "property mutex is violated"
    assert _verdicts(result) == {"mutex": "violated", "back-to-idle": "unknown"}
    ce = result.counterexample
    assert ce is not None and ce.property_id == "mutex" and ce.kind == "invariant"
    # By hand: two processes must each request and enter, so no run shorter than 4 steps puts
    # two in the critical section; request 0, request 1, enter 0, enter 1 shows 4 is enough.
    assert len(ce.steps) == 4
    assert ce.initial == (("idle", "idle", "idle"), None)
    states = _replayed_states(model, ce)
    assert states[-1][0].count("critical") == 2
    assert all(s[0].count("critical") <= 1 for s in states[:-1])
    assert sorted(a[0] for a in ce.actions) == ["enter", "enter", "request", "request"]


def test_ring_lock_buggy_agrees_with_plain_bfs() -> None:
    model = ring_lock(3, buggy=True)
    dist = _bfs_distances(model.initial(), lambda s: [t for _a, t in model.successors(s)])
    nearest = min(d for s, d in dist.items() if s[0].count("critical") > 1)
    ce = check(model).counterexample
    assert ce is not None and len(ce.steps) == nearest == 4


def test_ring_lock_buggy_full_search_decides_liveness() -> None:
    model = ring_lock(3, buggy=True)
    result = check(model, Bounds(stop_at_first=False))
    assert result.complete
    # in the buggy lock a critical process can always leave and a waiting one always enter,
    # so everyone can still get back to idle: only mutual exclusion is broken
    assert _verdicts(result) == {"mutex": "violated", "back-to-idle": "holds"}
    assert len(_ce_for(result, "mutex").steps) == 4


# --------------------------------------------------------------------------------------------
# liveness


def test_dead_end() -> None:
    model = dead_end()
    result = check(model)
    assert result.complete
    assert _verdicts(result) == {"reach-a": "violated"}
    assert result.distinct_states == 3 and result.transitions == 2
    ce = result.counterexample
    assert ce is not None and ce.kind == "liveness" and ce.property_id == "reach-a"
    # b is the nearest state from which a cannot be reached
    assert ce.initial == "a"
    assert [(s.action, s.state) for s in ce.steps] == [("b", "b")]
    assert [(s.action, s.state) for s in ce.loop] == [("c", "c")]
    assert "dead end" in ce.explanation
    _replayed_states(model, ce)
    assert replay(model, ce.steps[-1].state, [s.action for s in ce.loop]) == ["b", "c"]


def test_livelock_reports_a_loop() -> None:
    # 0 -> 1 <-> 2, and only 0 is a target: 1 and 2 circle forever
    model = _graph_model(
        {0: [1], 1: [2], 2: [1]},
        [0],
        liveness=(Liveness("back-to-0", "0 stays reachable", lambda s: s == 0),),
    )
    result = check(model)
    assert _verdicts(result) == {"back-to-0": "violated"}
    ce = result.counterexample
    assert ce is not None
    assert [s.state for s in ce.steps] == [1]
    assert [s.state for s in ce.loop] == [2, 1]
    assert "livelock" in ce.explanation
    assert ce.loop[-1].state == ce.steps[-1].state  # comes back to where it got stuck
    replay(model, 1, [s.action for s in ce.loop])


def test_liveness_counts_only_admitted_transitions() -> None:
    # 0 -> 1 -> 0 where 1 -> 0 is a "fault" action: not counted, so 1 is stuck
    table = {0: [1], 1: [0]}
    counted = Liveness[int, tuple[int, int]](
        "back-to-0", "0 reachable by protocol steps", lambda s: s == 0, lambda a: a[0] != 1
    )
    result = check(_graph_model(table, [0], liveness=(counted,)))
    assert _verdicts(result) == {"back-to-0": "violated"}
    ce = result.counterexample
    assert ce is not None and [s.state for s in ce.steps] == [1] and ce.loop == ()
    assert "dead end" in ce.explanation
    every_edge = Liveness[int, tuple[int, int]]("back-to-0", "0 reachable", lambda s: s == 0)
    assert check(_graph_model(table, [0], liveness=(every_edge,))).ok


def test_liveness_of_a_target_only_initial_state() -> None:
    model = _graph_model({0: []}, [0], liveness=(Liveness("t", "t", lambda s: s == 0),))
    result = check(model)
    assert _verdicts(result) == {"t": "holds"} and result.complete


# --------------------------------------------------------------------------------------------
# bounds


def test_max_depth_makes_the_result_incomplete() -> None:
    n, top, k = 3, 3, 2
    result = check(counters(n, top), Bounds(max_depth=k))
    assert not result.complete
    assert "depth bound 2" in result.stopped_because
    # exactly the states within k steps: counter vectors summing to at most k
    within = sum(1 for total in range(k + 1) for _ in _vectors(n, top, total))
    assert result.distinct_states == within
    assert result.depth == k
    (prop,) = result.properties
    _no_claim_beyond_explored(prop)


def _vectors(n: int, top: int, total: int) -> Iterable[tuple[int, ...]]:
    if n == 0:
        if total == 0:
            yield ()
        return
    for first in range(min(top, total) + 1):
        for rest in _vectors(n - 1, top, total - first):
            yield (first, *rest)


def test_bounded_liveness_is_unknown_never_holds() -> None:
    for bounds in (Bounds(max_depth=1), Bounds(max_states=5), Bounds(max_depth=0),
                   Bounds(max_states=0)):
        result = check(ring_lock(3), bounds)
        assert not result.complete, bounds
        mutex, live = result.properties
        assert live.id == "back-to-idle" and live.verdict == "unknown", bounds
        assert live.note, bounds
        _no_claim_beyond_explored(mutex)
    # a dead end that a bound hides must not be reported as holding either
    result = check(dead_end(), Bounds(max_depth=1))
    assert _verdicts(result) == {"reach-a": "unknown"}


def test_bounded_invariant_holds_only_for_explored_states() -> None:
    model = counters(3, 3)
    model.invariants = (Invariant("small-sum", "sum below 5", lambda s: sum(s) < 5),)
    shallow = check(model, Bounds(max_depth=4))
    assert not shallow.complete
    _no_claim_beyond_explored(shallow.properties[0])
    deep = check(model, Bounds(max_depth=5))
    assert _verdicts(deep) == {"small-sum": "violated"}
    assert deep.counterexample is not None and len(deep.counterexample.steps) == 5


@pytest.mark.parametrize("limit", [0, 1, 2, 7, 63, 64, 65, 1000])
def test_max_states(limit: int) -> None:
    result = check(counters(3, 3), Bounds(max_states=limit))
    assert result.distinct_states == min(limit, 64)
    # reaching the bound exactly without needing another state is still a complete search
    assert result.complete == (limit >= 64)
    if not result.complete:
        assert f"state bound {limit}" in result.stopped_because


def test_max_seconds() -> None:
    result = check(counters(7, 5), Bounds(max_seconds=1e-9))
    assert not result.complete
    assert "time bound" in result.stopped_because
    assert 0 < result.distinct_states < 279_936


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_depth": -1},
        {"max_depth": 1.5},
        {"max_depth": "3"},
        {"max_depth": True},
        {"max_states": -5},
        {"max_states": 2.0},
        {"max_states": False},
        {"max_seconds": 0},
        {"max_seconds": -1.0},
        {"max_seconds": "1"},
        {"max_seconds": float("nan")},
    ],
)
def test_bad_bounds_raise(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Bounds(**kwargs)


def test_good_bounds_accepted() -> None:
    Bounds(max_depth=0, max_states=0, max_seconds=0.5)
    Bounds(max_depth=10**9, max_states=10**12, max_seconds=3)


def test_bounds_must_be_bounds() -> None:
    with pytest.raises(TypeError):
        check(counters(2, 2), {"max_depth": 3})  # type: ignore[arg-type,unused-ignore]


# --------------------------------------------------------------------------------------------
# several violations


def test_stop_at_first_false_reports_first_violation_of_each_property() -> None:
    model = counters(3, 3)
    model.invariants = (
        Invariant("sum-below-2", "sum < 2", lambda s: sum(s) < 2),
        Invariant("below-top", "no counter at 3", lambda s: max(s) < 3),
        Invariant("first-not-1", "counter 0 never 1", lambda s: s[0] != 1),
        Invariant("in-range", "never violated", lambda s: max(s) <= 3),
    )
    result = check(model, Bounds(stop_at_first=False))
    assert result.complete and result.distinct_states == 64
    assert _verdicts(result) == {
        "sum-below-2": "violated",
        "below-top": "violated",
        "first-not-1": "violated",
        "in-range": "holds",
    }
    expected = {"first-not-1": 1, "sum-below-2": 2, "below-top": 3}
    assert [(c.property_id, len(c.steps)) for c in result.counterexamples] == list(
        expected.items()
    )
    for inv in model.invariants:
        if inv.id in expected:
            ce = _ce_for(result, inv.id)
            states = _replayed_states(model, ce)
            assert not inv.holds(states[-1])
            assert all(inv.holds(s) for s in states[:-1])
    # the default stops at the very first one, which is the shortest
    first = check(model)
    assert [c.property_id for c in first.counterexamples] == ["first-not-1"]


def test_violation_in_an_initial_state() -> None:
    model = _graph_model(
        {0: [1], 1: []}, [1, 0], invariants=(Invariant("not-1", "never 1", lambda s: s != 1),)
    )
    result = check(model)
    ce = result.counterexample
    assert ce is not None and ce.initial == 1 and ce.steps == ()


def test_explain_is_shown() -> None:
    model = counters(2, 2)
    model.invariants = (
        Invariant("sum", "sum < 3", lambda s: sum(s) < 3, explain=lambda s: f"sum is {sum(s)}"),
    )
    ce = check(model).counterexample
    assert ce is not None and ce.explanation == "sum is 3"


# --------------------------------------------------------------------------------------------
# transition invariants


def test_transition_invariant_checked_on_every_edge() -> None:
    # a diamond 0 -> {1, 2} -> 3 plus an edge 2 -> 1 back into a state found earlier: the bad
    # edge never discovers a state, so only a check on every edge can see it
    table = {0: [1, 2], 1: [3], 2: [3, 1], 3: []}
    seen: list[tuple[int, tuple[int, int], int]] = []

    def not_2_to_1(s: int, a: tuple[int, int], t: int) -> bool:
        seen.append((s, a, t))
        return not (s == 2 and t == 1)

    tinv = TransitionInvariant("no-2-to-1", "never 2 -> 1", not_2_to_1,
                               explain=lambda s, a, t: f"{s} -> {t}")
    model = _graph_model(table, [0], transition_invariants=(tinv,))
    result = check(model, Bounds(stop_at_first=False))
    assert result.complete and result.transitions == 5
    # every edge is checked (building the counterexample may evaluate its last edge again)
    assert sorted(set(seen)) == sorted(
        (s, (s, j), t) for s, targets in table.items() for j, t in enumerate(targets)
    )
    assert _verdicts(result) == {"no-2-to-1": "violated"}
    ce = result.counterexample
    assert ce is not None and ce.kind == "transition" and ce.explanation == "2 -> 1"
    assert [s.state for s in ce.steps] == [2, 1]
    assert ce.actions[-1] == (2, 1)
    _replayed_states(model, ce)


def test_transition_invariant_that_holds() -> None:
    model = counters(3, 2)
    model.transition_invariants = (
        TransitionInvariant("incs", "action i adds one to counter i",
                            lambda s, a, t: t[a] == s[a] + 1 and sum(t) == sum(s) + 1),
    )
    result = check(model)
    assert result.complete and _verdicts(result) == {"in-range": "holds", "incs": "holds"}
    assert result.distinct_states == 27 and result.transitions == 3 * 2 * 9


def test_transition_invariant_shortest_counterexample() -> None:
    # a "never step from a state with sum >= 3 on counter 0" rule: the nearest source has
    # sum 3, so the shortest violating run is 4 steps
    model = counters(3, 3)
    model.transition_invariants = (
        TransitionInvariant("cap", "no increment of counter 0 at sum >= 3",
                            lambda s, a, t: not (a == 0 and sum(s) >= 3)),
    )
    ce = check(model).counterexample
    assert ce is not None and ce.kind == "transition" and len(ce.steps) == 4
    states = _replayed_states(model, ce)
    assert sum(states[-2]) == 3 and ce.actions[-1] == 0


# --------------------------------------------------------------------------------------------
# property IDs


def test_duplicate_property_ids_raise() -> None:
    inv = Invariant[int]("p", "p", lambda s: True)
    live = Liveness[int, tuple[int, int]]("p", "p", lambda s: True)
    tinv = TransitionInvariant[int, tuple[int, int]]("p", "p", lambda s, a, t: True)
    for kwargs in (
        {"invariants": (inv, inv)},
        {"invariants": (inv,), "liveness": (live,)},
        {"invariants": (inv,), "transition_invariants": (tinv,)},
        {"transition_invariants": (tinv,), "liveness": (live,)},
    ):
        with pytest.raises(ValueError, match="unique"):
            check(_graph_model({0: []}, [0], **kwargs))  # type: ignore[arg-type,unused-ignore]


# --------------------------------------------------------------------------------------------
# progress


def test_progress_callback_sees_increasing_counts() -> None:
    calls: list[Progress] = []
    result = check(counters(6, 5), progress=calls.append, progress_interval=0)
    assert len(calls) >= 3
    counts = [p.states for p in calls]
    assert all(a < b for a, b in pairwise(counts[:-1]))
    assert counts[-2] <= counts[-1] == result.distinct_states == 6**6
    assert [p.seconds for p in calls] == sorted(p.seconds for p in calls)
    assert calls[-1].transitions == result.transitions
    assert calls[-1].queue == 0
    assert all(0 < p.queue <= p.states for p in calls[:-1])
    assert all(p.states_per_second >= 0 for p in calls)


def test_progress_on_a_tiny_model_is_called_once_at_the_end() -> None:
    calls: list[Progress] = []
    result = check(ring_lock(2), progress=calls.append, progress_interval=0)
    assert [p.states for p in calls] == [result.distinct_states]


# --------------------------------------------------------------------------------------------
# reductions: counterexamples stay concrete


def _reduced(n: int, top: int) -> Any:
    model = counters(n, top, symmetric=True)
    model.invariants = ()
    return model


def _is_canonical(state: Counters) -> bool:
    return list(state) == sorted(state)


def test_reduced_invariant_counterexample_is_concrete() -> None:
    model = _reduced(3, 3)
    model.invariants = (
        Invariant("spread", "counters differ by < 2", lambda s: max(s) - min(s) < 2),
    )
    result = check(model)
    ce = result.counterexample
    assert ce is not None and len(ce.steps) == 2
    states = _replayed_states(model, ce)
    assert max(states[-1]) - min(states[-1]) == 2
    # the engine stored sorted representatives; what it reports is the run the model can do
    assert not all(_is_canonical(s) for s in states)


def test_reduced_liveness_counterexample_is_concrete() -> None:
    # target: some counter is still 0. Stuck as soon as every counter moved: (1, 1, 1) at
    # depth 3; from there the run goes on to the dead end (2, 2, 2).
    model = _reduced(3, 2)
    model.liveness = (Liveness("zero", "some counter can be 0", lambda s: 0 in s),)
    result = check(model)
    ce = result.counterexample
    assert ce is not None and ce.kind == "liveness" and len(ce.steps) == 3
    states = _replayed_states(model, ce)
    assert states[-1] == (1, 1, 1)
    tail = replay(model, states[-1], [s.action for s in ce.loop])
    assert tail[1:] == [s.state for s in ce.loop]
    assert tail[-1] == (2, 2, 2) and "dead end" in ce.explanation


def test_reduced_transition_invariant_sees_concrete_successor() -> None:
    # "action i increments counter i" is true of every concrete transition; it must not be
    # judged against the sorted representative of the successor
    model = _reduced(3, 2)
    model.transition_invariants = (
        TransitionInvariant("incs", "action i adds one to counter i",
                            lambda s, a, t: t[a] == s[a] + 1),
    )
    result = check(model)
    assert result.complete and _verdicts(result) == {"incs": "holds"}


def test_reduced_transition_counterexample_is_concrete() -> None:
    model = _reduced(3, 3)
    model.transition_invariants = (
        TransitionInvariant("no-3", "no counter reaches 3", lambda s, a, t: max(t) < 3),
    )
    ce = check(model).counterexample
    assert ce is not None and ce.kind == "transition" and len(ce.steps) == 3
    states = _replayed_states(model, ce)
    assert max(states[-1]) == 3


def test_replay_refuses_an_action_not_enabled() -> None:
    with pytest.raises(ValueError, match="step 2"):
        replay(counters(2, 1), (0, 0), [0, 0])


def test_reduction_composition_and_initial_states() -> None:
    # two initial states that are permutations of each other collapse into one
    model = StepModel[Counters, int](
        name="two-starts",
        initial=lambda: [(1, 0), (0, 1)],
        enabled=lambda s: [i for i, v in enumerate(s) if v < 2],
        step=lambda s, i: (*s[:i], s[i] + 1, *s[i + 1:]),
        invariants=(Invariant("no-2", "no counter at 2", lambda s: 2 not in s),),
        reductions=(Reduction("sort", lambda s: tuple(sorted(s)), "symmetric"),),
    )
    result = check(model, Bounds(stop_at_first=False))
    assert result.distinct_states == 5  # (0,1) (1,1) (0,2) (1,2) (2,2)
    ce = result.counterexample
    assert ce is not None and ce.initial == (1, 0) and len(ce.steps) == 1
    _replayed_states(model, ce)


# --------------------------------------------------------------------------------------------
# liveness under weak fairness


def _named_model(edges: Mapping[int, Sequence[tuple[str, int]]], fairness: str
                 ) -> StepModel[int, str]:
    """A model whose actions are names, so one action can be enabled in several states."""
    return StepModel(
        name="named",
        initial=lambda: [0],
        enabled=lambda s: [a for a, _ in edges.get(s, ())],
        step=lambda s, a: dict(edges[s])[a],
        liveness=(Liveness("reach-9", "9 is reached", lambda s: s == 9,
                           fairness=fairness),),
    )


def test_weak_fairness_finds_a_fair_cycle_that_reachability_misses() -> None:
    # 0 <-> 1 by "spin"; "leave" reaches the target 9 but only from 1, so it is not enabled
    # throughout the cycle: a fair run may spin for ever. Backward reachability cannot see it.
    edges = {0: [("spin", 1)], 1: [("spin", 0), ("leave", 9)]}
    assert check(_named_model(edges, "none")).ok
    result = check(_named_model(edges, "weak"))
    assert _verdicts(result) == {"reach-9": "violated"}
    ce = result.counterexample
    assert ce is not None and "fair cycle" in ce.explanation
    assert [s.action for s in ce.loop] == ["spin", "spin"]
    assert ce.loop[-1].state == (ce.steps[-1].state if ce.steps else ce.initial)


def test_weak_fairness_accepts_a_cycle_left_by_a_step_enabled_throughout() -> None:
    # "leave" is enabled in both states of the cycle: weak fairness forces it to be taken
    edges = {0: [("spin", 1), ("leave", 9)], 1: [("spin", 0), ("leave", 9)]}
    assert check(_named_model(edges, "weak")).ok


def test_weak_fairness_keeps_reporting_dead_ends() -> None:
    edges = {0: [("go", 1)], 1: []}
    result = check(_named_model(edges, "weak"))
    assert _verdicts(result) == {"reach-9": "violated"}
    assert result.counterexample is not None and "dead end" in result.counterexample.explanation


def test_weak_fairness_self_loop_is_a_fair_cycle_only_if_nothing_else_is_always_enabled() -> None:
    stutter = {0: [("wait", 0)]}
    assert not check(_named_model(stutter, "weak")).ok  # also a trap for reachability
    escapable = {0: [("wait", 0), ("go", 9)]}
    assert check(_named_model(escapable, "weak")).ok


# --------------------------------------------------------------------------------------------
# the lean loop (no transition invariants, liveness or reductions) against the general one


def _general(model: Any) -> Any:
    """The same model with a transition invariant that always holds: the engine then runs
    its general loop (dict lookups, an edge per transition) instead of the lean one."""
    model.transition_invariants = (
        TransitionInvariant[Counters, int]("always", "always holds", lambda s, a, t: True),
    )
    return model


def _summary(result: Result[Any, Any]) -> tuple[Any, ...]:
    return (
        result.distinct_states,
        result.transitions,
        result.depth,
        result.complete,
        result.stopped_because,
        [(p.id, p.verdict) for p in result.properties if p.id != "always"],
        [(c.property_id, c.initial, c.steps) for c in result.counterexamples],
    )


@pytest.mark.parametrize("stop_at_first", [True, False])
@pytest.mark.parametrize("max_states", [None, 1, 2, 37, 200])
@pytest.mark.parametrize("invariants", ["none", "one", "three"])
def test_lean_loop_stops_where_the_general_loop_stops(
    invariants: str, max_states: int | None, stop_at_first: bool
) -> None:
    # the lean loop counts transitions per state, keeps parents in a list per block and looks
    # at the clock per block: none of that may move a count, a stop or a counterexample
    def build() -> Any:
        model = counters(4, 3)
        if invariants == "none":
            model.invariants = ()
        elif invariants == "three":
            model.invariants = (
                Invariant[Counters]("first-low", "x", lambda s: s[0] < 2),
                Invariant[Counters]("sum-low", "y", lambda s: sum(s) < 5),
                Invariant[Counters]("last-low", "z", lambda s: s[-1] < 3),
            )
        return model

    bounds = Bounds(max_states=max_states, stop_at_first=stop_at_first)
    lean = check(build(), bounds)
    general = check(_general(build()), bounds)
    assert _summary(lean) == _summary(general)
    if invariants == "three" and max_states in (None, 200):
        assert lean.counterexamples  # the comparison covered counterexamples


def test_lean_loop_crosses_blocks_and_clock_ticks() -> None:
    # 6**5 = 7,776 states: more than one block of expanded states (1,024) in the widest levels
    # and more than one clock interval (4,096 new states); the invariant first fails deep
    def build() -> Any:
        model = counters(5, 5)
        model.invariants = (Invariant[Counters]("sum", "x", lambda s: sum(s) < 22),)
        return model

    ticks: list[Progress] = []
    lean = check(build(), Bounds(stop_at_first=False), progress=ticks.append,
                 progress_interval=0.0)
    general = check(_general(build()), Bounds(stop_at_first=False))
    assert _summary(lean) == _summary(general)
    assert len(ticks) >= 2 and ticks[-1].states == 6**5
    # the invariant is called once on every state, across blocks
    called: list[Counters] = []
    model = counters(5, 5)
    model.invariants = (Invariant[Counters]("log", "x", lambda s: called.append(s) is None),)
    assert check(model).ok
    assert len(called) == 6**5 and len(set(called)) == 6**5
    assert lean.counterexample is not None and len(lean.counterexample.steps) == 22


def test_edges_by_source_keep_each_sources_order() -> None:
    # the searches store edges source by source, so _by_source normally moves nothing; given
    # them in any order it must still group them by source, each source's in the given order
    from array import array

    from peerkit.checker.engine import _by_source

    src, dst, lab = array("q", [2, 0, 2, 1]), array("q", [5, 6, 7, 8]), array("i", [1, 2, 3, 4])
    start, out_dst, out_lab = _by_source(3, src, dst, lab)
    assert list(start) == [0, 1, 2, 4]
    assert list(out_dst) == [6, 8, 5, 7] and out_lab is not None and list(out_lab) == [2, 4, 1, 3]
    ordered = array("q", [0, 2, 2])
    start, same_dst, no_lab = _by_source(3, ordered, array("q", [1, 2, 3]), None)
    assert list(start) == [0, 1, 1, 3] and list(same_dst) == [1, 2, 3] and no_lab is None
