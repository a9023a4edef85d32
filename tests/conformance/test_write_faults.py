"""Store-write failures under conformance (finding F6; the model's ``HandlerWriteFails`` and
``RoutineWriteFails``, configuration ``write_faults``): the driver arms a failure of one
cluster's next handler or deletion-routine write (``impl.testing.WriteFault``), and the
implementation must go on as the model says (a failed import is NACKed, a failed TerminateByID
is only logged, a failed deletion step is retried on a later pass).

Coverage: every write-fault edge key is reached by a directed scenario.
The keys required are those ``apply-faults`` without churn reaches (explored here, about 2 s),
plus ``BEYOND``: the two keys of a failed import, which need a second fault or a churn action
(``apply-faults`` with ``faults=2, churn=0, cleanups=0`` reaches all eight: 19 s, too slow for
every run; ``benchmarks``-style check: ``reachable_keys(PeeringModel(get_config("apply-faults")
.with_(name="x", faults=2, churn=0, cleanups=0)))``).

The check can fail: a failed import written as a disk failure (``StoreFailure``: the handler
ends the stream, which the model's failed apply does not) diverges.

May import: pytest, peerkit.conformance, peerkit.impl, peerkit.model.
"""

from __future__ import annotations

import pytest

from peerkit.conformance.candidates import Divergence
from peerkit.conformance.configs import WRITE_FAULTS_CONFIG
from peerkit.conformance.coverage import EdgeKey, reachable_keys
from peerkit.conformance.profiles import bug_hunt
from peerkit.conformance.stateful import Step, machine_for, run_scenario
from peerkit.model.config import get_config
from peerkit.model.machine import PeeringModel

#: examples of the fixed random run with the write-fault rule (a few seconds; the scenarios
#: below, not this run, reach every key)
EXAMPLES = 6

#: scenarios after ``setup`` (dc1 the acceptor and exporter, dc2 the dialer)
SCENARIOS: dict[str, tuple[EdgeKey, list[Step]]] = {
    "the dialer's TerminateByID fails": (
        ("HandlerWriteFails", "dialer", "OPEN", "Terminated", "DRAINING"),
        [("write_fault", {"c": 1, "routine": False}), ("delete", {"c": 0})]),
    "the acceptor's TerminateByID fails": (
        ("HandlerWriteFails", "acceptor", "OPEN", "Terminated", "DRAINING"),
        [("write_fault", {"c": 0, "routine": False}), ("delete", {"c": 1})]),
    "the dialer's import of an unexport fails": (
        ("HandlerWriteFails", "dialer", "OPEN", "Response", "OPEN"),
        [("write_fault", {"c": 1, "routine": False}), ("export", {"c": 0, "i": 0})]),
    "the acceptor's import of a new export fails": (
        ("HandlerWriteFails", "acceptor", "OPEN", "Response", "OPEN"),
        [("write_fault", {"c": 0, "routine": False}), ("register", {"c": 1, "i": 0}),
         ("export", {"c": 1, "i": 0})]),
    "the acceptor's deletion routine fails on its marked row": (
        ("RoutineWriteFails", "acceptor", "DELETING"),
        [("write_fault", {"c": 0, "routine": True}), ("delete", {"c": 0})]),
    "the acceptor's deletion routine fails on its terminated row": (
        ("RoutineWriteFails", "acceptor", "TERMINATED"),
        [("write_fault", {"c": 0, "routine": True}), ("delete", {"c": 1})]),
    "the dialer's deletion routine fails on its marked row": (
        ("RoutineWriteFails", "dialer", "DELETING"),
        [("write_fault", {"c": 1, "routine": True}), ("delete", {"c": 1})]),
    "the dialer's deletion routine fails on its terminated row": (
        ("RoutineWriteFails", "dialer", "TERMINATED"),
        [("write_fault", {"c": 1, "routine": True}), ("delete", {"c": 0})]),
}

#: write-fault keys beyond ``apply-faults`` without churn (see the module docstring)
BEYOND: set[EdgeKey] = {
    ("HandlerWriteFails", "acceptor", "OPEN", "Response", "OPEN"),
    ("HandlerWriteFails", "dialer", "OPEN", "Response", "OPEN"),
}


#: scenario name -> the edge keys its run covered (each scenario runs once per session)
_COVERED: dict[str, set[EdgeKey]] = {}


def _covered(name: str) -> set[EdgeKey]:
    if name not in _COVERED:
        machine = run_scenario(SCENARIOS[name][1], config=WRITE_FAULTS_CONFIG)
        assert machine.cands is not None
        _COVERED[name] = set(machine.cands.covered)
    return _COVERED[name]


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_a_write_fault_scenario_conforms_and_reaches_its_key(name: str) -> None:
    assert SCENARIOS[name][0] in _covered(name)


def test_an_import_failing_as_a_disk_failure_diverges(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check can fail: the failed import written as a ``StoreFailure`` (the
    implementation's answer to a full disk: NACK and end the stream) is not the model's failed
    apply (NACK and go on). (A failed TerminateByID or deletion step is handled alike for every
    exception, so only an import tells the two apart.)"""
    from peerkit.impl import testing
    from peerkit.impl.store import StoreFailure

    monkeypatch.setattr(testing, "StoreError", StoreFailure)
    with pytest.raises(Divergence):
        run_scenario(SCENARIOS["the dialer's import of an unexport fails"][1],
                     config=WRITE_FAULTS_CONFIG)


def test_the_write_fault_run_conforms() -> None:
    """A few fixed random examples with the ``write_fault`` rule: no false alarm."""
    machine = machine_for(config=WRITE_FAULTS_CONFIG)
    machine.TestCase.settings = bug_hunt(EXAMPLES)
    machine.TestCase().runTest()
    assert machine.STATS["examples"] >= EXAMPLES


def test_the_scenarios_cover_every_write_fault_key() -> None:
    covered: set[EdgeKey] = set()
    for name in SCENARIOS:
        covered |= _covered(name)
    keys, complete = reachable_keys(PeeringModel(get_config("apply-faults").with_(
        name="apply-faults-no-churn", churn=0)))
    assert complete
    required = {k for k in keys if k[0].endswith("WriteFails")} | BEYOND
    assert len(required) == 8
    assert required <= covered, f"not driven: {sorted(required - covered)}"
