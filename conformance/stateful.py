"""Hypothesis stateful conformance: the trio implementation, held to the model step by step.

One job: a plain ``RuleBasedStateMachine`` that drives two real ``PeeringServer``s (memory or
SQLite store, in-memory network, virtual time) inside one persistent trio guest run per example
(``guest.GuestRun``), and after every rule checks the implementation's abstracted state against
the set of model states consistent with everything observed so far (``candidates.Candidates``).

Rules, in the model's vocabulary (each names the model action it pins, if any):

* operator: ``generate_token``, ``establish``, ``delete``, ``register``/``deregister``,
  ``export``/``unexport`` (a toggle each) -- the RPC on the implementation, the action on every
  candidate;
* faults: ``reset`` (a connection reset of a live stream, overtaking what is in flight or
  behind it: ``Reset``), ``failover`` (the leader loses and regains leadership at once:
  ``Failover``);
* network: ``hold``/``release`` one direction of a live stream (delays ``Deliver`` steps; the
  model's interleavings already contain every delay, so nothing is pinned);
* time: ``advance`` the virtual clock (heartbeats, retries, rate limits); ``settle``: release
  every hold, let 700 s pass, and require a settled candidate;
* with ``write_faults`` / ``heartbeat_faults`` only: ``write_fault``, ``heartbeat_timeout``
  (below).

Every rule ends by letting the implementation run until every task is blocked at the current
virtual time, then observing it. The scheduler seed is drawn in ``setup``, so interleavings vary,
shrink and replay.

What the driver cannot do (and why), beyond what ``abstraction`` leaves out:

* ``Establish`` only with a fresh token of an active acceptor row, once per token: the model does
  not model ExchangeSecret (specs/model.md), so a stale token that the implementation rightly
  refuses at establishment would be accepted by the model and refused later, at the stream;
* the first message of a new call is held only by the directed scenarios (``hold_new``, not a
  rule: a rule would change the derandomized example sequence the bug hunts are measured on).

Heartbeat timeouts (the model's ``HeartbeatTimeout``) are driven by a configuration with
``heartbeat_faults`` (``configs.HEARTBEAT_FAULTS_CONFIG``): its servers time out after
``FAULT_HEARTBEAT_TIMEOUT`` (250 s; heartbeats go every 100 s), its ``advance`` releases any hold
before it could last ``SAFE_HOLD``, and its one more rule, ``heartbeat_timeout``, holds the
direction into one end of a live stream and lets virtual time run until that end gives up, by
the implementation's own timer; the tracker's "heartbeat timeout" disconnection tells the driver
it did, and the observation then requires exactly one ``HeartbeatTimeout`` of that role. Without
the flag the timeout lies beyond any example's virtual time, so holds may last as they like.

Store-write failures (the model's ``HandlerWriteFails`` / ``RoutineWriteFails``, finding F6) are
driven by a configuration with ``write_faults`` (``configs.WRITE_FAULTS_CONFIG``), whose machine
has one more rule, ``write_fault``: it arms ``impl.testing.WriteFault`` so that the next store
write of one cluster's stream handlers (an import, TerminateByID) or of its deletion routine
fails. When the implementation meets it is the implementation's business, so the rule pins
nothing: the first observation after the write failed requires exactly one such fault of that
cluster among the steps since the last one (``Candidates.observe(faults=...)``). Only
``machine_for`` with such a configuration has the rule, so the default run's example sequence
does not depend on it.

A Python gRPC server's view of a client cancel (first an end-of-stream, then the cancel) *is*
driven: ``setup`` draws ``eof_first`` for the in-memory network, and the model runs with
``python_server_eof_first`` to match.

Requires Hypothesis (a test dependency). May import: the standard library, trio, hypothesis,
``peerkit.model``, ``peerkit.impl`` and this package.
"""

from __future__ import annotations

import functools
import gc
import itertools
import os
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import AsyncExitStack
from dataclasses import replace
from typing import ClassVar, TypeVar

import trio
import trio.testing
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from peerkit.impl.codec import METHOD_STREAM_RESOURCES
from peerkit.impl.store import MemoryStore, SqliteStore, StateStore
from peerkit.impl.testing import HANDLER_WRITES, ROUTINE_WRITES, WriteFault, running_cluster
from peerkit.impl.testing import Cluster as ImplCluster
from peerkit.impl.transport import MemoryCall, MemoryNetwork, TransportError
from peerkit.model import actions as A
from peerkit.model.config import Config
from peerkit.model.machine import PeeringModel
from peerkit.model.state import World, cluster_name
from peerkit.model.vocabulary import ERR_HEARTBEAT_TIMEOUT

from .abstraction import impl_view
from .candidates import Candidates, Divergence, FaultFn
from .configs import CONFORMANCE_CONFIG
from .coverage import EdgeKey, edge_key
from .guest import GuestRun

T = TypeVar("T")

C2S = "client→server"
S2C = "server→client"
#: heartbeats are not in the model; they are sent (so the handlers meet them) but rarely, and
#: their timeout lies beyond any example's virtual time: a heartbeat timeout is a fault the
#: configuration leaves out (``heartbeat_faults``), so holds may last as long as they like.
#: Rarely: every 350 s, so a ``settle`` (700 s) meets two each way per stream. Heartbeats were
#: most of what a settle ran (six guest ticks per heartbeat, both ways), and a settle is one rule
#: in seven; at 100 s the bug-free run took about a fifth longer, with the same examples, rules,
#: views and candidate sets (``benchmarks/conformance_sequence.py``, all six bug hunts too)
HEARTBEAT_INTERVAL = 350.0
HEARTBEAT_TIMEOUT = 1.0e9
#: with ``heartbeat_faults`` (``HeartbeatFaultMachine``) the timeout is finite, so that a handler
#: whose inbound direction is held long enough gives up, and heartbeats go more often than it;
#: a handler's last message is at most one interval older than a hold, so a hold shorter than
#: ``SAFE_HOLD`` never times one out
FAULT_HEARTBEAT_INTERVAL = 100.0
FAULT_HEARTBEAT_TIMEOUT = 250.0
SAFE_HOLD = FAULT_HEARTBEAT_TIMEOUT - FAULT_HEARTBEAT_INTERVAL - 10.0
#: the call id of ``holds`` entries that stand for every stream call opened from now on
NEW_CALLS = 0
SETTLE_TIME = 700.0  # more than every backoff (256 s) and timeout; rate limits long refilled
ADVANCES = (0.1, 1.0, 2.0, 5.0, 16.0, 60.0, 300.0)
#: groups of rules; each example enables a drawn subset ("swarm testing": an example that uses
#: few kinds of rule uses each more often, which finds combinations of a few steps sooner)
#: (``advance`` is always enabled, so that some rule always is)
RULE_KINDS = ("operator", "churn", "reset", "failover", "hold", "settle")
#: the garbage collector's youngest generation while an example runs (CPython's default is
#: 700 allocations): an example allocates millions of short-lived objects (trio's tasks and
#: cancel scopes, store rows, model worlds) among a million long-lived ones (the memo), and at
#: the default its young collections promoted enough to set off a full pass (about a third of a
#: second each, six in a 300-example run); with 10,000 one. Scoped to the example (``setup``
#: sets it, ``teardown`` puts the old thresholds back): a collector setting, nothing more, so
#: nothing the run draws or observes depends on it
YOUNG_GENERATION = 10_000


@functools.lru_cache(maxsize=4)
def shared_model(config: Config, bugs: frozenset[str]) -> PeeringModel:
    """One model object per (configuration, bugs), shared by every example, so that the
    answers ``Candidates`` remembers of it (``memo``) serve the whole run. The four most recent
    are kept (a memo goes with its model), which bounds the memory a long session holds."""
    return PeeringModel(config, bugs)


def _swarm(draws: tuple[int, ...]) -> frozenset[str]:
    """Each kind of rule is on with probability about 0.4 (a draw below 4 of 0..9), so that a
    typical example uses two or three kinds, each often; shrinking turns kinds on (draws
    shrink towards 0), which keeps a shrunk example's program short anyway."""
    return frozenset(k for k, d in zip(RULE_KINDS, draws, strict=True) if d < 4)


class ConformanceMachine(RuleBasedStateMachine):
    """Subclass with ``IMPL_BUGS`` / ``MODEL_BUGS`` / ``IMPL_MUTANTS`` set (see
    ``machine_for``)."""

    IMPL_BUGS: ClassVar[frozenset[str]] = frozenset()
    #: mistakes of the mutation catalog on in the implementation (the model runs unmutated)
    IMPL_MUTANTS: ClassVar[frozenset[str]] = frozenset()
    MODEL_BUGS: ClassVar[frozenset[str]] = frozenset()
    CONFIG: ClassVar[Config] = CONFORMANCE_CONFIG
    #: the store backend the servers run on: "memory", or "sqlite" (one database file per
    #: cluster in a temporary directory per example: the store code ``peerkit serve`` runs)
    STORE: ClassVar[str] = "memory"
    #: edge keys covered by every example of this class (for the coverage report)
    COVERED: ClassVar[set[EdgeKey]]
    STATS: ClassVar[dict[str, int]]

    def __init__(self) -> None:
        super().__init__()
        self.model = shared_model(self.CONFIG, self.MODEL_BUGS)
        self.run: GuestRun | None = None
        self.clusters: tuple[ImplCluster, ...] = ()
        self.net: MemoryNetwork | None = None
        self.cands: Candidates | None = None
        self.tokens: dict[tuple[int, int], str] = {}
        self.used_tokens: set[tuple[int, int]] = set()
        self.holds: dict[tuple[int, str], float] = {}  # (call id, direction) -> since
        self.reset_queued: set[int] = set()  # calls reset behind what is in flight
        self.diverged = False
        self.kinds: frozenset[str] = frozenset()
        #: an armed store-write fault and which fault actions of the model it stands for
        self.armed_write: tuple[WriteFault, FaultFn] | None = None
        #: heartbeat timeouts the implementation made since the last observation
        self.timeouts: list[FaultFn] = []
        #: the enabled actions' set (``_enabled``) and their types, for ``_any_enabled``
        self._enabled_types: tuple[set[object], frozenset[type]] | None = None
        #: the collector's thresholds before ``setup`` changed them (``YOUNG_GENERATION``)
        self.gc_thresholds: tuple[int, int, int] | None = None

    # =========================================================================================
    # plumbing
    # =========================================================================================
    def _call(self, fn: Callable[[], Awaitable[T]]) -> T:
        assert self.run is not None
        return self.run.call(fn)

    def _step(self, fn: Callable[[], Awaitable[object]] | None) -> object:
        """Run ``fn`` (if any), then let the implementation run until all tasks are blocked."""

        async def body() -> object:
            result: object = None
            if fn is not None:
                try:
                    result = await fn()
                except TransportError as exc:  # an RPC refused: the views will tell
                    result = exc
            await trio.testing.wait_all_tasks_blocked()
            return result

        self.STATS["steps"] = self.STATS.get("steps", 0) + 1
        return self._call(body)

    def _observe(self, what: str) -> None:
        assert self.cands is not None
        faults: list[FaultFn] = []
        if self.armed_write is not None and self.armed_write[0].fired:
            faults.append(self.armed_write[1])
            what += " (an armed store write failed meanwhile)"
            self.armed_write = None
        faults.extend(self.timeouts)
        self.timeouts.clear()
        try:
            self.cands.observe(impl_view(self.clusters, self._live_calls()), what, faults)
        except Divergence:
            self.diverged = True
            raise

    def _pin(self, actions: Iterable[object], what: str) -> None:
        assert self.cands is not None
        try:
            self.cands.pin(actions, what)
        except Divergence:
            self.diverged = True
            raise

    def _enabled(self) -> set[object]:
        assert self.cands is not None
        return self.cands.enabled_env()

    def _any_enabled(self, *types: type) -> bool:
        if self.cands is None:
            return False
        enabled = self._enabled()  # the same set object while the candidates stay the same
        if self._enabled_types is None or self._enabled_types[0] is not enabled:
            # the preconditions ask this of every rule Hypothesis considers, several times a
            # step: look at the (few) action types, not at every enabled action, each time
            self._enabled_types = (enabled, frozenset(map(type, enabled)))
        return any(issubclass(t, types) for t in self._enabled_types[1])

    def _worlds(self) -> list[World]:
        assert self.cands is not None
        return self.cands.worlds()

    def _live_calls(self) -> list[MemoryCall]:
        if self.net is None:
            return []
        return [c for c in self.net.streams
                if c.method == METHOD_STREAM_RESOURCES and not c.finished]

    # =========================================================================================
    # set-up and tear-down
    # =========================================================================================
    @initialize(seed=st.integers(0, 2**32 - 1), upstream_pacing=st.booleans(),
                establish_after=st.sampled_from((6.0, 0.0)),
                kinds=st.tuples(*(st.integers(0, 9) for _ in RULE_KINDS)).map(_swarm),
                eof_first=st.booleans(), held=st.sampled_from(("", C2S, S2C)))
    def setup(self, seed: int, upstream_pacing: bool = False,
              establish_after: float = 6.0,
              kinds: frozenset[str] = frozenset(RULE_KINDS),
              eof_first: bool = False, held: str = "") -> None:
        """Start both servers (dc1 exports the model's services to dc2), then dc1 generates a
        token and dc2 establishes it, each step compared with the model.

        ``seed`` seeds trio's scheduler. Pacing: upstream's limiters (sync 0.2/s burst 5,
        deletion 10/s burst 10), or (the simpler example, where Hypothesis shrinks to) slow
        ones (sync burst 1, deletion 0.05/s burst 1), so that sync passes and deletion steps
        wait for their limiters and land between other steps: a deletion then takes seconds,
        longer than the dialer's first retry backoff (2 s). ``establish_after``: virtual seconds
        between the token and the establishment (6 s lets the acceptor's sync pass for the
        establishment wait for its limiter until after the stream connects). ``kinds``: the
        groups of rules (``RULE_KINDS``) this example may use. ``held``: a direction of the
        stream held from the start (message-granularity delay from the first rule on, without
        spending one of the example's steps on it; shrinks to none). ``eof_first``: the in-memory
        network behaves as a Python gRPC server does (python-stack.md §3): a client's cancel
        reaching a server end blocked in ``receive`` is first seen as end-of-stream, and the
        model runs with ``python_server_eof_first`` to match."""
        self.kinds = kinds
        if self.gc_thresholds is None:
            self.gc_thresholds = gc.get_threshold()
            gc.set_threshold(max(YOUNG_GENERATION, self.gc_thresholds[0]),
                             *self.gc_thresholds[1:])
        if eof_first != self.CONFIG.python_server_eof_first:
            self.model = shared_model(replace(self.CONFIG, python_server_eof_first=eof_first),
                                      self.MODEL_BUGS)
        sync_burst, deletion_burst, deletion_rate = (5, 10, 10.0) if upstream_pacing else (
            1, 1, 0.05)
        run = GuestRun(seed)
        self.run = run
        ready: list[bool] = []

        async def main(portal: GuestRun) -> None:
            net = MemoryNetwork(eof_before_cancel=eof_first)
            ids = itertools.count(1)
            async with AsyncExitStack() as stack:
                clusters = []
                data = (stack.enter_context(tempfile.TemporaryDirectory(prefix="peerkit-conf-"))
                        if self.STORE == "sqlite" else "")
                for c in range(self.CONFIG.clusters):
                    name = cluster_name(c)
                    store: StateStore
                    if self.STORE == "sqlite":
                        store = SqliteStore(os.path.join(data, name),
                                            id_factory=_counter(f"{name}-id-", ids))
                        stack.callback(store.close)
                    else:
                        store = MemoryStore(id_factory=_counter(f"{name}-id-", ids))
                    secrets = _counter(f"{name}-secret-", itertools.count(1))
                    cl = await stack.enter_async_context(running_cluster(
                        net, name, f"{name}:8502", store=store, bugs=self.IMPL_BUGS,
                        mutants=self.IMPL_MUTANTS,
                        deletion_burst=deletion_burst, deletion_rate=deletion_rate,
                        sync_burst=sync_burst,
                        spin_limit=50,
                        heartbeat_interval=(FAULT_HEARTBEAT_INTERVAL
                                            if self.CONFIG.heartbeat_faults
                                            else HEARTBEAT_INTERVAL),
                        heartbeat_timeout=(FAULT_HEARTBEAT_TIMEOUT
                                           if self.CONFIG.heartbeat_faults
                                           else HEARTBEAT_TIMEOUT),
                        wall_clock=lambda: 1.0e9 + trio.current_time(),
                        secret_factory=secrets,
                    ))
                    clusters.append(cl)
                self.clusters = tuple(clusters)
                self.net = net
                ready.append(True)
                await portal.serve()
                net.close()

        run.start(main)
        run._pump_until(lambda: bool(ready))

        exporter = self.clusters[self.CONFIG.exporter]

        async def register() -> None:
            for i, service in enumerate(self.CONFIG.services):
                await exporter.client.register_service(f"{exporter.name}-node-{service}",
                                                       service, port=8000 + i)
                if self.CONFIG.exported_at_start:
                    for p in range(self.CONFIG.clusters):
                        if p != self.CONFIG.exporter:
                            await exporter.client.export_service(service, cluster_name(p))

        self._step(register)
        self.cands = Candidates(self.model, self.model.initial_states(),
                                edge_key=edge_key, streams=True)
        self._observe(f"setup (seed {seed}, {'upstream' if upstream_pacing else 'slow'} pacing"
                      f"{', cancel seen first as EOF' if eof_first else ''}): "
                      "register and export the services")
        self._generate_token(0)
        if establish_after:
            self._advance(establish_after)
        self._establish(1)
        self._advance(30.0)  # the dial and the replication, even with slow pacing
        if held and self._live_calls():
            self._hold(0, held)

    def teardown(self) -> None:
        if self.cands is not None:
            self.COVERED.update(self.cands.covered)
            self.STATS["largest_closure"] = max(self.STATS.get("largest_closure", 0),
                                                self.cands.largest_closure)
        self.STATS["examples"] = self.STATS.get("examples", 0) + 1
        try:
            if self.run is not None:
                run, self.run = self.run, None
                run.close()
        finally:
            if self.gc_thresholds is not None:
                gc.set_threshold(*self.gc_thresholds)
                self.gc_thresholds = None

    # =========================================================================================
    # operator
    # =========================================================================================
    def _operator(self, action: object, fn: Callable[[], Awaitable[object]]) -> bool:
        if action not in self._enabled():
            return False
        result = self._step(fn)
        what = self.model.format_action(action)
        if isinstance(result, TransportError):
            what += f" (the RPC failed: {result})"
        self._pin([action], what)
        self._observe(what)
        return True

    def _generate_token(self, c: int) -> None:
        p = 1 - c
        action = A.GenerateToken(c, p)
        before = {t for w in self._worlds() for t in w.tokens}
        tokens: list[str] = []

        async def call() -> None:
            tokens.append(await self.clusters[c].client.generate_token(cluster_name(p)))

        if self._operator(action, call) and tokens:
            after = {t for w in self._worlds() for t in w.tokens} - before
            for key in after:
                self.tokens[key] = tokens[0]
            if not after:
                # GenerateToken on the PENDING row again: the same row, so the model's token is
                # the one it already had, but its secret is new (the old one is refused now)
                for key in [k for k in self.tokens if k[0] == c]:
                    if all((r := w.clusters[c].row_by_gen(key[1])) is not None and r.peer == p
                           for w in self._worlds()):
                        self.tokens[key] = tokens[0]
                        self.used_tokens.discard(key)

    def _establish(self, c: int) -> None:
        a = 1 - c
        usable = []
        for key, _token in self.tokens.items():
            if key[0] != a or key in self.used_tokens:
                continue
            rows = [w.clusters[a].row_by_gen(key[1]) for w in self._worlds()]
            if all(r is not None and r.active for r in rows):
                usable.append(key)
        if not usable:
            return
        key = max(usable)
        action = A.Establish(c, a, key[1])

        async def call() -> None:
            await self.clusters[c].client.establish(cluster_name(a), self.tokens[key])

        if self._operator(action, call):
            self.used_tokens.add(key)

    @precondition(lambda self: "operator" in self.kinds and self._any_enabled(A.GenerateToken))
    @rule(c=st.integers(0, 1))
    def generate_token(self, c: int) -> None:
        self._generate_token(c)

    @precondition(lambda self: "operator" in self.kinds and self._any_enabled(A.Establish))
    @rule(c=st.integers(0, 1))
    def establish(self, c: int) -> None:
        self._establish(c)

    @precondition(lambda self: "operator" in self.kinds and self._any_enabled(A.Delete))
    @rule(c=st.integers(0, 1))
    def delete(self, c: int) -> None:
        async def call() -> None:
            await self.clusters[c].client.peering_delete(cluster_name(1 - c))

        self._operator(A.Delete(c, 1 - c), call)

    @precondition(lambda self: "churn" in self.kinds
                  and self._any_enabled(A.Register, A.Deregister))
    @rule(c=st.integers(0, 1), i=st.integers(0, 7))
    def register(self, c: int, i: int) -> None:
        """Register the service if it is not registered, deregister it if it is."""
        service = self.CONFIG.services[i % len(self.CONFIG.services)]
        client = self.clusters[c].client
        if any(service in w.clusters[c].registered for w in self._worlds()):
            async def dereg() -> None:
                await client.deregister_service(service=service)

            self._operator(A.Deregister(c, service), dereg)
        else:
            async def reg() -> None:
                await client.register_service(f"{cluster_name(c)}-node-{service}", service,
                                              port=8000 + i % len(self.CONFIG.services))

            self._operator(A.Register(c, service), reg)

    @precondition(lambda self: "churn" in self.kinds
                  and self._any_enabled(A.Export, A.Unexport))
    @rule(c=st.integers(0, 1), i=st.integers(0, 7))
    def export(self, c: int, i: int) -> None:
        """Export the service to the other cluster if it is not exported, un-export it if it is."""
        service = self.CONFIG.services[i % len(self.CONFIG.services)]
        p = 1 - c
        client = self.clusters[c].client
        if any((service, p) in w.clusters[c].exports for w in self._worlds()):
            async def unexport() -> None:
                await client.unexport_service(service, cluster_name(p))

            self._operator(A.Unexport(c, service, p), unexport)
        else:
            async def export() -> None:
                await client.export_service(service, cluster_name(p))

            self._operator(A.Export(c, service, p), export)

    # =========================================================================================
    # faults
    # =========================================================================================
    def _resettable(self) -> list[MemoryCall]:
        return [c for c in self._live_calls() if c.id not in self.reset_queued]

    def _spare_faults(self) -> int:
        """The fault budget every candidate has left beyond an armed fault's share."""
        left = min((w.budget.faults for w in self._worlds()), default=0)
        return left - (self.armed_write is not None)

    @precondition(lambda self: "reset" in self.kinds and self._any_enabled(A.Reset)
                  and bool(self._resettable()) and self._spare_faults() > 0)
    @rule(i=st.integers(0, 3), overtake=st.booleans())
    def reset(self, i: int, overtake: bool = True) -> None:
        """Reset the connection of a live stream: everything in flight is dropped
        (``overtake``), or each end first receives what is in flight towards it, held messages
        once released (the model's interleavings allow both)."""
        calls = self._resettable()
        resets = [a for a in self._enabled() if isinstance(a, A.Reset)]
        if not calls or not resets:
            return
        call = calls[i % len(calls)]

        async def do() -> None:
            call.reset(overtake=overtake)

        self._step(do)
        if overtake:
            for key in [k for k in self.holds if k[0] == call.id]:
                del self.holds[key]
        else:
            self.reset_queued.add(call.id)
        what = f"reset of stream call #{call.id}{'' if overtake else ' behind what is in flight'}"
        self._pin(resets, what)  # the model may number the streams differently: any of them
        self._observe(what)

    @precondition(lambda self: "failover" in self.kinds and self._any_enabled(A.Failover))
    @rule(c=st.integers(0, 1))
    def failover(self, c: int) -> None:
        """The leader of cluster ``c`` loses leadership and a new term starts at once."""
        action = A.Failover(c)
        server = self.clusters[c].server

        async def do() -> None:
            server.lose_leadership()
            server.become_leader()

        self._operator(action, do)

    # =========================================================================================
    # network and time
    # =========================================================================================
    @precondition(lambda self: "hold" in self.kinds and bool(self._live_calls()))
    @rule(i=st.integers(0, 3), up=st.booleans())
    def hold(self, i: int, up: bool) -> None:
        """Stop delivery in one direction of a live stream (messages queue up)."""
        self._hold(i, C2S if up else S2C)

    def _hold(self, i: int, direction: str) -> None:
        calls = self._live_calls()
        if not calls:
            return
        self._hold_call(calls[i % len(calls)], direction)

    def _hold_call(self, call: MemoryCall, direction: str) -> None:
        if call.is_held(direction):
            return

        async def do() -> None:
            call.hold(direction)

        self._step(do)
        self.holds[(call.id, direction)] = self._call(_now)
        self._observe(f"hold {direction} of stream call #{call.id}")

    @precondition(lambda self: bool(self.holds))
    @rule()
    def release(self) -> None:
        """Resume delivery in every held direction."""
        if not self.holds:
            return
        self._release_all()
        self._observe("release every held direction")

    def hold_new(self, up: bool) -> None:
        """Every stream call opened from now on starts with one direction held, before its
        first message (a dialer's Open waits, its acceptor end stays in NEW). Not a rule: the
        directed scenarios of the coverage test use it (``release`` and ``settle`` end it)."""
        assert self.net is not None
        direction = C2S if up else S2C
        self.net.hold_new(direction)
        self.holds[(NEW_CALLS, direction)] = self._call(_now)

    def _release_all(self) -> None:
        assert self.net is not None
        net = self.net
        calls = {c.id: c for c in net.streams}
        holds = list(self.holds)
        self.holds.clear()

        async def do() -> None:
            for call_id, direction in holds:
                if call_id == NEW_CALLS:
                    net.release_new(direction)
                    for call in net.streams:  # the calls opened held
                        if call.id not in calls or call.is_held(direction):
                            call.release(direction)
                else:
                    calls[call_id].release(direction)

        self._step(do)

    @rule(seconds=st.sampled_from(ADVANCES))
    def advance(self, seconds: float) -> None:
        """Let virtual time pass."""
        self._advance(seconds)

    def _advance(self, seconds: float) -> None:
        if self.CONFIG.heartbeat_faults and self.holds:
            # only the ``heartbeat_timeout`` rule may let a hold last long enough to time out
            now = self._call(_now)
            if any(now + seconds - since >= SAFE_HOLD for since in self.holds.values()):
                self._release_all()

        async def do() -> None:
            await trio.sleep(seconds)

        self._step(do)
        self._observe(f"advance {seconds:g} s")

    @precondition(lambda self: "settle" in self.kinds)
    @rule()
    def settle(self) -> None:
        """Release everything, let the implementation run for a long while, and require the
        model to be able to settle exactly there."""
        self._settle()

    def _settle(self) -> None:
        if self.holds:
            self._release_all()

        async def do() -> None:
            await trio.sleep(SETTLE_TIME)

        self._step(do)
        what = f"settle ({SETTLE_TIME:g} s, nothing held)"
        self._observe(what)
        assert self.cands is not None
        self.cands.require_settled(what)
        self._require_no_stuck_stream(what)

    def _require_no_stuck_stream(self, what: str) -> None:
        """The one thing about streams the view does not say: in a settled model state every
        stream is either gone or healthy (both ends OPEN, each side's tracker connected), so
        after a long settle with nothing held every open stream call must be one of the
        connected pairs. A call still open beyond them is a stream whose ends are stuck (for
        example both draining, waiting for a half-close that never comes)."""
        view = impl_view(self.clusters)
        connected = min(sum(1 for _peer, up in cl.tracker if up) for cl in view.clusters)
        live = self._live_calls()
        if len(live) > connected:
            self.diverged = True
            raise Divergence(
                f"after: {what}\n{len(live)} stream calls are still open "
                f"(#{', #'.join(str(c.id) for c in live)}) but only {connected} streams are "
                "connected: a stream is stuck, which no settled model state allows")


async def _now() -> float:
    return trio.current_time()


class WriteFaultMachine(ConformanceMachine):
    """The machine for a configuration with ``write_faults``: one more rule."""

    @precondition(lambda self: self.armed_write is None and self._spare_faults() > 0)
    @rule(c=st.integers(0, 1), routine=st.booleans())
    def write_fault(self, c: int, routine: bool) -> None:
        """Arm a failure of cluster ``c``'s next store write by a stream handler (the model's
        ``HandlerWriteFails`` of a stream end of ``c``) or by its deletion routine
        (``RoutineWriteFails(c, _)``)."""
        store = self.clusters[c].store
        fault: FaultFn
        if routine:
            armed = WriteFault(store, ROUTINE_WRITES)

            def fault(w: World, a: object) -> bool:
                return isinstance(a, A.RoutineWriteFails) and a.cluster == c
        else:
            armed = WriteFault(store, HANDLER_WRITES)

            def fault(w: World, a: object) -> bool:
                if not isinstance(a, A.HandlerWriteFails):
                    return False
                st_ = next(x for x in w.streams if x.sid == a.sid)
                return (st_.dialer if a.side == "d" else st_.acceptor) == c

        self.armed_write = (armed, fault)  # nothing to observe until it fires


class HeartbeatFaultMachine(ConformanceMachine):
    """The machine for a configuration with ``heartbeat_faults``: one more rule, and the
    servers' heartbeat timeout finite (``FAULT_HEARTBEAT_TIMEOUT``)."""

    @precondition(lambda self: self._spare_faults() > 0 and bool(self._live_calls())
                  and self._any_enabled(A.HeartbeatTimeout))
    @rule(i=st.integers(0, 3), dialer=st.booleans())
    def heartbeat_timeout(self, i: int, dialer: bool) -> None:
        """Hold the direction into one end of a live stream (the dialer's or the acceptor's)
        and let virtual time run until that end's handler gives up (the model's
        ``HeartbeatTimeout``), or ``FAULT_HEARTBEAT_TIMEOUT`` has passed."""
        direction = S2C if dialer else C2S
        calls = self._live_calls()
        call = calls[i % len(calls)]
        acceptor = next(c for c in self.clusters if c.address == call.address)
        cluster = next(c for c in self.clusters if (c is acceptor) != dialer)
        # nothing else is held long enough to time out (``_advance``): release it all
        if any(k != (call.id, direction) for k in self.holds):
            self._release_all()
        if call.finished:
            return
        self._hold_call(call, direction)
        before = _heartbeat_ends(cluster)

        async def wait() -> None:
            end = trio.current_time() + FAULT_HEARTBEAT_TIMEOUT + 1.0
            # small steps, so that the timeout is seen before the dialer's redial (2 s) clears
            # it from the tracker
            while trio.current_time() < end and not _heartbeat_ends(cluster) - before:
                await trio.sleep(0.5)
                await trio.testing.wait_all_tasks_blocked()

        self._step(wait)
        side = "d" if dialer else "a"
        if _heartbeat_ends(cluster) - before:
            def fault(w: World, a: object) -> bool:
                return isinstance(a, A.HeartbeatTimeout) and a.side == side

            self.timeouts.append(fault)
        self._observe(f"hold {direction} of stream call #{call.id} until the "
                      f"{'dialer' if dialer else 'acceptor'}'s heartbeat timeout")


def _heartbeat_ends(cluster: ImplCluster) -> set[tuple[str, float]]:
    """The (peering ID, time) of each stream end of ``cluster``'s current term that ended by a
    heartbeat timeout and has not reconnected since."""
    term = cluster.server.leadership
    if term is None:
        return set()
    return {(pid, s.disconnect_time) for pid, s in term.tracker.all_statuses().items()
            if s.disconnect_error_message == ERR_HEARTBEAT_TIMEOUT
            and s.disconnect_time is not None}


STORES = ("memory", "sqlite")


def machine_for(impl_bugs: Iterable[str] = (), model_bugs: Iterable[str] = (),
                config: Config = CONFORMANCE_CONFIG,
                final_settle: bool = True, store: str = "memory",
                impl_mutants: Iterable[str] = ()) -> type[ConformanceMachine]:
    """A state machine class with the given bug switches (implementation / model), mutants of
    the catalog in the implementation (``peerkit.impl.mutants``; the model is unmutated) and
    store backend (``STORES``)."""
    if store not in STORES:
        raise ValueError(f"store must be one of {', '.join(STORES)}, got {store!r}")
    settle_at_end = final_settle
    bases = tuple(m for on, m in ((config.write_faults, WriteFaultMachine),
                                  (config.heartbeat_faults, HeartbeatFaultMachine)) if on)

    class Machine(*(bases or (ConformanceMachine,))):  # type: ignore[misc]
        IMPL_BUGS = frozenset(impl_bugs)
        IMPL_MUTANTS = frozenset(impl_mutants)
        MODEL_BUGS = frozenset(model_bugs)
        CONFIG = config
        STORE = store
        COVERED: ClassVar[set[EdgeKey]] = set()
        STATS: ClassVar[dict[str, int]] = {}

        def teardown(self) -> None:
            try:
                if settle_at_end and self.run is not None and self.cands is not None \
                        and not self.diverged:
                    self._settle()
            finally:
                super().teardown()

    Machine.__name__ = Machine.__qualname__ = "Conformance" + "".join(
        "_" + b.replace("-", "_") for b in sorted(Machine.IMPL_BUGS)) + "".join(
        "_mutant_" + "".join(ch if ch.isalnum() else "_" for ch in m)
        for m in sorted(Machine.IMPL_MUTANTS)) + ("_sqlite" if store == "sqlite" else "") + (
        "_write_faults" if config.write_faults else "") + (
        "_heartbeat_faults" if config.heartbeat_faults else "")
    return Machine


#: one rule call of a scenario: the rule's name and its arguments
Step = tuple[str, dict[str, object]]


def run_scenario(steps: Iterable[Step], *, eof_first: bool = False, gap: float = 0.0,
                 **machine: object) -> ConformanceMachine:
    """Replay ``steps`` (rule calls) after ``setup`` (seed 0, slow pacing, ``gap`` seconds
    between token and establishment, ``eof_first``) on ``machine_for(**machine)``, then settle;
    returns the torn-down machine (its ``cands.covered``). A divergence propagates."""
    m = machine_for(**machine)()  # type: ignore[arg-type]
    try:
        m.setup(seed=0, upstream_pacing=False, establish_after=gap, eof_first=eof_first)
        for name, kwargs in steps:
            getattr(m, name)(**kwargs)
        m._settle()
    except Divergence:
        m.diverged = True
        raise
    finally:
        m.teardown()
    return m


def _counter(prefix: str, numbers: Iterator[int]) -> Callable[[], str]:
    """Deterministic IDs and secrets (prefix + a number), so that runs replay exactly."""

    def make() -> str:
        return f"{prefix}{next(numbers)}"

    return make
