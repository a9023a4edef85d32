"""HandleStream: one end of a peer stream, for either role, from registration to the final drain.

One job: run one ``StreamResources`` stream end after the handshake (peering-protocol.md §5.3–§5.7
and the ENDPOINT table of ``peerkit.model.tables``): register in the tracker, replicate exported
data and the trust bundle to the peer, import what the peer sends and ACK/NACK it, exchange
heartbeats, and end the stream the way the protocol says -- ``Terminated`` in either direction,
then CloseSend + drain -- reporting how it ended as an ``Ending``.

Structure: one task receives, one task sends, and neither ever waits on the other (§5.8; issue
8). ``StreamSession.run`` opens a nursery holding

* the *receiver*: the only caller of ``stream.receive()``; it forwards every message, and
  finally the end of the inbound side, into an unbuffered ``events`` channel;
* the *sender*: the only caller of ``stream.send()`` and ``close_send()``. It works through the
  *outbox*, a FIFO of what the handler queued: messages (ACK/NACK, heartbeat, subscription
  requests, ``Terminated``), replication *passes*, and the final step (the dialer's CloseSend,
  or the end of sending). A pass builds its Responses as the sender asks for them, at most
  ``BATCH_LIMIT`` at a time (one ``send_many``, one thread crossing over gRPC), the next batch
  only when the previous one has gone out, so replication is paced by the transport's
  flow-control window and never held in memory beyond one batch: the stream's first pass
  sends the exported services of a
  snapshot taken at the start (what the model's ``accept`` puts on the channel); a later pass
  ("exports may have changed") snapshots the store when it reaches the head of the outbox and
  sends each service whose state differs from what this stream last sent it. The sender
  reports on ``events`` how it ended (finished, a send stalled, the store failed);
* the handler loop (Go's ``select``): it takes events one at a time -- inbound messages, the
  inbound end, ``doneCh`` closed (from a watcher task), "exports may have changed" (from a
  store watcher task), the sender's ending -- and fires heartbeats and the heartbeat timeout
  from its own deadline. It never sends: it *queues* (ACK/NACK, heartbeat, Terminated) and is
  back at the channel at once.

Why (issue 8, item 3). Before, the handler loop sent, and the receiver handed it each message
through the unbuffered channel; a send waiting for flow control (the peer not reading) stopped
the handler, so the receiver stopped, so this side stopped reading too. With a large burst from
both sides at once both directions' windows filled and neither side read again, for good (the
heartbeat timeout lived in the loop that was stuck). Now the handler only queues, so every
message is taken in within one event's work, whatever the sends are waiting for: the peer's
sends always drain, and the heartbeat timeout is checked by a loop that never waits in a send.
The alternative, importing and ACKing in the receiver, would put a send (the ACK) back on the
receive path -- blocking on flow control again -- or make two tasks send on one stream, which
gRPC forbids; one sender keeps one writer and one place that decides the order on the wire.

Bounded memory: replication is never queued as messages (passes coalesce: at most one waits
unstarted); at most one heartbeat is queued; ACKs/NACKs, one per Response received and not yet
on the wire, are capped by ``StreamEnv.outbound_backlog_limit``: a peer that sends more
Responses than it takes ACKs for past the cap has its stream ended with an error. A send that
does not complete within the heartbeat timeout (the peer stopped reading) ends the stream as a
heartbeat timeout, so a stalled peer costs one window and one outbox, then the stream.

Protocol order (the model's ENDPOINT table) is kept because queueing is sending, as far as the
model goes: the outbox is the head of the outbound channel, FIFO, so everything the model puts
on the channel at a step is queued at that step, in the model's order -- the first pass and the
subscription requests at accept, ``Terminated`` at teardown (the tracker entry is deleted then,
as the table says), the dialer's CloseSend behind ``Terminated``. From the moment the handler
leaves phase OPEN it imports nothing (the drain discards) and no later pass sends anything
(a pass also rechecks that the local row is active before each Response). After a nil return
the drain discards events until the inbound side has ended *and* the sender has finished, so an
acceptor's RPC never ends before its ``Terminated`` has gone out.

Batches (issue 10). The receiver hands the handler what the transport had already received
along with the message it waited for (``receive_ready``, at most ``BATCH_LIMIT``), and the
handler adds what arrived while it was busy before the receiver receives again; the handler
imports each run of Responses in one store transaction (``StateStore.import_batch``) and then
queues their ACK/NACKs in order, so no ACK leaves before its import is committed. Messages are
still handled in order, and the first ending discards the rest, as the drain would. The export
watcher wakes on local catalog, export and peering changes only (``LOCAL_CATALOG``): imported
rows never change what this end exports.

Bug switches: ``termination-race`` (dialer: cancel right after sending Terminated, no CloseSend
or drain; acceptor: a cancelled stream is a silent end), ``no-reconnect`` (dialer: any end of
the inbound side is a nil return, so the caller stops retrying).

May import: the standard library, trio, protobuf, ``peerkit.proto``, ``peerkit.model``
(vocabulary and table constants) and the sibling modules ``.store``, ``.transport``,
``.tracker``, ``.codec``, ``.logs``.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Final

import trio
from google.protobuf import any_pb2
from google.protobuf.message import DecodeError, Message

from peerkit.model.tables import ACCEPTOR, DIALER
from peerkit.model.vocabulary import (
    ERR_HEARTBEAT_TIMEOUT,
    ERR_MISMATCHED_URL,
    ERR_NO_NONCE,
    ERR_RECEIVE_FAILED,
    ERR_REGISTER_STREAM,
    ERR_STREAM_ENDED,
    ERR_SUBSCRIPTION_ERROR,
    ERR_SUBSCRIPTION_NONCE,
    ERR_SUBSCRIPTION_PEER_ID,
    ERR_SUBSCRIPTION_UNKNOWN_URL,
    WARN_DRAIN_FAILED,
    PeeringState,
)
from peerkit.proto import peering_pb2, peerstream_pb2
from peerkit.proto.resources import (
    EXPORTED_SERVICE_LIST_RESOURCE_ID,
    KNOWN_TYPE_URLS,
    RESOURCE_TYPE_URLS,
    TRUST_BUNDLE_RESOURCE_ID,
    TYPE_URL_EXPORTED_SERVICE,
    TYPE_URL_EXPORTED_SERVICE_LIST,
    TYPE_URL_PEERING_TRUST_BUNDLE,
)

from .codec import csn_from_wire, instances_to_pb
from .logs import EventLog
from .store import (
    EXPORTS,
    LOCAL_CATALOG,
    PEERINGS,
    CheckServiceNode,
    ImportBundle,
    ImportOp,
    ImportService,
    ImportServiceList,
    StateStore,
    StoreError,
    StoreFailure,
    TrustBundle,
)
from .tracker import DuplicateStreamError, StreamTracker
from .transport import (
    BidiStream,
    ClosedForSending,
    EndOfStream,
    StatusCode,
    StreamCancelled,
    StreamFailed,
    TransportError,
)

__all__ = [
    "HEARTBEAT_INTERVAL",
    "HEARTBEAT_TIMEOUT",
    "Ending",
    "ReceiveHold",
    "ReplicationMessage",
    "ReplicationStream",
    "StreamEnv",
    "StreamParams",
    "StreamSession",
    "deserialize",
    "serialize",
]

ReplicationMessage = peerstream_pb2.ReplicationMessage
ReplicationStream = BidiStream[ReplicationMessage, ReplicationMessage]


def serialize(message: ReplicationMessage) -> bytes:
    """The stream's serializer (typed, unlike the generated ``SerializeToString``)."""
    data: bytes = message.SerializeToString()
    return data


def deserialize(data: bytes) -> ReplicationMessage:
    return ReplicationMessage.FromString(data)

def _unpack(resource: any_pb2.Any, into: Message) -> None:
    """Unpack a Response's payload; ValueError (the caller NACKs) when it is of another type or
    does not decode (upstream: "failed to unmarshal resource: ..."), never a crash."""
    try:
        matched = resource.Unpack(into)
    except DecodeError as exc:
        raise ValueError(f"failed to unmarshal resource: {exc}") from None
    if not matched:
        raise ValueError(f"unexpected payload type {resource.type_url}")


HEARTBEAT_INTERVAL: Final = 15.0  # seconds between Heartbeats sent (#13806)
HEARTBEAT_TIMEOUT: Final = 120.0  # seconds without any message before giving up
#: ACKs/NACKs that may wait in the outbox (not yet on the wire) before the stream is ended: an
#: honest peer reads as it sends, so its backlog stays near one flow-control window of
#: Responses; this cap only stops a peer that sends without ever reading from costing memory
#: without end (each queued ACK is about 100 bytes on the wire; the stream ends at the cap)
OUTBOUND_BACKLOG_LIMIT: Final = 50_000
#: The most messages the receiver hands the handler at once (what the transport had already
#: received): their Responses are imported in one store transaction (issue 10), and the
#: sender puts at most this many messages on the wire per transport call
BATCH_LIMIT: Final = 64

# The stream speaks Consul's released (1.14 and later) layout, specs/wire.md: every Response is
# an UPSERT; a service with no instances left is an UPSERT with an empty ExportedService.
OP_UPSERT: Final = peerstream_pb2.OPERATION_UPSERT

# Ending reasons
TERMINATED_RECEIVED: Final = "terminated-received"  # nil: the peer deleted the peering
TEARDOWN: Final = "teardown"  # nil: doneCh closed, we sent Terminated
STREAM_CLOSED: Final = "stream-closed"  # nil only with a bug (no-reconnect, termination-race)
INBOUND_END: Final = "inbound-end"  # error: the inbound side ended (EOF, status, cancel)
HEARTBEAT: Final = "heartbeat-timeout"  # error (also: a send stalled that long)
BACKLOG: Final = "outbound-backlog"  # error: the peer does not read its ACKs (the cap)
REGISTER_FAILED: Final = "register-failed"  # error: a stream for this peering is connected
STORE_FAILED: Final = "store-failed"  # error: the state store failed (StoreFailure)
BAD_REQUEST: Final = "bad-request"  # error: a Request refused (InvalidArgument, as upstream)


@dataclass(frozen=True)
class StreamParams:
    """Who this stream end is: its role, the local peering ID and name, the remote's ID."""

    role: str  # ACCEPTOR or DIALER (peerkit.model.tables)
    local_id: str
    peer_name: str
    partition: str
    remote_id: str = ""  # dialer: the acceptor's peering ID; acceptor: "" (upstream too)

    def __post_init__(self) -> None:
        if self.role not in (ACCEPTOR, DIALER):
            raise ValueError(f"role must be {ACCEPTOR!r} or {DIALER!r}, got {self.role!r}")


class ReceiveHold:
    """The test hook HoldReceive: the names of the peerings whose stream handlers (of any term)
    take no message from their streams for now. ``StreamSession``'s receiver waits for the
    release before each receive, and a hold that starts while a receive waits cancels that
    receive (a cancelled receive loses nothing: the message stays in the transport, where a
    cancel or reset that arrives meanwhile discards it). A scheduling choice, not a fault: the
    model's channels are FIFO and a message may wait in flight arbitrarily long."""

    def __init__(self) -> None:
        self._released: dict[str, trio.Event] = {}  # held peer name -> set on release
        self._receiving: dict[str, set[trio.CancelScope]] = {}  # receives now waiting

    def held(self, peer_name: str) -> bool:
        return peer_name in self._released

    def hold(self, peer_name: str) -> None:
        if peer_name not in self._released:
            self._released[peer_name] = trio.Event()
        for scope in self._receiving.get(peer_name, ()):
            scope.cancel()

    def release(self, peer_name: str) -> None:
        event = self._released.pop(peer_name, None)
        if event is not None:
            event.set()

    async def wait_released(self, peer_name: str) -> None:
        event = self._released.get(peer_name)
        if event is not None:
            await event.wait()

    def receiving(self, peer_name: str) -> _Receiving:
        """A cancel scope for one receive of ``peer_name``'s stream, cancelled by a hold."""
        return _Receiving(self._receiving, peer_name)


class _Receiving:
    """``ReceiveHold.receiving``: enter a new cancel scope, registered under the peer's name
    while it is entered. A class, not a generator context manager: every receive of every
    stream end goes through one (a generator's set-up cost more than the rest of it)."""

    __slots__ = ("_peer", "_receiving", "_scope", "_scopes")

    def __init__(self, receiving: dict[str, set[trio.CancelScope]], peer_name: str) -> None:
        self._receiving = receiving
        self._peer = peer_name

    def __enter__(self) -> trio.CancelScope:
        self._scope = scope = trio.CancelScope()
        self._scopes = scopes = self._receiving.setdefault(self._peer, set())
        scopes.add(scope)
        try:
            return scope.__enter__()
        except BaseException:
            self._leave()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        try:
            return self._scope.__exit__(exc_type, exc, tb)
        finally:
            self._leave()

    def _leave(self) -> None:
        scopes = self._scopes
        scopes.discard(self._scope)
        if not scopes:
            self._receiving.pop(self._peer, None)


@dataclass
class StreamEnv:
    """What a stream end uses from its server (one leadership term)."""

    store: StateStore
    tracker: StreamTracker
    log: EventLog
    trust_domain: str
    root_pems: tuple[str, ...]
    bugs: frozenset[str] = frozenset()
    mutants: frozenset[str] = frozenset()  # peerkit.impl.mutants; none by default
    heartbeat_interval: float = HEARTBEAT_INTERVAL
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT
    outbound_backlog_limit: int = OUTBOUND_BACKLOG_LIMIT
    #: the test hook HoldReceive's holds (the server's, shared by every term)
    receive_hold: ReceiveHold = field(default_factory=ReceiveHold)


@dataclass(frozen=True)
class Ending:
    """How HandleStream ended. ``nil`` is Go's nil return (the dialer stops retrying).

    ``inbound`` is the exception that ended the inbound side (EndOfStream for EOF), when that is
    why it ended; ``drained`` says how the drain ended ("EOF" or the error), None if none ran.
    """

    nil: bool
    reason: str
    message: str = ""
    inbound: TransportError | None = None
    drained: str | None = None
    cancelled_stream: bool = False  # the dialer cancelled the RPC (termination-race)

    @property
    def error_text(self) -> str:
        return self.message or self.reason


class _SendStalled(Exception):
    """A send waited the heartbeat timeout without completing (the peer stopped reading)."""


# Events on the handler loop's channel
@dataclass(frozen=True)
class _Inbound:
    """Messages in the order received: one, plus what the transport already held. Whoever
    takes it sets ``taken`` (the handler once it has added what arrived meanwhile); the
    receiver waits for that before it receives again."""

    msgs: tuple[ReplicationMessage, ...]
    taken: trio.Event = field(default_factory=trio.Event, compare=False)


@dataclass(frozen=True)
class _InboundEnd:
    error: TransportError


class _Teardown:
    pass


class _Publish:
    pass


@dataclass(frozen=True)
class _SenderEnded:
    """The sender task stopped: it finished the outbox (both flags unset), a send stalled, or
    the store failed while it built a Response."""

    stalled: bool = False
    store_failure: StoreFailure | None = None


_Event = _Inbound | _InboundEnd | _Teardown | _Publish | _SenderEnded
_TEARDOWN = _Teardown()
_PUBLISH = _Publish()


# Items of the outbox besides messages
@dataclass(frozen=True)
class _Acknowledgement:
    """An ACK or NACK (counted against ``outbound_backlog_limit`` until it is sent)."""

    msg: ReplicationMessage


@dataclass
class _Pass:
    """One replication pass. ``snapshot`` is taken at the stream's start for the first pass
    (the model's ``accept``), else when the pass reaches the head of the outbox."""

    snapshot: dict[str, tuple[CheckServiceNode, ...]] | None = None
    first: bool = False
    messages: Iterator[ReplicationMessage] | None = None  # set once started


@dataclass(frozen=True)
class _Final:
    """The last item: CloseSend (the dialer) or just the end of sending (the acceptor)."""

    close_send: bool


_OutboxItem = ReplicationMessage | _Acknowledgement | _Pass | _Final
_DRAIN_STALLED: Final = "peer stopped reading: a send waited past the heartbeat timeout"
_DRAIN_STORE_FAILED: Final = "state store failed"


def _describe_end(error: TransportError) -> str:
    if isinstance(error, EndOfStream):
        return "EOF"
    return str(error) or type(error).__name__


def _go_quote(text: str) -> str:
    """Roughly Go's %q for the error texts quoted from upstream."""
    return json.dumps(text, ensure_ascii=False)


@dataclass
class _Reply:
    error_code: int = 0
    error_message: str = ""
    store_error: str | None = None  # the text recorded as LastReceiveError
    failure: StoreFailure | None = None  # the store itself failed (not a refusal)

    @property
    def ok(self) -> bool:
        return self.error_code == 0 and not self.error_message


@dataclass
class StreamSession:
    """One stream end. Create it after the handshake and ``await run()`` once."""

    env: StreamEnv
    params: StreamParams
    stream: ReplicationStream
    log: EventLog = field(init=False)
    _nonce: int = field(default=0, init=False)
    # what was last sent per exported service; only services still exported (see _pass_messages)
    _sent: dict[str, tuple[CheckServiceNode, ...]] = field(default_factory=dict, init=False)
    _live_entry: bool = field(default=False, init=False)
    _last_received: float = field(default=0.0, init=False)
    # the outbox (module docstring): the handler appends, the sender takes from the left
    _outbox: deque[_OutboxItem] = field(default_factory=deque, init=False)
    _wakeup: trio.lowlevel.ParkingLot = field(default_factory=trio.lowlevel.ParkingLot,
                                              init=False)
    _replies_queued: int = field(default=0, init=False)  # ACK/NACKs in the outbox
    _heartbeat_queued: bool = field(default=False, init=False)
    _pass_waiting: bool = field(default=False, init=False)  # a later pass queued, not started
    _open: bool = field(default=True, init=False)  # phase OPEN: later passes may send
    _subscribed: set[str] = field(default_factory=set, init=False)  # the peer's, by URL

    def __post_init__(self) -> None:
        self.log = self.env.log.bind(
            peering_id=self.params.local_id, peer_name=self.params.peer_name, role=self.params.role
        )

    @property
    def _bugs(self) -> frozenset[str]:
        return self.env.bugs

    @property
    def _mutants(self) -> frozenset[str]:
        return self.env.mutants

    def _mutant(self, acceptor_name: str, dialer_name: str) -> bool:
        """Whether this role's mutant of a pair is on (the names are spelt out at each site,
        so that a test can find every switch in the source)."""
        return (acceptor_name if self.params.role == ACCEPTOR else dialer_name) in self._mutants

    # =========================================================================================
    # the whole life of the stream end
    # =========================================================================================

    async def run(self) -> Ending:
        """HandleStream plus, after a nil return, the role's CloseSend / drain."""
        tracker = self.env.tracker
        if self._mutant("drop-accept:acceptor-new-open-valid", ""):
            done = trio.Event()  # mutant: served, but never registered in the tracker
        else:
            try:
                done = tracker.connected(self.params.local_id)
            except DuplicateStreamError as exc:
                return Ending(False, REGISTER_FAILED,
                              ERR_REGISTER_STREAM.format(error=exc.message))
            self._live_entry = True
        self.log.info("stream connected")
        events_send, events_recv = trio.open_memory_channel[_Event](0)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receiver, events_send.clone())
                ending = await self._handle(events_send, events_recv, done, nursery)
                if ending.nil:
                    ending = await self._after_nil(ending, events_recv)
                nursery.cancel_scope.cancel()
        finally:
            if self._live_entry:
                # The handler was cancelled (leadership lost, shutdown) while connected.
                self._live_entry = False
                tracker.disconnected(self.params.local_id, "stream handler stopped")
            events_send.close()
        return ending

    async def _after_nil(self, ending: Ending, events: trio.MemoryReceiveChannel[_Event]) -> Ending:
        if ending.inbound is not None:
            # the inbound side has already ended (a bug's nil return): nothing left to drain
            return ending
        if self.params.role == DIALER:
            if ending.reason == TEARDOWN and "termination-race" in self._bugs:
                # bug: cancel right after sending Terminated; the cancel may overtake it
                self._queue(_Final(close_send=False))
                await self._drain(events, until_inbound_end=False)
                self.stream.cancel()
                self.log.info("cancelled outbound stream after sending Terminated", bug=True)
                return Ending(True, ending.reason, ending.message, ending.inbound,
                              cancelled_stream=True)
            no_close = {TEARDOWN: "drop-close-send:dialer-open-teardown",
                        TERMINATED_RECEIVED: "drop-close-send:dialer-open-terminated"}
            # mutant if in: drain without CloseSend
            close_send = no_close.get(ending.reason, "") not in self._mutants
            self._queue(_Final(close_send=close_send))  # behind Terminated and the last ACKs
            if ending.reason == TEARDOWN and "dialer-no-drain" in self._mutants:
                # mutant: half-closed once the outbox is out, returns at once (the connection
                # closes) without draining the inbound side
                await self._drain(events, until_inbound_end=False)
                return ending
            drained = await self._drain(events)
            if drained != "EOF":
                self.log.warning(WARN_DRAIN_FAILED, error=drained)
            self.log.info("closed outbound stream", drained=drained)
        else:
            self._queue(_Final(close_send=False))
            drained = await self._drain(events)
            if drained == _DRAIN_STALLED:
                # the dialer reads nothing (so it may not have had Terminated): end the RPC
                # with an error, as a heartbeat timeout, rather than OK
                return self._send_stalled()
            if drained.startswith(_DRAIN_STORE_FAILED):
                return self._ended_with_error(STORE_FAILED, drained)
            self.log.debug("drained inbound stream", drained=drained)
        return Ending(True, ending.reason, ending.message, ending.inbound, drained=drained)

    async def _drain(self, events: trio.MemoryReceiveChannel[_Event],
                     until_inbound_end: bool = True) -> str:
        """Discard inbound messages until the inbound side has ended (unless
        ``until_inbound_end`` is False) and the sender has finished the outbox; return how
        the inbound side ended, or why the sender stopped short (``_DRAIN_STALLED``,
        ``_DRAIN_STORE_FAILED``)."""
        inbound: str | None = None
        sender_done = False
        while not (sender_done and (inbound is not None or not until_inbound_end)):
            event = await events.receive()
            if isinstance(event, _Inbound):
                event.taken.set()  # discarded
            elif isinstance(event, _InboundEnd):
                inbound = _describe_end(event.error)
            elif isinstance(event, _SenderEnded):
                # a sender that did not finish leaves the outbox unsent (Terminated perhaps):
                # the drain ends, as if the stream had been reset
                if event.stalled:
                    return _DRAIN_STALLED
                if event.store_failure is not None:  # it failed while still in OPEN
                    return f"{_DRAIN_STORE_FAILED}: {event.store_failure}"
                sender_done = True
        return inbound or ""

    async def _receiver(self, out: trio.MemorySendChannel[_Event]) -> None:
        hold = self.env.receive_hold
        name = self.params.peer_name
        async with out:
            while True:
                msg: ReplicationMessage | None = None
                try:
                    await hold.wait_released(name)
                    with hold.receiving(name):  # a hold cancels it; the message stays queued
                        msg = await self.stream.receive()
                except TransportError as exc:
                    await out.send(_InboundEnd(exc))
                    return
                if msg is None:
                    continue  # held: wait for the release, then receive again
                # what arrived meanwhile goes with it: its Responses are imported together
                more = self.stream.receive_ready(BATCH_LIMIT - 1)
                inbound = _Inbound((msg, *more))
                await out.send(inbound)
                # the handler adds what arrived while it was busy (see _on_event_unguarded)
                await inbound.taken.wait()

    # =========================================================================================
    # HandleStream
    # =========================================================================================

    async def _handle(
        self,
        events_send: trio.MemorySendChannel[_Event],
        events: trio.MemoryReceiveChannel[_Event],
        done: trio.Event,
        nursery: trio.Nursery,
    ) -> Ending:
        self._last_received = trio.current_time()
        # The subscription manager pushes at once the trust bundle, the list of exported
        # services (so the peer drops what it kept from an earlier stream) and each service,
        # then this side's subscription requests: all queued now, in that order (the model's
        # ``accept``); the sender sends them as the transport takes them.
        unregistered = self._mutant("drop-accept:acceptor-new-open-valid", "")
        try:
            snapshot = self._current_exports()
        except StoreFailure as exc:
            return self._store_failed(exc)
        if not unregistered and "no-trust-bundle" not in self._mutants:  # mutant if in
            self._queue(self._trust_bundle())
        if snapshot is not None and not unregistered:  # an inactive peering exports nothing
            if "no-service-list" not in self._mutants:  # mutant if in
                self._queue(self._service_list(snapshot))
            self._queue(_Pass(snapshot, first=True))  # mutant drop-accept: nothing at the start
        for url in RESOURCE_TYPE_URLS:
            self._queue(ReplicationMessage(
                request=ReplicationMessage.Request(ResourceURL=url, PeerID=self.params.remote_id)
            ))
        nursery.start_soon(self._sender, events_send.clone())
        async with trio.open_nursery() as watchers:
            watchers.start_soon(self._watch_done, done, events_send.clone())
            watchers.start_soon(self._watch_exports, events_send.clone())
            try:
                return await self._loop(events)
            finally:
                self._open = False  # no later pass sends anything once the handler leaves OPEN
                watchers.cancel_scope.cancel()

    def _send_stalled(self) -> Ending:
        """A send waited the heartbeat timeout without completing (the peer stopped reading,
        so flow control stopped our sends): end as a heartbeat timeout, rather than hold the
        stream for ever."""
        self.log.warning("peer stopped reading: a send waited past the heartbeat timeout",
                         seconds=self.env.heartbeat_timeout)
        return self._ended_with_error(HEARTBEAT, ERR_HEARTBEAT_TIMEOUT)

    async def _loop(self, events: trio.MemoryReceiveChannel[_Event]) -> Ending:
        interval = self.env.heartbeat_interval
        timeout = self.env.heartbeat_timeout
        next_heartbeat = trio.current_time() + interval
        while True:
            event: _Event | None = None
            with trio.move_on_at(min(next_heartbeat, self._last_received + timeout)):
                event = await events.receive()
            if event is None:
                now = trio.current_time()
                if now >= self._last_received + timeout:
                    return self._ended_with_error(HEARTBEAT, ERR_HEARTBEAT_TIMEOUT)
                if now >= next_heartbeat:
                    next_heartbeat = now + interval
                    if not self._heartbeat_queued:  # one waiting is as good as many
                        self._heartbeat_queued = True
                        self._queue(ReplicationMessage(heartbeat=ReplicationMessage.Heartbeat()))
                continue
            ending = await self._on_event(event)
            if ending is not None:
                return ending

    async def _on_event(self, event: _Event) -> Ending | None:
        try:
            return await self._on_event_unguarded(event)
        except StoreFailure as exc:
            return self._store_failed(exc)

    def _store_failed(self, exc: StoreFailure) -> Ending:
        """The store failed where the stream cannot go on without it (what to export): end
        the stream with an error (the dialer retries later), never crash the server."""
        self.log.error("state store failed; ending the stream", error=str(exc))
        return self._ended_with_error(STORE_FAILED, f"state store failed: {exc}")

    async def _on_event_unguarded(self, event: _Event) -> Ending | None:
        if isinstance(event, _Inbound):
            self._last_received = trio.current_time()
            msgs = event.msgs
            # The receiver made this batch when the previous one was handed over, then waited
            # for the handler: add what arrived meanwhile (the receiver waits on ``taken``, so
            # nothing can come between). Batches then hold what arrived during the previous
            # import, so a faster import does not just make more, smaller batches, each
            # paying a transaction and its statements (issue 10: 1,000 imports went from 44
            # batches to 80 as the import got faster).
            if len(msgs) < BATCH_LIMIT and not self.env.receive_hold.held(self.params.peer_name):
                msgs += tuple(self.stream.receive_ready(BATCH_LIMIT - len(msgs)))
            event.taken.set()
            return self._on_messages(msgs)
        if isinstance(event, _InboundEnd):
            return self._on_inbound_end(event.error)
        if isinstance(event, _Teardown):
            return self._on_teardown()
        if isinstance(event, _SenderEnded):
            if event.stalled:
                return self._send_stalled()
            if event.store_failure is not None:
                return self._store_failed(event.store_failure)
            return None  # cannot happen in OPEN: the final item is queued only after it
        if not self._pass_waiting:  # a pass not yet started will see this change too
            self._pass_waiting = True
            self._queue(_Pass())
        return None

    # ---- endings -----------------------------------------------------------------------------

    def _ended_with_error(self, reason: str, message: str,
                          inbound: TransportError | None = None) -> Ending:
        self._live_entry = False
        self.env.tracker.disconnected(self.params.local_id, message)
        self.log.info("stream ended with an error", reason=reason, error=message)
        return Ending(False, reason, message, inbound)

    def _backlog_full(self) -> Ending:
        """The peer keeps sending Responses but does not read our ACKs: end the stream rather
        than queue without end (the dialer retries later)."""
        limit = self.env.outbound_backlog_limit
        self.log.warning("peer is not reading: too many acknowledgements waiting", limit=limit)
        return self._ended_with_error(
            BACKLOG, f"peer is not reading: {limit} acknowledgements waiting to be sent")

    def _on_inbound_end(self, error: TransportError) -> Ending:
        text = _describe_end(error)
        tracker = self.env.tracker
        pid = self.params.local_id
        if self.params.role == ACCEPTOR and isinstance(error, StreamCancelled) and (
            "termination-race" in self._bugs
        ):
            # bug (pre-fix receive loop): "Cancelling the stream is not an error"
            self._live_entry = False
            tracker.disconnected(pid, None)
            self.log.debug("stream cancelled by the peer; ignored", bug=True)
            return Ending(True, STREAM_CLOSED, text, error)
        # upstream's realHandleStream names the end for the tracker and its caller
        message = (ERR_STREAM_ENDED if isinstance(error, EndOfStream)
                   else ERR_RECEIVE_FAILED.format(error=text))
        tracker.track_receive_error(pid, message)
        if self.params.role == DIALER and "no-reconnect" in self._bugs:
            self._live_entry = False
            tracker.disconnected(pid, text)
            self.log.info("stream closed; not reconnecting", error=text, bug=True)
            return Ending(True, STREAM_CLOSED, text, error)
        reset = isinstance(error, StreamCancelled) or (
            isinstance(error, StreamFailed) and error.code is StatusCode.UNAVAILABLE)
        if self.params.role == DIALER and reset and "dialer-gives-up-on-reset" in self._mutants:
            self._live_entry = False  # mutant: a reset is a nil end, the retry loop stops
            tracker.disconnected(pid, message)
            return Ending(True, STREAM_CLOSED, message, error)
        if isinstance(error, EndOfStream):
            no_disconnect = self._mutant("drop-disconnect:acceptor-open-eof", "")
        elif reset:
            no_disconnect = self._mutant("drop-disconnect:acceptor-open-reset",
                                         "drop-disconnect:dialer-open-reset")
        else:
            no_disconnect = self._mutant("", "drop-disconnect:dialer-open-error-status")
        if no_disconnect:
            self._live_entry = False  # mutant: the entry is left connected
            return Ending(False, INBOUND_END, message, error)
        return self._ended_with_error(INBOUND_END, message, error)

    def _on_teardown(self) -> Ending:
        """doneCh closed: send (queue) Terminated, forget the tracker entry, return nil."""
        self.log.info("peering deleted locally: sending Terminated")
        if self._mutant("drop-send-terminated:acceptor-open-teardown",
                        "drop-send-terminated:dialer-open-teardown"):
            self._live_entry = False  # mutant: nothing sent, the entry is left connected
            return Ending(True, TEARDOWN)
        self._queue(ReplicationMessage(terminated=ReplicationMessage.Terminated()))
        self._live_entry = False
        if self._mutant("acceptor-teardown-keeps-tracker", ""):
            return Ending(True, TEARDOWN)  # mutant: Terminated sent, the entry left connected
        self.env.tracker.delete_status(self.params.local_id)
        return Ending(True, TEARDOWN)

    def _on_terminated(self) -> Ending:
        """The peer deleted the peering: TerminateByID (unless already inactive), return nil."""
        store = self.env.store
        pid = self.params.local_id
        self.log.info("peering was deleted by our peer: marking peering as terminated")
        if self._mutant("drop-terminate:acceptor-open-terminated",
                        "drop-terminate:dialer-open-terminated"):
            self._live_entry = False  # mutant: no TerminateByID, the entry left connected
            return Ending(True, TERMINATED_RECEIVED)
        try:
            row = store.peering_read_by_id(pid)
            if row is not None and row.is_active() and self._mutant(
                    "refuse:acceptor-pending-terminated-received",
                    "refuse:dialer-establishing-terminated-received"):
                pass  # mutant: an active row refuses TerminateByID
            elif row is not None and row.is_active():
                store.peering_terminate_by_id(pid)
            elif row is not None and row.state is PeeringState.DELETING and \
                    "terminate-marked-row" in self._mutants:
                store.peering_terminate_by_id(pid)  # mutant: no state check
            elif row is not None:
                # peerkit decision: a row marked for deletion stays marked (model/tables.py)
                self.log.info("local peering is already inactive; left as it is",
                              state=row.state.name)
        except Exception as exc:  # upstream only logs the failure
            self.log.error("failed to terminate peering", error=str(exc))
        self._live_entry = False
        self.env.tracker.disconnected(pid, None)
        return Ending(True, TERMINATED_RECEIVED)

    # ---- inbound messages ----------------------------------------------------------------

    def _on_messages(self, msgs: tuple[ReplicationMessage, ...]) -> Ending | None:
        """Handle messages in order; each run of Responses is imported in one transaction.
        The first ending stops it: what follows is discarded, as the drain would."""
        i = 0
        while i < len(msgs):
            j = i
            while j < len(msgs) and msgs[j].WhichOneof("Payload") == "response":
                j += 1
            if j > i:
                ending = self._on_responses(msgs[i:j])
                i = j
            else:
                ending = self._on_message(msgs[i])
                i += 1
            if ending is not None:
                return ending
        return None

    def _on_responses(self, msgs: tuple[ReplicationMessage, ...]) -> Ending | None:
        """Import a run of Responses in one store transaction, then ACK/NACK each in order."""
        taken: list[ReplicationMessage.Response] = []
        for msg in msgs:
            if self._mutant("drop-import:acceptor-open-response",
                            "drop-import:dialer-open-response"):
                continue  # mutant: the Response is dropped (no write, no ACK)
            if self._replies_queued + len(taken) >= self.env.outbound_backlog_limit:
                # before importing what could not be answered (what came before is answered)
                return self._import_and_reply(taken) or self._backlog_full()
            taken.append(msg.response)
        return self._import_and_reply(taken)

    def _import_and_reply(self, responses: list[ReplicationMessage.Response]) -> Ending | None:
        if not responses:
            return None
        tracker = self.env.tracker
        pid = self.params.local_id
        replies: list[_Reply | None] = []  # None: its op is in the batch
        ops: list[ImportOp] = []
        for resp in responses:
            reply = self._check_response(resp)
            if reply is None:
                try:
                    op = self._import_op(resp.ResourceURL, resp.ResourceID, resp.Resource)
                except (ValueError, TypeError) as exc:
                    reply = self._upsert_error(resp, str(exc))
                else:
                    if op is None:
                        reply = _Reply()  # nothing to write (mutant service-list-ignored)
                    else:
                        ops.append(op)
            replies.append(reply)
        try:
            results = self.env.store.import_batch(
                self.params.peer_name, self.params.partition, ops) if ops else []
        except StoreFailure as exc:
            # the whole batch was rolled back: answer as if its first write had failed
            results = [exc]
        applied = iter(results)
        for resp, known in zip(responses, replies, strict=True):
            if known is None:
                error = next(applied, None)
                if isinstance(error, StoreFailure):
                    known = self._upsert_error(resp, str(error), error)
                elif isinstance(error, StoreError):
                    known = self._upsert_error(resp, error.message)
                elif error is not None:
                    known = self._upsert_error(resp, str(error))
                else:
                    known = _Reply()
            if known.store_error is None:
                tracker.track_receive_success(pid)
            else:
                tracker.track_receive_error(pid, known.store_error)
                self.log.warning("failed to persist resource", error=known.store_error,
                                 resource_url=resp.ResourceURL, resource_id=resp.ResourceID)
            self._replies_queued += 1
            self._queue(_Acknowledgement(self._reply_message(resp, known)))
            if known.failure is not None:
                # the disk failed (full, read-only, I/O): the NACK alone would leave this
                # resource unapplied for good (nothing is resent after a NACK), so end the
                # stream too; the next stream resends the whole state once the disk is back
                return self._store_failed(known.failure)
        return None

    def _on_message(self, msg: ReplicationMessage) -> Ending | None:
        """Any message but a Response."""
        kind = msg.WhichOneof("Payload")
        tracker = self.env.tracker
        pid = self.params.local_id
        if kind == "request":
            return self._on_request(msg.request)
        if kind == "terminated":
            return self._on_terminated()
        if kind == "heartbeat":
            tracker.track_heartbeat(pid)
            return None
        self.log.warning("ignored unexpected message", kind=kind or "empty")
        return None

    def _on_request(self, req: ReplicationMessage.Request) -> Ending | None:
        """A subscription, ACK or NACK, validated as upstream's ``realHandleStream`` does
        (specs/stream.md, "Subscriptions"): a bad one ends the stream with InvalidArgument."""
        tracker, pid, url = self.env.tracker, self.params.local_id, req.ResourceURL
        has_error = req.HasField("Error")  # upstream: req.Error != nil, whatever it holds
        if url not in KNOWN_TYPE_URLS:
            shown = url if len(url) <= 80 else url[:80] + "..."  # hostile bytes, clipped
            return self._bad_request(ERR_SUBSCRIPTION_UNKNOWN_URL.format(url=shown))
        if url not in self._subscribed:  # the peer's first Request for this type
            if self.params.role == DIALER and req.PeerID not in ("", self.params.remote_id):
                return self._bad_request(ERR_SUBSCRIPTION_PEER_ID.format(
                    got=_go_quote(req.PeerID[:80]), expected=_go_quote(self.params.remote_id)))
            if req.ResponseNonce:
                return self._bad_request(ERR_SUBSCRIPTION_NONCE)
            if has_error:
                return self._bad_request(ERR_SUBSCRIPTION_ERROR)
            self._subscribed.add(url)
            tracker.track_ack(pid)  # upstream counts a subscription as an ACK
        elif not req.ResponseNonce:
            if has_error:
                return self._bad_request(ERR_SUBSCRIPTION_ERROR)
            # a repeated subscription: ignored
        elif has_error:
            tracker.track_nack(
                pid, f"client peer was unable to apply resource: {req.Error.message}")
        else:
            tracker.track_ack(pid)
        return None

    def _bad_request(self, message: str) -> Ending:
        self.log.warning("invalid request from the peer", error=message)
        return self._ended_with_error(BAD_REQUEST, message)

    @staticmethod
    def _reply_message(resp: ReplicationMessage.Response, result: _Reply) -> ReplicationMessage:
        # built in place (one per Response received: a Request built apart is copied in)
        # (assigning a field sets the submessage, even to an empty string: a test pins it)
        msg = ReplicationMessage()
        request = msg.request
        request.ResourceURL = resp.ResourceURL
        request.ResponseNonce = resp.Nonce
        if not result.ok:
            request.Error.code = result.error_code
            request.Error.message = result.error_message
        return msg

    @staticmethod
    def _check_response(resp: ReplicationMessage.Response) -> _Reply | None:
        """The checks before any decoding (upstream's processResponse): a NACK, or None."""
        url, rid = resp.ResourceURL, resp.ResourceID
        if url not in (TYPE_URL_EXPORTED_SERVICE, TYPE_URL_PEERING_TRUST_BUNDLE,
                       TYPE_URL_EXPORTED_SERVICE_LIST):
            msg = f"received response for unknown resource type {_go_quote(url)}"
            return _Reply(StatusCode.INVALID_ARGUMENT.value, msg, msg)
        if not resp.Nonce:
            # since 1.14 (processResponse): a Response without a nonce cannot be ACKed
            msg = ERR_NO_NONCE.format(url=url, id=rid)
            return _Reply(StatusCode.INVALID_ARGUMENT.value, msg, msg)
        op = resp.operation
        if op != OP_UPSERT:
            known = peerstream_pb2.Operation.DESCRIPTOR.values_by_number.get(op)
            msg = (f"unsupported operation: {_go_quote(known.name)}" if known is not None
                   else f"unsupported operation: {op}")
            return _Reply(StatusCode.INVALID_ARGUMENT.value, msg, msg)
        if not resp.HasField("Resource"):
            msg = "received upsert response with no content"
            return _Reply(StatusCode.INVALID_ARGUMENT.value, msg, msg)
        return None

    @staticmethod
    def _upsert_error(resp: ReplicationMessage.Response, text: str,
                      failure: StoreFailure | None = None) -> _Reply:
        msg = (f"upsert error, ResourceURL: {_go_quote(resp.ResourceURL)}, "
               f"ResourceID: {_go_quote(resp.ResourceID)}: {text}")
        return _Reply(StatusCode.INTERNAL.value, msg, msg, failure)

    def _import_op(self, url: str, rid: str, resource: any_pb2.Any) -> ImportOp | None:
        """Decode one upsert into the store op that applies it (None: nothing to apply);
        ValueError/TypeError when it does not decode (the caller NACKs)."""
        peer, partition = self.params.peer_name, self.params.partition
        if resource.type_url != url:
            # upstream's handleUpsert checks this before decoding anything
            raise ValueError(ERR_MISMATCHED_URL.format(url=_go_quote(url),
                                                       type_url=_go_quote(resource.type_url)))
        if url == TYPE_URL_EXPORTED_SERVICE:
            if not rid:
                raise ValueError("a service resource needs a ResourceID (the service name)")
            exported = peerstream_pb2.ExportedService()
            _unpack(resource, exported)
            # no instances: the service's removal (import_batch deletes it)
            return ImportService(rid, [csn_from_wire(n, peer, partition)
                                       for n in exported.Nodes])
        if url == TYPE_URL_EXPORTED_SERVICE_LIST:
            listed = peerstream_pb2.ExportedServiceList()
            _unpack(resource, listed)
            if "service-list-ignored" in self._mutants:
                return None  # mutant: the list is accepted and ignored
            return ImportServiceList(tuple(listed.Services))
        bundle = peering_pb2.PeeringTrustBundle()
        _unpack(resource, bundle)
        return ImportBundle(TrustBundle(
            peer_name=peer,
            partition=partition,
            trust_domain=bundle.TrustDomain,
            root_pems=tuple(bundle.RootPEMs),
        ))

    # ---- outbound: the subscription manager ------------------------------------------------

    def _next_nonce(self) -> str:
        self._nonce += 1
        return f"{self._nonce:08x}"

    def _upsert_message(self, url: str, rid: str, payload: Message) -> ReplicationMessage:
        # built in place: a Response built apart is copied into the message (one per
        # exported service; issue 10)
        msg = ReplicationMessage()
        response = msg.response
        response.Nonce = self._next_nonce()
        response.ResourceURL = url
        response.ResourceID = rid
        response.operation = OP_UPSERT
        response.Resource.Pack(payload)
        return msg

    def _trust_bundle(self) -> ReplicationMessage:
        bundle = peering_pb2.PeeringTrustBundle(
            TrustDomain=self.env.trust_domain, RootPEMs=list(self.env.root_pems)
        )
        return self._upsert_message(TYPE_URL_PEERING_TRUST_BUNDLE, TRUST_BUNDLE_RESOURCE_ID,
                                    bundle)

    def _service_list(self, current: dict[str, tuple[CheckServiceNode, ...]]
                      ) -> ReplicationMessage:
        listed = peerstream_pb2.ExportedServiceList(Services=sorted(current))
        return self._upsert_message(TYPE_URL_EXPORTED_SERVICE_LIST,
                                    EXPORTED_SERVICE_LIST_RESOURCE_ID, listed)

    def _current_exports(self) -> dict[str, tuple[CheckServiceNode, ...]] | None:
        """What the peer should hold, or None when the local row is inactive (export nothing)."""
        store = self.env.store
        row = store.peering_read_by_id(self.params.local_id)
        if row is None or not row.is_active():
            return None
        exported = store.exported_services_for_peer(row.name, partition=row.partition)
        found = store.local_instances_by_service(exported, partition=row.partition)
        return {service: tuple(instances) for service, instances in found.items() if instances}

    def _exports_whatever_the_state(self) -> dict[str, tuple[CheckServiceNode, ...]] | None:
        """Mutant export-when-inactive: what is exported to the peer, read from the export
        table itself (the store's exported_services_for_peer answers nothing for an inactive
        row)."""
        store = self.env.store
        row = store.peering_read_by_id(self.params.local_id)
        if row is None:
            return None
        exported = sorted(e.service for e in store.dump().exports if e.partition == row.partition
                          and row.name.lower() in {p.lower() for p in e.peers})
        found = store.local_instances_by_service(exported, partition=row.partition)
        return {service: tuple(instances) for service, instances in found.items() if instances}

    def _still_exporting(self) -> bool:
        """A later pass may send: the handler is in OPEN and the local row is still active."""
        if not self._open:
            return False
        if "export-when-inactive" in self._mutants:
            return True  # mutant: whatever the row's state
        row = self.env.store.peering_read_by_id(self.params.local_id)
        return row is not None and row.is_active()

    def _pass_messages(self, item: _Pass) -> Iterator[ReplicationMessage]:
        """The Responses of one pass, built one at a time as the sender asks: each service
        whose exported state (in the pass's snapshot) differs from what was last sent, by name.
        A later pass stops as soon as the handler left OPEN or the row became inactive."""
        if not item.first and not self._open:
            return
        current = item.snapshot if item.first else self._current_exports()
        if current is None and "export-when-inactive" in self._mutants:
            current = self._exports_whatever_the_state()  # mutant: publish while inactive
        if current is None:
            return
        for service in sorted(set(current) | set(self._sent)):
            if not item.first and not self._still_exporting():
                return
            new = current.get(service)
            if new == self._sent.get(service):
                continue
            if new is None:
                # sent its delete: forget it, so the record holds only the services still
                # exported (a missing key reads as None, "not sent", just the same)
                self._sent.pop(service, None)
            else:
                self._sent[service] = new
            # no instances left: an UPSERT of an empty list, which Consul's importer (and
            # peerkit's) treats as the service's removal (upstream replication.go,
            # makeServiceResponse and handleUpdateService)
            yield self._upsert_message(TYPE_URL_EXPORTED_SERVICE, service,
                                       instances_to_pb(new or ()))

    async def _watch_exports(self, out: trio.MemorySendChannel[_Event]) -> None:
        store = self.env.store
        # the local catalog only: imported rows never change what this end exports (issue 10)
        tables = (LOCAL_CATALOG, EXPORTS, PEERINGS)
        async with out:
            index = max(store.table_index(t) for t in tables)
            while True:
                index = await store.wait_for_change(tables, index)
                await out.send(_PUBLISH)

    @staticmethod
    async def _watch_done(done: trio.Event, out: trio.MemorySendChannel[_Event]) -> None:
        async with out:
            await done.wait()
            await out.send(_TEARDOWN)

    # ---- sending: the outbox and the sender task --------------------------------------------

    def _queue(self, item: _OutboxItem) -> None:
        """Append to the outbox (never waits: the handler must be back at its events at once)."""
        self._outbox.append(item)
        self._wakeup.unpark_all()

    def _next_outbound(self, messages_only: bool = False) -> ReplicationMessage | _Final | None:
        """The next thing to put on the wire, or None when the outbox is empty (or, with
        ``messages_only``, when the next thing is the final step: it stays queued)."""
        while self._outbox:
            item = self._outbox[0]
            if messages_only and isinstance(item, _Final):
                return None
            if isinstance(item, _Pass):
                if item.messages is None:
                    item.messages = self._pass_messages(item)
                    if not item.first:
                        self._pass_waiting = False
                msg = next(item.messages, None)
                if msg is not None:
                    return msg
                self._outbox.popleft()
                continue
            self._outbox.popleft()
            if isinstance(item, _Acknowledgement):
                self._replies_queued -= 1
                return item.msg
            if isinstance(item, ReplicationMessage) and item.HasField("heartbeat"):
                self._heartbeat_queued = False
            return item
        return None

    async def _sender(self, out: trio.MemorySendChannel[_Event]) -> None:
        """The only task that sends: work through the outbox in order; report how it ended."""
        async with out:
            try:
                while True:
                    item = self._next_outbound()
                    if item is None:
                        await self._wakeup.park()
                    elif isinstance(item, _Final):
                        if item.close_send:
                            await self._close_send()
                        ended = _SenderEnded()
                        break
                    else:
                        # what is queued behind it goes in the same transport call
                        batch = [item]
                        while len(batch) < BATCH_LIMIT:
                            more = self._next_outbound(messages_only=True)
                            if not isinstance(more, ReplicationMessage):
                                break
                            batch.append(more)
                        await self._send(batch)
            except _SendStalled:
                ended = _SenderEnded(stalled=True)
            except StoreFailure as exc:  # while building a pass's Response
                ended = _SenderEnded(store_failure=exc)
            await out.send(ended)

    async def _close_send(self) -> None:
        try:
            await self.stream.close_send()
        except TransportError as exc:  # the stream has ended: the drain will see how
            self.log.debug("close-send failed", error=_describe_end(exc))

    async def _send(self, msgs: list[ReplicationMessage]) -> None:
        """``stream.send_many`` (at most BATCH_LIMIT messages, in outbox order). A failure is
        recorded (LastSendError) and otherwise ignored: the receiver reports how the stream
        ended, and that ends the handler. A send is given up (``_SendStalled``) once it has
        waited the heartbeat timeout: a send waits while the peer does not read (gRPC's flow
        control, the memory network's send window) and must not wait for ever; a long burst
        that the peer does read goes on: the timeout restarts whenever some of the batch has
        gone out (after each message on the memory network, after the batch over gRPC, where
        a batch is at most BATCH_LIMIT small messages, well inside one flow-control window)."""
        timeout = self.env.heartbeat_timeout
        with trio.move_on_after(timeout) as scope:

            def progress() -> None:
                scope.deadline = trio.current_time() + timeout

            try:
                await self.stream.send_many(msgs, progress)
            except (EndOfStream, StreamFailed, ClosedForSending) as exc:
                text = _describe_end(exc)
                self.env.tracker.track_send_error(self.params.local_id, text)
                self.log.debug("send failed", what=msgs[0].WhichOneof("Payload"), error=text)
        if scope.cancelled_caught:
            raise _SendStalled()
