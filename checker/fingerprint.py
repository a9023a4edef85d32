"""64-bit state fingerprints: one deterministic across processes, one fast within a process.

* `fingerprint(state)`: the same value in every process, on every machine and at every run, for
  a parallel or distributed search that partitions states by fingerprint. It is BLAKE2b (8-byte
  digest) over a canonical text of the state: tuples (NamedTuples too) as JSON lists, strings,
  ints, floats, bools and None as JSON, and, through a tagged object no state can otherwise
  produce, frozensets (members sorted by their own encoding, so string hashing cannot reorder
  them), enums (type and member name), dataclasses (type and fields) and anything else (type and
  repr). Equal states get equal fingerprints, with two harmless exceptions: ``True``/``1`` and
  ``1.0``/``1`` are equal in Python but encode differently; a state holding one where another
  holds the other is then explored twice, which costs time and hides nothing. Cost: about 38 us
  for a ~600-character peering state on the 2-core benchmark machine (a C JSON encoder plus
  hashlib), about ten times `hash()`; `benchmarks/fingerprint_memory.py` measures it.
* `process_fingerprint(state)`: ``hash(state)`` as an unsigned 64-bit number, the engine's
  default in fingerprint mode because it costs no more than the set lookup of the exact mode. It
  is only meaningful inside one process (string hashes are salted per process, so two processes
  disagree), which is all a single-process search needs. Equal states hash equal (Python's data
  model requires it), so it never splits a state; CPython mixes the items of a tuple with
  xxHash-style rounds over SipHash string hashes, close enough to uniform for the estimate below.
  Known deterministic collisions it does *not* avoid: ``hash(-1) == hash(-2)``, integers equal
  modulo 2**61 - 1, and any user class with a weak ``__hash__``. A model whose states hold such
  values should pass ``fingerprint=fingerprint`` to `check`.

`omission_probability` is TLC's optimistic estimate of the chance that some state was omitted
because its fingerprint matched an earlier, different state: ``n * (g - n) / 2**64`` for n
distinct states and g generated ones (every lookup that found a known fingerprint could have
been a collision with any of at most n states), assuming uniformly distributed fingerprints.

Import rules: standard library only.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import json.encoder
from collections.abc import Callable
from typing import Any

FINGERPRINT_BITS = 64
MASK64 = (1 << FINGERPRINT_BITS) - 1


def _tagged(obj: Any) -> dict[str, Any]:
    """What the JSON encoder cannot write itself, as a one-key object tagged with the type:
    states are hashable, so no state holds a dict, and a dict in the text is always a tag."""
    name = f"{type(obj).__module__}.{type(obj).__qualname__}"
    if isinstance(obj, (frozenset, set)):
        return {"set": sorted(_canonical(item) for item in obj)}
    if isinstance(obj, enum.Enum):
        return {"enum:" + name: obj.name}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"dataclass:" + name: [getattr(obj, f.name) for f in dataclasses.fields(obj)]}
    if isinstance(obj, bytes):
        return {"bytes": obj.hex()}
    return {"repr:" + name: repr(obj)}


def _make_canonical() -> Callable[[Any], str]:
    # The C encoder built once: json.JSONEncoder.encode builds a new one on every call, which
    # costs about as much again as the encoding of a small state.
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is not None:
        try:
            c_encode = make(None, _tagged, json.encoder.encode_basestring_ascii, None, ":", ",",
                            False, False, True)
            c_encode((1, "a", None, 1.5), 0)
        except TypeError:  # another interpreter's signature: use the public encoder below
            pass
        else:
            join = "".join

            def canonical(state: Any) -> str:
                return join(c_encode(state, 0))

            return canonical
    encoder = json.JSONEncoder(separators=(",", ":"), check_circular=False, default=_tagged)
    return encoder.encode


_canonical = _make_canonical()


def canonical_text(state: Any) -> str:
    """The canonical encoding `fingerprint` hashes (for tests and for reading collisions)."""
    return _canonical(state)


def fingerprint(state: Any) -> int:
    """A 64-bit fingerprint of `state`, the same in every process (see the module docstring)."""
    digest = hashlib.blake2b(_canonical(state).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def process_fingerprint(state: Any) -> int:
    """``hash(state)`` as an unsigned 64-bit number: fast, valid within this process only."""
    return hash(state) & MASK64


def omission_probability(distinct: int, generated: int) -> float:
    """TLC's optimistic estimate that a fingerprint collision omitted some state (capped at 1)."""
    if distinct <= 0 or generated <= distinct:
        return 0.0
    return min(1.0, distinct * ((generated - distinct) / 2.0 ** FINGERPRINT_BITS))
