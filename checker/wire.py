"""How one worker of the parallel search sends states to another: each value once per link.

The states one worker sends another over a search share most of their parts: a step changes one
or two records of a state, and the states of a level differ from those of the last in a few
places. So the two ends of a link (an `Encoder` at the sender, a `Decoder` at the owner) keep one
table each, numbering every value the link has carried in the same order; a state goes out as
its parts' numbers, and only the parts the link has never carried go out in full (their own
parts as numbers in turn). Measured on the peering model's `default` configuration (the 16
level batches of one link of a 2-way split, 34,000 states, best of 3, 2026-11-29 on the 2-core
machine at load about 1.5): 20 bytes a state against 144 for pickling the states, 7 us against
20 to encode (11 us since parts are found exactly, below; best of 3 at load about 2) and 1.4 us
against 29 to decode (``pickle.loads`` calls each NamedTuple's
Python-level ``__new__``; here a part is built once per link). Decoded states share their parts,
as the states of one process do, so they take less memory and compare faster.

What is rebuilt: plain tuples and the tuple subclasses whose instances have no ``__dict__``
(NamedTuples: a tuple subclass can hold nothing else), from their items with ``tuple.__new__``,
which is all a NamedTuple's generated ``__new__`` does. Every other value (ints, strings,
frozensets, enums, dataclasses, ...) is a leaf, pickled the first time. A state is never itself
entered in the table (a worker sends a state at most once per level, and not at all once it
knows the state's number), only its parts, to the depth where a part is known.

Exact parts: a decoded state must be made of the same classes as the state sent, not only equal
to it, since the model reads its records by attribute. Looking every part up by its value would
not do that: ``(Track(3, True),)`` equals the plain ``((3, 1),)``, so a tracker could come back as
the tuple of pairs another field of an earlier state had (this happened: the peering model's
tracker and its ghost's pairs, a crash of ``peerkit check --config tiny --workers 2``). So:

* a plain tuple, which may hold anything in any field, is found by its items' numbers, exact by
  induction; so that its items need not be looked at every time, it is also remembered by
  identity (holding a reference, so the identity stays its own): a successor shares its parent's
  unchanged parts;
* a record (a NamedTuple) is found by its class and value, which is exact as long as each of its
  fields holds the classes its annotation declares all the way down (``mypy --strict`` checks
  this of the model), up to equal ints and bools in one field (``1`` for ``True``; the engine
  keeps whichever of two such equal states it meets first, too). Finding records by their items'
  numbers as well was measured 2 to 4 times as slow to encode;
* an atom (an int, bool, str, bytes, None or enum member) by its class and value, exact;
* any other leaf (a frozenset, a float, a dataclass, ...) only by identity, since equal ones may
  hold items of other classes (or be ``0.0`` and ``-0.0``).

Memory: each table holds at most `TABLE_LIMIT` values (the encoder's: parts met, by identity)
plus one message's worth; past that, the encoder starts a new table and the next message tells
the decoder to do the same.

Import rules: the standard library only.
"""

from __future__ import annotations

import enum
from typing import Any

#: Values a link's tables may hold before both ends start new ones.
TABLE_LIMIT = 1 << 18

_new_tuple = tuple.__new__

#: Leaves found by class and value: equal values of one of these classes are the same value.
_ATOMS = (int, bool, str, bytes, type(None))


def _rebuildable(cls: type) -> bool:
    """Whether instances of `cls` are exactly their items (so ``tuple.__new__`` remakes them)."""
    return cls is tuple or (issubclass(cls, tuple) and cls.__dictoffset__ == 0)


def _atomic(cls: type) -> bool:
    """Whether equal values of `cls` are the same value (see "Exact parts" above)."""
    return cls in _ATOMS or issubclass(cls, enum.Enum)


# how the encoder finds a part of a class (see "Exact parts")
_TUPLE, _RECORD, _ATOM, _OTHER = 0, 1, 2, 3


class Encoder:
    """The sending end of a link: turns a batch of states into a message for the `Decoder`."""

    def __init__(self) -> None:
        self.count = 0  # values numbered since the tables last started
        # a part's number by an exact key (see "Exact parts"): (class number, item numbers)
        # for a plain tuple, (class, value) for a record or an atom
        self.table: dict[tuple[Any, ...], int] = {}
        # plain tuples and other leaves by identity, each with the part itself so that its id
        # stays its own
        self.by_id: dict[int, tuple[Any, int]] = {}
        self.classes: dict[type, int] = {}
        self.kinds: dict[type, int] = {}  # _TUPLE, _RECORD, _ATOM or _OTHER, by type

    def encode(self, states: list[Any]) -> tuple[bool, list[type], list[Any], list[Any]]:
        """(whether the tables start again, new classes, new values, the states).

        New values are listed in the order they are numbered (a value's parts before it): a
        rebuildable tuple as a tuple of its class's number and its items' numbers, any other
        value as a one-item list of itself. A state is an int (the number of a known value, for
        a state that is not a rebuildable tuple) or a tuple like a new value's."""
        # by_id may hold several objects per number (equal plain tuples), so both count
        reset = self.count >= TABLE_LIMIT or len(self.by_id) >= TABLE_LIMIT
        if reset:
            self.count = 0
            self.table = {}
            self.by_id = {}
            self.classes = {}
        table = self.table
        by_id = self.by_id
        classes = self.classes
        kinds = self.kinds
        new_classes: list[type] = []
        values: list[Any] = []

        def kind(cls: type) -> int:
            got = kinds.get(cls)
            if got is None:
                got = kinds[cls] = (
                    (_TUPLE if cls is tuple else _RECORD) if _rebuildable(cls)
                    else _ATOM if _atomic(cls) else _OTHER)
            return got

        def node(obj: tuple[Any, ...], cls: type) -> tuple[int, ...]:
            code = classes.get(cls)
            if code is None:
                code = classes[cls] = len(classes)
                new_classes.append(cls)
            return (code, *[number(item) for item in obj])

        def number(obj: Any) -> int:
            cls = type(obj)
            what = kinds.get(cls)
            if what is None:
                what = kind(cls)
            if what in (_RECORD, _ATOM):
                key: Any = (cls, obj)
                got = table.get(key)
                if got is None:
                    values.append(node(obj, cls) if what == _RECORD else [obj])
                    got = table[key] = self.count
                    self.count += 1
                return got
            # a plain tuple or another leaf: by identity first
            known = by_id.get(id(obj))
            if known is not None and known[0] is obj:
                return known[1]
            if what == _TUPLE:
                key = encoded = node(obj, cls)
                got = table.get(key)
                if got is None:
                    values.append(encoded)
                    got = table[key] = self.count
                    self.count += 1
            else:
                values.append([obj])
                got = self.count
                self.count += 1
            by_id[id(obj)] = (obj, got)
            return got

        out: list[Any] = []
        for state in states:
            cls = type(state)
            out.append(node(state, cls) if kind(cls) <= _RECORD else number(state))
        return reset, new_classes, values, out


class Decoder:
    """The receiving end of a link: the states of an `Encoder`'s message."""

    def __init__(self) -> None:
        self.values: list[Any] = []
        self.classes: list[type] = []

    def decode(self, message: tuple[bool, list[type], list[Any], list[Any]]) -> list[Any]:
        reset, new_classes, new_values, states = message
        if reset:
            self.values = []
            self.classes = []
        values = self.values
        classes = self.classes
        classes.extend(new_classes)
        append = values.append
        for value in new_values:
            if type(value) is tuple:
                append(_new_tuple(classes[value[0]], [values[i] for i in value[1:]]))
            else:
                append(value[0])
        return [values[state] if type(state) is int
                else _new_tuple(classes[state[0]], [values[i] for i in state[1:]])
                for state in states]

