"""Memoised model queries for ``Candidates``: what the model does from a world, worked out once.

One job: remember, for one ``PeeringModel`` object, what the candidate search asks of it again
and again, in bounded tables:

* per world: the protocol successors (action, next world, and which clusters have a zombie
  deletion routine in it: ``info``), and the enabled actions (``enabled``);
* per (world, action): the world after a pinned action (``step``);
* per candidate: its abstracted view (``view``);
* per (candidate set, observed view): the outcome of an observation, and per (candidate set,
  actions): the outcome of a pin (``observations``, ``pins``; filled by ``Candidates``).

Why: a Hypothesis run's examples share long prefixes (the same set-up, the same first rules),
and most rules of an example leave the implementation's view unchanged, so the same closures
were computed many times over (a bug-free run of 38 examples observed 694 times, but only 93
distinct (candidate set, view) pairs).

Sound because the model is pure (``model/``: a world and an action determine everything) and
every key is the whole immutable value (worlds, actions and views compare by value), so a
remembered answer is the answer. The tables belong to one model object (``memo_for``); a model
must not be changed after its first query, which nothing does (its tables are set in
``__init__``).

Bounded: each table keeps at most ``size`` recent entries in each of two generations (when the
new generation is full it becomes the old one and the old one is dropped; a hit in the old one
moves the entry back), so memory stays bounded and the entries in use stay.

May import: the standard library and ``peerkit.model``.
"""

from __future__ import annotations

import weakref
from collections.abc import Hashable
from typing import Any, Generic, NamedTuple, TypeVar

from peerkit.model import actions as A
from peerkit.model.machine import PeeringModel
from peerkit.model.state import World

K = TypeVar("K")
V = TypeVar("V")

#: entries per generation of the per-world tables (two generations are kept): a world's entry
#: (its successors, its view) takes about 3.5 KB, so a full memo about 200 MB; most worlds a
#: large closure visits are new anyway, and the recent ones are the ones asked again
WORLDS = 30_000
#: entries per generation of the per-observation and per-pin tables
OUTCOMES = 20_000


class Memo(Generic[K, V]):
    """A dict of at most ``2 * size`` entries: two generations, the older dropped when the
    newer fills up."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._new: dict[K, V] = {}
        self._old: dict[K, V] = {}

    def get(self, key: K) -> V | None:
        value = self._new.get(key)
        if value is None and self._old:
            value = self._old.pop(key, None)
            if value is not None:
                self.put(key, value)
        return value

    def put(self, key: K, value: V) -> None:
        if len(self._new) >= self.size:
            self._old, self._new = self._new, {}
        self._new[key] = value

    def __len__(self) -> int:
        return len(self._new) + len(self._old)


def zombies(w: World) -> tuple[bool, ...]:
    """Per cluster: a deletion routine runs for a term other than the current one (the
    model's ``deleters`` holds a deposed term; asked of every state a closure reaches)."""
    # most worlds have no deletion routine at all: answer those without a generator per
    # cluster (this is asked of every successor of every new world a closure meets)
    return tuple([bool(cl.deleters) and any(t != cl.term for t in cl.deleters)
                  for cl in w.clusters])


class WorldInfo(NamedTuple):
    protocol: tuple[tuple[object, World, tuple[bool, ...]], ...]  # (action, next, its zombies)
    zombies: tuple[bool, ...]


class ModelMemo:
    """The tables of one model (see the module's docstring)."""

    def __init__(self, model: PeeringModel) -> None:
        # weakly: ``memo_for`` keeps this memo only while the model lives
        self.model = weakref.proxy(model)
        self._info: Memo[World, WorldInfo] = Memo(WORLDS)
        self._enabled: Memo[World, tuple[frozenset[object], tuple[object, ...]]] = Memo(WORLDS)
        self._steps: Memo[tuple[World, object], World] = Memo(WORLDS)
        #: candidate -> its view; (candidates, view, edge key function) -> (the matching
        #: candidates, the edges covered, the closure's size); (candidates, actions, edge key
        #: function) -> (the next candidates, the edges covered)
        self.views: Memo[Hashable, Any] = Memo(WORLDS)
        self.observations: Memo[Hashable, tuple[frozenset[Any], frozenset[Any], int]] = Memo(
            OUTCOMES)
        self.pins: Memo[Hashable, tuple[frozenset[Any], frozenset[Any]]] = Memo(OUTCOMES)

    def info(self, w: World) -> WorldInfo:
        """The protocol steps from ``w`` (what the closure follows) and its zombies."""
        found = self._info.get(w)
        if found is None:
            found = WorldInfo(tuple((a, nxt, zombies(nxt))
                                    for a, nxt in self.model.protocol_successors(w)),
                              zombies(w))
            self._info.put(w, found)
        return found

    def enabled(self, w: World) -> tuple[frozenset[object], tuple[object, ...]]:
        """Every action enabled in ``w``, and the operator and fault ones in the model's
        order (asked only of candidates, not of every state a closure passes)."""
        found = self._enabled.get(w)
        if found is None:
            enabled = self.model.enabled(w)
            found = (frozenset(enabled), tuple(a for a in enabled if not A.is_protocol(a)))
            self._enabled.put(w, found)
        return found

    def step(self, w: World, action: object) -> World:
        found = self._steps.get((w, action))
        if found is None:
            found = self.model.step(w, action)
            self._steps.put((w, action), found)
        return found


_MEMOS: weakref.WeakKeyDictionary[PeeringModel, ModelMemo] = weakref.WeakKeyDictionary()


def memo_for(model: PeeringModel) -> ModelMemo:
    """The tables of ``model`` (made on first use, dropped with the model)."""
    memo = _MEMOS.get(model)
    if memo is None:
        memo = _MEMOS[model] = ModelMemo(model)
    return memo
