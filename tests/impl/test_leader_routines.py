"""The leader routines under virtual time: the sync pass, the deferred-deletion routine, and
stopping everything on leadership loss (the fix of #14344 / #17483).

May import: pytest, trio, peerkit.impl (leader, logs, store, testing, transport),
peerkit.model.vocabulary.
"""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from peerkit.impl.leader import (
    MAX_BATCH_BYTES,
    AddressRing,
    DeletionRoutine,
    LeaderConfig,
    Leadership,
    node_batches,
)
from peerkit.impl.logs import EventLog
from peerkit.impl.store import (
    CATALOG,
    PEERINGS,
    TRUST_BUNDLES,
    Change,
    Check,
    MemoryStore,
    Node,
    Peering,
    Service,
    StateStore,
    TrustBundle,
)
from peerkit.impl.testing import (
    imported_instances,
    let_time_pass,
    memory_call,
    peer,
    running_cluster,
    two_clusters,
    until,
)
from peerkit.impl.transport import MemoryNetwork, StatusCode
from peerkit.model.vocabulary import ERR_NOT_LEADER_ANYMORE, PeeringState

LOG = EventLog("peerkit.test")
NOW = 1_750_000_000.0
ONE_NODE_PER_BATCH = len("node-0000") + len("default") + len("dc2")


def leadership(store: StateStore, bugs: frozenset[str] = frozenset()) -> Leadership:
    cfg = LeaderConfig(name="dc1", store=store, transport=MemoryNetwork(), log=LOG,
                       trust_domain="dc1.test", root_pems=(), bugs=bugs)
    return Leadership(cfg, 1)


# ---------------------------------------------------------------------------------------------
# sync pass


async def test_sync_pass_snapshots_streams_before_listing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = MemoryStore()
    term = leadership(store)
    a = store.peering_write(Peering(name="a"))
    done_a = term.tracker.connected(a.id)
    calls: list[str] = []
    late: dict[str, trio.Event] = {}
    real_connected = term.tracker.connected_streams
    real_list = store.peering_list

    def connected_streams() -> dict[str, trio.Event]:
        calls.append("connected_streams")
        return real_connected()

    def peering_list(partition: str | None = None) -> list[Peering]:
        calls.append("peering_list")
        rows = real_list(partition)
        # Between the two reads a peering is created and its stream connects: the pass must not
        # tear it down although the list it got does not hold the new peering.
        b = store.peering_write(Peering(name="b"))
        late["b"] = term.tracker.connected(b.id)
        return rows

    monkeypatch.setattr(term.tracker, "connected_streams", connected_streams)
    monkeypatch.setattr(store, "peering_list", peering_list)
    index = term.sync.sync_pass()
    assert calls == ["connected_streams", "peering_list"]
    assert not done_a.is_set() and not late["b"].is_set()
    assert index == 1  # the peering-table index the list was taken at (before "b")


@pytest.mark.parametrize("bug", [False, True], ids=["fixed", "stored-map"])
async def test_sync_pass_stored_map(monkeypatch: pytest.MonkeyPatch, bug: bool) -> None:
    store = MemoryStore()
    term = leadership(store, frozenset({"stored-map"}) if bug else frozenset())
    accepted = store.peering_write(Peering(name="accepted"))  # acceptor row, healthy stream
    dialed = store.peering_write(Peering(name="dialed", peer_server_addresses=("dc9:1",),
                                         peer_id="r1"))
    idle = store.peering_write(Peering(name="idle", peer_server_addresses=("dc9:1",),
                                       peer_id="r2"))  # dialer row without a stream
    marked = store.peering_write(Peering(name="marked"))
    gone = store.peering_write(Peering(name="gone", peer_server_addresses=("dc9:1",),
                                       peer_id="r3"))
    done = {p.name: term.tracker.connected(p.id) for p in (accepted, dialed, marked, gone)}
    store.peering_mark_deleted("marked", "default", NOW)
    store.peering_terminate_by_id(gone.id)
    dials: list[str] = []
    monkeypatch.setattr(term, "establish_stream", lambda p: dials.append(p.name))
    term.sync.sync_pass()
    closed = sorted(name for name, event in done.items() if event.is_set())
    if bug:
        # only dialed peerings are "stored": the healthy accepted stream is torn down too
        assert closed == ["accepted", "gone", "marked"]
    else:
        assert closed == ["gone", "marked"]
    assert dials == ["idle"]  # the only active dialer row without a connected stream
    assert idle.id not in term.sync.torn_down


# ---------------------------------------------------------------------------------------------
# deletion routine


def seed_imports(store: StateStore, peer_name: str = "dc2") -> Peering:
    """upstream's insertTestPeeringData: a trust bundle and nodes aaa/bbb/ccc, each with a
    service, a service check and a serfHealth node check, all with PeerName set."""
    row = store.peering_write(Peering(name=peer_name))
    store.trust_bundle_write(TrustBundle(peer_name=peer_name, trust_domain="dc2.test",
                                         root_pems=("PEM",)))
    for node in ("aaa", "bbb", "ccc"):
        store.import_service_nodes(peer_name, "default", f"{node}-svc", [(
            Node(name=node), Service(id=f"{node}-svc", name=f"{node}-svc", node=node),
            [Check(check_id=f"{node}-svc-check", service_id=f"{node}-svc", node=node),
             Check(check_id="serfHealth", node=node)],
        )])
    return row


@pytest.mark.parametrize("terminated", [False, True], ids=["deleted", "terminated"])
async def test_deletion_order(autojump_clock: trio.testing.MockClock, terminated: bool) -> None:
    store = MemoryStore()
    row = seed_imports(store)
    seen: list[frozenset[str]] = []

    def record(change: Change) -> None:
        seen.append(change.tables)

    store.subscribe(record)
    if terminated:
        store.peering_terminate_by_id(row.id)
    else:
        store.peering_mark_deleted("dc2", "default", NOW)
    routine = DeletionRoutine(store, LOG, batch_bytes=len("aaa") + len("default") + len("dc2"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(routine.run)
        await until(store, lambda: not store.imported_node_dump("dc2", "default")
                    and store.trust_bundle_read("dc2") is None
                    and (terminated or store.peering_read("dc2") is None))
        await trio.testing.wait_all_tasks_blocked()
        work = seen[1:]  # after the mark / terminate
        assert work[:3] == [frozenset({CATALOG})] * 3  # one batch per node (aaa, bbb, ccc)
        assert work[3] == frozenset({TRUST_BUNDLES})
        if terminated:
            assert work[4:] == []
            kept = store.peering_read("dc2")
            assert kept is not None and kept.state is PeeringState.TERMINATED
        else:
            assert work[4:] == [frozenset({PEERINGS})]
        assert store.dump().nodes == () and store.dump().services == ()
        assert store.dump().checks == ()
        # nothing left to do: the routine blocks (a TERMINATED row does not keep it busy)
        passes = routine.stats.passes
        await let_time_pass(60)
        assert routine.stats.passes == passes
        nursery.cancel_scope.cancel()


async def test_deletion_rate(autojump_clock: trio.testing.MockClock) -> None:
    store = MemoryStore()
    store.peering_write(Peering(name="dc2"))
    store.import_service_nodes("dc2", "default", "bulk", imported_instances("dc2", 50))
    store.trust_bundle_write(TrustBundle(peer_name="dc2"))
    store.peering_mark_deleted("dc2", "default", NOW)
    routine = DeletionRoutine(store, LOG, batch_bytes=ONE_NODE_PER_BATCH)
    batch_times: list[float] = []
    start = trio.current_time()
    store.subscribe(lambda change: batch_times.append(trio.current_time() - start)
                    if change.tables == {CATALOG} else None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(routine.run)
        await until(store, lambda: store.peering_read("dc2") is None)
        elapsed = trio.current_time() - start
        nursery.cancel_scope.cancel()
    # 50 batches + the bundle + the final wait = 52 tokens: 10 from the burst, 42 at 10/s
    assert routine.stats.node_batches == 50
    assert batch_times[:10] == [0.0] * 10
    assert batch_times[10:] == pytest.approx([i / 10 for i in range(1, 41)])
    assert elapsed == pytest.approx(4.2)


def test_node_batches() -> None:
    names = [f"n{i:03d}" for i in range(10)]  # 4 + 7 + 3 = 14 bytes each
    assert node_batches(names, "default", "dc2", 14) == [[n] for n in names]
    assert node_batches(names, "default", "dc2", 42) == [names[0:3], names[3:6], names[6:9],
                                                         names[9:]]
    assert node_batches(names, "default", "dc2", 41) == [names[i:i + 2] for i in range(0, 10, 2)]
    assert node_batches([], "default", "dc2") == []
    # the real limit: 256 KiB counted as node + partition + peer name
    big = [f"{i:0100d}" for i in range(5000)]  # 100 + 7 + 3 = 110 bytes each
    batches = node_batches(big, "default", "dc2")
    assert MAX_BATCH_BYTES == 262144
    assert [len(b) for b in batches] == [2383, 2383, 234]  # 2383 * 110 = 262130 <= 262144
    assert [n for b in batches for n in b] == big


def test_address_ring() -> None:
    ring = AddressRing()
    addresses = ("a:1", "b:1", "c:1")
    assert [ring.next(addresses) for _ in range(5)] == ["a:1", "b:1", "c:1", "a:1", "b:1"]
    with pytest.raises(ValueError):
        ring.next(())


# ---------------------------------------------------------------------------------------------
# leadership loss


async def test_deletion_stops_on_leadership_loss_and_resumes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork()
    async with running_cluster(net, "dc1", "dc1:8502",
                               deletion_batch_bytes=ONE_NODE_PER_BATCH) as dc1:
        store = dc1.store
        await dc1.client.generate_token("dc2")
        store.import_service_nodes("dc2", "default", "bulk", imported_instances("dc2", 100))
        await dc1.client.peering_delete("dc2")
        term1 = dc1.server.leadership
        assert term1 is not None
        await trio.sleep(2.05)  # virtual: 10 (burst) + 20 batches
        dc1.server.lose_leadership()
        await trio.testing.wait_all_tasks_blocked()
        assert term1.deletion.finished.is_set()  # stopped at once
        batches = term1.deletion.stats.node_batches
        assert batches == 30
        await let_time_pass(60)
        assert term1.deletion.stats.node_batches == batches
        assert len(store.imported_node_dump("dc2", "default")) == 70
        assert dc1.server.leadership is None
        # a new leader resumes where the old one stopped (the routine keeps no state)
        term2 = dc1.server.become_leader()
        await until(store, lambda: store.peering_read("dc2") is None)
        assert term2.deletion.stats.node_batches == 70
        assert term1.deletion.stats.node_batches == 30


async def test_streams_stop_on_leadership_loss_and_recover(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = MemoryNetwork()
    async with two_clusters(net) as (dc1, dc2):
        await peer(dc1, dc2)
        call = memory_call(net)
        dc1.server.lose_leadership()
        await trio.testing.wait_all_tasks_blocked()
        # the acceptor ended the stream: "not a leader anymore"; the dialer will retry
        assert call.client_outcome is not None
        assert (call.client_outcome.code, call.client_outcome.message) == (
            StatusCode.FAILED_PRECONDITION, ERR_NOT_LEADER_ANYMORE)
        assert dc2.state("dc1") is PeeringState.FAILING
        assert dc1.state("dc2") is PeeringState.PENDING  # the follower has no tracker
        await let_time_pass(30)  # retries hit a follower: FailedPrecondition, backing off
        retries = [c for c in net.streams if c is not call and c.method == call.method]
        assert retries and all(c.client_outcome is not None
                               and c.client_outcome.code is StatusCode.FAILED_PRECONDITION
                               for c in retries)
        dc1.server.become_leader()
        await until(dc2.store, lambda: dc2.connected("dc1") and dc1.connected("dc2"),
                    tables=(PEERINGS, CATALOG, TRUST_BUNDLES))
        assert dc2.state("dc1") is PeeringState.ACTIVE and dc1.state("dc2") is PeeringState.ACTIVE


async def test_dialer_loops_stop_on_leadership_loss(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="peerkit")
    net = MemoryNetwork()
    async with two_clusters(net) as (dc1, dc2):
        await peer(dc1, dc2)
        call = memory_call(net)
        term = dc2.server.leadership
        assert term is not None
        dc2.server.lose_leadership()
        await trio.testing.wait_all_tasks_blocked()
        assert term.dialers == {}
        assert call.client_outcome is not None and call.client_outcome.cancelled
        calls = len(net.streams)
        await let_time_pass(600)
        assert len(net.streams) == calls  # nobody dials any more
