"""The peering model's rules: which actions are enabled in a world, and what each one does.

Theory of operation
-------------------
A world (state.py) is N clusters and the streams between them. Every change is one action
(actions.py). `PeeringModel.enabled(world)` lists the actions that would change the world;
`PeeringModel.step(world, action)` returns the next world, or raises `IllegalAction` (with the
reason, e.g. the store's error string) and changes nothing, for an action that is not enabled.

The protocol's decisions are in the tables (tables.py): the row lifecycle and the stream-handler
table. This file reads them and does the bookkeeping: it classifies what a handler receives into a
table input, runs the effects the table names, and finishes an endpoint whose handler returned
(its inbound channel is dropped; its outbound channel ends: EOF for a server handler that returned,
a reset for a client whose call was abandoned). A stream whose two ends are done disappears.

Channels are FIFO. Ends after the last message ("EOF", "error status") keep their place; a
"reset" can overtake queued messages: the receiver may get the next message or the reset. A Python
gRPC server may first see a client's cancel as end-of-stream ("eof" delivery).

Everything here is pure: no I/O, no clock, no randomness; worlds are never mutated.

Import rules: standard library and ``peerkit.model`` only.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

from . import actions as A
from .config import Config
from .mutants import get_mutant
from .state import (
    DELETING,
    DONE,
    EOF,
    ERROR,
    LIVE,
    MSG_ACK,
    MSG_NACK,
    MSG_OPEN,
    MSG_RESPONSE,
    MSG_TERMINATED,
    NEW,
    OPEN,
    RESET,
    ROOTS,
    SERVICE_LIST,
    TERMINATED,
    Budget,
    Channel,
    Cluster,
    Ghost,
    Imported,
    Message,
    Pair,
    Row,
    Stream,
    Track,
    World,
    pair_of,
)
from .tables import (
    ACCEPTOR,
    DELETION_FINISHED,
    DIALER,
    ESTABLISH,
    GENERATE_TOKEN,
    IMPOSSIBLE,
    IN_EOF,
    IN_ERROR,
    IN_RESET,
    OPEN_DELETED,
    OPEN_DUPLICATE,
    OPEN_TERMINATED,
    OPEN_UNKNOWN,
    OPEN_VALID,
    REMOVED,
    ROUTINE_BUGS,
    TEARDOWN,
    TERMINATED_RECEIVED,
    USER_DELETE,
    LifecycleNext,
    Outcome,
    Refused,
    endpoint_table,
    lifecycle_table,
)
from .vocabulary import (
    ERR_DELETE_UNMARKED,
    ERR_WRITE_MARKED,
    validate_bugs,
)

_END_INPUT = {EOF: IN_EOF, ERROR: IN_ERROR, RESET: IN_RESET}
_MSG_INPUT = {MSG_RESPONSE: "Response", MSG_ACK: "Ack", MSG_NACK: "Nack",
              MSG_TERMINATED: "Terminated"}


class IllegalAction(Exception):
    """The action is not enabled in this world; the world is unchanged."""


class SetupError(Exception):
    """The configuration's starting world cannot be reached by the model's own steps."""


class ProtocolError(Exception):
    """A handler met an input its table does not allow (a bug in the model or the tables)."""


def _sorted_tuple(items: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(sorted(items))


class PeeringModel:
    """The peering model for one configuration and one set of bug switches."""

    def __init__(self, config: Config, bugs: Collection[str] = (),
                 mutant: str | None = None) -> None:
        if not isinstance(config, Config):
            raise TypeError(f"config must be a Config, not {type(config).__name__}")
        self.config = config
        self.bugs = validate_bugs(bugs)
        self.mutant = get_mutant(mutant) if mutant is not None else None
        self.lifecycle = lifecycle_table(self.bugs)
        self.endpoint = endpoint_table(self.bugs)
        #: the routine switches in force: the routine bugs switched on, and the mutant's switch
        self.switches = frozenset(b for b in self.bugs if b in ROUTINE_BUGS)
        if self.mutant is not None:
            self.lifecycle.update(self.mutant.lifecycle)
            self.endpoint.update(self.mutant.endpoint)
            if self.mutant.switch:
                self.switches |= {self.mutant.switch}
        self.stored_map_bug = "stored-map" in self.switches
        self.dial_inactive = "dial-inactive" in self.switches
        self.export_when_inactive = "export-when-inactive" in self.switches
        self.deletion_no_stop_bug = "deletion-no-stop" in self.switches
        self._deletion_guard_inverted = "deletion-guard-inverted" in self.switches
        #: the deletion routine's order of writes for one peering (upstream: nodes, bundle, row)
        self._deletion_order = ("nodes", "bundle", "row")
        for switch, order in (("deletion-row-first", ("row", "nodes", "bundle")),
                              ("deletion-row-before-bundle", ("nodes", "row", "bundle")),
                              ("deletion-bundle-first", ("bundle", "nodes", "row"))):
            if switch in self.switches:
                self._deletion_order = order
        self.name = (f"peering[{config.name}{''.join(' +' + b for b in sorted(self.bugs))}"
                     f"{' mutant ' + self.mutant.name if self.mutant else ''}]")
        self.resources = (ROOTS, *config.services)
        from .properties import Properties  # properties reads the model's helpers

        props = Properties(self)
        self.invariants = props.invariants
        self.transition_invariants = props.transition_invariants
        self.liveness = props.liveness
        self.reductions: tuple[()] = ()  # no reduction: see specs/model.md, "Reductions"
        #: each action type's `_do_<Type>` method, looked up once here rather than per step
        self._handlers: dict[type, Callable[[World, Any], World]] = {
            cls: getattr(self, "_do_" + name) for name, cls in A.ACTION_TYPES.items()
        }

    def format_action(self, action: object) -> str:
        from .render import describe_action

        return describe_action(action)

    # =========================================================================================
    # the initial world
    # =========================================================================================
    def initial(self) -> World:
        cfg = self.config
        clusters = []
        for c in range(cfg.clusters):
            exporter = c == cfg.exporter or c in cfg.also_exporting
            registered = tuple(sorted(cfg.services)) if exporter else ()
            exports: tuple[tuple[str, int], ...] = ()
            if exporter and cfg.exported_at_start:
                exports = tuple(sorted((s, p) for s in cfg.services
                                       for p in range(cfg.clusters) if p != c))
            clusters.append(Cluster(
                term=1, rows=(), next_gen=1, imported=(), registered=registered,
                exports=exports, tracker=(), sync_due=False, snapshot=None, dialing=(),
                deleters=(1,),
            ))
        budget = Budget(cfg.tokens, cfg.establishes, cfg.deletes, cfg.cleanups, cfg.churn,
                        cfg.faults, cfg.failovers)
        world = World(tuple(clusters), (), (), budget, Ghost())
        if cfg.start == "established":
            world = self._establish(world)
        return world

    def _establish(self, w: World) -> World:
        """Drive the empty world to an established, replicated peering between the first two
        clusters, with the model's own steps: cluster 0 generates a token, cluster 1 establishes
        it, then protocol steps run (the first enabled one each time, except the acceptor's sync
        pass) until nothing is left to do. The budgets of the configuration are untouched."""
        budget = w.budget
        w = w._replace(budget=budget._replace(tokens=1, establishes=1))
        w = self.step(w, A.GenerateToken(0, 1))
        if not w.tokens:
            raise SetupError("the established start cannot be reached: GenerateToken made no "
                             "token")
        w = self.step(w, A.Establish(1, 0, w.tokens[0][1]))
        for _ in range(1000):
            todo = [a for a in self.enabled(w) if A.is_protocol(a)
                    and not (isinstance(a, A.Sync | A.SyncSnapshot | A.SyncApply)
                             and a.cluster == 0)]
            if not todo:
                break
            w = self._apply(w, todo[0])
        else:
            raise SetupError("the established start cannot be reached: setting up the "
                             "peering did not settle")
        if not any(st.d_phase == OPEN and st.a_phase == OPEN for st in w.streams):
            raise SetupError("the established start cannot be reached: no stream connects "
                             "the two clusters after the set-up")
        return w._replace(budget=budget._replace(tokens=budget.tokens,
                                                 establishes=budget.establishes))

    def initial_states(self) -> list[World]:
        return [self.initial()]

    # =========================================================================================
    # enabled
    # =========================================================================================
    def enabled(self, w: World) -> list[A.Action]:
        out: list[A.Action] = []
        self._enabled_protocol(w, out)
        self._enabled_operator(w, out)
        self._enabled_faults(w, out)
        return out

    def successors(self, w: World) -> Iterator[tuple[A.Action, World]]:
        handlers = self._handlers
        for action in self.enabled(w):
            yield action, handlers[type(action)](w, action)

    def protocol_successors(self, w: World) -> Iterator[tuple[A.Action, World]]:
        """``successors`` restricted to the protocol actions (the steps the clusters take on
        their own), without listing the operator and fault actions: what the conformance kit's
        candidate search closes over."""
        out: list[A.Action] = []
        self._enabled_protocol(w, out)
        handlers = self._handlers
        for action in out:
            yield action, handlers[type(action)](w, action)

    def _enabled_operator(self, w: World, out: list[A.Action]) -> None:
        b = w.budget
        n = len(w.clusters)
        for c, cl in enumerate(w.clusters):
            for p in range(n):
                if p == c:
                    continue
                row = cl.row(p)
                if b.tokens and self._writes_again(row, ACCEPTOR, GENERATE_TOKEN):
                    out.append(A.GenerateToken(c, p))
                if b.establishes and self._writes_again(row, DIALER, ESTABLISH):
                    for (a, g) in w.tokens:
                        if a == p and (row is None
                                       or self._may_reestablish(w, c, row, g) is None):
                            out.append(A.Establish(c, a, g))
                if row is not None and row.state != DELETING and (
                    b.cleanups if row.state == TERMINATED else b.deletes
                ):
                    # A refused delete (a bug) still spends the budget and records the request.
                    out.append(A.Delete(c, p))
            if b.churn:
                for s in self.config.services:
                    if s in cl.registered:
                        out.append(A.Deregister(c, s))
                    else:
                        out.append(A.Register(c, s))
                    for p in range(n):
                        if p != c:
                            if (s, p) in cl.exports:
                                out.append(A.Unexport(c, s, p))
                            else:
                                out.append(A.Export(c, s, p))

    def _enabled_faults(self, w: World, out: list[A.Action]) -> None:
        b = w.budget
        if b.faults:
            for st in w.streams:
                if (st.a_phase != DONE and st.up.end != RESET) or (
                    st.d_phase != DONE and st.down.end != RESET
                ):
                    out.append(A.Reset(st.sid))
                if self.config.heartbeat_faults:
                    if st.d_phase == OPEN:
                        out.append(A.HeartbeatTimeout(st.sid, "d"))
                    if st.a_phase == OPEN:
                        out.append(A.HeartbeatTimeout(st.sid, "a"))
        if b.failovers:
            for c in range(len(w.clusters)):
                out.append(A.Failover(c))
        if b.faults and self.config.write_faults:
            for st in w.streams:
                for side in ("d", "a"):
                    if (st.d_phase if side == "d" else st.a_phase) != OPEN:
                        continue
                    inbound = st.down if side == "d" else st.up
                    if inbound.msgs and inbound.msgs[0][0] in (MSG_RESPONSE, MSG_TERMINATED):
                        out.append(A.HandlerWriteFails(st.sid, side))
            for c, cl in enumerate(w.clusters):
                if cl.term in cl.deleters:
                    for row in cl.rows:
                        if self._deletion_step(cl, row) is not None:
                            out.append(A.RoutineWriteFails(c, row.peer))

    def _enabled_protocol(self, w: World, out: list[A.Action]) -> None:
        for c, cl in enumerate(w.clusters):
            if cl.snapshot is not None:
                out.append(A.SyncApply(c))
            elif cl.sync_due:
                out.append(A.SyncSnapshot(c) if self.config.split_sync else A.Sync(c))
            for gen in cl.dialing:
                row = cl.row_by_gen(gen)
                if row is not None and (row.active or self.dial_inactive) \
                        and not self._dialer_end_live(w, c, gen):
                    out.append(A.Dial(c, gen))
            # only the deletion routine of the current leader's term writes
            if cl.term in cl.deleters or "deletion-without-routine" in self.switches:
                for row in cl.rows:
                    step = self._deletion_step(cl, row)
                    if step is not None:
                        out.append(step(c, row.peer))
            if cl.deleters and cl.deleters[0] != cl.term:
                out.append(A.Spin(c))
        for st in w.streams:
            for side in ("d", "a"):
                phase = st.d_phase if side == "d" else st.a_phase
                if phase == DONE:
                    continue
                inbound = st.down if side == "d" else st.up
                if inbound.msgs:
                    out.append(A.Deliver(st.sid, side, "msg"))
                    if inbound.end == RESET:
                        out.append(A.Deliver(st.sid, side, "reset"))
                elif inbound.end != LIVE:
                    out.append(A.Deliver(st.sid, side, "end"))
                if (side == "a" and inbound.end == RESET and self.config.python_server_eof_first):
                    out.append(A.Deliver(st.sid, side, "eof"))
                if phase == OPEN:
                    done = st.d_done if side == "d" else st.a_done
                    if done:
                        out.append(A.SendTerminated(st.sid, side))
                    if self._pending_publishes(w, st, side):
                        out.append(A.Publish(st.sid, side))

    def _writes_again(self, row: Row | None, role: str, event: str) -> bool:
        """Whether the operator's creating call `event` is offered for the row of that name: no
        row yet, or a row of this role that the lifecycle lets the call rewrite (upstream:
        GenerateToken on a PENDING row, Establish on an ESTABLISHING one). A refused call on an
        existing row changes nothing and is not offered (why_not explains it)."""
        if row is None:
            return True
        return self._role(row) == role and not isinstance(
            self.lifecycle.get((role, row.state, event)), Refused)

    def _may_reestablish(self, w: World, c: int, row: Row, token_gen: int) -> str | None:
        """Why cluster `c` may not re-establish its dialer `row` with the token of its peer's
        row `token_gen` (None: it may).

        The token must belong to an active acceptor row issued for `c`: otherwise the
        implementation's ExchangeSecret is refused and nothing is written (peerkit writes only
        after the exchange; secrets are not modelled, so the model asks the row instead).
        And the row must have no live stream: the model explores re-establishing only between
        streams, because a Terminated still in flight on the old stream would terminate the
        re-established peering (upstream reuses the row's ID; specs/findings.md F8)."""
        acc = w.clusters[row.peer].row_by_gen(token_gen)
        if acc is None or acc.dialer or not acc.active or acc.peer != c:
            return "the token is not one of an active peering issued for this cluster"
        if self._dialer_end_live(w, c, row.gen):
            return "the peering has a live stream (the model re-establishes between streams)"
        return None

    def _deletion_step(self, cl: Cluster, row: Row
                       ) -> type[A.DeleteNodes | A.DeleteBundle | A.DeleteRow] | None:
        """The deletion routine's next write for `row`, in upstream's order: nodes, then the
        trust bundle, then the row (unless the lifecycle keeps it); None if it has none."""
        if row.active != self._deletion_guard_inverted:
            return None
        imp = cl.imports_from(row.peer)
        order = self._deletion_order
        for kind in order:
            if kind == "nodes" and imp is not None and imp.services:
                return A.DeleteNodes
            if kind == "bundle" and imp is not None and imp.bundle:
                return A.DeleteBundle
            if kind == "row" and not isinstance(
                    self.lifecycle[self._role(row), row.state, DELETION_FINISHED], Refused):
                return A.DeleteRow
        return None

    def _dialer_end_live(self, w: World, c: int, gen: int) -> bool:
        for st in w.streams:
            if st.dialer == c and st.dialer_gen == gen and st.d_phase != DONE:
                return True
        return False

    def export_view(self, cl: Cluster, peer: int, resource: str) -> bool:
        """Whether `cl` exports `resource` to the peer named `peer` (the trust bundle: always)."""
        if resource == ROOTS:
            return True
        return resource in cl.registered and (resource, peer) in cl.exports

    def _pending_publishes(self, w: World, st: Stream, side: str) -> tuple[str, ...]:
        """The services whose export to the peer differs from what this end last published."""
        c, gen, peer = self._side(st, side)
        cl = w.clusters[c]
        row = cl.row_by_gen(gen)
        # peerkit: an inactive peering exports nothing (PeeringsForService skips it, §7.2); the
        # trust bundle goes out once, when the handler starts.
        if row is None or (not row.active and not self.export_when_inactive):
            return ()
        outbound = st.up if side == "d" else st.down
        if outbound.end != LIVE:
            return ()
        sent = dict(st.d_sent if side == "d" else st.a_sent)
        return tuple(res for res in self.config.services
                     if self.export_view(cl, peer, res) != sent.get(res, False))

    @staticmethod
    def _side(st: Stream, side: str) -> tuple[int, int, int]:
        """(cluster, local row ID, peer cluster) of one end of a stream."""
        if side == "d":
            return st.dialer, st.dialer_gen, st.acceptor
        return st.acceptor, st.peer_gen, st.dialer

    @staticmethod
    def _role(row: Row) -> str:
        return DIALER if row.dialer else ACCEPTOR

    # =========================================================================================
    # step
    # =========================================================================================
    def step(self, w: World, action: A.Action) -> World:
        """The world after `action`; IllegalAction if it is not enabled (nothing changes)."""
        if action not in self.enabled(w):
            raise IllegalAction(self.why_not(w, action))
        return self._apply(w, action)

    def _apply(self, w: World, action: A.Action) -> World:
        return self._handlers[type(action)](w, action)

    def why_not(self, w: World, action: object) -> str:
        """Explain why `action` is not enabled in `w` (for errors and tests)."""
        try:
            kind = A.kind_of(action)
        except TypeError as exc:
            return str(exc)
        b = w.budget
        budget_of = {
            "GenerateToken": ("tokens", b.tokens), "Establish": ("establishes", b.establishes),
            "Delete": ("deletes", b.deletes), "Register": ("churn", b.churn),
            "Deregister": ("churn", b.churn), "Export": ("churn", b.churn),
            "Unexport": ("churn", b.churn), "Reset": ("faults", b.faults),
            "HeartbeatTimeout": ("faults", b.faults), "Failover": ("failovers", b.failovers),
        }
        name = type(action).__name__
        if isinstance(action, A.Delete) and 0 <= getattr(action, "cluster", -1) < len(w.clusters):
            row = w.clusters[action.cluster].row(action.peer)
            if row is not None and row.state == TERMINATED:
                budget_of["Delete"] = ("cleanups", b.cleanups)
        if name in budget_of and budget_of[name][1] == 0:
            return f"{name}: the {budget_of[name][0]} budget is spent"
        cluster = getattr(action, "cluster", None)
        if cluster is not None and not (
            isinstance(cluster, int) and 0 <= cluster < len(w.clusters)
        ):
            return f"{name}: there is no cluster {cluster!r}"
        if isinstance(action, A.GenerateToken | A.Establish):
            peer = action.peer if isinstance(action, A.GenerateToken) else action.acceptor
            if peer == action.cluster:
                return f"{name}: a cluster cannot peer with itself"
            cl = w.clusters[action.cluster]
            row = cl.row(peer) if isinstance(peer, int) else None
            role = ACCEPTOR if isinstance(action, A.GenerateToken) else DIALER
            if row is not None and not self._writes_again(
                    row, role, GENERATE_TOKEN if role == ACCEPTOR else ESTABLISH):
                if self._role(row) != role:
                    return f"{name}: the peering with this name is the other role's"
                if row.active:
                    return f"{name}: refused"
                return f"{name}: {ERR_WRITE_MARKED}"
            if isinstance(action, A.Establish) and (
                (action.acceptor, action.token_gen) not in w.tokens
            ):
                return f"{name}: no such token was issued"
            if isinstance(action, A.Establish) and row is not None:
                why = self._may_reestablish(w, action.cluster, row, action.token_gen)
                if why is not None:
                    return f"{name}: {why}"
        if isinstance(action, A.Delete):
            row = w.clusters[action.cluster].row(action.peer)
            if row is None:
                return f"{name}: there is no such peering (a no-op)"
            if row.state == DELETING:
                return f"{name}: already marked for deletion (a no-op)"
        if isinstance(action, A.DeleteRow):
            row = w.clusters[action.cluster].row(action.peer)
            if row is not None and row.active:
                return f"{name}: {ERR_DELETE_UNMARKED}"
        return f"{name} ({kind}) is not enabled in this state"

    # -- small world editors ------------------------------------------------------------------
    @staticmethod
    def _set_cluster(w: World, c: int, cl: Cluster) -> World:
        clusters = w.clusters
        if clusters[c] is cl:
            return w  # unchanged: keep the same tuple, so properties can skip the comparison
        return w._replace(clusters=(*clusters[:c], cl, *clusters[c + 1:]))

    @staticmethod
    def _set_stream(w: World, st: Stream | None, sid: int) -> World:
        """Replace stream `sid` by `st`, or remove it (st None, or both ends done)."""
        if st is not None and st.d_phase == DONE and st.a_phase == DONE:
            st = None
        streams = w.streams
        for i, old in enumerate(streams):
            if old.sid == sid:
                # the common case: a stream changes in place (the list stays sorted by sid)
                if st is old:
                    return w
                if st is None:
                    return w._replace(streams=(*streams[:i], *streams[i + 1:]))
                if st.sid == sid:
                    return w._replace(streams=(*streams[:i], st, *streams[i + 1:]))
                streams = (*streams[:i], *streams[i + 1:])
                break
        if st is not None:
            streams = tuple(sorted((*streams, st)))
        return w._replace(streams=streams)

    @staticmethod
    def _stream(w: World, sid: int) -> Stream:
        for st in w.streams:
            if st.sid == sid:
                return st
        raise IllegalAction(f"there is no stream {sid}")

    @staticmethod
    def _with_row(cl: Cluster, row: Row | None, peer: int) -> Cluster:
        rows = tuple(r for r in cl.rows if r.peer != peer)
        if row is not None:
            rows = tuple(sorted((*rows, row)))
        return cl._replace(rows=rows)

    @staticmethod
    def _without_dialing(cl: Cluster, gen: int) -> Cluster:
        if gen in cl.dialing:
            return cl._replace(dialing=tuple(g for g in cl.dialing if g != gen))
        return cl

    def _set_row_state(self, w: World, c: int, row: Row, state: int) -> World:
        """Write a row's new stored state (or remove it); the peering watch fires."""
        cl = w.clusters[c]
        if state == REMOVED:
            cl = self._with_row(cl, None, row.peer)
        else:
            cl = self._with_row(cl, row._replace(state=state), row.peer)
        if state in (REMOVED, DELETING, TERMINATED) and not (
                self.dial_inactive and state != REMOVED):
            cl = self._without_dialing(cl, row.gen)
        return self._set_cluster(w, c, cl._replace(sync_due=True))

    # -- operator -----------------------------------------------------------------------------
    def _do_GenerateToken(self, w: World, a: A.GenerateToken) -> World:
        cl = w.clusters[a.cluster]
        old = cl.row(a.peer)
        nxt = self.lifecycle[ACCEPTOR, None if old is None else old.state, GENERATE_TOKEN]
        if isinstance(nxt, Refused):  # only a mutant refuses: the RPC fails, the budget is spent
            return w._replace(budget=w.budget._replace(tokens=w.budget.tokens - 1))
        if old is not None:
            # the same row (same ID) with a fresh establishment secret, which the model does not
            # hold: the token is the one already issued for this row; the write fires the watch
            assert (a.cluster, old.gen) in w.tokens
            cl = self._with_row(cl, old._replace(state=nxt), a.peer)._replace(sync_due=True)
            w = self._set_cluster(w, a.cluster, cl)
            return w._replace(budget=w.budget._replace(tokens=w.budget.tokens - 1))
        row = Row(peer=a.peer, gen=cl.next_gen, state=nxt, peer_gen=0, dialer=False)
        cl = self._with_row(cl, row, a.peer)._replace(next_gen=cl.next_gen + 1, sync_due=True)
        w = self._set_cluster(w, a.cluster, cl)
        return w._replace(tokens=tuple(sorted((*w.tokens, (a.cluster, row.gen)))),
                          budget=w.budget._replace(tokens=w.budget.tokens - 1))

    def _do_Establish(self, w: World, a: A.Establish) -> World:
        cl = w.clusters[a.cluster]
        old = cl.row(a.acceptor)
        nxt = self.lifecycle[DIALER, None if old is None else old.state, ESTABLISH]
        if isinstance(nxt, Refused):  # only a mutant refuses: the RPC fails, the budget is spent
            return w._replace(budget=w.budget._replace(establishes=w.budget.establishes - 1))
        if old is not None:
            # re-establish: the same row (same ID, so its tracker entry, its dialer and any live
            # stream stay its own) now names the token's acceptor row. A connected stream is left
            # alone; the new PeerID is used from the next dial (upstream syncPeeringsAndBlock
            # skips a connected peering). `linked` is about the pair, which is a new one.
            row = old._replace(state=nxt, peer_gen=a.token_gen,
                               linked=old.linked and old.peer_gen == a.token_gen)
            cl = self._with_row(cl, row, a.acceptor)._replace(sync_due=True)
            w = self._set_cluster(w, a.cluster, cl)
            return w._replace(budget=w.budget._replace(establishes=w.budget.establishes - 1))
        row = Row(peer=a.acceptor, gen=cl.next_gen, state=nxt, peer_gen=a.token_gen,
                  dialer=True)
        cl = self._with_row(cl, row, a.acceptor)._replace(next_gen=cl.next_gen + 1,
                                                          sync_due=True)
        w = self._set_cluster(w, a.cluster, cl)
        return w._replace(budget=w.budget._replace(establishes=w.budget.establishes - 1))

    def _do_Delete(self, w: World, a: A.Delete) -> World:
        row = w.clusters[a.cluster].row(a.peer)
        assert row is not None
        nxt: LifecycleNext = self.lifecycle[self._role(row), row.state, USER_DELETE]
        pair = pair_of(a.cluster, row)
        if row.active and not self._healthy_stream(w, pair):
            # no stream can carry Terminated: a dialer row's peer will never be told; an
            # acceptor row's peer is told only if it dials before the row is removed
            w = self._ghost_add(w, "unannounced" if not row.dialer else "excused", pair)
        if not isinstance(nxt, Refused):
            w = self._set_row_state(w, a.cluster, row, nxt)
        w = self._ghost_add(w, "deleted_by", (pair, a.cluster))
        ghost = w.ghost
        key = (a.cluster, row.gen)
        if key not in ghost.user_deleted:
            ghost = ghost._replace(user_deleted=tuple(sorted((*ghost.user_deleted, key))))
        if row.state == TERMINATED:
            budget = w.budget._replace(cleanups=w.budget.cleanups - 1)
        else:
            budget = w.budget._replace(deletes=w.budget.deletes - 1)
        return w._replace(ghost=ghost, budget=budget)

    def _churn(self, w: World, c: int, cl: Cluster) -> World:
        w = self._set_cluster(w, c, cl)
        return w._replace(budget=w.budget._replace(churn=w.budget.churn - 1))

    def _do_Register(self, w: World, a: A.Register) -> World:
        cl = w.clusters[a.cluster]
        return self._churn(w, a.cluster,
                           cl._replace(registered=_sorted_tuple((*cl.registered, a.service))))

    def _do_Deregister(self, w: World, a: A.Deregister) -> World:
        cl = w.clusters[a.cluster]
        return self._churn(w, a.cluster, cl._replace(
            registered=tuple(s for s in cl.registered if s != a.service)))

    def _do_Export(self, w: World, a: A.Export) -> World:
        cl = w.clusters[a.cluster]
        return self._churn(w, a.cluster, cl._replace(
            exports=_sorted_tuple((*cl.exports, (a.service, a.peer)))))

    def _do_Unexport(self, w: World, a: A.Unexport) -> World:
        cl = w.clusters[a.cluster]
        return self._churn(w, a.cluster, cl._replace(
            exports=tuple(e for e in cl.exports if e != (a.service, a.peer))))

    # -- faults -------------------------------------------------------------------------------
    def _spend(self, w: World, **spent: int) -> World:
        return w._replace(budget=w.budget._replace(**spent))

    # -- ghost: the windows in which a fault excuses an untold peer (finding F2) ---------------
    def _excuse_if_terminating(self, w: World, st: Stream) -> World:
        """A fault hits stream `st`. If either of its rows is inactive or gone, `Terminated` may
        be pending, in flight or about to be sent on it: its pair is excused from clause (d)."""
        for c, gen in ((st.dialer, st.dialer_gen), (st.acceptor, st.peer_gen)):
            row = w.clusters[c].row_by_gen(gen)
            if row is None or not row.active:
                return self._ghost_add(w, "excused", (st.acceptor, st.peer_gen))
        return w

    @staticmethod
    def _ghost_add(w: World, name: str, item: object) -> World:
        have: tuple[object, ...] = getattr(w.ghost, name)
        if item in have:
            return w
        return w._replace(ghost=w.ghost._replace(**{name: _sorted_tuple((*have, item))}))

    @staticmethod
    def _ghost_remove(w: World, name: str, item: object) -> World:
        have: tuple[object, ...] = getattr(w.ghost, name)
        if item not in have:
            return w
        kept: Any = tuple(x for x in have if x != item)
        return w._replace(ghost=w.ghost._replace(**{name: kept}))

    @staticmethod
    def _healthy_stream(w: World, pair: Pair) -> bool:
        """Some accepted stream joins the pair's two rows with both handlers serving and both
        directions open, so a teardown on either side can reach the other. (A dial still in
        flight does not count: the acceptor answers it from the row, see `_deliver`.)"""
        for st in w.streams:
            if ((st.acceptor, st.peer_gen) == pair and st.d_phase == OPEN
                    and st.a_phase == OPEN and st.up.end == LIVE and st.down.end == LIVE):
                return True
        return False

    def _do_Reset(self, w: World, a: A.Reset) -> World:
        st = self._stream(w, a.sid)
        w = self._excuse_if_terminating(w, st)
        st = st._replace(up=st.up._replace(end=RESET), down=st.down._replace(end=RESET))
        if st.d_phase == DONE:
            st = st._replace(down=Channel((), RESET))
        if st.a_phase == DONE:
            st = st._replace(up=Channel((), RESET))
        w = self._set_stream(w, st, a.sid)
        return self._spend(w, faults=w.budget.faults - 1)

    def _do_HeartbeatTimeout(self, w: World, a: A.HeartbeatTimeout) -> World:
        st = self._stream(w, a.sid)
        w = self._excuse_if_terminating(w, st)
        c, gen, _ = self._side(st, a.side)
        w = self._track_disconnect(w, c, gen)
        # the handler returns an error: the dialer abandons its call, the acceptor's RPC fails
        w, st = self._finish(w, st, a.side, error=True)
        w = self._set_stream(w, st, a.sid)
        return self._spend(w, faults=w.budget.faults - 1)

    def _do_Failover(self, w: World, a: A.Failover) -> World:
        c = a.cluster
        cl = w.clusters[c]
        # With the bug, a deletion routine that was busy (some inactive peering still had work)
        # neither is stopped nor checks its cancelled context: it keeps looping on the deposed
        # leader. One that was blocked on its watch returns when the watch fails.
        busy = self.deletion_no_stop_bug and self._has_deletion_work(cl)
        # leadership loss stops the routines of this term (#17483); the new leader starts its own
        kept = tuple(t for t in cl.deleters if t != cl.term or busy)
        started = () if self.switches & {"no-deletion-on-new-leader",
                                         "deletion-without-routine"} else (cl.term + 1,)
        tracker = cl.tracker if "failover-keeps-tracker" in self.switches else ()
        cl = cl._replace(term=cl.term + 1, tracker=tracker, sync_due=True, snapshot=None,
                         dialing=(), deleters=(*kept, *started))
        w = self._set_cluster(w, c, cl)
        # every handler the old leader ran is gone; its peers see their streams reset
        for st in w.streams:
            if (st.dialer == c and st.d_phase != DONE) or (st.acceptor == c
                                                          and st.a_phase != DONE):
                w = self._excuse_if_terminating(w, st)
        for st in w.streams:
            new = st
            if st.dialer == c and new.d_phase != DONE:
                new = new._replace(d_phase=DONE, down=Channel((), RESET),
                                   up=new.up._replace(end=RESET))
            if st.acceptor == c and new.a_phase != DONE:
                new = new._replace(a_phase=DONE, up=Channel((), RESET),
                                   down=new.down._replace(end=RESET))
            if new is not st:
                w = self._set_stream(w, new, st.sid)
        return self._spend(w, failovers=w.budget.failovers - 1)

    # -- leader routines ----------------------------------------------------------------------
    def _do_SyncSnapshot(self, w: World, a: A.SyncSnapshot) -> World:
        return self._sync_snapshot(w, a.cluster)

    def _sync_snapshot(self, w: World, c: int) -> World:
        cl = w.clusters[c]
        if "sync-list-before-snapshot" in self.switches:
            # the mistake: the first half lists the peerings; the streams are copied later
            return self._set_cluster(w, c, cl._replace(
                sync_due=False, snapshot=tuple(sorted(self._stored(cl)))))
        snapshot = tuple(t.gen for t in cl.tracker if t.connected)
        return self._set_cluster(w, c, cl._replace(sync_due=False, snapshot=snapshot))

    def _do_SyncApply(self, w: World, a: A.SyncApply) -> World:
        return self._sync_apply(w, a.cluster)

    def _sync_apply(self, w: World, c: int) -> World:
        cl = w.clusters[c]
        assert cl.snapshot is not None
        snapshot = cl.snapshot
        stored = self._stored(cl)
        if "sync-list-before-snapshot" in self.switches:
            snapshot, stored = tuple(t.gen for t in cl.tracker if t.connected), set(snapshot)
        dialing = set(cl.dialing)
        for row in cl.rows:
            if not row.active or not row.dialer or "sync-no-redial" in self.switches:
                continue
            track = cl.track(row.gen)
            if (track is None or not track.connected) and not self._dialer_end_live(w, c, row.gen):
                dialing.add(row.gen)
        # the pass also forgets the tracker entries of ended streams whose row is gone: nothing
        # else ever removes them (a stream reset before its peering was deleted), and an
        # operator's status list would grow with every such peering (issue 8)
        tracker = tuple(t for t in cl.tracker if t.connected or cl.row_by_gen(t.gen) is not None)
        w = self._set_cluster(w, c, cl._replace(snapshot=None, dialing=tuple(sorted(dialing)),
                                                tracker=tracker))
        teardown_stored = "sync-teardown-stored" in self.switches
        for gen in snapshot:
            if (gen in stored) != teardown_stored:
                continue
            for st in w.streams:
                if st.dialer == c and st.dialer_gen == gen and st.d_phase == OPEN \
                        and not st.d_done:
                    w = self._set_stream(w, st._replace(d_done=True), st.sid)
                elif st.acceptor == c and st.peer_gen == gen and st.a_phase == OPEN \
                        and not st.a_done:
                    w = self._set_stream(w, st._replace(a_done=True), st.sid)
        return w

    def _stored(self, cl: Cluster) -> set[int]:
        """The sync pass's stored map: every active peering (the seed's fix), whatever its role;
        inactive ones are skipped."""
        stored = set()
        for row in cl.rows:
            if not row.active and "sync-keeps-inactive" not in self.switches:
                continue
            if not self.stored_map_bug or row.dialer:
                stored.add(row.gen)
        return stored

    def _do_Sync(self, w: World, a: A.Sync) -> World:
        return self._sync_apply(self._sync_snapshot(w, a.cluster), a.cluster)

    def _do_Dial(self, w: World, a: A.Dial) -> World:
        c = a.cluster
        cl = w.clusters[c]
        row = cl.row_by_gen(a.gen)
        assert row is not None
        acceptor = row.peer
        used = {st.sid for st in w.streams}
        sid = next(i for i in range(len(used) + 1) if i not in used)
        st = Stream(
            sid=sid, dialer=c, acceptor=acceptor, dialer_gen=a.gen, peer_gen=row.peer_gen,
            d_term=cl.term, a_term=w.clusters[acceptor].term, d_phase=OPEN, a_phase=NEW,
            d_done=False, a_done=False, up=Channel(((MSG_OPEN,),), LIVE),
            down=Channel((), LIVE), d_sent=(), a_sent=(),
        )
        st = self._initial_snapshot(w, st, "d")
        w = self._track_connect(w, c, a.gen)
        return self._set_stream(w, st, sid)

    def _do_DeleteNodes(self, w: World, a: A.DeleteNodes) -> World:
        cl = w.clusters[a.cluster]
        imp = cl.imports_from(a.peer)
        assert imp is not None
        imp = imp._replace(services=imp.services[self.config.batch:])
        return self._set_cluster(w, a.cluster, self._with_import(cl, imp))

    def _do_DeleteBundle(self, w: World, a: A.DeleteBundle) -> World:
        cl = w.clusters[a.cluster]
        imp = cl.imports_from(a.peer)
        assert imp is not None
        return self._set_cluster(w, a.cluster, self._with_import(cl, imp._replace(bundle=False)))

    def _do_DeleteRow(self, w: World, a: A.DeleteRow) -> World:
        row = w.clusters[a.cluster].row(a.peer)
        assert row is not None
        nxt = self.lifecycle[self._role(row), row.state, DELETION_FINISHED]
        assert not isinstance(nxt, Refused)
        pair = pair_of(a.cluster, row)
        if pair in w.ghost.unannounced:
            # the row goes before any dial reached it: its peer can no longer be told (F2)
            w = self._ghost_add(self._ghost_remove(w, "unannounced", pair), "excused", pair)
        return self._set_row_state(w, a.cluster, row, nxt)

    def _do_Spin(self, w: World, a: A.Spin) -> World:
        """The oldest deposed leader's deletion loop goes round once. While there is deletion
        work it changes nothing (its rate-limiter wait fails at once); once the list of inactive
        peerings with work is empty, it blocks on its watch, which fails, and it returns."""
        cl = w.clusters[a.cluster]
        if self._has_deletion_work(cl):
            return w
        return self._set_cluster(w, a.cluster, cl._replace(deleters=cl.deleters[1:]))

    def _do_RoutineWriteFails(self, w: World, a: A.RoutineWriteFails) -> World:
        """The raft apply fails: nothing is written; the routine retries on its next pass."""
        return self._spend(w, faults=w.budget.faults - 1)

    def _do_HandlerWriteFails(self, w: World, a: A.HandlerWriteFails) -> World:
        st = self._stream(w, a.sid)
        w = self._ghost_add(w, "apply_failed", (st.acceptor, st.peer_gen))
        w = self._deliver(w, st, a.side, "msg", write_fails=True)
        return self._spend(w, faults=w.budget.faults - 1)

    def _has_deletion_work(self, cl: Cluster) -> bool:
        for row in cl.rows:
            if not row.active and (cl.imports_from(row.peer) is not None
                                   or row.state == DELETING):
                return True
        return False

    @staticmethod
    def _with_import(cl: Cluster, imp: Imported) -> Cluster:
        rest = tuple(i for i in cl.imported if i.peer != imp.peer)
        if imp.services or imp.bundle:
            rest = tuple(sorted((*rest, imp)))
        return cl._replace(imported=rest)

    # -- tracker ------------------------------------------------------------------------------
    def _track_connect(self, w: World, c: int, gen: int) -> World:
        cl = w.clusters[c]
        tracker = tuple(sorted((*(t for t in cl.tracker if t.gen != gen), Track(gen, True))))
        return self._set_cluster(w, c, cl._replace(tracker=tracker))

    def _track_disconnect(self, w: World, c: int, gen: int) -> World:
        cl = w.clusters[c]
        t = cl.track(gen)
        if t is None or not t.connected:
            return w
        tracker = tuple(Track(gen, False) if x.gen == gen else x for x in cl.tracker)
        return self._set_cluster(w, c, cl._replace(tracker=tracker))

    def _track_delete(self, w: World, c: int, gen: int) -> World:
        cl = w.clusters[c]
        if cl.track(gen) is None:
            return w
        return self._set_cluster(w, c, cl._replace(
            tracker=tuple(t for t in cl.tracker if t.gen != gen)))

    # -- streams ------------------------------------------------------------------------------
    def _do_Publish(self, w: World, a: A.Publish) -> World:
        st = self._stream(w, a.sid)
        changed = self._pending_publishes(w, st, a.side)
        return self._set_stream(w, self._publish(w, st, a.side, changed), a.sid)

    def _publish(self, w: World, st: Stream, side: str, resources: Sequence[str]) -> Stream:
        """Send one Response per resource (in name order) and remember what was sent."""
        c, _gen, peer = self._side(st, side)
        cl = w.clusters[c]
        sent = dict(st.d_sent if side == "d" else st.a_sent)
        msgs: list[Message] = []
        for res in resources:
            if res == SERVICE_LIST:
                names = tuple(s for s in self.config.services if self.export_view(cl, peer, s))
                msgs.append((MSG_RESPONSE, res, names))
                continue
            present = self.export_view(cl, peer, res)
            msgs.append((MSG_RESPONSE, res, present))
            sent[res] = present
        sent_t = tuple(sorted(sent.items()))
        if side == "d":
            return st._replace(up=st.up._replace(msgs=(*st.up.msgs, *msgs)), d_sent=sent_t)
        return st._replace(down=st.down._replace(msgs=(*st.down.msgs, *msgs)), a_sent=sent_t)

    def _initial_snapshot(self, w: World, st: Stream, side: str) -> Stream:
        """A handler starts: its subscription manager sends at once the trust bundle, the list of
        exported services, and every exported service (one Response each)."""
        c, gen, peer = self._side(st, side)
        cl = w.clusters[c]
        row = cl.row_by_gen(gen)
        if row is None or not row.active:
            # only reachable with the bug dial-deleted: an inactive peering exports nothing,
            # but the trust bundle goes out with every new stream
            return self._publish(w, st, side, (ROOTS,))
        exported = [s for s in self.config.services if self.export_view(cl, peer, s)]
        first: tuple[str, ...] = (ROOTS, SERVICE_LIST)
        if self.switches & {"no-service-list", "no-trust-bundle"}:
            first = tuple(r for r in first if not (
                (r == ROOTS and "no-trust-bundle" in self.switches)
                or (r == SERVICE_LIST and "no-service-list" in self.switches)))
        return self._publish(w, st, side, (*first, *exported))

    def _do_SendTerminated(self, w: World, a: A.SendTerminated) -> World:
        st = self._stream(w, a.sid)
        return self._handle(w, st, a.side, TEARDOWN, None)

    def _do_Deliver(self, w: World, a: A.Deliver) -> World:
        return self._deliver(w, self._stream(w, a.sid), a.side, a.how)

    def _deliver(self, w: World, st: Stream, side: str, how: str,
                 write_fails: bool = False) -> World:
        inbound = st.down if side == "d" else st.up
        msg: Message | None = None
        if how == "msg":
            msg = inbound.msgs[0]
            inbound = inbound._replace(msgs=inbound.msgs[1:])
            kind = msg[0]
            if kind == MSG_OPEN:
                inp = self._classify_open(w, st)
                if inp == OPEN_DELETED and st.d_phase == OPEN and st.down.end == LIVE:
                    # a dial reached the marked row, and an answer can still reach the dialer:
                    # from here the dialer must be told (#14285)
                    w = self._ghost_remove(w, "unannounced", (st.acceptor, st.peer_gen))
            else:
                inp = _MSG_INPUT[str(kind)]
        elif how == "reset":
            inbound = Channel((), RESET)
            inp = IN_RESET
        elif how == "eof":
            inbound = Channel((), RESET)
            inp = IN_EOF
        else:
            inp = _END_INPUT[inbound.end]
        if side == "d":
            st = st._replace(down=inbound)
        else:
            st = st._replace(up=inbound)
        return self._handle(w, st, side, inp, msg, write_fails)

    def _classify_open(self, w: World, st: Stream) -> str:
        """The acceptor's checks of a first message, in upstream's order: the peering must exist
        and be this dialer's; it must be active (a dial of a marked row is answered with
        Terminated, #14285, even while an old stream is still registered: that tells a
        redialing dialer at once); no other stream may be connected for it. Registering with the
        tracker checks for a connected stream again (effect `accept`), so an overlay that
        accepts an inactive row (bug dial-deleted) still meets the duplicate check."""
        cl = w.clusters[st.acceptor]
        row = cl.row_by_gen(st.peer_gen)
        if row is None or row.peer != st.dialer or row.dialer:
            return OPEN_UNKNOWN
        if row.state == TERMINATED:
            return OPEN_TERMINATED
        if not row.active:
            return OPEN_DELETED
        track = cl.track(row.gen)
        if track is not None and track.connected:
            return OPEN_DUPLICATE
        return OPEN_VALID

    def _handle(self, w: World, st: Stream, side: str, inp: str, msg: Message | None,
                write_fails: bool = False) -> World:
        role = DIALER if side == "d" else ACCEPTOR
        phase = st.d_phase if side == "d" else st.a_phase
        outcome: Outcome | None = self.endpoint.get((role, phase, inp))
        if outcome is None:
            reason = IMPOSSIBLE.get((role, phase, inp), "not in the table")
            raise ProtocolError(f"{role} handler in phase {phase} got {inp!r}: {reason}")
        c, gen, _peer = self._side(st, side)
        error = False
        for effect in outcome.effects:
            if effect == "import":
                assert msg is not None
                w, st = self._import(w, st, side, msg, write_fails)
            elif effect == "accept":
                track = w.clusters[c].track(gen)
                if track is not None and track.connected:
                    # registering with the tracker fails; reached only where the first-message
                    # checks did not classify the Open as a duplicate (bug dial-deleted)
                    outcome = Outcome((), DONE)
                    error = True
                    break
                w = self._track_connect(w, c, gen)
                w = self._link(w, st)
                st = self._initial_snapshot(w, st, "a")
            elif effect == "terminate":
                if not write_fails:  # a failed TerminateByID is only logged, as upstream
                    w = self._terminate_by_id(w, c, gen)
                w = self._track_disconnect(w, c, gen)
            elif effect == "disconnect":
                w = self._track_disconnect(w, c, gen)
            elif effect in ("send-terminated", "send-terminated-only"):
                st = self._send(st, side, (MSG_TERMINATED,))
                if effect == "send-terminated":
                    w = self._track_delete(w, c, gen)
            elif effect == "close-send":
                st = self._end_outbound(st, side, EOF)
            elif effect == "cancel":
                st = self._end_outbound(st, side, RESET, force=True)
            elif effect == "end-error":
                error = True
            elif effect == "stop-retrying":
                w = self._set_cluster(w, c, self._without_dialing(w.clusters[c], gen))
            elif effect in ("retry", "discard", "warn"):
                pass
            else:  # pragma: no cover - the tables name only these
                raise ProtocolError(f"unknown effect {effect!r}")
        if outcome.next == DONE:
            w, st = self._finish(w, st, side, error=error)  # (sets the phase to DONE)
        elif side == "d":
            st = st._replace(d_phase=outcome.next)
        else:
            st = st._replace(a_phase=outcome.next)
        return self._set_stream(w, st, st.sid)

    @staticmethod
    def _send(st: Stream, side: str, msg: Message) -> Stream:
        if side == "d":
            return st._replace(up=st.up._replace(msgs=(*st.up.msgs, msg)))
        return st._replace(down=st.down._replace(msgs=(*st.down.msgs, msg)))

    @staticmethod
    def _end_outbound(st: Stream, side: str, end: int, force: bool = False) -> Stream:
        out = st.up if side == "d" else st.down
        ended = PeeringModel._ended(out, end, force)
        return st._replace(up=ended) if side == "d" else st._replace(down=ended)

    @staticmethod
    def _ended(out: Channel, end: int, force: bool = False) -> Channel:
        """Channel `out` ended with `end`: if it is still live, or whatever its end (but a
        reset) if `force`."""
        if out.end == LIVE or (force and out.end != RESET):
            return out._replace(end=end)
        return out

    def _finish(self, w: World, st: Stream, side: str, error: bool) -> tuple[World, Stream]:
        """The handler at `side` has returned: drop its inbound side, end its outbound side."""
        if side == "d":
            # the attempt function returns and closes the connection: a call the acceptor has
            # not finished is reset, and the reset may overtake what is still queued (so a
            # dialer must drain to the end before returning, or Terminated can be lost)
            st = st._replace(d_phase=DONE, down=Channel((), st.down.end),
                             up=self._ended(st.up, RESET, force=st.a_phase != DONE))
        else:
            st = st._replace(a_phase=DONE, up=Channel((), st.up.end),
                             down=self._ended(st.down, ERROR if error else EOF))
        return w, st

    def _link(self, w: World, st: Stream) -> World:
        """Ghost: the acceptor accepted a stream between these two rows."""
        for c, gen in ((st.acceptor, st.peer_gen), (st.dialer, st.dialer_gen)):
            cl = w.clusters[c]
            row = cl.row_by_gen(gen)
            if row is not None and not row.linked:
                w = self._set_cluster(w, c, self._with_row(cl, row._replace(linked=True),
                                                           row.peer))
        return w

    def _terminate_by_id(self, w: World, c: int, gen: int) -> World:
        row = w.clusters[c].row_by_gen(gen)
        if row is None:
            return w  # TerminateByID of a missing ID is a no-op
        nxt = self.lifecycle[self._role(row), row.state, TERMINATED_RECEIVED]
        if isinstance(nxt, Refused):
            return w
        return self._set_row_state(w, c, row, nxt)

    def _import_refused(self, row: Row | None) -> bool:
        """The store's import guard: imported data only for an active peering (finding F5)."""
        if "import-when-inactive" in self.switches:
            return row is None
        inactive = row is None or not row.active
        return not inactive if "import-guard-inverted" in self.switches else inactive

    def _import(self, w: World, st: Stream, side: str, msg: Message,
                write_fails: bool = False) -> tuple[World, Stream]:
        c, gen, peer = self._side(st, side)
        cl = w.clusters[c]
        resource = str(msg[1])
        row = cl.row_by_gen(gen)
        accepted = True
        if write_fails:
            accepted = False  # the raft apply failed: nothing is written, the reply is a Nack
        elif resource == SERVICE_LIST and "service-list-ignored" in self.switches:
            pass
        elif resource == SERVICE_LIST:
            # drop what the exporter no longer exports (deletes are always allowed)
            names = msg[2]
            assert isinstance(names, tuple)
            imp = cl.imports_from(peer)
            if imp is not None and any(s not in names for s in imp.services):
                imp = imp._replace(services=tuple(s for s in imp.services if s in names))
                w = self._set_cluster(w, c, self._with_import(cl, imp))
        elif (present := bool(msg[2])) and self._import_refused(row):
            accepted = False  # the store refuses: ERR_IMPORT_INACTIVE
        else:
            imp = cl.imports_from(peer) or Imported(peer, (), False)
            if resource == ROOTS:
                imp = imp._replace(bundle=present)
            elif present and resource not in imp.services:
                imp = imp._replace(services=_sorted_tuple((*imp.services, resource)))
            elif not present and resource in imp.services:
                imp = imp._replace(services=tuple(s for s in imp.services if s != resource))
            new_cl = self._with_import(cl, imp)
            if new_cl != cl:
                w = self._set_cluster(w, c, new_cl)
        if self.config.acks:
            out = st.up if side == "d" else st.down
            if out.end == LIVE:
                st = self._send(st, side, (MSG_ACK if accepted else MSG_NACK, resource))
        return w, st


__all__ = ["IllegalAction", "PeeringModel", "ProtocolError", "SetupError"]
