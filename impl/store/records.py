"""The records the state store holds: immutable, validated dataclasses with Consul's fields.

Naming: every attribute is the snake_case form of Consul's field name, one to one:

    ID -> id, Name -> name, Partition -> partition, DeletedAt -> deleted_at, Meta -> meta,
    State -> state, PeerID -> peer_id, PeerCAPems -> peer_ca_pems,
    PeerServerName -> peer_server_name, PeerServerAddresses -> peer_server_addresses,
    EstablishmentSecret -> establishment_secret, StreamSecret -> stream_secret,
    CreateIndex -> create_index, ModifyIndex -> modify_index, PeerName -> peer_name,
    TrustDomain -> trust_domain, RootPEMs -> root_pems, ServiceID -> service_id,
    CheckID -> check_id, Node -> node, Address -> address, Port -> port, Tags -> tags,
    Status -> status.

All records are frozen and keyword-only. Construction checks types and the identity fields, and
normalises containers (any sequence of strings becomes a tuple, ``meta`` becomes a read-only,
hashable ``FrozenMeta``), so a record that exists is well-formed. Rules that relate a record to
the store's contents (names, activity, index numbers) live in ``base.py``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from peerkit.model.vocabulary import PeeringState, is_active_state

#: Consul's health-check statuses.
HEALTH_STATUSES = frozenset({"passing", "warning", "critical", "maintenance"})

DEFAULT_PARTITION = "default"


# --------------------------------------------------------------------------------------------
# Validation helpers (also used by base.py for operation arguments)
# --------------------------------------------------------------------------------------------


def check_name(value: object, what: str) -> str:
    """Return ``value`` if it is a non-empty string; TypeError / ValueError otherwise."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} must not be empty")
    return value


def check_str(value: object, what: str) -> str:
    """Return ``value`` if it is a string (possibly empty); TypeError otherwise."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    return value


def check_int(value: object, what: str, *, lo: int = 0, hi: int | None = None) -> int:
    """Return ``value`` if it is an int (not a bool) within [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if value < lo or (hi is not None and value > hi):
        bound = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{what} must be {bound}, got {value}")
    return value


def check_timestamp(value: object, what: str) -> float:
    """A unix timestamp: a finite number > 0 (zero means "unset" upstream, so it is refused)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be a number (unix timestamp), not {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"{what} must be a finite unix timestamp > 0, got {value!r}")
    return number


def check_str_tuple(value: object, what: str, *, nonempty_items: bool = True) -> tuple[str, ...]:
    """Normalise a sequence of strings to a tuple; a bare str is refused (a common slip)."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise TypeError(f"{what} must be a sequence of str, not {type(value).__name__}")
    items = tuple(value)
    for item in items:
        if nonempty_items:
            check_name(item, f"each item of {what}")
        else:
            check_str(item, f"each item of {what}")
    return items


def _set(obj: object, name: str, value: object) -> None:
    object.__setattr__(obj, name, value)


# --------------------------------------------------------------------------------------------
# FrozenMeta
# --------------------------------------------------------------------------------------------


class FrozenMeta(Mapping[str, str]):
    """A read-only, hashable ``map<string,string>`` (the type of ``Peering.meta``)."""

    __slots__ = ("_items",)
    _items: dict[str, str]

    def __init__(self, items: Mapping[str, str] | None = None) -> None:
        source: Mapping[str, str] = {} if items is None else items
        if not isinstance(source, Mapping):
            raise TypeError(f"meta must be a mapping of str to str, not {type(source).__name__}")
        copied: dict[str, str] = {}
        for key, value in source.items():
            check_str(key, "meta key")
            check_str(value, f"meta[{key!r}]")
            copied[key] = value
        _set(self, "_items", copied)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("FrozenMeta is read-only")

    def __getitem__(self, key: str) -> str:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return bool(self._items == dict(other.items()))
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenMeta({self._items!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenMeta, (dict(self._items),))

    def to_dict(self) -> dict[str, str]:
        """A fresh, mutable copy."""
        return dict(self._items)


# --------------------------------------------------------------------------------------------
# Peering and TrustBundle
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Peering:
    """One peering row (Consul's ``pbpeering.Peering``).

    ``id`` may be empty in a write's input: the store assigns it. ``deleted_at`` is a unix
    timestamp, None when the peering is not marked for deletion. ``create_index`` and
    ``modify_index`` in an input are ignored; the store sets them.
    """

    id: str = ""
    name: str
    partition: str = DEFAULT_PARTITION
    deleted_at: float | None = None
    meta: Mapping[str, str] = field(default_factory=FrozenMeta)
    state: PeeringState = PeeringState.UNDEFINED
    peer_id: str = ""
    peer_ca_pems: tuple[str, ...] = ()
    peer_server_name: str = ""
    peer_server_addresses: tuple[str, ...] = ()
    establishment_secret: str | None = None
    stream_secret: str | None = None
    create_index: int = 0
    modify_index: int = 0

    def __post_init__(self) -> None:
        check_str(self.id, "Peering.id")
        check_name(self.name, "Peering.name")
        check_name(self.partition, "Peering.partition")
        if self.deleted_at is not None:
            _set(self, "deleted_at", check_timestamp(self.deleted_at, "Peering.deleted_at"))
        _set(self, "meta", FrozenMeta(self.meta))
        if not isinstance(self.state, PeeringState):
            raise TypeError(
                f"Peering.state must be a PeeringState, not {type(self.state).__name__}"
            )
        check_str(self.peer_id, "Peering.peer_id")
        _set(self, "peer_ca_pems", check_str_tuple(self.peer_ca_pems, "Peering.peer_ca_pems"))
        check_str(self.peer_server_name, "Peering.peer_server_name")
        _set(
            self,
            "peer_server_addresses",
            check_str_tuple(self.peer_server_addresses, "Peering.peer_server_addresses"),
        )
        for attr in ("establishment_secret", "stream_secret"):
            secret = getattr(self, attr)
            if secret is not None:
                check_name(secret, f"Peering.{attr}")
        check_int(self.create_index, "Peering.create_index")
        check_int(self.modify_index, "Peering.modify_index")

    def is_active(self) -> bool:
        """Upstream ``IsActive()``: not TERMINATED and not marked for deletion."""
        return is_active_state(self.state, self.deleted_at is not None)

    def should_dial(self) -> bool:
        """Upstream ``ShouldDial()`` (later form): this side holds addresses to dial."""
        return bool(self.peer_server_addresses)


@dataclass(frozen=True, kw_only=True)
class TrustBundle:
    """The CA roots imported from a peer (Consul's ``pbpeering.PeeringTrustBundle``)."""

    peer_name: str
    partition: str = DEFAULT_PARTITION
    trust_domain: str = ""
    root_pems: tuple[str, ...] = ()
    create_index: int = 0
    modify_index: int = 0

    def __post_init__(self) -> None:
        check_name(self.peer_name, "TrustBundle.peer_name")
        check_name(self.partition, "TrustBundle.partition")
        check_str(self.trust_domain, "TrustBundle.trust_domain")
        _set(self, "root_pems", check_str_tuple(self.root_pems, "TrustBundle.root_pems"))
        check_int(self.create_index, "TrustBundle.create_index")
        check_int(self.modify_index, "TrustBundle.modify_index")


# --------------------------------------------------------------------------------------------
# Catalog
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Node:
    """A catalog node. ``peer_name`` is "" for local data, the peering's name when imported."""

    name: str
    address: str = ""
    partition: str = DEFAULT_PARTITION
    peer_name: str = ""

    def __post_init__(self) -> None:
        check_name(self.name, "Node.name")
        check_str(self.address, "Node.address")
        check_name(self.partition, "Node.partition")
        check_str(self.peer_name, "Node.peer_name")


@dataclass(frozen=True, kw_only=True)
class Service:
    """A service instance on a node.

    ``partition`` is not among the fields listed for peerkit's Service but is needed to key an
    instance unambiguously (a node name is unique only within a partition); it must equal the
    node's partition.
    """

    id: str
    name: str
    port: int = 0
    tags: tuple[str, ...] = ()
    node: str
    partition: str = DEFAULT_PARTITION
    peer_name: str = ""

    def __post_init__(self) -> None:
        check_name(self.id, "Service.id")
        check_name(self.name, "Service.name")
        check_int(self.port, "Service.port", hi=65535)
        _set(self, "tags", check_str_tuple(self.tags, "Service.tags"))
        check_name(self.node, "Service.node")
        check_name(self.partition, "Service.partition")
        check_str(self.peer_name, "Service.peer_name")


@dataclass(frozen=True, kw_only=True)
class Check:
    """A health check: a node check when ``service_id`` is "", else the check of that service."""

    check_id: str
    name: str = ""
    status: str = "passing"
    service_id: str = ""
    node: str
    partition: str = DEFAULT_PARTITION
    peer_name: str = ""

    def __post_init__(self) -> None:
        check_name(self.check_id, "Check.check_id")
        check_str(self.name, "Check.name")
        check_str(self.status, "Check.status")
        if self.status not in HEALTH_STATUSES:
            raise ValueError(
                f"Check.status must be one of {sorted(HEALTH_STATUSES)}, got {self.status!r}"
            )
        check_str(self.service_id, "Check.service_id")
        check_name(self.node, "Check.node")
        check_name(self.partition, "Check.partition")
        check_str(self.peer_name, "Check.peer_name")


@dataclass(frozen=True, kw_only=True)
class ExportEntry:
    """One exported service and the peer names it is exported to (sorted, no duplicates)."""

    service: str
    partition: str = DEFAULT_PARTITION
    peers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_name(self.service, "ExportEntry.service")
        check_name(self.partition, "ExportEntry.partition")
        _set(self, "peers", tuple(sorted(set(check_str_tuple(self.peers, "ExportEntry.peers")))))


# --------------------------------------------------------------------------------------------
# Read shapes (never stored)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CheckServiceNode:
    """One service instance with its node and the checks that apply (node + service checks)."""

    node: Node
    service: Service
    checks: tuple[Check, ...] = ()


@dataclass(frozen=True, kw_only=True)
class NodeInfo:
    """One node with all its services and checks (an entry of Consul's NodeDump)."""

    node: Node
    services: tuple[Service, ...] = ()
    checks: tuple[Check, ...] = ()
