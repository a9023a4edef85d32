"""The memoised model queries of ``Candidates`` (``peerkit.conformance.memo``): a remembered
outcome is the outcome, and the tables stay bounded."""

from __future__ import annotations

import pytest

from peerkit.conformance.abstraction import View
from peerkit.conformance.candidates import Candidate, Candidates, Divergence
from peerkit.conformance.configs import CONFORMANCE_CONFIG
from peerkit.conformance.coverage import edge_key
from peerkit.conformance.memo import Memo, memo_for
from peerkit.model import PeeringModel
from peerkit.model import actions as A


def _after_establish(model: PeeringModel) -> Candidates:
    cands = Candidates(model, model.initial_states(), edge_key=edge_key)
    cands.pin([A.GenerateToken(0, 1)], "generate a token")
    cands.pin([a for a in cands.enabled_env() if isinstance(a, A.Establish)], "establish")
    return cands


def _outcome(model: PeeringModel, view: View) -> tuple[frozenset[Candidate], set[object]]:
    cands = _after_establish(model)
    cands.observe(view, "observe")
    return frozenset(cands.states), set(cands.covered)


def test_a_remembered_observation_is_the_one_computed_afresh() -> None:
    shared = PeeringModel(CONFORMANCE_CONFIG)
    probe = _after_establish(shared)
    probe.close()
    views = sorted(probe.views(), key=repr)
    assert len(views) > 3
    for view in views[:2] + views[-2:]:
        first = _outcome(shared, view)
        again = _outcome(shared, view)  # from the memo
        fresh = _outcome(PeeringModel(CONFORMANCE_CONFIG), view)  # a new model: a new memo
        assert first == again == fresh
        assert first[0] and all(probe._view(c) == view for c in first[0])
    assert len(memo_for(shared).observations) >= 4
    # the same candidates, a view no state of their closure has: still a divergence
    impossible = views[0]._replace(clusters=views[0].clusters[::-1])
    with pytest.raises(Divergence):
        _after_establish(shared).observe(impossible, "observe")


def test_the_tables_are_bounded_and_keep_what_is_used() -> None:
    memo: Memo[int, str] = Memo(3)
    for i in range(10):
        memo.put(i, str(i))
        assert memo.get(0) == "0" or i >= 3  # 0 is read each time: it stays
    assert len(memo) <= 6
    assert memo.get(0) == "0"
    assert memo.get(1) is None
