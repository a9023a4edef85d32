"""Small models with known answers, for testing the checker and measuring its speed.

* `counters(n, top)`: n independent counters, each stepping 0..top. (top+1)**n states; the
  benchmark model is `counters(7, 5)` with 279,936 states.
* `ring_lock(n)`: n processes around one lock, a textbook mutual-exclusion model with a seeded
  bug switch (two processes can enter at once) and a liveness property (everyone gets back to idle).
* `dead_end()`: a three-state model whose liveness property fails at a dead end.

Import rules: standard library and ``peerkit.checker.api`` only.
"""

from __future__ import annotations

from collections.abc import Iterator

from .api import Invariant, Liveness, Reduction, StepModel

Counters = tuple[int, ...]


class CounterModel:
    """n independent counters 0..top; action i increments counter i."""

    def __init__(self, n: int = 7, top: int = 5, symmetric: bool = False) -> None:
        if not (isinstance(n, int) and n >= 1 and isinstance(top, int) and top >= 0):
            raise ValueError(f"need n >= 1 and top >= 0, got n={n!r}, top={top!r}")
        self.name = f"counters({n}, {top})"
        self.n = n
        self.top = top

        def in_range(state: Counters) -> bool:
            return max(state) <= top

        self.invariants = (Invariant[Counters]("in-range", "no counter exceeds top", in_range),)
        self.transition_invariants = ()
        self.liveness = ()
        self.reductions: tuple[Reduction[Counters], ...] = ()
        if symmetric:
            self.reductions = (
                Reduction[Counters](
                    "counter symmetry",
                    lambda s: tuple(sorted(s)),
                    "the counters are interchangeable: every action and the invariant treat "
                    "them alike, so a permutation of a state satisfies the same properties "
                    "and has permuted successors",
                ),
            )

    def initial_states(self) -> list[Counters]:
        return [(0,) * self.n]

    def successors(self, state: Counters) -> Iterator[tuple[int, Counters]]:
        top = self.top
        for i, value in enumerate(state):
            if value < top:
                yield i, (*state[:i], value + 1, *state[i + 1:])

    def format_action(self, action: int) -> str:
        return f"increment counter {action}"


def counters(n: int = 7, top: int = 5, symmetric: bool = False) -> CounterModel:
    return CounterModel(n, top, symmetric)


# ---------------------------------------------------------------------------------------------

Ring = tuple[tuple[str, ...], int | None]  # per-process phase, lock holder


def ring_lock(n: int = 3, buggy: bool = False) -> StepModel[Ring, tuple[str, int]]:
    """n processes: idle -> waiting -> critical -> idle, guarded by one lock.

    With ``buggy`` a waiting process may enter even when the lock is held by someone else.
    """
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"need n >= 1, got {n!r}")

    def initial() -> list[Ring]:
        return [(("idle",) * n, None)]

    def enabled(state: Ring) -> Iterator[tuple[str, int]]:
        phases, holder = state
        for i, phase in enumerate(phases):
            if phase == "idle":
                yield ("request", i)
            elif phase == "waiting" and (holder is None or buggy):
                yield ("enter", i)
            elif phase == "critical":
                yield ("leave", i)

    def step(state: Ring, action: tuple[str, int]) -> Ring:
        phases, holder = state
        kind, i = action
        nxt = {"request": "waiting", "enter": "critical", "leave": "idle"}[kind]
        new_phases = (*phases[:i], nxt, *phases[i + 1:])
        if kind == "enter":
            holder = i
        elif kind == "leave" and holder == i:
            holder = None
        return new_phases, holder

    def mutual_exclusion(state: Ring) -> bool:
        return state[0].count("critical") <= 1

    def all_idle(state: Ring) -> bool:
        return all(p == "idle" for p in state[0])

    return StepModel(
        name=f"ring_lock({n}{', buggy' if buggy else ''})",
        initial=initial,
        enabled=enabled,
        step=step,
        invariants=(Invariant("mutex", "at most one process is critical", mutual_exclusion),),
        liveness=(Liveness("back-to-idle", "all processes can get back to idle", all_idle),),
    )


def dead_end() -> StepModel[str, str]:
    """a -> b -> c, and only a is a target: b and c cannot get back (c is a dead end)."""
    graph = {"a": ("b",), "b": ("c",), "c": ()}
    return StepModel(
        name="dead_end",
        initial=lambda: ["a"],
        enabled=lambda s: graph[s],
        step=lambda _s, a: a,
        liveness=(Liveness("reach-a", "state a stays reachable", lambda s: s == "a"),),
    )
