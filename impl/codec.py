"""Conversions between the store's records and the wire messages, and the peering token.

One job: everything that turns one representation into another, in one place: store records ↔
protobuf messages (peerings, trust bundles, catalog instances), timestamps, the peering token
(base64 of a JSON document), and the full gRPC method names of the services peerkit serves.

The token is ``base64(JSON)`` with the keys ``CA`` (null: peerkit runs without TLS),
``ServerAddresses`` (non-empty list of "host:port"), ``ServerName``, ``PeerID`` (the acceptor's
peering ID) and ``EstablishmentSecret``; ``decode_token`` validates all of them and raises
``TokenError`` (a ValueError) with a readable reason.

May import: the standard library, protobuf, ``peerkit.proto``, ``peerkit.model.vocabulary`` and
``.store`` (records only).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass

from google.protobuf import timestamp_pb2
from google.protobuf.descriptor import FileDescriptor

from peerkit.model.vocabulary import PeeringState
from peerkit.proto import admin_pb2, catalog_pb2, peering_pb2, peerstream_pb2

from .store import Check, CheckServiceNode, Node, Peering, Service, TrustBundle
from .store.base import ImportedInstance

__all__ = [
    "ADMIN_METHODS",
    "METHOD_EXCHANGE_SECRET",
    "METHOD_STREAM_RESOURCES",
    "PEERING_METHODS",
    "PeeringToken",
    "TokenError",
    "bundle_to_pb",
    "csn_from_pb",
    "csn_to_pb",
    "decode_token",
    "encode_token",
    "from_timestamp",
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
    """One instance on the wire. Partition and PeerName are sent as stored (an exporter sends
    local data, so PeerName is empty)."""
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


def csn_from_pb(
    msg: catalog_pb2.CheckServiceNode, peer_name: str, partition: str
) -> ImportedInstance:
    """An imported instance, stamped with the importer's ``peer_name`` and ``partition``.

    Raises ValueError / TypeError (from the record constructors) for a malformed instance."""
    if not msg.HasField("Node") or not msg.HasField("Service"):
        raise ValueError("an exported instance needs a Node and a Service")
    node = Node(
        name=msg.Node.Name,
        address=msg.Node.Address,
        partition=partition,
        peer_name=peer_name,
    )
    service = Service(
        id=msg.Service.ID,
        name=msg.Service.Name,
        port=msg.Service.Port,
        tags=tuple(msg.Service.Tags),
        node=node.name,
        partition=partition,
        peer_name=peer_name,
    )
    checks = [
        Check(
            check_id=c.CheckID,
            name=c.Name,
            status=c.Status,
            service_id=c.ServiceID,
            node=node.name,
            partition=partition,
            peer_name=peer_name,
        )
        for c in msg.Checks
    ]
    return (node, service, checks)


def instances_to_pb(instances: Sequence[CheckServiceNode]) -> peerstream_pb2.ExportedService:
    return peerstream_pb2.ExportedService(Nodes=[csn_to_pb(c) for c in instances])


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


def _address_ok(address: str) -> bool:
    host, sep, port = address.rpartition(":")
    return bool(sep and host and port.isdigit() and 0 < int(port) <= 65535)


def decode_token(text: str) -> PeeringToken:
    """Decode and validate a token (see the module docstring); TokenError says what is wrong."""
    if not isinstance(text, str):
        raise TokenError("the peering token must be a string")
    if not text.strip():
        raise TokenError("the peering token is empty")
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise TokenError(f"the peering token is not valid base64: {exc}") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenError(f"the peering token is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise TokenError("the peering token must hold a JSON object")
    addresses = doc.get("ServerAddresses")
    if not isinstance(addresses, list) or not addresses:
        raise TokenError("the peering token has no ServerAddresses")
    for address in addresses:
        if not isinstance(address, str) or not _address_ok(address):
            raise TokenError(f"the peering token has an invalid server address: {address!r}")
    server_name = doc.get("ServerName", "")
    if not isinstance(server_name, str):
        raise TokenError("the peering token's ServerName must be a string")
    peer_id = doc.get("PeerID")
    if not isinstance(peer_id, str) or not peer_id:
        raise TokenError("the peering token has no PeerID")
    secret = doc.get("EstablishmentSecret")
    if not isinstance(secret, str) or not secret:
        raise TokenError("the peering token has no EstablishmentSecret")
    ca = doc.get("CA")
    if ca is not None and (
        not isinstance(ca, list) or not all(isinstance(pem, str) and pem for pem in ca)
    ):
        raise TokenError("the peering token's CA must be null or a list of PEM strings")
    if ca:
        raise TokenError("the peering token carries a CA, but peerkit runs without TLS")
    return PeeringToken(
        server_addresses=tuple(addresses),
        server_name=server_name,
        peer_id=peer_id,
        establishment_secret=secret,
        ca=None if ca is None else tuple(ca),
    )
