"""The mutation catalog: plausible mistakes in the *fixed* protocol, each a small overlay.

The six historical bugs (vocabulary.BUGS) show that peerkit catches the mistakes upstream made.
This catalog asks the harder question: would it catch the mistakes nobody has made yet? Each
mutant is one plausible slip in a rule of the fixed protocol, made the same way the bug switches
are: an overlay on an entry of a transition table (tables.py), or a named switch that a routine in
machine.py checks. `peerkit mutants` lists them; `peerkit check --mutant NAME` checks one; a test
asserts that the CI configurations kill every one of them that is not shown equivalent
(specs/mutants.md gives the argument for each equivalent one).

Part of the catalog is systematic (generated from the tables): every effect of every handler-table
entry dropped in turn, and every lifecycle transition replaced by its refusal. The rest is written
by hand: guards of the sync pass, the import guard and the deletion routine inverted, the order of
the deletion routine's steps swapped, and other slips a porter could make.

Import rules: standard library and ``peerkit.model`` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from .tables import LifecycleNext, Outcome


class Mutant(NamedTuple):
    name: str
    #: the mistake it stands for, in one line
    summary: str
    #: "table" (generated from a table entry) or "routine" (a hand-written switch)
    family: str
    lifecycle: Mapping[tuple[str, int | None, str], LifecycleNext] = {}
    endpoint: Mapping[tuple[str, int, str], Outcome] = {}
    #: a routine switch that machine.py checks by name
    switch: str = ""


MUTANTS: dict[str, Mutant] = {}


def get_mutant(name: str) -> Mutant:
    if not isinstance(name, str):
        raise TypeError(f"a mutant name is a string, not {type(name).__name__}")
    try:
        return MUTANTS[name]
    except KeyError:
        raise ValueError(f"unknown mutant {name!r}; `peerkit mutants` lists them") from None
