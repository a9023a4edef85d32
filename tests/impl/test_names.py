"""Names and small fields a client sends: peer names (lowercase DNS labels, as upstream), node,
service and partition names, Meta and tags. Each bad one is INVALID_ARGUMENT with a clear
message, and the store is unchanged.

One job: the name and field rules of ``peerkit.impl.server``, over the in-memory network under
virtual time; names a peer sends in its exported data are NACKed when they hold control
characters. May import: pytest, trio, peerkit.impl (codec, server, store, stream, testing,
transport), peerkit.proto.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable

import pytest
import trio
import trio.testing

from peerkit.impl.codec import METHOD_STREAM_RESOURCES
from peerkit.impl.server import PeeringServer
from peerkit.impl.store import MemoryStore
from peerkit.impl.stream import deserialize, serialize
from peerkit.impl.testing import (
    Cluster,
    kind,
    open_message,
    receive_until,
    running_cluster,
    token_and_secret,
)
from peerkit.impl.transport import MemoryNetwork, StatusCode, StreamFailed
from peerkit.proto import peerstream_pb2, service_pb2
from peerkit.proto.resources import TYPE_URL_EXPORTED_SERVICE

RM = peerstream_pb2.ReplicationMessage

BAD_PEER_NAMES = ["dc9\n", "DC9", "Dc9", "-dc9", "dc9-", "dc_9", "dc.9", "dc 9", "a" * 64,
                  "dc9\x00", "\u0434\u04419", "dc9\r"]
GOOD_PEER_NAMES = ["dc9", "9dc", "a", "a" * 63, "dc-9-west"]
BAD_NAMES = ["n\n", "n\r\n", ".n", "-n", "n/m", "n m", "a" * 64, "\u00e9t\u00e9"]


@pytest.fixture
async def dc1(autojump_clock: trio.testing.MockClock) -> AsyncIterator[Cluster]:
    async with running_cluster(MemoryNetwork(), "dc1", "dc1:8502") as cluster:
        yield cluster


async def refused(call: Awaitable[object], *words: str) -> str:
    with pytest.raises(StreamFailed) as info:
        await call
    assert info.value.code is StatusCode.INVALID_ARGUMENT, info.value
    for word in words:
        assert word in info.value.message
    assert "\n" not in info.value.message
    return info.value.message


async def test_peer_names_must_be_lowercase_dns_labels(dc1: Cluster) -> None:
    before = dc1.store.dump()
    for name in BAD_PEER_NAMES:
        await refused(dc1.client.generate_token(name), "PeerName", "is not valid", "DNS label")
        await refused(dc1.client.establish(name, "irrelevant"), "PeerName", "DNS label")
        await refused(dc1.client.export_service("api", name), "PeerName", "DNS label")
    assert dc1.store.dump() == before
    for name in GOOD_PEER_NAMES:
        await dc1.client.generate_token(name)
    assert sorted(p.name for p in dc1.store.peering_list()) == sorted(GOOD_PEER_NAMES)


async def test_dc9_with_a_newline_is_not_a_second_dc9(dc1: Cluster) -> None:
    await dc1.client.generate_token("dc9")
    before = dc1.store.dump()
    await refused(dc1.client.generate_token("dc9\n"))
    await refused(dc1.client.peering_read("dc9\n"), "Name")
    await refused(dc1.client.peering_delete("dc9\n"), "Name")
    assert dc1.store.dump() == before
    assert [p.name for p in dc1.store.peering_list()] == ["dc9"]


async def test_node_service_and_partition_names(dc1: Cluster) -> None:
    before = dc1.store.dump()
    for name in BAD_NAMES:
        await refused(dc1.client.register_service(name, "api"), "NodeName", "is not valid")
        await refused(dc1.client.register_service("n1", name), "ServiceName", "is not valid")
        await refused(dc1.client.register_service("n1", "api", service_id=name), "ServiceID")
        await refused(dc1.client.generate_token("dc2", partition=name), "Partition")
    assert dc1.store.dump() == before
    await dc1.client.register_service("n1", "api", service_id="api-1")
    assert [s.id for s in dc1.store.dump().services] == ["api-1"]


async def test_meta_and_tags_are_bounded(dc1: Cluster) -> None:
    before = dc1.store.dump()
    await refused(dc1.client.generate_token("dc2", meta={f"k{i}": "v" for i in range(65)}),
                  "at most 64")
    await refused(dc1.client.generate_token("dc2", meta={"bad key": "v"}), "Meta key")
    await refused(dc1.client.generate_token("dc2", meta={"k" * 129: "v"}), "Meta key")
    await refused(dc1.client.generate_token("dc2", meta={"k": "v" * 513}), "longer than 512")
    await refused(dc1.client.establish("dc2", "x", meta={"k": "a\nb"}), "control characters")
    await refused(dc1.client.register_service("n1", "api", tags=["ok", "bad\ntag"]), "tag")
    await refused(dc1.client.register_service("n1", "api", tags=["t" * 256]), "tag")
    await refused(dc1.client.register_service("n1", "api", tags=[f"t{i}" for i in range(65)]),
                  "at most 64")
    assert dc1.store.dump() == before
    await dc1.client.generate_token("dc2", meta={f"k{i}": "v" * 512 for i in range(64)})
    row = dc1.row("dc2")
    assert row is not None and len(row.meta) == 64


def test_server_name_with_a_newline_is_refused() -> None:
    with pytest.raises(ValueError, match="server name"):
        PeeringServer("dc1\n", MemoryStore(), MemoryNetwork())


@pytest.mark.parametrize(("field", "value"), [
    ("node", "n\n1"), ("service", "api\x00"), ("tag", "t\r"), ("node", "n" * 257)])
async def test_imported_names_with_control_characters_are_nacked(
    dc1: Cluster, field: str, value: str
) -> None:
    peer_id, secret = await token_and_secret(dc1)
    stream = dc1.client.channel.open_stream(METHOD_STREAM_RESOURCES, serialize, deserialize)
    await stream.send(open_message(peer_id, secret))
    node = service_pb2.Node(Node=value if field == "node" else "n1")
    service = service_pb2.NodeService(ID="api-1", Service=value if field == "service" else "api",
                                      Tags=[value] if field == "tag" else [])
    response = RM.Response(Nonce="7", ResourceURL=TYPE_URL_EXPORTED_SERVICE, ResourceID="api",
                           operation=peerstream_pb2.OPERATION_UPSERT)
    response.Resource.Pack(peerstream_pb2.ExportedService(
        Nodes=[service_pb2.CheckServiceNode(Node=node, Service=service)]))
    await stream.send(RM(response=response))
    nack = await receive_until(stream, lambda m: kind(m) == "request"
                               and m.request.ResponseNonce == "7")
    assert nack.request.Error.code == StatusCode.INTERNAL.value
    assert "is not valid: at most 256 printable characters" in nack.request.Error.message
    assert dc1.imported("dc2") == []
    stream.cancel()
