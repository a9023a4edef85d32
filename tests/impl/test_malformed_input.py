"""Bytes that do not decode, sent to a running server, over real gRPC and the in-memory network.

One job: show that a request or stream message that does not parse is answered
INVALID_ARGUMENT, that the server keeps serving afterwards and that its store is unchanged; that
a response that does not decode is INTERNAL at the client (the caller's server survives too);
and that a Response whose ``Resource`` payload (an Any) does not decode is NACKed while the
stream goes on (upstream: "failed to unmarshal resource").

Real gRPC: servers on 127.0.0.1 port 0, stopped in each test; the raw bytes are sent by a plain
grpcio channel (identity serializers), so nothing of peerkit's client is involved.

May import: pytest, trio, grpc, peerkit.impl (server, testing, transport incl. grpc_bridge),
peerkit.proto.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
import trio
import trio.testing

from peerkit.impl.codec import ADMIN_METHODS, METHOD_STREAM_RESOURCES
from peerkit.impl.stream import deserialize, serialize
from peerkit.impl.testing import (
    Cluster,
    kind,
    open_message,
    receive_until,
    running_cluster,
    token_and_secret,
)
from peerkit.impl.transport import (
    BidiStream,
    MemoryNetwork,
    StatusCode,
    StreamFailed,
    StreamMethod,
    UnaryMethod,
    identity,
)
from peerkit.impl.transport.grpc_bridge import GrpcTransport
from peerkit.proto import peerstream_pb2, service_pb2
from peerkit.proto.resources import TYPE_URL_EXPORTED_SERVICE

RM = peerstream_pb2.ReplicationMessage
GARBAGE = b"\xff\xff\xff\xff\xff"  # field 31 with wire type 7: no message parses this
DEADLINE = 30


def _methods(cluster: Cluster) -> tuple[list[str], list[str]]:
    handlers = cluster.server.handlers()
    unary = [h.name for h in handlers if isinstance(h, UnaryMethod)]
    stream = [h.name for h in handlers if isinstance(h, StreamMethod)]
    return unary, stream


async def _still_serves(cluster: Cluster) -> None:
    status = await cluster.client.status()
    assert status.ServerName == cluster.name and status.IsLeader
    assert await cluster.client.peering_read("nobody") is None


def test_garbage_does_not_parse() -> None:
    with pytest.raises(Exception, match="Error parsing message"):
        RM.FromString(GARBAGE)


# ---------------------------------------------------------------------------------------------
# real gRPC, raw bytes from a plain grpcio client


def _raw_unary(address: str, method: str, body: bytes) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(method)
        try:
            call(body, timeout=10)
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def _raw_stream(address: str, method: str, bodies: list[bytes]) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(address) as channel:
        call = channel.stream_stream(method)
        try:
            for _ in call(iter(bodies), timeout=10):
                pass
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


@pytest.fixture
async def grpc_dc1() -> AsyncIterator[Cluster]:
    async with GrpcTransport() as transport, running_cluster(
        transport, "dc1", "127.0.0.1:0"
    ) as cluster:
        await cluster.client.register_service("n1", "api", port=80)
        yield cluster


@pytest.mark.grpc
async def test_grpc_every_method_rejects_garbage_and_keeps_serving(grpc_dc1: Cluster) -> None:
    dc1 = grpc_dc1
    before = dc1.store.dump()
    unary, stream = _methods(dc1)
    assert len(unary) >= 14 and stream == [METHOD_STREAM_RESOURCES]
    with trio.fail_after(DEADLINE):
        for method in unary:
            code, details = await trio.to_thread.run_sync(_raw_unary, dc1.address, method,
                                                          GARBAGE)
            assert (code, method) == (grpc.StatusCode.INVALID_ARGUMENT, method)
            assert details.startswith("the request message does not decode")
        for bodies in ([GARBAGE], [GARBAGE, GARBAGE], [serialize(open_message("x")), GARBAGE]):
            code, details = await trio.to_thread.run_sync(
                _raw_stream, dc1.address, METHOD_STREAM_RESOURCES, bodies)
            if bodies[0] == GARBAGE:
                assert code == grpc.StatusCode.INVALID_ARGUMENT
                assert details.startswith("the request message does not decode")
            else:  # a well-formed first message is judged first: unknown peer
                assert code == grpc.StatusCode.INVALID_ARGUMENT
        await _still_serves(dc1)
    assert dc1.store.dump() == before


@pytest.mark.grpc
async def test_grpc_garbage_mid_stream_ends_only_that_stream(grpc_dc1: Cluster) -> None:
    dc1 = grpc_dc1
    with trio.fail_after(DEADLINE):
        peer_id, secret = await token_and_secret(dc1)
        before = dc1.store.dump()
        stream = dc1.client.channel.open_stream(METHOD_STREAM_RESOURCES, identity, deserialize)
        await stream.send(serialize(open_message(peer_id, secret)))
        await receive_until(stream, lambda m: kind(m) == "response")  # the handler is running
        await stream.send(GARBAGE)
        with pytest.raises(StreamFailed) as info:
            while True:
                await stream.receive()
        assert info.value.code is StatusCode.INVALID_ARGUMENT
        assert "does not decode" in info.value.message
        await _still_serves(dc1)
        assert dc1.store.dump() == before


@pytest.mark.grpc
async def test_grpc_undecodable_response_is_internal_at_the_client(grpc_dc1: Cluster) -> None:
    """A server that answers bytes the caller cannot decode: the caller sees INTERNAL."""
    async with GrpcTransport() as transport, transport.serve(
        "127.0.0.1:0", [_garbage_unary(ADMIN_METHODS["Status"]),
                        StreamMethod(METHOD_STREAM_RESOURCES, _garbage_stream, identity,
                                     identity)]
    ) as liar, transport.connect(liar.address) as channel:
        with trio.fail_after(DEADLINE):
            with pytest.raises(StreamFailed) as info:
                await channel.unary(ADMIN_METHODS["Status"], b"", identity, RM.FromString)
            assert info.value.code is StatusCode.INTERNAL
            stream = channel.open_stream(METHOD_STREAM_RESOURCES, identity, deserialize)
            await stream.send(b"")
            with pytest.raises(StreamFailed) as sinfo:
                await stream.receive()
            assert sinfo.value.code is StatusCode.INTERNAL
            assert "response message does not decode" in sinfo.value.message
            assert stream.outcome is not None and stream.outcome.code is StatusCode.INTERNAL
            await _still_serves(grpc_dc1)


def _garbage_unary(name: str) -> UnaryMethod[bytes, bytes]:
    async def handler(_request: bytes) -> bytes:
        return GARBAGE

    return UnaryMethod(name, handler, identity, identity)


async def _garbage_stream(stream: BidiStream[bytes, bytes]) -> None:
    await stream.receive()
    await stream.send(GARBAGE)
    await trio.sleep_forever()


# ---------------------------------------------------------------------------------------------
# the in-memory network (it carries bytes too)


@pytest.fixture
async def mem_dc1(autojump_clock: trio.testing.MockClock) -> AsyncIterator[Cluster]:
    async with running_cluster(MemoryNetwork(), "dc1", "dc1:8502") as cluster:
        await cluster.client.register_service("n1", "api", port=80)
        yield cluster


async def test_memory_every_method_rejects_garbage_and_keeps_serving(mem_dc1: Cluster) -> None:
    dc1 = mem_dc1
    before = dc1.store.dump()
    unary, _stream = _methods(dc1)
    for method in unary:
        with pytest.raises(StreamFailed) as info:
            await dc1.client.channel.unary(method, GARBAGE, identity, identity)
        assert (info.value.code, method) == (StatusCode.INVALID_ARGUMENT, method)
    stream = dc1.client.channel.open_stream(METHOD_STREAM_RESOURCES, identity, identity)
    await stream.send(GARBAGE)
    with pytest.raises(StreamFailed) as sinfo:
        await stream.receive()
    assert sinfo.value.code is StatusCode.INVALID_ARGUMENT
    await _still_serves(dc1)
    assert dc1.store.dump() == before


async def test_memory_garbage_after_open_ends_the_stream(mem_dc1: Cluster) -> None:
    dc1 = mem_dc1
    peer_id, secret = await token_and_secret(dc1)
    before = dc1.store.dump()
    stream = dc1.client.channel.open_stream(METHOD_STREAM_RESOURCES, identity, deserialize)
    await stream.send(serialize(open_message(peer_id, secret)))
    await receive_until(stream, lambda m: kind(m) == "response")
    await stream.send(GARBAGE)
    with pytest.raises(StreamFailed) as info:
        while True:
            await stream.receive()
    assert info.value.code is StatusCode.INVALID_ARGUMENT
    await trio.testing.wait_all_tasks_blocked()
    term = dc1.server.leadership
    assert term is not None
    status = term.tracker.stream_status(peer_id)
    assert status is not None and not status.connected
    await _still_serves(dc1)
    assert dc1.store.dump() == before


async def test_undecodable_resource_payload_is_nacked_and_the_stream_goes_on(
    mem_dc1: Cluster,
) -> None:
    dc1 = mem_dc1
    peer_id, secret = await token_and_secret(dc1)
    stream = dc1.client.channel.open_stream(METHOD_STREAM_RESOURCES, serialize, deserialize)
    await stream.send(open_message(peer_id, secret))
    bad = RM.Response(Nonce="bad", ResourceURL=TYPE_URL_EXPORTED_SERVICE, ResourceID="web",
                      operation=peerstream_pb2.OPERATION_UPSERT)
    bad.Resource.type_url = "type.googleapis.com/" + \
        peerstream_pb2.ExportedService.DESCRIPTOR.full_name
    bad.Resource.value = GARBAGE
    await stream.send(RM(response=bad))
    nack = await receive_until(stream, lambda m: kind(m) == "request"
                               and m.request.ResponseNonce == "bad")
    assert nack.request.Error.code == StatusCode.INTERNAL.value
    assert nack.request.Error.message.startswith(
        f'upsert error, ResourceURL: "{TYPE_URL_EXPORTED_SERVICE}", ResourceID: "web": '
        "failed to unmarshal resource")
    assert dc1.imported("dc2") == []
    # the stream is still up: a good Response is applied and ACKed
    good = RM.Response(Nonce="good", ResourceURL=TYPE_URL_EXPORTED_SERVICE, ResourceID="web",
                       operation=peerstream_pb2.OPERATION_UPSERT)
    good.Resource.Pack(peerstream_pb2.ExportedService(Nodes=[service_pb2.CheckServiceNode(
        Node=service_pb2.Node(Node="n9", Address="10.0.0.9"),
        Service=service_pb2.NodeService(ID="web-1", Service="web", Port=80))]))
    await stream.send(RM(response=good))
    ack = await receive_until(stream, lambda m: kind(m) == "request"
                              and m.request.ResponseNonce == "good")
    assert not ack.request.HasField("Error")
    assert dc1.imported("dc2") == ["web"]
    stream.cancel()


@pytest.mark.grpc
async def test_grpc_huge_unknown_ids_get_the_real_status(grpc_dc1: Cluster) -> None:
    """An unknown 200 KB PeerID is quoted back clipped: the client gets the real status, not
    RESOURCE_EXHAUSTED for a status message too large for gRPC's trailers."""
    dc1 = grpc_dc1
    huge = "x" * 200_000
    with trio.fail_after(DEADLINE):
        stream = dc1.client.channel.open_stream(METHOD_STREAM_RESOURCES, serialize, deserialize)
        await stream.send(open_message(huge))
        with pytest.raises(StreamFailed) as info:
            await stream.receive()
        assert info.value.code is StatusCode.INVALID_ARGUMENT
        assert len(info.value.message) < 200 and "xxx..." in info.value.message
        with pytest.raises(StreamFailed) as xinfo:
            await dc1.client.exchange_secret(huge, "secret")
        # upstream's ExchangeSecret does not echo the ID at all
        assert xinfo.value.code is StatusCode.PERMISSION_DENIED
        assert len(xinfo.value.message) < 200
        await _still_serves(dc1)
