"""The abstraction: one vocabulary in which a model world and a running implementation compare.

One job: map both sides onto a ``View`` (per cluster: the peering rows with the state PeeringRead
reports, what is imported from each peer, the stream tracker, local registrations and exports,
whether a deletion routine kept running after its leader's term ended, and how many stream calls
it has open as acceptor), and print the difference between two views.

What is compared, and why (see also the README's "Conformance" section and
``peerkit.conformance.stateful``):

* rows, by peer name, with the read state (ACTIVE/FAILING from the tracker, else the stored
  state): what an operator sees; IDs differ between the two sides (UUIDs against counters), so
  rows are matched by name;
* imports per peer: the imported service names and whether the trust bundle is there;
* the tracker: one (peer name, connected) pair per entry; an entry whose row is gone is named
  ``"-"``;
* local registrations and exports: set by the operator rules, compared so a lost write shows;
* ``zombie``: a deletion routine has run on after its term ended (the model's deposed-leader
  routine; the implementation's spinning routine of bug ``deletion-no-stop``). The model has no
  history of this, so ``Candidates`` carries it beside each world (a sticky flag);
* ``streams``: the stream calls open to this cluster (it accepted them): in the model, the
  streams whose acceptor it is (a stream is dropped once both its ends are DONE); in the
  implementation, the in-memory network's StreamResources calls to its address that are not
  finished (a call is finished once both ends know its status). ``None`` where it is not
  observed: a remote server (``peerkit.conformance.remote``) shows no calls, so its views and
  the trace validator's model views leave it out (``model_view(..., streams=False)``).

The ends' phases and the messages in flight are not compared: the model's channels and phases
have no exact counterpart in the in-memory network's pipes at quiescence (an acceptor's handler
is registered only after its Open is validated; a held direction keeps an end's status unread),
and the effects of every message show in the rows, imports and tracker. The count of open calls
does line up: measured on 7,091 observations of the 300-example bug-free run, every one matched
some candidate's count before the field was compared.

May import: the standard library, ``peerkit.model`` and ``peerkit.impl`` (state reads only).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import NamedTuple

from peerkit.impl.server import read_state as impl_read_state
from peerkit.impl.store import DEFAULT_PARTITION, Peering, StateStore
from peerkit.impl.testing import Cluster as ImplCluster
from peerkit.impl.transport.memory import MemoryCall
from peerkit.model.state import World, cluster_name, read_state

GONE = "-"


class ClusterView(NamedTuple):
    name: str
    rows: tuple[tuple[str, str], ...]  # (peer name, read state name), sorted
    imported: tuple[tuple[str, tuple[str, ...], bool], ...]  # (peer, services, bundle), sorted
    tracker: tuple[tuple[str, bool], ...]  # (peer name or GONE, connected), sorted
    registered: tuple[str, ...]
    exports: tuple[tuple[str, str], ...]  # (service, peer name), sorted
    zombie: bool
    streams: int | None = None  # stream calls open to this cluster; None: not observed


class View(NamedTuple):
    clusters: tuple[ClusterView, ...]


# -- the model's side ---------------------------------------------------------------------------


def model_view(w: World, zombie_seen: tuple[bool, ...], streams: bool = False) -> View:
    """``streams``: count the streams each cluster accepted (else ``None``: not observed)."""
    out = []
    for c, cl in enumerate(w.clusters):
        rows = tuple(sorted((cluster_name(r.peer), read_state(cl, r).name) for r in cl.rows))
        imported = tuple(sorted(
            (cluster_name(i.peer), tuple(sorted(i.services)), bool(i.bundle))
            for i in cl.imported if i.services or i.bundle
        ))
        tracker = []
        for t in cl.tracker:
            row = cl.row_by_gen(t.gen)
            tracker.append((GONE if row is None else cluster_name(row.peer), bool(t.connected)))
        exports = tuple(sorted((s, cluster_name(p)) for s, p in cl.exports))
        accepted = sum(1 for st in w.streams if st.acceptor == c) if streams else None
        out.append(ClusterView(cluster_name(c), rows, imported, tuple(sorted(tracker)),
                               tuple(sorted(cl.registered)), exports, zombie_seen[c], accepted))
    return View(tuple(out))


# -- the implementation's side ------------------------------------------------------------------


def impl_zombie(c: ImplCluster) -> bool:
    """A deletion routine of an ended term ran on after the term ended (it spun)."""
    return any(term.stopped and term.deletion.stats.spins > 0 for term in c.server.terms)


class _Stored(NamedTuple):
    """What a view takes from a cluster's store alone (not from its tracker)."""
    rows: tuple[Peering, ...]  # the default partition's peerings
    imported: tuple[tuple[str, tuple[str, ...], bool], ...]
    registered: tuple[str, ...]
    exports: tuple[tuple[str, str], ...]


#: per store: (its index when read, what ``_stored`` read from it)
_STORED: weakref.WeakKeyDictionary[StateStore, tuple[int, _Stored]] = (
    weakref.WeakKeyDictionary())


def _stored(store: StateStore) -> _Stored:
    """Read once per store index: every write that changes a row commits at a new index (the
    store's rule), and most rule steps change nothing in the store (an ``advance`` in which no
    message moved), so the view's store reads (most of its cost) are asked again only after a
    change. A closed store is read as before (and refuses)."""
    index = store.index
    found = None if store.closed else _STORED.get(store)
    if found is not None and found[0] == index:
        return found[1]
    rows = tuple(store.peering_list(DEFAULT_PARTITION))
    peers = {row.name for row in store.peering_list()}
    dump = store.dump()
    peers |= {n.peer_name for n in dump.nodes if n.peer_name}
    peers |= {b.peer_name for b in dump.trust_bundles}
    imported = []
    for peer in sorted(peers):
        services = tuple(sorted(store.imported_service_names(peer, DEFAULT_PARTITION)))
        bundle = store.trust_bundle_read(peer, DEFAULT_PARTITION) is not None
        if services or bundle:
            imported.append((peer, services, bundle))
    registered = tuple(sorted({s.name for s in dump.services if s.peer_name == ""}))
    exports = tuple(sorted((e.service, p) for e in dump.exports for p in e.peers))
    stored = _Stored(rows, tuple(imported), registered, exports)
    _STORED[store] = (index, stored)
    return stored


def impl_view(clusters: tuple[ImplCluster, ...],
              calls: Sequence[MemoryCall] | None = None) -> View:
    """``calls``: the network's StreamResources calls not finished, counted per acceptor
    (None: not observed)."""
    out = []
    for c in clusters:
        store = c.store
        term = c.server.leadership
        statuses = {} if term is None else term.tracker.all_statuses()
        stored = _stored(store)
        rows = [(row.name, impl_read_state(row, statuses.get(row.id)).name)
                for row in stored.rows]
        tracker = []
        for pid, status in statuses.items():
            found = store.peering_read_by_id(pid)
            tracker.append((GONE if found is None else found.name, bool(status.connected)))
        accepted = None if calls is None else sum(1 for call in calls
                                                  if call.address == c.address)
        out.append(ClusterView(c.name, tuple(sorted(rows)), stored.imported,
                               tuple(sorted(tracker)), stored.registered, stored.exports,
                               impl_zombie(c), accepted))
    return View(tuple(out))


# -- differences --------------------------------------------------------------------------------


def diff(expected: View, actual: View) -> list[str]:
    """One line per field that differs: ``dc1.rows: model [...] / impl [...]``."""
    lines = []
    for m, i in zip(expected.clusters, actual.clusters, strict=True):
        for field in ClusterView._fields:
            a, b = getattr(m, field), getattr(i, field)
            if a != b:
                lines.append(f"{m.name}.{field}: model {a!r} / impl {b!r}")
    return lines


def describe(view: View) -> str:
    parts = []
    for c in view.clusters:
        rows = ", ".join(f"{p}={s}" for p, s in c.rows) or "none"
        imports = ", ".join(f"{p}:{'+'.join(s) or '-'}{' +bundle' if b else ''}"
                            for p, s, b in c.imported) or "none"
        tracker = ", ".join(f"{p}:{'up' if up else 'down'}" for p, up in c.tracker) or "none"
        calls = "" if c.streams is None else f"; {c.streams} stream call(s) open to it"
        parts.append(f"{c.name}: rows {rows}; imports {imports}; tracker {tracker}"
                     f"{'; zombie' if c.zombie else ''}{calls}")
    return "\n".join(parts)
