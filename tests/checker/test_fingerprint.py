"""Fingerprint mode (check(fingerprints=True)) against the exact mode, and its collision handling.

On toy models both modes must agree on everything: state and transition counts, depth,
verdicts, counterexamples step for step. Then fingerprint functions that collide on purpose
show what the docstring of engine._FingerprintSearch promises: a collision with a state still
held in full is detected and resolved (nothing omitted, counterexamples still exact); a
collision with an older state omits the newcomer, undetected, which is what the reported
omission probability is about. Last, `fingerprint` is the same in every process.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from peerkit.checker import engine
from peerkit.checker.api import Invariant, Liveness, StepModel, TransitionInvariant
from peerkit.checker.engine import Bounds, Result, check, replay
from peerkit.checker.fingerprint import (
    canonical_text,
    fingerprint,
    omission_probability,
    process_fingerprint,
)
from peerkit.checker.toys import Counters, counters, dead_end, ring_lock


def _same(exact: Result[Any, Any], fp: Result[Any, Any]) -> None:
    assert fp.distinct_states == exact.distinct_states
    assert fp.transitions == exact.transitions
    assert fp.depth == exact.depth
    assert fp.complete == exact.complete
    assert fp.stopped_because == exact.stopped_because
    assert fp.properties == exact.properties
    assert fp.counterexamples == exact.counterexamples
    assert exact.fingerprints is None and fp.fingerprints is not None


def _weak_ring() -> StepModel[Any, Any]:
    """ring_lock(2) with a transition invariant and a weakly fair liveness property that a
    process can be starved in (request/leave loops of the other one)."""
    base = ring_lock(2)
    return StepModel(
        name="weak ring",
        initial=base.initial,
        enabled=base.enabled,
        step=base.step,
        invariants=base.invariants,
        transition_invariants=(
            TransitionInvariant("no-enter-1", "process 1 never enters",
                                lambda _s, a, _t: a != ("enter", 1)),
        ),
        liveness=(
            Liveness("p0-critical", "process 0 gets in", lambda s: s[0][0] == "critical",
                     fairness="weak"),
            Liveness("idle", "all idle again", lambda s: all(p == "idle" for p in s[0]),
                     lambda a: a[0] != "request"),
        ),
    )


MODELS: dict[str, Callable[[], Any]] = {
    "counters(4,3)": lambda: counters(4, 3),
    "counters symmetric": lambda: counters(4, 3, symmetric=True),
    "ring_lock(3)": lambda: ring_lock(3),
    "ring_lock(3, buggy)": lambda: ring_lock(3, buggy=True),
    "dead_end": dead_end,
    "weak ring": _weak_ring,
}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("stop_at_first", [True, False])
@pytest.mark.parametrize("fp", [None, fingerprint], ids=["process", "stable"])
def test_fingerprint_mode_equals_exact_mode(
    name: str, stop_at_first: bool, fp: Callable[[Any], int] | None
) -> None:
    model = MODELS[name]()
    bounds = Bounds(stop_at_first=stop_at_first)
    exact = check(model, bounds)
    result = check(model, bounds, fingerprints=True, fingerprint=fp)
    _same(exact, result)
    info = result.fingerprints
    assert info is not None and info.collisions_detected == 0
    assert info.function == ("process_fingerprint" if fp is None else "fingerprint")
    generated = result.transitions + len(list(model.initial_states()))
    assert info.omission_probability == omission_probability(result.distinct_states, generated)
    for ce in result.counterexamples:
        replay(model, ce.initial, [*ce.actions, *(s.action for s in ce.loop)])


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("bounds", [Bounds(), Bounds(stop_at_first=False), Bounds(max_states=40)],
                         ids=["first", "all", "max40"])
def test_spilled_levels_change_nothing(
    name: str, bounds: Bounds, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a spill chunk of 3 states, every level but the smallest lives in compressed chunks
    between its discovery and its expansion; the answers must not change."""
    monkeypatch.setattr(engine, "_SPILL_CHUNK", 3)
    model = MODELS[name]()
    result = check(model, bounds, fingerprints=True)
    _same(check(model, bounds), result)
    assert result.fingerprints is not None
    assert result.fingerprints.peak_frontier <= 6
    if result.distinct_states > 20:
        assert result.fingerprints.peak_frontier_bytes > 0


def test_states_that_cannot_be_pickled_stay_held(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "_SPILL_CHUNK", 2)
    cls = type("Unpicklable", (tuple,), {"__module__": __name__})  # no such module attribute
    model = StepModel(
        name="unpicklable",
        initial=lambda: [cls((0, 0))],
        enabled=lambda s: [i for i in range(2) if s[i] < 3],
        step=lambda s, i: cls((*s[:i], s[i] + 1, *s[i + 1:])),
    )
    result = check(model, fingerprints=True)
    assert result.distinct_states == 16 and result.complete
    assert result.fingerprints is not None and result.fingerprints.peak_frontier_bytes == 0


def test_the_weak_ring_finds_what_it_should() -> None:
    """The comparison above means something only if the models exercise every part."""
    result = check(_weak_ring(), Bounds(stop_at_first=False), fingerprints=True)
    verdicts = {p.id: p.verdict for p in result.properties}
    assert verdicts == {"mutex": "holds", "no-enter-1": "violated", "p0-critical": "violated",
                        "idle": "holds"}
    assert result.fingerprints is not None and result.fingerprints.edges > 0


def _wide_ring(n: int) -> StepModel[int, Any]:
    """A cycle of n states, each step its own action, that state 0 can leave for a target:
    every state reaches the target, yet going round for ever is fair (leaving is enabled in
    state 0 only), so weak fairness finds the whole cycle. With n above 256 the action numbers
    no longer fit the one-byte label store."""
    return StepModel(
        name=f"wide ring {n}",
        initial=lambda: [0],
        enabled=lambda s: [] if s < 0 else [("step", s)] + ([("exit",)] if s == 0 else []),
        step=lambda s, a: -1 if a == ("exit",) else (s + 1) % n,
        liveness=(Liveness("exit", "the ring is left", lambda s: s < 0, fairness="weak"),),
    )


@pytest.mark.parametrize("n", [5, 300, 70_000])
def test_many_actions_widen_the_label_store(n: int) -> None:
    model = _wide_ring(n)
    result = check(model, fingerprints=True)
    _same(check(model), result)
    assert result.counterexample is not None and len(result.counterexample.loop) == n
    assert result.fingerprints is not None and result.fingerprints.edges == n + 1


@pytest.mark.parametrize("bounds", [Bounds(max_states=50), Bounds(max_depth=3)])
def test_bounds_stop_fingerprint_mode_where_they_stop_the_exact_mode(bounds: Bounds) -> None:
    model = counters(4, 3)
    _same(check(model, bounds), check(model, bounds, fingerprints=True))


def test_storage_is_compact() -> None:
    """The store holds fingerprints, parents and a table, not states: well under 100 bytes a
    state once the table's first allocation is amortised (the benchmark measures real memory)."""
    result = check(counters(6, 5), fingerprints=True)
    info = result.fingerprints
    assert info is not None and result.distinct_states == 6 ** 6
    assert info.bytes_per_state < 40
    assert info.peak_frontier < result.distinct_states / 4


def test_usage_errors() -> None:
    with pytest.raises(ValueError, match="only used with fingerprints"):
        check(counters(2, 2), fingerprint=fingerprint)
    with pytest.raises(TypeError):
        check(counters(2, 2), fingerprints=1)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# forced collisions


def _only_top_bad(top: int) -> StepModel[Counters, int]:
    """Two counters 0..top; the invariant fails at (0, top) only."""
    base = counters(2, top)
    return StepModel(
        name="two counters",
        initial=base.initial_states,
        enabled=lambda s: [i for i, v in enumerate(s) if v < top],
        step=lambda s, i: (*s[:i], s[i] + 1, *s[i + 1:]),
        invariants=(Invariant("not-0-top", "never (0, top)", lambda s: s != (0, top)),),
    )


def test_a_collision_within_the_held_levels_is_detected_and_resolved() -> None:
    """Every state of one BFS level gets the same fingerprint (the sum of the counters): each
    lookup meets held states, tells them apart exactly, and stores the newcomer anyway. The
    counterexample must still be the exact mode's: re-execution backtracks when the first
    successor with the right fingerprint, (1, 0), leads to the wrong state."""
    model = _only_top_bad(3)
    exact = check(model)
    result = check(model, fingerprints=True, fingerprint=sum)
    _same(exact, result)
    assert result.fingerprints is not None and result.fingerprints.collisions_detected > 0
    ce = result.counterexample
    assert ce is not None and ce.actions == (1, 1, 1)


def test_a_collision_with_an_older_state_omits_the_newcomer_undetected() -> None:
    """One counter 0..5 and fingerprints modulo 3: state (3) is met when (0) is no longer held,
    is taken for it, and is omitted with everything after it. Nothing can detect that; the
    documented safeguard is the reported probability, which for a real 64-bit fingerprint is
    tiny, and the exact or the stable mode finds all six states."""
    model = counters(1, 5)

    def mod3(state: Counters) -> int:
        return state[0] % 3

    result = check(model, fingerprints=True, fingerprint=mod3)
    assert result.distinct_states == 3 and result.complete
    assert result.fingerprints is not None and result.fingerprints.collisions_detected == 0
    assert check(model).distinct_states == 6
    assert check(model, fingerprints=True, fingerprint=fingerprint).distinct_states == 6


def test_omission_probability_is_tlcs_formula() -> None:
    assert omission_probability(0, 0) == 0.0
    assert omission_probability(10, 10) == 0.0
    assert omission_probability(5_000_000, 30_000_000) == pytest.approx(
        5e6 * 25e6 / 2 ** 64)
    assert omission_probability(2 ** 40, 2 ** 41) == 1.0


# --------------------------------------------------------------------------------------------
# the stable fingerprint


class Colour(enum.Enum):
    RED = 1


@dataclasses.dataclass(frozen=True)
class Point:
    x: int
    y: str


SAMPLES: list[Any] = [
    (1, "a", None, True, 2.5, (3, ("é", b"x"))),
    (frozenset({"b", "a", "c"}), Colour.RED, Point(1, "z")),
    (),
    "",
]

_PRINT_SAMPLES = (
    "import dataclasses, enum, sys; sys.path[:0] = [{here!r}]; "
    "from test_fingerprint import SAMPLES; "
    "from peerkit.checker.fingerprint import fingerprint; "
    "print([fingerprint(s) for s in SAMPLES])"
)


def test_stable_fingerprint_is_the_same_in_every_process() -> None:
    """String hashing differs per process (PYTHONHASHSEED); the fingerprint must not, and a
    frozenset's members are ordered by their encoding, not by hash."""
    here = os.path.dirname(__file__)
    outputs = set()
    for seed in ("1", "2", "random"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        proc = subprocess.run([sys.executable, "-c", _PRINT_SAMPLES.format(here=here)],
                              env=env, capture_output=True, text=True, check=True)
        outputs.add(proc.stdout)
    assert len(outputs) == 1, outputs
    printed = json.loads(outputs.pop())
    # the enum and dataclass sample names its type's module, which pytest may name otherwise
    plain = [i for i, s in enumerate(SAMPLES) if i != 1]
    assert [printed[i] for i in plain] == [fingerprint(SAMPLES[i]) for i in plain]


def test_stable_fingerprint_tells_apart_what_differs() -> None:
    values: list[Any] = [
        (1, 2), (2, 1), ((1,), 2), (1, (2,)), ("1", 2), (None, 2), (1.5, 2),
        frozenset({1, 2}), (frozenset({1, 2}),), Colour.RED, Point(1, "z"), Point(1, "y"),
        ("repr:x",), b"ab", "ab",
    ]
    texts = [canonical_text(v) for v in values]
    assert len(set(texts)) == len(texts), texts
    assert len({fingerprint(v) for v in values}) == len(values)
    assert all(0 <= fingerprint(v) < 2 ** 64 for v in values)
    assert fingerprint((1, 2)) == fingerprint(tuple([1, 2]))  # equal states, equal prints


def test_process_fingerprint_is_hash_as_unsigned() -> None:
    for value in [(1, "a"), -1, ()]:
        assert process_fingerprint(value) == hash(value) % 2 ** 64


def test_a_path_that_cannot_be_re_executed_is_a_clear_error() -> None:
    """Re-execution needs deterministic successors: a model whose step changes between the
    search and the rebuild (as an undetected collision on the path would look) gets
    TraceRebuildError, never a wrong counterexample."""
    from peerkit.checker.engine import TraceRebuildError

    calls = {"n": 0}

    def step(state: int, action: int) -> int:
        calls["n"] += 1
        # during the search (first 3 calls) the chain is 0 -> 1 -> 2 -> 3; afterwards the step
        # from 1 leads to 10 instead, so the path to 3 cannot be walked again
        return 10 if calls["n"] > 3 and state == 1 else state + 1

    model = StepModel(
        name="fickle",
        initial=lambda: [0],
        enabled=lambda s: [0] if s < 3 else [],
        step=step,
        invariants=(Invariant("below-3", "never 3", lambda s: s < 3),),
    )
    with pytest.raises(TraceRebuildError, match="fingerprint collision"):
        check(model, fingerprints=True)
