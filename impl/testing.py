"""Test support for the implementation (like ``trio.testing``): peered clusters and waits.

One job: build running peerkit clusters, peer them, and wait for store-visible conditions without
sleeping, for peerkit's own tests and for anyone driving the implementation (with
``WriteFault``, the one fault-injection hook: a store write that fails as a raft apply can).
Every wait here is event-driven: it re-checks a predicate each time the watched store commits a
write (``StateStore.wait_for_change``), so it works the same under a MockClock (in-memory
network) and with the real clock (gRPC). ``let_time_pass`` is the one deliberate sleep: under a
MockClock it lets *virtual* time run so that a test can assert that something does NOT happen.

May import: the standard library, trio, ``peerkit.proto``, ``peerkit.model.vocabulary`` and the
sibling modules of ``peerkit.impl``. Never pytest.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from peerkit.model.vocabulary import PeeringState

from .client import PeerkitClient
from .codec import METHOD_STREAM_RESOURCES, decode_token
from .logs import FIELDS_ATTR
from .server import PeeringServer
from .store import (
    WATCH_TABLES,
    Check,
    MemoryStore,
    Node,
    Peering,
    Service,
    StateStore,
    StoreError,
)
from .stream import ReplicationMessage, deserialize, serialize
from .transport import BidiStream, ClientTLS, MemoryCall, MemoryNetwork, Transport

ClientStream = BidiStream[ReplicationMessage, ReplicationMessage]

#: the store writes a stream handler makes (an import, TerminateByID: ``impl/stream.py``) and the
#: ones the deletion routine makes (``impl/leader.py``); no other code calls them
HANDLER_WRITES = ("import_service_nodes", "import_delete_service", "trust_bundle_write",
                  "import_batch", "peering_terminate_by_id")
ROUTINE_WRITES = ("delete_imported_nodes", "trust_bundle_delete", "peering_delete")
WRITE_FAULT_MESSAGE = "raft apply failed (injected write fault)"


class WriteFault:
    """The next call of one of ``methods`` on ``store`` fails with ``StoreError`` and writes
    nothing, as a failed raft apply does (the model's ``HandlerWriteFails`` /
    ``RoutineWriteFails``, finding F6); one shot: ``fired`` says whether it has. ``disarm``
    (idempotent) puts the store's own methods back. A StoreError, not a StoreFailure: the
    handler NACKs and goes on, as upstream does after a failed apply."""

    def __init__(self, store: StateStore, methods: Sequence[str]) -> None:
        self.store = store
        self.methods = tuple(methods)
        self.fired = False
        for name in self.methods:
            setattr(store, name, self._failing(name))

    def _failing(self, name: str) -> Callable[..., Any]:
        if name == "import_batch":
            return self._failing_first_op()

        def fail(*args: Any, **kwargs: Any) -> Any:
            self.disarm()
            self.fired = True
            raise StoreError(WRITE_FAULT_MESSAGE)

        fail.__name__ = name
        return fail

    def _failing_first_op(self) -> Callable[..., Any]:
        # A stream end imports the messages it received together in one batch (one commit);
        # the model's fault is one message's write, so only the batch's first op fails (writes
        # nothing, answered with the StoreError) and the rest are applied as they would be.
        real = self.store.import_batch

        def import_batch(peer_name: str, partition: str,
                         ops: Sequence[Any]) -> list[Exception | None]:
            if not ops:
                return real(peer_name, partition, ops)  # nothing to fail yet: stay armed
            self.disarm()
            self.fired = True
            first: list[Exception | None] = [StoreError(WRITE_FAULT_MESSAGE)]
            return first + real(peer_name, partition, ops[1:])

        return import_batch

    def disarm(self) -> None:
        for name in self.methods:
            self.store.__dict__.pop(name, None)


@dataclass
class Cluster:
    name: str
    server: PeeringServer
    store: StateStore
    client: PeerkitClient
    address: str

    def row(self, peer: str) -> Peering | None:
        return self.store.peering_read(peer)

    def state(self, peer: str) -> PeeringState | None:
        """The state PeeringRead would report (ACTIVE/FAILING from the tracker)."""
        row = self.row(peer)
        if row is None:
            return None
        term = self.server.leadership
        status = None if term is None else term.tracker.stream_status(row.id)
        if not row.is_active() or status is None:
            return row.state
        return PeeringState.ACTIVE if status.connected else PeeringState.FAILING

    def imported(self, peer: str) -> list[str]:
        return self.store.imported_service_names(peer, "default")

    def connected(self, peer: str) -> bool:
        row = self.row(peer)
        term = self.server.leadership
        if row is None or term is None:
            return False
        status = term.tracker.stream_status(row.id)
        return status is not None and status.connected


@dataclass
class Pair:
    """dc1 is the acceptor (it generated the token), dc2 the dialer."""

    dc1: Cluster
    dc2: Cluster
    extra: dict[str, Any] = field(default_factory=dict)


async def until(store: StateStore, predicate: Callable[[], bool],
                tables: Iterable[str] = WATCH_TABLES) -> None:
    """Wait until ``predicate()`` holds, re-checking after every write to ``store``."""
    watched = tuple(tables)
    while True:
        index = max(store.table_index(t) for t in watched)  # before the check: no lost wakeup
        if predicate():
            return
        await store.wait_for_change(watched, index)


async def eventually(predicate: Callable[[], bool], *clusters: Cluster) -> None:
    """Wait until ``predicate()`` holds, re-checking after every store write, stream-tracker
    change or leadership change of ``clusters``. Versions are read BEFORE each check, so a
    change between the check and the wait is never missed."""
    while True:
        marks = [_Marks.of(c) for c in clusters]
        if predicate():
            return
        async with trio.open_nursery() as nursery:
            for mark in marks:
                nursery.start_soon(mark.wait, nursery.cancel_scope)


@dataclass
class _Marks:
    cluster: Cluster
    store_index: int
    tracker_version: int | None
    leadership_version: int

    @classmethod
    def of(cls, c: Cluster) -> _Marks:
        term = c.server.leadership
        return cls(
            c,
            max(c.store.table_index(t) for t in WATCH_TABLES),
            None if term is None else term.tracker.version,
            c.server.leadership_version,
        )

    async def wait(self, done: trio.CancelScope) -> None:
        """Return (cancelling ``done``) at the first change after the marks."""
        c = self.cluster
        term = c.server.leadership

        async def store() -> None:
            await c.store.wait_for_change(WATCH_TABLES, self.store_index)
            done.cancel()

        async def leadership() -> None:
            await c.server.wait_for_leadership_change(self.leadership_version)
            done.cancel()

        async def tracker(version: int) -> None:
            assert term is not None
            await term.tracker.wait_for_change(version)
            done.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(store)
            nursery.start_soon(leadership)
            if term is not None and self.tracker_version is not None:
                nursery.start_soon(tracker, self.tracker_version)


async def let_time_pass(seconds: float) -> None:
    """Let (virtual, under a MockClock) time run, to show that nothing happens meanwhile."""
    await trio.sleep(seconds)


@asynccontextmanager
async def running_cluster(
    transport: Transport,
    name: str,
    address: str,
    *,
    store: StateStore | None = None,
    leader: bool = True,
    mutants: Iterable[str] = (),
    **server_kwargs: Any,
) -> AsyncIterator[Cluster]:
    """One serving cluster; ``mutants`` are mistakes of the mutation catalog switched on in its
    server (``peerkit.impl.mutants``), none by default."""
    store = store if store is not None else MemoryStore()
    server = PeeringServer(name, store, transport, mutants=mutants, **server_kwargs)
    # a TLS server answers TLS only: its own client verifies it as a peer would
    tls = None if server.tls is None else ClientTLS(server.tls.ca_pems, server.tls.server_name)
    async with server.serve(address, leader=leader):
        assert server.address is not None
        async with PeerkitClient.connect(transport, server.address, tls=tls) as client:
            yield Cluster(name, server, store, client, server.address)


@asynccontextmanager
async def two_clusters(
    transport: Transport,
    *,
    addresses: tuple[str, str] = ("dc1:8502", "dc2:8502"),
    bugs1: Iterable[str] = (),
    bugs2: Iterable[str] = (),
    **server_kwargs: Any,
) -> AsyncIterator[tuple[Cluster, Cluster]]:
    async with AsyncExitStack() as stack:
        dc1 = await stack.enter_async_context(
            running_cluster(transport, "dc1", addresses[0], bugs=bugs1, **server_kwargs))
        dc2 = await stack.enter_async_context(
            running_cluster(transport, "dc2", addresses[1], bugs=bugs2, **server_kwargs))
        yield dc1, dc2


async def register_and_export(c: Cluster, services: Sequence[str], peer: str) -> None:
    for i, service in enumerate(services):
        await c.client.register_service(f"{c.name}-node-{i}", service, port=8000 + i)
        await c.client.export_service(service, peer)


async def peer(
    dc1: Cluster,
    dc2: Cluster,
    *,
    services1: Sequence[str] = ("api", "web"),
    services2: Sequence[str] = ("db",),
) -> None:
    """dc1 exports ``services1`` to dc2 and dc2 ``services2`` to dc1; dc1 generates a token,
    dc2 establishes it. Returns once each side imported the other's bundle and services."""
    await register_and_export(dc1, services1, "dc2")
    await register_and_export(dc2, services2, "dc1")
    token = await dc1.client.generate_token("dc2")
    await dc2.client.establish("dc1", token)
    await until(dc2.store, lambda: dc2.imported("dc1") == sorted(services1)
                and dc2.store.trust_bundle_read("dc1") is not None)
    await until(dc1.store, lambda: dc1.imported("dc2") == sorted(services2)
                and dc1.store.trust_bundle_read("dc2") is not None)


def memory_call(net: MemoryNetwork, index: int = -1) -> MemoryCall:
    """The ``index``-th StreamResources call opened on the network (default: the last)."""
    calls = [c for c in net.streams if c.method == METHOD_STREAM_RESOURCES]
    return calls[index]


def imported_instances(peer_name: str, count: int, service: str = "bulk",
                       ) -> list[tuple[Node, Service, list[Check]]]:
    """``count`` instances of ``service`` on nodes node-0000..., for store.import_service_nodes."""
    out: list[tuple[Node, Service, list[Check]]] = []
    for i in range(count):
        node = f"node-{i:04d}"
        out.append((
            Node(name=node, peer_name=peer_name),
            Service(id=f"{service}-{i}", name=service, node=node, peer_name=peer_name),
            [Check(check_id="serfHealth", node=node, peer_name=peer_name)],
        ))
    return out


async def open_raw_stream(client: PeerkitClient) -> ClientStream:
    """A StreamResources call opened by hand (the test plays the dialer)."""
    stream: ClientStream = client.channel.open_stream(METHOD_STREAM_RESOURCES, serialize,
                                                      deserialize)
    await trio.lowlevel.checkpoint()
    return stream


def open_message(peer_id: str, secret: str = "") -> ReplicationMessage:
    return ReplicationMessage(open=ReplicationMessage.Open(PeerID=peer_id, StreamSecretID=secret))


async def token_and_secret(acceptor: Cluster, peer_name: str = "dc2") -> tuple[str, str]:
    """GenerateToken on ``acceptor`` and trade the establishment secret: (peer id, secret)."""
    token = decode_token(await acceptor.client.generate_token(peer_name))
    secret = await acceptor.client.exchange_secret(token.peer_id, token.establishment_secret)
    return token.peer_id, secret


async def receive_until(stream: ClientStream,
                        predicate: Callable[[ReplicationMessage], bool]) -> ReplicationMessage:
    """Receive (discarding others) until a message matches."""
    while True:
        msg = await stream.receive()
        if predicate(msg):
            return msg


def kind(msg: ReplicationMessage) -> str | None:
    return msg.WhichOneof("Payload")


def log_records(caplog: Any, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == message]


def fields(record: logging.LogRecord) -> dict[str, Any]:
    value: dict[str, Any] = getattr(record, FIELDS_ATTR, {})
    return value
