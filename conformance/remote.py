"""The abstraction of a remote server, built only from its RPC answers, and the driver's session.

One job: observe and drive two running servers of any implementation over real gRPC, through
the peering service (GenerateToken, Establish, PeeringList, PeeringDelete) and peerkit's control
service (``AdminService``: RegisterService, DeregisterService, ExportService, UnexportService,
ReadCatalog, Status; and, when the servers enable it, the optional ``TestHookService``:
ResetStream and Failover, the environment's faults; HoldDeletion and HoldReceive,
schedules; DeletionRoutines, a read), and hand every observation, operator step and fault to a
``TraceValidator`` (a fault as the model's ``Reset`` or ``Failover``; a held deletion or
receive as a note: it only picks an interleaving).

The view (``abstraction.View``) is built from RPC answers only, never from server objects:

* rows: ``PeeringList`` (name, and the state it reports: ACTIVE/FAILING from the tracker);
* imported: ``ReadCatalog.Imports`` (service names per peer; the trust bundle's presence);
* tracker: ``Status.Streams`` (peer name, or ``GONE`` when its row is gone; connected);
* registered, exports: ``ReadCatalog.LocalServices`` and ``ReadCatalog.Exports``;
* zombie: from the optional test hook ``DeletionRoutines``: a deletion routine of an ended
  leader term began a pass after its term ended, since the session started (the baseline read
  by ``Session.start``; sticky, as the model's bit is). Internal to a server, so the suite
  trusts the server's own account, as it does for ``Status``; always false against a server
  without usable hooks (the trace notes it).

Servers keep their state between scenarios (and between runs), so each ``Session`` works in a
namespace of its own: peer names and service names carry the session's tag (``p1a2b3c-dc1``,
``p1a2b3c-api``), and the view keeps only what carries the tag (a tracker entry whose row is gone
is kept when its peering ID was seen in one of the session's rows), with the tag stripped, so
the model's names (``dc1``, ``api``) come back. The servers' own names do not matter.

Observation in real time: ``stable_view`` polls both servers until the view has not changed for
``Timing.rest`` seconds (a state the servers rest in, read consistently), or until a deadline.

May import: the standard library, trio, ``peerkit.model``, ``peerkit.impl`` (the client and the
gRPC transport only) and this package's ``abstraction`` and ``trace``.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Final

import trio

from peerkit.impl.client import PeerkitClient
from peerkit.impl.transport import StatusCode, StreamFailed
from peerkit.impl.transport.grpc_bridge import GrpcTransport
from peerkit.model import actions as A
from peerkit.model.config import Config
from peerkit.model.machine import PeeringModel
from peerkit.model.state import cluster_name

from .abstraction import GONE, ClusterView, View
from .configs import REMOTE_CONFIG
from .trace import TraceValidator


@dataclass(frozen=True)
class Timing:
    """How the suite waits for real servers (seconds). The defaults suit servers with
    upstream's pacing (a sync pass at most every 5 s once its burst is spent)."""

    #: how long a view must stay unchanged to count as observed
    rest: float = 0.3
    #: how long one step may take to come to rest before its last view is taken anyway
    step_deadline: float = 15.0
    #: how long the servers get to reach a state the model calls settled
    settle_deadline: float = 20.0
    #: poll period while waiting (each poll is three RPCs to each server)
    poll: float = 0.05


@dataclass(frozen=True)
class Target:
    """Two running servers: the model's dc1 (acceptor, exporter) and dc2 (dialer).
    ``hooks``: why the optional test hooks cannot be used (one line), or None when both
    servers have them enabled (``hooks_problem`` finds out)."""

    addresses: tuple[str, str]
    timing: Timing = Timing()
    hooks: str | None = "not probed"


class HookRefused(AssertionError):
    """A server refused a test-hook call the scenario needed (after the probe said yes)."""


#: every RPC's own deadline
RPC_TIMEOUT = 10.0

#: the status codes that say "no usable test hooks": absent (UNIMPLEMENTED), or present but
#: not enabled (peerkit answers FAILED_PRECONDITION; specs/porting.md)
NO_HOOKS: Final = (StatusCode.UNIMPLEMENTED, StatusCode.FAILED_PRECONDITION)


@dataclass
class Names:
    """The session's namespace: model names <-> the names used on the servers."""

    tag: str
    ids: set[str] = field(default_factory=set)  # peering IDs of the session's rows, ever seen

    def remote(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def model(self, name: str) -> str | None:
        prefix = self.tag + "-"
        return name[len(prefix):] if name.startswith(prefix) else None


def new_tag() -> str:
    """A fresh namespace: 'p' + 6 hex digits (peer names are DNS labels)."""
    return "p" + secrets.token_hex(3)


async def rpc_cluster_view(client: PeerkitClient, index: int, names: Names,
                           zombie: bool = False) -> ClusterView:
    """One server's abstracted state, from PeeringList, ReadCatalog and Status (``zombie``
    from the test hook DeletionRoutines, read by the caller)."""
    peerings = await client.peering_list()
    catalog = await client.read_catalog()
    status = await client.status()
    rows = []
    for row in peerings:
        peer = names.model(row.Name)
        if peer is None:
            continue
        names.ids.add(row.ID)
        # the enum's name from the message's own descriptor (the wire's names: ACTIVE, ...)
        enum = row.DESCRIPTOR.fields_by_name["State"].enum_type
        assert enum is not None
        rows.append((peer, str(enum.values_by_number[row.State].name)))
    imported = []
    for entry in catalog.Imports:
        peer = names.model(entry.PeerName)
        if peer is None:
            continue
        services = sorted({name for node in entry.Nodes
                           if (name := names.model(node.Service.Name)) is not None})
        bundle = entry.HasField("TrustBundle")
        if services or bundle:
            imported.append((peer, tuple(services), bundle))
    tracker = []
    for stream in status.Streams:
        if stream.PeerName:
            peer = names.model(stream.PeerName)
            if peer is not None:
                tracker.append((peer, bool(stream.Connected)))
        elif stream.PeeringID in names.ids:
            tracker.append((GONE, bool(stream.Connected)))
    registered = sorted({name for node in catalog.LocalServices
                         if (name := names.model(node.Service.Name)) is not None})
    exports = []
    for export in catalog.Exports:
        service = names.model(export.ServiceName)
        if service is None:
            continue
        for peer_name in export.PeerNames:
            peer = names.model(peer_name)
            if peer is not None:
                exports.append((service, peer))
    return ClusterView(cluster_name(index), tuple(sorted(rows)), tuple(sorted(imported)),
                       tuple(sorted(tracker)), tuple(registered), tuple(sorted(exports)),
                       zombie)


async def rpc_view(clients: Sequence[PeerkitClient], names: Names,
                   zombies: Sequence[bool] = (False, False)) -> View:
    return View(tuple([await rpc_cluster_view(c, i, names, zombies[i])
                       for i, c in enumerate(clients)]))


async def late_passes(client: PeerkitClient) -> dict[int, int] | None:
    """Per leadership term, the passes its deletion routine began after the term ended
    (``DeletionRoutines``), or None when the server has no usable test hooks."""
    try:
        routines = await client.deletion_routines()
    except StreamFailed as exc:
        if exc.code in NO_HOOKS:
            return None
        raise
    return {r.Term: r.PassesAfterTermEnded for r in routines if r.TermEnded}


class Session:
    """One scenario against two running servers: operator steps in the model's vocabulary,
    each followed by an observation, all checked by trace validation."""

    def __init__(self, clients: Sequence[PeerkitClient], addresses: Sequence[str],
                 names: Names, config: Config = REMOTE_CONFIG,
                 timing: Timing = Timing()) -> None:
        self.clients = list(clients)
        self.timing = timing
        self.addresses = list(addresses)
        self.names = names
        self.config = config
        self.model = PeeringModel(config)
        self.trace = TraceValidator(self.model, self.model.initial_states(),
                                    header=f"targets {', '.join(addresses)} "
                                           f"(names tagged {names.tag!r})")
        self.tokens: dict[tuple[int, int], str] = {}  # the model's (acceptor, gen) -> token
        self.used_tokens: set[tuple[int, int]] = set()
        self.held = [False] * len(self.clients)  # deletion held through the test hook
        self.receive_held = [False] * len(self.clients)  # stream receiving held (HoldReceive)
        # the zombie bit, from DeletionRoutines: per server, the late passes of each term when
        # the session started (None: not read, the server has no usable hooks), and whether a
        # routine began one more since (sticky, as the model's bit is: a server may forget an
        # old term)
        self.late_base: list[dict[int, int] | None] = [None] * len(self.clients)
        self.zombie = [False] * len(self.clients)

    async def start(self) -> None:
        """Read the baseline of the zombie bit (before the scenario's first step)."""
        self.late_base = [await late_passes(c) for c in self.clients]
        if None in self.late_base:
            self.trace.note("the zombie bit is not observed: a server has no usable test hook "
                            "DeletionRoutines")

    async def _view(self) -> View:
        for c, (client, base) in enumerate(zip(self.clients, self.late_base, strict=True)):
            if base is None or self.zombie[c]:
                continue
            now = await late_passes(client)
            self.zombie[c] = now is not None and any(
                n > base.get(term, 0) for term, n in now.items())
        return await rpc_view(self.clients, self.names, self.zombie)

    # -- observing -----------------------------------------------------------------------------
    async def stable_view(self, deadline: float) -> tuple[View, bool]:
        """Poll until the view rests for ``timing.rest`` s; (view, True), or (last view, False)
        when ``deadline`` s passed first."""
        t = self.timing
        start = trio.current_time()
        last = await self._view()
        since = trio.current_time()
        while True:
            now = trio.current_time()
            if now - since >= t.rest:
                return last, True
            if now - start >= deadline:
                return last, False
            await trio.sleep(t.poll)
            view = await self._view()
            if view != last:
                last, since = view, trio.current_time()

    async def observe(self, what: str) -> View:
        deadline = self.timing.step_deadline
        view, stable = await self.stable_view(deadline)
        self.trace.observe(view, what if stable else
                           f"{what} (still changing after {deadline:g} s)")
        return view

    async def settle(self, what: str = "settle") -> None:
        """Observe resting views until one has a settled model candidate; past the deadline,
        require one (a divergence: the servers failed to do something the model must)."""
        deadline = self.timing.settle_deadline
        start = trio.current_time()
        while True:
            view, _stable = await self.stable_view(deadline)
            elapsed = trio.current_time() - start
            self.trace.observe(view, f"{what} ({elapsed:.1f} s)")
            if self.trace.any_settled() or elapsed >= deadline:
                self.trace.require_settled(f"{what}: waited {elapsed:.1f} s of at most "
                                           f"{deadline:g} s")
                return
            await self._until_changed(view, start + deadline)

    async def until(self, done: Callable[[View], bool], what: str) -> None:
        """Observe resting views until one satisfies ``done`` (e.g. the told side reads
        TERMINATED), or the settle deadline passes; either way every view is checked, and the
        scenario goes on (a step that depends on it then shows what happened). Cheaper than
        ``settle``: it does not wait for every sync pass the model still owes."""
        deadline = self.timing.settle_deadline
        start = trio.current_time()
        while True:
            view, _stable = await self.stable_view(deadline)
            self.trace.observe(view, what)
            if done(view) or trio.current_time() - start >= deadline:
                return
            await self._until_changed(view, start + deadline)

    async def until_row(self, c: int, state: str, what: str) -> None:
        """``until`` cluster ``c``'s row for its peer reads ``state``."""
        row = (cluster_name(1 - c), state)
        await self.until(lambda v: row in v.clusters[c].rows, what)

    async def until_connected(self) -> None:
        """``until`` both rows read ACTIVE (the stream is up; the dial may have waited for the
        dialer's sync pass, which upstream's pacing delays once its burst is spent)."""
        await self.until(lambda v: all(r[1] == "ACTIVE" for c in v.clusters for r in c.rows)
                         and all(c.rows for c in v.clusters), "the stream connects")

    async def _until_changed(self, view: View, until: float) -> None:
        while trio.current_time() < until:
            await trio.sleep(self.timing.poll)
            if await self._view() != view:
                return

    # -- driving -------------------------------------------------------------------------------
    async def _operator(self, action: object, call: Callable[[], Awaitable[object]]) -> object:
        """Run one operator RPC; the model takes the same action after whatever protocol steps
        the servers may have taken unobserved since the last observation."""
        what = self.model.format_action(action)
        result: object = None
        try:
            result = await call()
        except StreamFailed as exc:  # a refusal is an observation too: the views will tell
            what += f" (the RPC failed: {exc})"
        self.trace.pin([action], what)
        await self.observe(what)
        return result

    def _peer(self, c: int) -> str:
        """The name cluster ``1 - c`` gives its peering with cluster ``c``."""
        return self.names.remote(cluster_name(c))

    def _service(self, s: str) -> str:
        return self.names.remote(s)

    async def register_and_export(self) -> None:
        """The model's start: the exporter registers its services and exports them."""
        cfg = self.config
        client = self.clients[cfg.exporter]
        for i, s in enumerate(cfg.services):
            await client.register_service(f"{self.names.tag}-node-{s}", self._service(s),
                                          port=8000 + i)
            if cfg.exported_at_start:
                for p in range(cfg.clusters):
                    if p != cfg.exporter:
                        await client.export_service(self._service(s), self._peer(p))
        await self.observe("start: register and export the services")

    async def generate_token(self, c: int) -> None:
        p = 1 - c
        before = {t for w in self.trace.worlds() for t in w.tokens}

        async def call() -> str:
            return await self.clients[c].generate_token(self._peer(p))

        token = await self._operator(A.GenerateToken(c, p), call)
        if isinstance(token, str):
            for key in {t for w in self.trace.worlds() for t in w.tokens} - before:
                self.tokens[key] = token

    async def establish(self, c: int) -> None:
        """Establish with the newest unused token of the other cluster."""
        a = 1 - c
        usable = [k for k in self.tokens if k[0] == a and k not in self.used_tokens]
        if not usable:
            raise RuntimeError("the scenario establishes without a fresh token")
        key = max(usable)
        self.used_tokens.add(key)

        async def call() -> None:
            await self.clients[c].establish(self._peer(a), self.tokens[key])

        await self._operator(A.Establish(c, a, key[1]), call)

    async def peer(self, acceptor: int = 0) -> None:
        """Generate a token on ``acceptor``, establish it on the other cluster, wait for the
        stream to connect."""
        await self.generate_token(acceptor)
        await self.establish(1 - acceptor)
        await self.until_connected()

    async def poke(self, c: int) -> None:
        """Make cluster ``c`` run a sync pass now: write a peering outside the session's
        namespace (a token for a peer name the view does not show). Not a model action: the
        model runs a sync pass only when its own peerings changed, and a bug-free pass over
        healthy peerings changes nothing one can see (a stutter), so this is safe in a trace;
        it is how a buggy pass that tears down a healthy stream (``stored-map``) shows without
        waiting for the next change. Use it only when no stream of the session has ended (a
        pass also forgets the tracker entries of ended streams whose row is gone)."""
        what = f"{cluster_name(c)}: operator generates a token for a peering outside the " \
               "scenario (its sync pass runs)"
        self.trace.note(what)
        await self.clients[c].generate_token(self._outsider(c))
        await self.observe(what)

    # -- faults, through the optional test hooks (TestHookService) ---------------------------
    async def reset(self, c: int, *, observe: bool = True) -> None:
        """Cluster ``c`` resets its peering's live stream (``ResetStream``): the model's
        ``Reset`` of some stream. A call that reset nothing (no stream was live) is recorded
        and pins nothing. ``observe=False``: the next step follows at once, before the servers
        come to rest (e.g. a delete before the dialer's redial, which waits 2 s)."""
        what = f"{cluster_name(c)}: test hook ResetStream of its peering with " \
               f"{cluster_name(1 - c)}"
        try:
            count = await self.clients[c].reset_stream(self._peer(1 - c))
        except StreamFailed as exc:
            raise HookRefused(f"{what}: {exc}") from None
        if count == 0:
            self.trace.note(f"{what}: no live stream, nothing reset")
        else:
            self.trace.pin_fault(lambda a: isinstance(a, A.Reset), what)
        if observe:
            await self.observe(what)

    async def failover(self, c: int) -> None:
        """Cluster ``c``'s leader loses its term and a new one starts (``Failover``): the
        model's ``Failover(c)``."""
        what = f"{cluster_name(c)}: test hook Failover"
        try:
            await self.clients[c].failover()
        except StreamFailed as exc:
            raise HookRefused(f"{what}: {exc}") from None
        self.trace.pin_fault(lambda a: a == A.Failover(c), what)
        await self.observe(what)

    async def hold_deletion(self, c: int, hold: bool) -> None:
        """Cluster ``c``'s deletion routines wait before their next step (``hold``) or go on.
        Not a model action: the model's deletion steps may come arbitrarily late."""
        what = f"{cluster_name(c)}: test hook HoldDeletion ({'hold' if hold else 'release'})"
        try:
            await self.clients[c].hold_deletion(hold)
            self.held[c] = hold
        except StreamFailed as exc:
            raise HookRefused(f"{what}: {exc}") from None
        self.trace.note(what)

    async def hold_receive(self, c: int, hold: bool) -> None:
        """Cluster ``c``'s stream handlers for its peering stop taking messages from their
        streams (``hold``) or go on. Not a model action: the model's channels are FIFO and a
        message may wait in flight arbitrarily long (a cancel that overtakes it is the
        sender's doing, which the model has or has not)."""
        what = f"{cluster_name(c)}: test hook HoldReceive of its peering with " \
               f"{cluster_name(1 - c)} ({'hold' if hold else 'release'})"
        try:
            await self.clients[c].hold_receive(self._peer(1 - c), hold)
            self.receive_held[c] = hold
        except StreamFailed as exc:
            raise HookRefused(f"{what}: {exc}") from None
        self.trace.note(what)

    def _outsider(self, c: int) -> str:
        return f"{self.names.tag}x{c}"

    async def delete(self, c: int) -> None:
        async def call() -> None:
            await self.clients[c].peering_delete(self._peer(1 - c))

        await self._operator(A.Delete(c, 1 - c), call)

    async def export(self, c: int, service: str, on: bool = True) -> None:
        p = 1 - c
        client = self.clients[c]

        async def call() -> None:
            if on:
                await client.export_service(self._service(service), self._peer(p))
            else:
                await client.unexport_service(self._service(service), self._peer(p))

        action = A.Export(c, service, p) if on else A.Unexport(c, service, p)
        await self._operator(action, call)

    async def register(self, c: int, service: str, on: bool = True) -> None:
        client = self.clients[c]

        async def call() -> None:
            if on:
                await client.register_service(f"{self.names.tag}-node-{service}",
                                              self._service(service),
                                              port=8000 + self.config.services.index(service))
            else:
                await client.deregister_service(service=self._service(service))

        action = A.Register(c, service) if on else A.Deregister(c, service)
        await self._operator(action, call)

    async def cleanup(self) -> None:
        """Best effort, unchecked: release any deletion hold, delete the session's peerings so
        that their streams stop."""
        for c, client in enumerate(self.clients):
            if self.held[c]:
                with contextlib.suppress(StreamFailed):
                    await client.hold_deletion(False)
            if self.receive_held[c]:
                with contextlib.suppress(StreamFailed):
                    await client.hold_receive(self._peer(1 - c), False)
            for name in (self._peer(1 - c), self._outsider(c)):
                with contextlib.suppress(StreamFailed):
                    await client.peering_delete(name)


@asynccontextmanager
async def connected(addresses: Sequence[str]) -> AsyncIterator[list[PeerkitClient]]:
    """One client per address, over one gRPC transport."""
    async with AsyncExitStack() as stack:
        transport = await stack.enter_async_context(GrpcTransport())
        clients = [await stack.enter_async_context(
            PeerkitClient.connect(transport, a, timeout=RPC_TIMEOUT)) for a in addresses]
        yield clients


Scenario = Callable[[Session], Awaitable[None]]


def run_scenario(target: Target, scenario: Scenario) -> None:
    """Run one scenario against the two servers of ``target`` in a trio run of its own;
    raises ``trace.TraceDivergence`` when the observations are not a behaviour of the model."""

    async def main() -> None:
        async with connected(target.addresses) as clients:
            session = Session(clients, target.addresses, Names(new_tag()),
                              timing=target.timing)
            try:
                await session.start()
                await scenario(session)
            finally:
                with trio.move_on_after(5):
                    await session.cleanup()

    trio.run(main)


def hooks_problem(target: Target) -> str | None:
    """Why the scenarios that need the test hooks cannot run (one line), or None. The probe is
    ``ResetStream`` with an empty PeerName on each server: it resets nothing anywhere; a server
    with hooks enabled refuses the name (any other answer than the two of ``NO_HOOKS``)."""

    async def main() -> str | None:
        async with connected(target.addresses) as clients:
            for address, client in zip(target.addresses, clients, strict=True):
                try:
                    await client.reset_stream("")
                except StreamFailed as exc:
                    if exc.code in NO_HOOKS:
                        return f"the server at {address} has no test hooks enabled ({exc})"
        return None

    return trio.run(main)


def unreachable(target: Target) -> str | None:
    """Why the suite cannot use the servers (one line), or None: each must answer Status and
    PeeringList within the RPC deadline."""

    async def main() -> str | None:
        async with connected(target.addresses) as clients:
            for address, client in zip(target.addresses, clients, strict=True):
                try:
                    await client.status()
                    await client.peering_list()
                except StreamFailed as exc:
                    return f"the server at {address} does not answer: {exc}"
        return None

    return trio.run(main)
