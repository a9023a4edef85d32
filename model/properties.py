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
from typing import TYPE_CHECKING, NamedTuple

from . import actions as A
from .state import (
    DELETING,
    DONE,
    ESTABLISHING,
    MSG_RESPONSE,
    MSG_TERMINATED,
    OPEN,
    PENDING,
    TERMINATED,
    Channel,
    Message,
    Row,
    Stream,
    World,
    cluster_name,
)
from .vocabulary import (
    NO_EXPORT_WHEN_INACTIVE,
    NO_IMPORT_WHEN_INACTIVE,
    NO_ORPHANS,
    NO_TEARDOWN_OF_ACTIVE,
    ROUTINES_ONLY_ON_LEADER,
    SETTLED_IS_CLEAN,
    SETTLES,
    STORE_RULES,
    TERMINATED_ONLY_WHEN_INACTIVE,
    TERMINATED_ROW_KEPT,
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
        name = cluster_name(c)
        if cl.sync_due or cl.snapshot is not None:
            return f"{name}: a sync pass is pending"
        if cl.zombies:
            return f"{name}: a deletion routine is still running on a deposed leader"
        for row in cl.rows:
            if not row.active:
                if cl.imports_from(row.peer) is not None:
                    return f"{name}: imported data of {cluster_name(row.peer)} awaits deletion"
                if row.state == DELETING:
                    return f"{name}: the row for {cluster_name(row.peer)} awaits deletion"
        for gen in cl.dialing:
            row = cl.row_by_gen(gen)
            if row is None or not row.active or _has_live_dialer_end(w, c, gen):
                continue
            if not dial_is_futile(w, c, row):
                return f"{name}: the dialer of {cluster_name(row.peer)} will dial"
    for st in w.streams:
        if st.d_phase != OPEN or st.a_phase != OPEN:
            return f"stream {st.sid} is opening or closing"
        if st.d_done or st.a_done:
            return f"stream {st.sid} is being torn down"
        if st.up != _EMPTY or st.down != _EMPTY:
            return f"stream {st.sid} has something in flight"
        for side in ("d", "a"):
            if any(True for _ in model._pending_publishes(w, st, side)):
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
            if other is not None and other.active:
                if row.dialer:
                    if _connected_stream(w, c, row) is None:
                        return (f"(c) {name} and {cluster_name(row.peer)} are both active but "
                                "not connected")
                reason = _replication_gap(model, w, c, row.peer)
                if reason:
                    return f"(c) {reason}"
            elif row.linked and not w.ghost.faulted:
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
    for c, cl in enumerate(w.clusters):
        name = cluster_name(c)
        peers = [r.peer for r in cl.rows]
        if len(set(peers)) != len(peers):
            return f"{name} has two rows with one name"
        gens = [r.gen for r in cl.rows]
        if len(set(gens)) != len(gens):
            return f"{name} has two rows with one ID"
        for r in cl.rows:
            if not 1 <= r.gen < cl.next_gen:
                return f"{name} has a row ID {r.gen} the store never handed out"
            if r.state not in _STORABLE:
                return f"{name} stores a row in state {r.state}"
            if r.state == PENDING and r.dialer or r.state == ESTABLISHING and not r.dialer:
                return f"{name} has a row in a state that does not fit its role"
            if r.peer == c or not 0 <= r.peer < len(w.clusters):
                return f"{name} has a row naming no other cluster"
        for imp in cl.imported:
            if not imp.services and not imp.bundle:
                return f"{name} keeps an empty import entry"
    return None


def leader_reason(w: World) -> str | None:
    for c, cl in enumerate(w.clusters):
        if cl.zombies:
            return (f"{cluster_name(c)}: {cl.zombies} deletion routine(s) still running on a "
                    "server that is no longer the leader")
    for st in w.streams:
        if st.d_phase != DONE and st.d_term != w.clusters[st.dialer].term:
            return f"stream {st.sid}: the dialer end belongs to a deposed leader"
        if st.a_phase != DONE and st.a_term != w.clusters[st.acceptor].term:
            return f"stream {st.sid}: the acceptor end belongs to a deposed leader"
    return None


# ---------------------------------------------------------------------------------------------
# safety: transition invariants
# ---------------------------------------------------------------------------------------------


def _stream_by_sid(w: World, sid: int) -> Stream | None:
    for st in w.streams:
        if st.sid == sid:
            return st
    return None


def sent_messages(s: World, a: A.Action, s2: World) -> list[tuple[int, int, Message]]:
    """The messages `a` sent, as (sending cluster, sender's local row ID, message)."""
    if isinstance(a, A.Dial):
        for st in s2.streams:
            if st.dialer == a.cluster and st.dialer_gen == a.gen and st.d_phase == OPEN:
                before = _stream_by_sid(s, st.sid)
                if before is None or before.dialer_gen != a.gen or before.dialer != a.cluster:
                    return [(a.cluster, a.gen, m) for m in st.up.msgs]
        return []
    if not isinstance(a, A.Deliver | A.Publish | A.SendTerminated):
        return []
    before = _stream_by_sid(s, a.sid)
    after = _stream_by_sid(s2, a.sid)
    if before is None or after is None:
        return []
    if a.side == "d":
        c, gen, old, new = before.dialer, before.dialer_gen, before.up.msgs, after.up.msgs
    else:
        c, gen, old, new = before.acceptor, before.peer_gen, before.down.msgs, after.down.msgs
    fresh = new[len(old):] if new[:len(old)] == old else new
    return [(c, gen, m) for m in fresh]


def _no_export_when_inactive(s: World, a: A.Action, s2: World) -> bool:
    return _export_reason(s, a, s2) is None


def _export_reason(s: World, a: A.Action, s2: World) -> str | None:
    for c, gen, msg in sent_messages(s, a, s2):
        if msg[0] == MSG_RESPONSE:
            row = s.clusters[c].row_by_gen(gen)
            if row is None or not row.active:
                state = "gone" if row is None else _state_name(row.state)
                return (f"{cluster_name(c)} sent {msg[1]} to its peer while its peering is "
                        f"{state}")
    return None


def _terminated_reason(s: World, a: A.Action, s2: World) -> str | None:
    for c, gen, msg in sent_messages(s, a, s2):
        if msg[0] == MSG_TERMINATED:
            row = s.clusters[c].row_by_gen(gen)
            if row is not None and row.active:
                return (f"{cluster_name(c)} sent Terminated for its peering with "
                        f"{cluster_name(row.peer)}, which is active ({_state_name(row.state)})")
    return None


def _teardown_reason(s: World, a: A.Action, s2: World) -> str | None:
    if not isinstance(a, A.SyncApply | A.Sync):
        return None
    c = a.cluster
    cl = s.clusters[c]
    for st in s2.streams:
        before = _stream_by_sid(s, st.sid)
        if before is None:
            continue
        for flipped, gen in ((st.d_done and not before.d_done and st.dialer == c, st.dialer_gen),
                             (st.a_done and not before.a_done and st.acceptor == c,
                              st.peer_gen)):
            if flipped:
                row = cl.row_by_gen(gen)
                if row is not None and row.active:
                    return (f"{cluster_name(c)}'s sync pass tore down the stream of its active "
                            f"peering with {cluster_name(row.peer)}")
    return None


def _import_reason(s: World, a: A.Action, s2: World) -> str | None:
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


def _holds(reason: Callable[[World, A.Action, World], str | None]) -> Trans:
    def check(s: World, a: A.Action, s2: World) -> bool:
        return reason(s, a, s2) is None

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
        )
        self.transition_invariants: tuple[TransitionProperty, ...] = (
            TransitionProperty(NO_IMPORT_WHEN_INACTIVE,
                                "nothing is imported for a peering after it became inactive",
                                _holds(_import_reason), _explain(_import_reason)),
            TransitionProperty(NO_EXPORT_WHEN_INACTIVE,
                                "nothing is replicated by a side whose peering is inactive",
                                _holds(_export_reason), _explain(_export_reason)),
            TransitionProperty(TERMINATED_ROW_KEPT,
                                "a TERMINATED row is only removed after a user delete",
                                _holds(_terminated_kept_reason),
                                _explain(_terminated_kept_reason)),
            TransitionProperty(TERMINATED_ONLY_WHEN_INACTIVE,
                                "Terminated is only sent for a peering inactive on the sender",
                                _holds(_terminated_reason), _explain(_terminated_reason)),
            TransitionProperty(NO_TEARDOWN_OF_ACTIVE,
                                "a stream is never torn down for an active peering",
                                _holds(_teardown_reason), _explain(_teardown_reason)),
        )
        self.liveness: tuple[LivenessProperty, ...] = (
            LivenessProperty(SETTLES, "a settled state stays reachable by protocol steps alone",
                     is_settled, A.is_protocol),
        )
