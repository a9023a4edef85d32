"""Issue 10's implementation changes, checked on both store backends and over real gRPC.

* ``StateStore.import_batch`` (a stream end's received Responses in one transaction) gives the
  same rows and the same per-op results as the single calls one after another, in one commit;
  a backend failure mid-batch leaves nothing of the batch; its write-behind view (rows read
  ahead per table, multi-row writes at the end, equal rows not rewritten) answers every read
  as the plain transaction would;
* ``LOCAL_CATALOG``: imported rows do not move it, local rows do; an exporter's stream end
  therefore does not recompute its exports on every import (counted through the store);
* ``dump_paged`` (ReadCatalog) reads the same snapshot as ``dump`` (SQLite: page by page, on
  a connection of its own, letting other tasks run and write meanwhile);
* the gRPC bridge's ``send_many`` and ``receive_ready`` keep order and the contract's rules
  (a message that does not decode is left for ``receive``, which reports it).

May import: pytest, trio, the standard library, peerkit.impl, peerkit.proto.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from peerkit.impl.store import (
    CATALOG,
    LOCAL_CATALOG,
    Check,
    ImportBundle,
    ImportService,
    ImportServiceList,
    MemoryStore,
    Node,
    Peering,
    Service,
    SqliteStore,
    StateStore,
    StoreError,
    StoreFailure,
    TrustBundle,
)
from peerkit.impl.store.base import BackendTxn, _BatchTxn, key_of
from peerkit.impl.store.memory import MemoryBackend
from peerkit.impl.store.sqlite import SqliteBackend
from peerkit.impl.testing import eventually, running_cluster
from peerkit.impl.transport import MemoryNetwork, StatusCode, StreamFailed, StreamMethod
from peerkit.impl.transport.grpc_bridge import READ_AHEAD, RESUME_AT, GrpcTransport
from peerkit.model.vocabulary import ERR_IMPORT_INACTIVE

PEER = "dc2"


@pytest.fixture(params=["memory", "sqlite"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[StateStore]]:
    """Two fresh stores of one backend kind, each with an active peering ``dc2``."""
    made: list[StateStore] = []
    for i in range(2):
        store: StateStore = (MemoryStore() if request.param == "memory"
                             else SqliteStore(tmp_path / f"data{i}"))
        store.peering_write(Peering(name=PEER))
        made.append(store)
    yield made
    for store in made:
        store.close()


def instance(node: str, service: str) -> tuple[Node, Service, list[Check]]:
    sid = f"{service}-{node}"
    return (Node(name=node, address="10.0.0.1"),
            Service(id=sid, name=service, port=80, node=node),
            [Check(check_id=f"{sid}:health", service_id=sid, node=node),
             Check(check_id="serfHealth", node=node)])


def imported_rows(store: StateStore) -> tuple[Any, ...]:
    """What was imported, without the indexes (a batch commits at one index)."""
    d = store.dump()
    bundles = tuple(replace(b, create_index=0, modify_index=0) for b in d.trust_bundles)
    return d.nodes, d.services, d.checks, bundles


def apply_singly(store: StateStore, ops: list[Any]) -> list[Exception | None]:
    """The same ops through the single-operation calls, one transaction each."""
    out: list[Exception | None] = []
    for op in ops:
        try:
            if isinstance(op, ImportService) and op.nodes:
                store.import_service_nodes(PEER, "default", op.name, op.nodes)
            elif isinstance(op, ImportService):
                store.import_delete_service(PEER, "default", op.name)
            elif isinstance(op, ImportServiceList):
                for name in store.imported_service_names(PEER, "default"):
                    if name not in op.keep:
                        store.import_delete_service(PEER, "default", name)
            else:
                store.trust_bundle_write(op.bundle)
        except (StoreError, ValueError, TypeError) as exc:
            out.append(exc)
        else:
            out.append(None)
    return out


def test_a_batch_equals_the_single_calls_in_one_commit(stores: list[StateStore]) -> None:
    batched, single = stores
    for store in stores:  # something to replace and something to delete
        store.import_service_nodes(PEER, "default", "old", [instance("n1", "old")])
        store.import_service_nodes(PEER, "default", "web", [instance("n1", "web"),
                                                             instance("n2", "web")])
    ops: list[Any] = [
        ImportBundle(TrustBundle(peer_name=PEER, trust_domain="dc2.example", root_pems=("r",))),
        ImportServiceList(("web", "api", "db")),  # "old" goes
        ImportService("web", [instance("n2", "web"), instance("n3", "web")]),  # n1 goes
        ImportService("api", [instance("n3", "api")]),
        ImportService("bad", [instance("n4", "other")]),  # ValueError: another service's row
        ImportService("db", [instance("n5", "db")]),
        ImportService("api", []),  # removed again, in the same batch
    ]
    before = batched.index
    results = batched.import_batch(PEER, "default", ops)
    assert batched.index == before + 1  # one commit
    expected = apply_singly(single, ops)
    assert [type(r) for r in results] == [type(r) for r in expected]
    assert [str(r) for r in results] == [str(r) for r in expected]
    assert isinstance(results[4], ValueError)
    assert imported_rows(batched) == imported_rows(single)
    assert batched.imported_service_names(PEER, "default") == ["db", "web"]
    # without a service list the batch reads only the services it names (scan_matching)
    ops = [ImportService("web", [instance("n3", "web")]), ImportService("db", []),
           ImportService("new", [instance("n2", "new")])]
    assert batched.import_batch(PEER, "default", ops) == apply_singly(single, ops)
    assert imported_rows(batched) == imported_rows(single)
    assert batched.imported_service_names(PEER, "default") == ["new", "web"]


def test_a_batch_sees_its_own_check_writes_on_a_shared_node(stores: list[StateStore]) -> None:
    """A batch sees its own writes: two services on one node, each import listing the node
    checks it knows (what any caching of a batch's reads must keep)."""
    batched, single = stores

    def on_n1(service: str, *node_checks: str) -> tuple[Node, Service, list[Check]]:
        node, svc, checks = instance("n1", service)
        return node, svc, [checks[0], *(Check(check_id=c, node="n1") for c in node_checks)]

    for store in stores:
        store.import_service_nodes(PEER, "default", "web", [on_n1("web", "serfHealth")])
        store.import_service_nodes(PEER, "default", "api", [on_n1("api", "serfHealth")])
    ops: list[Any] = [
        ImportService("web", [on_n1("web", "disk")]),  # serfHealth (read up front) goes
        ImportService("api", [on_n1("api", "mem")]),  # disk (this batch's write) goes
    ]
    assert batched.import_batch(PEER, "default", ops) == apply_singly(single, ops)
    assert imported_rows(batched) == imported_rows(single)
    n1_checks = sorted(c.check_id for c in batched.dump().checks if c.node == "n1")
    assert n1_checks == ["api-n1:health", "mem", "web-n1:health"]
    ops = [
        ImportService("web", [instance("n2", "web")]),  # web leaves n1
        ImportService("api", [on_n1("api", "cpu")]),
        ImportService("db", [on_n1("db", "cpu", "mem")]),
    ]
    assert batched.import_batch(PEER, "default", ops) == apply_singly(single, ops)
    assert imported_rows(batched) == imported_rows(single)
    n1_checks = sorted(c.check_id for c in batched.dump().checks if c.node == "n1")
    assert n1_checks == ["api-n1:health", "cpu", "db-n1:health", "mem"]


def test_a_batch_mixing_unchanged_updated_and_new_rows(stores: list[StateStore]) -> None:
    """The batch's write-behind view (rows read ahead per table, writes at the end, equal
    rows not rewritten) against the single calls: rows kept as they are, rows changed, rows
    added, a node emptied that the batch does not name, and an op whose nodes are a one-shot
    iterator (not read ahead: its rows are read one by one)."""
    batched, single = stores
    for store in stores:
        store.import_service_nodes(PEER, "default", "same", [instance("n1", "same")])
        store.import_service_nodes(PEER, "default", "web", [instance("n1", "web"),
                                                             instance("n2", "web")])
        store.import_service_nodes(PEER, "default", "moving", [instance("n6", "moving")])
    node, web, (web_check, serf) = instance("n2", "web")
    ops: list[Any] = [
        ImportService("same", [instance("n1", "same")]),  # every row unchanged
        # n1 leaves web; n2's service and a check change, its other check stays
        ImportService("web", [(node, replace(web, port=8080),
                               [replace(web_check, status="critical"), serf])]),
        ImportService("api", [instance("n2", "api"), instance("n3", "api")]),  # new rows
        ImportService("moving", iter([instance("n7", "moving")])),  # n6 emptied, not named
        ImportService("web", [(node, replace(web, port=8080),
                               [replace(web_check, status="critical"), serf])]),  # again
    ]
    before = batched.index
    assert batched.import_batch(PEER, "default", ops) == apply_singly(single, [
        *ops[:3], ImportService("moving", [instance("n7", "moving")]), ops[4]])
    assert batched.index == before + 1
    assert batched.table_index(CATALOG) == batched.index
    assert imported_rows(batched) == imported_rows(single)
    assert "n6" not in {n.name for n in batched.dump().nodes}
    assert [s.port for s in batched.dump().services if s.name == "web"] == [8080]
    # a batch of unchanged rows only is still a write: one commit, the catalog's index moves
    before = batched.index
    assert batched.import_batch(PEER, "default", ops[:1]) == [None]
    assert batched.index == batched.table_index(CATALOG) == before + 1
    assert imported_rows(batched) == imported_rows(single)


def test_a_batch_writes_only_the_rows_that_change(tmp_path: Path) -> None:
    backend = _FailingBackend(tmp_path / "db.sqlite")
    store = StateStore(backend)
    try:
        store.peering_write(Peering(name=PEER))
        store.import_service_nodes(PEER, "default", "web", [instance("n1", "web")])
        backend.written.clear()
        assert store.import_batch(PEER, "default", [
            ImportService("web", [instance("n1", "web")])]) == [None]
        assert backend.written == ["meta", "meta"]  # the store's and the catalog's index
        node, service, (check, serf) = instance("n1", "web")
        backend.written.clear()
        assert store.import_batch(PEER, "default", [ImportService("web", [
            (node, service, [replace(check, status="warning"), serf])])]) == [None]
        assert backend.written == ["checks", "meta", "meta"]
        assert {c.check_id: c.status for c in store.dump().checks} == {
            "web-n1:health": "warning", "serfHealth": "passing"}
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_the_write_behind_view_reads_like_the_transaction_it_wraps(
        kind: str, tmp_path: Path) -> None:
    """Random gets, puts, deletes, scans and read-aheads on a few keys, through
    ``_BatchTxn`` on one backend and straight on another: every answer is the same, and so
    is every row once the view is flushed (seeded: the same sequence every run)."""
    rng = random.Random(10)
    backends = ([MemoryBackend(), MemoryBackend()] if kind == "memory" else
                [SqliteBackend(tmp_path / "a.sqlite"), SqliteBackend(tmp_path / "b.sqlite")])
    nodes = ["n1", "n2", "n3"]
    for _round in range(20):
        with backends[0].transaction(write=True) as raw_a, \
                backends[1].transaction(write=True) as plain:
            view = _BatchTxn(raw_a)
            for _step in range(30):
                node = rng.choice(nodes)
                check = Check(check_id=rng.choice(["a", "b"]), node=node, peer_name=PEER,
                              status=rng.choice(["passing", "critical"]))
                key = (PEER, "default", node, check.check_id)
                action = rng.randrange(6)
                if action == 0:
                    assert view.get("checks", key) == plain.get("checks", key)
                elif action == 1:
                    view.put("checks", key, check)
                    plain.put("checks", key, check)
                elif action == 2:
                    assert view.delete("checks", key) == plain.delete("checks", key)
                elif action == 3:
                    prefix = (PEER, "default", node)[:rng.randrange(4)]
                    assert (sorted(map(repr, view.scan("checks", prefix)))
                            == sorted(map(repr, plain.scan("checks", prefix))))
                elif action == 4:
                    values = rng.sample(nodes, 2)
                    assert (sorted(map(repr, view.scan_matching(
                        "checks", (PEER, "default"), "node", values)))
                            == sorted(map(repr, plain.scan_matching(
                                "checks", (PEER, "default"), "node", values))))
                elif rng.random() < 0.5:
                    view.preload("checks", [(PEER, "default", n) for n in rng.sample(nodes, 2)])
                else:
                    view.preload_tables(("nodes", "checks"),
                                        [(PEER, "default", n) for n in rng.sample(nodes, 2)])
            view.flush()
            assert (sorted(map(repr, raw_a.scan("checks")))
                    == sorted(map(repr, plain.scan("checks"))))
    for backend in backends:
        backend.close()


def test_one_statement_reads_several_tables_as_a_scan_each(tmp_path: Path) -> None:
    """SQLite's ``scan_prefixes_of`` (one UNION ALL statement, issue 10) gives what
    ``scan_prefixes`` of each table gives, keys equal to a prefix (nodes) included, over
    more prefixes than one statement takes (seeded)."""
    rng = random.Random(10)
    backend = SqliteBackend(tmp_path / "s.sqlite")
    names = [f"n{i}" for i in range(700)] + ["n1-x", "n1,", "n1]", 'n"1', "ü"]
    with backend.transaction(write=True) as raw:
        for name in rng.sample(names, 400):
            node, service, checks = instance(name, rng.choice(["web", "api", 'd\u00e9"b']))
            for table, row in (("nodes", node), ("services", service),
                               *(("checks", check) for check in checks)):
                stamped = replace(row, peer_name=PEER)  # type: ignore[type-var]
                raw.put(table, key_of(stamped), stamped)
        raw.put("nodes", ("other", "default", "n1"), Node(name="n1", peer_name="other"))
        for count in (1, 3, 650):
            prefixes = [(PEER, "default", n) for n in rng.sample(names, count)]
            tables = ("nodes", "services", "checks")
            got = raw.scan_prefixes_of(tables, prefixes)
            assert set(got) == set(tables)
            for table in tables:
                assert (sorted(map(repr, got[table]))
                        == sorted(map(repr, raw.scan_prefixes(table, prefixes))))
                assert got[table] or count == 1
        # and the services by name (one range and a JSON list of names, issue 10): as the
        # default filter after a scan gives them
        for prefix in [(PEER, "default"), (PEER, "default", "n1"), (PEER,), ("other",)]:
            for values in [["web"], ["api", 'd\u00e9"b'], ["nope"], ["web", "api", 'd\u00e9"b']]:
                fast = raw.scan_matching("services", prefix, "name", values)
                plain = BackendTxn.scan_matching(raw, "services", prefix, "name", values)
                assert sorted(map(repr, fast)) == sorted(map(repr, plain))
                assert fast or values == ["nope"] or prefix in [(PEER, "default", "n1"),
                                                                 ("other",)]
    backend.close()


def test_a_batch_for_an_inactive_peering_refuses_each_upsert(stores: list[StateStore]) -> None:
    store = stores[0]
    store.peering_mark_deleted(PEER, "default", 1.0)
    results = store.import_batch(PEER, "default", [
        ImportService("web", [instance("n1", "web")]),
        ImportService("web", []),  # a removal is always allowed
        ImportBundle(TrustBundle(peer_name=PEER, trust_domain="x", root_pems=())),
    ])
    assert [r.message if isinstance(r, StoreError) else r for r in results] == [
        ERR_IMPORT_INACTIVE, None, ERR_IMPORT_INACTIVE]
    assert store.imported_service_names(PEER, "default") == []


def test_the_peering_is_looked_up_again_after_a_peering_write(
        stores: list[StateStore]) -> None:
    """``import_batch`` keeps its peering lookup across batches only while no peering write
    has committed: a batch after the row is marked for deletion is refused, and one after a
    new row of that name is written is accepted again."""
    store = stores[0]
    assert store.import_batch(PEER, "default", [ImportService("web", [instance("n1", "web")])]) \
        == [None]
    store.peering_mark_deleted(PEER, "default", 1.0)
    results = store.import_batch(PEER, "default", [ImportService("api", [instance("n2", "api")])])
    assert [getattr(r, "message", r) for r in results] == [ERR_IMPORT_INACTIVE]
    store.peering_delete(PEER, "default")
    store.peering_write(Peering(name=PEER))
    assert store.import_batch(PEER, "default", [ImportService("api", [instance("n2", "api")])]) \
        == [None]
    store.mutants = frozenset({"import-guard-inverted"})  # the rules changed: asked again
    results = store.import_batch(PEER, "default", [ImportService("db", [instance("n3", "db")])])
    assert [getattr(r, "message", r) for r in results] == [ERR_IMPORT_INACTIVE]
    assert store.imported_service_names(PEER, "default") == ["api", "web"]


class _FailingBackend(SqliteBackend):
    """Fails the ``fail_at``-th row put (a disk error), after the earlier puts of the batch
    (a ``put_many`` counts its rows; the rows before the failing one are written); records
    the table of every row put."""

    fail_at = 0
    puts = 0
    written: list[str]  # the table of each row put, in order

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.written = []

    def transaction(self, *, write: bool) -> Any:
        inner = super().transaction(write=write)
        backend = self

        class Wrapped:
            def __enter__(self) -> Any:
                raw = inner.__enter__()
                put = raw.put

                def failing_put(table: str, key: Any, row: Any) -> None:
                    backend.puts += 1
                    backend.written.append(table)
                    if backend.puts == backend.fail_at:
                        raise sqlite3_error()
                    put(table, key, row)

                put_many = raw.put_many

                def failing_put_many(table: str, rows: Any) -> None:
                    # the rows before the failing one are written first, then the error
                    for i in range(len(rows)):
                        backend.puts += 1
                        backend.written.append(table)
                        if backend.puts == backend.fail_at:
                            put_many(table, rows[:i])
                            raise sqlite3_error()
                    put_many(table, rows)

                raw.put = failing_put
                raw.put_many = failing_put_many
                return raw

            def __exit__(self, *exc: Any) -> Any:
                return inner.__exit__(*exc)

        return Wrapped()


def sqlite3_error() -> Exception:
    import sqlite3
    return sqlite3.OperationalError("database or disk is full")


def test_a_failure_mid_batch_leaves_nothing_of_it(tmp_path: Path) -> None:
    backend = _FailingBackend(tmp_path / "db.sqlite")
    store = StateStore(backend)
    try:
        store.peering_write(Peering(name=PEER))
        before = store.dump()
        backend.puts, backend.fail_at = 0, 10  # mid-write: rows 1-9 are written first
        with pytest.raises(StoreFailure):
            store.import_batch(PEER, "default", [
                ImportService(f"s{i}", [instance(f"n{i}", f"s{i}")]) for i in range(4)])
        assert store.dump() == before
    finally:
        store.close()


def test_imports_do_not_move_the_local_catalog_index(stores: list[StateStore]) -> None:
    store = stores[0]
    local = store.table_index(LOCAL_CATALOG)
    store.import_service_nodes(PEER, "default", "web", [instance("n1", "web")])
    store.import_batch(PEER, "default", [ImportService("api", [instance("n2", "api")])])
    assert store.table_index(CATALOG) > local
    assert store.table_index(LOCAL_CATALOG) == local
    node, service, checks = instance("n9", "mine")
    store.register_service(node, service, checks)
    assert store.table_index(LOCAL_CATALOG) == store.table_index(CATALOG) == store.index


async def test_an_exporter_does_not_recompute_its_exports_on_imports(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """dc1 exports 30 services to dc2 and dc2 exports one to dc1. dc2's stream end computes
    what it exports when the stream starts and after local changes only, not after each of
    its 30 imports (before issue 10 every import woke it: 30 more computations)."""
    network = MemoryNetwork()
    async with running_cluster(network, "dc1", "dc1:8502") as dc1, \
            running_cluster(network, "dc2", "dc2:8502") as dc2:
        for i in range(30):
            node, service, checks = instance(f"n{i}", f"s{i:02d}")
            dc1.store.register_service(replace(node, address="10.0.0.2"), service, checks)
            dc1.store.export_service(service.name, "dc2")
        node, service, checks = instance("m", "mine")
        dc2.store.register_service(node, service, checks)
        dc2.store.export_service("mine", "dc1")
        calls = 0
        original = dc2.store.exported_services_for_peer

        def counted(*args: Any, **kwargs: Any) -> list[str]:
            nonlocal calls
            calls += 1
            return original(*args, **kwargs)

        dc2.store.exported_services_for_peer = counted  # type: ignore[method-assign]
        token = await dc1.client.generate_token("dc2")
        await dc2.client.establish("dc1", token)
        await eventually(lambda: len(dc2.imported("dc1")) == 30 and dc1.imported("dc2")
                         == ["mine"], dc1, dc2)
        await trio.sleep(1)  # anything the imports woke has run by now
        assert calls <= 3, calls  # the stream's start (and the establish), not per import


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_dump_paged_reads_the_same_snapshot_and_lets_others_run(
    tmp_path: Path, kind: str
) -> None:
    """The same dump as ``dump()``; on SQLite, taken page by page from one snapshot while
    another task goes on running and writing (its writes are not in the snapshot)."""
    store: StateStore = MemoryStore() if kind == "memory" else SqliteStore(tmp_path)
    try:
        store.peering_write(Peering(name=PEER))
        for i in range(20):
            store.import_service_nodes(PEER, "default", f"s{i}", [instance(f"n{i}", f"s{i}")])
        before = store.dump()
        assert await store.dump_paged() == before
        if kind == "memory":
            return
        steps = 0
        done = False

        async def other_task() -> None:
            nonlocal steps
            while not done:
                steps += 1
                if steps == 2:  # a write while the snapshot is being read
                    store.import_service_nodes(PEER, "default", "late", [instance("z", "late")])
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(other_task)
            await trio.lowlevel.checkpoint()
            paged = await store.dump_paged(page_rows=5)
            done = True
        assert paged == before  # one snapshot: the late write is not in it
        assert steps >= 10  # 20 nodes, 20 services, 40 checks in pages of 5: many steps
        assert "late" in store.imported_service_names(PEER, "default")
    finally:
        store.close()


# ---- the gRPC bridge ------------------------------------------------------------------------

METHOD = "/peerkit.test.Batch/Bidi"


def strict_decode(data: bytes) -> bytes:
    if data == b"bad":
        raise ValueError("does not decode")
    return data


@pytest.mark.grpc
async def test_send_many_and_receive_ready_keep_order_and_stop_before_a_bad_message() -> None:
    got: list[bytes] = []
    batches: list[int] = []
    ended: list[BaseException] = []
    done = trio.Event()

    async def handler(stream: Any) -> None:
        try:
            while True:
                first = await stream.receive()
                await trio.sleep(0.01)  # let more arrive: receive_ready then has some
                more = stream.receive_ready(1000)
                batches.append(1 + len(more))
                got.extend([first, *more])
        except StreamFailed as exc:
            ended.append(exc)
        finally:
            done.set()

    messages = [f"m{i:04d}".encode() for i in range(300)]
    with trio.fail_after(30):
        async with GrpcTransport() as transport, transport.serve(
            "127.0.0.1:0", [StreamMethod(METHOD, handler, strict_decode, bytes)]
        ) as server, transport.connect(server.address) as channel:
            stream = channel.open_stream(METHOD, bytes, bytes)
            await stream.send_many(messages[:150])
            await stream.send_many([*messages[150:], b"bad", b"after"])
            await done.wait()
            with pytest.raises(StreamFailed):
                await stream.receive()
    assert got == messages  # in order, nothing lost, nothing after the bad one
    assert max(batches) > 1  # receive_ready did hand over what was already read
    assert len(ended) == 1 and ended[0].code is StatusCode.INVALID_ARGUMENT


@pytest.mark.grpc
async def test_a_waiting_receive_is_woken_once_however_many_messages_arrive_meanwhile() -> None:
    """The read-ahead wakes a waiting ``receive`` once, not once per message read while trio
    had not run yet (issue 10: those repeated wakes were 95% of all thread crossings). The
    trio thread is held busy (blocked on purpose) while the loop thread reads 20 messages."""
    count = 20
    read_all = threading.Event()
    wakes: list[object] = []
    go = trio.Event()
    serving = trio.Event()

    async def handler(stream: Any) -> None:
        serving.set()
        await go.wait()
        await stream.send_many([b"m%02d" % i for i in range(count)])
        async for _ in stream:  # until the client half-closes
            pass

    with trio.fail_after(30):
        async with GrpcTransport() as transport, transport.serve(
            "127.0.0.1:0", [StreamMethod(METHOD, handler, bytes, bytes)]
        ) as server, transport.connect(server.address) as channel:
            stream = channel.open_stream(METHOD, bytes, bytes)
            lt = stream._lt
            to_trio = lt.to_trio
            reads = 0
            read = stream._aio_read

            async def counting_read() -> object:  # loop thread
                nonlocal reads
                reads += 1
                if reads == count + 1:  # all 20 read and queued: the 21st read waits
                    read_all.set()
                return await read()

            def counting_to_trio(fn: Any, *args: object) -> bool:  # loop thread
                if isinstance(getattr(fn, "__self__", None), trio.Event):
                    wakes.append(fn.__self__)
                return to_trio(fn, *args)

            stream._aio_read = counting_read  # type: ignore[method-assign]
            lt.to_trio = counting_to_trio  # type: ignore[method-assign]
            got: list[bytes] = []
            async with trio.open_nursery() as nursery:

                async def first() -> None:
                    got.append(await stream.receive())

                nursery.start_soon(first)
                await serving.wait()
                await trio.testing.wait_all_tasks_blocked()  # the receive is waiting
                go.set()
                await trio.testing.wait_all_tasks_blocked()  # the server's write is submitted
                assert read_all.wait(20)  # the trio thread does not run meanwhile
            lt.to_trio = to_trio  # type: ignore[method-assign]
            got.extend(stream.receive_ready(100))
            await stream.close_send()
    assert got == [b"m%02d" % i for i in range(count)]
    assert len(wakes) == 1, len(wakes)


@pytest.mark.grpc
async def test_a_full_read_ahead_resumes_once_per_half_window_taken() -> None:
    """A read-ahead that filled up (trio taking messages more slowly than they arrive: here a
    handler that answers each message before taking the next) reads again only when trio has
    taken it down to RESUME_AT, so resuming it crosses to the loop at most once per
    READ_AHEAD - RESUME_AT messages taken, not once per message (issue 10)."""
    count = 300
    resumes = 0
    echoed = trio.Event()

    async def handler(stream: Any) -> None:
        nonlocal resumes
        lt = stream._lt
        call_soon = lt.call_soon

        def counting_call_soon(fn: Any, *args: object) -> None:  # trio thread
            nonlocal resumes
            if getattr(fn, "__name__", "") == "_aio_space":
                resumes += 1
            call_soon(fn, *args)

        lt.call_soon = counting_call_soon
        try:
            for _ in range(count):
                await stream.send(await stream.receive())
        finally:
            lt.call_soon = call_soon
        echoed.set()

    with trio.fail_after(60):
        async with GrpcTransport() as transport, transport.serve(
            "127.0.0.1:0", [StreamMethod(METHOD, handler, bytes, bytes)]
        ) as server, transport.connect(server.address) as channel:
            stream = channel.open_stream(METHOD, bytes, bytes)
            messages = [b"m%03d" % i for i in range(count)]
            got: list[bytes] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream.send_many, messages)
                for _ in range(count):
                    got.append(await stream.receive())
            await echoed.wait()
            await stream.close_send()
    assert got == messages
    assert resumes <= count // (READ_AHEAD - RESUME_AT) + 1, resumes
