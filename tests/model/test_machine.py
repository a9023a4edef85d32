"""Unit tests of the model's rules: the store's rules through the operator actions, each kind of
transition, and that an action that is not enabled is refused and changes nothing."""

from __future__ import annotations

import pytest

from peerkit.model import IllegalAction, PeeringModel, get_config
from peerkit.model import actions as A
from peerkit.model.state import (
    DELETING,
    DONE,
    DRAINING,
    EOF,
    ESTABLISHING,
    MSG_TERMINATED,
    OPEN,
    PENDING,
    RESET,
    TERMINATED,
    Channel,
    World,
)
from peerkit.model.vocabulary import ERR_DELETE_UNMARKED, ERR_WRITE_MARKED

EMPTY = get_config("tiny")  # starts with no peering
ESTABLISHED = get_config("default")


def model(config=EMPTY, bugs=()) -> PeeringModel:  # type: ignore[no-untyped-def]
    return PeeringModel(config, bugs)


def run(m: PeeringModel, w: World, *acts: A.Action) -> World:
    for act in acts:
        w = m.step(w, act)
    return w


def drive(m: PeeringModel, w: World, limit: int = 500, avoid=()) -> World:  # type: ignore[no-untyped-def]
    """Apply the first enabled protocol step (not of the types in `avoid`) until none is left."""
    for _ in range(limit):
        todo = [a for a in m.enabled(w) if A.is_protocol(a) and not isinstance(a, avoid)]
        if not todo:
            return w
        w = m.step(w, todo[0])
    raise AssertionError("did not settle")


def refused(m: PeeringModel, w: World, act: A.Action) -> str:
    before = w
    with pytest.raises(IllegalAction) as info:
        m.step(w, act)
    assert w == before  # worlds are values; nothing changed
    return str(info.value)


# -- the store's rules, through the operator ----------------------------------------------------


def test_generate_token_creates_a_pending_acceptor_row_and_a_token() -> None:
    m = model()
    w = run(m, m.initial(), A.GenerateToken(0, 1))
    row = w.clusters[0].row(1)
    assert row is not None and row.state == PENDING and not row.dialer and row.gen == 1
    assert w.tokens == ((0, 1),)
    assert w.clusters[0].sync_due  # the peering watch fired
    assert w.budget.tokens == m.config.tokens - 1


def test_establish_creates_an_establishing_dialer_row_pointing_at_the_token() -> None:
    m = model()
    w = run(m, m.initial(), A.GenerateToken(0, 1), A.Establish(1, 0, 1))
    row = w.clusters[1].row(0)
    assert row is not None and row.state == ESTABLISHING and row.dialer and row.peer_gen == 1


def test_generate_token_again_keeps_the_pending_row() -> None:
    """L1a (upstream GenerateToken): the same row, the same token key (secrets are not
    modelled); the write fires the watch and spends the budget."""
    m = model(EMPTY.with_(tokens=2))
    w = run(m, m.initial(), A.GenerateToken(0, 1))
    w = w._replace(clusters=(w.clusters[0]._replace(sync_due=False), *w.clusters[1:]))
    again = run(m, w, A.GenerateToken(0, 1))
    assert again.clusters[0].rows == w.clusters[0].rows and again.tokens == w.tokens
    assert again.clusters[0].sync_due and again.budget.tokens == 0


def test_establish_again_re_points_the_dialer_row_between_streams() -> None:
    """L2a (upstream Establish): the same row (same gen) takes the new token's PeerID; offered
    only with a token of an active acceptor row issued for this cluster, and only while the
    row has no live stream (finding F8)."""
    m = model(get_config("repeer"))
    w = m.initial()
    dialer = w.clusters[1].row(0)
    assert dialer is not None
    assert "live stream" in refused(m, w, A.Establish(1, 0, dialer.peer_gen))
    # a reset ends the stream; dc2 does not redial yet; dc1 deletes its row for good
    (st,) = w.streams
    w = drive(m, run(m, w, A.Reset(st.sid)), avoid=(A.Dial,))
    w = drive(m, run(m, w, A.Delete(0, 1)), avoid=(A.Dial,))
    assert w.clusters[0].row(1) is None and not w.streams
    # the old token's row is gone: the exchange would be refused, so nothing is offered
    assert "not one of an active peering" in refused(m, w, A.Establish(1, 0, dialer.peer_gen))
    w = run(m, w, A.GenerateToken(0, 1))
    new = w.clusters[0].row(1)
    assert new is not None and new.gen != dialer.peer_gen
    w = run(m, w, A.Establish(1, 0, new.gen))
    again = w.clusters[1].row(0)
    assert again is not None and again.state == ESTABLISHING
    assert again.gen == dialer.gen and again.peer_gen == new.gen and again.dialer
    assert w.clusters[1].sync_due
    # and the peering comes up with the new pair
    w = drive(m, w)
    assert [(st.dialer_gen, st.peer_gen) for st in w.streams] == [(dialer.gen, new.gen)]


def test_refusals_change_nothing_and_say_why() -> None:
    m = model(EMPTY.with_(tokens=2, establishes=2, deletes=2))
    w = run(m, m.initial(), A.GenerateToken(0, 1))
    assert "other role" in refused(m, w, A.Establish(0, 1, 1))  # dc1's row for dc2 accepts
    assert "itself" in refused(m, w, A.GenerateToken(0, 0))
    assert "no such token" in refused(m, w, A.Establish(1, 0, 7))
    assert "no cluster" in refused(m, w, A.GenerateToken(5, 1))
    assert "no such peering" in refused(m, w, A.Delete(1, 0))
    # a write to a name whose row is being deleted: the store refuses it
    w2 = run(m, w, A.Delete(0, 1))
    assert ERR_WRITE_MARKED in refused(m, w2, A.GenerateToken(0, 1))
    assert "already marked" in refused(m, w2, A.Delete(0, 1))


def test_deletion_routine_cannot_remove_an_active_row() -> None:
    m = model()
    w = run(m, m.initial(), A.GenerateToken(0, 1))
    assert ERR_DELETE_UNMARKED in refused(m, w, A.DeleteRow(0, 1))


def test_spent_budget_is_refused() -> None:
    m = model(EMPTY.with_(tokens=0))
    assert "budget is spent" in refused(m, m.initial(), A.GenerateToken(0, 1))


def test_a_refused_action_of_any_kind_leaves_the_world_equal() -> None:
    m = model(ESTABLISHED)
    w = m.initial()
    bogus = [A.Dial(0, 99), A.Deliver(5, "a", "msg"), A.Publish(0, "a"), A.SyncApply(0),
             A.DeleteNodes(0, 1), A.Spin(0), A.Reset(9), A.Failover(7)]
    for act in bogus:
        refused(m, w, act)


# -- the established start ----------------------------------------------------------------------


def test_established_start_is_connected_and_replicated() -> None:
    m = model(ESTABLISHED)
    w = m.initial()
    acc, dia = w.clusters
    assert acc.row(1).state == PENDING and dia.row(0).state == ESTABLISHING  # type: ignore[union-attr]
    assert len(w.streams) == 1
    st = w.streams[0]
    assert (st.d_phase, st.a_phase) == (OPEN, OPEN)
    imp = dia.imports_from(0)
    assert imp is not None and imp.services == ("api", "web") and imp.bundle
    assert acc.imports_from(1) == (1, (), True)  # dc2 exports only its trust bundle
    assert acc.sync_due  # the acceptor's first sync pass since then is still due
    assert w.budget == (0, 0, 1, 1, 0, 1, 1)


# -- streams: termination and shutdown, in both directions --------------------------------------


@pytest.mark.parametrize("deleter", [0, 1], ids=["acceptor-deletes", "dialer-deletes"])
def test_deleting_side_tells_the_other_which_keeps_a_terminated_row(deleter: int) -> None:
    m = model(ESTABLISHED)
    other = 1 - deleter
    w = run(m, m.initial(), A.Delete(deleter, other))
    w = drive(m, w)
    assert w.clusters[deleter].row(other) is None  # the deleting side's row is gone
    kept = w.clusters[other].row(deleter)
    assert kept is not None and kept.state == TERMINATED  # the other side keeps it as a signal
    assert w.clusters[0].imported == () and w.clusters[1].imported == ()
    assert w.streams == ()


def test_dialer_teardown_sends_terminated_then_half_closes_and_drains() -> None:
    m = model(ESTABLISHED)
    w = run(m, m.initial(), A.Delete(1, 0), A.Sync(1))
    st = w.streams[0]
    assert st.d_done and not st.a_done
    w = run(m, w, A.SendTerminated(0, "d"))
    st = w.streams[0]
    assert st.up.msgs[-1] == (MSG_TERMINATED,) and st.up.end == EOF  # Terminated, then CloseSend
    assert st.d_phase == DRAINING
    assert w.clusters[1].track(st.dialer_gen) is None  # deleteStatus
    # the acceptor reads Terminated before the EOF, marks TERMINATED and drains
    w = run(m, w, A.Deliver(0, "a", "msg"))
    assert w.clusters[0].row(1).state == TERMINATED  # type: ignore[union-attr]
    assert w.streams[0].a_phase == DRAINING
    w = run(m, w, A.Deliver(0, "a", "end"))  # the dialer's EOF: the handler returns
    assert w.streams[0].a_phase == DONE and w.streams[0].down.end == EOF
    w = run(m, w, A.Deliver(0, "d", "end"))  # the dialer's drain sees EOF
    assert w.streams == ()


def test_termination_race_bug_cancels_and_may_overtake() -> None:
    m = model(ESTABLISHED, {"termination-race"})
    w = run(m, m.initial(), A.Delete(1, 0), A.Sync(1), A.SendTerminated(0, "d"))
    st = w.streams[0]
    assert st.d_phase == DONE and st.up.end == RESET
    options = {a.how for a in m.enabled(w) if isinstance(a, A.Deliver) and a.side == "a"}
    # the acceptor may read Terminated, or the reset first (overtaking), or an EOF (Python)
    assert options == {"msg", "reset", "eof"}
    lost = run(m, w, A.Deliver(0, "a", "reset"))
    assert lost.clusters[0].row(1).state == PENDING  # type: ignore[union-attr]  # never told


def test_without_python_eof_quirk_the_acceptor_sees_only_the_reset() -> None:
    m = model(ESTABLISHED.with_(python_server_eof_first=False), {"termination-race"})
    w = run(m, m.initial(), A.Delete(1, 0), A.Sync(1), A.SendTerminated(0, "d"))
    options = {a.how for a in m.enabled(w) if isinstance(a, A.Deliver) and a.side == "a"}
    assert options == {"msg", "reset"}


def test_terminated_on_a_row_marked_for_deletion_keeps_it_marked() -> None:
    # both sides delete at once: the Terminated from the peer must not resurrect the row
    m = model(ESTABLISHED.with_(deletes=2))
    w = run(m, m.initial(), A.Delete(0, 1), A.Delete(1, 0), A.Sync(0), A.SendTerminated(0, "a"))
    assert w.streams[0].down.msgs == ((MSG_TERMINATED,),)
    w = run(m, w, A.Deliver(0, "d", "msg"))
    assert w.clusters[1].row(0).state == DELETING  # type: ignore[union-attr]
    assert w.streams[0].d_phase == DRAINING  # it still half-closes and drains
    w = drive(m, w)
    assert w.clusters[0].rows == () and w.clusters[1].rows == ()  # both deletions complete


def test_acceptor_answers_a_dial_for_a_deleted_peering_with_terminated() -> None:
    m = model()
    w = run(m, m.initial(), A.GenerateToken(0, 1), A.Delete(0, 1), A.Establish(1, 0, 1),
            A.SyncSnapshot(1) if m.config.split_sync else A.Sync(1), A.Dial(1, 1),
            A.Deliver(0, "a", "msg"))
    st = w.streams[0]
    assert st.a_phase == DONE and st.down.msgs == ((MSG_TERMINATED,),)
    w = drive(m, w)
    assert w.clusters[1].row(0).state == TERMINATED  # type: ignore[union-attr]


def test_reset_lets_the_dialer_reconnect() -> None:
    m = model(ESTABLISHED)
    w = run(m, m.initial(), A.Reset(0))
    assert w.budget.faults == 0
    assert w.ghost.excused == ()  # both rows were active: nothing excuses an untold peer
    w = drive(m, w)
    assert len(w.streams) == 1 and w.streams[0].d_phase == OPEN == w.streams[0].a_phase


def test_no_reconnect_bug_leaves_the_dialer_disconnected() -> None:
    m = model(ESTABLISHED, {"no-reconnect"})
    w = drive(m, run(m, m.initial(), A.Reset(0)), avoid=(A.Sync,))
    assert w.streams == () and w.clusters[1].dialing == ()


def test_failover_loses_leader_memory_but_keeps_the_store() -> None:
    m = model(ESTABLISHED)
    w0 = m.initial()
    w = run(m, w0, A.Failover(1))
    cl = w.clusters[1]
    assert cl.term == 2 and cl.tracker == () and cl.dialing == () and cl.sync_due
    assert cl.rows == w0.clusters[1].rows and cl.imported == w0.clusters[1].imported
    assert w.streams[0].d_phase == DONE and w.streams[0].up.end == RESET
    w = drive(m, w)
    assert len(w.streams) == 1 and w.streams[0].d_term == 2


def test_deletion_no_stop_leaves_a_zombie_routine() -> None:
    m = model(ESTABLISHED, {"deletion-no-stop"})
    idle = run(m, m.initial(), A.Failover(0))
    assert idle.clusters[0].deleters == (2,)  # a routine blocked on its watch does return
    w = run(m, m.initial(), A.Delete(0, 1), A.Failover(0))
    assert w.clusters[0].deleters == (1, 2)  # a busy one keeps looping on the deposed leader
    assert A.Spin(0) in m.enabled(w)
    assert m.step(w, A.Spin(0)) == w
    w = drive(m, w, avoid=(A.Spin, A.Dial))  # the new leader finishes the deletion
    assert w.clusters[0].deleters == (1, 2) and w.clusters[0].rows == ()
    assert m.step(w, A.Spin(0)).clusters[0].deleters == (2,)  # then the zombie's watch fails


def test_each_leader_term_runs_its_own_deletion_routine() -> None:
    m = model(ESTABLISHED)
    w = run(m, m.initial(), A.Delete(0, 1), A.Failover(0))
    assert w.clusters[0].deleters == (2,)  # the old one stopped, the new leader started its own
    assert A.DeleteBundle(0, 1) in m.enabled(w)
    assert A.Spin(0) not in m.enabled(w)


def test_stored_map_bug_tears_down_the_accepted_stream() -> None:
    m = model(ESTABLISHED, {"stored-map"})
    w = run(m, m.initial(), A.Sync(0))
    assert w.streams[0].a_done
    fixed = model(ESTABLISHED)
    assert not run(fixed, fixed.initial(), A.Sync(0)).streams[0].a_done


def test_deletion_routine_order_nodes_then_bundle_then_row() -> None:
    m = model(ESTABLISHED)
    w = run(m, m.initial(), A.Delete(1, 0))
    steps = []
    while True:
        todo = [a for a in m.enabled(w) if isinstance(a, A.DeleteNodes | A.DeleteBundle
                                                       | A.DeleteRow) and a.cluster == 1]
        if not todo:
            break
        assert len(todo) == 1
        steps.append(type(todo[0]).__name__)
        w = m.step(w, todo[0])
    assert steps == ["DeleteNodes", "DeleteNodes", "DeleteBundle", "DeleteRow"]


def test_successors_agree_with_enabled_and_step() -> None:
    m = model(ESTABLISHED)
    w = m.initial()
    for _ in range(6):
        pairs = list(m.successors(w))
        assert [a for a, _ in pairs] == m.enabled(w)
        for a, nxt in pairs:
            assert m.step(w, a) == nxt
        w = pairs[0][1]


@pytest.mark.parametrize("config", [
    ESTABLISHED, EMPTY.with_(python_server_eof_first=False),
    ESTABLISHED.with_(heartbeat_faults=True, write_faults=True)])
def test_protocol_successors_are_the_protocol_part_of_successors(config: object) -> None:
    """``protocol_successors`` (the conformance closure's step) lists exactly the protocol
    actions of ``enabled``, in its order, with the worlds ``step`` gives; over the first 600
    states breadth first, which include deletions, resets and failovers."""
    m = PeeringModel(config)  # type: ignore[arg-type]
    todo, seen = [m.initial()], {m.initial()}
    for w in todo:
        expected = [(a, m.step(w, a)) for a in m.enabled(w) if A.is_protocol(a)]
        assert list(m.protocol_successors(w)) == expected
        for _a, nxt in m.successors(w):
            if nxt not in seen and len(seen) < 600:
                seen.add(nxt)
                todo.append(nxt)
    assert len(seen) == 600


def test_actions_of_different_types_are_never_equal() -> None:
    assert A.Delete(0, 1) != A.DeleteRow(0, 1)
    assert hash(A.Delete(0, 1)) != hash(A.DeleteRow(0, 1)) or True  # hashes may collide
    assert A.Delete(0, 1) == A.Delete(0, 1)
    assert len({A.Delete(0, 1), A.DeleteRow(0, 1), A.DeleteBundle(0, 1)}) == 3


def test_bad_model_input_is_refused() -> None:
    with pytest.raises(TypeError):
        PeeringModel("default")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown bug"):
        PeeringModel(EMPTY, {"no-such-bug"})
    with pytest.raises(ValueError):
        EMPTY.with_(clusters=1)
    with pytest.raises(ValueError):
        EMPTY.with_(faults=-1)
    with pytest.raises(ValueError, match="unknown configuration field"):
        EMPTY.with_(nonsense=3)
    with pytest.raises(ValueError, match="unknown configuration"):
        get_config("nope")


def test_a_dial_the_bug_accepts_still_meets_the_duplicate_check() -> None:
    """Issue 6 point 5: with dial-deleted on, an Open for a marked row that still has a stream
    registered is refused when the stream registers with the tracker (no second stream)."""
    for bugs in ((), ("dial-deleted",)):
        m = model(ESTABLISHED, set(bugs))
        w = run(m, m.initial(), A.Delete(0, 1))  # dc1's row is DELETING, its stream registered
        old = w.streams[0]
        # dc2's end of the old stream is gone (its handler returned); dc2 dials again
        gone = old._replace(d_phase=DONE, down=Channel((), RESET), up=old.up._replace(end=RESET))
        cl1 = w.clusters[1]._replace(dialing=(old.dialer_gen,))
        w = w._replace(streams=(gone,), clusters=(w.clusters[0], cl1))
        w = m.step(w, A.Dial(1, old.dialer_gen))
        new = next(st for st in w.streams if st.sid != old.sid)
        w = m.step(w, A.Deliver(new.sid, "a", "msg"))
        after = next((st for st in w.streams if st.sid == new.sid), None)
        assert after is None or after.a_phase == DONE, bugs  # refused, not accepted
        assert sum(1 for t in w.clusters[0].tracker if t.connected) == 1
