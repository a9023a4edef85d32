"""The properties the protocol must have, each under the ID that specs/ and the tests use.

Safety (checked on every state or every transition the checker explores):

no-orphans
    Every imported node (with its service and checks) and every imported trust bundle belongs to a
    peering row that exists in the importing cluster.
no-import-when-inactive
    A transition that adds imported data for a peer name does so only while that peering is active
    on the importing side.
no-export-when-inactive
    A Response (replicated data) is only ever sent by a side whose peering is active.
terminated-row-kept
    A TERMINATED row is never removed except after the operator deleted it (which first turns it
    DELETING).
terminated-only-when-inactive
    Terminated is only ever sent for a peering that is inactive (or gone) on the sending side.
no-teardown-of-active
    The sync pass closes the doneCh of a stream only if its peering is inactive or gone.
store-rules
    The store's structure stays well formed: one row per name, unique IDs below the next ID, only
    storable states, PENDING only on acceptor rows and ESTABLISHING only on dialer rows.
routines-only-on-leader
    No leader routine keeps running on a server that lost leadership.

Liveness, in the form that can be checked on a finite graph:

settles
    From every reachable state, a settled state is reachable by protocol steps alone (no operator
    action, no fault): the system has no livelock and no deadlock short of settling.
settled-is-clean
    Every settled state is clean:
    (a) no imported data of an inactive or missing peering;
    (b) no row marked for deletion, and no row the operator deleted;
    (c) every pair of active rows that belong together is connected and replicated: each side has
        imported exactly what the other exports to it, trust bundle included;
    (d) when a peering had been connected and one side deleted it, the other side is TERMINATED or
        gone. Upstream's design cannot promise (d) once a fault has cut a stream at the wrong
        moment (specs/findings.md, F2), so (d) is checked in every run without a fault.

A *settled* state is one where no protocol step is enabled except dials that are futile: a
dialer retrying against an acceptor that has no usable row for it (finding F1: upstream retries
these forever; the peering reads FAILING).

The property records below have the shape the checker expects (``id``, ``title``, ``holds``,
``explain``; ``target``, ``counts``), so the model offers them without importing the checker.

Import rules: standard library and ``peerkit.model`` only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from . import actions as A
from .state import (
    DELETING,
    DONE,
    ESTABLISHING,
    MSG_RESPONSE,
    MSG_TERMINATED,
    NEW,
    OPEN,
    PENDING,
    TERMINATED,
    Channel,
    Cluster,
    Message,
    Row,
    Stream,
    World,
    cluster_name,
    pair_of,
)
from .vocabulary import (
    ACCEPT_ONLY_WHEN_ACTIVE,
    DELETION_BY_CURRENT_LEADER,
    NO_EXPORT_WHEN_INACTIVE,
    NO_IMPORT_WHEN_INACTIVE,
    NO_ORPHANS,
    NO_TEARDOWN_OF_ACTIVE,
    ROUTINES_ONLY_ON_LEADER,
    SETTLED_IS_CLEAN,
    SETTLES,
    STORE_RULES,
    TEARDOWN_OF_INACTIVE,
    TERMINATED_ONLY_IF_PEER_DELETED,
    TERMINATED_ONLY_WHEN_INACTIVE,
    TERMINATED_ROW_KEPT,
    TRACKER_CONSISTENT,
)

if TYPE_CHECKING:
    from .machine import PeeringModel

_EMPTY = Channel()
_STORABLE = frozenset({PENDING, ESTABLISHING, DELETING, TERMINATED})

Trans = Callable[[World, A.Action, World], bool]


class StateProperty(NamedTuple):
    id: str
    title: str
    holds: Callable[[World], bool]
    explain: Callable[[World], str] | None = None


class TransitionProperty(NamedTuple):
    id: str
    title: str
    holds: Trans
    explain: Callable[[World, A.Action, World], str] | None = None


class LivenessProperty(NamedTuple):
    id: str
    title: str
    target: Callable[[World], bool]
    counts: Callable[[A.Action], bool]
    #: "weak": every run of counted steps in which no step stays enabled for ever without being
    #: taken reaches a target (the checker looks for fair cycles, not only for dead ends)
    fairness: str = "none"


# ---------------------------------------------------------------------------------------------
# settled and clean
# ---------------------------------------------------------------------------------------------


def counterpart(w: World, c: int, row: Row) -> Row | None:
    """The row on the other side that `row` is peered with, if it exists."""
    other = w.clusters[row.peer]
    if row.dialer:
        acc = other.row_by_gen(row.peer_gen)
        if acc is not None and acc.peer == c and not acc.dialer:
            return acc
        return None
    for r in other.rows:
        if r.peer == c and r.dialer and r.peer_gen == row.gen:
            return r
    return None


def dial_is_futile(w: World, c: int, row: Row) -> bool:
    """A dial of `row` would be refused without Terminated (no usable acceptor row)."""
    acc = w.clusters[row.peer].row_by_gen(row.peer_gen)
    return acc is None or acc.peer != c or acc.dialer or acc.state == TERMINATED


def _has_live_dialer_end(w: World, c: int, gen: int) -> bool:
    return any(st.dialer == c and st.dialer_gen == gen and st.d_phase != DONE
               for st in w.streams)


def unsettled_reason(model: PeeringModel, w: World) -> str | None:
    """Why `w` is not settled, or None if it is. Mirrors `model.enabled` (a test checks this)."""
    for c, cl in enumerate(w.clusters):
        # (the cluster's name is worked out only for a reason: this runs on every state)
        if cl.sync_due or cl.snapshot is not None:
            return f"{cluster_name(c)}: a sync pass is pending"
        if cl.deleters and cl.deleters[0] != cl.term:
            return f"{cluster_name(c)}: a deletion routine is still running on a deposed leader"
        for row in cl.rows:
            if not row.active:
                if cl.imports_from(row.peer) is not None:
                    return (f"{cluster_name(c)}: imported data of {cluster_name(row.peer)} "
                            "awaits deletion")
                if row.state == DELETING:
                    return (f"{cluster_name(c)}: the row for {cluster_name(row.peer)} "
                            "awaits deletion")
        for gen in cl.dialing:
            dialer = cl.row_by_gen(gen)
            if dialer is None or not dialer.active or _has_live_dialer_end(w, c, gen):
                continue
            if not dial_is_futile(w, c, dialer):
                return f"{cluster_name(c)}: the dialer of {cluster_name(dialer.peer)} will dial"
    for st in w.streams:
        if st.d_phase != OPEN or st.a_phase != OPEN:
            return f"stream {st.sid} is opening or closing"
        if st.d_done or st.a_done:
            return f"stream {st.sid} is being torn down"
        if st.up != _EMPTY or st.down != _EMPTY:
            return f"stream {st.sid} has something in flight"
        for side in ("d", "a"):
            if model._pending_publishes(w, st, side):
                return f"stream {st.sid} has an update to publish"
    return None


def settled(model: PeeringModel, w: World) -> bool:
    return unsettled_reason(model, w) is None


def _connected_stream(w: World, c: int, dialer_row: Row) -> Stream | None:
    for st in w.streams:
        if (st.dialer == c and st.dialer_gen == dialer_row.gen and st.d_phase == OPEN
                and st.a_phase == OPEN):
            return st
    return None


def unclean_reason(model: PeeringModel, w: World) -> str | None:
    """Why `w` (taken as settled) is not clean, or None if it is."""
    for c, cl in enumerate(w.clusters):
        name = cluster_name(c)
        for imp in cl.imported:
            row = cl.row(imp.peer)
            if row is None or not row.active:
                return f"(a) {name} still holds data imported from {cluster_name(imp.peer)}"
        for row in cl.rows:
            if row.state == DELETING:
                return f"(b) {name}'s row for {cluster_name(row.peer)} is still marked for deletion"
            if (c, row.gen) in w.ghost.user_deleted:
                return (f"(b) the operator deleted {name}'s peering with "
                        f"{cluster_name(row.peer)}, but its row is still there "
                        f"({_state_name(row.state)})")
        for row in cl.rows:
            if not row.active:
                continue
            other = counterpart(w, c, row)
            pair = pair_of(c, row)
            if other is not None and other.active:
                if row.dialer and _connected_stream(w, c, row) is None:
                    return (f"(c) {name} and {cluster_name(row.peer)} are both active but "
                            "not connected")
                reason = _replication_gap(model, w, c, row.peer)
                if reason and pair not in w.ghost.apply_failed:
                    return f"(c) {reason}"
            elif (row.linked and pair not in w.ghost.excused
                  and pair not in w.ghost.apply_failed):
                told = "gone" if other is None else _state_name(other.state)
                return (f"(d) {name}'s peering with {cluster_name(row.peer)} is still active, "
                        f"but the other side's row is {told}: {name} was never told")
    return None


def _replication_gap(model: PeeringModel, w: World, c: int, peer: int) -> str | None:
    """Whether cluster c has imported exactly what `peer` exports to it."""
    src = w.clusters[peer]
    want = tuple(s for s in model.config.services if model.export_view(src, c, s))
    imp = w.clusters[c].imports_from(peer)
    have = imp.services if imp is not None else ()
    bundle = imp.bundle if imp is not None else False
    if have != want or not bundle:
        return (f"{cluster_name(c)} imported {list(have)} (trust bundle: {bundle}) from "
                f"{cluster_name(peer)}, which exports {list(want)}")
    return None


def _state_name(state: int) -> str:
    from .vocabulary import PeeringState

    return PeeringState(state).name


# ---------------------------------------------------------------------------------------------
# safety: state invariants
# ---------------------------------------------------------------------------------------------


def orphan_reason(w: World) -> str | None:
    for c, cl in enumerate(w.clusters):
        for imp in cl.imported:
            if cl.row(imp.peer) is None:
                return (f"{cluster_name(c)} holds data imported from {cluster_name(imp.peer)} "
                        "but has no peering row for it")
    return None


def store_rules_reason(w: World) -> str | None:
    n = len(w.clusters)
    for c, cl in enumerate(w.clusters):
        broken = _broken_store_rule(c, cl, n)
        if broken is not None:
            return f"{cluster_name(c)} {broken}"
    return None


def _broken_store_rule(c: int, cl: Cluster, n: int) -> str | None:
    """The first store rule cluster `c` (of `n`) breaks, or None."""
    rows = cl.rows
    if len(rows) > 1:  # (one row or none cannot repeat a name or an ID)
        if len({r.peer for r in rows}) != len(rows):
            return "has two rows with one name"
        if len({r.gen for r in rows}) != len(rows):
            return "has two rows with one ID"
    for r in rows:
        if not 1 <= r.gen < cl.next_gen:
            return f"has a row ID {r.gen} the store never handed out"
        if r.state not in _STORABLE:
            return f"stores a row in state {r.state}"
        if (r.state == PENDING and r.dialer) or (r.state == ESTABLISHING and not r.dialer):
            return "has a row in a state that does not fit its role"
        if r.peer == c or not 0 <= r.peer < n:
            return "has a row naming no other cluster"
    for imp in cl.imported:
        if not imp.services and not imp.bundle:
            return "keeps an empty import entry"
    return None


def leader_reason(w: World) -> str | None:
    for c, cl in enumerate(w.clusters):
        for old in cl.deleters:
            if old != cl.term:
                return (f"{cluster_name(c)}: the deletion routine of term {old} still runs, but "
                        f"the leader's term is {cl.term}: it lost leadership")
    for st in w.streams:
        if st.d_phase != DONE and st.d_term != w.clusters[st.dialer].term:
            return f"stream {st.sid}: the dialer end belongs to a deposed leader"
        if st.a_phase != DONE and st.a_term != w.clusters[st.acceptor].term:
            return f"stream {st.sid}: the acceptor end belongs to a deposed leader"
    return None


def tracker_reason(w: World) -> str | None:
    """The tracker says "connected" for a peering exactly when one of the leader's handlers for
    it is serving (an Open was accepted or a dial made, and the handler has not returned or begun
    to drain). What an operator reads as ACTIVE or FAILING comes from here."""
    for c, cl in enumerate(w.clusters):
        serving = set()
        for st in w.streams:
            if st.dialer == c and st.d_phase == OPEN and st.d_term == cl.term:
                serving.add(st.dialer_gen)
            if st.acceptor == c and st.a_phase == OPEN and st.a_term == cl.term:
                serving.add(st.peer_gen)
        connected = {t.gen for t in cl.tracker if t.connected}
        if connected == serving:
            continue
        for gen in sorted(connected - serving):
            return (f"{cluster_name(c)}'s tracker shows peering {gen} connected, but no "
                    "handler of its leader serves a stream for it")
        for gen in sorted(serving - connected):
            return (f"{cluster_name(c)} serves a stream for peering {gen}, but its tracker "
                    "does not show it connected")
    return None


def terminated_cause_reason(w: World) -> str | None:
    """A row is TERMINATED only if the operator on the other side deleted that peering."""
    deleted_by = w.ghost.deleted_by
    for c, cl in enumerate(w.clusters):
        for row in cl.rows:
            if row.state == TERMINATED and (pair_of(c, row), row.peer) not in deleted_by:
                return (f"{cluster_name(c)}'s peering with {cluster_name(row.peer)} is "
                        f"TERMINATED, but {cluster_name(row.peer)}'s operator never deleted it")
    return None


# ---------------------------------------------------------------------------------------------
# safety: transition invariants
# ---------------------------------------------------------------------------------------------


def _stream_by_sid(w: World, sid: int) -> Stream | None:
    for st in w.streams:
        if st.sid == sid:
            return st
    return None


def _fresh(old: tuple[Message, ...], new: tuple[Message, ...]) -> tuple[Message, ...]:
    """The messages at the tail of `new` that were not in `old` (the receiver may have taken
    some from the head in between)."""
    if new is old:
        return ()
    for k in range(len(old) + 1):
        if new[: len(old) - k] == old[k:]:
            return new[len(old) - k:]
    return new


_Fn = TypeVar("_Fn", bound=Callable[[World, World], object])


def _per_transition(fn: _Fn) -> _Fn:
    """Remember `fn(s, s2)` for the last pair of worlds it was asked about.

    The checker asks every transition property about one transition in a row, and several of
    them need the same comparison of the two worlds; this works it out once per transition.
    `fn` must depend on nothing but the two worlds (which are immutable). The entry holds the
    two worlds, so their identities cannot be reused while it is kept.
    """
    last: list[tuple[World, World, object]] = []

    def cached(s: World, s2: World) -> object:
        if last:
            entry = last[0]  # one read: another thread may replace the entry meanwhile
            if entry[0] is s and entry[1] is s2:
                return entry[2]
        result = fn(s, s2)
        last[:1] = [(s, s2, result)]
        return result

    return cached  # type: ignore[return-value]


@_per_transition
def changed_streams(s: World, s2: World) -> tuple[tuple[Stream | None, Stream], ...]:
    """The streams of `s2` that are not the same object in `s`, each as (the stream of that
    number in `s` or None, the stream in `s2`)."""
    if s.streams is s2.streams:
        return ()
    out: list[tuple[Stream | None, Stream]] = []
    for st in s2.streams:
        for old in s.streams:
            if old.sid == st.sid:
                if old is not st:
                    out.append((old, st))
                break
        else:
            out.append((None, st))
    return tuple(out)


def sent_messages(s: World, a: A.Action, s2: World) -> tuple[tuple[int, int, Message], ...]:
    """The messages a transition sent, as (sending cluster, sender's local row ID, message).

    Worked out from the two worlds alone (channels only grow at the tail), so the properties
    that use it do not trust the model's own account of what an action does.
    """
    return _sent_messages(s, s2)


@_per_transition
def _sent_messages(s: World, s2: World) -> tuple[tuple[int, int, Message], ...]:
    out: list[tuple[int, int, Message]] = []
    for old, st in changed_streams(s, s2):
        if old is not None and (old.dialer, old.dialer_gen, old.d_term) != (
            st.dialer, st.dialer_gen, st.d_term
        ):
            old = None  # the number was reused by a new stream
        up_old = old.up.msgs if old is not None else ()
        down_old = old.down.msgs if old is not None else ()
        for m in _fresh(up_old, st.up.msgs):
            out.append((st.dialer, st.dialer_gen, m))
        for m in _fresh(down_old, st.down.msgs):
            out.append((st.acceptor, st.peer_gen, m))
    return tuple(out)


def _export_reason(s: World, a: A.Action, s2: World) -> str | None:
    for c, gen, msg in _sent_messages(s, s2):
        if msg[0] == MSG_RESPONSE:
            row = s.clusters[c].row_by_gen(gen)
            if row is None or not row.active:
                state = "gone" if row is None else _state_name(row.state)
                return (f"{cluster_name(c)} sent {msg[1]} to its peer while its peering is "
                        f"{state}")
    return None


def _terminated_reason(s: World, a: A.Action, s2: World) -> str | None:
    for c, gen, msg in _sent_messages(s, s2):
        if msg[0] == MSG_TERMINATED:
            row = s.clusters[c].row_by_gen(gen)
            if row is not None and row.active:
                return (f"{cluster_name(c)} sent Terminated for its peering with "
                        f"{cluster_name(row.peer)}, which is active ({_state_name(row.state)})")
    return None


def _teardown_reason(s: World, a: A.Action, s2: World) -> str | None:
    """A doneCh closed by this transition (on either side) belonged to an active peering."""
    for old, st in changed_streams(s, s2):
        if old is None:
            continue
        for flipped, c, gen in ((st.d_done and not old.d_done, st.dialer, st.dialer_gen),
                                (st.a_done and not old.a_done, st.acceptor, st.peer_gen)):
            if flipped:
                row = s.clusters[c].row_by_gen(gen)
                if row is not None and row.active:
                    return (f"{cluster_name(c)} tore down the stream of its active peering with "
                            f"{cluster_name(row.peer)}")
    return None


def _teardown_inactive_reason(s: World, a: A.Action, s2: World) -> str | None:
    """The dual of no-teardown-of-active: a sync pass closes the doneCh of every stream in its
    snapshot whose peering is inactive or gone."""
    if isinstance(a, A.SyncApply):
        c = a.cluster
        snapshot = s.clusters[c].snapshot or ()
    elif isinstance(a, A.Sync):
        c = a.cluster
        snapshot = tuple(t.gen for t in s.clusters[c].tracker if t.connected)
    else:
        return None
    cl = s.clusters[c]
    for gen in snapshot:
        row = cl.row_by_gen(gen)
        if row is not None and row.active:
            continue
        for st in s2.streams:
            if st.dialer == c and st.dialer_gen == gen and st.d_phase == OPEN and not st.d_done:
                side = "dialer"
            elif (st.acceptor == c and st.peer_gen == gen and st.a_phase == OPEN
                  and not st.a_done):
                side = "acceptor"
            else:
                continue
            state = "gone" if row is None else _state_name(row.state)
            return (f"{cluster_name(c)}'s sync pass left the {side} stream {st.sid} of its "
                    f"peering {gen} running, although that peering is {state}")
    return None


def _accept_reason(s: World, a: A.Action, s2: World) -> str | None:
    """An acceptor's handler goes from reading the first message to serving only for a peering
    that is active."""
    for old, st in changed_streams(s, s2):
        if old is None or old.a_phase != NEW or st.a_phase == NEW:
            continue
        if st.a_phase == OPEN:
            row = s.clusters[st.acceptor].row_by_gen(st.peer_gen)
            if row is None or not row.active:
                state = "gone" if row is None else _state_name(row.state)
                return (f"{cluster_name(st.acceptor)} accepted stream {st.sid} for its peering "
                        f"with {cluster_name(st.dialer)}, which is {state}")
    return None


_DELETION_STEPS = (A.DeleteNodes, A.DeleteBundle, A.DeleteRow)


def _deletion_leader_reason(s: World, a: A.Action, s2: World) -> str | None:
    """Every write of the deletion routine comes from the routine of the current leader."""
    if isinstance(a, _DELETION_STEPS):
        cl = s.clusters[a.cluster]
        if cl.term not in cl.deleters:
            return (f"{cluster_name(a.cluster)} made a deletion write while no deletion routine "
                    f"of its current leader (term {cl.term}) runs")
    return None


def _import_reason(s: World, a: A.Action, s2: World) -> str | None:
    if s.clusters is s2.clusters:
        return None
    for c, (before, after) in enumerate(zip(s.clusters, s2.clusters, strict=True)):
        if before.imported is after.imported or before.imported == after.imported:
            continue
        for imp in after.imported:
            old = before.imports_from(imp.peer)
            added = set(imp.services) - set(old.services if old else ())
            if added or (imp.bundle and not (old and old.bundle)):
                row = before.row(imp.peer)
                if row is None or not row.active:
                    state = "gone" if row is None else _state_name(row.state)
                    return (f"{cluster_name(c)} imported data from {cluster_name(imp.peer)} "
                            f"while that peering is {state}")
    return None


def _terminated_kept_reason(s: World, a: A.Action, s2: World) -> str | None:
    if s.clusters is s2.clusters:
        return None
    for c, (before, after) in enumerate(zip(s.clusters, s2.clusters, strict=True)):
        if before.rows is after.rows:
            continue
        for row in before.rows:
            if row.state == TERMINATED:
                now = after.row(row.peer)
                if now is None or now.gen != row.gen:
                    return (f"{cluster_name(c)}'s TERMINATED row for {cluster_name(row.peer)} "
                            "was removed without the operator deleting it")
    return None


def _no_sends_or(reason: Callable[[World, A.Action, World], str | None]) -> Trans:
    """`reason(s, a, s2) is None`, with the common case (no stream changed) answered without a
    call."""
    def check(s: World, a: A.Action, s2: World) -> bool:
        return s.streams is s2.streams or reason(s, a, s2) is None

    return check


def _only_after(kinds: tuple[type, ...],
                reason: Callable[[World, A.Action, World], str | None]) -> Trans:
    """`reason(s, a, s2) is None` for a property about actions of `kinds` only (`reason` is None
    for every other action): the other actions are answered without a call."""
    def check(s: World, a: A.Action, s2: World) -> bool:
        return not isinstance(a, kinds) or reason(s, a, s2) is None

    return check


def _no_store_change_or(reason: Callable[[World, A.Action, World], str | None]) -> Trans:
    """`reason(s, a, s2) is None`, with the common case (no cluster changed) answered without a
    call."""
    def check(s: World, a: A.Action, s2: World) -> bool:
        return s.clusters is s2.clusters or reason(s, a, s2) is None

    return check


def _explain(reason: Callable[[World, A.Action, World], str | None]
             ) -> Callable[[World, A.Action, World], str]:
    def explain(s: World, a: A.Action, s2: World) -> str:
        return reason(s, a, s2) or ""

    return explain


# ---------------------------------------------------------------------------------------------
# assembly
# ---------------------------------------------------------------------------------------------


class Properties:
    def __init__(self, model: PeeringModel) -> None:
        self.model = model

        def is_settled(w: World) -> bool:
            return unsettled_reason(model, w) is None

        def settled_is_clean(w: World) -> bool:
            return unsettled_reason(model, w) is not None or unclean_reason(model, w) is None

        def explain_unclean(w: World) -> str:
            return unclean_reason(model, w) or ""

        self.invariants: tuple[StateProperty, ...] = (
            StateProperty(NO_ORPHANS, "every imported item belongs to an existing peering row",
                      lambda w: orphan_reason(w) is None, lambda w: orphan_reason(w) or ""),
            StateProperty(STORE_RULES, "the store's rules are never broken",
                      lambda w: store_rules_reason(w) is None,
                      lambda w: store_rules_reason(w) or ""),
            StateProperty(ROUTINES_ONLY_ON_LEADER, "no leader routine runs on a non-leader",
                      lambda w: leader_reason(w) is None, lambda w: leader_reason(w) or ""),
            StateProperty(SETTLED_IS_CLEAN, "every settled state is clean", settled_is_clean,
                      explain_unclean),
            StateProperty(TRACKER_CONSISTENT,
                          "the stream tracker shows connected exactly the streams being served",
                          lambda w: tracker_reason(w) is None,
                          lambda w: tracker_reason(w) or ""),
            StateProperty(TERMINATED_ONLY_IF_PEER_DELETED,
                          "a row is TERMINATED only if the peer's operator deleted the peering",
                          lambda w: terminated_cause_reason(w) is None,
                          lambda w: terminated_cause_reason(w) or ""),
        )
        self.transition_invariants: tuple[TransitionProperty, ...] = (
            TransitionProperty(ACCEPT_ONLY_WHEN_ACTIVE,
                               "a stream is accepted only for an active peering",
                               _no_sends_or(_accept_reason), _explain(_accept_reason)),
            TransitionProperty(NO_IMPORT_WHEN_INACTIVE,
                                "nothing is imported for a peering after it became inactive",
                                _no_store_change_or(_import_reason),
                                _explain(_import_reason)),
            TransitionProperty(NO_EXPORT_WHEN_INACTIVE,
                                "nothing is replicated by a side whose peering is inactive",
                                _no_sends_or(_export_reason), _explain(_export_reason)),
            TransitionProperty(TERMINATED_ROW_KEPT,
                                "a TERMINATED row is only removed after a user delete",
                                _no_store_change_or(_terminated_kept_reason),
                                _explain(_terminated_kept_reason)),
            TransitionProperty(TERMINATED_ONLY_WHEN_INACTIVE,
                                "Terminated is only sent for a peering inactive on the sender",
                                _no_sends_or(_terminated_reason),
                                _explain(_terminated_reason)),
            TransitionProperty(NO_TEARDOWN_OF_ACTIVE,
                                "a stream is never torn down for an active peering",
                                _no_sends_or(_teardown_reason), _explain(_teardown_reason)),
            TransitionProperty(TEARDOWN_OF_INACTIVE,
                               "a sync pass tears down every snapshotted stream of an inactive "
                               "peering",
                               _only_after((A.SyncApply, A.Sync), _teardown_inactive_reason),
                               _explain(_teardown_inactive_reason)),
            TransitionProperty(DELETION_BY_CURRENT_LEADER,
                               "every deletion write comes from the current leader's routine",
                               _only_after(_DELETION_STEPS, _deletion_leader_reason),
                               _explain(_deletion_leader_reason)),
        )
        self.liveness: tuple[LivenessProperty, ...] = (
            LivenessProperty(SETTLES, "every fair run of protocol steps reaches a settled state",
                             is_settled, A.is_protocol, fairness="weak"),
        )
