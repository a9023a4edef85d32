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

Fingerprint mode (``check(..., fingerprints=True)``, `_FingerprintSearch`) keeps the same
search order and decisions but stores a visited state as a 64-bit fingerprint with its parent's
number, holds only a chunk of the current and of the next level as state objects, and rebuilds a
counterexample by re-running the model along the parent chain; see that class for what a
fingerprint collision does and `fingerprint.py` for the fingerprint functions.

Import rules: standard library, ``peerkit.checker.api`` and ``peerkit.checker.fingerprint`` only.
"""

from __future__ import annotations

import gc
import pickle
import sys
import time
import zlib
from array import array
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from struct import pack
from typing import Any, Generic, Literal, TypeVar

from .api import InvariantLike, LivenessLike, Model, ReductionLike, TransitionInvariantLike
from .fingerprint import FINGERPRINT_BITS, MASK64, omission_probability, process_fingerprint
from .fingerprint import fingerprint as stable_fingerprint

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


@dataclass(frozen=True)
class FingerprintReport:
    """What fingerprint mode stored and what it risked (see _FingerprintSearch)."""

    #: the fingerprint function's name (``process_fingerprint``: hash() within this process)
    function: str
    bits: int
    #: TLC's optimistic estimate that a collision omitted some state (fingerprint.py)
    omission_probability: float
    #: collisions seen between a new state and a different state with the same fingerprint that
    #: was still held in full (current or next level): both were kept, nothing was omitted
    collisions_detected: int
    #: bytes allocated for the per-state store: fingerprint table, fingerprints by number,
    #: parent numbers and liveness target bits
    state_store_bytes: int
    #: bytes allocated for the liveness graph: one shared edge store for every property (an
    #: offset per state, a destination per edge, a mask and an action label where needed)
    edge_store_bytes: int
    #: edges in that store (transitions counted by at least one liveness property)
    edges: int
    #: the most states held in full at once (a chunk of the current BFS level and the part of
    #: the next one not yet spilled; see _FingerprintSearch._spill)
    peak_frontier: int
    #: the most bytes the spilled (compressed) chunks of the two levels took at once
    peak_frontier_bytes: int
    distinct_states: int
    transitions: int

    @property
    def bytes_per_state(self) -> float:
        return self.state_store_bytes / self.distinct_states if self.distinct_states else 0.0

    @property
    def bytes_per_transition(self) -> float:
        return self.edge_store_bytes / self.transitions if self.transitions else 0.0


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
    #: set in fingerprint mode only
    fingerprints: FingerprintReport | None = None

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
#: How many states the lean loop expands between two looks at the clock (see _bfs_lean).
_BLOCK = 1024


def _append_ints(arr: array[int], values: list[int]) -> None:
    """``arr.extend(values)`` for an array of typecode "q", through struct, which converts
    each int with a plain C call where the array's own append parses it as an argument."""
    if values:
        arr.frombytes(pack(f"{len(values)}q", *values))


class _Stop(Exception):
    pass


def check(
    model: Model[S, A],
    bounds: Bounds = Bounds(),
    progress: ProgressCallback | None = None,
    progress_interval: float = 1.0,
    fingerprints: bool = False,
    fingerprint: Callable[[S], int] | None = None,
) -> Result[S, A]:
    """Explore `model` breadth-first within `bounds` and decide its properties.

    With `fingerprints`, visited states are stored as 64-bit fingerprints instead of in full
    (see _FingerprintSearch); `fingerprint` then chooses the function (default:
    ``process_fingerprint``, i.e. hash(), valid within this process; ``fingerprint.fingerprint``
    is the same in every process). A `fingerprint` without `fingerprints` is a usage error.
    """
    if not isinstance(bounds, Bounds):
        raise TypeError(f"bounds must be a Bounds, not {type(bounds).__name__}")
    if not isinstance(fingerprints, bool):
        raise TypeError(f"fingerprints must be a bool, not {type(fingerprints).__name__}")
    if fingerprint is not None and not fingerprints:
        raise ValueError("a fingerprint function is only used with fingerprints=True")
    if fingerprints:
        if fingerprint is None:
            # hash() is 32 bits wide on a 32-bit build: too narrow, use the portable one
            fingerprint = process_fingerprint if sys.hash_info.width >= 64 else stable_fingerprint
        return _FingerprintSearch(model, bounds, progress, progress_interval, fingerprint).run()
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
        # States are immutable values without reference cycles, so the cyclic garbage collector
        # has nothing to find among them, yet a growing state set makes every full collection
        # walk all of it. Pausing it for the search is a large, safe saving. It stays paused
        # until the stored states are let go: the first collection after the pause walks every
        # object allocated during it that is still alive (about 150 million instructions for
        # the toy counters' 280k states, 2% of the search).
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._run()
        finally:
            self._release()
            if gc_was_enabled:
                gc.enable()

    def _release(self) -> None:
        """Let go of the stored states once the result is built (the search is over)."""
        self.states = []
        self.seen = set()
        self.index = {}

    def _run(self) -> Result[S, A]:
        started = time.perf_counter()
        self.started = started
        self.last_report = started
        stopped = "explored every reachable state"
        complete = True
        try:
            self._seed()
            self._bfs()
        except _Stop as stop:
            stopped = str(stop)
            complete = False
        seconds = time.perf_counter() - started
        count = self._count()
        depth = len(self._chain(count - 1)) - 1 if count else 0
        if complete and self.liveness:
            self._decide_liveness()
            seconds = time.perf_counter() - started
        if self.progress is not None:
            self.progress(Progress(count, self.transitions, depth, 0, seconds))
        return Result(
            model=self.model.name,
            distinct_states=count,
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
            fingerprints=self._fingerprint_report(),
        )

    # -- what the storage holds (overridden by _FingerprintSearch) --------------------------
    def _count(self) -> int:
        return len(self.states)

    def _state_at(self, sid: int) -> S:
        return self.states[sid]

    def _matches(self, nid: int, state: S) -> bool:
        """Whether `state` (canonical) is state number `nid`."""
        return state == self.states[nid]

    def _target_ids(self, prop: LivenessLike[S, A]) -> array[int]:
        target = prop.target
        return array(_index_code(len(self.states)),
                     (i for i, st in enumerate(self.states) if target(st)))

    def _property_edges(
        self,
    ) -> Iterator[tuple[LivenessLike[S, A], tuple[array[int], array[int]], array[int] | None]]:
        """Each liveness property with its graph in CSR form by source: ((start, dst), lab),
        the edges of state s being dst[start[s]:start[s + 1]] (see _decide_liveness)."""
        n = self._count()
        for prop, (src, dst), lab in zip(self.liveness, self.edges, self.labels, strict=True):
            start, dst, lab = _by_source(n, src, dst, lab)
            yield prop, (start, dst), lab

    def _fingerprint_report(self) -> FingerprintReport | None:
        return None

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
        state = self._state_at(sid)
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
        if self.lean:
            self._bfs_lean()
            return
        # The hot loop: everything it touches is a local name.
        states = self.states
        index = self.index
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
        append_state = states.append
        append_parent = parent.append
        try:
            while cursor < len(states):
                level_end = len(states)
                if max_depth is not None and depth >= max_depth:
                    raise _Stop(f"depth bound {max_depth} reached")
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

    def _bfs_lean(self) -> None:
        """The search of a model with no transition invariants, liveness or reductions.

        The common case gets its own loop, measured against a textbook BFS on the toy counters
        (benchmarks/engine_speed.py): a set membership test and nothing else per transition
        but a small counter, and per new state the set, the list of states, the parent and
        the invariants. What makes it cheaper than the general loop, each measured:

        * transitions are counted per state: a counter from 0 to the state's out-degree stays
          among CPython's cached small ints, where a running total past 256 allocates and frees
          an int object for every transition;
        * parents go to a list of the block's and are packed into the array once per block:
          ``array.append`` parses its argument the slow way, several hundred instructions;
        * the clock (progress, the time bound) is read once per block of expanded states, not
          by a length test on every new state; only a state bound is tested per new state;
        * all invariants are one callable (the invariant itself when there is one).
        The order of discovery, and so every number, parent and counterexample, is the general
        loop's: a violation or a bound stops at the same state and transition as before.
        """
        states = self.states
        seen = self.seen
        add_seen = seen.add
        append_state = states.append
        parent = self.parent
        successors = self.model.successors
        check = self._one_check()
        max_depth = self.bounds.max_depth
        max_states = self.bounds.max_states
        bounded = max_states is not None
        limit = max_states if max_states is not None else 0
        due = len(states) + _CLOCK_EVERY
        transitions = 0
        cursor = 0
        depth = 0
        parents: list[int] = []
        append_parent = parents.append
        while cursor < len(states):
            level_end = len(states)
            if max_depth is not None and depth >= max_depth:
                self.transitions = transitions
                raise _Stop(f"depth bound {max_depth} reached")
            for block in range(cursor, level_end, _BLOCK):
                try:
                    for sid in range(block, min(block + _BLOCK, level_end)):
                        degree = 0
                        for _action, nxt in successors(states[sid]):
                            degree += 1
                            if nxt in seen:
                                continue
                            if bounded and len(states) >= limit:
                                self.transitions = transitions + degree
                                raise _Stop(f"state bound {max_states} reached")
                            add_seen(nxt)
                            append_state(nxt)
                            append_parent(sid)
                            if check is not None and not check(nxt):
                                # the path to it needs every parent in the array
                                _append_ints(parent, parents)
                                parents.clear()
                                self.transitions = transitions + degree
                                self._state_failed(len(states) - 1)
                        transitions += degree
                finally:
                    _append_ints(parent, parents)
                    parents.clear()
                if len(states) >= due:
                    due = len(states) + _CLOCK_EVERY
                    self.transitions = transitions
                    self._tick(min(block + _BLOCK, level_end), depth + 1)
            cursor = level_end
            depth += 1
        self.transitions = transitions

    def _one_check(self) -> Callable[[S], bool] | None:
        """All invariants as one predicate (None: there are none); which one fails is
        _state_failed's to find out."""
        checks = self.checks
        if not checks:
            return None
        if len(checks) == 1:
            return checks[0]

        def every(state: S) -> bool:
            return all(holds(state) for holds in checks)

        return every

    def _transition_violation(self, pid: str, sid: int, action: A, nxt: S) -> None:
        tinv = next(t for t in self.transition_invariants if t.id == pid)
        note = tinv.explain(self._state_at(sid), action, nxt) if tinv.explain else ""
        self._record(pid, "transition", sid, (action, nxt), note,
                     breaks=lambda s, a, t: not tinv.holds(s, a, t))

    def _tick(self, cursor: int, depth: int) -> None:
        now = time.perf_counter()
        if self.bounds.max_seconds is not None and now - self.started > self.bounds.max_seconds:
            raise _Stop(f"time bound {self.bounds.max_seconds} s reached")
        if self.progress is not None and now - self.last_report >= self.progress_interval:
            self.last_report = now
            count = self._count()
            self.progress(
                Progress(count, self.transitions, depth, count - cursor, now - self.started)
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
            for action, nxt in self.model.successors(current):
                if counts is not None and not counts(action):
                    continue
                if self._matches(nid, self._canonical(nxt)):
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
    # The decision works on each property's graph in CSR form by source: the edges of state s
    # are dst[start[s]:start[s + 1]] (labels alike), in the order the search explored them.
    # Every array holds 4-byte numbers while states and edges fit (_index_code), so the
    # decision needs about 4 bytes an edge and 20 a state on top of the graph, not 8 and 60.
    def _decide_liveness(self) -> None:
        n = self._count()
        for prop, (start, dst), lab in self._property_edges():
            if prop.id in self.violated:
                continue
            good = self._reaches_target(prop, n, start, dst)
            bad = good.find(0)
            if bad < 0:
                del good
                if lab is not None:
                    self._decide_fairness(prop, start, dst, lab)
                    if prop.id in self.violated and self.bounds.stop_at_first:
                        return
                continue
            loop_ids, note = self._stuck_path(bad, start, dst)
            del good
            initial, steps = self._path_to(bad)
            stuck_state = steps[-1].state if steps else initial
            loop = self._walk(stuck_state, loop_ids, prop.counts)
            self.violated[prop.id] = Counterexample(
                prop.id, "liveness", initial, steps, note, loop
            )
            if self.bounds.stop_at_first:
                return

    def _reaches_target(self, prop: LivenessLike[S, A], n: int, start: array[int],
                        dst: array[int]) -> bytearray:
        """1 for every state from which a target state can be reached (backward search)."""
        code = _index_code(max(n, len(dst)) + 1)
        # reverse adjacency in CSR form: pos[d] ends d's block of sources, then (each source
        # placed by counting down) starts it, so no second array of positions is needed
        pos = array(code, bytes(array(code).itemsize * (n + 1)))
        for d in dst:
            pos[d] += 1
        for i in range(1, n):
            pos[i] += pos[i - 1]
        pos[n] = len(dst)
        rev = array(code, bytes(array(code).itemsize * len(dst)))
        for s in range(n - 1, -1, -1):
            for k in range(start[s + 1] - 1, start[s] - 1, -1):
                d = dst[k]
                pos[d] -= 1
                rev[pos[d]] = s
        good = bytearray(n)
        stack = self._target_ids(prop)
        for i in stack:
            good[i] = 1
        while stack:
            d = stack.pop()
            for k in range(pos[d], pos[d + 1]):
                s = rev[k]
                if not good[s]:
                    good[s] = 1
                    stack.append(s)
        return good

    def _decide_fairness(self, prop: LivenessLike[S, A], start: array[int], dst: array[int],
                         lab: array[int]) -> None:
        """Look for a fair cycle that avoids the targets (see the module docstring)."""
        n = self._count()
        off = bytearray(n)  # 1: a target state, outside the graph searched here
        for i in self._target_ids(prop):
            off[i] = 1
        comp, ncomp = _strongly_connected(n, off, start, dst)
        code = comp.typecode

        # the actions enabled in a state: the labels of all its counted edges, wherever they
        # lead (the graph is stored by source, so this is a slice)
        def enabled(v: int) -> set[int]:
            return set(lab[start[v]:start[v + 1]])

        # the members of each component in CSR form (arrays, not a list per component)
        m_start = array(code, bytes(comp.itemsize * (ncomp + 1)))
        order = array(code)  # components in order of their smallest state
        for i in range(n):
            if not off[i]:
                c = comp[i]
                if not m_start[c + 1]:
                    order.append(c)
                m_start[c + 1] += 1
        for c in range(ncomp):
            m_start[c + 1] += m_start[c]
        by_comp = array(code, bytes(comp.itemsize * m_start[ncomp]))  # ascending per component
        fill = m_start[:-1]
        for i in range(n):
            if not off[i]:
                c = comp[i]
                by_comp[fill[c]] = i
                fill[c] += 1
        del fill
        for cid in order:
            nodes = by_comp[m_start[cid]:m_start[cid + 1]]
            inside: set[int] = set()
            for v in nodes:
                for k in range(start[v], start[v + 1]):
                    if comp[dst[k]] == cid:
                        inside.add(lab[k])
            if not inside:
                continue  # a single state without a self-loop: no cycle here
            always = set.intersection(*(enabled(v) for v in nodes))
            if not always <= inside:
                continue  # some step enabled throughout is never taken: every cycle is unfair
            entry = min(nodes)  # discovered first, so the shortest path leads to it
            loop_ids = self._cycle_in(entry, cid, comp, start, dst)
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
    def _cycle_in(entry: int, cid: int, comp: array[int], start: array[int],
                  dst: array[int]) -> list[int]:
        """A shortest cycle from `entry` back to itself inside component `cid` (state ids
        after `entry`, ending with `entry`)."""
        prev: dict[int, int] = {}
        frontier = [entry]
        while frontier:
            nxt_frontier: list[int] = []
            for v in frontier:
                for k in range(start[v], start[v + 1]):
                    d_ = dst[k]
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

    @staticmethod
    def _stuck_path(node: int, start: array[int], dst: array[int]) -> tuple[list[int], str]:
        """From a stuck state, follow counted edges until a state repeats (or none is left).
        Every successor of a stuck state is stuck, so the walk never leaves them."""
        seen: set[int] = set()
        path: list[int] = []
        while node not in seen:
            seen.add(node)
            nexts = dst[start[node]:start[node + 1]]
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
                            f"no violation in the {self._count():,} states explored before "
                            "the search stopped")
                else:
                    verdict, note = "holds", ""
                out.append(PropertyResult(prop.id, prop.title, kind, verdict, note))
        return out


class TraceRebuildError(RuntimeError):
    """Fingerprint mode could not re-execute a path to a state it had met: only an undetected
    fingerprint collision (or a model whose successors are not deterministic) does that."""


#: the fingerprint table's first size (slots; it doubles whenever it is half full)
_TABLE_START = 1 << 12
#: next-level states held in full before they are spilled into one compressed chunk. A peering
#: state held in full takes about 2.5 KB, so the chunk sets most of the search's memory beyond
#: the store: 2,048 cost about 100 bytes a state on `default` (benchmarks/fingerprint_memory.py),
#: 256 about 13, at no measurable cost in time (zlib still finds the repeats within a chunk)
_SPILL_CHUNK = 256


class _FingerprintSearch(_Search[S, A]):
    """Breadth-first search that stores each visited state as a 64-bit fingerprint.

    Storage per visited state: its fingerprint (``fps``, array 'Q', by state number), its BFS
    parent's number (``parent``, array 'I'; a root is its own parent), one slot or two of an
    open-addressing table (array 'I' holding state number + 1, linear probing, at most half
    full) and, with liveness properties, a bit per property saying whether it is a target.
    Only the current and the next BFS level are held as state objects; every other state is
    known by its fingerprint alone, as in TLC and in Spin's hash-compact mode.

    Liveness needs the graph: every transition that some liveness property counts is stored
    once, in CSR form by source, since the search stores a state's edges together and in state
    order: one offset per state (``e_start``) and the destination's number per edge (``e_dst``,
    array 'I'), with, if there are several liveness properties, a bit mask of those that count
    it (``e_mask``) and, if any asks for weak fairness, its action's number (``e_lab``, one
    byte while there are at most 256 actions). That is 5 or 6 bytes an edge and 4 a state,
    where a source number per edge, a mask and a 4-byte label took 13. The decision itself is
    the exact mode's (_decide_liveness), fed one property's graph at a time.

    A counterexample is rebuilt by re-execution: from the concrete initial state, each step
    takes a successor whose fingerprint is the next one on the parent chain, in successor order
    (so without collisions it picks the very step the exact mode prints), backtracking if a
    choice leads nowhere; the last state must equal the violating state when that is still held.

    Collisions. When a new state's fingerprint is already known and the known state is still
    held in full, the two are compared: if they differ, the collision is counted
    (`FingerprintReport.collisions_detected`) and the new state is stored as a state of its
    own, so nothing is omitted. A collision with an older state cannot be seen: the new state
    is taken for the old one and is omitted with whatever it alone leads to. The chance of that
    is what `FingerprintReport.omission_probability` estimates.
    """

    def __init__(
        self,
        model: Model[S, A],
        bounds: Bounds,
        progress: ProgressCallback | None,
        progress_interval: float,
        fingerprint: Callable[[S], int],
    ) -> None:
        super().__init__(model, bounds, progress, progress_interval)
        if len(self.liveness) > 64:
            raise ValueError("fingerprint mode handles at most 64 liveness properties")
        self.fp = fingerprint
        self.fps = array("Q")
        self.parent = array("I")
        self.table = array("I", bytes(4 * _TABLE_START))
        self.count = 0
        # held in full: the chunk of the current level being expanded (`cur`, from state number
        # `cur_start`) and the next level's states not yet spilled (`buf`, from `buf_start`);
        # the rest of both levels is in `spilled` chunks (see _spill)
        self.cur_start = 0
        self.cur: list[S] = []
        self.buf_start = 0
        self.buf: list[S] = []
        self.spilled: list[bytes] = []
        self.spill_ok = True
        self.frontier_bytes = 0  # compressed bytes of both levels' spilled chunks
        self.peak_frontier_bytes = 0
        self.table_bytes = 0  # the table's size when it was freed (see _decide_liveness)
        self.collisions = 0
        self.peak_frontier = 0
        self.generated = 0  # initial states as generated (with duplicates)
        n_live = len(self.liveness)
        bits = next(c for c in "BHILQ" if array(c).itemsize * 8 >= max(n_live, 1))
        self.live_bit = {lv.id: 1 << j for j, lv in enumerate(self.liveness)}
        self.target_bits = array(bits)
        # the edge store, in CSR form by source (the search stores edges source by source):
        # state s's edges are e_dst[e_start[s]:e_start[s + 1]]; with several liveness
        # properties e_mask says which count each edge; with weak fairness e_lab holds its
        # action's number, in one byte while there are at most 256 actions (see _wider)
        self.e_start = array("I")
        self.e_dst = array("I")
        self.e_mask: array[int] | None = array(bits) if n_live > 1 else None
        weak = any(lab is not None for lab in self.labels)
        self.weak_bits = sum(1 << j for j, lab in enumerate(self.labels) if lab is not None)
        self.e_lab: array[int] | None = array("B") if weak else None
        self.edges = []
        self.labels = []
        self.states = []

    # -- storage ----------------------------------------------------------------------------
    def _count(self) -> int:
        return self.count

    def _held(self, sid: int) -> S | None:
        """State `sid` if it is held in full (see __init__), else None."""
        off = sid - self.cur_start
        if 0 <= off < len(self.cur):
            return self.cur[off]
        off = sid - self.buf_start
        if 0 <= off < len(self.buf):
            return self.buf[off]
        return None

    def _spill(self) -> None:
        """Move the next level's held states into a compressed chunk (pickle, then zlib at its
        fastest level): about 20 bytes a peering state instead of about 800. The bytes never
        leave this process. A state that cannot be pickled turns spilling off for the search."""
        if self.spill_ok:
            try:
                data = zlib.compress(pickle.dumps(self.buf, pickle.HIGHEST_PROTOCOL), 1)
            except (pickle.PicklingError, TypeError, AttributeError):
                self.spill_ok = False
                return
            self.spilled.append(data)
            self.frontier_bytes += len(data)
            self.peak_frontier_bytes = max(self.peak_frontier_bytes, self.frontier_bytes)
            self.buf_start += len(self.buf)
            self.buf = []

    def _state_at(self, sid: int) -> S:
        state = self._held(sid)
        if state is None:
            raise LookupError(f"state {sid} is known by its fingerprint only")
        return state

    def _matches(self, nid: int, state: S) -> bool:
        return (self.fp(state) & MASK64) == self.fps[nid]

    def _lookup(self, fp: int, state: S) -> tuple[int, int]:
        """(state number or -1, the free slot where it would go)."""
        table = self.table
        mask = len(table) - 1
        fps = self.fps
        h = fp & mask
        while True:
            slot = table[h]
            if not slot:
                return -1, h
            k = slot - 1
            if fps[k] == fp:
                held = self._held(k)
                if held is None or held == state:
                    return k, h
                self.collisions += 1
            h = (h + 1) & mask

    def _grow(self) -> None:
        size = len(self.table) * 2
        mask = size - 1
        table = array("I", bytes(4 * size))
        for i, fp in enumerate(self.fps):
            h = fp & mask
            while table[h]:
                h = (h + 1) & mask
            table[h] = i + 1
        self.table = table

    def _add(self, slot: int, fp: int, parent: int, state: S, level: list[S]) -> int:
        sid = self.count
        if sid >= 0xFFFFFFFF:
            raise _Stop("fingerprint mode numbers at most 2**32 - 1 states")
        self.table[slot] = sid + 1
        self.fps.append(fp)
        self.parent.append(sid if parent < 0 else parent)
        level.append(state)
        self.count = sid + 1
        if self.liveness:
            bits = 0
            for lv in self.liveness:
                if lv.target(state):
                    bits |= self.live_bit[lv.id]
            self.target_bits.append(bits)
        if 2 * self.count > len(self.table):
            self._grow()
        return sid

    def _chain(self, sid: int) -> list[int]:
        parent = self.parent
        chain = [sid]
        while parent[sid] != sid:
            sid = parent[sid]
            chain.append(sid)
        chain.reverse()
        return chain

    def _target_ids(self, prop: LivenessLike[S, A]) -> array[int]:
        bit = self.live_bit[prop.id]
        return array("I", (i for i, bits in enumerate(self.target_bits) if bits & bit))

    def _property_edges(
        self,
    ) -> Iterator[tuple[LivenessLike[S, A], tuple[array[int], array[int]], array[int] | None]]:
        # The store is already in CSR form by source (see __init__). One property's edges at a
        # time, so only one filtered copy exists at once; none at all for a property that
        # counts every stored edge (the only one, or one without a mask).
        start, dst, mask = self.e_start, self.e_dst, self.e_mask
        n = self.count
        if len(start) == n:  # the end of the last state's edges
            start.append(len(dst))
        for prop in self.liveness:
            bit = self.live_bit[prop.id]
            lab = self.e_lab if bit & self.weak_bits else None
            if prop.id in self.violated or mask is None or all(m & bit for m in mask):
                yield prop, (start, dst), lab
                continue
            f_start, f_dst = array("I", [0]), array("I")
            f_lab = None if lab is None else array(lab.typecode)
            for s in range(n):
                for k in range(start[s], start[s + 1]):
                    if mask[k] & bit:
                        f_dst.append(dst[k])
                        if f_lab is not None and lab is not None:
                            f_lab.append(lab[k])
                f_start.append(len(f_dst))
            yield prop, (f_start, f_dst), f_lab
            del f_start, f_dst, f_lab

    def _decide_liveness(self) -> None:
        # the table only serves lookups during the search: free it before the decision's arrays
        self.table_bytes = sys.getsizeof(self.table)
        self.table = array("I")
        super()._decide_liveness()

    def _wider(self) -> array[int]:
        """The label store in the next wider typecode (one action number did not fit)."""
        assert self.e_lab is not None
        code = "H" if self.e_lab.typecode == "B" else "I"
        self.e_lab = array(code, self.e_lab)
        return self.e_lab

    def _action_id(self, action: A) -> int:
        aid = self.action_ids.get(action)
        if aid is None:
            aid = self.action_ids[action] = len(self.action_ids)
        return aid

    def _fingerprint_report(self) -> FingerprintReport:
        store = (sys.getsizeof(self.fps) + sys.getsizeof(self.parent)
                 + max(sys.getsizeof(self.table), self.table_bytes)
                 + sys.getsizeof(self.target_bits))
        edges = (sys.getsizeof(self.e_start) + sys.getsizeof(self.e_dst)
                 + (sys.getsizeof(self.e_mask) if self.e_mask is not None else 0)
                 + (sys.getsizeof(self.e_lab) if self.e_lab is not None else 0))
        generated = self.generated + self.transitions
        return FingerprintReport(
            function=getattr(self.fp, "__name__", repr(self.fp)),
            bits=FINGERPRINT_BITS,
            omission_probability=omission_probability(self.count, generated),
            collisions_detected=self.collisions,
            state_store_bytes=store,
            edge_store_bytes=edges,
            edges=len(self.e_dst),
            peak_frontier=self.peak_frontier,
            peak_frontier_bytes=self.peak_frontier_bytes,
            distinct_states=self.count,
            transitions=self.transitions,
        )

    # -- counterexamples ---------------------------------------------------------------------
    def _walk(
        self, start: S, ids: Sequence[int], counts: Callable[[A], bool] | None = None
    ) -> tuple[Step[S, A], ...]:
        if not ids:
            return ()
        fp_of, canonical, fps = self.fp, self._canonical, self.fps
        successors = self.model.successors

        def options(state: S, nid: int) -> Iterator[Step[S, A]]:
            want = fps[nid]
            for action, nxt in successors(state):
                if counts is not None and not counts(action):
                    continue
                if (fp_of(canonical(nxt)) & MASK64) == want:
                    yield Step(action, nxt)

        final = self._held(ids[-1])
        steps: list[Step[S, A]] = []
        frames = [options(start, ids[0])]
        while frames:
            step = next(frames[-1], None)
            if step is None:
                frames.pop()
                if steps:
                    steps.pop()
                continue
            steps.append(step)
            if len(steps) == len(ids):
                if final is None or canonical(step.state) == final:
                    return tuple(steps)
                steps.pop()
                continue
            frames.append(options(step.state, ids[len(steps)]))
        raise TraceRebuildError(
            "no run from the initial state matches the fingerprints of the path found: a "
            "fingerprint collision merged two states on it (or the model's successors are not "
            "deterministic)"
        )

    # -- the search --------------------------------------------------------------------------
    def _seed(self) -> None:
        level = self.buf
        for concrete in self.model.initial_states():
            state = self._canonical(concrete)
            self.generated += 1
            fp = self.fp(state) & MASK64
            known, slot = self._lookup(fp, state)
            if known >= 0:
                continue
            if self.bounds.max_states is not None and self.count >= self.bounds.max_states:
                raise _Stop(f"state bound {self.bounds.max_states} reached")
            sid = self._add(slot, fp, -1, state, level)
            self.concrete_initial[sid] = concrete
            self._state_failed(sid)

    def _bfs(self) -> None:
        fp_of = self.fp
        fps = self.fps
        violated = self.violated
        successors = self.model.successors
        checks = self.checks
        tinvs = [(t.id, t.holds) for t in self.transition_invariants]
        live = [(lv.counts, self.live_bit[lv.id]) for lv in self.liveness]
        e_start, e_dst, e_mask, e_lab = self.e_start, self.e_dst, self.e_mask, self.e_lab
        action_id = self._action_id
        canonical = self._canonical if self.reductions else None
        max_depth = self.bounds.max_depth
        max_states = self.bounds.max_states if self.bounds.max_states is not None else -1
        clock_due = self.count + _CLOCK_EVERY
        due = clock_due if max_states < 0 else min(clock_due, max_states)
        transitions = 0
        depth = 0
        add = self._add
        chunk_size = _SPILL_CHUNK
        loads, decompress = pickle.loads, zlib.decompress
        level_start = 0
        chunks: list[bytes | list[S]] = [*self.spilled, self.buf]
        self.spilled, self.buf, self.buf_start = [], [], self.count
        try:
            while self.count > level_start:
                if max_depth is not None and depth >= max_depth:
                    raise _Stop(f"depth bound {max_depth} reached")
                level = self.buf
                buf_start = self.buf_start
                cur_start = level_start
                for i, chunk in enumerate(chunks):
                    chunks[i] = []  # let it go once expanded
                    if isinstance(chunk, bytes):
                        self.frontier_bytes -= len(chunk)
                        cur: list[S] = loads(decompress(chunk))
                    else:
                        cur = chunk
                    self.cur, self.cur_start = cur, cur_start
                    cur_end = cur_start + len(cur)
                    for offset, state in enumerate(cur):
                        sid = cur_start + offset
                        if live:
                            e_start.append(len(e_dst))
                        for action, concrete in successors(state):
                            nxt = canonical(concrete) if canonical is not None else concrete
                            transitions += 1
                            fp = fp_of(nxt) & MASK64
                            # inline probe of the table (see _lookup)
                            table = self.table
                            mask = len(table) - 1
                            h = fp & mask
                            while True:
                                slot = table[h]
                                if not slot:
                                    nid = -1
                                    break
                                nid = slot - 1
                                if fps[nid] == fp:
                                    if cur_start <= nid < cur_end:
                                        held = cur[nid - cur_start]
                                    elif nid >= buf_start:
                                        held = level[nid - buf_start]
                                    else:
                                        break  # known by its fingerprint only
                                    if held == nxt:
                                        break
                                    self.collisions += 1
                                h = (h + 1) & mask
                            if nid < 0:
                                nid = self.count
                                if nid >= due:
                                    if nid == max_states:
                                        raise _Stop(f"state bound {max_states} reached")
                                    clock_due = nid + _CLOCK_EVERY
                                    due = (clock_due if max_states < 0
                                           else min(clock_due, max_states))
                                    self.transitions = transitions
                                    self._tick(sid + 1, depth + 1)
                                add(h, fp, sid, nxt, level)
                                for holds in checks:
                                    if not holds(nxt):
                                        self.transitions = transitions
                                        self._state_failed(nid)
                                if len(level) >= chunk_size:
                                    if len(cur) + len(level) > self.peak_frontier:
                                        self.peak_frontier = len(cur) + len(level)
                                    self._spill()
                                    level, buf_start = self.buf, self.buf_start
                            for pid, tholds in tinvs:
                                if not tholds(state, action, concrete) and pid not in violated:
                                    self.transitions = transitions
                                    self._transition_violation(pid, sid, action, concrete)
                            if live:
                                bits = 0
                                for counts, bit in live:
                                    if counts(action):
                                        bits |= bit
                                if bits:
                                    e_dst.append(nid)
                                    if e_mask is not None:
                                        e_mask.append(bits)
                                    if e_lab is not None:
                                        aid = action_id(action)
                                        try:
                                            e_lab.append(aid)
                                        except OverflowError:
                                            e_lab = self._wider()
                                            e_lab.append(aid)
                    if len(cur) + len(level) > self.peak_frontier:
                        self.peak_frontier = len(cur) + len(level)
                    cur_start = cur_end
                # the next level becomes the current one
                level_start = cur_start
                chunks = [*self.spilled, level]
                self.spilled, self.buf, self.buf_start = [], [], self.count
                self.cur = []
                depth += 1
        finally:
            self.transitions = transitions

    def _tick(self, cursor: int, depth: int) -> None:
        if len(self.cur) + len(self.buf) > self.peak_frontier:
            self.peak_frontier = len(self.cur) + len(self.buf)
        super()._tick(cursor, depth)


def _index_code(limit: int) -> str:
    """The typecode of an unsigned array that holds every number below `limit`."""
    return "I" if limit <= 0xFFFFFFFF else "Q"


def _by_source(n: int, src: array[int], dst: array[int], lab: array[int] | None
               ) -> tuple[array[int], array[int], array[int] | None]:
    """Edges given as (src, dst[, lab]) in CSR form by source: (start, dst, lab), the edges of
    each source in their given order."""
    code = _index_code(max(n, len(dst)) + 1)
    start = array(code, bytes(array(code).itemsize * (n + 1)))
    ordered = True
    last = 0
    for s in src:
        start[s + 1] += 1
        if s < last:
            ordered = False
        last = s
    for i in range(n):
        start[i + 1] += start[i]
    if ordered:  # the searches store edges source by source: nothing to move
        return start, dst, lab
    fill = start[:-1]
    out_dst = array(dst.typecode, bytes(dst.itemsize * len(dst)))
    out_lab = None if lab is None else array(lab.typecode, bytes(lab.itemsize * len(lab)))
    for k, s in enumerate(src):
        out_dst[fill[s]] = dst[k]
        if out_lab is not None and lab is not None:
            out_lab[fill[s]] = lab[k]
        fill[s] += 1
    return start, out_dst, out_lab


def _strongly_connected(n: int, off: bytearray, start: array[int], dst: array[int]
                        ) -> tuple[array[int], int]:
    """Tarjan's algorithm, iterative, over the edges between states not `off`: a component
    number for every such state (the array's largest value for an `off` one), and the number
    of components."""
    code = _index_code(max(n, len(dst)) + 2)
    size = array(code).itemsize
    none = (1 << (8 * size)) - 1
    index = array(code, bytes(size * n))  # 0: not visited yet; visit numbers start at 1
    low = array(code, bytes(size * n))
    comp = array(code, [none]) * n
    on_stack = bytearray(n)
    stack = array(code)
    # the depth-first work stack as two arrays (state, next edge), not a list of tuples: it can
    # grow as deep as there are states
    work_v = array(code)
    work_k = array(code)
    counter = 1
    ncomp = 0
    for root in range(n):
        if off[root] or index[root]:
            continue
        work_v.append(root)
        work_k.append(start[root])
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack[root] = 1
        while work_v:
            v = work_v[-1]
            k = work_k[-1]
            if k < start[v + 1]:
                work_k[-1] = k + 1
                w = dst[k]
                if off[w]:
                    continue
                if not index[w]:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack[w] = 1
                    work_v.append(w)
                    work_k.append(start[w])
                elif on_stack[w] and index[w] < low[v]:
                    low[v] = index[w]
                continue
            work_v.pop()
            work_k.pop()
            if work_v:
                u = work_v[-1]
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
    return comp, ncomp


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
