"""Subscription, ACK and NACK Requests validated as upstream's ``realHandleStream`` does
(agent/grpc-external/services/peerstream/stream_resources.go; specs/stream.md, "Subscriptions").

The acceptor side is driven by a hand-played dialer, the dialer side by a hand-played acceptor,
both over the in-memory network under virtual time. Each refusal is checked for its status code,
upstream's text, the tracker's disconnect message, and that nothing in the store changed; well-
formed bad values and malformed bytes both.

May import: pytest, trio, peerkit.impl, peerkit.proto, peerkit.model.vocabulary.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from peerkit.impl.codec import (
    METHOD_EXCHANGE_SECRET,
    METHOD_STREAM_RESOURCES,
    PeeringToken,
    encode_token,
)
from peerkit.impl.stream import deserialize, serialize
from peerkit.impl.testing import (
    Cluster,
    eventually,
    kind,
    open_message,
    receive_until,
    running_cluster,
    token_and_secret,
)
from peerkit.impl.tracker import StreamStatus
from peerkit.impl.transport import (
    BidiStream,
    MemoryNetwork,
    StatusCode,
    StreamFailed,
    StreamMethod,
    TransportError,
    UnaryMethod,
    identity,
)
from peerkit.model.vocabulary import (
    ERR_SUBSCRIPTION_ERROR,
    ERR_SUBSCRIPTION_NONCE,
    ERR_SUBSCRIPTION_PEER_ID,
    ERR_SUBSCRIPTION_UNKNOWN_URL,
)
from peerkit.proto import peerstream_pb2, status_pb2
from peerkit.proto.resources import (
    RESOURCE_TYPE_URLS,
    TYPE_URL_EXPORTED_SERVICE,
    TYPE_URL_PEERING_SERVER_ADDRESSES,
    TYPE_URL_PEERING_TRUST_BUNDLE,
)

RM = peerstream_pb2.ReplicationMessage
DEADLINE = 60.0  # virtual seconds


@pytest.fixture
async def dc1(autojump_clock: trio.testing.MockClock) -> AsyncIterator[Cluster]:
    async with running_cluster(MemoryNetwork(), "dc1", "dc1:8502") as cluster:
        await cluster.client.register_service("n1", "api", port=80)
        yield cluster


async def _accepted(dc1: Cluster) -> tuple[str, BidiStream[bytes, RM]]:
    """A stream to dc1 that sends bytes, past a valid Open (the acceptor's handler runs)."""
    peer_id, secret = await token_and_secret(dc1)
    stream: BidiStream[bytes, RM] = dc1.client.channel.open_stream(
        METHOD_STREAM_RESOURCES, identity, deserialize)
    await stream.send(serialize(open_message(peer_id, secret)))
    await receive_until(stream, lambda m: kind(m) == "response")  # type: ignore[arg-type]
    return peer_id, stream


def _status(dc1: Cluster, peer_id: str) -> StreamStatus:
    term = dc1.server.leadership
    assert term is not None
    st = term.tracker.stream_status(peer_id)
    assert st is not None
    return st


async def _refused(stream: BidiStream[bytes, RM]) -> StreamFailed:
    with trio.fail_after(DEADLINE), pytest.raises(StreamFailed) as info:
        while True:
            await stream.receive()
    return info.value


def _req(url: str = TYPE_URL_EXPORTED_SERVICE, *, nonce: str = "", peer_id: str = "",
         error: status_pb2.Status | None = None) -> bytes:
    req = RM.Request(ResourceURL=url, ResponseNonce=nonce, PeerID=peer_id)
    if error is not None:
        req.Error.CopyFrom(error)
    return serialize(RM(request=req))


LONG_URL = "type.googleapis.com/" + "x" * 5000

# (what the peer sends after its handshake, upstream's answer); all well-formed messages
REFUSED = {
    "unknown URL": ([_req("type.googleapis.com/hashicorp.consul.internal.Nope")],
                    ERR_SUBSCRIPTION_UNKNOWN_URL.format(
                        url="type.googleapis.com/hashicorp.consul.internal.Nope")),
    "empty URL": ([_req("")], ERR_SUBSCRIPTION_UNKNOWN_URL.format(url="")),
    "a long URL, clipped": ([_req(LONG_URL)],
                            ERR_SUBSCRIPTION_UNKNOWN_URL.format(url=LONG_URL[:80] + "...")),
    "an ACK before the subscription": ([_req(nonce="00000001")], ERR_SUBSCRIPTION_NONCE),
    "a NACK before the subscription": (
        [_req(nonce="00000001", error=status_pb2.Status(code=3, message="no"))],
        ERR_SUBSCRIPTION_NONCE),
    "a subscription with an error": ([_req(error=status_pb2.Status(code=3, message="no"))],
                                     ERR_SUBSCRIPTION_ERROR),
    "a subscription with an empty error": ([_req(error=status_pb2.Status())],
                                           ERR_SUBSCRIPTION_ERROR),
    "a subscribed type, then an error without a nonce": (
        [_req(), _req(error=status_pb2.Status(code=13, message="x"))], ERR_SUBSCRIPTION_ERROR),
}


@pytest.mark.parametrize("case", list(REFUSED))
async def test_a_bad_request_ends_the_stream_with_upstreams_error(dc1: Cluster,
                                                                  case: str) -> None:
    sends, message = REFUSED[case]
    peer_id, stream = await _accepted(dc1)
    before = dc1.store.dump()
    for data in sends:
        await stream.send(data)
    failure = await _refused(stream)
    assert failure.code is StatusCode.INVALID_ARGUMENT
    assert failure.message == message
    st = _status(dc1, peer_id)
    assert not st.connected and st.disconnect_error_message == message
    assert dc1.store.dump() == before
    # the server goes on serving: a new stream for the same peering is accepted
    _, again = await _accepted(dc1)
    again.cancel()


async def test_good_requests_keep_the_stream_and_are_tracked_as_upstream(dc1: Cluster) -> None:
    """Subscriptions (each an ACK in the tracker, the server addresses a Consul 1.15 dialer
    asks for included), a repeated subscription (ignored), an ACK, and a NACK whose Error is
    present but empty (upstream: ``req.Error != nil`` is a NACK)."""
    peer_id, stream = await _accepted(dc1)
    assert _status(dc1, peer_id).last_ack is None
    for url in (*RESOURCE_TYPE_URLS, TYPE_URL_PEERING_SERVER_ADDRESSES):
        await stream.send(_req(url, peer_id=""))
    await trio.testing.wait_all_tasks_blocked()
    subscribed = _status(dc1, peer_id).last_ack
    assert subscribed is not None
    await trio.sleep(1)
    await stream.send(_req(TYPE_URL_PEERING_TRUST_BUNDLE))  # again: ignored
    await trio.testing.wait_all_tasks_blocked()
    st = _status(dc1, peer_id)
    assert st.connected and st.last_ack == subscribed
    sent = trio.current_time()
    await stream.send(_req(nonce="00000001"))
    await trio.testing.wait_all_tasks_blocked()
    acked = _status(dc1, peer_id).last_ack
    assert acked is not None and acked >= sent > subscribed
    assert _status(dc1, peer_id).last_nack is None
    await stream.send(_req(nonce="00000002", error=status_pb2.Status()))
    await trio.testing.wait_all_tasks_blocked()
    st = _status(dc1, peer_id)
    assert st.connected and st.last_nack is not None and st.last_ack == acked
    assert st.last_nack_message == "client peer was unable to apply resource: "
    stream.cancel()


# malformed bytes: ReplicationMessage field 2 (request) holding a Request (PeerID=1,
# ResponseNonce=2, ResourceURL=3, Error=5) that does not decode
def _field(number: int, body: bytes) -> bytes:
    return bytes([number << 3 | 2, len(body)]) + body


MALFORMED = {
    "a ResourceURL that is not UTF-8": _field(2, _field(3, b"type.googleapis.com/\xff\xfe")),
    "a Request cut short": _field(2, _field(3, b"abc"))[:-2],
    "an Error that is not a Status": _field(2, _field(3, TYPE_URL_EXPORTED_SERVICE.encode())
                                           + _field(5, b"\x08")),
}


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_a_request_that_does_not_decode_ends_the_stream(dc1: Cluster, case: str) -> None:
    peer_id, stream = await _accepted(dc1)
    before = dc1.store.dump()
    await stream.send(MALFORMED[case])
    failure = await _refused(stream)
    assert failure.code is StatusCode.INVALID_ARGUMENT
    assert failure.message.startswith("the request message does not decode"), failure.message
    assert not _status(dc1, peer_id).connected
    assert dc1.store.dump() == before


# ---------------------------------------------------------------------------------------------
# the dialer's side: a hand-played acceptor


@pytest.mark.parametrize(("peer_id", "refused"), [
    ("acceptor-row-id", False),  # the remote's own ID: fine
    ("", False),  # upstream's acceptor sends an empty PeerID
    ("someone-else", True),
])
async def test_the_dialer_refuses_a_subscription_naming_another_peer(
        autojump_clock: trio.testing.MockClock, peer_id: str, refused: bool) -> None:
    net = MemoryNetwork()
    ended: list[str] = []

    async def exchange(_req: bytes) -> bytes:
        return peerstream_pb2.ExchangeSecretResponse(StreamSecret="s3cret").SerializeToString()

    async def resources(stream: BidiStream[RM, RM]) -> None:
        opened = await stream.receive()
        assert opened.open.PeerID == "acceptor-row-id"
        await stream.send(RM(request=RM.Request(ResourceURL=TYPE_URL_EXPORTED_SERVICE,
                                                PeerID=peer_id)))
        try:
            while True:
                await stream.receive()
        except TransportError as exc:
            ended.append(type(exc).__name__)

    token = encode_token(PeeringToken(("fake:8502",), "server.fake.peering.peerkit",
                                      "acceptor-row-id", "establishment"))
    async with net.serve("fake:8502", [
        UnaryMethod(METHOD_EXCHANGE_SECRET, exchange, identity, identity),
        StreamMethod(METHOD_STREAM_RESOURCES, resources, deserialize, serialize),
    ]), running_cluster(net, "dc2", "dc2:8502") as dc2:
        await dc2.client.establish("fake", token)
        row = dc2.row("fake")
        assert row is not None
        message = ERR_SUBSCRIPTION_PEER_ID.format(got=f'"{peer_id}"',
                                                  expected='"acceptor-row-id"')
        term = dc2.server.leadership
        assert term is not None
        with trio.fail_after(DEADLINE):
            await eventually(lambda: term.tracker.stream_status(row.id) is not None, dc2)
        await trio.sleep(1)  # the handler took the Request
        st = term.tracker.stream_status(row.id)
        assert st is not None
        if refused:
            assert ended, "the dialer ended the stream"
            assert not st.connected and st.disconnect_error_message == message
        else:
            assert not ended and st.connected
        await dc2.client.peering_delete("fake")
