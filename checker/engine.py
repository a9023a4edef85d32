"""The explicit-state search: breadth-first exploration, property checks, shortest counterexamples.

Theory of operation
-------------------
States are numbered in the order breadth-first search discovers them, so the numbers of one depth
level are contiguous and the queue is just a cursor into the list of states. For each state we keep
the number of its BFS parent; the action that led to it is *not* stored but recovered, when a
counterexample is printed, by re-running the parent's successors (cheap, and it keeps the hot loop
down to one dict probe, one list append and one array append per new state). A state is its own
fingerprint: the states are hashable values and the dict holds them exactly, so there are no hash
collisions to reason about.

Because BFS discovers states in order of depth and every invariant is checked when a state is
first discovered (and every transition invariant when its edge is first explored), the first
violation found has a shortest counterexample.

Liveness is decided after the search, on the complete graph: we keep the edges the property
`counts` and run a backward search from the target states. Any state not reached back is stuck;
its counterexample is the shortest path to it followed by the cycle (or dead end) it is stuck in.
A property whose `fairness` is "weak" asks more: that every *fair* run of counted steps reaches
a target, where a run is fair if no counted action stays enabled for ever without being taken.
Backward reachability alone misses a cycle of counted steps that avoids the targets while a step
that would leave it is sometimes disabled; so we also split the non-target states into strongly
connected components (over counted edges, each labelled with its action) and report a component
in which every action enabled in all of its states is taken on some edge inside it: a fair run
can go round that component for ever. If the search was cut short by a bound, liveness is
reported as unknown rather than guessed.

Import rules: standard library and ``peerkit.checker.api`` only.
"""

from __future__ import annotations

import gc
import time
from array import array
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from .api import InvariantLike, LivenessLike, Model, ReductionLike, TransitionInvariantLike

S = TypeVar("S", bound=Hashable)
A = TypeVar("A")

Verdict = Literal["holds", "violated", "unknown"]
Kind = Literal["invariant", "transition", "liveness"]


@dataclass(frozen=True)
class Bounds:
    """Limits on one search. ``None`` means unbounded."""

    max_depth: int | None = None
    max_states: int | None = None
    max_seconds: float | None = None
    #: Stop at the first violation (the default: it has a shortest counterexample). With False,
    #: the search goes on and reports the first (shortest) violation of *each* property.
    stop_at_first: bool = True

    def __post_init__(self) -> None:
        for name in ("max_depth", "max_states"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                      or value < 0):
                raise ValueError(f"{name} must be a non-negative integer or None, got {value!r}")
        if self.max_seconds is not None and not (
            isinstance(self.max_seconds, (int, float)) and not isinstance(self.max_seconds, bool)
            and self.max_seconds > 0
        ):
            raise ValueError(f"max_seconds must be positive or None, got {self.max_seconds!r}")
        if not isinstance(self.stop_at_first, bool):
            raise ValueError(f"stop_at_first must be a bool, got {self.stop_at_first!r}")


@dataclass(frozen=True)
class Progress:
    """A snapshot for progress displays."""

    states: int
    transitions: int
    depth: int
    queue: int
    seconds: float

    @property
    def states_per_second(self) -> float:
        return self.states / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Step(Generic[S, A]):
    action: A
    state: S


@dataclass(frozen=True)
class Counterexample(Generic[S, A]):
    property_id: str
    kind: Kind
    initial: S
    #: The path from ``initial`` to the violation. For a transition invariant the last step is the
    #: offending transition; for liveness it ends in the first stuck state.
    steps: tuple[Step[S, A], ...]
    explanation: str = ""
    #: Liveness only: the cycle the stuck state is trapped in (empty for a dead end).
    loop: tuple[Step[S, A], ...] = ()

    @property
    def actions(self) -> tuple[A, ...]:
        return tuple(step.action for step in self.steps)


@dataclass(frozen=True)
class PropertyResult:
    id: str
    title: str
    kind: Kind
    verdict: Verdict
    note: str = ""


@dataclass
class Result(Generic[S, A]):
    model: str
    distinct_states: int
    transitions: int
    depth: int
    seconds: float
    complete: bool
    stopped_because: str
    properties: list[PropertyResult]
    counterexamples: list[Counterexample[S, A]] = field(default_factory=list)
    reductions: list[dict[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(p.verdict != "violated" for p in self.properties)

    @property
    def states_per_second(self) -> float:
        return self.distinct_states / self.seconds if self.seconds > 0 else 0.0

    @property
    def counterexample(self) -> Counterexample[S, A] | None:
        return self.counterexamples[0] if self.counterexamples else None


ProgressCallback = Callable[[Progress], None]

#: How many new states between two looks at the clock (for progress and the time bound).
_CLOCK_EVERY = 4096


class _Stop(Exception):
    pass


def check(
    model: Model[S, A],
    bounds: Bounds = Bounds(),
    progress: ProgressCallback | None = None,
    progress_interval: float = 1.0,
) -> Result[S, A]:
    """Explore `model` breadth-first within `bounds` and decide its properties."""
    if not isinstance(bounds, Bounds):
        raise TypeError(f"bounds must be a Bounds, not {type(bounds).__name__}")
    return _Search(model, bounds, progress, progress_interval).run()


class _Search(Generic[S, A]):
    def __init__(
        self,
        model: Model[S, A],
        bounds: Bounds,
        progress: ProgressCallback | None,
        progress_interval: float,
    ) -> None:
        self.model = model
        self.bounds = bounds
        self.progress = progress
        self.progress_interval = progress_interval
        self.invariants: Sequence[InvariantLike[S]] = tuple(model.invariants)
        self.transition_invariants: Sequence[TransitionInvariantLike[S, A]] = tuple(
            model.transition_invariants
        )
        self.liveness: Sequence[LivenessLike[S, A]] = tuple(model.liveness)
        self.reductions: Sequence[ReductionLike[S]] = tuple(model.reductions)
        ids = [i.id for i in self.invariants]
        ids += [t.id for t in self.transition_invariants]
        ids += [lv.id for lv in self.liveness]
        if len(ids) != len(set(ids)):
            raise ValueError(f"property IDs must be unique, got {ids}")

        # With liveness edges or reductions we need a state's number when we meet it again
        # (a dict); otherwise knowing that we met it is enough (a set, smaller and faster).
        self.lean = not (self.transition_invariants or self.liveness or self.reductions)
        self.index: dict[S, int] = {}
        self.seen: set[S] = set()
        self.states: list[S] = []
        self.parent = array("q")
        self.transitions = 0
        self.concrete_initial: dict[int, S] = {}
        self.checks = [inv.holds for inv in self.invariants]
        self.violated: dict[str, Counterexample[S, A]] = {}
        # liveness edges, one pair of arrays per liveness property; for a property under weak
        # fairness also each edge's action, as a number (`action_ids`)
        self.edges: list[tuple[array[int], array[int]]] = [
            (array("q"), array("q")) for _ in self.liveness
        ]
        self.labels: list[array[int] | None] = [
            array("i") if getattr(lv, "fairness", "none") == "weak" else None
            for lv in self.liveness
        ]
        self.action_ids: dict[A, int] = {}

    # -- the search ------------------------------------------------------------------------
    def run(self) -> Result[S, A]:
        started = time.perf_counter()
        self.started = started
        self.last_report = started
        stopped = "explored every reachable state"
        complete = True
        # States are immutable values without reference cycles, so the cyclic garbage collector
        # has nothing to find among them, yet a growing state set makes every full collection
        # walk all of it. Pausing it for the search is a large, safe saving.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            self._seed()
            self._bfs()
        except _Stop as stop:
            stopped = str(stop)
            complete = False
        finally:
            if gc_was_enabled:
                gc.enable()
        seconds = time.perf_counter() - started
        depth = len(self._chain(len(self.states) - 1)) - 1 if self.states else 0
        if complete and self.liveness:
            self._decide_liveness()
            seconds = time.perf_counter() - started
        if self.progress is not None:
            self.progress(Progress(len(self.states), self.transitions, depth, 0, seconds))
        return Result(
            model=self.model.name,
            distinct_states=len(self.states),
            transitions=self.transitions,
            depth=depth,
            seconds=seconds,
            complete=complete,
            stopped_because=stopped,
            properties=self._verdicts(complete),
            counterexamples=sorted(
                self.violated.values(), key=lambda c: (len(c.steps), c.property_id)
            ),
            reductions=[{"name": r.name, "why_sound": r.why_sound} for r in self.reductions],
        )

    def _canonical(self, state: S) -> S:
        for reduction in self.reductions:
            state = reduction.canonical(state)
        return state

    def _seed(self) -> None:
        for concrete in self.model.initial_states():
            state = self._canonical(concrete)
            if state in self.seen or state in self.index:
                continue
            if self.bounds.max_states is not None and len(self.states) >= self.bounds.max_states:
                raise _Stop(f"state bound {self.bounds.max_states} reached")
            sid = len(self.states)
            if self.lean:
                self.seen.add(state)
            else:
                self.index[state] = sid
            self.states.append(state)
            self.parent.append(-1)
            self.concrete_initial[sid] = concrete
            self._state_failed(sid)

    def _state_failed(self, sid: int) -> None:
        """Record every invariant that state `sid` breaks and that was not broken before."""
        state = self.states[sid]
        for inv in self.invariants:
            if inv.id not in self.violated and not inv.holds(state):
                note = inv.explain(state) if inv.explain else ""
                self._record(inv.id, "invariant", sid, None, note)

    def _record(self, pid: str, kind: Kind, sid: int, extra: tuple[A, S] | None,
                note: str, loop: tuple[Step[S, A], ...] = (),
                breaks: Callable[[S, A, S], bool] | None = None) -> None:
        initial, steps = self._path_to(sid)
        if extra is not None:
            action, _ = extra
            last = steps[-1].state if steps else initial
            steps = (*steps, self._concrete_step(last, action, extra[1], breaks))
        self.violated[pid] = Counterexample(pid, kind, initial, steps, note, loop)
        if self.bounds.stop_at_first:
            raise _Stop(f"property {pid} is violated")

    def _bfs(self) -> None:
        # The hot loop: everything it touches is a local name.
        states = self.states
        index = self.index
        seen = self.seen
        add_seen = seen.add
        parent = self.parent
        violated = self.violated
        successors = self.model.successors
        checks = self.checks
        tinvs = [(t.id, t.holds) for t in self.transition_invariants]
        live = [(p.counts, src, dst, lab) for p, (src, dst), lab
                in zip(self.liveness, self.edges, self.labels, strict=True)]
        action_ids = self.action_ids
        canonical = self._canonical if self.reductions else None
        max_depth = self.bounds.max_depth
        max_states = self.bounds.max_states if self.bounds.max_states is not None else -1
        clock_due = len(states) + _CLOCK_EVERY
        # One comparison per new state covers both the state bound and the clock: `due` is
        # whichever comes first, and the rare branch tells them apart.
        due = clock_due if max_states < 0 else min(clock_due, max_states)
        # With exactly one invariant (common in small models), call it directly rather than
        # looping over a one-element list for every new state.
        single_check = checks[0] if len(checks) == 1 else None
        transitions = 0
        cursor = 0
        depth = 0
        # The common case (no transition invariants, no liveness edges, no reduction) gets a
        # leaner loop: a membership test instead of a lookup, nothing else per old state.
        lean = self.lean
        append_state = states.append
        append_parent = parent.append
        try:
            while cursor < len(states):
                level_end = len(states)
                if max_depth is not None and depth >= max_depth:
                    raise _Stop(f"depth bound {max_depth} reached")
                if lean:
                    for sid in range(cursor, level_end):
                        for _action, nxt in successors(states[sid]):
                            transitions += 1
                            if nxt in seen:
                                continue
                            nid = len(states)
                            if nid >= due:
                                if nid == max_states:
                                    raise _Stop(f"state bound {max_states} reached")
                                clock_due = nid + _CLOCK_EVERY
                                due = clock_due if max_states < 0 else min(clock_due, max_states)
                                self.transitions = transitions
                                self._tick(sid + 1, depth + 1)
                            add_seen(nxt)
                            append_state(nxt)
                            append_parent(sid)
                            if single_check is not None:
                                if not single_check(nxt):
                                    self.transitions = transitions
                                    self._state_failed(nid)
                            else:
                                for holds in checks:
                                    if not holds(nxt):
                                        self.transitions = transitions
                                        self._state_failed(nid)
                    cursor = level_end
                    depth += 1
                    continue
                for sid in range(cursor, level_end):
                    state = states[sid]
                    for action, concrete in successors(state):
                        # transition invariants judge the concrete step (state, action,
                        # concrete); the search itself moves on to the representative
                        nxt = canonical(concrete) if canonical is not None else concrete
                        transitions += 1
                        known = index.get(nxt)
                        if known is not None:
                            nid = known
                        else:
                            nid = len(states)
                            if nid >= due:
                                if nid == max_states:
                                    raise _Stop(f"state bound {max_states} reached")
                                clock_due = nid + _CLOCK_EVERY
                                due = clock_due if max_states < 0 else min(clock_due, max_states)
                                self.transitions = transitions
                                self._tick(sid + 1, depth + 1)
                            index[nxt] = nid
                            append_state(nxt)
                            append_parent(sid)
                            if single_check is not None:
                                if not single_check(nxt):
                                    self.transitions = transitions
                                    self._state_failed(nid)
                            else:
                                for holds in checks:
                                    if not holds(nxt):
                                        self.transitions = transitions
                                        self._state_failed(nid)
                        for pid, tholds in tinvs:
                            if not tholds(state, action, concrete) and pid not in violated:
                                self.transitions = transitions
                                self._transition_violation(pid, sid, action, concrete)
                        for counts, src, dst, lab in live:
                            if counts(action):
                                src.append(sid)
                                dst.append(nid)
                                if lab is not None:
                                    aid = action_ids.get(action)
                                    if aid is None:
                                        aid = action_ids[action] = len(action_ids)
                                    lab.append(aid)
                cursor = level_end
                depth += 1
        finally:
            self.transitions = transitions

    def _transition_violation(self, pid: str, sid: int, action: A, nxt: S) -> None:
        tinv = next(t for t in self.transition_invariants if t.id == pid)
        note = tinv.explain(self.states[sid], action, nxt) if tinv.explain else ""
        self._record(pid, "transition", sid, (action, nxt), note,
                     breaks=lambda s, a, t: not tinv.holds(s, a, t))

    def _tick(self, cursor: int, depth: int) -> None:
        now = time.perf_counter()
        if self.bounds.max_seconds is not None and now - self.started > self.bounds.max_seconds:
            raise _Stop(f"time bound {self.bounds.max_seconds} s reached")
        if self.progress is not None and now - self.last_report >= self.progress_interval:
            self.last_report = now
            self.progress(
                Progress(len(self.states), self.transitions, depth,
                         len(self.states) - cursor, now - self.started)
            )

    # -- counterexamples -------------------------------------------------------------------
    def _chain(self, sid: int) -> list[int]:
        chain = []
        while sid >= 0:
            chain.append(sid)
            sid = self.parent[sid]
        chain.reverse()
        return chain

    def _path_to(self, sid: int) -> tuple[S, tuple[Step[S, A], ...]]:
        """The BFS-tree path to `sid` as concrete, replayable steps.

        The path is walked forwards from the concrete initial state: at each step we pick the
        action whose successor is (up to the reductions) the next state of the path. Without
        reductions this is the exact tree path; with them it is a concrete run the model can
        replay step by step, which a path of canonical representatives need not be.
        """
        chain = self._chain(sid)
        initial = self.concrete_initial[chain[0]]
        steps = self._walk(initial, chain[1:])
        return initial, steps

    def _walk(
        self, start: S, ids: Sequence[int], counts: Callable[[A], bool] | None = None
    ) -> tuple[Step[S, A], ...]:
        steps: list[Step[S, A]] = []
        current = start
        for nid in ids:
            target = self.states[nid]
            for action, nxt in self.model.successors(current):
                if counts is not None and not counts(action):
                    continue
                if self._canonical(nxt) == target:
                    steps.append(Step(action, nxt))
                    current = nxt
                    break
            else:
                raise AssertionError("successors are not deterministic: an explored edge vanished")
        return tuple(steps)

    def _concrete_step(self, current: S, action: A, canonical_next: S,
                       breaks: Callable[[S, A, S], bool] | None = None) -> Step[S, A]:
        """The last step of a transition counterexample, taken from the concrete state.

        Without a reduction this is the explored edge itself. With one, the concrete state may
        reach the same canonical successor by several (symmetric) steps; we take one that
        breaks the property (`breaks`), preferring the explored action, so the printed step is
        a real violation and not merely its mirror image.
        """
        target = self._canonical(canonical_next)
        matching = [(candidate, nxt) for candidate, nxt in self.model.successors(current)
                    if self._canonical(nxt) == target]
        if not matching:
            raise AssertionError("successors are not deterministic: an explored edge vanished")
        matching.sort(key=lambda pair: pair[0] != action)  # the explored action first
        if breaks is not None:
            for candidate, nxt in matching:
                if breaks(current, candidate, nxt):
                    return Step(candidate, nxt)
        candidate, nxt = matching[0]
        return Step(candidate, nxt)

    # -- liveness --------------------------------------------------------------------------
    def _target_flags(self, prop: LivenessLike[S, A]) -> bytearray:
        """1 for each state (by number) that is one of `prop`'s targets. A search that keeps
        its states elsewhere (checker/parallel.py) overrides this and reuses the rest."""
        flags = bytearray(len(self.states))
        target = prop.target
        for i, st in enumerate(self.states):
            if target(st):
                flags[i] = 1
        return flags

    def _decide_liveness(self) -> None:
        n = len(self.states)
        for prop, (src, dst), lab in zip(self.liveness, self.edges, self.labels, strict=True):
            if prop.id in self.violated:
                continue
            # reverse adjacency in CSR form
            counts = [0] * (n + 1)
            for d in dst:
                counts[d + 1] += 1
            for i in range(n):
                counts[i + 1] += counts[i]
            fill = counts[:-1].copy()
            rev = array("q", bytes(8 * len(dst)))
            for s, d in zip(src, dst, strict=True):
                rev[fill[d]] = s
                fill[d] += 1
            good = self._target_flags(prop)
            stack = [i for i in range(n) if good[i]]
            while stack:
                d = stack.pop()
                for k in range(counts[d], counts[d + 1]):
                    s = rev[k]
                    if not good[s]:
                        good[s] = 1
                        stack.append(s)
            bad = good.find(0)
            if bad < 0:
                if lab is not None:
                    self._decide_fairness(prop, src, dst, lab)
                    if prop.id in self.violated and self.bounds.stop_at_first:
                        return
                continue
            loop_ids, note = self._stuck_path(bad, src, dst, good)
            initial, steps = self._path_to(bad)
            stuck_state = steps[-1].state if steps else initial
            loop = self._walk(stuck_state, loop_ids, prop.counts)
            self.violated[prop.id] = Counterexample(
                prop.id, "liveness", initial, steps, note, loop
            )
            if self.bounds.stop_at_first:
                return

    def _decide_fairness(self, prop: LivenessLike[S, A], src: array[int], dst: array[int],
                         lab: array[int]) -> None:
        """Look for a fair cycle that avoids the targets (see the module docstring)."""
        n = len(self.states)
        off = self._target_flags(prop)  # 1: a target state, outside the graph searched here
        # forward adjacency over edges between non-target states, in CSR form
        start = [0] * (n + 1)
        for s_, d_ in zip(src, dst, strict=True):
            if not off[s_] and not off[d_]:
                start[s_ + 1] += 1
        for i in range(n):
            start[i + 1] += start[i]
        fill = start[:-1].copy()
        succ = array("q", bytes(8 * start[n]))
        succ_lab = array("i", bytes(4 * start[n]))
        for s_, d_, a_ in zip(src, dst, lab, strict=True):
            if not off[s_] and not off[d_]:
                succ[fill[s_]] = d_
                succ_lab[fill[s_]] = a_
                fill[s_] += 1
        comp = _strongly_connected(n, off, start, succ)
        # the actions enabled in each state (all its counted edges, wherever they lead)
        enabled: dict[int, set[int]] = {}
        for s_, a_ in zip(src, lab, strict=True):
            if not off[s_]:
                enabled.setdefault(s_, set()).add(a_)
        members: dict[int, list[int]] = {}
        for i in range(n):
            if not off[i]:
                members.setdefault(comp[i], []).append(i)
        for cid, nodes in sorted(members.items(), key=lambda kv: min(kv[1])):
            inside: set[int] = set()
            for v in nodes:
                for k in range(start[v], start[v + 1]):
                    if comp[succ[k]] == cid:
                        inside.add(succ_lab[k])
            if not inside:
                continue  # a single state without a self-loop: no cycle here
            always = set.intersection(*(enabled.get(v, set()) for v in nodes))
            if not always <= inside:
                continue  # some step enabled throughout is never taken: every cycle is unfair
            entry = min(nodes)  # discovered first, so the shortest path leads to it
            loop_ids = self._cycle_in(entry, cid, comp, start, succ)
            initial, steps = self._path_to(entry)
            entry_state = steps[-1].state if steps else initial
            loop = self._walk(entry_state, loop_ids, prop.counts)
            note = (f"a fair cycle avoids every target state: the {len(nodes)} state(s) of this "
                    "component can be gone round for ever, and every step that stays enabled "
                    "in all of them is taken somewhere inside it (the cycle below is one way "
                    "round)")
            self.violated[prop.id] = Counterexample(
                prop.id, "liveness", initial, steps, note, loop
            )
            return

    @staticmethod
    def _cycle_in(entry: int, cid: int, comp: array[int], start: list[int],
                  succ: array[int]) -> list[int]:
        """A shortest cycle from `entry` back to itself inside component `cid` (state ids
        after `entry`, ending with `entry`)."""
        prev: dict[int, int] = {}
        frontier = [entry]
        while frontier:
            nxt_frontier: list[int] = []
            for v in frontier:
                for k in range(start[v], start[v + 1]):
                    d_ = succ[k]
                    if comp[d_] != cid or d_ in prev:
                        continue
                    prev[d_] = v
                    if d_ == entry:
                        path = [entry]
                        node = v
                        while node != entry:
                            path.append(node)
                            node = prev[node]
                        path.reverse()
                        return path
                    nxt_frontier.append(d_)
            frontier = nxt_frontier
        raise AssertionError("a component with an inner edge has a cycle through each state")

    def _stuck_path(
        self, start: int, src: array[int], dst: array[int], good: bytearray
    ) -> tuple[list[int], str]:
        """From a stuck state, follow counted edges until a state repeats (or none is left)."""
        out: dict[int, list[int]] = {}
        for s, d in zip(src, dst, strict=True):
            if not good[s]:
                out.setdefault(s, []).append(d)
        seen: set[int] = set()
        path: list[int] = []
        node = start
        while node not in seen:
            seen.add(node)
            nexts = out.get(node)
            if not nexts:
                return path, (
                    "no target state is reachable from here: the steps below lead to a state "
                    "where nothing the property counts can happen (a dead end)"
                )
            # prefer a successor that is not the node itself, so the loop shows movement
            node = next((d for d in nexts if d != node), nexts[0])
            path.append(node)
        return path, (
            "no target state is reachable from here: the steps below come back to a state "
            "already seen, and every way on stays among such states (a livelock)"
        )

    def _verdicts(self, complete: bool) -> list[PropertyResult]:
        out: list[PropertyResult] = []
        groups: Iterable[tuple[Kind, Sequence[Any]]] = (
            ("invariant", self.invariants),
            ("transition", self.transition_invariants),
            ("liveness", self.liveness),
        )
        for kind, props in groups:
            for prop in props:
                if prop.id in self.violated:
                    verdict: Verdict = "violated"
                    note = ""
                elif not complete:
                    verdict = "unknown"
                    note = ("the search stopped early, so liveness is undecided"
                            if kind == "liveness" else
                            f"no violation in the {len(self.states):,} states explored before "
                            "the search stopped")
                else:
                    verdict, note = "holds", ""
                out.append(PropertyResult(prop.id, prop.title, kind, verdict, note))
        return out


def _strongly_connected(n: int, off: bytearray, start: list[int], succ: array[int]
                        ) -> array[int]:
    """Tarjan's algorithm, iterative: a component number for every state not `off`."""
    index = array("q", [-1]) * n
    low = array("q", [0]) * n
    comp = array("q", [-1]) * n
    on_stack = bytearray(n)
    stack: list[int] = []
    counter = 0
    ncomp = 0
    for root in range(n):
        if off[root] or index[root] >= 0:
            continue
        work = [(root, start[root])]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack[root] = 1
        while work:
            v, k = work[-1]
            if k < start[v + 1]:
                work[-1] = (v, k + 1)
                w = succ[k]
                if index[w] < 0:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack[w] = 1
                    work.append((w, start[w]))
                elif on_stack[w] and index[w] < low[v]:
                    low[v] = index[w]
                continue
            work.pop()
            if work:
                u = work[-1][0]
                if low[v] < low[u]:
                    low[u] = low[v]
            if low[v] == index[v]:
                while True:
                    w = stack.pop()
                    on_stack[w] = 0
                    comp[w] = ncomp
                    if w == v:
                        break
                ncomp += 1
    return comp


def replay(model: Model[S, A], initial: S, actions: Sequence[A]) -> list[S]:
    """Re-run a counterexample's actions from ``initial``; return the states visited.

    Each action must be among the enabled ones of the state it is applied to; otherwise
    ValueError says which step is not possible. Reductions are *not* applied: the replay is
    concrete.
    """
    states = [initial]
    state = initial
    for number, action in enumerate(actions, 1):
        for candidate, nxt in model.successors(state):
            if candidate == action:
                state = nxt
                break
        else:
            raise ValueError(f"step {number}: {model.format_action(action)} is not enabled")
        states.append(state)
    return states
