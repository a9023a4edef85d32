"""The configurations CI checks, and the evidence behind the exemptions of clause (d).

The CI configurations themselves are checked completely by `.ci/run` (`peerkit check --config
NAME` for each of `CI_CONFIGS`); here: each configuration reaches what it was made for, and each
exemption of settled-is-clean is load-bearing (take it away and the checker finds the finding it
stands for), so none of them hides a mistake by accident.

Imports: the model and the checker.
"""

from __future__ import annotations

from peerkit.checker.engine import check
from peerkit.model import PeeringModel, World, get_config
from peerkit.model import actions as A
from peerkit.model.config import CI_CONFIGS, CONFIGS
from peerkit.model.machine import SetupError
from peerkit.model.state import Stream
from peerkit.model.vocabulary import SETTLED_IS_CLEAN


def test_ci_configurations_exist_and_each_can_be_set_up() -> None:
    assert set(CI_CONFIGS) <= set(CONFIGS)
    assert {"default", "race", "churn", "dialer-exports", "repeer"} <= set(CI_CONFIGS)
    for name in CI_CONFIGS:
        model = PeeringModel(get_config(name))
        try:
            model.initial()
        except SetupError as exc:  # pragma: no cover - a failure message
            raise AssertionError(f"{name}: {exc}") from exc


def test_the_race_configuration_has_three_clusters_a_split_pass_and_a_new_peering() -> None:
    cfg = get_config("race")
    assert cfg.clusters == 3 and cfg.split_sync and cfg.tokens >= 1 and cfg.establishes >= 1
    model = PeeringModel(cfg)
    # dc1 can start a pass, then generate a token for dc3 before listing: the racy window
    w = model.step(model.initial(), A.SyncSnapshot(0))
    assert A.GenerateToken(0, 2) in model.enabled(w)


def test_in_dialer_exports_both_sides_replicate() -> None:
    w = PeeringModel(get_config("dialer-exports")).initial()
    assert w.clusters[0].imports_from(1) is not None and w.clusters[1].imports_from(0) is not None


class _NoFaultWindow(PeeringModel):
    """A fault never excuses an untold peer."""

    def _excuse_if_terminating(self, w: World, st: Stream) -> World:
        return w


class _NoApplyExemption(PeeringModel):
    """A failed store write excuses nothing."""

    def _do_HandlerWriteFails(self, w: World, a: A.HandlerWriteFails) -> World:
        w2 = super()._do_HandlerWriteFails(w, a)
        return w2._replace(ghost=w2.ghost._replace(apply_failed=w.ghost.apply_failed))


class _NoRaceWindow(PeeringModel):
    """A row removed before any dial reached it excuses nothing (F2, way 3)."""

    def _do_DeleteRow(self, w: World, a: A.DeleteRow) -> World:
        w2 = super()._do_DeleteRow(w, a)
        return w2._replace(ghost=w2.ghost._replace(excused=w.ghost.excused))


def test_each_exemption_of_clause_d_stands_for_a_real_finding() -> None:
    for model in (_NoFaultWindow(get_config("ci")), _NoRaceWindow(get_config("ci")),
                  _NoApplyExemption(get_config("apply-faults"))):
        ce = check(model).counterexample
        assert ce is not None, type(model).__name__
        assert ce.property_id == SETTLED_IS_CLEAN, ce.explanation
        # a lost TerminateByID leaves the peer untold (d); a lost import, a stale catalog (c)
        clauses = ("(d)", "(c)") if isinstance(model, _NoApplyExemption) else ("(d)",)
        assert ce.explanation.startswith(clauses), ce.explanation


def test_apply_faults_holds_with_its_exemption() -> None:
    result = check(PeeringModel(get_config("apply-faults")))
    assert result.ok and result.complete
