"""How one worker of the parallel search sends states to another: each value once per link.

The states one worker sends another over a search share most of their parts: a step changes one
or two records of a state, and the states of a level differ from those of the last in a few
places. So the two ends of a link (an `Encoder` at the sender, a `Decoder` at the owner) keep one
table each, numbering every value the link has carried; a state goes out as its parts' numbers,
and only the parts the link has never carried go out in full. Measured on the peering model's
`default` configuration (a level's batches, one link, 2026-11-29 on the 2-core machine): 19
bytes a state against 144 for pickling the states, about 11 us against 31 to encode and 2 us
against 36 to decode. Decoded states also share their parts, as the states of one process do,
so they take less memory and compare faster (equal parts are the same object).

What is rebuilt: plain tuples and the tuple subclasses whose instances have no ``__dict__``
(NamedTuples: a tuple subclass can hold nothing else), from their items with ``tuple.__new__``,
which is all a NamedTuple's generated ``__new__`` does. Every other value (ints, strings,
frozensets, enums, dataclasses, ...) is a leaf, sent with pickle the first time. A state is never
itself entered in the table (it is sent at most once per level, and the sender's table of known
states keeps it from being sent again), only its parts, to the depth where a part is known.

Parts are matched by equality, as the search matches whole states: where two equal values differ
in type (``1`` and ``True``, ``0.0`` and ``-0.0``), the owner may receive the one the link carried
first. The search already assumes that equal states behave alike (it keeps one of each), and the
counterexamples are rebuilt by replaying the model, not from the workers' copies, so this changes
no result of a model whose states behave as their values.

Memory: each table holds at most `TABLE_LIMIT` values (plus one message's worth); past that, the
encoder starts a new table and the next message tells the decoder to do the same.

Import rules: the standard library only.
"""

from __future__ import annotations

from typing import Any

#: Values a link's tables may hold before both ends start new ones.
TABLE_LIMIT = 1 << 18

_new_tuple = tuple.__new__


def _rebuildable(cls: type) -> bool:
    """Whether instances of `cls` are exactly their items (so ``tuple.__new__`` remakes them)."""
    return cls is tuple or (issubclass(cls, tuple) and cls.__dictoffset__ == 0)


class Encoder:
    """The sending end of a link: turns a batch of states into a message for the `Decoder`."""

    def __init__(self) -> None:
        self.table: dict[tuple[type, Any], int] = {}
        self.classes: dict[type, int] = {}
        self.kinds: dict[type, bool] = {}  # rebuildable or not, by type

    def encode(self, states: list[Any]) -> tuple[bool, list[type], list[Any], list[Any]]:
        """(whether the tables start again, new classes, new values, the states).

        New values are listed in the order they are numbered (a value's parts before it): a
        rebuildable tuple as a tuple of its class's number and its items' numbers, any other
        value as a one-item list of itself. A state is an int (the number of a known value, for
        a state that is not a rebuildable tuple) or a tuple like a new value's."""
        reset = len(self.table) >= TABLE_LIMIT
        if reset:
            self.table = {}
            self.classes = {}
        table = self.table
        classes = self.classes
        kinds = self.kinds
        new_classes: list[type] = []
        values: list[Any] = []

        def node(obj: tuple[Any, ...], cls: type) -> tuple[int, ...]:
            code = classes.get(cls)
            if code is None:
                code = classes[cls] = len(classes)
                new_classes.append(cls)
            return (code, *[number(item) for item in obj])

        def number(obj: Any) -> int:
            cls = type(obj)
            key = (cls, obj)  # (3, 1) equals Track(3, True): the type tells them apart
            known = table.get(key)
            if known is not None:
                return known
            rebuild = kinds.get(cls)
            if rebuild is None:
                rebuild = kinds[cls] = _rebuildable(cls)
            values.append(node(obj, cls) if rebuild else [obj])
            got = table[key] = len(table)
            return got

        out: list[Any] = []
        for state in states:
            cls = type(state)
            rebuild = kinds.get(cls)
            if rebuild is None:
                rebuild = kinds[cls] = _rebuildable(cls)
            out.append(node(state, cls) if rebuild else number(state))
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

