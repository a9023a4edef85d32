"""PeeringService, ExchangeSecret and AdminService RPCs of one server: behaviour, input
validation (InvalidArgument, nothing changes), leader-only writes, and the token format.
In-memory network, virtual time.

May import: pytest, trio, peerkit.impl (codec, server, store, testing, transport), peerkit.proto,
peerkit.model.vocabulary.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trio
import trio.testing

from peerkit.impl.codec import (
    PeeringToken,
    TokenError,
    csn_from_pb,
    csn_to_pb,
    decode_token,
    encode_token,
    from_timestamp,
    to_timestamp,
)
from peerkit.impl.server import ERR_NOT_LEADER
from peerkit.impl.store import (
    CATALOG,
    PEERINGS,
    TRUST_BUNDLES,
    CheckServiceNode,
    Node,
    Peering,
    Service,
)
from peerkit.impl.testing import Cluster, peer, running_cluster, two_clusters, until
from peerkit.impl.transport import MemoryNetwork, StatusCode, StreamFailed
from peerkit.model.vocabulary import ERR_WRITE_MARKED, PeeringState
from peerkit.proto import catalog_pb2

NOW = 1_750_000_000.0


@pytest.fixture
async def dc1(autojump_clock: trio.testing.MockClock) -> AsyncIterator[Cluster]:
    net = MemoryNetwork()
    async with running_cluster(net, "dc1", "dc1:8502", wall_clock=lambda: NOW) as cluster:
        yield cluster


async def fails(call: Awaitable[object]) -> tuple[StatusCode, str]:
    with pytest.raises(StreamFailed) as info:
        await call
    return info.value.code, info.value.message


def b64(doc: object) -> str:
    return base64.b64encode(json.dumps(doc).encode()).decode()


# ---------------------------------------------------------------------------------------------
# token and codec


def test_token_round_trip_and_format() -> None:
    token = PeeringToken(server_addresses=("10.0.0.1:8502",), server_name="server.dc1.peerkit",
                         peer_id="p-1", establishment_secret="s3cret")
    text = encode_token(token)
    assert json.loads(base64.b64decode(text)) == {
        "CA": None, "ServerAddresses": ["10.0.0.1:8502"], "ServerName": "server.dc1.peerkit",
        "PeerID": "p-1", "EstablishmentSecret": "s3cret"}
    assert decode_token(text) == token


GOOD = {"CA": None, "ServerAddresses": ["a:1"], "ServerName": "s", "PeerID": "p",
        "EstablishmentSecret": "e"}


@pytest.mark.parametrize(("text", "reason"), [
    ("", "empty"),
    ("%%%", "not valid base64"),
    (base64.b64encode(b"\xff\xfe").decode(), "not valid JSON"),
    (base64.b64encode(b"{nope").decode(), "not valid JSON"),
    (b64([1, 2]), "JSON object"),
    (b64({**GOOD, "ServerAddresses": []}), "no ServerAddresses"),
    (b64({**GOOD, "ServerAddresses": ["nohost"]}), "invalid server address"),
    (b64({**GOOD, "ServerAddresses": ["a:99999"]}), "invalid server address"),
    (b64({**GOOD, "PeerID": ""}), "no PeerID"),
    (b64({k: v for k, v in GOOD.items() if k != "EstablishmentSecret"}), "no EstablishmentSecret"),
    (b64({**GOOD, "ServerName": 7}), "ServerName"),
    (b64({**GOOD, "CA": "pem"}), "CA must be null"),
    (b64({**GOOD, "CA": ["-----BEGIN"]}), "not a PEM certificate"),
])
def test_token_validation(text: str, reason: str) -> None:
    with pytest.raises(TokenError, match=reason):
        decode_token(text)


def test_codec_round_trips() -> None:
    assert from_timestamp(to_timestamp(NOW)) == NOW
    assert from_timestamp(to_timestamp(0)) is None
    csn = CheckServiceNode(node=Node(name="n1", address="10.0.0.1"),
                           service=Service(id="api-1", name="api", port=80, tags=("a",),
                                           node="n1"))
    node, service, checks = csn_from_pb(csn_to_pb(csn), "dc2", "default")
    assert (node.peer_name, service.peer_name, service.tags, checks) == ("dc2", "dc2", ("a",), [])
    with pytest.raises(ValueError):
        csn_from_pb(catalog_pb2.CheckServiceNode(), "dc2", "default")
    with pytest.raises(ValueError):
        csn_from_pb(catalog_pb2.CheckServiceNode(
            Node=catalog_pb2.Node(Name="n"), Service=catalog_pb2.Service(ID="x", Name="x"),
            Checks=[catalog_pb2.HealthCheck(CheckID="c", Status="bogus")]), "dc2", "default")


# ---------------------------------------------------------------------------------------------
# GenerateToken / ExchangeSecret / Establish


async def test_generate_token_creates_then_reuses_the_pending_row(dc1: Cluster) -> None:
    first = decode_token(await dc1.client.generate_token("dc2"))
    row = dc1.row("dc2")
    assert row is not None and row.state is PeeringState.PENDING and row.id == first.peer_id
    assert first.server_addresses == ("dc1:8502",) and first.ca is None
    second = decode_token(await dc1.client.generate_token(
        "dc2", server_external_addresses=["10.1.1.1:8502"]))
    assert second.peer_id == first.peer_id  # the same row
    assert second.server_addresses == ("10.1.1.1:8502",)
    assert second.establishment_secret != first.establishment_secret
    # only the latest establishment secret is good, and only once
    assert await fails(dc1.client.exchange_secret(first.peer_id, first.establishment_secret)) == (
        StatusCode.PERMISSION_DENIED, "invalid peering establishment secret")
    secret = await dc1.client.exchange_secret(second.peer_id, second.establishment_secret)
    assert secret and dc1.row("dc2").stream_secret == secret  # type: ignore[union-attr]
    code, _ = await fails(dc1.client.exchange_secret(second.peer_id,
                                                     second.establishment_secret))
    assert code is StatusCode.PERMISSION_DENIED
    # a later token keeps the stream secret (an established peering keeps working)
    await dc1.client.generate_token("dc2")
    assert dc1.row("dc2").stream_secret == secret  # type: ignore[union-attr]


async def test_generate_token_refusals(dc1: Cluster) -> None:
    before = dc1.store.dump()
    assert await fails(dc1.client.generate_token("")) == (StatusCode.INVALID_ARGUMENT,
                                                          "PeerName is required")
    code, msg = await fails(dc1.client.generate_token("bad name"))
    assert code is StatusCode.INVALID_ARGUMENT and "is not valid" in msg
    code, msg = await fails(dc1.client.generate_token("dc2", server_external_addresses=["x"]))
    assert code is StatusCode.INVALID_ARGUMENT and "host:port" in msg
    code, msg = await fails(dc1.client.generate_token("dc2", partition="bad partition"))
    assert code is StatusCode.INVALID_ARGUMENT
    assert dc1.store.dump() == before
    # a dialer row's name
    dc1.store.peering_write(Peering(name="dc3", peer_server_addresses=("dc3:1",), peer_id="x"))
    # upstream's validatePeer text, verbatim
    assert await fails(dc1.client.generate_token("dc3")) == (
        StatusCode.FAILED_PRECONDITION,
        'cannot create peering with name: "dc3"; there is already an established peering')
    # a name whose row is being deleted (the deletion routine is held back)
    await dc1.client.generate_token("dc4")
    block_deletions(dc1)
    await dc1.client.peering_delete("dc4")
    assert await fails(dc1.client.generate_token("dc4")) == (StatusCode.FAILED_PRECONDITION,
                                                             ERR_WRITE_MARKED)
    # a follower refuses writes
    dc1.server.lose_leadership()
    assert await fails(dc1.client.generate_token("dc5")) == (StatusCode.FAILED_PRECONDITION,
                                                             ERR_NOT_LEADER)


async def test_exchange_secret_refusals(dc1: Cluster) -> None:
    token = decode_token(await dc1.client.generate_token("dc2"))
    assert (await fails(dc1.client.exchange_secret("", "x")))[0] is StatusCode.INVALID_ARGUMENT
    assert (await fails(dc1.client.exchange_secret(token.peer_id, "")))[0] is (
        StatusCode.INVALID_ARGUMENT)
    # upstream's ExchangeSecret (stream_resources.go) reads only the secrets: an unknown ID, a
    # dialer row, a marked or TERMINATED row (secrets deleted) and a wrong secret look alike
    denied = (StatusCode.PERMISSION_DENIED, "invalid peering establishment secret")
    assert await fails(dc1.client.exchange_secret("nope", "x")) == denied
    assert await fails(dc1.client.exchange_secret(token.peer_id, "wrong")) == denied
    dialer = dc1.store.peering_write(Peering(name="dc7", peer_server_addresses=("x:1",),
                                             peer_id="remote", stream_secret="s"))
    assert await fails(dc1.client.exchange_secret(dialer.id, "s")) == denied
    marked = decode_token(await dc1.client.generate_token("dc3"))
    block_deletions(dc1)
    await dc1.client.peering_delete("dc3")
    assert await fails(dc1.client.exchange_secret(marked.peer_id,
                                                  marked.establishment_secret)) == denied
    dc1.store.peering_terminate_by_id(token.peer_id)
    assert await fails(dc1.client.exchange_secret(token.peer_id,
                                                  token.establishment_secret)) == denied


@pytest.mark.parametrize("token", ["", "!!!", b64({"PeerID": "x"}), b64({**GOOD, "PeerID": 1})])
async def test_establish_validates_the_token_before_writing(dc1: Cluster, token: str) -> None:
    before = dc1.store.dump()
    code, _ = await fails(dc1.client.establish("dc2", token))
    assert code is StatusCode.INVALID_ARGUMENT
    assert dc1.store.dump() == before


async def test_establish_refusals(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    async with two_clusters(net) as (dc1, dc2):
        token = await dc1.client.generate_token("dc2")
        # nobody listens at the token's address: UNAVAILABLE, nothing written
        dead = encode_token(PeeringToken(("dc9:1",), "s", "p", "e"))
        code, msg = await fails(dc2.client.establish("dc1", dead))
        assert code is StatusCode.UNAVAILABLE and "dc9:1" in msg
        assert dc2.row("dc1") is None
        # a wrong establishment secret: the acceptor's refusal is passed on
        parsed = decode_token(token)
        forged = encode_token(PeeringToken(parsed.server_addresses, parsed.server_name,
                                           parsed.peer_id, "forged"))
        code, _ = await fails(dc2.client.establish("dc1", forged))
        assert code is StatusCode.PERMISSION_DENIED and dc2.row("dc1") is None
        # success
        await dc2.client.establish("dc1", token)
        row = dc2.row("dc1")
        assert row is not None and row.peer_id == parsed.peer_id
        assert row.peer_server_addresses == ("dc1:8502",) and row.stream_secret
        # the name of an acceptor row cannot be established (upstream validatePeer)
        await dc2.client.generate_token("dc3")
        assert await fails(dc2.client.establish("dc3", token)) == (
            StatusCode.FAILED_PRECONDITION,
            'cannot create peering with name: "dc3"; there is an existing peering expecting '
            'to be dialed')


async def test_establish_again_re_establishes(autojump_clock: trio.testing.MockClock) -> None:
    """Upstream's Establish on an existing dialer row (agent/rpc/peering/service.go): the same
    row takes the fresh token's secret; a connected stream is left alone and keeps its
    addresses; a disconnected peering takes the token's addresses too."""
    from peerkit.impl.testing import memory_call

    net = MemoryNetwork()
    async with two_clusters(net) as (dc1, dc2):
        await peer(dc1, dc2)
        first = dc2.row("dc1")
        assert first is not None and dc2.connected("dc1")
        # rotate the secret while connected: same ID, a new stream secret, addresses kept
        fresh = await dc1.client.generate_token(
            "dc2", server_external_addresses=["dc1:8502", "dc9:1"])
        await dc2.client.establish("dc1", fresh)
        second = dc2.row("dc1")
        assert second is not None and second.id == first.id
        assert second.state is PeeringState.ESTABLISHING
        assert second.stream_secret not in (None, first.stream_secret)
        assert second.peer_server_addresses == ("dc1:8502",)
        assert dc2.connected("dc1") and dc1.connected("dc2")  # the stream was not cut
        # while disconnected (a reset, before the 2 s redial) the new addresses are taken
        memory_call(net).reset()
        await trio.testing.wait_all_tasks_blocked()
        assert not dc2.connected("dc1")
        await dc2.client.establish("dc1", await dc1.client.generate_token(
            "dc2", server_external_addresses=["dc1:8502", "dc9:1"]))
        third = dc2.row("dc1")
        assert third is not None and third.id == first.id
        assert third.peer_server_addresses == ("dc1:8502", "dc9:1")
        # the redial opens with the new stream secret, which the acceptor holds
        await until(dc2.store, lambda: dc2.connected("dc1"),
                    tables=(PEERINGS, CATALOG, TRUST_BUNDLES))
        assert dc1.row("dc2").stream_secret == third.stream_secret  # type: ignore[union-attr]


# ---------------------------------------------------------------------------------------------
# reads and delete


async def test_read_list_and_counts(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    async with two_clusters(net) as (dc1, dc2):
        assert await dc1.client.peering_read("dc2") is None
        await peer(dc1, dc2)
        p1 = await dc1.client.peering_read("DC2")  # names are case-insensitive
        assert p1 is not None and PeeringState(p1.State) is PeeringState.ACTIVE
        assert (p1.ImportedServiceCount, p1.ExportedServiceCount) == (1, 2)
        p2 = await dc2.client.peering_read("dc1")
        assert p2 is not None and (p2.ImportedServiceCount, p2.ExportedServiceCount) == (2, 1)
        assert p2.PeerServerAddresses == ["dc1:8502"] and p2.PeerID == p1.ID
        listed = await dc1.client.peering_list()
        assert [p.Name for p in listed] == ["dc2"]
        bundle = await dc2.client.trust_bundle_read("dc1")
        assert bundle is not None and bundle.TrustDomain == "dc1.peerkit.local"
        assert bundle.PeerName == "dc1" and bundle.RootPEMs
        assert await dc2.client.trust_bundle_read("nobody") is None
        by_service = await dc2.client.trust_bundle_list_by_service("db")
        assert [b.PeerName for b in by_service] == ["dc1"]  # db is exported to dc1
        assert await dc2.client.trust_bundle_list_by_service("nothing") == []
        assert (await fails(dc2.client.trust_bundle_list_by_service("")))[0] is (
            StatusCode.INVALID_ARGUMENT)
        assert (await fails(dc2.client.peering_read("")))[0] is StatusCode.INVALID_ARGUMENT
        # FAILING: a disconnected tracker entry
        from peerkit.impl.testing import memory_call

        memory_call(net).hold("server→client")
        memory_call(net).reset()
        await trio.testing.wait_all_tasks_blocked()
        p2 = await dc2.client.peering_read("dc1")
        assert p2 is not None and PeeringState(p2.State) is PeeringState.FAILING


async def test_delete_rules(dc1: Cluster) -> None:
    await dc1.client.peering_delete("nobody")  # unknown: success, nothing happens
    assert dc1.store.dump().peerings == ()
    for name in ("a", "t"):
        await dc1.client.generate_token(name)
    dc1.store.peering_terminate_by_id(dc1.row("t").id)  # type: ignore[union-attr]
    dc1.server.lose_leadership()  # a follower refuses
    assert await fails(dc1.client.peering_delete("a")) == (StatusCode.FAILED_PRECONDITION,
                                                           ERR_NOT_LEADER)
    dc1.server.become_leader()
    block_deletions(dc1)  # keep the marked rows readable
    await dc1.client.peering_delete("a")
    await dc1.client.peering_delete("t")  # TERMINATED can be deleted (#14364)
    for name in ("a", "t"):
        row = dc1.row(name)
        assert row is not None and row.state is PeeringState.DELETING and row.deleted_at == NOW
        p = await dc1.client.peering_read(name)
        assert p is not None and PeeringState(p.State) is PeeringState.DELETING
        assert from_timestamp(p.DeletedAt) == NOW
    marked = dc1.row("a")
    await dc1.client.peering_delete("a")  # already marked: no-op
    assert dc1.row("a") == marked


def block_deletions(c: Cluster) -> None:
    term = c.server.leadership
    assert term is not None
    term.deletion.limiter = _Blocked()  # type: ignore[assignment]


class _Blocked:
    """A limiter that never grants a token (keeps marked rows around for reading)."""

    async def wait(self, ctx: object = None) -> None:
        await trio.sleep_forever()


# ---------------------------------------------------------------------------------------------
# AdminService


async def test_admin_register_export_catalog_status(dc1: Cluster) -> None:
    c = dc1.client
    assert await c.register_service("n1", "api", port=80, tags=["v1"]) == "api"
    assert await c.register_service("n2", "api", service_id="api-2", port=81) == "api-2"
    assert await c.register_service("n1", "web") == "web"
    await c.export_service("api", "dc2")
    await c.export_service("web", "dc2")
    await c.export_service("web", "dc3")
    await c.unexport_service("web", "dc2")
    catalog = await c.read_catalog()
    assert [(s.Service.ID, s.Node.Name, [k.CheckID for k in s.Checks])
            for s in catalog.LocalServices] == [
        ("api", "n1", ["service:api"]), ("api-2", "n2", ["service:api-2"]),
        ("web", "n1", ["service:web"])]
    assert [(e.ServiceName, list(e.PeerNames)) for e in catalog.Exports] == [
        ("api", ["dc2"]), ("web", ["dc3"])]
    assert catalog.Imports == []
    assert await c.deregister_service(service="api") == 2
    assert await c.deregister_service(service_id="web") == 1
    assert await c.deregister_service(service_id="web") == 0
    status = await c.status()
    assert (status.ServerName, status.IsLeader, list(status.Streams)) == ("dc1", True, [])
    dc1.server.lose_leadership()
    assert (await c.status()).IsLeader is False
    assert (await fails(c.register_service("n1", "x")))[0] is StatusCode.FAILED_PRECONDITION
    assert (await c.read_catalog()).Exports  # reads work on a follower


@pytest.mark.parametrize("call", [
    lambda c: c.register_service("", "api"),
    lambda c: c.register_service("n1", ""),
    lambda c: c.register_service("n1", "api", port=70000),
    lambda c: c.register_service("n1", "api", tags=[""]),
    lambda c: c.register_service("n 1", "api"),
    lambda c: c.deregister_service(),
    lambda c: c.deregister_service(service_id="a", service="b"),
    lambda c: c.export_service("", "dc2"),
    lambda c: c.export_service("api", ""),
    lambda c: c.unexport_service("api", "bad peer"),
])
async def test_admin_validation(dc1: Cluster,
                                call: Callable[[object], Awaitable[object]]) -> None:
    before = dc1.store.dump()
    code, message = await fails(call(dc1.client))
    assert code is StatusCode.INVALID_ARGUMENT and message
    assert dc1.store.dump() == before


async def test_status_reports_streams(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    async with two_clusters(net, wall_clock=lambda: NOW) as (dc1, dc2):
        await peer(dc1, dc2)
        await until(dc1.store, lambda: dc1.connected("dc2"))
        status = await dc1.client.status()
        assert [(s.PeerName, s.Connected) for s in status.Streams] == [("dc2", True)]
        entry = status.Streams[0]
        assert entry.PeeringID == dc1.row("dc2").id  # type: ignore[union-attr]
        assert from_timestamp(entry.LastReceiveSuccess) is not None
        assert not entry.HasField("DisconnectTime")
