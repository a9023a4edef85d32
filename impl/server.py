"""One peerkit server: a cluster's state store, leadership and RPC surface over a transport.

One job: compose the store, the leader routines (``.leader``) and the stream handler
(``.stream``) into ``PeeringServer`` and serve, over any ``Transport`` (in-memory or gRPC):

* ``PeeringService``: GenerateToken, Establish, PeeringRead, PeeringList, PeeringDelete,
  TrustBundleRead, TrustBundleListByService (upstream behaviour, peering-protocol.md §1.6, §2);
* ``PeerStreamService``: StreamResources (the acceptor's side: first-message validation, then
  the stream handler, then the drain) and ExchangeSecret;
* peerkit's ``AdminService``: register / deregister service instances, export / unexport,
  ReadCatalog, Status; and its optional ``TestHookService`` (ResetStream, Failover,
  HoldDeletion, HoldReceive, DeletionRoutines), which
  answers FailedPrecondition ``ERR_TEST_HOOKS_OFF`` unless ``test_hooks=True``.

Leadership is explicit: ``become_leader()`` starts a new term (fresh tracker, routines);
``lose_leadership()`` ends it (routines, dialers and accepted streams stop; the store survives).
Writes need the leader (FailedPrecondition ``ERR_NOT_LEADER`` otherwise); reads are answered
from the local store. Every input is validated before anything changes (InvalidArgument).

The acceptor's first-message checks, in order (mirroring ``_classify_open`` of the model):
not leader → FailedPrecondition ``ERR_FOLLOWER``; the first receive fails → that error; not Open
→ InvalidArgument ``ERR_FIRST_NOT_OPEN``; empty PeerID → ``ERR_OPEN_NO_PEER_ID``; unknown →
InvalidArgument ``ERR_UNKNOWN_PEER``; TERMINATED → Aborted ``ERR_MARKED_DELETED``; marked for
deletion → send Terminated, then Aborted ``ERR_MARKED_DELETED`` (bug ``dial-deleted``:
accepted); wrong stream secret → PermissionDenied ``ERR_OPEN_BAD_SECRET``; a dialer row →
InvalidArgument ``ERR_WRONG_END``; a connected stream already → Unknown (upstream returns a plain
Go error) ``ERR_REGISTER_STREAM``. Texts, codes and order are upstream's (``StreamResources``
and ``realHandleStream`` in agent/grpc-external/services/peerstream/stream_resources.go). The
inactive checks come before the secret check because an inactive row holds no secrets. The
FailedPrecondition carries the message only: the transport has no status details, so there is
no LeaderAddress detail.

May import: the standard library, trio, protobuf, ``peerkit.proto``, ``peerkit.model`` and the
sibling modules of ``peerkit.impl``.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Any, Final, TypeVar

import trio
from google.protobuf.message import Message

from peerkit.model.tables import ACCEPTOR
from peerkit.model.vocabulary import (
    ERR_BAD_ESTABLISHMENT_SECRET,
    ERR_FIRST_NOT_OPEN,
    ERR_FOLLOWER,
    ERR_HEARTBEAT_TIMEOUT,
    ERR_MARKED_DELETED,
    ERR_NOT_LEADER_ANYMORE,
    ERR_OPEN_BAD_SECRET,
    ERR_OPEN_NO_PEER_ID,
    ERR_UNKNOWN_PEER,
    ERR_WRITE_MARKED,
    ERR_WRONG_END,
    PeeringState,
    validate_bugs,
)
from peerkit.proto import admin_pb2, peering_pb2, peerstream_pb2

from .codec import (
    ADMIN_METHODS,
    MAX_TOKEN_ADDRESSES,
    METHOD_EXCHANGE_SECRET,
    METHOD_STREAM_RESOURCES,
    PEERING_METHODS,
    TEST_HOOK_METHODS,
    PeeringToken,
    TokenError,
    address_problem,
    bundle_to_pb,
    csn_to_pb,
    decode_token,
    encode_token,
    peering_to_pb,
    to_timestamp,
)
from .leader import (
    MAX_BATCH_BYTES,
    SPIN_LIMIT,
    LeaderConfig,
    Leadership,
    NotLeaderAnymore,
    peer_tls,
)
from .logs import EventLog
from .mutants import validate_mutants
from .ratelimit import DELETION_BURST, DELETION_RATE, RETRY_BUCKET_SIZE
from .store import (
    DEFAULT_PARTITION,
    PEERINGS,
    TRUST_BUNDLES,
    Check,
    CheckServiceNode,
    Node,
    Peering,
    Service,
    StateStore,
    StoreDump,
    StoreError,
    StoreFailure,
)
from .stream import (
    BAD_REQUEST,
    HEARTBEAT,
    HEARTBEAT_INTERVAL,
    HEARTBEAT_TIMEOUT,
    REGISTER_FAILED,
    Ending,
    ReplicationMessage,
    ReplicationStream,
    StreamParams,
    StreamSession,
    deserialize,
    serialize,
)
from .tracker import StreamStatus
from .transport import (
    AbortStream,
    EndOfStream,
    Handler,
    ServerTLS,
    StatusCode,
    StreamFailed,
    StreamMethod,
    Transport,
    TransportError,
    UnaryMethod,
)

__all__ = ["ERR_NOT_LEADER", "ERR_TEST_HOOKS_OFF", "PeeringServer", "PeeringTLS", "read_state"]

# peerkit's own error texts (the reference records no upstream wording for these)
ERR_NOT_LEADER: Final = "this server is not the leader"
# upstream validatePeer (agent/rpc/peering/service.go), verbatim; Go's %q of a peer name (a DNS
# label) is the name in double quotes
ERR_EXPECTING_DIAL: Final = ('cannot create peering with name: "{name}"; there is an existing '
                             'peering expecting to be dialed')
ERR_ALREADY_DIALING: Final = ('cannot create peering with name: "{name}"; there is already an '
                              'established peering')
# upstream's retryExchange (agent/rpc/peering/service.go), verbatim
ERR_NEW_TOKEN_NEEDED: Final = "a new peering token must be generated: {message}"
ERR_STORE_FAILED: Final = "the state store failed"
ERR_TEST_HOOKS_OFF: Final = ("test hooks are disabled on this server (peerkit serve --test-hooks "
                             "enables them)")

# Names of nodes, services, service IDs, partitions and of this server: 1-63 letters, digits,
# '.', '_' or '-', starting with a letter or digit. Matched with fullmatch: a pattern ending in
# "$" also matches before a trailing newline, which let "n\n" in as a name distinct from "n".
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
# Peer names. Upstream (agent/rpc/peering/service.go: GenerateToken and Establish) refuses a
# PeerName that is not a DNS label (dns.IsValidLabel, an RFC 1123 label: letters, digits and
# hyphens, starting and ending with a letter or digit, at most 63 characters). peerkit follows
# that and also requires lowercase, because DNS names are case-insensitive: "DC1" and "dc1"
# must not name two peerings. (Written from knowledge of upstream, not checked against its
# source here.) New peerings (GenerateToken, Establish) and new exports must use such a name;
# lookups (read, delete, unexport) accept any _NAME_RE name, so rows stored under an older,
# looser rule can still be read and deleted.
_PEER_NAME_RE: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# Meta on GenerateToken / Establish: upstream's structs.ValidateMetadata bounds (64 pairs, keys
# of at most 128 of [A-Za-z0-9_-], values of at most 512 characters).
_META_KEY_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")
MAX_META_PAIRS: Final = 64
MAX_META_VALUE_CHARS: Final = 512
MAX_TAGS: Final = 64
MAX_TAG_CHARS: Final = 255
_EXCHANGE_TIMEOUT: Final = 10.0
# Past leadership terms kept for diagnostics (``PeeringServer.terms``): the newest TERMS_KEPT.
# A stopped term still holds its tracker, routines' histories and dial loops, so a server that
# gains and loses leadership for months must not keep them all; upstream keeps none (a new term
# replaces the old routines), tests look at the last two or three.
TERMS_KEPT: Final = 16

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)


def _invalid(message: str) -> AbortStream:
    return AbortStream(StatusCode.INVALID_ARGUMENT, message)


def _matching(value: str, what: str, pattern: re.Pattern[str], rule: str) -> str:
    """``value`` if it is present and matches ``pattern`` whole; INVALID_ARGUMENT otherwise."""
    if not value:
        raise _invalid(f"{what} is required")
    if not pattern.fullmatch(value):
        raise _invalid(f"{what} {value[:80]!r} is not valid: {rule}")
    return value


def _name(value: str, what: str) -> str:
    return _matching(value, what, _NAME_RE, "use 1-63 letters, digits, '.', '_' or '-', "
                     "starting with a letter or digit")


def _clip(text: str, limit: int = 80) -> str:
    """A client-chosen value quoted back in an error: at most ``limit`` characters (a 200 KB
    PeerID echoed into the status made the status itself too large: RESOURCE_EXHAUSTED)."""
    return text if len(text) <= limit else text[:limit] + "..."


def _peer_name(value: str, what: str) -> str:
    """A name for a new peering: a lowercase DNS label (see ``_PEER_NAME_RE``)."""
    return _matching(value, what, _PEER_NAME_RE, "a peer name is a DNS label of 1-63 "
                     "lowercase letters, digits or '-', starting and ending with a letter or "
                     "digit")


def _meta(meta: Mapping[str, str]) -> dict[str, str]:
    if len(meta) > MAX_META_PAIRS:
        raise _invalid(f"Meta has {len(meta)} pairs; at most {MAX_META_PAIRS} are allowed")
    for key, value in meta.items():
        if not _META_KEY_RE.fullmatch(key):
            raise _invalid(f"Meta key {key[:80]!r} is not valid: use 1-128 letters, digits, "
                           "'_' or '-'")
        if len(value) > MAX_META_VALUE_CHARS:
            raise _invalid(f"Meta value for {key!r} is longer than {MAX_META_VALUE_CHARS} "
                           "characters")
        if not value.isprintable():
            raise _invalid(f"Meta value for {key!r} holds control characters")
    return dict(meta)


def _partition(value: str) -> str:
    return _name(value, "Partition") if value else DEFAULT_PARTITION


def _address(value: str, what: str) -> str:
    problem = address_problem(value)
    if problem is not None:
        raise _invalid(f"{what} {value[:80]!r} is not a host:port address: it {problem}")
    return value


@dataclass(frozen=True)
class PeeringTLS:
    """A server's TLS: its own identity (certificate chain and key), the CA PEMs that signed it
    and the name its certificate carries. GenerateToken puts ``ca_pems`` and ``server_name``
    into tokens (upstream ``GenerateToken``: ``CA`` and ``ServerName`` from
    ``GetTLSMaterials``); the listener accepts TLS only."""

    identity: ServerTLS
    ca_pems: tuple[str, ...]
    server_name: str

    def __post_init__(self) -> None:
        if not self.ca_pems:
            raise ValueError("PeeringTLS needs the CA that signed the server's certificate")


def read_state(row: Peering, status: StreamStatus | None) -> PeeringState:
    """The state PeeringRead reports (``VIEW_RULES`` of the model): ACTIVE / FAILING come from
    the tracker for an active row; an inactive row reports its stored state."""
    if not row.is_active() or status is None:
        return row.state
    return PeeringState.ACTIVE if status.connected else PeeringState.FAILING


class PeeringServer:
    """A peerkit server (one cluster's leader or follower).

    ``advertise_addr`` goes into peering tokens; None means "the address ``serve`` bound".
    Timers use trio's clock (virtual under a MockClock); ``wall_clock`` stamps DeletedAt and
    converts tracker times for Status. ``bugs`` switches on historical bugs by name
    (``peerkit.model.vocabulary.BUGS``); ``mutants`` switches on mistakes of the mutation
    catalog (``peerkit.impl.mutants.IMPL_MUTANTS``); none is on by default. ``tls`` makes the
    server listen with TLS only and put its CA and server name into its tokens; None: plaintext.
    """

    def __init__(
        self,
        name: str,
        store: StateStore,
        transport: Transport,
        advertise_addr: str | None = None,
        *,
        bugs: Iterable[str] = frozenset(),
        mutants: Iterable[str] = frozenset(),
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        heartbeat_timeout: float = HEARTBEAT_TIMEOUT,
        deletion_batch_bytes: int = MAX_BATCH_BYTES,
        spin_limit: int = SPIN_LIMIT,
        deletion_burst: int = DELETION_BURST,
        deletion_rate: float = DELETION_RATE,
        sync_burst: int = RETRY_BUCKET_SIZE,
        wall_clock: Callable[[], float] = time.time,
        secret_factory: Callable[[], str] | None = None,
        log: EventLog | None = None,
        tls: PeeringTLS | None = None,
        test_hooks: bool = False,
    ) -> None:
        problem = self.name_problem(name)
        if problem is not None:
            raise ValueError(problem)
        if advertise_addr is not None:
            host, sep, port = advertise_addr.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"advertise_addr must be host:port, got {advertise_addr!r}")
        self.name = name
        self.store = store
        self.transport = transport
        self.tls = tls
        self.test_hooks = test_hooks  # TestHookService answers only when True (off by default)
        self._advertise = advertise_addr
        self.bugs = validate_bugs(bugs)
        self.mutants = validate_mutants(mutants)
        if self.mutants:
            store.mutants = self.mutants  # the import guard's switches live in the store
        self.wall_clock = wall_clock
        self._secret: Callable[[], str] = secret_factory or (lambda: secrets.token_hex(16))
        self.log = log or EventLog("peerkit.server", {"server": name})
        self.trust_domain = f"{name}.peerkit.local"
        self.root_pems = (_fake_root_pem(name),)
        self._cfg = LeaderConfig(
            name=name,
            store=store,
            transport=transport,
            log=self.log,
            trust_domain=self.trust_domain,
            root_pems=self.root_pems,
            bugs=self.bugs,
            mutants=self.mutants,
            heartbeat_interval=heartbeat_interval,
            heartbeat_timeout=heartbeat_timeout,
            deletion_batch_bytes=deletion_batch_bytes,
            spin_limit=spin_limit,
            deletion_burst=deletion_burst,
            deletion_rate=deletion_rate,
            sync_burst=sync_burst,
        )
        self._nursery: trio.Nursery | None = None
        self._leadership: Leadership | None = None
        self._terms: deque[Leadership] = deque(maxlen=TERMS_KEPT)
        self._term_count = 0  # terms ever started: the next term's number is this + 1
        self._leadership_changed = trio.Event()
        self.leadership_version = 0  # incremented whenever leadership is gained or lost
        self.address: str | None = None
        self._wall_offset = 0.0

    @staticmethod
    def name_problem(name: object) -> str | None:
        """Why ``name`` cannot name a server (None if it can): the rule of node and service
        names (1-63 letters, digits, '.', '_' or '-', starting with a letter or digit)."""
        if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
            return (f"server name {name!r} is not valid: use 1-63 letters, digits, '.', '_' "
                    "or '-', starting with a letter or digit")
        return None

    # =========================================================================================
    # running
    # =========================================================================================

    @property
    def advertise_addr(self) -> str:
        addr = self._advertise or self.address
        if addr is None:
            raise RuntimeError("the server is not serving yet")
        return addr

    @asynccontextmanager
    async def serve(
        self, address: str, *, leader: bool = True, grace: float = 0.0
    ) -> AsyncIterator[PeeringServer]:
        """Listen on ``address`` and run until the block ends (then leadership is dropped, the
        listener stops after ``grace`` seconds and every task of this server ends)."""
        if self._nursery is not None:
            raise RuntimeError("this server is already serving")
        self._wall_offset = self.wall_clock() - trio.current_time()
        body_error: BaseException | None = None
        listened = False
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                try:
                    identity = None if self.tls is None else self.tls.identity
                    async with self.transport.serve(address, self.handlers(), grace=grace,
                                                    tls=identity) as srv:
                        listened = True
                        self.address = srv.address
                        self.log.info("serving", address=srv.address,
                                      advertise=self.advertise_addr, bugs=sorted(self.bugs),
                                      tls=self.tls is not None)
                        if leader:
                            self.become_leader()
                        try:
                            yield self
                        finally:
                            self.lose_leadership()
                except BaseException as exc:
                    body_error = exc
                    raise
                finally:
                    nursery.cancel_scope.cancel()
                    self._nursery = None
                    if listened:  # a server that never listened logs no "stopped"
                        self.log.info("stopped")
        except BaseExceptionGroup as group:
            # the nursery wrapped our own body's exception: re-raise it bare
            if body_error is not None and list(group.exceptions) == [body_error]:
                raise body_error from None
            raise

    @property
    def is_leader(self) -> bool:
        return self._leadership is not None and not self._leadership.stopped

    @property
    def leadership(self) -> Leadership | None:
        """The current term, or None on a follower."""
        return self._leadership if self.is_leader else None

    @property
    def terms(self) -> list[Leadership]:
        """The newest TERMS_KEPT terms this server has led, oldest first (for tests and
        diagnostics)."""
        return list(self._terms)

    def become_leader(self) -> Leadership:
        """Start a new leadership term (no-op if already leader); returns the current term."""
        if self._nursery is None:
            raise RuntimeError("become_leader() needs a serving server")
        if self._leadership is not None and not self._leadership.stopped:
            return self._leadership
        self._term_count += 1
        term = Leadership(self._cfg, self._term_count)
        if "failover-keeps-tracker" in self.mutants and self._terms:
            # mutant: the new term takes over the previous term's stream tracker
            term.tracker = term.stream_env.tracker = self._terms[-1].tracker
        term.log.info("leadership established; starting leader routines")
        self._leadership = term
        self._terms.append(term)
        self._nursery.start_soon(term.run, self._nursery)
        self._notify_leadership()
        return term

    def lose_leadership(self) -> None:
        """End the current term: routines, dialers and accepted streams stop; the tracker is
        dropped; the store stays. No-op on a follower."""
        term = self._leadership
        self._leadership = None
        if term is not None:
            term.stop()
            self._notify_leadership()

    def _notify_leadership(self) -> None:
        self.leadership_version += 1
        event, self._leadership_changed = self._leadership_changed, trio.Event()
        event.set()

    async def wait_for_leadership_change(self, after: int) -> int:
        """Wait until ``leadership_version`` exceeds ``after``; return it (for observers)."""
        while self.leadership_version <= after:
            await self._leadership_changed.wait()
        return self.leadership_version

    def _require_leader(self) -> Leadership:
        term = self.leadership
        if term is None:
            raise AbortStream(StatusCode.FAILED_PRECONDITION, ERR_NOT_LEADER)
        return term

    def _status(self, peering_id: str) -> StreamStatus | None:
        term = self.leadership
        return None if term is None else term.tracker.stream_status(peering_id)

    # =========================================================================================
    # handler table
    # =========================================================================================

    def handlers(self) -> list[Handler]:
        p, a = PEERING_METHODS, ADMIN_METHODS
        return [
            StreamMethod(METHOD_STREAM_RESOURCES, self._stream_resources, deserialize, serialize),
            _unary(METHOD_EXCHANGE_SECRET, peerstream_pb2.ExchangeSecretRequest,
                   self.exchange_secret),
            _unary(p["GenerateToken"], peering_pb2.GenerateTokenRequest, self.generate_token),
            _unary(p["Establish"], peering_pb2.EstablishRequest, self.establish),
            _unary(p["PeeringRead"], peering_pb2.PeeringReadRequest, self.peering_read),
            _unary(p["PeeringList"], peering_pb2.PeeringListRequest, self.peering_list),
            _unary(p["PeeringDelete"], peering_pb2.PeeringDeleteRequest, self.peering_delete),
            _unary(p["TrustBundleRead"], peering_pb2.TrustBundleReadRequest,
                   self.trust_bundle_read),
            _unary(p["TrustBundleListByService"], peering_pb2.TrustBundleListByServiceRequest,
                   self.trust_bundle_list_by_service),
            _unary(a["RegisterService"], admin_pb2.RegisterServiceRequest, self.register_service),
            _unary(a["DeregisterService"], admin_pb2.DeregisterServiceRequest,
                   self.deregister_service),
            _unary(a["ExportService"], admin_pb2.ExportServiceRequest, self.export_service),
            _unary(a["UnexportService"], admin_pb2.UnexportServiceRequest,
                   self.unexport_service),
            _unary(a["ReadCatalog"], admin_pb2.ReadCatalogRequest, self.read_catalog),
            _unary(a["Status"], admin_pb2.StatusRequest, self.status),
            _unary(TEST_HOOK_METHODS["ResetStream"], admin_pb2.ResetStreamRequest,
                   self.reset_stream),
            _unary(TEST_HOOK_METHODS["Failover"], admin_pb2.FailoverRequest, self.failover),
            _unary(TEST_HOOK_METHODS["HoldDeletion"], admin_pb2.HoldDeletionRequest,
                   self.hold_deletion),
            _unary(TEST_HOOK_METHODS["HoldReceive"], admin_pb2.HoldReceiveRequest,
                   self.hold_receive),
            _unary(TEST_HOOK_METHODS["DeletionRoutines"], admin_pb2.DeletionRoutinesRequest,
                   self.deletion_routines),
        ]

    # =========================================================================================
    # PeeringService
    # =========================================================================================

    async def generate_token(
        self, req: peering_pb2.GenerateTokenRequest
    ) -> peering_pb2.GenerateTokenResponse:
        name = _peer_name(req.PeerName, "PeerName")
        partition = _partition(req.Partition)
        meta = _meta(req.Meta)
        if len(req.ServerExternalAddresses) > MAX_TOKEN_ADDRESSES:
            raise _invalid(f"ServerExternalAddresses has {len(req.ServerExternalAddresses)} "
                           f"entries; at most {MAX_TOKEN_ADDRESSES} are allowed")
        addresses = [_address(a, "ServerExternalAddresses entry")
                     for a in req.ServerExternalAddresses] or [self.advertise_addr]
        self._require_leader()
        existing = self.store.peering_read(name, partition)
        if existing is None and "refuse:acceptor-none-generatetoken" in self.mutants:
            raise AbortStream(StatusCode.FAILED_PRECONDITION, "mutant: refused")  # mutant
        if existing is not None:
            if not existing.is_active():
                raise AbortStream(StatusCode.FAILED_PRECONDITION, ERR_WRITE_MARKED)
            if existing.should_dial():
                raise AbortStream(StatusCode.FAILED_PRECONDITION,
                                  ERR_ALREADY_DIALING.format(name=name))
        secret = self._secret()
        row = self.store.peering_write(
            Peering(
                name=name,
                partition=partition,
                meta=meta,
                establishment_secret=secret,
                stream_secret=None if existing is None else existing.stream_secret,
            )
        )
        self.log.info("generated peering token", peer_name=name, peering_id=row.id,
                      reused=existing is not None)
        token = PeeringToken(
            server_addresses=tuple(addresses),
            server_name=self.server_name,
            peer_id=row.id,
            establishment_secret=secret,
            ca=None if self.tls is None else self.tls.ca_pems,
        )
        return peering_pb2.GenerateTokenResponse(PeeringToken=encode_token(token))

    async def establish(self, req: peering_pb2.EstablishRequest) -> peering_pb2.EstablishResponse:
        name = _peer_name(req.PeerName, "PeerName")
        partition = _partition(req.Partition)
        meta = _meta(req.Meta)
        try:
            token = decode_token(req.PeeringToken)
        except TokenError as exc:
            raise _invalid(str(exc)) from None
        self._require_leader()
        before = self._check_dialer_name(name, partition)
        if before is None and "refuse:dialer-none-establish" in self.mutants:
            raise AbortStream(StatusCode.FAILED_PRECONDITION, "mutant: refused")  # mutant
        stream_secret = await self._exchange_with_peer(token)
        self._require_leader()
        existing = self._check_dialer_name(name, partition)  # the exchange awaited: look again
        addresses = token.server_addresses
        if existing is not None:
            # re-establish (upstream Establish, agent/rpc/peering/service.go): the same row
            # (same ID) takes the new PeerID, server name and stream secret. A connected stream
            # is left alone, and upstream then keeps the row's addresses, taking them to be the
            # current ones; the sync pass uses the new data when the stream next ends.
            status = self._status(existing.id)
            if status is not None and status.connected:
                addresses = existing.peer_server_addresses
        row = self.store.peering_write(
            Peering(
                name=name,
                partition=partition,
                meta=meta,
                peer_id=token.peer_id,
                peer_ca_pems=token.ca or (),
                peer_server_name=token.server_name,
                peer_server_addresses=addresses,
                stream_secret=stream_secret,
            )
        )
        self.log.info("established peering", peer_name=name, peering_id=row.id,
                      peer_id=token.peer_id, addresses=list(addresses),
                      reestablished=existing is not None, tls=bool(token.ca))
        return peering_pb2.EstablishResponse()

    @property
    def server_name(self) -> str:
        """The name tokens carry as ServerName: the TLS certificate's name, or (plaintext,
        where nothing verifies it) ``server.<name>.peerkit``."""
        return self.tls.server_name if self.tls is not None else f"server.{self.name}.peerkit"

    def _check_dialer_name(self, name: str, partition: str) -> Peering | None:
        """The row Establish would rewrite (None: a new one), or the RPC's refusal."""
        existing = self.store.peering_read(name, partition)
        if existing is None:
            return None
        if not existing.is_active():
            raise AbortStream(StatusCode.FAILED_PRECONDITION, ERR_WRITE_MARKED)
        if not existing.should_dial():
            # upstream validatePeer(existing, true), verbatim
            raise AbortStream(StatusCode.FAILED_PRECONDITION, ERR_EXPECTING_DIAL.format(name=name))
        return existing

    async def _exchange_with_peer(self, token: PeeringToken) -> str:
        """ExchangeSecret against the token's servers, in order; the first answer wins. Dialed
        as the dialer will dial the stream: TLS with the token's CA and ServerName, or plaintext
        when it carries no CA (upstream ``Establish``: ``peering.TLSDialOption()``)."""
        request = peerstream_pb2.ExchangeSecretRequest(
            PeerID=token.peer_id, EstablishmentSecret=token.establishment_secret
        )
        tls = peer_tls(token.ca or (), token.server_name)
        failures: list[str] = []
        for address in token.server_addresses:
            try:
                async with self.transport.connect(address, tls=tls) as channel:
                    response = await channel.unary(
                        METHOD_EXCHANGE_SECRET,
                        request,
                        peerstream_pb2.ExchangeSecretRequest.SerializeToString,
                        peerstream_pb2.ExchangeSecretResponse.FromString,
                        timeout=_EXCHANGE_TIMEOUT,
                    )
            except StreamFailed as exc:
                # upstream's retryExchange (agent/rpc/peering/service.go) gives up only on
                # PermissionDenied: the secret is wrong or spent, and no address will take it
                if exc.code is StatusCode.PERMISSION_DENIED:
                    raise AbortStream(StatusCode.PERMISSION_DENIED,
                                      ERR_NEW_TOKEN_NEEDED.format(message=exc.message)) from None
                failures.append(f"{address}: {exc}")
                continue
            if not response.StreamSecret:
                raise AbortStream(StatusCode.INTERNAL, "peer returned an empty stream secret")
            return response.StreamSecret
        # a plaintext dial to a TLS-only server fails as "unavailable" like a dead one: say so
        hint = ("" if tls is not None else " (the token carries no CA, so the peer was dialed "
                "without TLS; a peer that requires TLS refuses that)")
        raise AbortStream(StatusCode.UNAVAILABLE,
                          "failed to exchange the establishment secret: " + "; ".join(failures)
                          + hint)

    async def peering_read(
        self, req: peering_pb2.PeeringReadRequest
    ) -> peering_pb2.PeeringReadResponse:
        name = _name(req.Name, "Name")
        partition = _partition(req.Partition)
        row = self.store.peering_read(name, partition)
        if row is None:
            return peering_pb2.PeeringReadResponse()
        return peering_pb2.PeeringReadResponse(Peering=self._peering_view(row))

    def _peering_view(self, row: Peering) -> peering_pb2.Peering:
        return peering_to_pb(
            row,
            read_state(row, self._status(row.id)),
            imported_services=len(self.store.imported_service_names(row.name, row.partition)),
            exported_services=len(
                self.store.exported_services_for_peer(row.name, partition=row.partition)
            ),
        )

    async def peering_list(
        self, req: peering_pb2.PeeringListRequest
    ) -> peering_pb2.PeeringListResponse:
        partition = _partition(req.Partition)
        rows = self.store.peering_list(partition)
        return peering_pb2.PeeringListResponse(
            Peerings=[self._peering_view(r) for r in rows],
            Index=self.store.table_index(PEERINGS),
        )

    async def peering_delete(
        self, req: peering_pb2.PeeringDeleteRequest
    ) -> peering_pb2.PeeringDeleteResponse:
        name = _name(req.Name, "Name")
        partition = _partition(req.Partition)
        self._require_leader()
        row = self.store.peering_read(name, partition)
        if row is None:
            return peering_pb2.PeeringDeleteResponse()  # nothing to do: success
        if "terminated-undeletable" in self.bugs and not row.is_active():
            self.log.info("peering is not active; nothing to delete", peer_name=name, bug=True)
            return peering_pb2.PeeringDeleteResponse()
        if _refused_delete(row, self.mutants):
            return peering_pb2.PeeringDeleteResponse()  # mutant: the transition is refused
        marked = self.store.peering_mark_deleted(name, partition, self.wall_clock())
        if marked is not None:
            self.log.info("marked peering for deletion", peer_name=name, peering_id=marked.id,
                          was=row.state.name)
        return peering_pb2.PeeringDeleteResponse()

    async def trust_bundle_read(
        self, req: peering_pb2.TrustBundleReadRequest
    ) -> peering_pb2.TrustBundleReadResponse:
        name = _name(req.Name, "Name")
        partition = _partition(req.Partition)
        bundle = self.store.trust_bundle_read(name, partition)
        out = peering_pb2.TrustBundleReadResponse(Index=self.store.table_index(TRUST_BUNDLES))
        if bundle is not None:
            out.Bundle.CopyFrom(bundle_to_pb(bundle))
        return out

    async def trust_bundle_list_by_service(
        self, req: peering_pb2.TrustBundleListByServiceRequest
    ) -> peering_pb2.TrustBundleListByServiceResponse:
        service = _name(req.ServiceName, "ServiceName")
        partition = _partition(req.Partition)
        bundles = []
        for peering in self.store.peerings_for_service(service, partition=partition):
            bundle = self.store.trust_bundle_read(peering.name, peering.partition)
            if bundle is not None:
                bundles.append(bundle_to_pb(bundle))
        return peering_pb2.TrustBundleListByServiceResponse(
            Index=self.store.table_index(TRUST_BUNDLES), Bundles=bundles
        )

    # =========================================================================================
    # PeerStreamService
    # =========================================================================================

    async def exchange_secret(
        self, req: peerstream_pb2.ExchangeSecretRequest
    ) -> peerstream_pb2.ExchangeSecretResponse:
        if not req.PeerID:
            raise _invalid("PeerID is required")
        if not req.EstablishmentSecret:
            raise _invalid("EstablishmentSecret is required")
        self._require_leader()
        row = self.store.peering_read_by_id(req.PeerID)
        # Upstream (ExchangeSecret in stream_resources.go) looks up only the row's secrets: an
        # unknown PeerID, a dialer row (it holds no establishment secret) and an inactive row
        # (its secrets were deleted when it was marked or terminated: PeeringWrite in
        # agent/consul/state/peering.go) all fail like a wrong secret. PermissionDenied is also
        # the one code that makes upstream's Establish stop trying (retryExchange).
        if row is None or row.should_dial() or not row.is_active() \
                or row.establishment_secret is None or not secrets.compare_digest(
                    row.establishment_secret, req.EstablishmentSecret):
            raise AbortStream(StatusCode.PERMISSION_DENIED, ERR_BAD_ESTABLISHMENT_SECRET)
        stream_secret = self._secret()
        self.store.peering_write(replace(row, establishment_secret=None,
                                         stream_secret=stream_secret))
        self.log.info("exchanged establishment secret", peering_id=row.id, peer_name=row.name)
        return peerstream_pb2.ExchangeSecretResponse(StreamSecret=stream_secret)

    async def _stream_resources(self, stream: ReplicationStream) -> None:
        """The acceptor's StreamResources (see the module docstring for the checks)."""
        term = self.leadership
        if term is None:
            raise AbortStream(StatusCode.FAILED_PRECONDITION, ERR_FOLLOWER)
        try:
            first = await stream.receive()
        except EndOfStream:
            raise AbortStream(StatusCode.UNKNOWN, "EOF") from None
        if term.stopped:
            raise AbortStream(StatusCode.FAILED_PRECONDITION, ERR_NOT_LEADER_ANYMORE)
        try:
            row = await self._check_open(stream, first)
        except StoreFailure as exc:
            self.log.error("state store failed while checking a stream's Open", error=str(exc))
            raise AbortStream(StatusCode.UNAVAILABLE, f"{ERR_STORE_FAILED}: {exc}") from None
        log = self.log.bind(peering_id=row.id, peer_name=row.name)
        session = StreamSession(
            term.stream_env,
            StreamParams(role=ACCEPTOR, local_id=row.id, peer_name=row.name,
                         partition=row.partition),
            stream,
        )
        try:
            with term.handler_scope(), term.live_stream(row.id, stream):
                ending = await session.run()
        except NotLeaderAnymore:
            log.info("leadership lost during a stream")
            raise AbortStream(StatusCode.FAILED_PRECONDITION, ERR_NOT_LEADER_ANYMORE) from None
        self._finish_accepted(ending)

    async def _check_open(self, stream: ReplicationStream, first: ReplicationMessage) -> Peering:
        if first.WhichOneof("Payload") != "open":
            raise _invalid(ERR_FIRST_NOT_OPEN)
        peer_id = first.open.PeerID
        if not peer_id:
            raise _invalid(ERR_OPEN_NO_PEER_ID)
        row = self.store.peering_read_by_id(peer_id)
        if row is None:
            raise _invalid(ERR_UNKNOWN_PEER.format(id=_clip(peer_id)))
        if row.state is PeeringState.TERMINATED:
            if "accept-terminated-row" in self.mutants:
                return row  # mutant: accepted (a TERMINATED row holds no secret to check)
            if "terminated-row-answers-terminated" in self.mutants:  # mutant: Terminated first
                await stream.send(ReplicationMessage(terminated=ReplicationMessage.Terminated()))
            # upstream: "our peer sent the termination message", so no Terminated back
            raise AbortStream(StatusCode.ABORTED, ERR_MARKED_DELETED.format(id=peer_id))
        if not row.is_active():
            if "dial-deleted" in self.bugs:
                self.log.info("accepting a stream for a deleted peering", peering_id=peer_id,
                              bug=True)
                return row  # the bug's era had no secrets to check
            self.log.info("dial for a deleted peering: sending Terminated", peering_id=peer_id)
            try:
                if ("drop-send-terminated-only:acceptor-new-open-peering-marked-for-deletion"
                        not in self.mutants):  # the mutant, when in, sends nothing
                    await stream.send(ReplicationMessage(
                        terminated=ReplicationMessage.Terminated()))
            except TransportError as exc:
                self.log.debug("could not send Terminated", error=str(exc))
            raise AbortStream(StatusCode.ABORTED, ERR_MARKED_DELETED.format(id=peer_id))
        if row.stream_secret is None or not secrets.compare_digest(
            row.stream_secret, first.open.StreamSecretID
        ):
            raise AbortStream(StatusCode.PERMISSION_DENIED, ERR_OPEN_BAD_SECRET)
        if row.should_dial():
            raise _invalid(ERR_WRONG_END)
        return row

    @staticmethod
    def _finish_accepted(ending: Ending) -> None:
        """Turn the acceptor handler's ending into the RPC's status."""
        if ending.nil:
            return  # drained to EOF: status OK
        if ending.reason == REGISTER_FAILED:
            # upstream's realHandleStream returns a plain error here: gRPC sends Unknown
            raise AbortStream(StatusCode.UNKNOWN, ending.message)
        if ending.reason == HEARTBEAT:
            raise AbortStream(StatusCode.UNKNOWN, ERR_HEARTBEAT_TIMEOUT)
        if ending.reason == BAD_REQUEST:  # upstream returns a grpcstatus InvalidArgument
            raise AbortStream(StatusCode.INVALID_ARGUMENT, ending.message)
        if isinstance(ending.inbound, EndOfStream):
            return  # the dialer half-closed without Terminated (model: the RPC ends OK)
        if isinstance(ending.inbound, StreamFailed):
            raise ending.inbound  # the RPC has already ended with this status
        raise AbortStream(StatusCode.UNKNOWN, ending.error_text)

    # =========================================================================================
    # AdminService
    # =========================================================================================

    async def register_service(
        self, req: admin_pb2.RegisterServiceRequest
    ) -> admin_pb2.RegisterServiceResponse:
        node_name = _name(req.NodeName, "NodeName")
        service_name = _name(req.ServiceName, "ServiceName")
        service_id = _name(req.ServiceID, "ServiceID") if req.ServiceID else service_name
        if not 0 <= req.Port <= 65535:
            raise _invalid(f"Port {req.Port} is out of range")
        if len(req.Tags) > MAX_TAGS:
            raise _invalid(f"Tags has {len(req.Tags)} entries; at most {MAX_TAGS} are allowed")
        for tag in req.Tags:
            if not tag:
                raise _invalid("Tags must not contain empty strings")
            if len(tag) > MAX_TAG_CHARS or not tag.isprintable():
                raise _invalid(f"tag {tag[:80]!r} is not valid: at most {MAX_TAG_CHARS} "
                               "printable characters")
        self._require_leader()
        node = Node(name=node_name)
        service = Service(id=service_id, name=service_name, port=req.Port, tags=tuple(req.Tags),
                          node=node_name)
        check = Check(check_id=f"service:{service_id}", name=f"Service '{service_name}' check",
                      status="passing", service_id=service_id, node=node_name)
        self.store.register_service(node, service, [check])
        self.log.info("registered service", service=service_name, service_id=service_id,
                      node=node_name)
        return admin_pb2.RegisterServiceResponse(ServiceID=service_id)

    async def deregister_service(
        self, req: admin_pb2.DeregisterServiceRequest
    ) -> admin_pb2.DeregisterServiceResponse:
        if bool(req.ServiceID) == bool(req.ServiceName):
            raise _invalid("exactly one of ServiceID and ServiceName must be set")
        if req.ServiceID:
            _name(req.ServiceID, "ServiceID")
        else:
            _name(req.ServiceName, "ServiceName")
        self._require_leader()
        removed = 0
        # the local rows only (not a dump of the whole store, imports and all: issue 10)
        if req.ServiceID:
            local = [s for s in self.store.local_services() if s.id == req.ServiceID]
        else:
            local = [s for s in self.store.local_services() if s.name == req.ServiceName]
        for service in local:
            if self.store.deregister_service(service.id, node=service.node,
                                             partition=service.partition):
                removed += 1
        self.log.info("deregistered service", service_id=req.ServiceID,
                      service=req.ServiceName, removed=removed)
        return admin_pb2.DeregisterServiceResponse(Removed=removed)

    async def export_service(
        self, req: admin_pb2.ExportServiceRequest
    ) -> admin_pb2.ExportServiceResponse:
        service = _name(req.ServiceName, "ServiceName")
        peer = _peer_name(req.PeerName, "PeerName")
        self._require_leader()
        self.store.export_service(service, peer)
        self.log.info("exported service", service=service, peer_name=peer)
        return admin_pb2.ExportServiceResponse()

    async def unexport_service(
        self, req: admin_pb2.UnexportServiceRequest
    ) -> admin_pb2.UnexportServiceResponse:
        service = _name(req.ServiceName, "ServiceName")
        peer = _name(req.PeerName, "PeerName")
        self._require_leader()
        self.store.unexport_service(service, peer)
        self.log.info("unexported service", service=service, peer_name=peer)
        return admin_pb2.UnexportServiceResponse()

    async def read_catalog(
        self, req: admin_pb2.ReadCatalogRequest
    ) -> admin_pb2.ReadCatalogResponse:
        # everything, by definition: read page by page from a snapshot (SQLite), so streams
        # and other RPCs keep running while a large store is read (issue 10)
        dump = await self.store.dump_paged()
        out = admin_pb2.ReadCatalogResponse(
            LocalServices=[csn_to_pb(c) for c in _instances(dump, "")],
            Exports=[
                admin_pb2.ExportEntry(ServiceName=e.service, PeerNames=sorted(e.peers))
                for e in sorted(dump.exports, key=lambda e: (e.service, e.partition))
            ],
        )
        peers = sorted({n.peer_name for n in dump.nodes if n.peer_name}
                       | {b.peer_name for b in dump.trust_bundles})
        for peer in peers:
            entry = admin_pb2.ImportedFromPeer(
                PeerName=peer, Nodes=[csn_to_pb(c) for c in _instances(dump, peer)]
            )
            for bundle in dump.trust_bundles:
                if bundle.peer_name == peer:
                    entry.TrustBundle.CopyFrom(bundle_to_pb(bundle))
                    break
            out.Imports.append(entry)
        return out

    async def status(self, req: admin_pb2.StatusRequest) -> admin_pb2.StatusResponse:
        out = admin_pb2.StatusResponse(ServerName=self.name, IsLeader=self.is_leader)
        term = self.leadership
        if term is None:
            return out
        for peering_id, st in term.tracker.all_statuses().items():
            row = self.store.peering_read_by_id(peering_id)
            entry = admin_pb2.StreamStatus(
                PeeringID=peering_id,
                PeerName="" if row is None else row.name,
                Connected=st.connected,
                LastNackMessage=st.last_nack_message,
                LastSendErrorMessage=st.last_send_error_message,
                LastReceiveErrorMessage=st.last_receive_error_message,
            )
            for field_name, value in (
                ("DisconnectTime", st.disconnect_time),
                ("LastAck", st.last_ack),
                ("LastNack", st.last_nack),
                ("LastSendError", st.last_send_error),
                ("LastReceiveSuccess", st.last_receive_success),
                ("LastReceiveError", st.last_receive_error),
                ("LastHeartbeat", st.last_heartbeat),
            ):
                if value is not None:
                    getattr(entry, field_name).CopyFrom(to_timestamp(value + self._wall_offset))
            out.Streams.append(entry)
        return out


    # =========================================================================================
    # TestHookService (optional, off by default: anyone who can call it can cut streams and
    # depose the leader, specs/security.md)
    # =========================================================================================

    def _require_test_hooks(self) -> Leadership:
        if not self.test_hooks:
            raise AbortStream(StatusCode.FAILED_PRECONDITION, ERR_TEST_HOOKS_OFF)
        return self._require_leader()

    async def reset_stream(
        self, req: admin_pb2.ResetStreamRequest
    ) -> admin_pb2.ResetStreamResponse:
        """Reset the transport of the named peering's live streams (either end)."""
        term = self._require_test_hooks()
        name = _peer_name(req.PeerName, "PeerName")
        row = self.store.peering_read(name)
        if row is None:
            raise AbortStream(StatusCode.NOT_FOUND, f"no peering named {name!r}")
        return admin_pb2.ResetStreamResponse(Reset=term.reset_streams(row.id))

    async def failover(self, req: admin_pb2.FailoverRequest) -> admin_pb2.FailoverResponse:
        """End the leadership term and start a new one at once (the store survives)."""
        self._require_test_hooks()
        self.log.info("test hook: failover")
        self.lose_leadership()
        return admin_pb2.FailoverResponse(Term=self.become_leader().term)

    async def hold_deletion(
        self, req: admin_pb2.HoldDeletionRequest
    ) -> admin_pb2.HoldDeletionResponse:
        """Hold or release every deletion routine of this server (any term)."""
        if not self.test_hooks:
            raise AbortStream(StatusCode.FAILED_PRECONDITION, ERR_TEST_HOOKS_OFF)
        hold = self._cfg.deletion_hold
        if req.Hold:
            hold.hold()
        else:
            hold.release()
        self.log.info("test hook: deletion routines " + ("held" if req.Hold else "released"))
        return admin_pb2.HoldDeletionResponse()

    async def hold_receive(
        self, req: admin_pb2.HoldReceiveRequest
    ) -> admin_pb2.HoldReceiveResponse:
        """Hold or release the receiving of the named peering's stream handlers (any term)."""
        if not self.test_hooks:
            raise AbortStream(StatusCode.FAILED_PRECONDITION, ERR_TEST_HOOKS_OFF)
        name = _peer_name(req.PeerName, "PeerName")
        hold = self._cfg.receive_hold
        if req.Hold:
            if self.store.peering_read(name) is None:
                raise AbortStream(StatusCode.NOT_FOUND, f"no peering named {name!r}")
            hold.hold(name)
        else:
            hold.release(name)
        self.log.info("test hook: stream receiving " + ("held" if req.Hold else "released"),
                      peer=name)
        return admin_pb2.HoldReceiveResponse()

    async def deletion_routines(
        self, req: admin_pb2.DeletionRoutinesRequest
    ) -> admin_pb2.DeletionRoutinesResponse:
        """The deletion routines of the terms this server remembers (``TERMS_KEPT``), with the
        passes each began after its term ended (only bug ``deletion-no-stop`` has any)."""
        if not self.test_hooks:
            raise AbortStream(StatusCode.FAILED_PRECONDITION, ERR_TEST_HOOKS_OFF)
        out = admin_pb2.DeletionRoutinesResponse()
        for term in sorted(self.terms, key=lambda t: t.term):
            routine = term.deletion
            if routine.started:
                out.Routines.add(Term=term.term, TermEnded=term.stopped,
                                 Running=not routine.finished.is_set(),
                                 PassesAfterTermEnded=routine.stats.spins)
        return out


# =============================================================================================
# helpers
# =============================================================================================


def _unary(
    name: str, request_type: type[Req], fn: Callable[[Req], Awaitable[Any]]
) -> UnaryMethod[Req, Any]:
    """A unary handler; a store refusal becomes FailedPrecondition with the store's message."""

    async def handler(request: Req) -> Any:
        try:
            return await fn(request)
        except StoreError as exc:
            raise AbortStream(StatusCode.FAILED_PRECONDITION, exc.message) from None
        except StoreFailure as exc:
            raise AbortStream(StatusCode.UNAVAILABLE, f"{ERR_STORE_FAILED}: {exc}") from None

    def serialize(message: Any) -> bytes:
        data: bytes = message.SerializeToString()
        return data

    return UnaryMethod(name, handler, request_type.FromString, serialize)


def _refused_delete(row: Peering, mutants: frozenset[str]) -> bool:
    """Whether a mutant of the catalog refuses the delete RPC's transition for this row."""
    acceptor = not row.should_dial()
    if row.is_active():
        name = ("refuse:acceptor-pending-user-delete" if acceptor
                else "refuse:dialer-establishing-user-delete")
        return name in mutants
    name = ("refuse:acceptor-terminated-user-delete" if acceptor
            else "refuse:dialer-terminated-user-delete")
    return row.state is PeeringState.TERMINATED and name in mutants


def _instances(dump: StoreDump, peer_name: str) -> list[CheckServiceNode]:
    """Service instances (with node and checks) of local data ("") or of one peer's imports,
    sorted by service ID, then node."""
    nodes = {(n.partition, n.name): n for n in dump.nodes if n.peer_name == peer_name}
    out: list[CheckServiceNode] = []
    for s in sorted((s for s in dump.services if s.peer_name == peer_name),
                    key=lambda s: (s.id, s.node, s.partition)):
        node = nodes.get((s.partition, s.node))
        if node is None:
            continue
        checks = tuple(
            c for c in dump.checks
            if c.peer_name == peer_name and c.partition == s.partition and c.node == s.node
            and c.service_id in ("", s.id)
        )
        out.append(CheckServiceNode(node=node, service=s, checks=checks))
    return out


def _fake_root_pem(name: str) -> str:
    """A stand-in CA root for the trust bundle: peerkit runs without TLS, so the bundle only
    needs to be recognisably this cluster's."""
    body = base64.b64encode(hashlib.sha256(f"peerkit root CA {name}".encode()).digest()).decode()
    return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n"

