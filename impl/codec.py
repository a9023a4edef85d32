"""Conversions between the store's records and the wire messages, and the peering token.

One job: everything that turns one representation into another, in one place: store records ↔
protobuf messages (peerings, trust bundles, catalog instances), timestamps, the peering token
(base64 of a JSON document), and the full gRPC method names of the services peerkit serves.

Catalog instances have two wire forms. What crosses the peer stream is Consul's layout
(``service_pb2``, package ``hashicorp.consul.internal.service``; ``csn_to_wire`` /
``csn_from_wire``, specs/wire.md), so that a Consul peer reads what peerkit exports and peerkit
reads what Consul exports. peerkit's control service keeps its own small messages
(``catalog_pb2``; ``csn_to_pb`` / ``csn_from_pb``).

The token is ``base64(JSON)`` with the keys ``CA`` (null for a plaintext server, else the list
of PEM root certificates the dialer verifies the acceptor with), ``ServerAddresses``
(non-empty list of "host:port"), ``ServerName``, ``PeerID`` (the acceptor's peering ID) and
``EstablishmentSecret``; ``decode_token`` validates all of them and raises
``TokenError`` (a ValueError) with a readable reason.

May import: the standard library, protobuf, ``peerkit.proto``, ``peerkit.model.vocabulary`` and
``.store`` (records only).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import FileDescriptor

from peerkit.model.vocabulary import PeeringState
from peerkit.proto import admin_pb2, catalog_pb2, peering_pb2, peerstream_pb2, service_pb2

from .store import Check, CheckServiceNode, Node, Peering, Service, TrustBundle
from .store.base import ImportedInstance

__all__ = [
    "ADMIN_METHODS",
    "MAX_TOKEN_ADDRESSES",
    "MAX_TOKEN_CAS",
    "MAX_TOKEN_CHARS",
    "METHOD_EXCHANGE_SECRET",
    "METHOD_STREAM_RESOURCES",
    "PEERING_METHODS",
    "TEST_HOOK_METHODS",
    "PeeringToken",
    "TokenError",
    "address_problem",
    "bundle_to_pb",
    "csn_from_pb",
    "csn_from_wire",
    "csn_to_pb",
    "csn_to_wire",
    "decode_token",
    "encode_token",
    "from_timestamp",
    "instances_to_pb",
    "is_pem_certificates",
    "method_name",
    "peering_to_pb",
    "to_timestamp",
]


def method_name(file: FileDescriptor, service: str, method: str) -> str:
    """The full gRPC method name "/package.Service/Method", checked against the descriptor."""
    svc = file.services_by_name[service]
    if method not in svc.methods_by_name:
        raise KeyError(f"{service} has no method {method}")
    return f"/{svc.full_name}/{method}"


METHOD_STREAM_RESOURCES = method_name(
    peerstream_pb2.DESCRIPTOR, "PeerStreamService", "StreamResources"
)
METHOD_EXCHANGE_SECRET = method_name(
    peerstream_pb2.DESCRIPTOR, "PeerStreamService", "ExchangeSecret"
)
PEERING_METHODS: dict[str, str] = {
    m: method_name(peering_pb2.DESCRIPTOR, "PeeringService", m)
    for m in (
        "GenerateToken",
        "Establish",
        "PeeringRead",
        "PeeringList",
        "PeeringDelete",
        "PeeringWrite",
        "TrustBundleRead",
        "TrustBundleListByService",
    )
}
ADMIN_METHODS: dict[str, str] = {
    m: method_name(admin_pb2.DESCRIPTOR, "AdminService", m)
    for m in (
        "RegisterService",
        "DeregisterService",
        "ExportService",
        "UnexportService",
        "ReadCatalog",
        "Status",
    )
}
#: the control service's optional part (admin.proto's TestHookService; off unless enabled)
TEST_HOOK_METHODS: dict[str, str] = {
    m: method_name(admin_pb2.DESCRIPTOR, "TestHookService", m)
    for m in ("ResetStream", "Failover", "HoldDeletion", "HoldReceive", "DeletionRoutines")
}


# --------------------------------------------------------------------------------------------
# Timestamps
# --------------------------------------------------------------------------------------------


def to_timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(round(seconds * 1e9))
    return ts


def from_timestamp(ts: timestamp_pb2.Timestamp) -> float | None:
    """Seconds since the epoch, or None for an unset / zero timestamp (upstream's "zero")."""
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return float(ts.ToNanoseconds()) / 1e9


# --------------------------------------------------------------------------------------------
# Peerings and trust bundles
# --------------------------------------------------------------------------------------------


def peering_to_pb(
    p: Peering,
    state: PeeringState | None = None,
    *,
    imported_services: int = 0,
    exported_services: int = 0,
) -> peering_pb2.Peering:
    """The wire form of a row; ``state`` overrides the stored state (the read view)."""
    msg = peering_pb2.Peering(
        ID=p.id,
        Name=p.name,
        Partition=p.partition,
        Meta=dict(p.meta),
        State=int(p.state if state is None else state),  # type: ignore[arg-type]
        PeerID=p.peer_id,
        PeerCAPems=list(p.peer_ca_pems),
        PeerServerName=p.peer_server_name,
        PeerServerAddresses=list(p.peer_server_addresses),
        CreateIndex=p.create_index,
        ModifyIndex=p.modify_index,
        ImportedServiceCount=imported_services,
        ExportedServiceCount=exported_services,
    )
    if p.deleted_at is not None:
        msg.DeletedAt.CopyFrom(to_timestamp(p.deleted_at))
    return msg


def bundle_to_pb(b: TrustBundle) -> peering_pb2.PeeringTrustBundle:
    return peering_pb2.PeeringTrustBundle(
        TrustDomain=b.trust_domain,
        PeerName=b.peer_name,
        Partition=b.partition,
        RootPEMs=list(b.root_pems),
        CreateIndex=b.create_index,
        ModifyIndex=b.modify_index,
    )


# --------------------------------------------------------------------------------------------
# Catalog
# --------------------------------------------------------------------------------------------


def csn_to_pb(csn: CheckServiceNode) -> catalog_pb2.CheckServiceNode:
    """One instance in the control service's layout (admin.proto), as stored."""
    return catalog_pb2.CheckServiceNode(
        Node=catalog_pb2.Node(
            Name=csn.node.name,
            Address=csn.node.address,
            Partition=csn.node.partition,
            PeerName=csn.node.peer_name,
        ),
        Service=catalog_pb2.Service(
            ID=csn.service.id,
            Name=csn.service.name,
            Port=csn.service.port,
            Tags=list(csn.service.tags),
            PeerName=csn.service.peer_name,
        ),
        Checks=[
            catalog_pb2.HealthCheck(
                CheckID=c.check_id,
                Name=c.name,
                Status=c.status,
                ServiceID=c.service_id,
                PeerName=c.peer_name,
            )
            for c in csn.checks
        ],
    )


MAX_IMPORTED_NAME_CHARS: Final = 256


def csn_from_pb(
    msg: catalog_pb2.CheckServiceNode, peer_name: str, partition: str
) -> ImportedInstance:
    """An instance in peerkit's control-service layout, stamped with the importer's
    ``peer_name`` and ``partition``.

    Raises ValueError / TypeError (from the record constructors) for a malformed instance,
    and ValueError for a name, ID or tag with control characters or longer than
    ``MAX_IMPORTED_NAME_CHARS`` (a peer's data ends up in logs and in the operator's output)."""
    if not msg.HasField("Node") or not msg.HasField("Service"):
        raise ValueError("an exported instance needs a Node and a Service")
    return _imported_instance(
        node_name=msg.Node.Name,
        address=msg.Node.Address,
        service_id=msg.Service.ID,
        service_name=msg.Service.Name,
        port=msg.Service.Port,
        tags=tuple(msg.Service.Tags),
        checks=[(c.CheckID, c.Name, c.Status, c.ServiceID) for c in msg.Checks],
        peer_name=peer_name,
        partition=partition,
    )


def _imported_instance(
    *,
    node_name: str,
    address: str,
    service_id: str,
    service_name: str,
    port: int,
    tags: tuple[str, ...],
    checks: list[tuple[str, str, str, str]],
    peer_name: str,
    partition: str,
) -> ImportedInstance:
    """Validate a received instance and build its records; checks are (ID, name, status,
    service ID). The bounds apply to both wire forms alike."""
    values = [node_name, address, service_id, service_name, *tags]
    for check in checks:
        values += check[:2]
    # the common case in two C calls (the joined text is printable exactly when every value
    # is); it was a third of decoding a replicated instance (issue 10). Otherwise the loop
    # below names the first bad value.
    if max(map(len, values)) > MAX_IMPORTED_NAME_CHARS or not "".join(values).isprintable():
        for what, value in (("node name", node_name), ("node address", address),
                            ("service ID", service_id), ("service name", service_name),
                            *(("tag", t) for t in tags),
                            *(("check ID", c[0]) for c in checks),
                            *(("check name", c[1]) for c in checks)):
            if len(value) > MAX_IMPORTED_NAME_CHARS or not value.isprintable():
                raise ValueError(f"the {what} {value[:80]!r} is not valid: at most "
                                 f"{MAX_IMPORTED_NAME_CHARS} printable characters")
    node = Node(name=node_name, address=address, partition=partition, peer_name=peer_name)
    service = Service(
        id=service_id,
        name=service_name,
        port=port,
        tags=tags,
        node=node.name,
        partition=partition,
        peer_name=peer_name,
    )
    records = [
        Check(
            check_id=check_id,
            name=name,
            status=status,
            service_id=check_service_id,
            node=node.name,
            partition=partition,
            peer_name=peer_name,
        )
        for check_id, name, status, check_service_id in checks
    ]
    return (node, service, records)


# The peer stream's form: Consul's pbservice layout (service.proto). The store's fields map one
# to one onto upstream's: Node.name -> Node.Node, Service.id -> NodeService.ID,
# Service.name -> NodeService.Service, Check.node -> HealthCheck.Node, and so on.


def csn_to_wire(csn: CheckServiceNode) -> service_pb2.CheckServiceNode:
    """One exported instance as a Consul server reads it: an ordinary service (Kind empty), no
    node ID (peerkit has none), PeerName empty (an exporter sends local data). Each check names
    its node, and a service check its service's name too, as Consul's catalog fills them."""
    return service_pb2.CheckServiceNode(
        Node=service_pb2.Node(
            Node=csn.node.name,
            Address=csn.node.address,
            Partition=csn.node.partition,
            PeerName=csn.node.peer_name,
        ),
        Service=service_pb2.NodeService(
            ID=csn.service.id,
            Service=csn.service.name,
            Port=csn.service.port,
            Tags=list(csn.service.tags),
            PeerName=csn.service.peer_name,
        ),
        Checks=[
            service_pb2.HealthCheck(
                Node=csn.node.name,
                CheckID=c.check_id,
                Name=c.name,
                Status=c.status,
                ServiceID=c.service_id,
                ServiceName=csn.service.name if c.service_id else "",
                PeerName=c.peer_name,
            )
            for c in csn.checks
        ],
    )


def csn_from_wire(
    msg: service_pb2.CheckServiceNode, peer_name: str, partition: str
) -> ImportedInstance:
    """An instance a peer exported (Consul's layout), stamped with the importer's
    ``peer_name`` and ``partition`` as upstream's importer does.

    ``NodeService.Kind`` is accepted whatever it holds and not kept: peerkit's catalog has no
    service kinds, and refusing a kind would NACK a Consul peer's proxies and gateways. Node.ID
    is ignored (nodes are keyed by name, as upstream's importer keys them). Raises ValueError /
    TypeError as ``csn_from_pb`` does."""
    if not msg.HasField("Node") or not msg.HasField("Service"):
        raise ValueError("an exported instance needs a Node and a Service")
    node, service = msg.Node, msg.Service
    return _imported_instance(
        node_name=node.Node,
        address=node.Address,
        service_id=service.ID,
        service_name=service.Service,
        port=service.Port,
        tags=tuple(service.Tags),
        checks=[(c.CheckID, c.Name, c.Status, c.ServiceID) for c in msg.Checks],
        peer_name=peer_name,
        partition=partition,
    )


def instances_to_pb(instances: Sequence[CheckServiceNode]) -> peerstream_pb2.ExportedService:
    """The payload of an exported-service Response: every instance in Consul's layout (as
    ``csn_to_wire`` writes it); an empty list says the service has no exported instances any
    more. Built in place in the message: ``csn_to_wire``'s messages would be copied into it,
    and building in place costs half as much (an exporter builds one per service, issue 10;
    a test compares the two)."""
    out = peerstream_pb2.ExportedService()
    for csn in instances:
        item = out.Nodes.add()
        node, service = csn.node, csn.service
        wire_node = item.Node
        wire_node.Node = node.name
        wire_node.Address = node.address
        wire_node.Partition = node.partition
        wire_node.PeerName = node.peer_name
        wire_service = item.Service
        wire_service.ID = service.id
        wire_service.Service = service.name
        wire_service.Port = service.port
        wire_service.Tags.extend(service.tags)
        wire_service.PeerName = service.peer_name
        for c in csn.checks:
            item.Checks.add(
                Node=node.name,
                CheckID=c.check_id,
                Name=c.name,
                Status=c.status,
                ServiceID=c.service_id,
                ServiceName=service.name if c.service_id else "",
                PeerName=c.peer_name,
            )
    return out


# --------------------------------------------------------------------------------------------
# The peering token
# --------------------------------------------------------------------------------------------


class TokenError(ValueError):
    """A peering token that cannot be used; the message says why."""


@dataclass(frozen=True)
class PeeringToken:
    server_addresses: tuple[str, ...]
    server_name: str
    peer_id: str
    establishment_secret: str
    ca: tuple[str, ...] | None = None


def encode_token(token: PeeringToken) -> str:
    doc = {
        "CA": None if token.ca is None else list(token.ca),
        "ServerAddresses": list(token.server_addresses),
        "ServerName": token.server_name,
        "PeerID": token.peer_id,
        "EstablishmentSecret": token.establishment_secret,
    }
    return base64.b64encode(json.dumps(doc, separators=(",", ":")).encode()).decode("ascii")


# Bounds on what a token may hold. A plaintext token is a few hundred characters: one object
# holding a list of a handful of "host:port" strings and three short strings; a TLS token adds
# its CA PEMs, about 0.7 KB (EC) to 2 KB (RSA 4096) each. The bounds make a crafted token (deep
# nesting, huge numbers, thousands of addresses) a clear InvalidArgument, never a RecursionError
# / ValueError deep inside the JSON parser or minutes of dialing.
# The total is 48 KiB (it was 16 KiB before tokens carried CAs) so that a token with every
# field at its own bound still fits (test_the_largest_legal_token_fits_the_total_bound): 4
# PEMs of 4,096 characters (16.3 KiB of JSON with their escaped line breaks), PeerID,
# ServerName and EstablishmentSecret of 4,096 each (12 KiB) and 16 addresses of 261 (4.2 KiB)
# come to about 44 KiB of base64. Still far below gRPC's 4 MiB message limit.
MAX_TOKEN_CHARS: Final = 48 * 1024  # the base64 text
MAX_TOKEN_CAS: Final = 4  # CA PEMs: a root and a few being rotated in
MAX_TOKEN_DEPTH: Final = 3  # object -> list (ServerAddresses, CA) -> nothing deeper
MAX_TOKEN_ADDRESSES: Final = 16
MAX_ADDRESS_CHARS: Final = 261  # "[" + 253-char host or IPv6 literal + "]" + ":" + 5 digits
MAX_TOKEN_STRING_CHARS: Final = 4096  # PeerID, ServerName, EstablishmentSecret, a CA PEM
MAX_TOKEN_NUMBER_CHARS: Final = 32  # no field holds a number; any number at all stays short

_HOSTNAME_RE: Final = re.compile(
    r"\A(?=.{1,253}\Z)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?\Z"
)


def address_problem(address: object) -> str | None:
    """Why ``address`` is not a dialable "host:port" (None when it is): host a DNS name, an
    IPv4 address or a bracketed IPv6 address; port 1-65535 in ASCII digits."""
    if not isinstance(address, str):
        return f"must be a string, not {_json_type(address)}"
    if len(address) > MAX_ADDRESS_CHARS:
        return f"is longer than {MAX_ADDRESS_CHARS} characters"
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        return "must look like host:port"
    if not (port.isascii() and port.isdigit()) or len(port) > 5 or not 0 < int(port) <= 65535:
        return "must end in a port from 1 to 65535"
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return "has an invalid IPv6 address"
        return None
    if not _HOSTNAME_RE.match(host):
        return "has an invalid host name"
    if all(ch.isdigit() or ch == "." for ch in host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return "has an invalid IPv4 address"
    return None


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def _json_depth_problem(text: str, limit: int) -> str | None:
    """Scan JSON text for nesting deeper than ``limit`` before parsing it (the parser recurses
    once per level and would hit Python's recursion limit first)."""
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return f"nests deeper than {limit} levels"
        elif ch in "]}":
            depth -= 1
    return None


def _bounded_number(text: str) -> float:
    if len(text) > MAX_TOKEN_NUMBER_CHARS:
        raise TokenError(f"the peering token holds a number longer than "
                         f"{MAX_TOKEN_NUMBER_CHARS} characters")
    return float(text)


def _no_constant(text: str) -> None:
    raise TokenError(f"the peering token holds {text}, which is not JSON")


def _token_string(doc: dict[str, Any], key: str, *, required: bool) -> str:
    value = doc.get(key, "")
    if not isinstance(value, str):
        raise TokenError(f"the peering token's {key} must be a string, not {_json_type(value)}")
    if required and not value:
        raise TokenError(f"the peering token has no {key}")
    if len(value) > MAX_TOKEN_STRING_CHARS:
        raise TokenError(f"the peering token's {key} is longer than "
                         f"{MAX_TOKEN_STRING_CHARS} characters")
    if not value.isprintable():
        raise TokenError(f"the peering token's {key} holds control characters")
    return value


_PEM_BLOCK_RE: Final = re.compile(
    r"-----BEGIN CERTIFICATE-----\r?\n[A-Za-z0-9+/=\r\n]+?-----END CERTIFICATE-----")


def is_pem_certificates(pem: str) -> bool:
    """True if ``pem`` is one or more PEM CERTIFICATE blocks and nothing else but white space,
    each holding valid base64 (the structure only: the DER inside is parsed by TLS itself)."""
    blocks = _PEM_BLOCK_RE.findall(pem)
    if not blocks or _PEM_BLOCK_RE.sub("", pem).strip():
        return False
    for block in blocks:
        try:
            ssl.PEM_cert_to_DER_cert(block + "\n")
        except ValueError:
            return False
    return True


def decode_token(text: str) -> PeeringToken:
    """Decode and validate a token (see the module docstring); TokenError says what is wrong.

    Bounded (``MAX_TOKEN_*``): the size is checked before decoding, the JSON nesting before
    parsing, numbers while parsing; so no token can make this raise anything but TokenError."""
    if not isinstance(text, str):
        raise TokenError("the peering token must be a string")
    text = text.strip()
    if not text:
        raise TokenError("the peering token is empty")
    if len(text) > MAX_TOKEN_CHARS:
        raise TokenError(f"the peering token is longer than {MAX_TOKEN_CHARS} characters")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TokenError(f"the peering token is not valid base64: {exc}") from None
    try:
        body = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TokenError(f"the peering token is not valid JSON (not UTF-8): {exc}") from None
    problem = _json_depth_problem(body, MAX_TOKEN_DEPTH)
    if problem is not None:
        raise TokenError(f"the peering token is not a valid token: its JSON {problem}")
    try:
        doc = json.loads(body, parse_int=_bounded_number, parse_float=_bounded_number,
                         parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise TokenError(f"the peering token is not valid JSON: {exc}") from None
    except RecursionError:  # not reachable after the depth scan; kept as a backstop
        raise TokenError("the peering token is not a valid token: its JSON nests too deeply") \
            from None
    if not isinstance(doc, dict):
        raise TokenError(f"the peering token must hold a JSON object, not {_json_type(doc)}")
    addresses = doc.get("ServerAddresses")
    if addresses is None or addresses == []:
        raise TokenError("the peering token has no ServerAddresses")
    if not isinstance(addresses, list):
        raise TokenError(f"the peering token's ServerAddresses must be a list, "
                         f"not {_json_type(addresses)}")
    if len(addresses) > MAX_TOKEN_ADDRESSES:
        raise TokenError(f"the peering token has {len(addresses)} server addresses; "
                         f"at most {MAX_TOKEN_ADDRESSES} are allowed")
    for address in addresses:
        problem = address_problem(address)
        if problem is not None:
            shown = address[:80] if isinstance(address, str) else address
            raise TokenError(f"the peering token has an invalid server address {shown!r}: "
                             f"it {problem}")
    server_name = _token_string(doc, "ServerName", required=False)
    peer_id = _token_string(doc, "PeerID", required=True)
    secret = _token_string(doc, "EstablishmentSecret", required=True)
    ca = doc.get("CA")
    if ca is not None and (
        not isinstance(ca, list) or not all(isinstance(pem, str) and pem for pem in ca)
    ):
        raise TokenError("the peering token's CA must be null or a list of PEM strings")
    if ca is not None:
        if len(ca) > MAX_TOKEN_CAS:
            raise TokenError(f"the peering token has {len(ca)} CA certificates; at most "
                             f"{MAX_TOKEN_CAS} are allowed")
        for index, pem in enumerate(ca):
            if len(pem) > MAX_TOKEN_STRING_CHARS:
                raise TokenError(f"the peering token's CA entry {index} is longer than "
                                 f"{MAX_TOKEN_STRING_CHARS} characters")
            if not is_pem_certificates(pem):
                # upstream refuses it too, at dial time: "failed to parse PEM" (TLSDialOption)
                raise TokenError(f"the peering token's CA entry {index} is not a PEM "
                                 "certificate")
    return PeeringToken(
        server_addresses=tuple(addresses),
        server_name=server_name,
        peer_id=peer_id,
        establishment_secret=secret,
        ca=None if ca is None else tuple(ca),
    )
