"""How the operator commands show what a server answered: aligned tables and key/value blocks
for people, JSON-ready dictionaries (stable, documented keys) for scripts.

One job: turn the protobuf responses of ``peerkit peering ...`` / ``peerkit services ...``
(``cli/operator.py``) into lines of text or plain dictionaries. No I/O, no RPCs.

The JSON keys are documented in README.md ("The operator's command line"); a renamed key
breaks scripts, so tests/cli/test_operator.py pins them.

May import: the standard library and ``peerkit.proto``.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

from .proto import admin_pb2, catalog_pb2, peering_pb2

PEERING_COLUMNS = ("Name", "State", "Imported Svcs", "Exported Svcs", "Remote Server")
IMPORTED_COLUMNS = ("Peer", "Service", "ID", "Node", "Port", "Health")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns two spaces apart (like `consul peering list`); no trailing blanks."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in [list(headers), *rows]]


def state_name(peering: peering_pb2.Peering) -> str:
    return peering_pb2.PeeringState.Name(peering.State)


def deleted_at(peering: peering_pb2.Peering) -> str | None:
    """DeletedAt as RFC 3339 UTC, or None when unset (the Unix epoch counts as unset, as in
    Consul)."""
    stamp = peering.DeletedAt
    if stamp.seconds == 0 and stamp.nanos == 0:
        return None
    moment = datetime.datetime.fromtimestamp(stamp.seconds, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def peering_json(peering: peering_pb2.Peering) -> dict[str, Any]:
    return {
        "name": peering.Name,
        "id": peering.ID,
        "partition": peering.Partition,
        "state": state_name(peering),
        "meta": dict(sorted(peering.Meta.items())),
        "peer_id": peering.PeerID,
        "peer_server_name": peering.PeerServerName,
        "peer_server_addresses": list(peering.PeerServerAddresses),
        "peer_ca_pems": len(peering.PeerCAPems),
        "imported_services": peering.ImportedServiceCount,
        "exported_services": peering.ExportedServiceCount,
        "deleted_at": deleted_at(peering),
        "create_index": peering.CreateIndex,
        "modify_index": peering.ModifyIndex,
    }


def peering_rows(peerings: Sequence[peering_pb2.Peering]) -> list[str]:
    """The `peering list` table, sorted by name. Remote Server is the peer's server name (the
    dialer learns it from the token; an acceptor shows "-")."""
    rows = [[p.Name, state_name(p), str(p.ImportedServiceCount), str(p.ExportedServiceCount),
             p.PeerServerName or "-"]
            for p in sorted(peerings, key=lambda p: p.Name)]
    return table(PEERING_COLUMNS, rows)


def peering_detail(peering: peering_pb2.Peering) -> list[str]:
    """The `peering read` block, in the layout of `consul peering read`."""
    lines = [f"Name:         {peering.Name}",
             f"ID:           {peering.ID}",
             f"State:        {state_name(peering)}"]
    when = deleted_at(peering)
    if when is not None:
        lines.append(f"Deleted At:   {when}")
    if peering.Meta:
        lines.append("Meta:")
        lines += [f"    {key}={value}" for key, value in sorted(peering.Meta.items())]
    lines += ["",
              f"Peer ID:               {peering.PeerID or '-'}",
              f"Peer Server Name:      {peering.PeerServerName or '-'}",
              f"Peer CA Pems:          {len(peering.PeerCAPems)}",
              "Peer Server Addresses:" + ("" if peering.PeerServerAddresses else " -")]
    lines += [f"    {address}" for address in peering.PeerServerAddresses]
    lines += ["",
              f"Imported Services: {peering.ImportedServiceCount}",
              f"Exported Services: {peering.ExportedServiceCount}",
              "",
              f"Create Index: {peering.CreateIndex}",
              f"Modify Index: {peering.ModifyIndex}"]
    return lines


def _health(instance: catalog_pb2.CheckServiceNode) -> str:
    """The worst status of an instance's checks ("passing" when it has none)."""
    order = ("passing", "warning", "critical")
    worst = 0
    for check in instance.Checks:
        rank = order.index(check.Status) if check.Status in order else len(order) - 1
        worst = max(worst, rank)
    return order[worst]


def _instance_json(instance: catalog_pb2.CheckServiceNode) -> dict[str, Any]:
    return {
        "service": instance.Service.Name,
        "id": instance.Service.ID,
        "node": instance.Node.Name,
        "address": instance.Node.Address,
        "port": instance.Service.Port,
        "tags": list(instance.Service.Tags),
        "health": _health(instance),
    }


def imports_of(catalog: admin_pb2.ReadCatalogResponse,
               peer: str | None) -> list[admin_pb2.ImportedFromPeer]:
    """The catalog's imports, of every peer or of one."""
    return [entry for entry in catalog.Imports if peer is None or entry.PeerName == peer]


def imported_json(entries: Sequence[admin_pb2.ImportedFromPeer]) -> dict[str, Any]:
    return {"imports": [
        {"peer_name": entry.PeerName,
         "trust_domain": (entry.TrustBundle.TrustDomain
                          if entry.HasField("TrustBundle") else None),
         "instances": [_instance_json(n) for n in entry.Nodes]}
        for entry in entries]}


def imported_rows(entries: Sequence[admin_pb2.ImportedFromPeer]) -> list[str]:
    """One row per imported instance, then one line per peer whose trust bundle is held (the
    bundle is imported data too: a deleted peering must leave none behind)."""
    rows = [[entry.PeerName, n.Service.Name, n.Service.ID, n.Node.Name, str(n.Service.Port),
             _health(n)]
            for entry in entries for n in entry.Nodes]
    lines = table(IMPORTED_COLUMNS, rows) if rows else ["No imported services."]
    bundles = [f"{e.PeerName} ({e.TrustBundle.TrustDomain})"
               for e in entries if e.HasField("TrustBundle")]
    if bundles:
        lines.append(f"Trust bundles held: {', '.join(bundles)}")
    return lines
