"""checker/wire.py: a link's messages decode to the states sent, each part of its class.

The parallel search compares the states a worker receives with its own by equality, and the
model reads them by attribute, so a decoded state must equal the state sent and be made of
records of the same classes: a NamedTuple must not come back as the plain tuple it equals
(``Track(3, True) == (3, 1)``), at any depth, after any earlier state; nor ``True`` as ``1``.
The messages go through pickle, as between processes.
"""

from __future__ import annotations

import enum
import pickle
from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerkit.checker import wire
from peerkit.model import PeeringModel, get_config


class Track(NamedTuple):
    gen: int
    connected: bool


class Pair(NamedTuple):
    left: Any
    right: Any


class Colour(enum.IntEnum):
    RED = 1


class Loose(tuple):  # type: ignore[type-arg]
    """A tuple subclass with an instance dict: not rebuildable, so it travels by pickle."""


def same(a: Any, b: Any, exact: bool = True) -> bool:
    """Equal, and of the same class all the way down (only the tuples, unless `exact`)."""
    if a != b or ((exact or isinstance(a, tuple)) and type(a) is not type(b)):
        return False
    if isinstance(a, tuple):
        return all(same(x, y, exact) for x, y in zip(a, b, strict=True))
    return True


def send(encoder: wire.Encoder, decoder: wire.Decoder, states: list[Any]) -> list[Any]:
    blob = pickle.dumps(encoder.encode(states), pickle.HIGHEST_PROTOCOL)
    return decoder.decode(pickle.loads(blob))


def test_a_part_keeps_its_class_and_leaves_come_back_as_sent() -> None:
    loose = Loose((1, 2))
    loose.note = "kept"  # type: ignore[attr-defined]
    batches = [
        [(3, 1), Track(3, True), Pair(Track(3, True), (3, 1)), Pair((3, 1), Track(3, True))],
        [Pair(Track(3, True), (True, 1)), (Colour.RED, 1, True, 1.0), ((3, 1), Track(3, True))],
        [(frozenset({1, 2}), "a", None, b"x"), "a bare string", 7, loose,
         Pair(Pair((), ()), (Pair((), ()),))],
    ]
    encoder, decoder = wire.Encoder(), wire.Decoder()
    for batch in batches:
        got = send(encoder, decoder, batch)
        assert len(got) == len(batch)
        for sent, back in zip(batch, got, strict=True):
            assert same(sent, back), (sent, back)
    assert got[3].note == "kept"


def test_equal_parts_of_other_classes_inside_a_part_are_told_apart() -> None:
    # The peering model's tracker (Track records) equals a ghost field's tuple of plain pairs
    # when True == 1: sent after the pairs, the tracker must still come back as Tracks (this
    # was a crash of `peerkit check --config tiny` with two workers).
    encoder, decoder = wire.Encoder(), wire.Decoder()
    cases = [
        [((3, 1),), ("roots", True), frozenset({(3, 1)}), Pair((3, 1), 1.0)],
        [(Track(3, True),), ("roots", 1), frozenset({Track(3, True)}), Pair(Track(3, True), 1)],
        [(((3, 1),),), ((Track(3, True),),), (0.0, -0.0), (-0.0, 0.0)],
    ]
    for batch in cases:
        got = send(encoder, decoder, batch)
        for sent, back in zip(batch, got, strict=True):
            assert same(sent, back), (sent, back)
    back = send(encoder, decoder, [frozenset({Track(3, True)})])[0]
    assert type(next(iter(back))) is Track


class Held(NamedTuple):
    tracks: tuple[Track, ...]
    pairs: tuple[tuple[int, int], ...]


# Values like the model's: atoms equal across types (True == 1 == Colour.RED), plain tuples of
# anything, nested, and records whose fields hold what their annotations say (wire.py assumes
# that of records); several batches over one link, so later values meet the parts earlier ones
# left in the tables.
_atoms = st.sampled_from([0, 1, 3, True, False, Colour.RED, "a", None, b"x", 0.0, -0.0])
_tracks = st.builds(Track, st.integers(0, 1), st.booleans())
_held = st.builds(Held, st.lists(_tracks, max_size=2).map(tuple),
                  st.lists(st.tuples(st.integers(0, 1), st.integers(0, 1)), max_size=2).map(tuple))
_values = st.recursive(
    _atoms | _tracks | _held
    | st.frozensets(st.sampled_from([1, True, (1, 1), Track(1, True)]), max_size=2),
    lambda inner: st.lists(inner, max_size=3).map(tuple),
    max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_values, min_size=1, max_size=4), min_size=1, max_size=4))
def test_any_values_come_back_of_the_classes_sent(batches: list[list[Any]]) -> None:
    encoder, decoder = wire.Encoder(), wire.Decoder()
    for batch in batches:
        for sent, back in zip(batch, send(encoder, decoder, batch), strict=True):
            assert same_deep(sent, back), (sent, back)


def same_deep(a: Any, b: Any) -> bool:
    """`same`, and inside frozensets too (as sorted lists of their items' reprs and classes)."""
    if type(a) is not type(b) or a != b:
        return False
    if isinstance(a, frozenset):
        return sorted(map(_shape, a)) == sorted(map(_shape, b))
    if isinstance(a, tuple):
        return all(same_deep(x, y) for x, y in zip(a, b, strict=True))
    return repr(a) == repr(b)  # 0.0 and -0.0


def _shape(value: Any) -> str:
    if isinstance(value, tuple):
        return f"{type(value).__name__}({','.join(map(_shape, value))})"
    return f"{type(value).__name__}:{value!r}"


def test_peering_states_over_many_batches_and_table_resets(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    model = PeeringModel(get_config("race"))
    states = list(model.initial_states())
    seen = set(states)
    for state in states:  # grows while it is walked: breadth first
        for _, nxt in model.successors(state):
            if nxt not in seen:
                seen.add(nxt)
                states.append(nxt)
        if len(states) > 1500:
            break
    batches = [states[i:i + 97] for i in range(0, len(states), 97)]
    for limit in (wire.TABLE_LIMIT, 50):
        monkeypatch.setattr(wire, "TABLE_LIMIT", limit)
        encoder, decoder = wire.Encoder(), wire.Decoder()
        resets = 0
        for batch in batches + batches:  # the second time, every part is known
            message = encoder.encode(batch)
            resets += message[0]
            got = decoder.decode(pickle.loads(pickle.dumps(message)))
            assert all(same(a, b, exact=False) for a, b in zip(batch, got, strict=True))
        assert (resets > 0) == (limit == 50)
    # the parts a link has carried are sent as numbers: much smaller than pickled states
    encoder = wire.Encoder()
    encoded = sum(len(pickle.dumps(encoder.encode(b))) for b in batches)
    pickled = sum(len(pickle.dumps(b)) for b in batches)
    assert encoded < pickled / 2


def test_decoded_states_share_their_equal_parts() -> None:
    model = PeeringModel(get_config("race"))
    first = model.initial_states()[0]
    batch = [nxt for _, nxt in model.successors(first)]
    got = send(wire.Encoder(), wire.Decoder(), batch)
    budgets = {id(state.budget) for state in got if state.budget == first.budget}
    assert len(budgets) == 1
