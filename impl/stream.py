"""HandleStream: one end of a peer stream, for either role, from registration to the final drain.

One job: run one ``StreamResources`` stream end after the handshake (peering-protocol.md §5.3–§5.7
and the ENDPOINT table of ``peerkit.model.tables``): register in the tracker, replicate exported
data and the trust bundle to the peer, import what the peer sends and ACK/NACK it, exchange
heartbeats, and end the stream the way the protocol says -- ``Terminated`` in either direction,
then CloseSend + drain -- reporting how it ended as an ``Ending``.

Structure (one task receives, §5.8): ``StreamSession.run`` opens a nursery holding

* the *receiver* task: the only caller of ``stream.receive()``; it forwards every message, and
  finally the end of the inbound side, into an unbuffered ``events`` channel;
* the handler loop (Go's ``select``): it takes events one at a time -- inbound messages, the
  inbound end, ``doneCh`` closed (from a watcher task), "exports may have changed" (from a store
  watcher task) -- and fires heartbeat sends and the heartbeat timeout from its own deadline.
  Only this loop sends on the stream.

When the handler returns nil the watchers are cancelled and the *drain* reads the same ``events``
channel, discarding messages, until the receiver reports the inbound end. Dialer: CloseSend first
and log ``WARN_DRAIN_FAILED`` if the end is not EOF. Acceptor: drain until the dialer's
half-close; its RPC handler returns afterwards. When the handler returns an error the receiver is
cancelled (a cancelled receive loses nothing, and the caller ends the RPC).

Bug switches: ``termination-race`` (dialer: cancel right after sending Terminated, no CloseSend
or drain; acceptor: a cancelled stream is a silent end), ``no-reconnect`` (dialer: any end of
the inbound side is a nil return, so the caller stops retrying).

May import: the standard library, trio, protobuf, ``peerkit.proto``, ``peerkit.model``
(vocabulary and table constants) and the sibling modules ``.store``, ``.transport``,
``.tracker``, ``.codec``, ``.logs``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
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
    WARN_DRAIN_FAILED,
)
from peerkit.proto import peering_pb2, peerstream_pb2, status_pb2
from peerkit.proto.resources import (
    EXPORTED_SERVICE_LIST_RESOURCE_ID,
    RESOURCE_TYPE_URLS,
    TRUST_BUNDLE_RESOURCE_ID,
    TYPE_URL_EXPORTED_SERVICE,
    TYPE_URL_EXPORTED_SERVICE_LIST,
    TYPE_URL_PEERING_TRUST_BUNDLE,
)

from .codec import csn_from_wire, instances_to_pb
from .logs import EventLog
from .store import (
    CATALOG,
    EXPORTS,
    PEERINGS,
    CheckServiceNode,
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

# The stream speaks Consul's released (1.14 and later) layout, specs/wire.md: every Response is
# an UPSERT; a service with no instances left is an UPSERT with an empty ExportedService.
OP_UPSERT: Final = peerstream_pb2.OPERATION_UPSERT

# Ending reasons
TERMINATED_RECEIVED: Final = "terminated-received"  # nil: the peer deleted the peering
TEARDOWN: Final = "teardown"  # nil: doneCh closed, we sent Terminated
STREAM_CLOSED: Final = "stream-closed"  # nil only with a bug (no-reconnect, termination-race)
INBOUND_END: Final = "inbound-end"  # error: the inbound side ended (EOF, status, cancel)
HEARTBEAT: Final = "heartbeat-timeout"  # error
SEND_FAILED: Final = "send-failed"  # error: Terminated could not be sent
REGISTER_FAILED: Final = "register-failed"  # error: a stream for this peering is connected
STORE_FAILED: Final = "store-failed"  # error: the state store failed (StoreFailure)


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


@dataclass
class StreamEnv:
    """What a stream end uses from its server (one leadership term)."""

    store: StateStore
    tracker: StreamTracker
    log: EventLog
    trust_domain: str
    root_pems: tuple[str, ...]
    bugs: frozenset[str] = frozenset()
    heartbeat_interval: float = HEARTBEAT_INTERVAL
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT


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
    """A send waited past the heartbeat timeout (the peer stopped reading)."""


# Events on the handler loop's channel
@dataclass(frozen=True)
class _Inbound:
    msg: ReplicationMessage


@dataclass(frozen=True)
class _InboundEnd:
    error: TransportError


class _Teardown:
    pass


class _Publish:
    pass


_Event = _Inbound | _InboundEnd | _Teardown | _Publish
_TEARDOWN = _Teardown()
_PUBLISH = _Publish()


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
    # what was last sent per exported service; only services still exported (see _publish)
    _sent: dict[str, tuple[CheckServiceNode, ...]] = field(default_factory=dict, init=False)
    _live_entry: bool = field(default=False, init=False)
    _last_received: float = field(default=0.0, init=False)
    _last_sent: float = field(default=0.0, init=False)  # when a send last completed

    def __post_init__(self) -> None:
        self.log = self.env.log.bind(
            peering_id=self.params.local_id, peer_name=self.params.peer_name, role=self.params.role
        )

    @property
    def _bugs(self) -> frozenset[str]:
        return self.env.bugs

    # =========================================================================================
    # the whole life of the stream end
    # =========================================================================================

    async def run(self) -> Ending:
        """HandleStream plus, after a nil return, the role's CloseSend / drain."""
        tracker = self.env.tracker
        try:
            done = tracker.connected(self.params.local_id)
        except DuplicateStreamError as exc:
            return Ending(False, REGISTER_FAILED, ERR_REGISTER_STREAM.format(error=exc.message))
        self._live_entry = True
        self.log.info("stream connected")
        events_send, events_recv = trio.open_memory_channel[_Event](0)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._receiver, events_send.clone())
                ending = await self._handle(events_send, events_recv, done)
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
                self.stream.cancel()
                self.log.info("cancelled outbound stream after sending Terminated", bug=True)
                return Ending(True, ending.reason, ending.message, ending.inbound,
                              cancelled_stream=True)
            await self.stream.close_send()
            drained = await self._drain(events)
            if drained != "EOF":
                self.log.warning(WARN_DRAIN_FAILED, error=drained)
            self.log.info("closed outbound stream", drained=drained)
        else:
            drained = await self._drain(events)
            self.log.debug("drained inbound stream", drained=drained)
        return Ending(True, ending.reason, ending.message, ending.inbound, drained=drained)

    async def _drain(self, events: trio.MemoryReceiveChannel[_Event]) -> str:
        """Receive until the inbound side ends, discarding everything; return how it ended."""
        while True:
            event = await events.receive()
            if isinstance(event, _InboundEnd):
                return _describe_end(event.error)

    async def _receiver(self, out: trio.MemorySendChannel[_Event]) -> None:
        async with out:
            while True:
                try:
                    msg = await self.stream.receive()
                except TransportError as exc:
                    await out.send(_InboundEnd(exc))
                    return
                await out.send(_Inbound(msg))

    # =========================================================================================
    # HandleStream
    # =========================================================================================

    async def _handle(
        self,
        events_send: trio.MemorySendChannel[_Event],
        events: trio.MemoryReceiveChannel[_Event],
        done: trio.Event,
    ) -> Ending:
        self._last_received = trio.current_time()
        try:
            return await self._handle_unguarded(events_send, events, done)
        except _SendStalled:
            return self._send_stalled()

    def _send_stalled(self) -> Ending:
        """A send waited until nothing had come from the peer for the heartbeat timeout (the
        peer stopped reading, so flow control stopped our sends): end as a heartbeat timeout,
        rather than wait in that send for ever holding the stream."""
        self.log.warning("peer stopped reading: a send waited past the heartbeat timeout",
                         seconds=self.env.heartbeat_timeout)
        return self._ended_with_error(HEARTBEAT, ERR_HEARTBEAT_TIMEOUT)

    async def _handle_unguarded(
        self,
        events_send: trio.MemorySendChannel[_Event],
        events: trio.MemoryReceiveChannel[_Event],
        done: trio.Event,
    ) -> Ending:
        # The subscription manager pushes at once the trust bundle, the list of exported
        # services (so the peer drops what it kept from an earlier stream) and each service.
        await self._send_trust_bundle()
        try:
            await self._send_service_list()
            await self._publish()
        except StoreFailure as exc:
            return self._store_failed(exc)
        for url in RESOURCE_TYPE_URLS:
            await self._send(
                ReplicationMessage(
                    request=ReplicationMessage.Request(
                        ResourceURL=url, PeerID=self.params.remote_id
                    )
                ),
                "subscription request",
            )
        async with trio.open_nursery() as watchers:
            watchers.start_soon(self._watch_done, done, events_send.clone())
            watchers.start_soon(self._watch_exports, events_send.clone())
            try:
                return await self._loop(events)
            except _SendStalled:
                return self._send_stalled()  # here, not through the nursery (an ExceptionGroup)
            finally:
                watchers.cancel_scope.cancel()

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
                    await self._send(
                        ReplicationMessage(heartbeat=ReplicationMessage.Heartbeat()), "heartbeat"
                    )
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
            return await self._on_message(event.msg)
        if isinstance(event, _InboundEnd):
            return self._on_inbound_end(event.error)
        if isinstance(event, _Teardown):
            return await self._on_teardown()
        await self._publish()
        return None

    # ---- endings -----------------------------------------------------------------------------

    def _ended_with_error(self, reason: str, message: str,
                          inbound: TransportError | None = None) -> Ending:
        self._live_entry = False
        self.env.tracker.disconnected(self.params.local_id, message)
        self.log.info("stream ended with an error", reason=reason, error=message)
        return Ending(False, reason, message, inbound)

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
        return self._ended_with_error(INBOUND_END, message, error)

    async def _on_teardown(self) -> Ending:
        """doneCh closed: send Terminated, forget the tracker entry, return nil."""
        self.log.info("peering deleted locally: sending Terminated")
        try:
            await self._send_raw(ReplicationMessage(terminated=ReplicationMessage.Terminated()))
        except TransportError as exc:
            text = _describe_end(exc)
            self.env.tracker.track_send_error(self.params.local_id, text)
            return self._ended_with_error(SEND_FAILED, f"failed to send Terminated: {text}", exc)
        self._live_entry = False
        self.env.tracker.delete_status(self.params.local_id)
        return Ending(True, TEARDOWN)

    def _on_terminated(self) -> Ending:
        """The peer deleted the peering: TerminateByID (unless already inactive), return nil."""
        store = self.env.store
        pid = self.params.local_id
        self.log.info("peering was deleted by our peer: marking peering as terminated")
        try:
            row = store.peering_read_by_id(pid)
            if row is not None and row.is_active():
                store.peering_terminate_by_id(pid)
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

    async def _on_message(self, msg: ReplicationMessage) -> Ending | None:
        kind = msg.WhichOneof("Payload")
        tracker = self.env.tracker
        pid = self.params.local_id
        if kind == "response":
            reply, result = self._process_response(msg.response)
            if result.store_error is None:
                tracker.track_receive_success(pid)
            else:
                tracker.track_receive_error(pid, result.store_error)
                self.log.warning("failed to persist resource", error=result.store_error,
                                 resource_url=msg.response.ResourceURL,
                                 resource_id=msg.response.ResourceID)
            await self._send(reply, "ack" if result.ok else "nack")
            return None
        if kind == "request":
            req = msg.request
            if req.ResponseNonce == "":
                return None  # the peer's subscription
            if req.HasField("Error") and (req.Error.code != 0 or req.Error.message):
                tracker.track_nack(
                    pid, f"client peer was unable to apply resource: {req.Error.message}"
                )
            else:
                tracker.track_ack(pid)
            return None
        if kind == "terminated":
            return self._on_terminated()
        if kind == "heartbeat":
            tracker.track_heartbeat(pid)
            return None
        self.log.warning("ignored unexpected message", kind=kind or "empty")
        return None

    def _process_response(
        self, resp: ReplicationMessage.Response
    ) -> tuple[ReplicationMessage, _Reply]:
        result = self._apply_response(resp)
        request = ReplicationMessage.Request(
            ResourceURL=resp.ResourceURL, ResponseNonce=resp.Nonce
        )
        if not result.ok:
            request.Error.CopyFrom(
                status_pb2.Status(code=result.error_code, message=result.error_message)
            )
        return ReplicationMessage(request=request), result

    def _apply_response(self, resp: ReplicationMessage.Response) -> _Reply:
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
        try:
            self._upsert(url, rid, resp.Resource)
        except (StoreError, StoreFailure, ValueError, TypeError) as exc:
            text = exc.message if isinstance(exc, StoreError) else str(exc)
            msg = (f"upsert error, ResourceURL: {_go_quote(url)}, "
                   f"ResourceID: {_go_quote(rid)}: {text}")
            return _Reply(StatusCode.INTERNAL.value, msg, msg)
        return _Reply()

    def _upsert(self, url: str, rid: str, resource: any_pb2.Any) -> None:
        store = self.env.store
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
            instances = [csn_from_wire(n, peer, partition) for n in exported.Nodes]
            if instances:
                store.import_service_nodes(peer, partition, rid, instances)
            else:
                store.import_delete_service(peer, partition, rid)
            return
        if url == TYPE_URL_EXPORTED_SERVICE_LIST:
            listed = peerstream_pb2.ExportedServiceList()
            _unpack(resource, listed)
            keep = set(listed.Services)
            for service in store.imported_service_names(peer, partition):
                if service not in keep:
                    store.import_delete_service(peer, partition, service)
            return
        bundle = peering_pb2.PeeringTrustBundle()
        _unpack(resource, bundle)
        store.trust_bundle_write(
            TrustBundle(
                peer_name=peer,
                partition=partition,
                trust_domain=bundle.TrustDomain,
                root_pems=tuple(bundle.RootPEMs),
            )
        )

    # ---- outbound: the subscription manager ------------------------------------------------

    def _next_nonce(self) -> str:
        self._nonce += 1
        return f"{self._nonce:08x}"

    async def _send_trust_bundle(self) -> None:
        payload = any_pb2.Any()
        payload.Pack(
            peering_pb2.PeeringTrustBundle(
                TrustDomain=self.env.trust_domain, RootPEMs=list(self.env.root_pems)
            )
        )
        await self._send(
            ReplicationMessage(
                response=ReplicationMessage.Response(
                    Nonce=self._next_nonce(),
                    ResourceURL=TYPE_URL_PEERING_TRUST_BUNDLE,
                    ResourceID=TRUST_BUNDLE_RESOURCE_ID,
                    Resource=payload,
                    operation=OP_UPSERT,
                )
            ),
            "trust bundle",
        )

    async def _send_service_list(self) -> None:
        current = self._current_exports()
        if current is None:
            return  # an inactive peering exports nothing
        payload = any_pb2.Any()
        payload.Pack(peerstream_pb2.ExportedServiceList(Services=sorted(current)))
        await self._send(
            ReplicationMessage(
                response=ReplicationMessage.Response(
                    Nonce=self._next_nonce(),
                    ResourceURL=TYPE_URL_EXPORTED_SERVICE_LIST,
                    ResourceID=EXPORTED_SERVICE_LIST_RESOURCE_ID,
                    Resource=payload,
                    operation=OP_UPSERT,
                )
            ),
            "exported-service list",
            services=sorted(current),
        )

    def _current_exports(self) -> dict[str, tuple[CheckServiceNode, ...]] | None:
        """What the peer should hold, or None when the local row is inactive (export nothing)."""
        store = self.env.store
        row = store.peering_read_by_id(self.params.local_id)
        if row is None or not row.is_active():
            return None
        exported = store.exported_services_for_peer(row.name, partition=row.partition)
        found = store.local_instances_by_service(exported, partition=row.partition)
        return {service: tuple(instances) for service, instances in found.items() if instances}

    async def _publish(self) -> None:
        current = self._current_exports()
        if current is None:
            return
        names = sorted(set(current) | set(self._sent))
        for service in names:
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
            response = ReplicationMessage.Response(
                Nonce=self._next_nonce(),
                ResourceURL=TYPE_URL_EXPORTED_SERVICE,
                ResourceID=service,
                operation=OP_UPSERT,
            )
            response.Resource.Pack(instances_to_pb(new or ()))
            await self._send(ReplicationMessage(response=response),
                             "delete" if new is None else "upsert", service=service)

    async def _watch_exports(self, out: trio.MemorySendChannel[_Event]) -> None:
        store = self.env.store
        tables = (CATALOG, EXPORTS, PEERINGS)
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

    # ---- sending ---------------------------------------------------------------------------

    async def _send_bounded(self, msg: ReplicationMessage) -> None:
        """``stream.send``, given up (``_SendStalled``) once the stream made no progress for
        the heartbeat timeout: nothing came from the peer and no send completed. A send waits
        when the peer stops reading (gRPC's flow control; the memory network's send window),
        and must not wait for ever; a long burst of sends that the peer does read goes on."""
        progress = max(self._last_received, self._last_sent)
        with trio.move_on_at(progress + self.env.heartbeat_timeout) as scope:
            await self.stream.send(msg)
        if scope.cancelled_caught:
            raise _SendStalled()
        self._last_sent = trio.current_time()

    async def _send_raw(self, msg: ReplicationMessage) -> None:
        await self._send_bounded(msg)

    async def _send(self, msg: ReplicationMessage, what: str, **fields: object) -> None:
        """Send; a failure is recorded (LastSendError) and otherwise ignored: the receiver
        reports how the stream ended, and that ends the handler. A send stalled past the
        heartbeat timeout raises ``_SendStalled`` (the handler ends the stream)."""
        try:
            await self._send_bounded(msg)
        except ClosedForSending:
            raise
        except (EndOfStream, StreamFailed) as exc:
            text = _describe_end(exc)
            self.env.tracker.track_send_error(self.params.local_id, text)
            self.log.debug("send failed", what=what, error=text, **fields)
