"""The parallel search (checker/parallel.py) against the sequential engine: the same numbers.

The oracle is `engine.check` itself: for every model here, the parallel search with several
workers must report the same state and transition counts, depth, verdicts and counterexamples
(every step, the stuck loop and the explanation), with and without a bound, stopping at the first
violation or not. The Dask pool (``peerkit check --cluster``) is checked the same way on a local
cluster of two workers when Dask is installed (``peerkit[distributed]``).
"""

from __future__ import annotations

import collections
import functools
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from peerkit.checker import engine, parallel, toys
from peerkit.checker.api import Invariant, StepModel, TransitionInvariant
from peerkit.model import PeeringModel, get_config

UNBOUNDED = engine.Bounds()


def outcome(result: engine.Result[Any, Any]) -> tuple[Any, ...]:
    return (
        result.distinct_states, result.transitions, result.depth, result.complete,
        result.stopped_because,
        [(p.id, p.verdict, p.note) for p in result.properties],
        [(c.property_id, c.kind, c.initial, c.steps, c.loop, c.explanation)
         for c in result.counterexamples],
    )


def same_as_engine(factory: Callable[[], Any], bounds: engine.Bounds = UNBOUNDED,
                   workers: tuple[int, ...] = (2,)) -> engine.Result[Any, Any]:
    expected = engine.check(factory(), bounds)
    for count in workers:
        got = parallel.check(factory, count, bounds)
        assert outcome(got) == outcome(expected), f"{count} workers"
    return expected


def peering(config: str, *bugs: str) -> Callable[[], PeeringModel]:
    return functools.partial(PeeringModel, get_config(config), list(bugs))


TOYS: dict[str, Callable[[], Any]] = {
    "ring_lock": functools.partial(toys.ring_lock, 3),
    "ring_lock-buggy": functools.partial(toys.ring_lock, 3, True),
    "dead_end": toys.dead_end,
    "counters": functools.partial(toys.counters, 4, 3),
    "counters-symmetric": functools.partial(toys.counters, 4, 3, True),
}

BOUNDS = {
    "unbounded": engine.Bounds(),
    "all": engine.Bounds(stop_at_first=False),
    "states": engine.Bounds(max_states=50),
    "depth": engine.Bounds(max_depth=3),
}


@pytest.mark.parametrize("bounds", BOUNDS.values(), ids=BOUNDS.keys())
@pytest.mark.parametrize("toy", TOYS.values(), ids=TOYS.keys())
def test_toys_as_the_engine(toy: Callable[[], Any], bounds: engine.Bounds) -> None:
    # 1 worker (no partition), 2 and 3 (more workers than cores; uneven shares)
    same_as_engine(toy, bounds, workers=(1, 2, 3))


def test_the_toys_exercise_what_they_should() -> None:
    # the comparisons above would pass vacuously if nothing were ever violated or cut short
    assert same_as_engine(TOYS["ring_lock-buggy"]).counterexample is not None
    assert same_as_engine(TOYS["dead_end"]).counterexample is not None
    assert same_as_engine(TOYS["counters"], BOUNDS["states"]).distinct_states == 50


@pytest.mark.parametrize("bounds", [BOUNDS["unbounded"], BOUNDS["states"]],
                         ids=["unbounded", "states"])
def test_race_as_the_engine(bounds: engine.Bounds) -> None:
    result = same_as_engine(peering("race"), bounds)
    assert result.complete == (bounds.max_states is None)


# tiny: its states once met the encoder's old lookup by value (a tracker decoded as plain pairs)
@pytest.mark.parametrize("config", ["ci", "tiny"])
def test_config_as_the_engine(config: str) -> None:
    result = same_as_engine(peering(config))
    assert result.ok and result.complete


@pytest.mark.parametrize("bug", ["stored-map", "termination-race", "no-reconnect",
                                 "dial-deleted"])
def test_bugs_on_ci_as_the_engine(bug: str) -> None:
    result = same_as_engine(peering("ci", bug))
    assert not result.ok


def test_every_shortest_counterexample_of_a_bug_as_the_engine() -> None:
    # --all: one counterexample per violated property, liveness decided on the whole graph
    result = same_as_engine(peering("ci", "no-reconnect"), BOUNDS["all"])
    assert result.complete and not result.ok


def property_edges(search: engine._Search[Any, Any]) -> list[tuple[list[int], list[int]]]:
    return [(srcs.tolist(), dsts.tolist()) for srcs, dsts in search.edges]


@pytest.mark.parametrize(("config", "parts", "share"),
                         [("ci", 2, 1e9), ("race", 2, 1.0), ("race", 3, 0.05), ("race", 2, 0.0)])
def test_what_a_worker_learns_of_others_states_is_true_and_changes_nothing(
        config: str, parts: int, share: float, monkeypatch: pytest.MonkeyPatch) -> None:
    # A worker does not send a successor whose number it learned from an earlier reply: the
    # numbers it holds must be the owners', the liveness edges built with them the engine's,
    # and with no bound in the way (remote_share 1e9) no state may go to its owner twice.
    # remote_share 1 is the default bound; 0 never learns anything; 0.05 learns part of each
    # reply and must forget the rest.
    monkeypatch.setattr(parallel.Partition, "remote_share", share)
    factory = peering(config)
    sequential = engine._Search(factory(), UNBOUNDED, None, 1.0)
    expected = sequential.run()
    pool = parallel.InProcessPool(factory, parts)
    sent: collections.Counter[tuple[int, int, Any]] = collections.Counter()
    for part in pool.parts:
        for owner, encoder in enumerate(part.encoders):
            def encode(states: list[Any], me: int = part.me, owner: int = owner,
                       real: Callable[[list[Any]], Any] = encoder.encode) -> Any:
                sent.update((me, owner, state) for state in states)
                return real(states)
            encoder.encode = encode  # type: ignore[method-assign]
    search = parallel._ParallelSearch(factory(), UNBOUNDED, None, 1.0, pool)
    got = search.run()
    assert outcome(got) == outcome(expected)
    assert property_edges(search) == property_edges(sequential)
    numbers = {state: sid for part in pool.parts for state, sid in part.index.items()
               if part.owner(state) == part.me}
    assert len(numbers) == expected.distinct_states
    learned = 0
    for part in pool.parts:
        own = sum(1 for state in part.index if part.owner(state) == part.me)
        for state, sid in part.index.items():
            assert sid >= 0  # every candidate was numbered, learned or forgotten
            if part.owner(state) != part.me:
                assert numbers[state] == sid
                learned += 1
        assert part.remote == len(part.index) - own <= share * own
    assert (learned > 0) == (share > 0)
    if share == 1e9:
        assert sent and max(sent.values()) == 1


def test_fingerprints_agree_across_processes_with_other_hash_salts() -> None:
    model = PeeringModel(get_config("race"))
    state = model.initial_states()[0]
    states = [state, *(nxt for _, nxt in model.successors(state))]
    here = [parallel.fingerprint(s) for s in states]
    program = (
        "from peerkit.checker import parallel\n"
        "from peerkit.model import PeeringModel, get_config\n"
        "m = PeeringModel(get_config('race'))\n"
        "s = m.initial_states()[0]\n"
        "print([parallel.fingerprint(x) for x in [s, *(n for _, n in m.successors(s))]])\n"
        "print(hash('peerkit'))\n"
    )
    outputs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True,
                             text=True, check=True)
        outputs.append(run.stdout.splitlines())
    assert outputs[0][1] != outputs[1][1]  # the salts did differ
    assert outputs[0][0] == outputs[1][0] == str(here)
    assert len(set(here)) == len(here)


def test_a_worker_that_fails_is_reported() -> None:
    def broken() -> Any:
        model = toys.ring_lock(2)
        if parallel.multiprocessing.current_process().name.startswith("peerkit-worker"):
            raise RuntimeError("cannot build the model here")
        return model

    with pytest.raises(parallel.WorkerError, match="cannot build the model here"):
        parallel.check(broken, 2)


def test_cluster_of_two_dask_workers_as_one_process() -> None:
    distributed = pytest.importorskip("distributed")
    from peerkit.cluster import DaskPool

    factory = peering("race")
    expected = engine.check(factory())
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        pool = DaskPool(factory, cluster.scheduler_address)
        try:
            assert pool.workers == 2
            got = parallel.check(factory, pool=pool)
        finally:
            pool.close()
    assert outcome(got) == outcome(expected)


Cell = tuple[int, int]


def walk(bad_state: Cell | None = None, bad_step: Cell | None = None) -> StepModel[Cell, str]:
    """(x, y) on a 6 x 6 grid, one step right or up at a time: 11 levels of 1 to 6 states.
    `bad_state` breaks an invariant; a step into `bad_step` breaks a transition invariant."""
    def enabled(state: Cell) -> list[str]:
        return [a for a, c in (("right", state[0]), ("up", state[1])) if c < 5]

    def step(state: Cell, action: str) -> Cell:
        x, y = state
        return (x + 1, y) if action == "right" else (x, y + 1)

    return StepModel(
        name="walk", initial=lambda: [(0, 0)], enabled=enabled, step=step,
        invariants=(Invariant("good", "not the bad state", lambda s: s != bad_state),),
        transition_invariants=(TransitionInvariant("good-step", "not into the bad state",
                                                   lambda _s, _a, t: t != bad_step),))


class CountingPool(parallel.InProcessPool):
    """Counts the rounds; the clock jumps past any time bound during the `late`-th receive."""

    def __init__(self, factory: Callable[[], Any], workers: int, late: int = 0) -> None:
        super().__init__(factory, workers)
        self.rounds: collections.Counter[str] = collections.Counter()
        self.late = late

    def call_all(self, method: str, args: Any) -> list[Any]:
        self.rounds[method] += 1
        return super().call_all(method, args)

    def now(self) -> float:
        return 100.0 if self.late and self.rounds["receive"] >= self.late else 0.0


WALKS: dict[str, tuple[Callable[[], Any], engine.Bounds]] = {
    "unbounded": (walk, UNBOUNDED),
    "depth": (walk, engine.Bounds(max_depth=4)),
    "states": (walk, engine.Bounds(max_states=12)),  # within level 4 (10 states before it)
    "invariant": (functools.partial(walk, bad_state=(2, 3)), UNBOUNDED),
    "transition-invariant": (functools.partial(walk, bad_step=(3, 2)), UNBOUNDED),
    "all-violations": (functools.partial(walk, (2, 3), (3, 2)), BOUNDS["all"]),
}


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("case", WALKS.values(), ids=WALKS.keys())
def test_no_level_is_expanded_ahead_that_the_search_stops_before(
        case: tuple[Callable[[], Any], engine.Bounds], workers: int) -> None:
    # A level is expanded in the round that numbers it, before the coordinator has looked at
    # it: the bounds and a first violation must keep the workers from expanding one the
    # search does not go on with (work thrown away), and the counts must stay the engine's.
    factory, bounds = case
    pool = CountingPool(factory, workers)
    got = parallel.check(factory, bounds=bounds, pool=pool)
    assert outcome(got) == outcome(engine.check(factory(), bounds))
    levels = pool.rounds["receive"]  # the expansions the search went on with
    made = [part.made for part in pool.parts]
    if factory is WALKS["invariant"][0]:
        # only the owner of the bad state knows it stops the search; the others expand
        owner = next(p for p in pool.parts if p.owner((2, 3)) == p.me)
        assert owner.made == levels and max(made) <= levels + 1
        assert not got.complete
    else:
        assert made == [levels] * workers
    assert pool.rounds["number"] == levels


def test_the_time_bound_stops_the_workers_expanding_ahead(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    # the clock passes the bound during the second level's receive: the round that numbers
    # that level must not expand it, and the search stops where a depth bound of 2 would
    pool = CountingPool(walk, 2, late=2)
    monkeypatch.setattr(parallel.time, "perf_counter", pool.now)
    got = parallel.check(walk, bounds=engine.Bounds(max_seconds=10), pool=pool)
    assert got.stopped_because == "time bound 10 s reached"
    assert [part.made for part in pool.parts] == [2, 2] == [pool.rounds["receive"]] * 2
    monkeypatch.undo()
    by_depth = engine.check(walk(), engine.Bounds(max_depth=2))
    assert outcome(got)[:3] == outcome(by_depth)[:3]
