"""The core of benchmarks/por_potential.py (which actions could be a singleton ample set, and the
optimistic reduced search) on toy models whose answers are worked out by hand."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from peerkit.checker.api import Liveness, StepModel, TransitionInvariant
from peerkit.checker.toys import counters, ring_lock

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "por_potential.py"


@pytest.fixture(scope="module")
def por() -> ModuleType:
    spec = importlib.util.spec_from_file_location("por_potential", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclasses look their module up there)
    spec.loader.exec_module(module)
    return module


def _candidates(por: ModuleType, model: Any, extra: Any = ()) -> tuple[Any, dict[Any, list[Any]]]:
    graph = por.explore(model)
    analysis = por.analyse(graph, por.propositions(model, extra),
                           [ti.holds for ti in model.transition_invariants], str,
                           [live.counts for live in model.liveness])
    return graph, analysis.candidates


def test_independent_counters_every_action_is_a_candidate(por: ModuleType) -> None:
    model = counters(3, 2)
    graph, cands = _candidates(por, model)
    assert len(graph.succ) == 27
    for s, out in graph.succ.items():
        assert cands[s] == list(out), s
    # the reduced search runs the counters one after another: a single path of 3 * 2 steps
    states, transitions, taken = por.optimistic_reduced(graph, cands)
    assert (states, transitions) == (7, 6)
    assert [a for a in taken.values() if a is not None] == [0, 0, 1, 1, 2, 2]


def test_ring_lock_candidates_match_the_hand_worked_rule(por: ModuleType) -> None:
    """ring_lock(2): `request i` and `leave i` change "all idle" exactly when the other process
    is idle; `enter i` and `enter j` disable each other (the lock), so `enter i` is a candidate
    exactly when the other process is not waiting. Everything else commutes."""
    graph, cands = _candidates(por, ring_lock(2))
    assert len(graph.succ) == 8  # (idle, waiting, critical)^2 minus critical/critical
    rule_says = 0
    for (phases, _holder), out in graph.succ.items():
        for kind, i in out:
            other = phases[1 - i]
            expected = other != "waiting" if kind == "enter" else other != "idle"
            assert ((kind, i) in cands[(phases, _holder)]) == expected, (phases, kind, i)
            rule_says += expected
    assert rule_says > 0
    # the initial state (all idle) has no candidate: every request ends "all idle"
    assert cands[(("idle", "idle"), None)] == []
    assert cands[(("waiting", "waiting"), None)] == []


def _writers(invariant_on_b: bool = False) -> StepModel[tuple[int, int, int], str]:
    """Two one-shot writers. Without `invariant_on_b` both write x (1 and 2): each leaves the
    other enabled, but the orders end in different states. With it they write different
    variables (they commute), and a transition invariant judges b by the value of x a wrote."""
    def enabled(s: tuple[int, int, int]) -> list[str]:
        return [w for w, done in (("a", s[1]), ("b", s[2])) if not done]

    def step(s: tuple[int, int, int], w: str) -> tuple[int, int, int]:
        x, a_done, b_done = s
        if invariant_on_b:
            return (1, 1, b_done) if w == "a" else (x, a_done, 1)
        return (1, 1, b_done) if w == "a" else (2, a_done, 1)

    tis = (TransitionInvariant[tuple[int, int, int], str](
        "b-before-a", "b never runs after a wrote x",
        lambda s, w, _t: not (w == "b" and s[0] == 1)),) if invariant_on_b else ()
    return StepModel("writers", lambda: [(0, 0, 0)], enabled, step, transition_invariants=tis)


def test_actions_that_stay_enabled_but_do_not_commute_are_not_candidates(por: ModuleType) -> None:
    graph, cands = _candidates(por, _writers())
    # each stays enabled after the other (only the commutation check can tell them apart)
    assert "b" in graph.succ[(1, 1, 0)] and "a" in graph.succ[(2, 0, 1)]
    assert graph.succ[(1, 1, 0)]["b"] != graph.succ[(2, 0, 1)]["a"]
    assert cands[(0, 0, 0)] == []
    assert cands[(1, 1, 0)] == ["b"]  # alone: nothing to commute with


def test_a_transition_invariant_judging_the_commuted_step_differently_forbids_both(
        por: ModuleType) -> None:
    graph, cands = _candidates(por, _writers(invariant_on_b=True))
    # a and b commute, but taking either alone skips (sa, b), the only step that breaks the
    # invariant, or checks it in its place
    assert graph.succ[(0, 0, 0)] == {"a": (1, 1, 0), "b": (0, 0, 1)}
    assert graph.succ[(1, 1, 0)]["b"] == graph.succ[(0, 0, 1)]["a"]
    assert cands[(0, 0, 0)] == []


def test_a_visible_action_is_not_a_candidate(por: ModuleType) -> None:
    model = counters(2, 2)
    _, cands = _candidates(por, model, [("first-moved", lambda s: s[0] >= 1)])
    assert cands[(0, 0)] == [1]  # counter 0's first step turns the proposition
    assert cands[(1, 0)] == [0, 1]


def test_an_uncounted_action_is_not_taken_alone_when_a_counted_one_is_enabled(
        por: ModuleType) -> None:
    base = counters(2, 1)
    model = StepModel("counted", base.initial_states, lambda s: [a for a, _ in base.successors(s)],
                      lambda s, a: dict(base.successors(s))[a],
                      # (a target no step changes, so only the counts can tell the actions apart)
                      liveness=(Liveness("any", "anywhere", lambda s: True,
                                         counts=lambda a: a == 0),))
    graph = por.explore(model)
    analysis = por.analyse(graph, por.propositions(model), [], str,
                           [live.counts for live in model.liveness])
    assert analysis.candidates_without_counts[(0, 0)] == [0, 1]
    assert analysis.candidates[(0, 0)] == [0]
    assert analysis.candidates[(0, 1)] == [0]
    assert analysis.candidates[(1, 0)] == [1]  # no counted action is left: any will do


def test_explore_refuses_to_stop_short(por: ModuleType) -> None:
    with pytest.raises(RuntimeError, match="not complete"):
        por.explore(counters(3, 2), max_states=10)


def test_the_peering_graph_is_the_checkers(por: ModuleType) -> None:
    """The script measures the graph the checker explores (tiny: about 1.5 s)."""
    from peerkit.checker.engine import check
    from peerkit.model import PeeringModel, get_config

    result = check(PeeringModel(get_config("tiny")))
    report = por.peering_report("tiny")
    assert (report["states"], report["transitions"]) == (result.distinct_states,
                                                         result.transitions)
    for part in report["by_propositions"].values():
        bound = part["optimistic_bound"]
        assert 0 < bound["states"] <= report["states"]
        assert sum(v["enabled"] for v in part["by_kind"].values()) == report["transitions"]
    # the stricter propositions can only take candidates away
    verdicts, reads = (report["by_propositions"][k] for k in ("verdicts", "reads"))
    assert reads["states_with_candidate"] <= verdicts["states_with_candidate"]


def test_the_proviso_keeps_an_action_from_being_ignored_on_a_cycle(por: ModuleType) -> None:
    """p toggles x for ever, q sets y once; they are independent and invisible. Taking p alone
    everywhere would go round x's cycle and never run q (the "ignoring" problem)."""
    def enabled(s: tuple[int, int]) -> list[str]:
        return ["p", "q"] if s[1] == 0 else ["p"]

    def step(s: tuple[int, int], a: str) -> tuple[int, int]:
        return (1 - s[0], s[1]) if a == "p" else (s[0], 1)

    graph, cands = _candidates(por, StepModel("toggle", lambda: [(0, 0)], enabled, step))
    assert cands[(0, 0)] == ["p", "q"]
    states, _, taken = por.optimistic_reduced(graph, cands)
    assert states == 4 == len(graph.succ)
    assert taken[(1, 0)] == "q"  # p would close the cycle back to (0, 0)
