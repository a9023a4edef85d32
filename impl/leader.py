"""The leader's routines: stream reconciliation (sync), deferred deletion, and the dialers.

One job: everything a server runs *because it is the leader*, grouped in one ``Leadership`` per
term so that losing leadership (or shutting down) stops all of it at once and drops the stream
tracker, while the store survives (the fix of #14344/#17483):

* ``SyncRoutine`` (§4.2): each pass copies ``connected_streams()`` BEFORE listing peerings, puts
  every active peering in ``stored`` (bug ``stored-map``: only the ones this side dials), dials
  every active dialer peering that is neither connected nor mid-attempt (cancelling an old retry
  loop first), closes the doneCh of every connected stream whose peering is not in ``stored``,
  then blocks until the peering table changes; paced by ``retry_loop_backoff``.
* ``DeletionRoutine`` (§3.3–§3.4): for each inactive peering with something left to remove:
  imported nodes in Txn batches of at most 256 KiB (node + partition + peer name lengths), a
  10/s burst-10 token before each batch; then the trust bundle (token first); then a token; then
  the row unless TERMINATED. Errors (a store error anywhere in a pass included) are logged and
  retried on the next pass, after a wait of 1, 2, 4, ... up to 64 s. It blocks on a
  peering-table change when no inactive peering has anything left to remove (peerkit: a
  TERMINATED row whose data is gone counts as finished, so it does not keep the loop busy as
  upstream's does, §3.5). With bug ``deletion-no-stop`` the routine runs outside the term's
  cancel scope on a Go-style ``Context`` and never checks it: after leadership loss every token
  wait fails at once and the loop spins, counting ``spins`` (bounded by ``spin_limit``).
* ``DialLoop`` (§4.3): one per dialer peering; an address ring advanced after every attempt;
  the later upstream's dialer pacing (``retry_loop_backoff_peering``: fast after
  FailedPrecondition, capped at 64 s); each attempt re-reads the peering and stops if it is gone or
  inactive, opens ``StreamResources``, sends Open (PeerID from the token, StreamSecretID), and
  runs the stream as dialer; a nil ending stops the loop, an error retries. A peering whose
  token carried a CA is dialed over TLS, verified with that CA and the token's ServerName
  (``peer_tls``; upstream ``establishStream`` / ``Peering.TLSDialOption``); else plaintext.

May import: the standard library, trio, ``peerkit.proto``, ``peerkit.model`` and the sibling
modules ``.store``, ``.transport``, ``.tracker``, ``.ratelimit``, ``.stream``, ``.codec``,
``.logs``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Final

import trio

from peerkit.model.tables import DIALER
from peerkit.model.vocabulary import ERR_NOT_LEADER_ANYMORE, PeeringState
from peerkit.proto import peering_pb2

from .codec import METHOD_STREAM_RESOURCES
from .logs import EventLog
from .ratelimit import (
    DELETION_BURST,
    DELETION_RATE,
    LOOP_RATE_LIMIT,
    RETRY_BUCKET_SIZE,
    Context,
    ContextCancelled,
    TokenBucket,
    peering_retry_timeout,
    retry_loop_backoff,
    retry_loop_backoff_peering,
)
from .store import PEERINGS, Peering, StateStore
from .stream import (
    HEARTBEAT_INTERVAL,
    HEARTBEAT_TIMEOUT,
    ReceiveHold,
    ReplicationMessage,
    ReplicationStream,
    StreamEnv,
    StreamParams,
    StreamSession,
    deserialize,
    serialize,
)
from .tracker import StreamTracker
from .transport import ClientTLS, StreamFailed, Transport, TransportError

__all__ = [
    "MAX_BATCH_BYTES",
    "AddressRing",
    "DeletionRoutine",
    "DialError",
    "DialLoop",
    "LeaderConfig",
    "Leadership",
    "NotLeaderAnymore",
    "SyncRoutine",
    "node_batches",
    "peer_tls",
]

MAX_BATCH_BYTES: Final = 256 * 1024  # "same as ACL batch upsert size"
SPIN_LIMIT: Final = 1000  # bug deletion-no-stop: spins before the zombie gives up (tests end)
DELETION_RETRY_BASE: Final = 1.0  # seconds: the first wait after a failed deletion pass
DELETION_RETRY_MAX: Final = 64.0  # seconds: the longest wait (doubling from the base)
# How many entries each diagnostic history keeps (deletion failures and back-off waits, streams
# torn down by the sync routine, a dial loop's attempts): the newest, in a ring buffer. Upstream
# keeps no such history (it only logs), so there is no upstream limit to copy; 100 is enough to
# see a pattern (tests look at a handful) and keeps a leader that runs for months at a few KiB
# per routine instead of growing with every failure, retry and teardown.
HISTORY_LIMIT: Final = 100


class DialError(Exception):
    """A dial attempt that ended with an error; the retry loop tries again. ``code`` is the
    status code name the attempt ended with, if it ended with a status (it paces the retry)."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class NotLeaderAnymore(Exception):
    """The leadership a handler ran under is gone."""

    def __init__(self) -> None:
        super().__init__(ERR_NOT_LEADER_ANYMORE)


class DeletionHold:
    """The test hook HoldDeletion: while held, every deletion routine of the server (of any
    term) waits before its next step. A scheduling choice, not a fault: the model's deletion
    steps may come arbitrarily late, so a held routine is one of the model's interleavings."""

    def __init__(self) -> None:
        self._released = trio.Event()
        self._released.set()

    @property
    def held(self) -> bool:
        return not self._released.is_set()

    def hold(self) -> None:
        if not self.held:
            self._released = trio.Event()

    def release(self) -> None:
        self._released.set()

    async def wait(self) -> None:
        await self._released.wait()


@dataclass
class LeaderConfig:
    """What every term of a server's leadership shares."""

    name: str
    store: StateStore
    transport: Transport
    log: EventLog
    trust_domain: str
    root_pems: tuple[str, ...]
    bugs: frozenset[str] = frozenset()
    #: mistakes of the mutation catalog switched on (peerkit.impl.mutants); none by default
    mutants: frozenset[str] = frozenset()
    heartbeat_interval: float = HEARTBEAT_INTERVAL
    heartbeat_timeout: float = HEARTBEAT_TIMEOUT
    deletion_batch_bytes: int = MAX_BATCH_BYTES
    spin_limit: int = SPIN_LIMIT
    #: the deletion limiter's burst (upstream: 10); a test may lower it so that a deletion
    #: takes virtual time from its first step (peerkit.conformance uses 1)
    deletion_burst: int = DELETION_BURST
    #: the deletion limiter's rate per second (upstream: 10)
    deletion_rate: float = DELETION_RATE
    #: the sync routine's pacing burst (upstream: 5); a test may lower it so that a pass
    #: triggered by a peering-table change waits for the 0.2/s limiter
    sync_burst: int = RETRY_BUCKET_SIZE
    #: the test hook HoldDeletion's gate, shared by every term
    deletion_hold: DeletionHold = field(default_factory=DeletionHold)
    #: the test hook HoldReceive's holds, shared by every term
    receive_hold: ReceiveHold = field(default_factory=ReceiveHold)


# =============================================================================================
# One term of leadership
# =============================================================================================


class Leadership:
    """The tracker and routines of one leadership term; ``stop()`` ends them all."""

    def __init__(self, cfg: LeaderConfig, term: int) -> None:
        self.cfg = cfg
        self.term = term
        self.log = cfg.log.bind(term=term)
        self.tracker = StreamTracker()
        self.stream_env = StreamEnv(
            store=cfg.store,
            tracker=self.tracker,
            log=cfg.log.child("stream", term=term),
            trust_domain=cfg.trust_domain,
            root_pems=cfg.root_pems,
            bugs=cfg.bugs,
            mutants=cfg.mutants,
            heartbeat_interval=cfg.heartbeat_interval,
            heartbeat_timeout=cfg.heartbeat_timeout,
            receive_hold=cfg.receive_hold,
        )
        self.ctx = Context()  # only the buggy deletion routine looks at it
        self.stopped = False
        self._scope = trio.CancelScope()
        self._handler_scopes: set[trio.CancelScope] = set()
        self._nursery: trio.Nursery | None = None
        self.dialers: dict[str, DialLoop] = {}
        # the transport streams of this term's running handlers, by local peering ID (for the
        # optional test hook ResetStream)
        self.live_streams: dict[str, list[ReplicationStream]] = {}
        self.sync = SyncRoutine(self)
        no_stop = "deletion-no-stop" in cfg.bugs
        self.deletion = DeletionRoutine(
            cfg.store,
            cfg.log.child("deletion", term=term),
            ctx=self.ctx if no_stop else None,
            batch_bytes=cfg.deletion_batch_bytes,
            spin_limit=cfg.spin_limit,
            limiter=TokenBucket(cfg.deletion_rate, cfg.deletion_burst),
            mutants=cfg.mutants,
            hold=cfg.deletion_hold,
        )

    async def run(self, outer: trio.Nursery) -> None:
        """Run the routines until ``stop()``. ``outer`` outlives the term (bug only)."""
        with self._scope:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self.sync.run)
                if "no-deletion-on-new-leader" in self.cfg.mutants and self.term > 1:
                    pass  # mutant: a later term starts no deletion routine
                elif self.deletion.ctx is not None:
                    # bug deletion-no-stop: not tied to the term, stopped by nothing
                    outer.start_soon(self.deletion.run)
                else:
                    nursery.start_soon(self.deletion.run)
        self._nursery = None

    def stop(self) -> None:
        """Leadership is lost: cancel every routine, dialer and accepted stream of this term."""
        if self.stopped:
            return
        self.stopped = True
        self.log.info("leadership lost; stopping leader routines")
        self.ctx.cancel()
        self._scope.cancel()
        for scope in list(self._handler_scopes):
            scope.cancel()

    @contextmanager
    def handler_scope(self) -> Iterator[None]:
        """Run an accepted stream's handler; NotLeaderAnymore if the term ends meanwhile."""
        with trio.CancelScope() as scope:
            self._handler_scopes.add(scope)
            if self.stopped:
                scope.cancel()
            try:
                yield
            finally:
                self._handler_scopes.discard(scope)
        if scope.cancelled_caught:
            raise NotLeaderAnymore()

    @contextmanager
    def live_stream(self, peering_id: str, stream: ReplicationStream) -> Iterator[None]:
        """Record ``stream`` as one of the peering's live streams while its handler runs."""
        streams = self.live_streams.setdefault(peering_id, [])
        streams.append(stream)
        try:
            yield
        finally:
            streams.remove(stream)
            if not streams:
                del self.live_streams[peering_id]

    def reset_streams(self, peering_id: str) -> int:
        """The test hook ResetStream: cancel the transport of every live stream of the peering,
        as a connection reset would (each handler sees its stream cancelled, the peer sees the
        RPC cancelled); returns how many there were."""
        streams = [s for s in self.live_streams.get(peering_id, ()) if s.outcome is None]
        for stream in streams:
            self.log.info("test hook: resetting a peer stream", peering_id=peering_id,
                          side=stream.side)
            stream.cancel()
        return len(streams)

    # ---- dialing -------------------------------------------------------------------------

    def dialing(self, peering_id: str) -> bool:
        """A retry loop for this peering is inside an attempt (its stream is open)."""
        loop = self.dialers.get(peering_id)
        return loop is not None and loop.in_attempt

    def establish_stream(self, peering: Peering) -> None:
        """Start (or restart) the dial loop of a dialer peering."""
        if self._nursery is None:
            raise RuntimeError("the leader routines are not running")
        old = self.dialers.get(peering.id)
        if old is not None:
            old.cancel()
        loop = DialLoop(self, peering.id)
        self.dialers[peering.id] = loop
        self._nursery.start_soon(loop.run)


# =============================================================================================
# Sync routine
# =============================================================================================


class SyncRoutine:
    """Reconciles streams with the peering table (``syncPeeringsAndBlock``)."""

    def __init__(self, leadership: Leadership) -> None:
        self.leadership = leadership
        self.log = leadership.cfg.log.child("sync", term=leadership.term)
        self.passes = 0
        # peering IDs whose doneCh this routine closed, the newest HISTORY_LIMIT
        self.torn_down: deque[str] = deque(maxlen=HISTORY_LIMIT)

    async def run(self) -> None:
        cfg = self.leadership.cfg
        await retry_loop_backoff(self._pass_and_block, self._on_error,
                                 limiter=TokenBucket(LOOP_RATE_LIMIT, cfg.sync_burst))

    def _on_error(self, exc: Exception) -> None:
        self.log.error("error syncing peering streams", error=str(exc))

    async def _pass_and_block(self) -> None:
        index = self.sync_pass()
        await self.leadership.cfg.store.wait_for_change((PEERINGS,), index)

    def sync_pass(self) -> int:
        """One reconciliation pass; returns the peering-table index it listed at."""
        leadership = self.leadership
        tracker = leadership.tracker
        store = leadership.cfg.store
        stored_map_bug = "stored-map" in leadership.cfg.bugs
        mutants = leadership.cfg.mutants
        # First the connected streams, THEN the peerings: a stream that connects in between is
        # not in the copy, so it cannot be torn down for a peering missing from the list.
        connected = tracker.connected_streams()
        index = store.table_index(PEERINGS)
        peerings = store.peering_list()
        self.passes += 1
        stored: set[str] = set()
        for peering in peerings:
            if not peering.is_active():
                if "sync-keeps-inactive" in mutants:
                    stored.add(peering.id)  # mutant: an inactive peering is stored too
                continue
            if not stored_map_bug or peering.should_dial():
                stored.add(peering.id)
            if not peering.should_dial():
                continue
            if "sync-no-redial" in mutants:
                continue  # mutant: no retry loop is ever started
            status = tracker.stream_status(peering.id)
            if status is not None and status.connected:
                continue
            if leadership.dialing(peering.id):
                continue  # peerkit: an attempt is in flight; let it finish or fail
            self.log.info("establishing stream", peering_id=peering.id, peer_name=peering.name)
            leadership.establish_stream(peering)
        for peering_id, done in connected.items():
            keep = peering_id in stored
            if "sync-teardown-stored" in mutants:
                keep = not keep  # mutant: tear down what is stored, keep the rest
            if keep or done.is_set():
                continue
            self.log.info("closing stream of a peering that is not active", peering_id=peering_id)
            self.torn_down.append(peering_id)
            done.set()
        # Forget the tracker entries of streams that ended for peerings whose row is gone: the
        # tracker holds one entry per peering ID, so without this it grows with every peering
        # ever deleted during the term, and Status lists them with no peer name.
        tracker.forget_disconnected({p.id for p in peerings})
        return index


# =============================================================================================
# Deletion routine
# =============================================================================================


def node_batches(
    node_names: Sequence[str], partition: str, peer_name: str, max_bytes: int = MAX_BATCH_BYTES
) -> list[list[str]]:
    """Split node names into batches whose size (len(node) + len(partition) + len(peer name),
    summed) is at most ``max_bytes``; a node larger than that goes alone in its batch."""
    batches: list[list[str]] = []
    current: list[str] = []
    size = 0
    for name in node_names:
        node_size = len(name) + len(partition) + len(peer_name)
        if current and size + node_size > max_bytes:
            batches.append(current)
            current, size = [], 0
        current.append(name)
        size += node_size
    if current:
        batches.append(current)
    return batches


@dataclass
class DeletionStats:
    passes: int = 0
    node_batches: int = 0
    bundles_deleted: int = 0
    rows_deleted: int = 0
    spins: int = 0  # passes after the context was cancelled (bug deletion-no-stop)
    # the newest HISTORY_LIMIT failures and waits after a failed pass (a broken store fails
    # for ever, once per DELETION_RETRY_MAX seconds)
    failures: deque[str] = field(default_factory=lambda: deque(maxlen=HISTORY_LIMIT))
    backoffs: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY_LIMIT))


class DeletionRoutine:
    """``runPeeringDeletions``: removes the imported data of inactive peerings, then the row."""

    def __init__(
        self,
        store: StateStore,
        log: EventLog,
        *,
        ctx: Context | None = None,
        batch_bytes: int = MAX_BATCH_BYTES,
        spin_limit: int = SPIN_LIMIT,
        limiter: TokenBucket | None = None,
        mutants: frozenset[str] = frozenset(),
        hold: DeletionHold | None = None,
    ) -> None:
        self.store = store
        self.hold = hold
        self.mutants = mutants  # peerkit.impl.mutants; none by default
        self.log = log
        self.ctx = ctx
        self.batch_bytes = batch_bytes
        self.spin_limit = spin_limit
        self.limiter = limiter or TokenBucket(DELETION_RATE, DELETION_BURST)
        self.stats = DeletionStats()
        self.started = False  # run() was called (a mutant may never start the routine)
        self.finished = trio.Event()  # set when run() returns

    async def run(self) -> None:
        self.started = True
        try:
            await self._loop()
        except trio.ClosedResourceError:
            self.log.debug("store closed; deletion routine ends")
        finally:
            self.finished.set()

    async def _loop(self) -> None:
        store = self.store
        failed_passes = 0
        while True:
            if self.ctx is None:
                await trio.lowlevel.checkpoint_if_cancelled()  # the fix: check ctx every pass
            elif self.ctx.cancelled:
                self.stats.spins += 1
                if self.stats.spins >= self.spin_limit:
                    self.log.error("deletion routine still spinning after leadership loss; "
                                   "peerkit stops it here", spins=self.stats.spins, bug=True)
                    return
            self.stats.passes += 1
            try:
                index = store.table_index(PEERINGS)
                deleted = store.peering_list_deleted()
                if "deletion-guard-inverted" in self.mutants:
                    # mutant: the routine works on the active peerings instead
                    deleted = [p for p in store.peering_list() if p.is_active()]
                work = [p for p in deleted if self._has_work(p)]
            except trio.ClosedResourceError:
                raise
            except Exception as exc:
                self._failed(self.log, "failed to list deleted peerings", exc)
                failed_passes = await self._back_off(failed_passes)
                continue
            if not work:
                failed_passes = 0
                try:
                    if self.ctx is None:
                        await store.wait_for_change((PEERINGS,), index)
                    else:
                        with self.ctx.guard():
                            await store.wait_for_change((PEERINGS,), index)
                except ContextCancelled:
                    return
                continue
            ok = True
            for peering in work:
                ok = await self.remove_peering_and_data(peering) and ok
            failed_passes = 0 if ok else await self._back_off(failed_passes)

    async def _back_off(self, failed_passes: int) -> int:
        """After a pass that failed (a store error): wait 1, 2, 4, ... up to
        ``DELETION_RETRY_MAX`` seconds before the next pass, so a broken store is logged once
        per wait, never in a tight loop. Returns the new count of failed passes in a row.
        (Bug ``deletion-no-stop`` after leadership loss keeps its spin: no wait.)"""
        if self.ctx is not None and self.ctx.cancelled:
            return failed_passes
        delay = min(DELETION_RETRY_BASE * (1 << min(failed_passes, 16)), DELETION_RETRY_MAX)
        self.stats.backoffs.append(delay)
        self.log.info("deletion routine backing off after an error", seconds=delay,
                      failed_passes=failed_passes + 1)
        await trio.sleep(delay)
        return failed_passes + 1

    def _has_work(self, p: Peering) -> bool:
        if p.state is not PeeringState.TERMINATED:
            return True
        if "deletion-removes-terminated" in self.mutants:
            return True  # mutant: a TERMINATED row is work (its row is removed)
        return bool(
            self.store.imported_node_dump(p.name, p.partition)
            or self.store.trust_bundle_read(p.name, p.partition) is not None
        )

    async def _wait(self) -> None:
        if self.hold is not None:
            await self.hold.wait()  # the test hook HoldDeletion (off unless enabled)
        await self.limiter.wait(self.ctx)

    async def remove_peering_and_data(self, p: Peering) -> bool:
        """Nodes, then the trust bundle, then (unless TERMINATED) the row. Errors are logged;
        returns False after one."""
        log = self.log.bind(peering_id=p.id, peer_name=p.name)
        order = (self._remove_nodes, self._remove_bundle, self._remove_row)
        if "deletion-row-first" in self.mutants:
            order = (self._remove_row, self._remove_nodes, self._remove_bundle)  # mutant
        if "deletion-row-before-bundle" in self.mutants:
            order = (self._remove_nodes, self._remove_row, self._remove_bundle)  # mutant
        for step in order:
            if not await step(p, log):
                return False
        return True

    async def _remove_nodes(self, p: Peering, log: EventLog) -> bool:
        try:
            await self._delete_all_nodes(p)
        except Exception as exc:
            self._failed(log, "Failed to remove Nodes for peer", exc)
            return False
        return True

    async def _remove_bundle(self, p: Peering, log: EventLog) -> bool:
        try:
            await self._delete_trust_bundle(p)
        except Exception as exc:
            self._failed(log, "Failed to remove trust bundle for peer", exc)
            return False
        return True

    async def _remove_row(self, p: Peering, log: EventLog) -> bool:
        try:
            await self._wait()
        except Exception as exc:
            self._failed(log, "failed to wait for the deletion rate limiter", exc)
            return False
        if p.state is PeeringState.TERMINATED and \
                "deletion-removes-terminated" not in self.mutants:  # mutant if in
            return True  # kept as a signal to the operator
        # a marked row keeps no addresses (store.peering_mark_deleted), so its role is unknown
        # here: each of these two mutants refuses the removal of every marked row
        if p.state is PeeringState.DELETING and (
                "refuse:acceptor-deleting-deletion-routine-finished" in self.mutants
                or "refuse:dialer-deleting-deletion-routine-finished" in self.mutants):
            return True  # mutant: the marked row is never removed
        try:
            if self.store.peering_delete(p.name, p.partition):
                self.stats.rows_deleted += 1
                log.info("deleted peering")
        except Exception as exc:
            self._failed(log, "failed to apply full peering deletion", exc)
            return False
        return True

    def _failed(self, log: EventLog, msg: str, exc: Exception) -> None:
        self.stats.failures.append(f"{msg}: {exc}")
        log.error(msg, error=str(exc))

    async def _delete_all_nodes(self, p: Peering) -> None:
        nodes = [info.node.name for info in self.store.imported_node_dump(p.name, p.partition)]
        for batch in node_batches(nodes, p.partition, p.name, self.batch_bytes):
            await self._wait()
            removed = self.store.delete_imported_nodes(p.name, p.partition, batch)
            self.stats.node_batches += 1
            self.log.debug("deleted imported nodes", peer_name=p.name, nodes=removed)

    async def _delete_trust_bundle(self, p: Peering) -> None:
        if self.store.trust_bundle_read(p.name, p.partition) is None:
            return
        await self._wait()
        if self.store.trust_bundle_delete(p.name, p.partition):
            self.stats.bundles_deleted += 1


# =============================================================================================
# Dialer
# =============================================================================================


def peer_tls(ca_pems: Sequence[str], server_name: str) -> ClientTLS | None:
    """How to dial a peer whose token carried ``ca_pems`` and ``server_name``: TLS verified
    with them when there is a CA, plaintext (None) when there is none, as upstream's
    ``Peering.TLSDialOption`` (``grpc.WithInsecure()`` unless ``PeerCAPems`` is non-empty)."""
    return ClientTLS(tuple(ca_pems), server_name) if ca_pems else None


class AddressRing:
    """The dialer's ring of server addresses, advanced after every attempt."""

    def __init__(self) -> None:
        self._next = 0

    def next(self, addresses: Sequence[str]) -> str:
        if not addresses:
            raise ValueError("no server addresses to dial")
        address = addresses[self._next % len(addresses)]
        self._next += 1
        return address


class DialLoop:
    """The retry loop of one dialer peering (``establishStream``)."""

    def __init__(self, leadership: Leadership, peering_id: str) -> None:
        self.leadership = leadership
        self.peering_id = peering_id
        self.log = leadership.cfg.log.child("dialer", term=leadership.term,
                                            peering_id=peering_id)
        self.ring = AddressRing()
        self.scope = trio.CancelScope()
        self.in_attempt = False
        # the address of each attempt, in order, the newest HISTORY_LIMIT (a peer that never
        # answers is dialed for ever, once per backoff)
        self.attempts: deque[str] = deque(maxlen=HISTORY_LIMIT)
        self.stopped_by: str | None = None

    def cancel(self) -> None:
        self.scope.cancel()

    async def run(self) -> None:
        try:
            with self.scope:
                await retry_loop_backoff_peering(self._attempt, self._on_error,
                                                 self._retry_time)
        finally:
            if self.leadership.dialers.get(self.peering_id) is self:
                del self.leadership.dialers[self.peering_id]

    def _on_error(self, exc: Exception) -> None:
        self.log.warning("error managing peering stream", error=str(exc))

    @staticmethod
    def _retry_time(failed_attempts: int, exc: Exception) -> float:
        code = exc.code if isinstance(exc, DialError) else None
        if isinstance(exc, StreamFailed):
            code = exc.code.name
        return peering_retry_timeout(failed_attempts, code)

    async def _attempt(self) -> bool:
        cfg = self.leadership.cfg
        peering = cfg.store.peering_read_by_id(self.peering_id)
        if peering is None or not peering.is_active() or not peering.should_dial():
            self.stopped_by = "peering inactive"
            self.log.info("peering is gone or inactive; stop dialing")
            return True
        address = self.ring.next(peering.peer_server_addresses)
        self.attempts.append(address)
        self.log.debug("dialing", address=address)
        tls = peer_tls(peering.peer_ca_pems, peering.peer_server_name)
        async with cfg.transport.connect(address, tls=tls) as channel:
            stream = channel.open_stream(METHOD_STREAM_RESOURCES, serialize, deserialize)
            self.in_attempt = True
            try:
                try:
                    await stream.send(
                        ReplicationMessage(
                            open=ReplicationMessage.Open(
                                PeerID=peering.peer_id,
                                StreamSecretID=peering.stream_secret or "",
                                Remote=peering_pb2.RemoteInfo(
                                    Partition=peering.partition, Datacenter=cfg.name
                                ),
                            )
                        )
                    )
                except TransportError as exc:
                    raise DialError(f"failed to open stream to {address}: {exc}") from exc
                session = StreamSession(
                    self.leadership.stream_env,
                    StreamParams(
                        role=DIALER,
                        local_id=peering.id,
                        peer_name=peering.name,
                        partition=peering.partition,
                        remote_id=peering.peer_id,
                    ),
                    stream,
                )
                with self.leadership.live_stream(peering.id, stream):
                    ending = await session.run()
            finally:
                self.in_attempt = False
        if ending.nil:
            self.stopped_by = ending.reason
            return True
        code = ending.inbound.code.name if isinstance(ending.inbound, StreamFailed) else None
        raise DialError(f"stream to {address} ended: {ending.error_text}", code)
