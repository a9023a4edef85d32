"""Trace validation: is a sequence of observations of live servers a behaviour of the model?

One job: keep the trace of a live run (the operator actions the driver took and the abstracted
views it observed, in order) and check it online against the model, the way TLA+ trace
validation does (Cirstea, Kuppe, Loillier, Merz 2024; shared/reference/prior-art.md §3.2): the
implementation cannot be stepped, so between two entries of the trace the model may take any
number of its internal (protocol) steps, and the trace is accepted when some behaviour of the
model passes through every entry in order.

``Candidates`` does the search: it keeps the set of model states consistent with the trace so
far. An operator action, or a fault the driver caused through the
optional test hooks (a connection reset, a failover: the model's ``Reset`` and ``Failover``), is
applied after closing that set under protocol steps (the servers keep running between the last
observation and the RPC); an observation closes the set and keeps
the states whose view equals the observed one. Because the check is online, the first entry
that empties the set ends the **shortest observed prefix the model cannot produce**;
``TraceDivergence`` prints that prefix, numbered, and ``Candidates``' explanation of the last
entry (the nearest model candidates, as a diff against what was observed).

``require_settled``: at the end of a scenario, after the servers had enough real time, some
candidate must be settled in the model's sense (nothing left that the model must still do).

May import: the standard library, ``peerkit.model`` and this package's ``abstraction`` and
``candidates``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

from peerkit.model.machine import PeeringModel
from peerkit.model.properties import unsettled_reason
from peerkit.model.state import World

from .abstraction import View, describe
from .candidates import Candidates, ClosureTooLarge, Divergence


class Entry(NamedTuple):
    kind: str  # "action", "fault", "note", "view" or "settled"
    what: str
    view: View | None


class TraceDivergence(AssertionError):
    """The observed trace (a prefix of it) is not a behaviour of the model."""


class TraceValidator:
    def __init__(self, model: PeeringModel, start: Iterable[World], *, header: str = "") -> None:
        self.model = model
        self.cands = Candidates(model, start)
        self.entries: list[Entry] = []
        self.header = header
        self._last_view: View | None = None

    def worlds(self) -> list[World]:
        return self.cands.worlds()

    def pin(self, actions: Iterable[object], what: str) -> None:
        """The driver took an operator action (one of ``actions`` in the model)."""
        self.entries.append(Entry("action", what, None))
        self._last_view = None
        try:
            self.cands.close()
            self.cands.pin(actions, what)
        except (Divergence, ClosureTooLarge) as exc:
            raise self._diverged(exc) from None

    def pin_fault(self, match: Callable[[object], bool], what: str) -> None:
        """The driver caused a fault through the optional test hooks (a connection reset, a
        failover): any enabled action ``match`` accepts, after the protocol steps taken
        unobserved. (A reset is matched by type: the model numbers streams its own way.)"""
        self.entries.append(Entry("fault", what, None))
        self._last_view = None
        try:
            self.cands.close()
            chosen = sorted((a for a in self.cands.enabled_env() if match(a)), key=repr)
            self.cands.pin(chosen, what)
        except (Divergence, ClosureTooLarge) as exc:
            raise self._diverged(exc) from None

    def note(self, what: str) -> None:
        """The driver did something the model does not name (recorded, nothing pinned)."""
        self.entries.append(Entry("note", what, None))

    def observe(self, view: View, what: str) -> None:
        """The servers were seen resting in ``view``. A view equal to the last one observed adds
        nothing (the closure already holds its states) and is not recorded again."""
        if view == self._last_view:
            return
        self.entries.append(Entry("view", what, view))
        self._last_view = view
        try:
            self.cands.observe(view, what)
        except (Divergence, ClosureTooLarge) as exc:
            raise self._diverged(exc) from None

    def any_settled(self) -> bool:
        return any(unsettled_reason(self.model, w) is None for w in self.cands.worlds())

    def require_settled(self, what: str) -> None:
        self.entries.append(Entry("settled", what, None))
        try:
            self.cands.require_settled(what)
        except Divergence as exc:
            raise self._diverged(exc) from None

    def _diverged(self, exc: Exception) -> TraceDivergence:
        kind = ("an inconclusive check (the model's search was cut short)"
                if isinstance(exc, ClosureTooLarge) else "a divergence")
        lines = [f"trace validation found {kind}"
                 + (f" ({self.header})" if self.header else ""),
                 f"the shortest observed prefix the model cannot produce ({len(self.entries)} "
                 "entries; the model may take any protocol steps between two entries):"]
        for i, e in enumerate(self.entries, 1):
            mark = ">>" if i == len(self.entries) else "  "
            if e.kind == "view" and e.view is not None:
                body = describe(e.view).replace("\n", "\n" + " " * 9)
                lines.append(f"{mark} {i:3}. observed after {e.what}:\n         {body}")
            elif e.kind == "action":
                lines.append(f"{mark} {i:3}. operator: {e.what}")
            elif e.kind == "fault":
                lines.append(f"{mark} {i:3}. environment, through a test hook: {e.what}")
            elif e.kind == "note":
                lines.append(f"{mark} {i:3}. not a model action: {e.what}")
            else:
                lines.append(f"{mark} {i:3}. required settled: {e.what}")
        lines.append("what the model could have done instead:")
        lines.append("  " + str(exc).replace("\n", "\n  "))
        return TraceDivergence("\n".join(lines))
