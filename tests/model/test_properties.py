"""Every property can fail, and the checker notices when the model is mutated in ways that break
them. Also: the fast structural `settled` agrees with its definition on every reachable state."""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest

from peerkit.checker.engine import check
from peerkit.model import PeeringModel, get_config
from peerkit.model import actions as A
from peerkit.model.properties import dial_is_futile, unsettled_reason
from peerkit.model.state import (
    MSG_RESPONSE,
    MSG_TERMINATED,
    PENDING,
    ROOTS,
    TERMINATED,
    Imported,
    World,
)
from peerkit.model.tables import REMOVED, lifecycle_table
from peerkit.model.vocabulary import (
    NO_EXPORT_WHEN_INACTIVE,
    NO_IMPORT_WHEN_INACTIVE,
    NO_ORPHANS,
    NO_TEARDOWN_OF_ACTIVE,
    ROUTINES_ONLY_ON_LEADER,
    SETTLED_IS_CLEAN,
    STORE_RULES,
    TERMINATED_ONLY_WHEN_INACTIVE,
    TERMINATED_ROW_KEPT,
)

DEFAULT = get_config("default")


def prop(model: PeeringModel, pid: str) -> Any:
    for p in (*model.invariants, *model.transition_invariants, *model.liveness):
        if p.id == pid:
            return p
    raise KeyError(pid)


def world() -> tuple[PeeringModel, World]:
    m = PeeringModel(DEFAULT)
    return m, m.initial()


def with_cluster(w: World, c: int, **changes: Any) -> World:
    clusters = list(w.clusters)
    clusters[c] = clusters[c]._replace(**changes)
    return w._replace(clusters=tuple(clusters))


# -- each state invariant can fail --------------------------------------------------------------


def test_initial_world_satisfies_every_invariant() -> None:
    m, w = world()
    for inv in m.invariants:
        assert inv.holds(w), inv.id


def test_no_orphans_fails_on_data_without_a_row() -> None:
    m, w = world()
    bad = with_cluster(w, 1, rows=())
    p = prop(m, NO_ORPHANS)
    assert not p.holds(bad) and "no peering row" in p.explain(bad)


def test_store_rules_fail_on_duplicate_names_and_bad_states() -> None:
    m, w = world()
    row = w.clusters[0].rows[0]
    p = prop(m, STORE_RULES)
    assert not p.holds(with_cluster(w, 0, rows=(row, row._replace(gen=2)), next_gen=3))
    assert not p.holds(with_cluster(w, 0, rows=(row._replace(state=3),)))  # ACTIVE is not stored
    assert not p.holds(with_cluster(w, 0, rows=(row._replace(gen=9),)))  # never handed out
    assert not p.holds(with_cluster(w, 0, rows=(row._replace(dialer=True),)))  # PENDING dialer


def test_routines_only_on_leader_fails_on_a_zombie() -> None:
    m, w = world()
    assert not prop(m, ROUTINES_ONLY_ON_LEADER).holds(with_cluster(w, 0, deleters=(1, 2), term=2))
    assert not prop(m, ROUTINES_ONLY_ON_LEADER).holds(with_cluster(w, 0, term=5))


def test_settled_is_clean_fails_when_the_peer_was_never_told() -> None:
    m, w = world()
    # dc2 gone entirely, dc1 still active, linked, nothing in flight: settled but unclean
    bad = with_cluster(w._replace(streams=()), 1, rows=(), imported=(), tracker=(), dialing=())
    bad = with_cluster(bad, 0, imported=(), sync_due=False, tracker=())
    assert unsettled_reason(m, bad) is None
    p = prop(m, SETTLED_IS_CLEAN)
    assert not p.holds(bad) and "never told" in p.explain(bad)
    # after a fault inside a real window the same state is accepted (finding F2)
    pair = (0, w.clusters[0].rows[0].gen)
    assert p.holds(bad._replace(ghost=bad.ghost._replace(excused=(pair,))))
    # a fault at any other time, or for another pair, excuses nothing
    assert not p.holds(bad._replace(ghost=bad.ghost._replace(excused=((0, 99),))))


def test_settled_is_clean_fails_on_stale_imports() -> None:
    m, w = world()
    bad = with_cluster(w, 0, sync_due=False)
    bad = with_cluster(bad, 1, imported=(Imported(0, ("api",), True),))
    assert unsettled_reason(m, bad) is None
    assert "exports" in prop(m, SETTLED_IS_CLEAN).explain(bad)


# -- each transition invariant can fail ---------------------------------------------------------


def test_transition_invariants_fail_on_crafted_steps() -> None:
    m, w = world()
    st = w.streams[0]
    acc_row = w.clusters[0].rows[0]
    marked = with_cluster(w, 0, rows=(acc_row._replace(state=5),))
    # the acceptor sends a Response while its row is DELETING
    sent = marked._replace(streams=(st._replace(
        down=st.down._replace(msgs=((MSG_RESPONSE, ROOTS, True),))),))
    assert not prop(m, NO_EXPORT_WHEN_INACTIVE).holds(marked, A.Publish(0, "a"), sent)
    # the acceptor sends Terminated while its row is active
    term = w._replace(streams=(st._replace(down=st.down._replace(msgs=((MSG_TERMINATED,),))),))
    assert not prop(m, TERMINATED_ONLY_WHEN_INACTIVE).holds(w, A.SendTerminated(0, "a"), term)
    # a doneCh closed for an active peering
    torn = w._replace(streams=(st._replace(a_done=True),))
    assert not prop(m, NO_TEARDOWN_OF_ACTIVE).holds(w, A.Sync(0), torn)
    # data imported for a peering that is DELETING on the importer
    imp = with_cluster(marked, 0, imported=(Imported(1, ("web",), True),))
    assert not prop(m, NO_IMPORT_WHEN_INACTIVE).holds(marked, A.Deliver(0, "a", "msg"), imp)
    # a TERMINATED row removed without a user delete
    t = with_cluster(w, 1, rows=(w.clusters[1].rows[0]._replace(state=TERMINATED),))
    gone = with_cluster(t, 1, rows=())
    assert not prop(m, TERMINATED_ROW_KEPT).holds(t, A.DeleteRow(1, 0), gone)


# -- mutated models: the checker catches what the properties are for ----------------------------


class NoImportGuard(PeeringModel):
    """The store accepts imported data for an inactive peering."""

    def _import(self, w, st, side, msg, write_fails=False):  # type: ignore[no-untyped-def]
        c, gen, _peer = self._side(st, side)
        row = w.clusters[c].row_by_gen(gen)
        if row is None or row.active:
            return super()._import(w, st, side, msg)
        clusters = list(w.clusters)
        clusters[c] = clusters[c]._replace(rows=tuple(
            r._replace(state=PENDING if not r.dialer else 2) if r.gen == gen else r
            for r in clusters[c].rows))
        w2, st2 = super()._import(w._replace(clusters=tuple(clusters)), st, side, msg)
        # put the row's real state back, keeping the import
        cl2 = w2.clusters[c]._replace(rows=w.clusters[c].rows)
        clusters2 = list(w2.clusters)
        clusters2[c] = cl2
        return w2._replace(clusters=tuple(clusters2)), st2


def test_without_the_import_guard_data_is_imported_for_inactive_peerings() -> None:
    result = check(NoImportGuard(DEFAULT))
    assert not result.ok
    assert result.counterexample is not None
    assert result.counterexample.property_id in (NO_IMPORT_WHEN_INACTIVE, NO_ORPHANS)


class RemovesTerminatedRows(PeeringModel):
    """The intermediate upstream version: the deletion routine also removes TERMINATED rows."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        table = lifecycle_table(self.bugs)
        for role in ("acceptor", "dialer"):
            table[role, TERMINATED, "deletion routine finished"] = REMOVED
        self.lifecycle = table


def test_removing_terminated_rows_is_caught() -> None:
    result = check(RemovesTerminatedRows(DEFAULT))
    assert result.counterexample is not None
    assert result.counterexample.property_id == TERMINATED_ROW_KEPT


class NoServiceList(PeeringModel):
    """A new stream does not send the exported-service list (stale imports survive)."""

    def _initial_snapshot(self, w, st, side):  # type: ignore[no-untyped-def]
        c, _gen, peer = self._side(st, side)
        exported = [s for s in self.config.services if self.export_view(w.clusters[c], peer, s)]
        return self._publish(w, st, side, (ROOTS, *exported))


def test_without_the_service_list_a_reconnect_leaves_stale_imports() -> None:
    churn = get_config("churn")
    assert check(PeeringModel(churn)).ok
    result = check(NoServiceList(churn))
    assert result.counterexample is not None
    assert result.counterexample.property_id == SETTLED_IS_CLEAN
    assert "(c)" in result.counterexample.explanation


class UpstreamTerminateByID(PeeringModel):
    """Upstream's TerminateByID has no state check: a DELETING row can become TERMINATED."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        table = lifecycle_table(self.bugs)
        for role in ("acceptor", "dialer"):
            table[role, 5, "Terminated received"] = TERMINATED
        self.lifecycle = table


def test_finding_f3_concurrent_deletes_resurrect_a_row_upstream() -> None:
    both = DEFAULT.with_(deletes=2, faults=0, failovers=0, cleanups=0)
    assert check(PeeringModel(both)).ok
    result = check(UpstreamTerminateByID(both))
    assert result.counterexample is not None
    assert result.counterexample.property_id == SETTLED_IS_CLEAN
    assert "(b)" in result.counterexample.explanation


# -- settled, structurally and by definition ----------------------------------------------------


def _reachable(model: PeeringModel, limit: int = 50_000) -> list[World]:
    start = model.initial()
    seen = {start}
    queue = deque([start])
    while queue and len(seen) < limit:
        w = queue.popleft()
        for _a, nxt in model.successors(w):
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    return list(seen)


@pytest.mark.parametrize("config", ["ci", "tiny"])
def test_structural_settled_matches_its_definition(config: str) -> None:
    model = PeeringModel(get_config(config))
    for w in _reachable(model):
        protocol = [a for a in model.enabled(w) if A.is_protocol(a)]
        by_definition = all(
            isinstance(a, A.Dial) and dial_is_futile(
                w, a.cluster, w.clusters[a.cluster].row_by_gen(a.gen))  # type: ignore[arg-type]
            for a in protocol
        )
        assert (unsettled_reason(model, w) is None) == by_definition, w
