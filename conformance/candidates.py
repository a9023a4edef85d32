"""The set of model states consistent with everything observed of the implementation so far.

One job: keep that set, advance it, and say when it becomes empty.

* ``pin(action)``: the driver did something the model names exactly (an operator call, a fault):
  apply it to every candidate in which it is enabled.
* ``observe(view)``: the implementation ran on its own until quiescent; close the set under the
  model's protocol actions (breadth first, bounded by ``limit`` states), keep the states whose
  abstraction equals the observed view. Empty: a ``Divergence`` naming the nearest candidates.
* ``close()``: time passed unobserved (a live system between an observation and an operator
  call): every state the protocol reaches from a candidate becomes a candidate.
* ``observe(view, faults=...)``: the same, where the implementation also made faults happen on
  its own (a failed store write the driver armed, a heartbeat timeout): each is exactly one
  step of the path;
* ``require_settled()``: the implementation has settled (time ran far, nothing held); some
  candidate must be settled in the model's sense, or the implementation failed to do something
  the model must do.

A candidate is a world plus one sticky bit per cluster: "a deletion routine ran on after its
term ended" (history the world does not keep; see ``abstraction``). Coverage is recorded on
the edges that lie on a path to a surviving candidate.

Action types this module does not know are simply followed if the model calls them protocol
steps, and driven never: it relies only on ``PeeringModel.enabled/step/protocol_successors``,
``actions.is_protocol`` and ``properties.unsettled_reason``, asked through ``memo`` (which
remembers the answers, and the outcome of each observation and pin, for the next example).

May import: the standard library, ``peerkit.model``, ``abstraction`` and ``memo``.
"""

from __future__ import annotations

import gc
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from peerkit.model.machine import PeeringModel
from peerkit.model.properties import unsettled_reason
from peerkit.model.render import describe_action
from peerkit.model.state import World

from .abstraction import View, describe, diff, model_view
from .memo import memo_for

#: the most states one closure may visit
DEFAULT_LIMIT = 60_000


class Candidate(NamedTuple):
    world: World
    zombie_seen: tuple[bool, ...]


class Divergence(AssertionError):
    """The implementation did something no candidate model state allows (or failed to)."""


def divergences(exc: BaseException) -> list[Divergence]:
    """The Divergences ``exc`` is or holds (Hypothesis and trio may raise them in groups)."""
    if isinstance(exc, Divergence):
        return [exc]
    if isinstance(exc, BaseExceptionGroup):
        return [d for e in exc.exceptions for d in divergences(e)]
    return []


class _CollectorPaused:
    """No garbage-collector passes meanwhile: a closure makes tens of thousands of tuples (new
    worlds, candidates, views) and no reference cycles, and the collector's passes over them
    (and over the memo's tables) took half of a large closure's time. (A class rather than a
    generator context manager: entered on every observation that is not remembered.)"""

    __slots__ = ("_collecting",)

    def __enter__(self) -> None:
        self._collecting = gc.isenabled()
        gc.disable()

    def __exit__(self, *exc: object) -> None:
        if self._collecting:
            gc.enable()


class ClosureTooLarge(Exception):
    """The protocol closure exceeded its bound; the comparison is inconclusive."""


EdgeKey = tuple[str, ...]
KeyFn = Callable[[World, object, World], EdgeKey]
#: which fault actions (in which world) one fault the implementation made on its own may be
FaultFn = Callable[[World, object], bool]


def _seen(old: tuple[bool, ...], now: tuple[bool, ...]) -> tuple[bool, ...]:
    """The sticky zombie bits of a candidate after a step into a world with zombies ``now``."""
    if old == now or not any(old):
        return now
    return tuple(o or n for o, n in zip(old, now, strict=True))


class Candidates:
    def __init__(self, model: PeeringModel, start: Iterable[World], *,
                 limit: int = DEFAULT_LIMIT, edge_key: KeyFn | None = None,
                 streams: bool = False) -> None:
        self.model = model
        #: whether views count each cluster's open stream calls (``abstraction.model_view``)
        self.streams = streams
        #: the model's answers, remembered across the Candidates of the same model object
        self.memo = memo_for(model)
        self.limit = limit
        self.edge_key = edge_key
        self.states: frozenset[Candidate] = frozenset(
            Candidate(w, self.memo.info(w).zombies) for w in start)
        self.covered: set[EdgeKey] = set()
        self.history: list[str] = []  # what was pinned / observed, for messages
        self.largest_closure = 0
        self._env_cache: tuple[frozenset[Candidate], set[object]] | None = None

    # -- queries -----------------------------------------------------------------------------
    def worlds(self) -> list[World]:
        return [c.world for c in self.states]

    def enabled_env(self) -> set[object]:
        """Operator and fault actions enabled in some candidate."""
        if self._env_cache is not None and self._env_cache[0] is self.states:
            return self._env_cache[1]
        out: set[object] = set()
        for c in self.states:
            out.update(self.memo.enabled(c.world)[1])
        self._env_cache = (self.states, out)  # holds the set: no reuse of its identity
        return out

    def _view(self, c: Candidate) -> View:
        key = (c, self.streams)
        found = self.memo.views.get(key)
        if found is None:
            found = model_view(c.world, c.zombie_seen, self.streams)
            self.memo.views.put(key, found)
        return found

    def views(self) -> set[View]:
        return {self._view(c) for c in self.states}

    # -- advancing ---------------------------------------------------------------------------
    def pin(self, actions: Iterable[object], what: str) -> None:
        """Apply one of ``actions`` (several when the driver's step maps to more than one model
        action, e.g. a reset of a stream the model may number differently)."""
        chosen = tuple(actions)
        key = (self.states, chosen, self.edge_key)
        known = self.memo.pins.get(key)
        if known is None:
            nxt: set[Candidate] = set()
            covered: set[EdgeKey] = set()
            for c in self.states:
                enabled = self.memo.enabled(c.world)[0]
                for a in chosen:
                    if a in enabled:
                        w = self.memo.step(c.world, a)
                        if self.edge_key is not None:
                            covered.add(self.edge_key(c.world, a, w))
                        nxt.add(Candidate(w, _seen(c.zombie_seen, self.memo.info(w).zombies)))
            known = (frozenset(nxt), frozenset(covered))
            if nxt:
                self.memo.pins.put(key, known)
        states, edges = known
        self.history.append("pinned: " + what)
        if not states:
            names = ", ".join(describe_action(a) for a in chosen)
            raise Divergence(
                f"after: {what}\nthe model cannot do it in any of the {len(self.states)} "
                f"candidate states ({names})")
        self.covered |= edges
        self.states = states

    def close(self) -> None:
        """Unobserved time passed: keep every state the protocol can reach from a candidate
        (trace validation of a live system: steps may happen between an observation and the
        next operator call)."""
        with _CollectorPaused():
            order, _parents = self._closure()
        self.states = frozenset(order)

    def _closure(self, start: Iterable[Candidate] | None = None,
                 parents: dict[Candidate, list[tuple[Candidate, object]]] | None = None,
                 ) -> tuple[list[Candidate], dict[Candidate, list[tuple[Candidate, object]]]]:
        """Every candidate the protocol reaches from ``start`` (default: the candidates),
        breadth first, and the edges into each. Call it with the collector paused
        (``_CollectorPaused``)."""
        order: list[Candidate] = list(self.states if start is None else start)
        seen: set[Candidate] = set(order)
        parents = {} if parents is None else parents
        queue = deque(order)
        info = self.memo.info
        while queue:
            c = queue.popleft()
            for a, w, zombies in info(c.world).protocol:
                n = Candidate(w, _seen(c.zombie_seen, zombies))
                parents.setdefault(n, []).append((c, a))
                if n not in seen:
                    seen.add(n)
                    order.append(n)
                    queue.append(n)
                    if len(seen) > self.limit:
                        raise ClosureTooLarge(
                            f"the protocol closure of {len(self.states)} candidates exceeds "
                            f"{self.limit} states")
        self.largest_closure = max(self.largest_closure, len(seen))
        return order, parents

    def observe(self, observed: View, what: str, faults: Sequence[FaultFn] = ()) -> None:
        """``faults``: the implementation made these faults happen on its own since the last
        observation (a store write failed where the driver armed it to, a handler timed out):
        the matching states are those reached by protocol steps, then for each ``fault`` in
        turn one fault action ``a`` with ``fault(world, a)`` and protocol steps again.

        Without faults the outcome (the matching states, the edges covered, the closure's size)
        depends only on the candidates and the view, so it is remembered (``memo``): the same
        observation again (an example's prefix shared with an earlier one, or a rule that left
        the view unchanged) costs a look-up."""
        key = (self.states, observed, self.edge_key) if not faults else None
        known = self.memo.observations.get(key) if key is not None else None
        if known is None:
            with _CollectorPaused():
                known = self._observe(observed, what, faults)
            if key is not None:
                self.memo.observations.put(key, known)
        states, edges, size = known
        self.largest_closure = max(self.largest_closure, size)
        self.covered |= edges
        if not self.history or not self.history[-1].endswith(what):
            self.history.append(what)
        self.states = states

    def _observe(self, observed: View, what: str, faults: Sequence[FaultFn],
                 ) -> tuple[frozenset[Candidate], frozenset[EdgeKey], int]:
        """The outcome of an observation (see ``observe``); a Divergence if nothing matches."""
        order, parents = self._closure()
        for fault in faults:
            faulted: list[Candidate] = []
            for c in order:
                for a in self.memo.enabled(c.world)[1]:
                    if fault(c.world, a):
                        w = self.memo.step(c.world, a)
                        n = Candidate(w, _seen(c.zombie_seen, self.memo.info(w).zombies))
                        parents.setdefault(n, []).append((c, a))
                        faulted.append(n)
            # a fault spends its budget, so these states are none of the states before it
            order, parents = self._closure(dict.fromkeys(faulted), parents)
        matching = [c for c in order if self._view(c) == observed]
        if not matching:
            raise Divergence(self._explain(what, observed, order))
        covered: set[EdgeKey] = set()
        if self.edge_key is not None:
            self._cover(matching, parents, covered)
        return frozenset(matching), frozenset(covered), len(order)

    def _cover(self, matching: list[Candidate],
               parents: dict[Candidate, list[tuple[Candidate, object]]],
               covered: set[EdgeKey]) -> None:
        assert self.edge_key is not None
        todo = list(matching)
        done = set(todo)
        while todo:
            n = todo.pop()
            for p, a in parents.get(n, ()):
                covered.add(self.edge_key(p.world, a, n.world))
                if p not in done:
                    done.add(p)
                    todo.append(p)

    def require_settled(self, what: str) -> None:
        settled = [c for c in self.states if unsettled_reason(self.model, c.world) is None]
        if settled:
            self.states = frozenset(settled)
            return
        reasons = sorted({str(unsettled_reason(self.model, c.world)) for c in self.states})
        sample = min(self.states, key=lambda c: len(repr(c.world)))
        raise Divergence(
            f"after: {what}\nthe implementation has settled (nothing held, time ran far, "
            f"all tasks blocked) but none of the {len(self.states)} candidate model states "
            f"is settled: the implementation failed to do something the model must do.\n"
            f"why the model is not settled: {'; '.join(reasons[:5])}\n"
            f"implementation (and candidate) view:\n"
            f"{describe(self._view(sample))}")

    # -- messages ----------------------------------------------------------------------------
    def _explain(self, what: str, observed: View, order: list[Candidate]) -> str:
        views = {self._view(c) for c in order}
        ranked = sorted(views, key=lambda v: (len(diff(v, observed)), repr(v)))
        lines = [
            f"after: {what}",
            f"the implementation reached a state that none of the {len(order)} model states "
            f"reachable by protocol steps from the {len(self.states)} candidates matches.",
            "implementation:",
            "  " + describe(observed).replace("\n", "\n  "),
        ]
        for i, v in enumerate(ranked[:3]):
            lines.append(f"nearest model candidate {i + 1} (model / impl):")
            lines.extend("  " + d for d in diff(v, observed))
        lines.append("steps so far: " + " | ".join(self.history[-12:]))
        return "\n".join(lines)
