"""Heartbeat timeouts under conformance (the model's ``HeartbeatTimeout``, configuration flag
``heartbeat_faults``): with a finite heartbeat timeout, the driver's ``heartbeat_timeout`` rule
holds the direction into one end of a live stream until that end's handler gives up, by the
implementation's own timer under virtual time; the observation after it requires exactly one
``HeartbeatTimeout`` of that role among the model's steps. Everything else the machine does keeps
its holds short of the timeout, so no other end times out.

Both roles' timeouts are reached, with and without the EOF-first view of a cancel, by directed
scenarios that conform; a few fixed random examples run the rule among the others. The check can
fail: a timeout that ends the handler as a nil return (so that a dialer stops retrying) diverges.

May import: pytest, peerkit.conformance, peerkit.impl, peerkit.model.
"""

from __future__ import annotations

import pytest

from peerkit.conformance.candidates import Divergence
from peerkit.conformance.configs import HEARTBEAT_FAULTS_CONFIG
from peerkit.conformance.profiles import bug_hunt
from peerkit.conformance.stateful import machine_for, run_scenario

#: examples of the fixed random run with the heartbeat rule (a few seconds)
EXAMPLES = 4


@pytest.mark.parametrize("eof_first", [False, True])
@pytest.mark.parametrize("role", ["dialer", "acceptor"])
def test_a_heartbeat_timeout_conforms(role: str, eof_first: bool) -> None:
    machine = run_scenario([("heartbeat_timeout", {"i": 0, "dialer": role == "dialer"})],
                           config=HEARTBEAT_FAULTS_CONFIG, eof_first=eof_first)
    assert machine.cands is not None
    assert ("HeartbeatTimeout", role) in machine.cands.covered


def test_a_heartbeat_timeout_that_ends_as_a_nil_return_diverges(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The check can fail: the dialer's timeout ending the handler like a nil return (the
    dialer stops retrying, as after Terminated) is not the model's HeartbeatTimeout."""
    from peerkit.impl import stream
    from peerkit.impl.stream import HEARTBEAT, Ending, StreamSession

    original = StreamSession._ended_with_error

    def nil_on_timeout(self: StreamSession, reason: str, message: str,
                       inbound: object = None) -> Ending:
        ending = original(self, reason, message, inbound)  # type: ignore[arg-type]
        return Ending(True, reason) if reason == HEARTBEAT else ending

    monkeypatch.setattr(stream.StreamSession, "_ended_with_error", nil_on_timeout)
    with pytest.raises(Divergence):
        run_scenario([("heartbeat_timeout", {"i": 0, "dialer": True})],
                     config=HEARTBEAT_FAULTS_CONFIG)


def test_the_heartbeat_fault_run_conforms() -> None:
    machine = machine_for(config=HEARTBEAT_FAULTS_CONFIG)
    machine.TestCase.settings = bug_hunt(EXAMPLES)
    machine.TestCase().runTest()
    assert machine.STATS["examples"] >= EXAMPLES
