"""What a model must offer to be checked, and the kinds of property the checker can decide.

The checker is generic: it knows nothing of peering. A model is anything with initial states and a
successor relation (or `enabled` plus `step`, adapted by `StepModel`), over hashable states. Its
properties come in three kinds:

* `Invariant`: a predicate every reachable state must satisfy;
* `TransitionInvariant`: a predicate every explored transition ``(s, a, s')`` must satisfy, for
  properties about what an action *does* ("Terminated is only ever sent for ...");
* `Liveness`: from every reachable state, some `target` state must be reachable using only the
  transitions `counts` admits. On a finite graph this is the checkable form of "eventually settles":
  a state violating it is stuck in a livelock or deadlock.

A `Reduction` maps a state to a canonical representative (symmetry); the model states why it is
sound, and the checker reports it.

Import rules: standard library only.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

S = TypeVar("S", bound=Hashable)
A = TypeVar("A")


@dataclass(frozen=True)
class Invariant(Generic[S]):
    id: str
    title: str
    holds: Callable[[S], bool]
    #: Optional: explains *why* a state violates the invariant (shown under the counterexample).
    explain: Callable[[S], str] | None = None


@dataclass(frozen=True)
class TransitionInvariant(Generic[S, A]):
    id: str
    title: str
    holds: Callable[[S, A, S], bool]
    explain: Callable[[S, A, S], str] | None = None


def _always(_action: object) -> bool:
    return True


@dataclass(frozen=True)
class Liveness(Generic[S, A]):
    id: str
    title: str
    #: The states that count as "arrived" (e.g. settled).
    target: Callable[[S], bool]
    #: Which transitions may be used to get there (e.g. protocol steps, not operator or faults).
    counts: Callable[[A], bool] = _always
    #: "none": a target stays reachable from every state (no dead end, no trap). "weak": also,
    #: every run in which no counted action stays enabled for ever without being taken reaches a
    #: target (no fair cycle avoids the targets). Actions are told apart by equality.
    fairness: str = "none"


@dataclass(frozen=True)
class Reduction(Generic[S]):
    name: str
    canonical: Callable[[S], S]
    #: Why merging the states this maps together cannot hide a violation of any property.
    why_sound: str


S_contra = TypeVar("S_contra", contravariant=True)
A_contra = TypeVar("A_contra", contravariant=True)


class InvariantLike(Protocol[S_contra]):
    """Anything shaped like `Invariant` (a model need not import the checker to offer one)."""

    @property
    def id(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def holds(self) -> Callable[[S_contra], bool]: ...
    @property
    def explain(self) -> Callable[[S_contra], str] | None: ...


class TransitionInvariantLike(Protocol[S_contra, A_contra]):
    @property
    def id(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def holds(self) -> Callable[[S_contra, A_contra, S_contra], bool]: ...
    @property
    def explain(self) -> Callable[[S_contra, A_contra, S_contra], str] | None: ...


class LivenessLike(Protocol[S_contra, A_contra]):
    @property
    def id(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def target(self) -> Callable[[S_contra], bool]: ...
    @property
    def counts(self) -> Callable[[A_contra], bool]: ...


class ReductionLike(Protocol[S]):
    @property
    def name(self) -> str: ...
    @property
    def canonical(self) -> Callable[[S], S]: ...
    @property
    def why_sound(self) -> str: ...


class Model(Protocol[S, A]):
    """The interface the checker explores."""

    @property
    def name(self) -> str: ...

    def initial_states(self) -> Iterable[S]: ...

    def successors(self, state: S) -> Iterable[tuple[A, S]]: ...

    @property
    def invariants(self) -> Sequence[InvariantLike[S]]: ...

    @property
    def transition_invariants(self) -> Sequence[TransitionInvariantLike[S, A]]: ...

    @property
    def liveness(self) -> Sequence[LivenessLike[S, A]]: ...

    @property
    def reductions(self) -> Sequence[ReductionLike[S]]: ...

    def format_action(self, action: A) -> str: ...


@dataclass
class StepModel(Generic[S, A]):
    """Adapts a sans-I/O model written as ``enabled(state)`` plus ``step(state, action)``.

    Everything but the three functions is optional, so a toy model is three lines.
    """

    name: str
    initial: Callable[[], Iterable[S]]
    enabled: Callable[[S], Iterable[A]]
    step: Callable[[S, A], S]
    invariants: Sequence[Invariant[S]] = ()
    transition_invariants: Sequence[TransitionInvariant[S, A]] = ()
    liveness: Sequence[Liveness[S, A]] = ()
    reductions: Sequence[Reduction[S]] = ()
    format_action: Callable[[A], str] = field(default=repr)

    def initial_states(self) -> Iterable[S]:
        return self.initial()

    def successors(self, state: S) -> Iterator[tuple[A, S]]:
        step = self.step
        for action in self.enabled(state):
            yield action, step(state, action)
