"""Leader failover in the middle of deletion and in the middle of replication (issue 8).

Two clusters on the in-memory network under virtual time. A server's leadership is lost
(``lose_leadership``) at a chosen point and a new term starts (``become_leader``), at once or
after a gap. Each test checks three things: the work resumes under the new term and completes
(deletion: rows, imports and bundles gone on the deleting side, TERMINATED and cleaned up on the
other; replication: both sides import exactly what the other exports, each service whole, on a
new stream); nothing is orphaned (no imported node, service or check of a peer without its
parents, none of a deleted peering); and no routine of the old term runs on (its routines have
returned, its dialers and stream handlers have ended, and its counters do not move again).

May import: pytest, trio, peerkit.impl (leader, store, testing, transport),
peerkit.model.vocabulary.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from peerkit.impl.codec import METHOD_STREAM_RESOURCES
from peerkit.impl.leader import Leadership
from peerkit.impl.store import Node, Service, StateStore
from peerkit.impl.testing import (
    Cluster,
    eventually,
    let_time_pass,
    peer,
    register_and_export,
    two_clusters,
)
from peerkit.impl.transport import MemoryCall, MemoryNetwork
from peerkit.model.vocabulary import PeeringState

SERVICES = 30  # per side; one node each
DEADLINE = 600.0  # virtual seconds


def imported_nodes(c: Cluster, peer_name: str) -> int:
    return len(c.store.imported_node_dump(peer_name, "default"))


def assert_nothing_orphaned(store: StateStore) -> None:
    """Every imported service and check has its node (and a check of a service its service)."""
    dump = store.dump()
    nodes = {(n.peer_name, n.name) for n in dump.nodes if n.peer_name}
    services = {(s.peer_name, s.id) for s in dump.services if s.peer_name}
    for s in dump.services:
        if s.peer_name:
            assert (s.peer_name, s.node) in nodes, f"service {s.id} without its node"
    for c in dump.checks:
        if c.peer_name:
            assert (c.peer_name, c.node) in nodes, f"check {c.check_id} without its node"
            assert not c.service_id or (c.peer_name, c.service_id) in services, c.check_id
    with_service = {(s.peer_name, s.node) for s in dump.services if s.peer_name}
    assert nodes == with_service, f"nodes without a service: {sorted(nodes - with_service)}"


def assert_imports_whole(importer: Cluster, exporter: Cluster, peer_name: str) -> None:
    """The importer holds exactly the exporter's exported instances, service by service."""
    exported = exporter.store.exported_services_for_peer(peer_name)
    local = exporter.store.local_instances_by_service(exported)
    want = {name: sorted(i.service.id for i in found) for name, found in local.items() if found}
    dump = importer.store.dump()
    got: dict[str, list[str]] = {}
    for s in dump.services:
        if s.peer_name == exporter.name:
            got.setdefault(s.name, []).append(s.id)
    assert {k: sorted(v) for k, v in got.items()} == want
    assert_nothing_orphaned(importer.store)


def stream_calls(net: MemoryNetwork) -> list[MemoryCall]:
    return [c for c in net.streams if c.method == METHOD_STREAM_RESOURCES]


async def assert_term_over(term: Leadership, calls: list[MemoryCall]) -> None:
    """No routine of ``term`` runs on: its routines returned, its dialers and the streams it
    served ended, and nothing it counts moves while time passes."""
    await trio.testing.wait_all_tasks_blocked()
    assert term.stopped
    assert term._nursery is None  # run() returned: the sync and deletion routines ended
    assert term.deletion.finished.is_set()
    assert term.deletion.stats.spins == 0  # no pass after the term ended (deletion-no-stop)
    assert term.dialers == {}  # each dial loop removes itself when it ends
    assert all(c.finished for c in calls), [c for c in calls if not c.finished]
    before = (term.sync.passes, term.deletion.stats.passes, term.deletion.stats.node_batches,
              term.tracker.version)
    await let_time_pass(600)
    assert (term.sync.passes, term.deletion.stats.passes, term.deletion.stats.node_batches,
            term.tracker.version) == before


# ---------------------------------------------------------------------------------------------
# in the middle of deletion


@pytest.mark.parametrize(("deleter", "failing_over"), [
    ("dc1", "dc1"),  # the acceptor deletes and loses leadership in its deletion routine
    ("dc2", "dc2"),  # the dialer deletes and loses leadership in its deletion routine
    ("dc1", "dc2"),  # the side told (TERMINATED) loses leadership in its own cleanup
    ("dc2", "dc1"),
])
@pytest.mark.parametrize("gap", [0.0, 30.0])
async def test_failover_in_the_middle_of_deletion(
    autojump_clock: trio.testing.MockClock, deleter: str, failing_over: str, gap: float,
) -> None:
    net = MemoryNetwork()
    async with two_clusters(net, deletion_batch_bytes=1) as (dc1, dc2):  # a node a batch
        await peer(dc1, dc2, services1=[f"a-{i:02d}" for i in range(SERVICES)],
                   services2=[f"b-{i:02d}" for i in range(SERVICES)])
        clusters = {"dc1": dc1, "dc2": dc2}
        gone, told = clusters[deleter], clusters["dc2" if deleter == "dc1" else "dc1"]
        victim = clusters[failing_over]
        victim_peer = "dc2" if failing_over == "dc1" else "dc1"
        old = victim.server.leadership
        assert old is not None
        await gone.client.peering_delete(told.name)
        # the victim's deletion routine has removed some of the nodes, not all
        with trio.fail_after(DEADLINE):
            await eventually(lambda: told.state(gone.name) is PeeringState.TERMINATED
                             and 0 < imported_nodes(victim, victim_peer) < SERVICES // 2,
                             dc1, dc2)
        calls = stream_calls(net)
        victim.server.lose_leadership()
        await assert_term_over(old, calls)
        left = imported_nodes(victim, victim_peer)
        assert 0 < left < SERVICES // 2  # nothing was deleted without a leader
        await let_time_pass(gap)
        new = victim.server.become_leader()
        with trio.fail_after(DEADLINE):
            await eventually(lambda: gone.row(told.name) is None
                             and gone.imported(told.name) == [] and told.imported(gone.name) == []
                             and gone.store.trust_bundle_read(told.name) is None
                             and told.store.trust_bundle_read(gone.name) is None, dc1, dc2)
        assert told.state(gone.name) is PeeringState.TERMINATED  # kept as a signal
        assert new.deletion.stats.node_batches == left  # the new term did the rest, once each
        for c in (dc1, dc2):
            assert imported_nodes(c, "dc1" if c is dc2 else "dc2") == 0
            assert_nothing_orphaned(c.store)
        await trio.testing.wait_all_tasks_blocked()
        assert len(stream_calls(net)) == len(calls)  # nobody dialed an inactive peering


# ---------------------------------------------------------------------------------------------
# in the middle of replication


@pytest.mark.parametrize("failing_over", ["dc1", "dc2"])  # the acceptor, the dialer
@pytest.mark.parametrize("gap", [0.0, 30.0])
async def test_failover_in_the_middle_of_replication(
    autojump_clock: trio.testing.MockClock, failing_over: str, gap: float,
) -> None:
    """Both sides export a burst through a one-message window; the victim loses leadership
    when part of each burst is imported. During the gap, exports change on both sides (some
    un-exported, some new). The new term's stream converges to the new state on both sides."""
    net = MemoryNetwork(send_window=1)
    async with two_clusters(net) as (dc1, dc2):
        await register_and_export(dc1, [f"a-{i:02d}" for i in range(SERVICES)], "dc2")
        await register_and_export(dc2, [f"b-{i:02d}" for i in range(SERVICES)], "dc1")
        token = await dc1.client.generate_token("dc2")
        await dc2.client.establish("dc1", token)
        victim = dc1 if failing_over == "dc1" else dc2
        old = victim.server.leadership
        assert old is not None
        with trio.fail_after(DEADLINE):
            await eventually(lambda: 0 < len(dc1.imported("dc2")) < SERVICES
                             and 0 < len(dc2.imported("dc1")) < SERVICES, dc1, dc2)
        calls = stream_calls(net)
        victim.server.lose_leadership()
        await assert_term_over(old, calls)
        # meanwhile, exports change on both sides (in the store: the victim has no leader
        # to take RPCs; in Consul these writes would reach the next leader through raft)
        for c, prefix, other in ((dc1, "a", "dc2"), (dc2, "b", "dc1")):
            for i in range(0, SERVICES, 3):
                c.store.unexport_service(f"{prefix}-{i:02d}", other)
            for i in range(3):
                name = f"{prefix}-new-{i}"
                c.store.register_service(Node(name=f"{c.name}-new-node-{i}"),
                                         Service(id=name, name=name, node=f"{c.name}-new-node-{i}"))
                c.store.export_service(name, other)
        await let_time_pass(gap)
        victim.server.become_leader()
        want1 = len(dc2.store.exported_services_for_peer("dc1"))
        want2 = len(dc1.store.exported_services_for_peer("dc2"))
        with trio.fail_after(DEADLINE):
            await eventually(lambda: dc1.connected("dc2") and dc2.connected("dc1")
                             and len(dc1.imported("dc2")) == want1
                             and len(dc2.imported("dc1")) == want2, dc1, dc2)
        await trio.testing.wait_all_tasks_blocked()
        assert_imports_whole(dc1, dc2, "dc1")
        assert_imports_whole(dc2, dc1, "dc2")
        assert dc1.state("dc2") is PeeringState.ACTIVE and dc2.state("dc1") is PeeringState.ACTIVE
        live = [c for c in stream_calls(net) if not c.finished]
        assert len(live) == 1 and live[0] not in calls  # one stream, of the new term
