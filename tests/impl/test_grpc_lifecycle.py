"""The upstream lifecycle scenarios over REAL gRPC between two servers in this process.

peering-protocol.md §7.1 (TestLeader_PeeringSync_Lifecycle_ClientDeletion / _ServerDeletion,
TestLeader_Peering_DeferredDeletion) and §7.4
(TestLeader_Peering_DialerReestablishesConnectionOnError, #13745). Real clock, servers on
127.0.0.1 port 0, stopped inside each test. Waits are event-driven (store and tracker watches),
bounded by a generous ``trio.fail_after``.

May import: pytest, trio, peerkit.impl (store, testing, transport incl. grpc_bridge),
peerkit.model.vocabulary.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from peerkit.impl.store import CATALOG, PEERINGS, TRUST_BUNDLES, Change, Check, Node, Service
from peerkit.impl.testing import (
    eventually,
    peer,
    running_cluster,
    two_clusters,
    until,
)
from peerkit.impl.transport import StatusCode, StreamFailed
from peerkit.impl.transport.grpc_bridge import GrpcTransport
from peerkit.model.vocabulary import PeeringState

pytestmark = pytest.mark.grpc
LOCAL = ("127.0.0.1:0", "127.0.0.1:0")
ALL = (PEERINGS, CATALOG, TRUST_BUNDLES)
DEADLINE = 30


@pytest.fixture
async def transport() -> AsyncIterator[GrpcTransport]:
    async with GrpcTransport() as t:
        yield t


async def test_client_deletion(transport: GrpcTransport) -> None:
    with trio.fail_after(DEADLINE):
        async with two_clusters(transport, addresses=LOCAL) as (dc1, dc2):
            await peer(dc1, dc2)
            row2 = dc2.row("dc1")
            assert row2 is not None
            p2 = await dc2.client.peering_read("dc1")
            assert p2 is not None and PeeringState(p2.State) is PeeringState.ACTIVE
            await dc2.client.peering_delete("dc1")
            term2 = dc2.server.leadership
            assert term2 is not None
            await eventually(lambda: dc2.row("dc1") is None
                             and term2.tracker.stream_status(row2.id) is None, dc2)
            await until(dc1.store, lambda: dc1.imported("dc2") == []
                        and dc1.store.trust_bundle_read("dc2") is None)
            p1 = await dc1.client.peering_read("dc2")
            assert p1 is not None and PeeringState(p1.State) is PeeringState.TERMINATED
            assert await dc1.client.imported_services("dc2") == []


async def test_server_deletion(transport: GrpcTransport) -> None:
    with trio.fail_after(DEADLINE):
        async with two_clusters(transport, addresses=LOCAL) as (dc1, dc2):
            await peer(dc1, dc2)
            row1 = dc1.row("dc2")
            assert row1 is not None
            await dc1.client.peering_delete("dc2")
            term1 = dc1.server.leadership
            assert term1 is not None
            await eventually(lambda: dc1.row("dc2") is None
                             and term1.tracker.stream_status(row1.id) is None, dc1)
            await until(dc2.store, lambda: dc2.imported("dc1") == []
                        and dc2.store.trust_bundle_read("dc1") is None
                        and dc2.state("dc1") is PeeringState.TERMINATED)
            p2 = await dc2.client.peering_read("dc1")
            assert p2 is not None and PeeringState(p2.State) is PeeringState.TERMINATED
            await eventually(lambda: not dc2.connected("dc1"), dc2)
            status = await dc2.client.status()
            assert [s.Connected for s in status.Streams] == [False]


async def test_deferred_deletion(transport: GrpcTransport) -> None:
    """dc1 imported nodes aaa/bbb/ccc (a service, its check and a serfHealth node check each)
    and a trust bundle from dc2; its peering is marked deleted: the imported nodes, services,
    checks and bundle are removed, and only then the row."""
    with trio.fail_after(DEADLINE):
        async with two_clusters(transport, addresses=LOCAL) as (dc1, dc2):
            for node in ("aaa", "bbb", "ccc"):
                dc2.store.register_service(
                    Node(name=node, address="10.0.0.1"),
                    Service(id=f"{node}-svc", name=f"{node}-svc", port=80, node=node),
                    [Check(check_id=f"service:{node}-svc", service_id=f"{node}-svc", node=node),
                     Check(check_id="serfHealth", node=node)])
                await dc2.client.export_service(f"{node}-svc", "dc1")
            token = await dc1.client.generate_token("dc2")
            await dc2.client.establish("dc1", token)
            await until(dc1.store, lambda: dc1.imported("dc2") == ["aaa-svc", "bbb-svc",
                                                                   "ccc-svc"]
                        and dc1.store.trust_bundle_read("dc2") is not None)
            dump = dc1.store.dump()
            assert sorted(n.name for n in dump.nodes) == ["aaa", "bbb", "ccc"]
            assert len(dump.checks) == 6 and all(c.peer_name == "dc2" for c in dump.checks)
            seen: list[frozenset[str]] = []

            def record(change: Change) -> None:
                seen.append(change.tables)

            dc1.store.subscribe(record)
            await dc1.client.peering_delete("dc2")
            await until(dc1.store, lambda: dc1.row("dc2") is None)
            dump = dc1.store.dump()
            assert (dump.nodes, dump.services, dump.checks, dump.trust_bundles) == ((), (), (), ())
            assert seen == [frozenset({PEERINGS}), frozenset({CATALOG}),
                            frozenset({TRUST_BUNDLES}), frozenset({PEERINGS})]
            assert (await dc1.client.read_catalog()).Imports == []


async def test_dialer_reconnects_after_acceptor_restart(transport: GrpcTransport) -> None:
    """#13745: the acceptor goes away without sending Terminated and comes back on the same
    address with the same store; the dialer reconnects by itself."""
    with trio.fail_after(DEADLINE):
        async with running_cluster(transport, "dc2", "127.0.0.1:0") as dc2:
            store1 = None
            async with running_cluster(transport, "dc1", "127.0.0.1:0") as dc1:
                await peer(dc1, dc2)
                address = dc1.address
                store1 = dc1.store
                bundle = dc2.store.trust_bundle_read("dc1")
                assert bundle is not None
                first_index = bundle.modify_index
            # dc1 is down: the stream failed without Terminated, dc2 keeps its peering
            assert dc2.state("dc1") in (PeeringState.FAILING, PeeringState.ACTIVE)
            async with running_cluster(transport, "dc1", address, store=store1) as dc1b:
                # a new stream re-sends dc1's trust bundle: dc2 re-imports it
                await eventually(lambda: (b := dc2.store.trust_bundle_read("dc1")) is not None
                                 and b.modify_index > first_index and dc2.connected("dc1")
                                 and dc1b.connected("dc2"), dc1b, dc2)
                assert dc2.state("dc1") is PeeringState.ACTIVE
                assert dc1b.state("dc2") is PeeringState.ACTIVE
                assert dc2.imported("dc1") == ["api", "web"]


async def test_rpc_errors_over_grpc(transport: GrpcTransport) -> None:
    with trio.fail_after(DEADLINE):
        async with running_cluster(transport, "dc1", "127.0.0.1:0") as dc1:
            c = dc1.client
            with pytest.raises(StreamFailed) as info:
                await c.establish("dc2", "this is not base64!")
            assert info.value.code is StatusCode.INVALID_ARGUMENT
            assert "not valid base64" in info.value.message
            with pytest.raises(StreamFailed) as info:
                await c.generate_token("")
            assert (info.value.code, info.value.message) == (StatusCode.INVALID_ARGUMENT,
                                                             "PeerName is required")
            assert await c.peering_read("nobody") is None
            await c.peering_delete("nobody")  # unknown: success, nothing happens
            assert await c.peering_list() == []
            assert dc1.store.dump().peerings == ()

