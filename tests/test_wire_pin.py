"""The peer stream's wire pinned to Consul's own .proto text, and byte strings in upstream's
layout carried through peerkit in both directions.

One job: prove that what peerkit sends to a peer and reads from one is Consul's released layout
(specs/wire.md). The reference is upstream's .proto text kept as data in proto/upstream/ (source,
commits and licence in its README), never the reference document's summary. The test reads it
with a small parser of its own (message, field, oneof, enum and rpc declarations), so nothing of
peerkit's .proto files or generated code stands between the two sides of the comparison:

* every message and enum reachable from ``PeerStreamService`` and from the stream's payloads is
  compared, field by field (name, number, scalar or resolved message/enum type, label, oneof),
  enum value by enum value, rpc by rpc, with upstream's declarations;
* byte strings are built by hand from upstream's layout (field numbers and wire types read from
  the parsed text; ``encode_upstream``), handed to a running peerkit server, and what peerkit
  sends is taken apart the same way (``decode_upstream``) and checked against the rules of
  upstream's importer (replication.go, ``processResponse`` and ``handleUpsert``).

May import: the standard library, pytest, trio, protobuf, ``peerkit.proto``, ``peerkit.impl``
(codec, testing, transport) and ``peerkit.model.vocabulary``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from peerkit.impl.codec import csn_from_wire, csn_to_wire
from peerkit.impl.store import Check, CheckServiceNode, Node, Service
from peerkit.impl.testing import (
    ClientStream,
    Cluster,
    kind,
    open_message,
    open_raw_stream,
    receive_until,
    running_cluster,
    token_and_secret,
    until,
)
from peerkit.impl.transport import MemoryNetwork
from peerkit.proto import (  # type: ignore[import-not-found,unused-ignore]
    peering_pb2,
    peerstream_pb2,
    service_pb2,
    status_pb2,
)
from peerkit.proto.resources import (
    TYPE_URL_EXPORTED_SERVICE,
    TYPE_URL_EXPORTED_SERVICE_LIST,
    TYPE_URL_PEERING_TRUST_BUNDLE,
)

UPSTREAM = Path(__file__).resolve().parents[1] / "proto" / "upstream"
RM = peerstream_pb2.ReplicationMessage

# ---------------------------------------------------------------------------------------------
# Reading upstream's .proto text
# ---------------------------------------------------------------------------------------------

SCALARS = frozenset({"double", "float", "int32", "int64", "uint32", "uint64", "sint32", "sint64",
                     "fixed32", "fixed64", "sfixed32", "sfixed64", "bool", "string", "bytes"})


@dataclass(frozen=True)
class UField:
    name: str
    number: int
    type: str  # a scalar keyword, or the full name of a message or enum ("?T" if unresolved)
    label: str  # "singular", "repeated" or "map"
    oneof: str | None = None
    map_types: tuple[str, str] | None = None  # (key, value) of a map field


@dataclass
class UMessage:
    full_name: str
    fields: dict[int, UField] = field(default_factory=dict)


@dataclass(frozen=True)
class URpc:
    name: str
    input: str
    output: str
    client_streaming: bool
    server_streaming: bool


@dataclass
class Layout:
    """Everything declared in the parsed files, by full name."""

    messages: dict[str, UMessage] = field(default_factory=dict)
    enums: dict[str, dict[str, int]] = field(default_factory=dict)
    services: dict[str, dict[str, URpc]] = field(default_factory=dict)
    packages: set[str] = field(default_factory=set)


# google.protobuf.Any is imported by upstream's files, not declared in them; its two fields are
# the well-known type's (type_url = 1, value = 2), needed to build a Response by hand.
WELL_KNOWN = {"google.protobuf.Any": {1: UField("type_url", 1, "string", "singular"),
                                      2: UField("value", 2, "bytes", "singular")}}

_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\.?[A-Za-z_][\w.]*|-?\d+|[{}()<>;=,\[\]:]')


def _tokens(text: str) -> list[str]:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    return _TOKEN.findall(text)


class _Parser:
    """A recursive-descent reader of the proto3 declarations upstream's files use. It keeps
    names, numbers, types, labels, oneofs, enum values and rpcs, and skips options (including
    aggregate ones), imports and reserved statements."""

    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0
        self.package = ""
        # (scope, type name as written) per field, resolved once every file is read
        self.pending: list[tuple[UMessage, int, str, str]] = []
        self.pending_rpcs: list[tuple[dict[str, URpc], str, str]] = []

    def peek(self) -> str:
        return self.toks[self.i]

    def take(self, expected: str | None = None) -> str:
        tok = self.toks[self.i]
        if expected is not None and tok != expected:
            raise SyntaxError(f"expected {expected!r}, found {tok!r} (token {self.i})")
        self.i += 1
        return tok

    def skip_statement(self) -> None:
        depth = 0
        while True:
            tok = self.take()
            if tok in "{[(":
                depth += 1
            elif tok in "}])":
                depth -= 1
            elif tok == ";" and depth == 0:
                return

    def parse(self, layout: Layout) -> None:
        while self.i < len(self.toks):
            tok = self.peek()
            if tok == "package":
                self.take()
                self.package = self.take()
                self.take(";")
                layout.packages.add(self.package)
            elif tok in ("syntax", "import", "option"):
                self.skip_statement()
            elif tok == "message":
                self.message(layout, self.package)
            elif tok == "enum":
                self.enum(layout, self.package)
            elif tok == "service":
                self.service(layout)
            else:
                raise SyntaxError(f"unexpected {tok!r} at top level")

    def message(self, layout: Layout, scope: str) -> None:
        self.take("message")
        full = f"{scope}.{self.take()}"
        msg = layout.messages.setdefault(full, UMessage(full))
        self.take("{")
        while self.peek() != "}":
            tok = self.peek()
            if tok == "message":
                self.message(layout, full)
            elif tok == "enum":
                self.enum(layout, full)
            elif tok == "oneof":
                self.take()
                name = self.take()
                self.take("{")
                while self.peek() != "}":
                    if self.peek() == "option":
                        self.skip_statement()
                    else:
                        self.field(msg, oneof=name)
                self.take("}")
            elif tok in ("option", "reserved", "extensions"):
                self.skip_statement()
            else:
                self.field(msg)
        self.take("}")

    def field(self, msg: UMessage, oneof: str | None = None) -> None:
        label = "singular"
        map_types = None
        if self.peek() in ("repeated", "optional"):
            label = "repeated" if self.take() == "repeated" else "singular"
        if self.peek() == "map":
            self.take()
            self.take("<")
            key = self.take()
            self.take(",")
            value = self.take()
            self.take(">")
            label, type_name, map_types = "map", "map", (key, value)
        else:
            type_name = self.take()
        name = self.take()
        self.take("=")
        number = int(self.take())
        if self.peek() == "[":
            while self.take() != "]":
                pass
        self.take(";")
        msg.fields[number] = UField(name, number, type_name, label, oneof, map_types)
        if type_name not in SCALARS and type_name != "map":
            self.pending.append((msg, number, msg.full_name, type_name))

    def enum(self, layout: Layout, scope: str) -> None:
        self.take("enum")
        full = f"{scope}.{self.take()}"
        values = layout.enums.setdefault(full, {})
        self.take("{")
        while self.peek() != "}":
            if self.peek() in ("option", "reserved"):
                self.skip_statement()
                continue
            name = self.take()
            self.take("=")
            values[name] = int(self.take())
            if self.peek() == "[":
                while self.take() != "]":
                    pass
            self.take(";")
        self.take("}")

    def service(self, layout: Layout) -> None:
        self.take("service")
        full = f"{self.package}.{self.take()}"
        rpcs = layout.services.setdefault(full, {})
        self.take("{")
        while self.peek() != "}":
            if self.peek() == "option":
                self.skip_statement()
                continue
            self.take("rpc")
            name = self.take()
            self.take("(")
            client_streaming = self.peek() == "stream" and bool(self.take())
            request = self.take()
            self.take(")")
            self.take("returns")
            self.take("(")
            server_streaming = self.peek() == "stream" and bool(self.take())
            response = self.take()
            self.take(")")
            if self.peek() == "{":  # an options block
                depth = 0
                while True:
                    tok = self.take()
                    depth += tok == "{"
                    depth -= tok == "}"
                    if depth == 0:
                        break
            else:
                self.take(";")
            # types as written; read_upstream resolves them once every file is read
            rpcs[name] = URpc(name, request, response, client_streaming, server_streaming)
            self.pending_rpcs.append((rpcs, name, full))
        self.take("}")


# the well-known types upstream's files import (declared by protobuf itself, not copied)
WELL_KNOWN_NAMES = frozenset({"google.protobuf.Any", "google.protobuf.Timestamp",
                              "google.protobuf.Duration"})


def _resolve(layout: Layout, scope: str, name: str) -> str | None:
    """protobuf's scoping: a name is looked up from the innermost enclosing scope outwards, by
    its first component; a leading dot means fully qualified."""
    known = set(layout.messages) | set(layout.enums) | WELL_KNOWN_NAMES | {"google.protobuf"}
    prefixes = {p for pkg in layout.packages | {"google.protobuf"}
                for p in (".".join(pkg.split(".")[:k]) for k in range(1, len(pkg.split(".")) + 1))}
    if name.startswith("."):
        return name[1:] if name[1:] in known else None
    first = name.split(".")[0]
    parts = scope.split(".")
    for k in range(len(parts), -1, -1):
        base = ".".join(parts[:k])
        candidate = f"{base}.{first}" if base else first
        if candidate in known or candidate in prefixes:
            full = f"{base}.{name}" if base else name
            return full if full in known else None
    return None


def read_upstream(folder: Path = UPSTREAM) -> Layout:
    layout = Layout()
    parsers = []
    for path in sorted(folder.rglob("*.proto")):
        parser = _Parser(path.read_text(encoding="utf-8"))
        parser.parse(layout)
        parsers.append(parser)
    # resolve field types once every file's declarations are known
    for parser in parsers:
        for msg, number, scope, written in parser.pending:
            f = msg.fields[number]
            resolved = _resolve(layout, scope, written)
            msg.fields[number] = UField(f.name, f.number, resolved or f"?{written}", f.label,
                                        f.oneof, f.map_types)
        for rpcs, name, scope in parser.pending_rpcs:
            r = rpcs[name]
            rpcs[name] = URpc(name, _resolve(layout, scope, r.input) or f"?{r.input}",
                              _resolve(layout, scope, r.output) or f"?{r.output}",
                              r.client_streaming, r.server_streaming)
    return layout


@pytest.fixture(scope="module")
def upstream() -> Layout:
    return read_upstream()


# ---------------------------------------------------------------------------------------------
# Comparing peerkit's descriptors with it
# ---------------------------------------------------------------------------------------------

_SCALAR_OF = {getattr(FieldDescriptor, f"TYPE_{s.upper()}"): s for s in SCALARS}


def _peerkit_type(f: FieldDescriptor) -> str:
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        return str(f.message_type.full_name)
    if f.type == FieldDescriptor.TYPE_ENUM:
        return str(f.enum_type.full_name)
    return _SCALAR_OF[f.type]


def _is_map(f: FieldDescriptor) -> bool:
    return f.type == FieldDescriptor.TYPE_MESSAGE and f.message_type.GetOptions().map_entry


def wire_types(roots: list[Descriptor], enums: list[EnumDescriptor]
               ) -> tuple[dict[str, Descriptor], dict[str, EnumDescriptor]]:
    """Every message and enum reachable from ``roots`` through fields (nested types too),
    leaving out the well-known google.protobuf types and map entries (a map field is compared
    as a map, key and value types included)."""
    messages: dict[str, Descriptor] = {}
    found_enums = {e.full_name: e for e in enums}
    todo = list(roots)
    while todo:
        d = todo.pop()
        if (d.full_name in messages or d.full_name.startswith("google.protobuf.")
                or d.GetOptions().map_entry):
            continue
        messages[d.full_name] = d
        for f in d.fields:
            if f.type == FieldDescriptor.TYPE_MESSAGE:
                todo.append(f.message_type)
            elif f.type == FieldDescriptor.TYPE_ENUM:
                found_enums[f.enum_type.full_name] = f.enum_type
    return messages, found_enums


def differences(layout: Layout, messages: dict[str, Descriptor],
                enums: dict[str, EnumDescriptor]) -> list[str]:
    """Every way peerkit's messages and enums differ from upstream's declarations; peerkit may
    leave upstream's fields out (a subset), nothing else."""
    out: list[str] = []
    for name, d in sorted(messages.items()):
        u = layout.messages.get(name)
        if u is None:
            out.append(f"{name}: no such message upstream")
            continue
        for f in d.fields:
            where = f"{name}.{f.name} = {f.number}"
            uf = u.fields.get(f.number)
            if uf is None:
                out.append(f"{where}: upstream has no field {f.number}")
                continue
            if uf.name != f.name:
                out.append(f"{where}: upstream names field {f.number} {uf.name!r}")
            if _is_map(f):
                key, value = f.message_type.fields_by_name["key"], f.message_type.fields_by_name[
                    "value"]
                if uf.label != "map" or uf.map_types != (_peerkit_type(key), _peerkit_type(value)):
                    out.append(f"{where}: peerkit has a map, upstream {uf.label} {uf.type}")
                continue
            label = "repeated" if f.is_repeated else "singular"
            if label != uf.label:
                out.append(f"{where}: label {label}, upstream {uf.label}")
            if _peerkit_type(f) != uf.type:
                out.append(f"{where}: type {_peerkit_type(f)}, upstream {uf.type}")
            oneof = f.containing_oneof.name if f.containing_oneof is not None else None
            if oneof != uf.oneof:
                out.append(f"{where}: oneof {oneof}, upstream {uf.oneof}")
    for name, e in sorted(enums.items()):
        values = {v.name: v.number for v in e.values}
        if name not in layout.enums:
            out.append(f"{name}: no such enum upstream")
        elif values != layout.enums[name]:
            out.append(f"{name}: values {values}, upstream {layout.enums[name]}")
    return out


def rpc_differences(layout: Layout, service: Any) -> list[str]:
    out: list[str] = []
    upstream_rpcs = layout.services.get(service.full_name)
    if upstream_rpcs is None:
        return [f"{service.full_name}: no such service upstream"]
    for m in service.methods:
        u = upstream_rpcs.get(m.name)
        ours = URpc(m.name, m.input_type.full_name, m.output_type.full_name,
                    m.client_streaming, m.server_streaming)
        if u != ours:
            out.append(f"{service.full_name}.{m.name}: {ours}, upstream {u}")
    return out


PEER_STREAM = peerstream_pb2.DESCRIPTOR.services_by_name["PeerStreamService"]
# What crosses between clusters: the stream's RPCs, and the payloads a Response carries (the
# LeaderAddress detail of a follower's refusal too).
ROOTS = [
    *(m.input_type for m in PEER_STREAM.methods),
    *(m.output_type for m in PEER_STREAM.methods),
    peerstream_pb2.ExportedService.DESCRIPTOR,
    peerstream_pb2.ExportedServiceList.DESCRIPTOR,
    peering_pb2.PeeringTrustBundle.DESCRIPTOR,
    peerstream_pb2.LeaderAddress.DESCRIPTOR,
]

PINNED_MESSAGES = {
    "hashicorp.consul.internal.peerstream.ReplicationMessage",
    "hashicorp.consul.internal.peerstream.ReplicationMessage.Open",
    "hashicorp.consul.internal.peerstream.ReplicationMessage.Request",
    "hashicorp.consul.internal.peerstream.ReplicationMessage.Response",
    "hashicorp.consul.internal.peerstream.ReplicationMessage.Terminated",
    "hashicorp.consul.internal.peerstream.ReplicationMessage.Heartbeat",
    "hashicorp.consul.internal.peerstream.ExchangeSecretRequest",
    "hashicorp.consul.internal.peerstream.ExchangeSecretResponse",
    "hashicorp.consul.internal.peerstream.ExportedService",
    "hashicorp.consul.internal.peerstream.ExportedServiceList",
    "hashicorp.consul.internal.peerstream.LeaderAddress",
    "hashicorp.consul.internal.peering.RemoteInfo",
    "hashicorp.consul.internal.peering.PeeringTrustBundle",
    "hashicorp.consul.internal.status.Status",
    "hashicorp.consul.internal.service.CheckServiceNode",
    "hashicorp.consul.internal.service.Node",
    "hashicorp.consul.internal.service.NodeService",
    "hashicorp.consul.internal.service.HealthCheck",
}


def test_the_parser_reads_upstream_declarations(upstream: Layout) -> None:
    # a few facts read straight off the copied text, so a parser that reads nothing cannot pass
    node = upstream.messages["hashicorp.consul.internal.service.Node"].fields
    assert (node[2].name, node[2].type, node[8].name, node[9].name) == (
        "Node", "string", "Partition", "PeerName")
    assert node[5] == UField("TaggedAddresses", 5, "map", "map", None, ("string", "string"))
    assert node[7].type == "?common.RaftIndex"  # pbcommon is not copied: left unresolved
    request = upstream.messages[
        "hashicorp.consul.internal.peerstream.ReplicationMessage.Request"].fields
    assert request[5] == UField("Error", 5, "hashicorp.consul.internal.status.Status", "singular")
    assert 4 not in request
    payload = upstream.messages["hashicorp.consul.internal.peerstream.ReplicationMessage"].fields
    assert {f.number: f.oneof for f in payload.values()} == dict.fromkeys(range(1, 6), "Payload")
    assert upstream.enums["hashicorp.consul.internal.peerstream.Operation"] == {
        "OPERATION_UNSPECIFIED": 0, "OPERATION_UPSERT": 1}
    rpcs = upstream.services["hashicorp.consul.internal.peerstream.PeerStreamService"]
    assert rpcs["StreamResources"].client_streaming and rpcs["StreamResources"].server_streaming


def test_every_message_peerkit_sends_or_reads_is_pinned() -> None:
    messages, enums = wire_types(ROOTS, [])
    assert set(messages) == PINNED_MESSAGES
    assert set(enums) == {"hashicorp.consul.internal.peerstream.Operation"}


def test_peer_stream_wire_matches_upstream(upstream: Layout) -> None:
    messages, enums = wire_types(ROOTS, [])
    assert differences(upstream, messages, enums) == []
    assert rpc_differences(upstream, PEER_STREAM) == []


PEERING_SERVICE = peering_pb2.DESCRIPTOR.services_by_name["PeeringService"]

# PeeringService is the operator's API of one cluster (Consul's agent calls it; it never crosses
# between clusters), so it is not part of what a peer must read. It is compared all the same, so
# that every place where peerkit's operator API differs from upstream's is written down here,
# and a change in either shows.
KNOWN_PEERING_SERVICE_DIFFERENCES = {
    "hashicorp.consul.internal.peering.Peering.ImportedServiceCount = 13: upstream names field 13 "
    "'StreamStatus'":
        "peerkit keeps the 2022 released Peering (reference §6.2): counts at 13 and 14",
    "hashicorp.consul.internal.peering.Peering.ImportedServiceCount = 13: type uint64, upstream "
    "hashicorp.consul.internal.peering.StreamStatus": "the same field",
    "hashicorp.consul.internal.peering.Peering.ExportedServiceCount = 14: upstream has no field 14":
        "the same choice",
    "hashicorp.consul.internal.peering.PeeringDeleteRequest.Datacenter = 3: upstream has no "
    "field 3": "the reference's only recorded numbering; accepted and ignored",
    "hashicorp.consul.internal.peering.PeeringListRequest.Datacenter = 2: upstream has no field 2":
        "likewise",
    "hashicorp.consul.internal.peering.PeeringReadRequest.Datacenter = 3: upstream has no field 3":
        "likewise",
    "hashicorp.consul.internal.peering.TrustBundleReadRequest.Datacenter = 3: upstream has no "
    "field 3": "likewise",
}


def test_peering_service_differs_from_upstream_only_where_written_down(upstream: Layout) -> None:
    roots = [*(m.input_type for m in PEERING_SERVICE.methods),
             *(m.output_type for m in PEERING_SERVICE.methods)]
    messages, enums = wire_types(roots, [peering_pb2.PeeringState.DESCRIPTOR])
    assert set(differences(upstream, messages, enums)) == set(KNOWN_PEERING_SERVICE_DIFFERENCES)
    assert rpc_differences(upstream, PEERING_SERVICE) == []


def _doctored(edit: Any) -> tuple[dict[str, Descriptor], dict[str, EnumDescriptor]]:
    """peerkit's service.proto and peerstream.proto with one edit, in a pool of their own."""
    pool = descriptor_pool.DescriptorPool()
    from google.protobuf import any_pb2, timestamp_pb2
    for module in (any_pb2, timestamp_pb2, status_pb2, peering_pb2, service_pb2, peerstream_pb2):
        fdp = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(fdp)
        edit(fdp)
        pool.Add(fdp)
    es = pool.FindMessageTypeByName("hashicorp.consul.internal.peerstream.ExportedService")
    rm = pool.FindMessageTypeByName("hashicorp.consul.internal.peerstream.ReplicationMessage")
    return wire_types([es, rm], [])


def _edit_field(message: str, field_name: str, **changes: Any) -> Any:
    def edit(fdp: descriptor_pb2.FileDescriptorProto) -> None:
        for m in fdp.message_type:
            if m.name == message:
                for f in m.field:
                    if f.name == field_name:
                        for key, value in changes.items():
                            setattr(f, key, value)
    return edit


@pytest.mark.parametrize(("edit", "expected"), [
    (_edit_field("NodeService", "Port", number=6),
     "hashicorp.consul.internal.service.NodeService.Port = 6: upstream names field 6 'Meta'"),
    (_edit_field("Node", "Node", name="Name", json_name="Name"),
     "hashicorp.consul.internal.service.Node.Name = 2: upstream names field 2 'Node'"),
    (_edit_field("NodeService", "Port", type=FieldDescriptor.TYPE_UINT32),
     "hashicorp.consul.internal.service.NodeService.Port = 7: type uint32, upstream int32"),
    (_edit_field("HealthCheck", "Status", number=40),
     "hashicorp.consul.internal.service.HealthCheck.Status = 40: upstream has no field 40"),
    (_edit_field("NodeService", "Tags", label=FieldDescriptor.LABEL_OPTIONAL),
     "hashicorp.consul.internal.service.NodeService.Tags = 4: label singular, upstream repeated"),
])
def test_the_comparison_sees_a_changed_field(edit: Any, expected: str, upstream: Layout) -> None:
    messages, enums = _doctored(edit)
    assert expected in differences(upstream, messages, enums)


def test_the_comparison_sees_an_extra_enum_value(upstream: Layout) -> None:
    def add_delete(fdp: descriptor_pb2.FileDescriptorProto) -> None:
        for e in fdp.enum_type:
            if e.name == "Operation":
                e.value.add(name="OPERATION_DELETE", number=2)
    messages, enums = _doctored(add_delete)
    assert any(d.startswith("hashicorp.consul.internal.peerstream.Operation: values")
               for d in differences(upstream, messages, enums))


# ---------------------------------------------------------------------------------------------
# Byte strings in upstream's layout, built and taken apart without peerkit's descriptors
# ---------------------------------------------------------------------------------------------

_VARINT = {"int32", "int64", "uint32", "uint64", "bool"}


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32/int64: ten bytes of two's complement, as protobuf
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _fields_of(layout: Layout, full_name: str) -> dict[int, UField]:
    if full_name in WELL_KNOWN:
        return WELL_KNOWN[full_name]
    return layout.messages[full_name].fields


def encode_upstream(layout: Layout, full_name: str, values: dict[str, Any]) -> bytes:
    """Serialize ``values`` (field name -> value; a dict for a message, a list for a repeated
    field, a dict for a map, bytes for a message of a type not copied) by the field numbers and
    types of upstream's declarations, in field-number order, as protobuf writes them."""
    by_name = {f.name: f for f in _fields_of(layout, full_name).values()}
    out = bytearray()
    for name in sorted(values, key=lambda n: by_name[n].number):
        f = by_name[name]
        value = values[name]
        if f.label == "map":
            key_type, value_type = f.map_types or ("", "")
            assert (key_type, value_type) == ("string", "string"), "only string maps are built"
            for k, v in value.items():
                entry = _key(1, 2) + _varint(len(k.encode())) + k.encode()
                entry += _key(2, 2) + _varint(len(v.encode())) + v.encode()
                out += _key(f.number, 2) + _varint(len(entry)) + entry
            continue
        for item in (value if f.label == "repeated" else [value]):
            out += _encode_one(layout, f, item)
    return bytes(out)


def _encode_one(layout: Layout, f: UField, value: Any) -> bytes:
    if f.type in _VARINT:
        return _key(f.number, 0) + _varint(int(value))
    if f.type in ("string", "bytes"):
        data = value.encode() if isinstance(value, str) else bytes(value)
        return _key(f.number, 2) + _varint(len(data)) + data
    if f.type in layout.enums:
        number = layout.enums[f.type][value] if isinstance(value, str) else int(value)
        return _key(f.number, 0) + _varint(number)
    if isinstance(value, bytes):  # a message of a type that is not copied, given as bytes
        return _key(f.number, 2) + _varint(len(value)) + value
    data = encode_upstream(layout, f.type, value)
    return _key(f.number, 2) + _varint(len(data)) + data


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    shift = n = 0
    while True:
        byte = data[i]
        i += 1
        n |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return n, i


def decode_upstream(layout: Layout, full_name: str, data: bytes) -> dict[str, Any]:
    """Take ``data`` apart by upstream's declarations: field name -> value (lists for repeated
    fields, dicts for messages, enum names); a field number upstream does not declare comes
    back as "#N", so a stray field is seen. Fields absent from the bytes are absent here: a
    reader sees them as their zero values."""
    fields = _fields_of(layout, full_name)
    out: dict[str, Any] = {}
    i = 0
    while i < len(data):
        key, i = _read_varint(data, i)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            raw, i = _read_varint(data, i)
            value: Any = raw
        elif wire_type == 2:
            length, i = _read_varint(data, i)
            value, i = data[i:i + length], i + length
        else:
            raise AssertionError(f"{full_name}: wire type {wire_type} is not used by this layout")
        f = fields.get(number)
        if f is None:
            out[f"#{number}"] = value
            continue
        if f.type == "string":
            value = value.decode()
        elif f.type == "int32":
            value = value - (1 << 64) if value >= 1 << 63 else value
        elif f.type == "bool":
            value = bool(value)
        elif f.type in layout.enums:
            names = {v: k for k, v in layout.enums[f.type].items()}
            value = names.get(value, value)
        elif f.type in layout.messages or f.type in WELL_KNOWN:
            value = decode_upstream(layout, f.type, value)
        if f.label in ("repeated", "map"):
            out.setdefault(f.name, []).append(value)
        else:
            out[f.name] = value
    return out


# A service instance as a Consul 1.14+ exporter sends it: an ordinary service (Kind empty, so
# absent from the bytes), a node ID, tagged addresses, meta, a raft index, a node check and a
# service check with the fields Consul's catalog fills. RaftIndex and Weights are messages of
# pbcommon / pbservice files that are not copied; their bytes are written by hand (RaftIndex:
# CreateIndex = 1, ModifyIndex = 2; Weights: Passing = 1, Warning = 2), which only a reader
# that skips undeclared fields gets past.
CONSUL_INSTANCE: dict[str, Any] = {
    "Node": {
        "ID": "5b8f6a2e-7c1d-4e0a-9f3b-2d6c8e1a4b70",
        "Node": "node-a",
        "Address": "10.0.0.1",
        "Datacenter": "dc2",
        "TaggedAddresses": {"lan": "10.0.0.1", "wan": "192.0.2.1"},
        "Meta": {"consul-network-segment": ""},
        "RaftIndex": _key(1, 0) + _varint(12) + _key(2, 0) + _varint(40),
    },
    "Service": {
        "ID": "web-1",
        "Service": "web",
        "Tags": ["v1", "primary"],
        "Meta": {"version": "1.2"},
        "Port": 8080,
        "Weights": _key(1, 0) + _varint(1) + _key(2, 0) + _varint(1),
        "EnableTagOverride": True,
        "RaftIndex": _key(1, 0) + _varint(13) + _key(2, 0) + _varint(41),
    },
    "Checks": [
        {"Node": "node-a", "CheckID": "serfHealth", "Name": "Serf Health Status",
         "Status": "passing", "Output": "Agent alive and reachable", "Type": ""},
        {"Node": "node-a", "CheckID": "service:web-1", "Name": "Service 'web' check",
         "Status": "critical", "ServiceID": "web-1", "ServiceName": "web",
         "ServiceTags": ["v1", "primary"], "Type": "http", "Interval": "10s", "Timeout": "1s"},
    ],
}


def test_a_consul_instance_decodes_into_peerkits_records(upstream: Layout) -> None:
    data = encode_upstream(upstream, "hashicorp.consul.internal.service.CheckServiceNode",
                           CONSUL_INSTANCE)
    node, service, checks = csn_from_wire(service_pb2.CheckServiceNode.FromString(data),
                                          "dc2", "default")
    assert node == Node(name="node-a", address="10.0.0.1", partition="default", peer_name="dc2")
    assert service == Service(id="web-1", name="web", port=8080, tags=("v1", "primary"),
                              node="node-a", partition="default", peer_name="dc2")
    assert [(c.check_id, c.name, c.status, c.service_id) for c in checks] == [
        ("serfHealth", "Serf Health Status", "passing", ""),
        ("service:web-1", "Service 'web' check", "critical", "web-1"),
    ]


def test_peerkits_instance_decodes_under_upstreams_layout(upstream: Layout) -> None:
    node = Node(name="node-a", address="10.0.0.1")
    csn = CheckServiceNode(
        node=node,
        service=Service(id="web-1", name="web", port=8080, tags=("v1",), node="node-a"),
        checks=(Check(check_id="serfHealth", name="Serf", node="node-a"),
                Check(check_id="service:web-1", status="warning", service_id="web-1",
                      node="node-a")),
    )
    decoded = decode_upstream(upstream, "hashicorp.consul.internal.service.CheckServiceNode",
                              csn_to_wire(csn).SerializeToString())
    assert decoded == {
        "Node": {"Node": "node-a", "Address": "10.0.0.1", "Partition": "default"},
        "Service": {"ID": "web-1", "Service": "web", "Tags": ["v1"], "Port": 8080},
        "Checks": [
            {"Node": "node-a", "CheckID": "serfHealth", "Name": "Serf", "Status": "passing"},
            {"Node": "node-a", "CheckID": "service:web-1", "Status": "warning",
             "ServiceID": "web-1", "ServiceName": "web"},
        ],
    }  # no "ID" (peerkit has no node IDs), no "Kind": an ordinary service to Consul


# ---------------------------------------------------------------------------------------------
# Through a running server
# ---------------------------------------------------------------------------------------------


@pytest.fixture
async def dc1() -> AsyncIterator[Cluster]:
    async with running_cluster(MemoryNetwork(), "dc1", "dc1:8502") as cluster:
        yield cluster


async def _accepted_stream(dc1: Cluster) -> ClientStream:
    """A stream to dc1 opened by hand (the test plays dc2, the dialer) and accepted."""
    peer_id, secret = await token_and_secret(dc1)
    stream = await open_raw_stream(dc1.client)
    await stream.send(open_message(peer_id, secret))
    await trio.testing.wait_all_tasks_blocked()
    return stream


def _consul_response(upstream: Layout, nonce: str, service: str,
                     instances: list[dict[str, Any]]) -> bytes:
    """A whole ReplicationMessage carrying an exported service, every byte from upstream's
    layout, as a Consul 1.14+ exporter writes it (replication.go, makeServiceResponse)."""
    payload = encode_upstream(upstream, "hashicorp.consul.internal.peerstream.ExportedService",
                              {"Nodes": instances} if instances else {})
    return encode_upstream(upstream, "hashicorp.consul.internal.peerstream.ReplicationMessage", {
        "response": {
            "Nonce": nonce,
            "ResourceURL": TYPE_URL_EXPORTED_SERVICE,
            "ResourceID": service,
            "Resource": {"type_url": TYPE_URL_EXPORTED_SERVICE, "value": payload},
            "operation": "OPERATION_UPSERT",
        },
    })


async def test_a_consul_service_is_imported_and_acked(
    autojump_clock: trio.testing.MockClock, dc1: Cluster, upstream: Layout
) -> None:
    stream = await _accepted_stream(dc1)
    await stream.send(RM.FromString(_consul_response(upstream, "00000007", "web",
                                                     [CONSUL_INSTANCE])))
    ack = await receive_until(stream, lambda m: kind(m) == "request"
                              and m.request.ResponseNonce == "00000007")
    assert not ack.request.HasField("Error"), ack.request.Error.message
    dump = dc1.store.dump()
    assert [(n.name, n.address) for n in dump.nodes if n.peer_name == "dc2"] == [
        ("node-a", "10.0.0.1")]
    assert [(s.id, s.name, s.port, s.tags) for s in dump.services if s.peer_name == "dc2"] == [
        ("web-1", "web", 8080, ("v1", "primary"))]
    assert sorted((c.check_id, c.status, c.service_id) for c in dump.checks
                  if c.peer_name == "dc2") == [
        ("serfHealth", "passing", ""), ("service:web-1", "critical", "web-1")]
    # Consul's removal: the same service with no instances left (no DELETE since 1.14)
    await stream.send(RM.FromString(_consul_response(upstream, "00000008", "web", [])))
    ack = await receive_until(stream, lambda m: kind(m) == "request"
                              and m.request.ResponseNonce == "00000008")
    assert not ack.request.HasField("Error"), ack.request.Error.message
    assert dc1.imported("dc2") == []
    stream.cancel()


def consul_importer_verdict(upstream: Layout, data: bytes) -> str | None:
    """What a Consul 1.14+ importer makes of one ReplicationMessage: None to ACK (or nothing to
    answer), else the reason it NACKs. The rules are upstream's processResponse and handleUpsert
    (agent/grpc-external/services/peerstream/replication.go): a known type URL, a nonce, the
    operation UPSERT with content, an Any whose type URL is the ResourceURL, and a payload that
    decodes as the message of that URL; here also: no field upstream does not declare."""
    msg = decode_upstream(upstream, "hashicorp.consul.internal.peerstream.ReplicationMessage",
                          data)
    if "response" not in msg:
        return None
    resp = msg["response"]
    payload_types = {
        TYPE_URL_EXPORTED_SERVICE: "hashicorp.consul.internal.peerstream.ExportedService",
        TYPE_URL_EXPORTED_SERVICE_LIST: "hashicorp.consul.internal.peerstream.ExportedServiceList",
        TYPE_URL_PEERING_TRUST_BUNDLE: "hashicorp.consul.internal.peering.PeeringTrustBundle",
    }
    url = resp.get("ResourceURL", "")
    if url not in payload_types:
        return f"received response for unknown resource type {url!r}"
    if not resp.get("Nonce"):
        return "received response without a nonce"
    if resp.get("operation", "OPERATION_UNSPECIFIED") != "OPERATION_UPSERT":
        return f"unsupported operation: {resp.get('operation', 'OPERATION_UNSPECIFIED')}"
    if "Resource" not in resp:
        return "received upsert response with no content"
    if resp["Resource"].get("type_url") != url:
        return "mismatched resourceURL and Any typeUrl"
    payload = decode_upstream(upstream, payload_types[url], resp["Resource"].get("value", b""))
    stray = list(_stray_fields(payload))
    return f"fields upstream does not declare: {stray}" if stray else None


def _stray_fields(decoded: Any) -> Iterator[str]:
    if isinstance(decoded, dict):
        for key, value in decoded.items():
            if key.startswith("#"):
                yield key
            yield from _stray_fields(value)
    elif isinstance(decoded, list):
        for item in decoded:
            yield from _stray_fields(item)


async def test_a_consul_importer_accepts_everything_peerkit_sends(
    autojump_clock: trio.testing.MockClock, dc1: Cluster, upstream: Layout
) -> None:
    await dc1.client.register_service("n1", "api", port=80)
    await dc1.client.export_service("api", "dc2")
    stream = await _accepted_stream(dc1)
    sent: list[bytes] = []

    async def next_response() -> dict[str, Any]:
        msg = await receive_until(stream, lambda m: kind(m) == "response")
        data = msg.SerializeToString()
        sent.append(data)
        decoded = decode_upstream(
            upstream, "hashicorp.consul.internal.peerstream.ReplicationMessage", data)
        return dict(decoded["response"])

    bundle, listed, api = [await next_response() for _ in range(3)]
    assert decode_upstream(upstream, "hashicorp.consul.internal.peering.PeeringTrustBundle",
                           bundle["Resource"]["value"])["TrustDomain"] == "dc1.peerkit.local"
    assert decode_upstream(upstream, "hashicorp.consul.internal.peerstream.ExportedServiceList",
                           listed["Resource"]["value"]) == {"Services": ["api"]}
    assert api["operation"] == "OPERATION_UPSERT" and api["ResourceID"] == "api"
    nodes = decode_upstream(upstream, "hashicorp.consul.internal.peerstream.ExportedService",
                            api["Resource"]["value"])["Nodes"]
    assert [(n["Node"]["Node"], n["Service"]["ID"], n["Service"]["Service"],
             n["Service"]["Port"], "Kind" in n["Service"]) for n in nodes] == [
        ("n1", "api", "api", 80, False)]
    assert [(c["Node"], c["CheckID"], c["Status"], c["ServiceID"], c["ServiceName"])
            for c in nodes[0]["Checks"]] == [("n1", "service:api", "passing", "api", "api")]
    # the service goes away: an UPSERT with no instances, which Consul's importer applies as
    # the removal (handleUpdateService with no nodes)
    await dc1.client.unexport_service("api", "dc2")
    gone = await next_response()
    assert (gone["ResourceID"], gone["operation"]) == ("api", "OPERATION_UPSERT")
    # (an empty payload is an Any with no value bytes at all)
    assert decode_upstream(upstream, "hashicorp.consul.internal.peerstream.ExportedService",
                           gone["Resource"].get("value", b"")) == {}
    assert [consul_importer_verdict(upstream, data) for data in sent] == [None] * len(sent)
    # the verdict can say no: the 1.13 layout's DELETE is refused by name
    refused = RM.FromString(sent[-1])
    refused.response.operation = 2  # type: ignore[assignment]
    assert consul_importer_verdict(upstream, refused.SerializeToString()) == (
        "unsupported operation: 2")
    stream.cancel()


async def test_subscriptions_and_acks_decode_under_upstreams_layout(
    autojump_clock: trio.testing.MockClock, dc1: Cluster, upstream: Layout
) -> None:
    stream = await _accepted_stream(dc1)
    requests = []
    await stream.send(RM.FromString(_consul_response(upstream, "00000009", "web",
                                                     [CONSUL_INSTANCE])))
    while not any(r.get("ResponseNonce") == "00000009" for r in requests):
        msg = await receive_until(stream, lambda m: kind(m) == "request")
        requests.append(decode_upstream(
            upstream, "hashicorp.consul.internal.peerstream.ReplicationMessage",
            msg.SerializeToString())["request"])
    # upstream's three subscriptions (realHandleStream), the exported-service list included
    assert {r["ResourceURL"] for r in requests if "ResponseNonce" not in r} == {
        TYPE_URL_EXPORTED_SERVICE, TYPE_URL_EXPORTED_SERVICE_LIST, TYPE_URL_PEERING_TRUST_BUNDLE}
    assert requests[-1] == {"ResponseNonce": "00000009", "ResourceURL": TYPE_URL_EXPORTED_SERVICE}
    assert not list(_stray_fields(requests))
    await until(dc1.store, lambda: dc1.imported("dc2") == ["web"])
    stream.cancel()
