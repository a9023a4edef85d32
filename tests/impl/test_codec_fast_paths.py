"""The replication codec's fast paths give what the plain code gives (issue 10).

One job: seeded comparisons of the code that builds and reads replicated messages in the
faster way against the straightforward form it replaced: ``instances_to_pb`` (built in place)
against ``csn_to_wire`` messages, ``csn_from_wire``'s one-call name check against a check of
each value (same records, same refusal and message), and the ACK/NACK a stream end builds in
place against one built from a separate Request; and the SQLite store's row text decoder
against ``json.loads`` (same value or same error, for rows as written and for hostile ones).
May import: pytest, the standard library, peerkit.impl (codec, store, stream), peerkit.proto.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from peerkit.impl.codec import MAX_IMPORTED_NAME_CHARS, csn_from_wire, csn_to_wire, instances_to_pb
from peerkit.impl.store import Check, CheckServiceNode, Node, Service
from peerkit.impl.store.sqlite import _loads, encode_row
from peerkit.impl.stream import ReplicationMessage, StreamSession, _Reply
from peerkit.proto import peerstream_pb2, service_pb2, status_pb2

ALPHABET = ["a", "b", "-", " ", "\u00e9", "\u0434", "\n", "\x00", "\x7f", "\u2028", "\t", "z"]


def _name(rng: random.Random, empty: bool = False) -> str:
    roll = rng.random()
    if roll < 0.05:
        return "x" * rng.choice([MAX_IMPORTED_NAME_CHARS, MAX_IMPORTED_NAME_CHARS + 1])
    length = rng.randrange(0 if empty else 1, 6)
    # mostly printable, so that most instances pass and the refusals vary
    return "".join(rng.choice(ALPHABET[:6] if rng.random() < 0.8 else ALPHABET)
                   for _ in range(length)) or ("" if empty else "n")


def _instance(rng: random.Random) -> CheckServiceNode:
    node = Node(name=_name(rng), address=_name(rng, empty=True),
                peer_name=rng.choice(["", "dc1"]))
    service = Service(id=_name(rng), name=_name(rng), port=rng.randrange(0, 65536),
                      tags=tuple(_name(rng) for _ in range(rng.randrange(3))), node=node.name,
                      peer_name=node.peer_name)
    checks = tuple(
        Check(check_id=f"c{i}{_name(rng)}", name=_name(rng, empty=True),
              status=rng.choice(["passing", "warning", "critical"]),
              service_id=rng.choice(["", service.id]), node=node.name,
              peer_name=node.peer_name)
        for i in range(rng.randrange(3)))
    return CheckServiceNode(node=node, service=service, checks=checks)


def test_instances_are_built_as_csn_to_wire_builds_them() -> None:
    rng = random.Random(10)
    for _ in range(300):
        instances = [_instance(rng) for _ in range(rng.randrange(4))]
        built = instances_to_pb(instances)
        plain = peerstream_pb2.ExportedService(Nodes=[csn_to_wire(c) for c in instances])
        assert built == plain
        assert built.SerializeToString(deterministic=True) == plain.SerializeToString(
            deterministic=True)


def _plain_check(msg: service_pb2.CheckServiceNode) -> str | None:
    """The refusal message the per-value check gives, or None."""
    values = [("node name", msg.Node.Node), ("node address", msg.Node.Address),
              ("service ID", msg.Service.ID), ("service name", msg.Service.Service),
              *(("tag", t) for t in msg.Service.Tags),
              *(("check ID", c.CheckID) for c in msg.Checks),
              *(("check name", c.Name) for c in msg.Checks)]
    for what, value in values:
        if len(value) > MAX_IMPORTED_NAME_CHARS or not value.isprintable():
            return (f"the {what} {value[:80]!r} is not valid: at most "
                    f"{MAX_IMPORTED_NAME_CHARS} printable characters")
    return None


def test_received_names_are_checked_as_each_value_alone() -> None:
    rng = random.Random(10)
    refused = accepted = 0
    for _ in range(2000):
        wire = csn_to_wire(_instance(rng))
        expected = _plain_check(wire)
        if expected is None:
            node, service, checks = csn_from_wire(wire, "dc2", "default")
            assert (node.name, service.id, [c.check_id for c in checks]) == (
                wire.Node.Node, wire.Service.ID, [c.CheckID for c in wire.Checks])
            accepted += 1
        else:
            with pytest.raises(ValueError) as info:
                csn_from_wire(wire, "dc2", "default")
            assert str(info.value) == expected
            refused += 1
    assert refused > 200 and accepted > 200  # both ways were exercised


@pytest.mark.parametrize("reply", [_Reply(), _Reply(13, "upsert error: x", "x"),
                                   _Reply(3, "", None), _Reply(0, "only a message")])
@pytest.mark.parametrize(("url", "nonce"), [("type.googleapis.com/x", "0000001a"), ("", "")])
def test_acks_and_nacks_are_built_as_before(reply: _Reply, url: str, nonce: str) -> None:
    resp = ReplicationMessage.Response(ResourceURL=url, Nonce=nonce)
    request = ReplicationMessage.Request(ResourceURL=url, ResponseNonce=nonce)
    if not reply.ok:
        request.Error.CopyFrom(status_pb2.Status(code=reply.error_code,
                                                 message=reply.error_message))
    plain = ReplicationMessage(request=request)
    built = StreamSession._reply_message(resp, reply)
    assert built == plain
    assert built.WhichOneof("Payload") == "request"
    assert built.request.HasField("Error") == (not reply.ok)
    assert built.SerializeToString(deterministic=True) == plain.SerializeToString(
        deterministic=True)


def _outcome(loads: Any, text: object) -> tuple[str, str]:
    try:
        return "value", repr(loads(text))
    except Exception as exc:  # the same exception type and message
        return type(exc).__name__, str(exc)


def test_stored_rows_decode_as_json_loads_decodes_them() -> None:
    """``_loads`` (the C scanner when the text is exactly one JSON value) gives what
    ``json.loads`` gives: rows as encode_row writes them, and texts a foreign or corrupt file
    may hold (whitespace or data around the value, a BOM, bytes, truncation, NaN, deep
    nesting) with the same value or the same error."""
    rng = random.Random(10)
    texts: list[object] = [encode_row(_instance(rng).service) for _ in range(50)]
    texts += [encode_row(_instance(rng).node) for _ in range(50)]
    row = encode_row(_instance(rng).service)
    texts += [" " + row, row + " ", row + "\n", row + "x", row + row, "\ufeff" + row,
              row.encode(), row[:-1], "", "[", "{\"a\":", "NaN", "-Infinity", "1e400",
              '"\\ud800"', "[" * 100_000, "[]", "null", "3"]
    for text in texts:
        assert _outcome(_loads, text) == _outcome(json.loads, text), repr(text)[:80]
