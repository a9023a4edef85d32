"""Tests of the implementation's state store (peerkit.impl.store), run against both backends.

Every test that takes the ``store`` fixture runs twice: on the in-memory backend and on SQLite in
a temporary directory. The upstream state-store tests of peering-protocol.md §7.2 are ported as
scenarios (our own code, released state numbering). Refused operations are checked to leave the
whole store, index included, exactly as it was.
"""

from __future__ import annotations

import itertools
import math
import sqlite3
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peerkit.impl.store import (
    DB_FILENAME,
    Change,
    Check,
    ExportEntry,
    MemoryBackend,
    MemoryStore,
    Node,
    Peering,
    Service,
    SqliteBackend,
    SqliteStore,
    StateStore,
    StoreError,
    TrustBundle,
)
from peerkit.impl.store import base as base_module
from peerkit.impl.store import sqlite as sqlite_codec
from peerkit.model.vocabulary import (
    ERR_CREATE_MARKED,
    ERR_DELETE_UNMARKED,
    ERR_IMPORT_INACTIVE,
    ERR_WRITE_MARKED,
    PeeringState,
)

NOW = 1_750_000_000.25
ADDRS = ("10.0.0.1:8502", "10.0.0.2:8502")
StoreFactory = Callable[..., StateStore]


# --------------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    """A factory of fresh stores of one backend kind; every store made is closed afterwards."""
    made: list[StateStore] = []
    counter = itertools.count()

    def make(**kwargs: Any) -> StateStore:
        store: StateStore
        if request.param == "memory":
            store = MemoryStore(**kwargs)
        else:
            store = SqliteStore(tmp_path / f"data{next(counter)}", **kwargs)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


@pytest.fixture
def store(make_store: StoreFactory) -> StateStore:
    return make_store()


def acceptor(name: str, **kw: Any) -> Peering:
    return Peering(name=name, **kw)


def dialer(name: str, **kw: Any) -> Peering:
    kw.setdefault("peer_id", str(uuid.uuid4()))
    kw.setdefault("peer_server_addresses", ADDRS)
    kw.setdefault("peer_server_name", "server.dc1.peering.example")
    kw.setdefault("peer_ca_pems", ("-----BEGIN CERTIFICATE-----",))
    return Peering(name=name, **kw)


def assert_refused(
    store: StateStore,
    exc: type[Exception],
    match: str | None,
    fn: Callable[..., object],
    *args: Any,
    **kwargs: Any,
) -> None:
    """``fn`` raises ``exc`` (message equal to ``match`` when given) and changes nothing."""
    before = store.dump()
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    if match is not None:
        assert str(info.value) == match
    assert store.dump() == before


def instance(
    node: str, service: str = "web", sid: str | None = None, *, node_check: bool = True
) -> tuple[Node, Service, list[Check]]:
    """One (node, service, checks) import entry as it arrives from a peer (untagged)."""
    sid = sid or f"{service}-{node}"
    checks = [Check(check_id=f"{sid}:health", name="svc", service_id=sid, node=node)]
    if node_check:
        checks.append(Check(check_id="serfHealth", name="Serf Health", node=node))
    return (
        Node(name=node, address=f"{node}.addr"),
        Service(id=sid, name=service, port=8080, tags=("v1",), node=node),
        checks,
    )


def insert_test_peering_data(store: StateStore, peer: str) -> None:
    """Port of upstream insertTestPeeringData: a bundle plus nodes aaa/bbb/ccc, one service
    each, a service check and a serfHealth node check, all tagged with the peer name."""
    store.trust_bundle_write(
        TrustBundle(peer_name=peer, trust_domain="peer.consul", root_pems=("root",))
    )
    for node, svc in (("aaa", "a-service"), ("bbb", "b-service"), ("ccc", "c-service")):
        store.import_service_nodes(peer, "default", svc, [instance(node, svc)])


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


def test_records_normalise_and_are_hashable() -> None:
    p = Peering(name="x", meta={"k": "v"}, peer_server_addresses=["a:1"], peer_ca_pems=["c"])  # type: ignore[arg-type]
    assert p.peer_server_addresses == ("a:1",)
    assert p.peer_ca_pems == ("c",)
    assert p.meta == {"k": "v"}
    assert hash(p) == hash(
        Peering(name="x", meta={"k": "v"}, peer_server_addresses=("a:1",), peer_ca_pems=("c",))
    )
    with pytest.raises(TypeError):
        p.meta["k"] = "w"  # type: ignore[index]
    assert p.should_dial() and p.is_active()
    assert not Peering(name="x").should_dial()
    assert not Peering(name="x", state=PeeringState.TERMINATED).is_active()
    assert not Peering(name="x", deleted_at=NOW).is_active()
    assert ExportEntry(service="s", peers=("b", "a", "b")).peers == ("a", "b")


@pytest.mark.parametrize(
    ("build", "exc"),
    [
        (lambda: Peering(name=""), ValueError),
        (lambda: Peering(name=3), TypeError),  # type: ignore[arg-type]
        (lambda: Peering(name="x", partition=""), ValueError),
        (lambda: Peering(name="x", state=1), TypeError),  # type: ignore[arg-type]
        (lambda: Peering(name="x", deleted_at=0), ValueError),
        (lambda: Peering(name="x", deleted_at=-5.0), ValueError),
        (lambda: Peering(name="x", deleted_at=math.nan), ValueError),
        (lambda: Peering(name="x", deleted_at="now"), TypeError),  # type: ignore[arg-type]
        (lambda: Peering(name="x", deleted_at=True), TypeError),
        (lambda: Peering(name="x", meta={"k": 1}), TypeError),  # type: ignore[dict-item]
        (lambda: Peering(name="x", meta=[("k", "v")]), TypeError),  # type: ignore[arg-type]
        (lambda: Peering(name="x", peer_server_addresses="a:1"), TypeError),  # type: ignore[arg-type]
        (lambda: Peering(name="x", peer_server_addresses=("",)), ValueError),
        (lambda: Peering(name="x", stream_secret=""), ValueError),
        (lambda: Peering(name="x", create_index=-1), ValueError),
        (lambda: TrustBundle(peer_name=""), ValueError),
        (lambda: Node(name=""), ValueError),
        (lambda: Service(id="s", name="s", node="n", port=70000), ValueError),
        (lambda: Service(id="s", name="s", node="n", port=True), TypeError),
        (lambda: Check(check_id="c", node="n", status="fine"), ValueError),
        (lambda: ExportEntry(service="s", peers=("",)), ValueError),
    ],
)
def test_records_reject_bad_fields(build: Callable[[], object], exc: type[Exception]) -> None:
    with pytest.raises(exc):
        build()


# --------------------------------------------------------------------------------------------
# PeeringWrite
# --------------------------------------------------------------------------------------------


def test_new_rows_get_released_states_and_indexes(store: StateStore) -> None:
    assert store.index == 0
    a = store.peering_write(acceptor("acc"))
    assert (a.state, a.create_index, a.modify_index) == (PeeringState.PENDING, 1, 1)
    d = store.peering_write(dialer("dia"))
    assert (d.state, d.create_index, d.modify_index) == (PeeringState.ESTABLISHING, 2, 2)
    # an explicit PENDING/ESTABLISHING is kept even against the default
    e = store.peering_write(dialer("dia2", state=PeeringState.PENDING))
    assert e.state is PeeringState.PENDING
    f = store.peering_write(acceptor("acc2", state=PeeringState.ESTABLISHING))
    assert f.state is PeeringState.ESTABLISHING
    assert store.index == 4 and store.table_index("peerings") == 4
    assert store.peering_read("dia") == d


def test_peering_write_sequence(store: StateStore) -> None:
    """Port of TestStore_PeeringWrite, run in order."""
    # 1. create: the state defaults (acceptor: PENDING)
    created = store.peering_write(acceptor("foo"))
    assert created.state is PeeringState.PENDING
    # 2. update (FAILING is a read view under the released numbering, so update fields instead)
    updated = store.peering_write(
        acceptor("foo", meta={"env": "prod"}, state=PeeringState.ESTABLISHING)
    )
    assert updated.id == created.id and updated.create_index == created.create_index
    assert updated.modify_index == 2 and updated.meta == {"env": "prod"}
    assert updated.state is PeeringState.ESTABLISHING
    # 3. mark with {TERMINATED, DeletedAt}: succeeds
    marked = store.peering_write(acceptor("foo", state=PeeringState.TERMINATED, deleted_at=NOW))
    assert marked.state is PeeringState.TERMINATED and marked.deleted_at == NOW
    assert not marked.is_active() and marked.id == created.id
    # 4. a later update fails
    assert_refused(
        store, StoreError, ERR_WRITE_MARKED, store.peering_write, acceptor("foo", meta={"a": "b"})
    )
    # 5. creating a new peering that already has DeletedAt fails; so does TERMINATED
    assert_refused(
        store, StoreError, ERR_CREATE_MARKED, store.peering_write, acceptor("baz", deleted_at=NOW)
    )
    assert_refused(
        store,
        StoreError,
        ERR_CREATE_MARKED,
        store.peering_write,
        acceptor("baz", state=PeeringState.TERMINATED),
    )
    assert store.peering_read("baz") is None


def test_generate_uuid(store: StateStore) -> None:
    """Port of TestStore_PeeringWrite_GenerateUUID."""
    ids = [store.peering_write(acceptor(f"peer-{i}", id="ignored")).id for i in range(10)]
    assert len(set(ids)) == 10
    for peering_id in ids:
        assert str(uuid.UUID(peering_id)) == peering_id
    again = store.peering_write(acceptor("peer-3", id="some-other-id"))
    assert again.id == ids[3]
    assert store.peering_read_by_id("some-other-id") is None


def test_generated_id_is_retried_until_unused(make_store: StoreFactory) -> None:
    candidates = iter(["id-1", "id-1", "id-1", "id-2"])
    store = make_store(id_factory=lambda: next(candidates))
    assert store.peering_write(acceptor("a")).id == "id-1"
    assert store.peering_write(acceptor("b")).id == "id-2"


def test_names_are_case_insensitive_per_partition(store: StateStore) -> None:
    first = store.peering_write(acceptor("Foo"))
    same = store.peering_write(acceptor("foo", meta={"x": "y"}))
    assert same.id == first.id and same.name == "foo"
    assert store.peering_read("FOO") == same
    other = store.peering_write(acceptor("foo", partition="part2"))
    assert other.id != first.id
    assert [p.partition for p in store.peering_list()] == ["default", "part2"]
    assert store.peering_list("part2") == [other]


def test_update_with_undefined_state_keeps_the_state(store: StateStore) -> None:
    store.peering_write(dialer("d"))
    kept = store.peering_write(dialer("d", meta={"m": "1"}))
    assert kept.state is PeeringState.ESTABLISHING


def test_write_marking_normalises_to_deleting_and_drops_secrets(store: StateStore) -> None:
    store.peering_write(acceptor("a", establishment_secret="est", stream_secret="str"))
    assert store.peering_read("a") is not None
    marked = store.peering_write(acceptor("a", deleted_at=NOW, stream_secret="str"))
    assert marked.state is PeeringState.DELETING
    assert marked.stream_secret is None and marked.establishment_secret is None


@pytest.mark.parametrize(
    "bad",
    [
        acceptor("x", state=PeeringState.ACTIVE),
        acceptor("x", state=PeeringState.FAILING),
        acceptor("x", state=PeeringState.DELETING),  # DELETING without deleted_at
    ],
)
def test_unstorable_states_are_refused(store: StateStore, bad: Peering) -> None:
    store.peering_write(acceptor("x"))
    assert_refused(store, ValueError, None, store.peering_write, bad)


# --------------------------------------------------------------------------------------------
# Mark, delete, terminate
# --------------------------------------------------------------------------------------------


def test_mark_deleted_drops_every_other_field(store: StateStore) -> None:
    d = store.peering_write(
        dialer("d", meta={"k": "v"}, stream_secret="s3cret", establishment_secret="e")
    )
    marked = store.peering_mark_deleted("D", "default", NOW)
    assert marked is not None
    assert marked == Peering(
        id=d.id,
        name="d",
        deleted_at=NOW,
        state=PeeringState.DELETING,
        create_index=d.create_index,
        modify_index=2,
    )
    assert store.peering_read("d") == marked


def test_mark_deleted_noops(store: StateStore) -> None:
    store.peering_write(acceptor("a"))
    store.peering_mark_deleted("a", "default", NOW)
    before = store.dump()
    assert store.peering_mark_deleted("a", "default", NOW + 10) is None  # already marked
    assert store.peering_mark_deleted("missing", "default", NOW) is None
    assert store.dump() == before


def test_mark_deleted_applies_to_terminated_rows(store: StateStore) -> None:
    """The fixed behaviour of #14364: a TERMINATED row can be marked, then deleted."""
    a = store.peering_write(acceptor("a"))
    store.peering_terminate_by_id(a.id)
    marked = store.peering_mark_deleted("a", "default", NOW)
    assert marked is not None and marked.state is PeeringState.DELETING
    assert marked.deleted_at == NOW
    assert store.peering_delete("a")
    assert store.peering_read("a") is None


def test_peering_delete(store: StateStore) -> None:
    """Port of TestStore_PeeringDelete."""
    a = store.peering_write(acceptor("foo"))
    assert_refused(store, StoreError, ERR_DELETE_UNMARKED, store.peering_delete, "foo")
    store.peering_mark_deleted("foo", "default", NOW)
    assert store.peering_delete("foo") is True
    assert store.peering_read("foo") is None
    assert store.peering_read_by_id(a.id) is None
    before = store.dump()
    assert store.peering_delete("foo") is False  # missing: no-op
    assert store.dump() == before


def test_terminated_row_is_deletable_directly(store: StateStore) -> None:
    a = store.peering_write(acceptor("t"))
    store.peering_terminate_by_id(a.id)
    assert store.peering_delete("t") is True


def test_terminate_by_id(store: StateStore) -> None:
    """Port of TestStore_PeeringTerminateByID, plus what is kept and what is cleared."""
    d = store.peering_write(
        dialer("d", meta={"k": "v"}, stream_secret="s", establishment_secret="e")
    )
    t = store.peering_terminate_by_id(d.id)
    assert t is not None
    assert t.state is PeeringState.TERMINATED and t.modify_index == 2
    assert t.stream_secret is None and t.establishment_secret is None
    assert (t.id, t.meta, t.peer_id, t.peer_server_addresses, t.create_index) == (
        d.id,
        d.meta,
        d.peer_id,
        d.peer_server_addresses,
        d.create_index,
    )
    assert t.deleted_at is None and not t.is_active()
    assert store.peering_read_by_id(d.id) == t
    before = store.dump()
    assert store.peering_terminate_by_id("no-such-id") is None
    assert store.dump() == before


def test_terminate_keeps_deleted_at(store: StateStore) -> None:
    a = store.peering_write(acceptor("a"))
    store.peering_mark_deleted("a", "default", NOW)
    t = store.peering_terminate_by_id(a.id)
    assert t is not None and t.deleted_at == NOW and t.state is PeeringState.TERMINATED


# --------------------------------------------------------------------------------------------
# Reads
# --------------------------------------------------------------------------------------------


def test_reads(store: StateStore) -> None:
    """Ports of TestStateStore_PeeringRead / PeeringReadByID / TestStore_PeeringList."""
    assert store.peering_read("foo") is None
    assert store.peering_read_by_id("nope") is None
    foo = store.peering_write(acceptor("foo"))
    bar = store.peering_write(dialer("bar"))
    assert store.peering_read_by_id(foo.id) == foo
    assert store.peering_read("bar") == bar
    assert store.peering_list() == [bar, foo]
    assert store.peering_list("other") == []
    marked = store.peering_mark_deleted("foo", "default", NOW)
    assert store.peering_list() == [bar, marked]  # inactive rows are listed too


def test_a_read_cannot_nest_and_an_error_inside_one_leaves_the_store_usable(
        store: StateStore) -> None:
    """The read transaction (``_read``, a plain context manager class): a store operation
    inside one is refused, and an error raised inside one leaves the store readable and
    writable (its busy flag cleared, the backend's transaction left)."""
    foo = store.peering_write(acceptor("foo"))
    with store._read() as tx, pytest.raises(RuntimeError, match="cannot be nested"):
        assert tx.index == store.index
        store.peering_list()
    with pytest.raises(KeyError), store._read():
        raise KeyError("inside a read")
    assert store.peering_list() == [foo]
    bar = store.peering_write(dialer("bar"))
    assert store.peering_list() == [bar, foo]
    store.close()
    with pytest.raises(trio.ClosedResourceError):
        store.peering_list()


def test_list_deleted(store: StateStore) -> None:
    """Port of TestStateStore_Peering_ListDeleted: {foo, baz} out of three, one active."""
    store.peering_write(acceptor("foo"))
    store.peering_write(acceptor("bar"))
    baz = store.peering_write(dialer("baz", partition="p2"))
    store.peering_mark_deleted("foo", "default", NOW)
    store.peering_terminate_by_id(baz.id)
    deleted = store.peering_list_deleted()
    assert [p.name for p in deleted] == ["foo", "baz"]
    assert store.table_index("peerings") == 5


# --------------------------------------------------------------------------------------------
# Trust bundles
# --------------------------------------------------------------------------------------------


def test_trust_bundle_crud(store: StateStore) -> None:
    """Ports of the PeeringTrustBundle List / Read / Write / Delete tests."""
    store.peering_write(acceptor("peer1"))
    store.peering_write(acceptor("peer2"))
    store.peering_write(acceptor("peer1", partition="p2"))
    b1 = store.trust_bundle_write(
        TrustBundle(peer_name="peer1", trust_domain="a", root_pems=("r",))
    )
    assert (b1.create_index, b1.modify_index) == (4, 4)
    b2 = store.trust_bundle_write(TrustBundle(peer_name="peer2", trust_domain="b"))
    b3 = store.trust_bundle_write(TrustBundle(peer_name="peer1", partition="p2"))
    assert store.trust_bundle_read("peer1") == b1
    assert store.trust_bundle_read("nobody") is None
    assert store.trust_bundle_list() == [b1, b2, b3]
    assert store.trust_bundle_list("p2") == [b3]
    updated = store.trust_bundle_write(
        TrustBundle(peer_name="peer1", trust_domain="a2", root_pems=("r", "s"))
    )
    assert updated.create_index == 4 and updated.modify_index == 7
    assert store.trust_bundle_read("peer1") == updated
    assert store.table_index("trust_bundles") == 7
    assert store.trust_bundle_delete("peer1") is True
    assert store.trust_bundle_read("peer1") is None
    before = store.dump()
    assert store.trust_bundle_delete("peer1") is False
    assert store.dump() == before


def test_trust_bundle_write_needs_an_active_peering(store: StateStore) -> None:
    bundle = TrustBundle(peer_name="p", root_pems=("r",))
    assert_refused(store, StoreError, ERR_IMPORT_INACTIVE, store.trust_bundle_write, bundle)
    p = store.peering_write(acceptor("p"))
    store.trust_bundle_write(bundle)
    store.peering_terminate_by_id(p.id)
    assert_refused(store, StoreError, ERR_IMPORT_INACTIVE, store.trust_bundle_write, bundle)
    assert store.trust_bundle_delete("p") is True  # deletes stay allowed


# --------------------------------------------------------------------------------------------
# Local catalog
# --------------------------------------------------------------------------------------------


def test_local_catalog(store: StateStore) -> None:
    node = Node(name="n1", address="10.1.1.1")
    web = Service(id="web-1", name="web", port=80, node="n1")
    checks = [
        Check(check_id="serfHealth", node="n1"),
        Check(check_id="web-1:http", service_id="web-1", node="n1", status="critical"),
    ]
    store.register_service(node, web, checks)
    store.register_service(
        node,
        Service(id="db-1", name="db", node="n1"),
        [Check(check_id="db-1:tcp", service_id="db-1", node="n1")],
    )
    [inst] = store.local_service_instances("web")
    assert inst.node == node and inst.service == web
    assert [c.check_id for c in inst.checks] == ["serfHealth", "web-1:http"]
    assert store.local_service_instances("nothing") == []
    assert store.deregister_service("web-1") is True
    assert store.local_service_instances("web") == []
    dump = store.dump()
    assert [c.check_id for c in dump.checks] == ["db-1:tcp", "serfHealth"]
    assert dump.nodes == (node,)  # the node stays
    assert store.deregister_service("web-1") is False
    assert store.dump() == dump


def test_local_instances_by_service_answers_many_services_in_one_call(store: StateStore) -> None:
    for i, name in enumerate(["web", "web", "db", "cache"]):
        node = Node(name=f"n{i}", address=f"10.0.0.{i}")
        store.register_service(node, Service(id=f"{name}-{i}", name=name, node=node.name),
                               [Check(check_id=f"{name}-{i}:ok", service_id=f"{name}-{i}",
                                      node=node.name)])
    found = store.local_instances_by_service(["web", "db", "missing"])
    assert sorted(found) == ["db", "web"]  # services without instances are left out
    assert [i.service.id for i in found["web"]] == ["web-0", "web-1"]
    for name in ("web", "db"):  # the same answer as one call per service
        assert found[name] == store.local_service_instances(name)
    with pytest.raises(ValueError):
        store.local_instances_by_service(["web", ""])


def test_local_instances_by_service_reads_in_bulk_with_the_same_answer(store: StateStore) -> None:
    """Above ``_BULK_READ_FROM`` instances the call reads all local nodes and checks at once;
    it must answer exactly as the per-node reads do (one service at a time stays below it)."""
    services = [f"s{i:02d}" for i in range(12)]
    for i, name in enumerate(services):
        for j in range(2):  # two instances each, on nodes shared with the next service
            node = Node(name=f"n{(i + j) % 12:02d}", address=f"10.0.{i}.{j}")
            sid = f"{name}-{j}"
            store.register_service(node, Service(id=sid, name=name, node=node.name),
                                   [Check(check_id=f"{sid}:ok", service_id=sid, node=node.name)])
    store.register_service(Node(name="n03", address="10.0.3.0"),
                           Service(id="lonely", name="lonely", node="n03"),
                           [Check(check_id="serfHealth", node="n03")])  # a node check
    store.peering_write(dialer("peer"))  # an imported node of the same name is not local
    store.import_service_nodes("peer", "default", "s00", [instance("n00", "s00")])
    asked = services[:10]
    found = store.local_instances_by_service(asked)
    assert sum(len(v) for v in found.values()) > base_module._BULK_READ_FROM
    assert sorted(found) == asked
    for name in asked:
        assert found[name] == store.local_service_instances(name)
    [on_n03] = [i for i in found["s02"] if i.node.name == "n03"]
    assert [c.check_id for c in on_n03.checks] == ["s02-1:ok", "serfHealth"]
    assert all(i.node.peer_name == "" for v in found.values() for i in v)


def test_local_catalog_validation(store: StateStore) -> None:
    node = Node(name="n1")
    svc = Service(id="s", name="s", node="n1")
    cases: list[tuple[type[Exception], tuple[Any, ...]]] = [
        (ValueError, (Node(name="n1", peer_name="p"), svc, [])),
        (ValueError, (node, Service(id="s", name="s", node="n2"), [])),
        (ValueError, (node, svc, [Check(check_id="c", node="n2")])),
        (ValueError, (node, svc, [Check(check_id="c", node="n1", service_id="other")])),
        (ValueError, (node, svc, [Check(check_id="c", node="n1")] * 2)),
        (TypeError, ("n1", svc, [])),
        (TypeError, (node, svc, "checks")),
        (TypeError, (node, svc, [node])),
    ]
    for exc, args in cases:
        assert_refused(store, exc, None, store.register_service, *args)


# --------------------------------------------------------------------------------------------
# Imported catalog
# --------------------------------------------------------------------------------------------


def test_import_stamps_and_replaces(store: StateStore) -> None:
    store.peering_write(dialer("peer"))
    store.import_service_nodes("peer", "default", "web", [instance("n1"), instance("n2")])
    store.import_service_nodes("peer", "default", "api", [instance("n2", "api")])
    dump = store.imported_node_dump("peer", "default")
    assert [info.node.name for info in dump] == ["n1", "n2"]
    for info in dump:
        records: tuple[Node | Service | Check, ...] = (info.node, *info.services, *info.checks)
        assert all(r.peer_name == "peer" and r.partition == "default" for r in records)
    assert store.imported_service_names("peer", "default") == ["api", "web"]
    # web moves off n1 and n2 onto n3: n1 has nothing left and goes; n2 keeps api
    store.import_service_nodes("peer", "default", "web", [instance("n3", node_check=False)])
    dump = store.imported_node_dump("peer", "default")
    assert [info.node.name for info in dump] == ["n2", "n3"]
    n2, n3 = dump
    assert [s.id for s in n2.services] == ["api-n2"]
    assert [c.check_id for c in n2.checks] == ["api-n2:health", "serfHealth"]
    assert [c.check_id for c in n3.checks] == ["web-n3:health"]
    # the latest snapshot of a node's checks wins: n2 reimported without its node check
    store.import_service_nodes("peer", "default", "api", [instance("n2", "api", node_check=False)])
    [n2, _] = store.imported_node_dump("peer", "default")
    assert [c.check_id for c in n2.checks] == ["api-n2:health"]
    # imported data is invisible to the local catalog
    assert store.local_service_instances("web") == []


def test_import_delete_service(store: StateStore) -> None:
    store.peering_write(dialer("peer"))
    store.import_service_nodes("peer", "default", "web", [instance("n1"), instance("n2")])
    store.import_service_nodes("peer", "default", "api", [instance("n2", "api")])
    assert store.import_delete_service("peer", "default", "web") is True
    assert [i.node.name for i in store.imported_node_dump("peer", "default")] == ["n2"]
    before = store.dump()
    assert store.import_delete_service("peer", "default", "web") is False
    assert store.dump() == before


def test_import_guard(store: StateStore) -> None:
    entries = [instance("n1")]
    assert_refused(
        store,
        StoreError,
        ERR_IMPORT_INACTIVE,
        store.import_service_nodes,
        "peer",
        "default",
        "web",
        entries,
    )
    p = store.peering_write(dialer("peer"))
    store.import_service_nodes("peer", "default", "web", entries)
    # wrong partition: no such peering there
    assert_refused(
        store,
        StoreError,
        ERR_IMPORT_INACTIVE,
        store.import_service_nodes,
        "peer",
        "p2",
        "web",
        entries,
    )
    store.peering_mark_deleted("peer", "default", NOW)
    assert_refused(
        store,
        StoreError,
        ERR_IMPORT_INACTIVE,
        store.import_service_nodes,
        "peer",
        "default",
        "web",
        [instance("n9")],
    )
    assert_refused(
        store,
        StoreError,
        ERR_IMPORT_INACTIVE,
        store.import_service_nodes,
        "peer",
        "default",
        "web",
        [],
    )
    # deletes are always allowed, so the deletion routine can clean up
    assert store.delete_imported_nodes("peer", "default", ["n1"]) == 1
    assert store.imported_node_dump("peer", "default") == []
    assert p.id == store.peering_list_deleted()[0].id


def test_import_guard_terminated(store: StateStore) -> None:
    p = store.peering_write(dialer("peer"))
    store.peering_terminate_by_id(p.id)
    assert_refused(
        store,
        StoreError,
        ERR_IMPORT_INACTIVE,
        store.import_service_nodes,
        "peer",
        "default",
        "web",
        [instance("n1")],
    )


def test_import_validation(store: StateStore) -> None:
    store.peering_write(dialer("peer"))
    n1, s1, c1 = instance("n1")
    bad: list[tuple[type[Exception], Any]] = [
        (ValueError, [instance("n1", "api")]),  # a different service name
        (ValueError, [(n1, Service(id="x", name="web", node="n2"), [])]),  # not on that node
        (ValueError, [(n1, s1, [Check(check_id="c", node="n1", service_id="zzz")])]),
        (ValueError, [instance("n1"), instance("n1")]),  # the same instance twice
        (
            ValueError,
            [(n1, s1, c1), (Node(name="n1", address="other"), *instance("n1", sid="w2")[1:])],
        ),
        (TypeError, [(n1, s1)]),
        (TypeError, [(s1, n1, c1)]),
        (TypeError, "n1"),
        (TypeError, [(n1, s1, "checks")]),
    ]
    for exc, entries in bad:
        assert_refused(
            store, exc, None, store.import_service_nodes, "peer", "default", "web", entries
        )
    empty: list[tuple[Node, Service, list[Check]]] = []
    args: tuple[str, str, str, list[tuple[Node, Service, list[Check]]]]
    for args in (
        ("", "default", "web", empty),
        ("peer", "", "web", empty),
        ("peer", "default", "", empty),
    ):
        assert_refused(store, ValueError, None, store.import_service_nodes, *args)


def test_batch_node_delete(store: StateStore) -> None:
    """The deletion routine's Txn of NodeDelete ops: nodes go with services and checks, at once."""
    store.peering_write(dialer("my-peer"))
    insert_test_peering_data(store, "my-peer")
    store.register_service(Node(name="aaa"), Service(id="local", name="local", node="aaa"))
    store.peering_mark_deleted("my-peer", "default", NOW)
    changes: list[Change] = []
    store.subscribe(changes.append)
    assert store.delete_imported_nodes("my-peer", "default", ["aaa", "bbb", "zzz", "aaa"]) == 2
    assert changes == [Change(store.index, frozenset({"catalog"}))]  # one transaction
    [left] = store.imported_node_dump("my-peer", "default")
    assert left.node.name == "ccc" and len(left.services) == 1 and len(left.checks) == 2
    assert store.imported_service_names("my-peer", "default") == ["c-service"]
    assert store.delete_imported_nodes("my-peer", "default", ["ccc"]) == 1
    assert store.trust_bundle_delete("my-peer") is True
    dump = store.dump()
    assert dump.services == (Service(id="local", name="local", node="aaa"),)
    assert all(n.peer_name == "" for n in dump.nodes) and dump.checks == ()
    before = store.dump()
    assert store.delete_imported_nodes("my-peer", "default", ["ccc"]) == 0
    assert store.dump() == before
    assert_refused(store, ValueError, None, store.delete_imported_nodes, "", "default", ["aaa"])
    assert_refused(store, TypeError, None, store.delete_imported_nodes, "my-peer", "default", "aaa")


def test_deferred_deletion_scenario(store: StateStore) -> None:
    """Port of TestLeader_Peering_DeferredDeletion at the store level: after marking, the
    routine's operations empty everything for the peer, and then the row can go."""
    store.peering_write(acceptor("my-peer"))
    insert_test_peering_data(store, "my-peer")
    store.peering_mark_deleted("my-peer", "default", NOW)
    [marked] = store.peering_list_deleted()
    names = [i.node.name for i in store.imported_node_dump(marked.name, marked.partition)]
    store.delete_imported_nodes(marked.name, marked.partition, names)
    store.trust_bundle_delete(marked.name, marked.partition)
    store.peering_delete(marked.name, marked.partition)
    dump = store.dump()
    assert (dump.peerings, dump.trust_bundles, dump.nodes, dump.services, dump.checks) == (
        (),
        (),
        (),
        (),
        (),
    )


# --------------------------------------------------------------------------------------------
# Exports
# --------------------------------------------------------------------------------------------


def test_exported_services_for_peer(store: StateStore) -> None:
    """Port of TestStateStore_ExportedServicesForPeer (exact names; no wildcard in peerkit)."""
    store.export_service("web", "peer1")
    store.export_service("db", "peer1")
    store.export_service("api", "peer2")
    assert store.exported_services_for_peer("peer1") == []  # no peering yet
    store.peering_write(acceptor("peer1"))
    assert store.exported_services_for_peer("peer1") == ["db", "web"]
    assert store.exported_services_for_peer("PEER1") == ["db", "web"]
    store.unexport_service("db", "peer1")
    assert store.exported_services_for_peer("peer1") == ["web"]
    store.peering_mark_deleted("peer1", "default", NOW)
    assert store.exported_services_for_peer("peer1") == []
    assert [e.service for e in store.export_entries()] == ["api", "web"]


def test_export_noops_consume_no_index(store: StateStore) -> None:
    store.export_service("web", "peer1")
    before = store.dump()
    store.export_service("web", "peer1")
    store.unexport_service("web", "peer2")
    store.unexport_service("nothing", "peer1")
    assert store.dump() == before
    store.unexport_service("web", "peer1")
    assert store.export_entries() == []
    assert store.table_index("exports") == 2


def test_peerings_for_service(store: StateStore) -> None:
    """Port of TestStateStore_PeeringsForService incl. "peerings marked for deletion are
    excluded" (and TERMINATED ones)."""
    a = store.peering_write(acceptor("a"))
    b = store.peering_write(dialer("b"))
    c = store.peering_write(acceptor("c"))
    for name in ("c", "b", "a", "ghost"):
        store.export_service("web", name)
    assert store.peerings_for_service("web") == [a, b, c]
    assert store.peerings_for_service("other") == []
    store.peering_mark_deleted("a", "default", NOW)
    store.peering_terminate_by_id(c.id)
    assert store.peerings_for_service("web") == [b]
    assert store.peerings_for_service("web", partition="p2") == []


# --------------------------------------------------------------------------------------------
# Bad input changes nothing
# --------------------------------------------------------------------------------------------


def test_bad_arguments_change_nothing(store: StateStore) -> None:
    p = store.peering_write(dialer("peer"))
    store.export_service("web", "peer")
    calls: list[tuple[type[Exception], Callable[..., object], tuple[Any, ...]]] = [
        (TypeError, store.peering_write, ("peer",)),
        (TypeError, store.peering_read, (None,)),
        (ValueError, store.peering_read, ("",)),
        (ValueError, store.peering_read, ("peer", "")),
        (ValueError, store.peering_mark_deleted, ("peer", "default", 0)),
        (TypeError, store.peering_mark_deleted, ("peer", "default", "now")),
        (ValueError, store.peering_mark_deleted, ("peer", "", NOW)),
        (ValueError, store.peering_delete, ("",)),
        (TypeError, store.peering_terminate_by_id, (42,)),
        (ValueError, store.peering_terminate_by_id, ("",)),
        (TypeError, store.peering_list, (3,)),
        (TypeError, store.trust_bundle_write, ({"peer_name": "peer"},)),
        (ValueError, store.trust_bundle_delete, ("",)),
        (ValueError, store.export_service, ("", "peer")),
        (TypeError, store.export_service, ("web", None)),
        (ValueError, store.unexport_service, ("web", "")),
        (ValueError, store.exported_services_for_peer, ("",)),
        (ValueError, store.peerings_for_service, ("",)),
        (ValueError, store.deregister_service, ("",)),
        (ValueError, store.table_index, ("nodes",)),
    ]
    for exc, fn, args in calls:
        assert_refused(store, exc, None, fn, *args)
    assert store.peering_read_by_id(p.id) == p


async def test_bad_watch_arguments(store: StateStore) -> None:
    with pytest.raises(TypeError):
        await store.wait_for_change("peerings", 0)
    with pytest.raises(ValueError):
        await store.wait_for_change([], 0)
    with pytest.raises(ValueError):
        await store.wait_for_change(["bogus"], 0)
    with pytest.raises(ValueError):
        await store.wait_for_change(["peerings"], -1)


# --------------------------------------------------------------------------------------------
# Watches
# --------------------------------------------------------------------------------------------


class Waiter:
    """Runs ``wait_for_change`` in the background and records its result."""

    def __init__(self, store: StateStore, tables: list[str], after: int) -> None:
        self.store, self.tables, self.after = store, tables, after
        self.result: int | None = None
        self.error: BaseException | None = None

    async def run(self) -> None:
        try:
            self.result = await self.store.wait_for_change(self.tables, self.after)
        except trio.ClosedResourceError as exc:
            self.error = exc


async def started(nursery: trio.Nursery, waiter: Waiter) -> Waiter:
    nursery.start_soon(waiter.run)
    await trio.testing.wait_all_tasks_blocked()
    return waiter


async def test_watch_firing(store: StateStore) -> None:
    """Port of TestStore_Peering_Watch / PeeringList_Watch at table granularity."""
    async with trio.open_nursery() as nursery:
        # an insert fires the peerings watch
        w = await started(nursery, Waiter(store, ["peerings"], store.table_index("peerings")))
        assert w.result is None
        store.peering_write(acceptor("foo"))
        await trio.testing.wait_all_tasks_blocked()
        assert w.result == store.index == 1

        # an unrelated write (another table) does not fire it; no-ops fire nothing
        w = await started(nursery, Waiter(store, ["peerings"], store.table_index("peerings")))
        store.export_service("web", "foo")
        store.peering_delete("missing")
        store.peering_mark_deleted("missing", "default", NOW)
        await trio.testing.wait_all_tasks_blocked()
        assert w.result is None
        # marking fires it, and foo then reads inactive
        store.peering_mark_deleted("foo", "default", NOW)
        await trio.testing.wait_all_tasks_blocked()
        assert w.result == 3
        foo = store.peering_read("foo")
        assert foo is not None and not foo.is_active()

        # a refused write fires nothing
        w = await started(nursery, Waiter(store, ["peerings", "catalog"], store.index))
        with pytest.raises(StoreError):
            store.peering_write(acceptor("foo"))
        await trio.testing.wait_all_tasks_blocked()
        assert w.result is None
        # deleting fires it; foo then reads as None and the table index is the delete's
        store.peering_delete("foo")
        await trio.testing.wait_all_tasks_blocked()
        assert w.result == 4 == store.table_index("peerings")
        assert store.peering_read("foo") is None


async def test_watch_returns_at_once_when_already_changed(store: StateStore) -> None:
    store.peering_write(acceptor("a"))
    store.export_service("web", "a")
    with trio.testing.assert_checkpoints():
        assert await store.wait_for_change(["peerings"], 0) == 1
    assert await store.wait_for_change(["peerings", "exports"], 1) == 2


async def test_watch_several_tables_and_waiters(store: StateStore) -> None:
    store.peering_write(dialer("p"))
    async with trio.open_nursery() as nursery:
        catalog = await started(nursery, Waiter(store, ["catalog"], store.index))
        bundles = await started(nursery, Waiter(store, ["trust_bundles", "exports"], store.index))
        store.import_service_nodes("p", "default", "web", [instance("n1")])
        await trio.testing.wait_all_tasks_blocked()
        assert (catalog.result, bundles.result) == (2, None)
        store.trust_bundle_write(TrustBundle(peer_name="p"))
        await trio.testing.wait_all_tasks_blocked()
        assert bundles.result == 3


async def test_close_wakes_waiters(store: StateStore) -> None:
    async with trio.open_nursery() as nursery:
        w = await started(nursery, Waiter(store, ["peerings"], 0))
        store.close()
        await trio.testing.wait_all_tasks_blocked()
    assert isinstance(w.error, trio.ClosedResourceError)
    with pytest.raises(trio.ClosedResourceError):
        store.peering_read("x")


def test_subscribers(store: StateStore) -> None:
    seen: list[Change] = []
    unsubscribe = store.subscribe(seen.append)
    p = store.peering_write(dialer("p"))
    store.trust_bundle_write(TrustBundle(peer_name="p"))
    store.import_service_nodes("p", "default", "web", [instance("n1")])
    store.export_service("web", "p")
    store.peering_delete("missing")  # no-op: no change
    with pytest.raises(StoreError):
        store.peering_delete("p")  # refused: no change
    store.peering_terminate_by_id(p.id)
    assert seen == [
        Change(1, frozenset({"peerings"})),
        Change(2, frozenset({"trust_bundles"})),
        Change(3, frozenset({"catalog"})),
        Change(4, frozenset({"exports"})),
        Change(5, frozenset({"peerings"})),
    ]
    unsubscribe()
    store.export_service("db", "p")
    assert len(seen) == 5
    assert [store.table_index(t) for t in ("peerings", "trust_bundles", "catalog", "exports")] == [
        5,
        2,
        3,
        6,
    ]


def test_subscriber_may_write(store: StateStore) -> None:
    """Callbacks run after the commit, so they may call the store again."""

    def mirror(change: Change) -> None:
        if change.tables == frozenset({"peerings"}) and store.export_entries() == []:
            store.export_service("web", "p")

    store.subscribe(mirror)
    store.peering_write(acceptor("p"))
    assert [e.service for e in store.export_entries()] == ["web"]
    assert store.index == 2


# --------------------------------------------------------------------------------------------
# Backends: atomicity and durability
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_backend_rolls_back_a_failed_transaction(kind: str, tmp_path: Path) -> None:
    backend = MemoryBackend() if kind == "memory" else SqliteBackend(tmp_path / "b.sqlite")
    keep = Node(name="keep")
    with backend.transaction(write=True) as txn:
        txn.put("nodes", ("", "default", "keep"), keep)
    with pytest.raises(RuntimeError), backend.transaction(write=True) as txn:
        txn.put("nodes", ("", "default", "new"), Node(name="new"))
        txn.put("nodes", ("", "default", "keep"), Node(name="keep", address="changed"))
        assert txn.delete("nodes", ("", "default", "keep"))
        raise RuntimeError("boom")
    with backend.transaction(write=False) as txn:
        assert txn.scan("nodes") == [keep]
        with pytest.raises(RuntimeError):
            txn.put("nodes", ("", "default", "x"), Node(name="x"))
    backend.close()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_backend_prefix_scan_is_exact(kind: str, tmp_path: Path) -> None:
    backend = MemoryBackend() if kind == "memory" else SqliteBackend(tmp_path / "b.sqlite")
    names = ["a", "a b", "a-b", "a,b", 'a"b', "ab", "b", "é", "a\\"]
    with backend.transaction(write=True) as txn:
        for peer in names:
            for node in ("n", "m"):
                txn.put("nodes", (peer, "default", node), Node(name=node, peer_name=peer))
    with backend.transaction(write=False) as txn:
        for peer in names:
            rows = txn.scan("nodes", (peer,))
            assert sorted(r.name for r in rows if isinstance(r, Node)) == ["m", "n"]
            assert {r.peer_name for r in rows if isinstance(r, Node)} == {peer}
            assert len(txn.scan("nodes", (peer, "default", "n"))) == 1
        assert len(txn.scan("nodes")) == 2 * len(names)
    backend.close()


def populate(store: StateStore) -> None:
    """A store with something in every table and every kind of peering row."""
    store.peering_write(dialer("dial", meta={"k": "v"}, stream_secret="s"))
    store.peering_write(acceptor("acc", establishment_secret="e", partition="p2"))
    gone = store.peering_write(acceptor("gone"))
    store.peering_write(acceptor("marked"))
    store.peering_terminate_by_id(gone.id)
    store.peering_mark_deleted("marked", "default", NOW)
    store.trust_bundle_write(TrustBundle(peer_name="dial", trust_domain="td", root_pems=("r",)))
    store.import_service_nodes("dial", "default", "web", [instance("n1"), instance("n2")])
    store.register_service(
        Node(name="local", address="127.0.0.1"),
        Service(id="api-1", name="api", port=9, tags=("a", "b"), node="local"),
        [Check(check_id="api-1:c", service_id="api-1", node="local", status="warning")],
    )
    store.export_service("api", "dial")
    store.export_service("api", "acc", partition="p2")


def test_sqlite_durability(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "data") as store:
        populate(store)
        expected = store.dump()
        index = store.index
    assert (tmp_path / "data" / DB_FILENAME).is_file()
    reopened = SqliteStore(tmp_path / "data")
    try:
        assert reopened.dump() == expected
        assert reopened.index == index
        assert reopened.table_index("exports") == index
        assert reopened.peering_read("dial") in expected.peerings
        # the counter carries on from where it was
        reopened.export_service("web", "dial")
        assert reopened.index == index + 1
    finally:
        reopened.close()


def test_sqlite_file_settings(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "nested" / "dir") as store:
        store.peering_write(acceptor("a"))
        path = tmp_path / "nested" / "dir" / DB_FILENAME
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            tables = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            assert {
                "peerings",
                "trust_bundles",
                "nodes",
                "services",
                "checks",
                "exports",
                "meta",
            } <= tables
            assert conn.execute("SELECT COUNT(*) FROM peerings").fetchone()[0] == 1
        finally:
            conn.close()


def test_sqlite_rejects_a_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / DB_FILENAME
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(RuntimeError, match="schema version 99"):
        SqliteStore(tmp_path)


def test_sqlite_row_and_key_text_is_compact_sorted_json() -> None:
    """The stored text is what files written before the codec was sped up hold (issue 10):
    compact JSON, keys sorted, non-ASCII kept, tuples as arrays, the state as its number."""
    row = Peering(id="i1", name="dc2", meta={"zé": "1", "a": "2"}, state=PeeringState.ACTIVE,
                  peer_server_addresses=("10.0.0.1:8502",), deleted_at=1.5)
    assert sqlite_codec.encode_row(row) == (
        '{"create_index":0,"deleted_at":1.5,"establishment_secret":null,"id":"i1",'
        '"meta":{"a":"2","zé":"1"},"modify_index":0,"name":"dc2","partition":"default",'
        f'"peer_ca_pems":[],"peer_id":"","peer_server_addresses":["10.0.0.1:8502"],'
        f'"peer_server_name":"","state":{int(PeeringState.ACTIVE)},"stream_secret":null}}')
    assert sqlite_codec.decode_row("peerings", sqlite_codec.encode_row(row)) == row
    assert sqlite_codec.encode_key(("", "default", "né")) == '["","default","né"]'


# --------------------------------------------------------------------------------------------
# The two backends cannot drift: random operation sequences give identical results
# --------------------------------------------------------------------------------------------

NAMES = st.sampled_from(["a", "B", "b", "c"])
OPS = st.one_of(
    st.tuples(st.just("write_acceptor"), NAMES),
    st.tuples(st.just("write_dialer"), NAMES),
    st.tuples(st.just("write_marked"), NAMES),
    st.tuples(st.just("mark"), NAMES),
    st.tuples(st.just("delete"), NAMES),
    st.tuples(st.just("terminate"), NAMES),
    st.tuples(st.just("bundle"), NAMES),
    st.tuples(st.just("unbundle"), NAMES),
    st.tuples(st.just("import"), NAMES, st.lists(st.sampled_from(["n1", "n2", "n3"]), max_size=3)),
    st.tuples(st.just("drop_nodes"), NAMES, st.lists(st.sampled_from(["n1", "n2"]), max_size=2)),
    st.tuples(st.just("export"), NAMES),
    st.tuples(st.just("unexport"), NAMES),
)


def apply(store: StateStore, op: tuple[Any, ...]) -> object:
    kind, name = op[0], op[1]
    try:
        if kind == "write_acceptor":
            return store.peering_write(acceptor(name, stream_secret="s"))
        if kind == "write_dialer":
            return store.peering_write(dialer(name, peer_id="pid"))
        if kind == "write_marked":
            return store.peering_write(acceptor(name, deleted_at=NOW))
        if kind == "mark":
            return store.peering_mark_deleted(name, "default", NOW)
        if kind == "delete":
            return store.peering_delete(name)
        if kind == "terminate":
            p = store.peering_read(name)
            return store.peering_terminate_by_id(p.id if p else "missing")
        if kind == "bundle":
            return store.trust_bundle_write(TrustBundle(peer_name=name, root_pems=("r",)))
        if kind == "unbundle":
            return store.trust_bundle_delete(name)
        if kind == "import":
            entries = [instance(n) for n in dict.fromkeys(op[2])]
            store.import_service_nodes(name, "default", "web", entries)
            return None
        if kind == "drop_nodes":
            return store.delete_imported_nodes(name, "default", op[2])
        if kind == "export":
            store.export_service("web", name)
            return None
        store.unexport_service("web", name)
        return None
    except StoreError as exc:
        return ("StoreError", exc.message)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=st.lists(OPS, max_size=25))
def test_backends_agree(ops: list[tuple[Any, ...]]) -> None:
    def ids() -> Callable[[], str]:
        counter = itertools.count(1)
        return lambda: f"id-{next(counter)}"

    with tempfile.TemporaryDirectory() as tmp:
        memory, durable = MemoryStore(id_factory=ids()), SqliteStore(tmp, id_factory=ids())
        try:
            for op in ops:
                assert apply(memory, op) == apply(durable, op), op
                assert memory.index == durable.index
            assert memory.dump() == durable.dump()
            for name in ("a", "b", "c"):
                assert memory.exported_services_for_peer(
                    name
                ) == durable.exported_services_for_peer(name)
                assert memory.imported_node_dump(name, "default") == durable.imported_node_dump(
                    name, "default"
                )
            assert memory.peerings_for_service("web") == durable.peerings_for_service("web")
            # invariants the rules guarantee
            for p in memory.peering_list():
                assert p.state in {
                    PeeringState.PENDING,
                    PeeringState.ESTABLISHING,
                    PeeringState.DELETING,
                    PeeringState.TERMINATED,
                }
                assert (p.state is PeeringState.DELETING) <= (p.deleted_at is not None)
                if not p.is_active():
                    assert p.stream_secret is None and p.establishment_secret is None
        finally:
            memory.close()
            durable.close()


def _reference_text(row: Any) -> str:
    """A stored row's text as the general encoder writes it (compact, keys sorted)."""
    import dataclasses
    import json

    def plain(value: object) -> object:
        if isinstance(value, PeeringState):
            return int(value)
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, Mapping):
            return dict(value)
        return value

    return json.dumps({f.name: plain(getattr(row, f.name)) for f in dataclasses.fields(row)},
                      sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(st.text(min_size=1, max_size=6), min_size=4, max_size=4),
       port=st.integers(0, 65535), tags=st.lists(st.text(min_size=1, max_size=4), max_size=3))
def test_sqlite_rows_written_directly_have_the_general_encoders_text(
        texts: list[str], port: int, tags: list[str]) -> None:
    """Nodes, services and checks are encoded without the JSON encoder (issue 10): the text
    must be the encoder's, byte for byte, whatever the strings hold."""
    a, b, c, d = texts
    rows: list[Any] = [
        Node(name=a, address=b, peer_name=c, partition=d),
        Service(id=a, name=b, port=port, tags=tuple(tags), node=c, peer_name=d),
        Check(check_id=a, name=b, node=c, service_id=d, status="warning"),
        ExportEntry(service=a, peers=tuple(sorted(set(tags)))),
    ]
    for row in rows:
        assert sqlite_codec.encode_row(row) == _reference_text(row)


_JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 70000), st.text(max_size=4),
    st.lists(st.text(max_size=3), max_size=2), st.dictionaries(st.text(max_size=2),
                                                                st.text(max_size=2), max_size=2))


@settings(max_examples=200, deadline=None)
@given(table=st.sampled_from(["nodes", "services", "checks", "exports", "meta"]),
       data=st.data())
def test_sqlite_rows_decode_as_the_record_constructor_builds_them(
        table: str, data: st.DataObject) -> None:
    """A stored row with every field is decoded without the record's __init__ (issue 10):
    whatever the fields hold (a corrupt or foreign file), the result, or the error and its
    message, is what the constructor gives."""
    import dataclasses
    import json

    cls = sqlite_codec.TABLES[table]
    fields = {f.name: data.draw(_JSON_VALUES) for f in dataclasses.fields(cls)}
    text = json.dumps(fields)
    try:
        expected: Any = cls(**json.loads(text))
    except (ValueError, TypeError) as exc:
        expected = (type(exc), str(exc))
    try:
        got: Any = sqlite_codec.decode_row(table, text)
    except (ValueError, TypeError) as exc:
        got = (type(exc), str(exc))
    assert got == expected
    if not isinstance(got, tuple):
        assert type(got) is cls and vars(got) == vars(expected)
