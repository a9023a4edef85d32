"""Wire-level fuzzing of one server: arbitrary sequences of well-formed, malformed and truncated
messages to every method and to the peer stream, from an unauthenticated client.

One job: after every example the server still answers, nothing crashed it, and no imported data
exists for an unknown or inactive peering (the client has no stream secret, so in fact none at
all). A third test gives the client the active peering's stream secret (a real peer gone wrong):
what it imports must be gone once its peering is inactive and the deletion routine has run.
Over the in-memory network (virtual time) and over real gRPC on 127.0.0.1 (real clock, fewer
examples). Bounded: a few seconds each (small ``max_examples``, ``deadline=None``).

Each example runs its own ``trio.run`` with its own server, stopped at the end of the example.

May import: pytest, hypothesis, trio, protobuf, peerkit.impl (codec, server, testing,
transport incl. grpc_bridge), peerkit.proto.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio.testing
from google.protobuf import any_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from peerkit.impl.codec import METHOD_STREAM_RESOURCES
from peerkit.impl.server import PeeringServer
from peerkit.impl.store import MemoryStore
from peerkit.impl.testing import Cluster, running_cluster, token_and_secret, until
from peerkit.impl.transport import (
    Channel,
    MemoryNetwork,
    StreamFailed,
    Transport,
    TransportError,
    UnaryMethod,
    identity,
)
from peerkit.impl.transport.grpc_bridge import GrpcTransport
from peerkit.proto import peering_pb2, peerstream_pb2, service_pb2
from peerkit.proto.resources import RESOURCE_TYPE_URLS, TYPE_URL_EXPORTED_SERVICE_LIST

RM = peerstream_pb2.ReplicationMessage
UNARY_METHODS: list[str] = sorted(
    h.name for h in PeeringServer("fuzz", MemoryStore(), MemoryNetwork()).handlers()
    if isinstance(h, UnaryMethod)
)
# "@0".."@3" in a string field stand for: the active peering's ID, the TERMINATED peering's
# ID, an unknown ID, "" (the IDs exist only once the example's server runs)
PLACEHOLDERS = ["@0", "@1", "@2", "@3"]
NAMES = ["dc2", "dc3", "dc1", "api", "n1", "", "dc9\n", "DC2", "default", "a" * 70]
TEXT = st.one_of(st.sampled_from(NAMES + PLACEHOLDERS), st.text(max_size=12))
INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_ENUM: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any] | None:
    if field.type == FieldDescriptor.TYPE_STRING:
        return TEXT
    if field.type == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=16)
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type in INT_RANGES:
        low, high = INT_RANGES[field.type]
        return st.one_of(st.integers(-2, 70000), st.integers(low, high)).filter(
            lambda v: low <= v <= high)
    return None  # floats and nested messages: left at their defaults


def fields_of(desc: Descriptor) -> st.SearchStrategy[dict[str, Any]]:
    """Random values for the scalar, repeated-scalar and map<string,string> fields of ``desc``."""
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for field in desc.fields:
        if field.message_type is not None:
            if field.message_type.GetOptions().map_entry:
                optional[field.name] = st.dictionaries(TEXT, TEXT, max_size=3)
            continue
        scalar = _scalar(field)
        if scalar is None:
            continue
        optional[field.name] = st.lists(scalar, max_size=3) if field.is_repeated else scalar
    return st.fixed_dictionaries({}, optional=optional)


def request_class(method: str) -> type[Message]:
    """The request message class of a full method name "/pkg.Service/Method"."""
    found = descriptor_pool.Default().FindMethodByName(method[1:].replace("/", "."))
    cls: type[Message] = message_factory.GetMessageClass(found.input_type)
    return cls


def _fill(message: Message, values: dict[str, Any], ids: list[str]) -> Message:
    def real(value: Any) -> Any:
        return ids[PLACEHOLDERS.index(value)] if value in PLACEHOLDERS else value

    for name, value in values.items():
        target = getattr(message, name)
        if isinstance(value, dict):
            target.update({real(k): real(v) for k, v in value.items()})
        elif isinstance(value, list):
            target.extend(real(v) for v in value)
        else:
            setattr(message, name, real(value))
    return message


# ---------------------------------------------------------------------------------------------
# a message on the wire: well-formed (built at run time), random bytes, or a truncated one


@dataclass(frozen=True)
class Body:
    kind: str  # "good", "garbage" or "truncated"
    build: Callable[[list[str]], Message] | None = None
    garbage: bytes = b""
    cut: int = 0

    def __repr__(self) -> str:  # what a falsifying example shows
        if self.kind == "garbage":
            return f"garbage({self.garbage!r})"
        shown = [f"<id{i}>" for i in range(3)] + ["", "<secret>"]
        built = self.build(shown) if self.build else None
        text = f"{type(built).__name__}({str(built).strip()!r})"
        return f"truncated({text}, cut={self.cut})" if self.kind == "truncated" else text

    def encode(self, ids: list[str]) -> bytes:
        if self.kind == "garbage":
            return self.garbage
        assert self.build is not None
        data: bytes = self.build(ids).SerializeToString()
        return data[: self.cut % (len(data) + 1)] if self.kind == "truncated" else data


def bodies(good: st.SearchStrategy[Callable[[list[str]], Message]]) -> st.SearchStrategy[Body]:
    return st.one_of(
        good.map(lambda b: Body("good", b)),
        good.flatmap(lambda b: st.integers(0, 400).map(lambda c: Body("truncated", b, cut=c))),
        st.binary(max_size=40).map(lambda g: Body("garbage", garbage=g)),
    )


def unary_builder(method: str) -> st.SearchStrategy[Callable[[list[str]], Message]]:
    cls = request_class(method)
    return fields_of(cls.DESCRIPTOR).map(
        lambda values: lambda ids: _fill(cls(), values, ids))


def _payload(url: str, garbage: bytes | None, name: str) -> any_pb2.Any:
    payload = any_pb2.Any()
    if url.endswith("ExportedServiceList"):
        payload.Pack(peerstream_pb2.ExportedServiceList(Services=[name]))
    elif url.endswith("ExportedService"):
        payload.Pack(peerstream_pb2.ExportedService(Nodes=[service_pb2.CheckServiceNode(
            Node=service_pb2.Node(Node=name),
            Service=service_pb2.NodeService(ID=name, Service=name))]))
    else:
        payload.Pack(peering_pb2.PeeringTrustBundle(TrustDomain=name, RootPEMs=[name]))
    if garbage is not None:
        payload.value = garbage
    return payload


def _open(peer: int, secret: str) -> Callable[[list[str]], Message]:
    """An Open; the secret "@s" stands for the active peering's stream secret, which only an
    authenticated run knows (``ids[4]``; an unauthenticated run has "wrong" there)."""
    return lambda ids: RM(open=RM.Open(
        PeerID=ids[peer], StreamSecretID=ids[4] if secret == "@s" else secret))


def _response(url: str, rid: str, op: int, garbage: bytes | None,
              name: str) -> Callable[[list[str]], Message]:
    return lambda ids: RM(response=RM.Response(
        Nonce="1", ResourceURL=url, ResourceID=rid, operation=op,  # type: ignore[arg-type]
        Resource=_payload(url, garbage, name)))


KNOWN_URLS = [*RESOURCE_TYPE_URLS, TYPE_URL_EXPORTED_SERVICE_LIST]
URLS = st.one_of(st.sampled_from(KNOWN_URLS), st.text(max_size=8))
STREAM_GOOD: st.SearchStrategy[Callable[[list[str]], Message]] = st.one_of(
    st.builds(_open, st.integers(0, 3), st.sampled_from(["", "wrong", "@0", "@s"])),
    st.builds(_response, URLS, TEXT, st.integers(-1, 5), st.none() | st.binary(max_size=8),
              TEXT),
    st.builds(lambda url, nonce: lambda ids: RM(request=RM.Request(ResourceURL=url,
                                                                  ResponseNonce=nonce)),
              URLS, TEXT),
    st.just(lambda ids: RM(terminated=RM.Terminated())),
    st.just(lambda ids: RM(heartbeat=RM.Heartbeat())),
    st.just(lambda ids: RM()),
)


@dataclass(frozen=True)
class UnaryOp:
    method: str
    body: Body


@dataclass(frozen=True)
class StreamOp:
    bodies: list[Body]
    end: str  # "close", "cancel" or "leave"


OPS = st.one_of(
    st.sampled_from(UNARY_METHODS).flatmap(
        lambda m: bodies(unary_builder(m)).map(lambda b: UnaryOp(m, b))),
    st.builds(StreamOp, st.lists(bodies(STREAM_GOOD), min_size=1, max_size=4),
              st.sampled_from(["close", "cancel", "leave"])),
)


# what an authenticated peer sends: a correct Open, then mostly plausible Responses
PLAUSIBLE = st.builds(
    _response, st.sampled_from(KNOWN_URLS), st.sampled_from(["api", "web", "db", ""]),
    # 2: the seed's (and Consul 1.13's) DELETE, which the released layout NACKs
    st.sampled_from([peerstream_pb2.OPERATION_UPSERT] * 3 + [2, 0]),
    st.none() | st.none() | st.none() | st.binary(max_size=4),
    st.sampled_from(["api", "web", "db", "n1"]))

# (one_of would treat repeated alternatives as one: weights are drawn explicitly)
def _weighted(often: st.SearchStrategy[Any], seldom: st.SearchStrategy[Any],
              odds: int = 3) -> st.SearchStrategy[Any]:
    return st.integers(0, odds).flatmap(lambda i: often if i < odds else seldom)


AUTH_STREAM = st.builds(
    lambda rest, end: StreamOp([Body("good", _open(0, "@s")), *rest], end),
    st.lists(_weighted(_weighted(PLAUSIBLE, STREAM_GOOD).map(lambda b: Body("good", b)),
                       bodies(STREAM_GOOD)), min_size=1, max_size=6),
    st.sampled_from(["close", "cancel", "leave"]))
AUTH_OPS = _weighted(AUTH_STREAM, OPS, odds=1)


# ---------------------------------------------------------------------------------------------
# running one example


async def run_op(channel: Channel, op: UnaryOp | StreamOp, ids: list[str],
                 wait: float) -> None:
    if isinstance(op, UnaryOp):
        with contextlib.suppress(StreamFailed):
            await channel.unary(op.method, op.body.encode(ids), identity, identity,
                                timeout=wait)
        return
    stream = channel.open_stream(METHOD_STREAM_RESOURCES, identity, identity)
    try:
        for body in op.bodies:
            try:
                await stream.send(body.encode(ids))
            except TransportError:
                break
        if op.end == "close":
            await stream.close_send()
        elif op.end == "cancel":
            stream.cancel()
        with trio.move_on_after(wait):
            while True:
                await stream.receive()
    except TransportError:
        pass
    finally:
        stream.cancel()


async def example(transport: Transport, address: str, ops: list[UnaryOp | StreamOp],
                  wait: float, *, authenticated: bool = False) -> None:
    async with running_cluster(transport, "dc1", address) as dc1:
        await dc1.client.register_service("n1", "api", port=80)
        await dc1.client.export_service("api", "dc2")
        await dc1.client.export_service("api", "dc3")
        active_id, secret = await token_and_secret(dc1, "dc2")
        terminated_id, _ = await token_and_secret(dc1, "dc3")
        dc1.store.peering_terminate_by_id(terminated_id)
        ids = [active_id, terminated_id, "00000000-0000-0000-0000-000000000000", "",
               secret if authenticated else "wrong"]
        imported: list[str] = []
        dc1.store.subscribe(lambda change: imported.extend(
            r.peer_name for r in (*dc1.store.dump().nodes, *dc1.store.dump().trust_bundles)
            if r.peer_name))
        async with transport.connect(dc1.address) as channel:
            for op in ops:
                await run_op(channel, op, ids, wait)
        event(f"imported at some point: {bool(imported)}")
        await check_server(dc1, authenticated=authenticated)


def _orphans(dc1: Cluster) -> list[object]:
    """Imported records whose peering is unknown or inactive."""
    dump = dc1.store.dump()
    active = {(p.name, p.partition) for p in dump.peerings if p.is_active()}
    return [record for record in (*dump.nodes, *dump.services, *dump.checks, *dump.trust_bundles)
            if record.peer_name and (record.peer_name, record.partition) not in active]


async def check_server(dc1: Cluster, *, authenticated: bool) -> None:
    status = await dc1.client.status()
    assert status.ServerName == "dc1"
    if not authenticated:
        # the client never had a stream secret: nothing at all was imported, at any moment
        dump = dc1.store.dump()
        assert not [n for n in dump.nodes if n.peer_name]
        assert not [b for b in dump.trust_bundles if b.peer_name]
        assert _orphans(dc1) == []
        return
    event(f"dc2 row: {'gone' if dc1.row('dc2') is None else dc1.row('dc2').state.name}")
    # a peer that sent Terminated (or a peering deleted by a fuzzed RPC) leaves its imports to
    # the deferred-deletion routine: they must be gone once it has run (virtual time)
    with trio.fail_after(600):
        await until(dc1.store, lambda: _orphans(dc1) == [])


FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


@settings(FUZZ, max_examples=40)
@given(ops=st.lists(OPS, min_size=1, max_size=6))
def test_fuzz_memory(ops: list[UnaryOp | StreamOp]) -> None:
    async def main() -> None:
        await example(MemoryNetwork(), "dc1:8502", ops, wait=60.0)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@settings(FUZZ, max_examples=100)
@given(ops=st.lists(AUTH_OPS, min_size=1, max_size=6))
def test_fuzz_memory_authenticated_peer(ops: list[UnaryOp | StreamOp]) -> None:
    """The same, from a client that knows the active peering's stream secret (a real peer gone
    wrong): it may import, but nothing imported outlives its peering's activity."""

    async def main() -> None:
        await example(MemoryNetwork(), "dc1:8502", ops, wait=60.0, authenticated=True)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.grpc
@settings(FUZZ, max_examples=8)
@given(ops=st.lists(OPS, min_size=1, max_size=4))
def test_fuzz_grpc(ops: list[UnaryOp | StreamOp]) -> None:
    async def main() -> None:
        with trio.fail_after(60):
            async with GrpcTransport() as transport:
                await example(transport, "127.0.0.1:0", ops, wait=5.0)

    trio.run(main)
