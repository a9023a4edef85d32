"""benchmarks/por_ceiling.py's exact singleton-ample test, on toy models worked out by hand: it
must refuse what only a look beyond the current state shows (a conflict or a visible change that
other steps make possible later), which por_potential.py's local test accepts."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable, Hashable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from peerkit.checker.api import StepModel
from peerkit.checker.toys import counters

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"

State = tuple[int, int, int]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (dataclasses look their module up there)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ceiling() -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))  # (por_ceiling imports its neighbours)
    return _load("por_ceiling")


def _always(_action: object) -> bool:
    return True


def _test(ceiling: ModuleType, model: Any,
          aps: list[tuple[str, Callable[[Any], Hashable]]] | None = None) -> Any:
    graph = ceiling.explore(model)
    return graph, ceiling.Ceiling(graph, aps or [], [], _always)


def _late_conflict() -> StepModel[State, str]:
    """(x, y, z), all 0 at the start. `a` sets x while z is 0; `b` sets y; `c` sets z once y is
    set. In the start state a and b commute (the local test's C1 holds), but b enables c, and c
    disables a: {a} is not persistent there. Where y is already set and z not, c is enabled
    beside a and disables it, so neither {a} nor {c} is persistent there."""
    def enabled(s: State) -> list[str]:
        x, y, z = s
        out = []
        if x == 0 and z == 0:
            out.append("a")
        if y == 0:
            out.append("b")
        if y == 1 and z == 0:
            out.append("c")
        return out

    def step(s: State, w: str) -> State:
        x, y, z = s
        return {"a": (1, y, z), "b": (x, 1, z), "c": (x, y, 1)}[w]

    return StepModel("late-conflict", lambda: [(0, 0, 0)], enabled, step)


def test_independent_counters_pass_everywhere(ceiling: ModuleType) -> None:
    graph, test = _test(ceiling, counters(3, 2))
    for s, out in graph.succ.items():
        for a in out:
            assert test.passes(s, a), (s, a)
    red = ceiling.Ceiling(graph, [], [], _always).reduced()
    assert (red["states"], red["transitions"]) == (7, 6)  # one counter after another


def test_a_conflict_that_only_a_later_step_enables_is_found(ceiling: ModuleType) -> None:
    potential = _load("por_potential")
    model = _late_conflict()
    _graph, test = _test(ceiling, model)
    start = (0, 0, 0)
    # the local test accepts a in the start state ...
    local = potential.analyse(potential.explore(model), [], [], str).candidates
    assert "a" in local[start]
    # ... the exact one does not: b then c disables it
    assert not test.passes(start, "a")
    assert not test.passes((0, 1, 0), "a")  # c is enabled here and disables a
    assert not test.passes((0, 1, 0), "c")  # (the same conflict, seen from c)
    # b commutes with a; once a ran, c has no rival
    assert test.passes(start, "b")
    assert test.passes((1, 1, 0), "c")


def test_an_action_visible_only_after_other_steps_is_refused(ceiling: ModuleType) -> None:
    """Two counters x and y (0..1) and the proposition "both are 1". `x` does not change it in
    the start state (y is 0), but after `y` it does: {x} is visible in its region."""
    def both(s: tuple[int, int]) -> bool:
        return s == (1, 1)

    model = StepModel("two-flags", lambda: [(0, 0)],
                      lambda s: [n for n, v in zip("xy", s, strict=True) if v == 0],
                      lambda s, n: (1, s[1]) if n == "x" else (s[0], 1))
    graph, test = _test(ceiling, model, [("both", both)])
    assert not test.passes((0, 0), "x")
    assert not test.passes((0, 0), "y")
    assert test.passes((1, 0), "y") is False  # y turns "both" here
    red = ceiling.Ceiling(graph, [("both", both)], [], _always).reduced()
    assert red["states"] == len(graph.succ)  # nothing could be taken alone


def test_a_passing_region_is_remembered(ceiling: ModuleType) -> None:
    graph, test = _test(ceiling, counters(2, 2))
    start = next(iter(graph.initial))
    assert test.passes(start, 0)
    checked = test.checked
    # every state reachable without taking counter 0's step is in the region: no new check
    for s in graph.succ:
        if s[0] == start[0]:
            assert test.passes(s, 0)
    assert test.checked == checked


def test_an_uncounted_action_is_never_taken_alone(ceiling: ModuleType) -> None:
    graph = ceiling.explore(counters(2, 1))
    test = ceiling.Ceiling(graph, [], [], lambda a: a != 0)
    start = next(iter(graph.initial))
    assert not test.passes(start, 0)
    assert test.passes(start, 1)


def test_a_step_that_changes_another_steps_verdict_is_refused(ceiling: ModuleType) -> None:
    """`a` sets x, `b` sets a flag; they commute, but a transition invariant judges b by x
    (it holds while x is 0). Taking either alone would judge b in only one of the two worlds."""
    model = StepModel("judged", lambda: [(0, 0, 0)],
                      lambda s: [w for w, done in (("a", s[1]), ("b", s[2])) if not done],
                      lambda s, w: (1, 1, s[2]) if w == "a" else (s[0], s[1], 1))

    def b_while_x_is_0(s: State, w: str, _t: State) -> bool:
        return w != "b" or s[0] == 0

    graph = ceiling.explore(model)
    judged = ceiling.Ceiling(graph, [], [b_while_x_is_0], _always)
    assert not judged.passes((0, 0, 0), "a")
    assert not judged.passes((0, 0, 0), "b")
    unjudged = ceiling.Ceiling(graph, [], [], _always)
    assert unjudged.passes((0, 0, 0), "a") and unjudged.passes((0, 0, 0), "b")


def test_the_static_rule_on_the_peering_model(ceiling: ModuleType) -> None:
    """--static's rule, on the established start of `ci` (dc1 accepted stream 0 from dc2)."""
    from peerkit.model import PeeringModel, get_config
    from peerkit.model import actions as act

    world = PeeringModel(get_config("ci")).initial()
    (st,) = world.streams
    dep = ceiling.statically_dependent
    to_dc1 = act.Deliver(st.sid, "a", "msg")  # the acceptor end is dc1's (cluster 0)
    to_dc2 = act.Deliver(st.sid, "d", "msg")
    assert dep(world, act.Sync(0), to_dc1) and dep(world, to_dc1, act.Sync(0))
    assert not dep(world, act.Sync(0), to_dc2)
    assert dep(world, to_dc2, act.Delete(1, 0)) and not dep(world, to_dc2, act.Delete(0, 1))
    assert dep(world, to_dc1, act.Reset(st.sid)) and not dep(world, act.Sync(0), act.Reset(st.sid))
    assert not dep(world, to_dc1, to_dc2)  # (generous: the two ends of one stream)
    assert dep(world, act.Sync(0), act.Failover(0)) and not dep(world, act.Sync(0),
                                                               act.Failover(1))


def test_a_refusal_rule_is_applied_in_a_remembered_region_too(ceiling: ModuleType) -> None:
    graph = ceiling.explore(counters(2, 2))
    start = next(iter(graph.initial))
    later = next(s for s in graph.succ if s[0] == start[0] and s != start)
    test = ceiling.Ceiling(graph, [], [], _always, lambda s, _a, _b: s == later)
    assert test.passes(start, 0)  # `later` is in the region of counter 0's step ...
    assert not test.passes(later, 0)  # ... but the rule refuses it there
