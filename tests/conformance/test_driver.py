"""The conformance driver itself: a seed replays the same run exactly, a stuck step is reported,
a scripted scenario reaches the divergence each bug is caught by, and an example's collector
setting is put back after it.

May import: pytest, trio, peerkit.conformance, peerkit.model.
"""

from __future__ import annotations

import gc
from typing import Any

import pytest
import trio

from peerkit.conformance.candidates import Candidates, Divergence
from peerkit.conformance.guest import GuestRun, StepNeverFinished
from peerkit.conformance.stateful import (
    YOUNG_GENERATION,
    ConformanceMachine,
    machine_for,
    run_scenario,
)


def _scripted(machine: ConformanceMachine, seed: int) -> list[tuple[object, ...]]:
    machine.setup(seed=seed, upstream_pacing=False, establish_after=0.0)
    try:
        machine.hold(i=0, up=True)
        machine.delete(c=1)
        machine.advance(seconds=5.0)
        machine.release()
        machine.settle()
        assert machine.net is not None
        return list(machine.net.trace)
    finally:
        machine.teardown()


def test_one_seed_replays_one_run() -> None:
    traces = [_scripted(machine_for()(), seed=3) for _ in range(3)]
    assert traces[0] == traces[1] == traces[2]
    assert len(traces[0]) > 20


def test_a_step_that_never_finishes_is_reported_and_the_run_ends() -> None:
    run = GuestRun(seed=0)

    async def main(portal: GuestRun) -> None:
        await portal.serve()

    run.start(main)

    async def spin() -> None:
        while True:
            await trio.lowlevel.checkpoint()

    import peerkit.conformance.guest as guest

    old = guest.MAX_CALLBACKS_PER_STEP
    guest.MAX_CALLBACKS_PER_STEP = 1_000
    try:
        with pytest.raises(StepNeverFinished):
            run.call(spin)
        with pytest.raises(StepNeverFinished):
            run.close()
    finally:
        guest.MAX_CALLBACKS_PER_STEP = old
    # the run has ended: a new one can start on this thread
    again = GuestRun(seed=1)
    again.start(main)
    again.close()


SCENARIOS = {
    # bug: the rule sequence after setup (slow pacing) that exposes it
    "stored-map": [],  # the acceptor's sync pass after the stream connected (setup's 6 s gap)
    "termination-race": [("hold", {"i": 0, "up": True}), ("delete", {"c": 1}),
                         ("advance", {"seconds": 5.0})],
    "terminated-undeletable": [("delete", {"c": 0}), ("advance", {"seconds": 300.0}),
                               ("delete", {"c": 1})],
    "no-reconnect": [("reset", {"i": 0})],
    "deletion-no-stop": [("delete", {"c": 1}), ("failover", {"c": 1})],
    "dial-deleted": [("reset", {"i": 0}), ("delete", {"c": 0}), ("advance", {"seconds": 2.0})],
}


@pytest.mark.parametrize("bug", sorted(SCENARIOS))
def test_each_bug_has_a_scenario_the_driver_catches(bug: str) -> None:
    """Without search: the known scenario diverges with the bug and conforms without it."""
    for impl_bugs, diverges in (([bug], True), ([], False)):
        machine = machine_for(impl_bugs=impl_bugs)()
        try:
            machine.setup(seed=0, upstream_pacing=False,
                          establish_after=6.0 if bug == "stored-map" else 0.0)
            for name, kwargs in SCENARIOS[bug]:
                getattr(machine, name)(**kwargs)
            machine._settle()
        except Divergence:
            assert diverges, f"{bug}: diverged without the bug"
            machine.diverged = True
        else:
            assert not diverges, f"{bug}: the scenario did not diverge with the bug on"
        finally:
            machine.teardown()


def test_a_stale_token_is_where_model_and_implementation_part() -> None:
    """Known gap, why ``establish`` only uses fresh tokens: the model does not model
    ExchangeSecret, so Establish with the token of a peering both sides have deleted creates an
    ESTABLISHING row (whose dials are then refused); the implementation refuses the
    establishment itself (PERMISSION_DENIED from ExchangeSecret) and creates no row."""
    from peerkit.model import actions as A

    machine = machine_for()()
    machine.setup(seed=0, upstream_pacing=True, establish_after=0.0)
    try:
        machine.delete(c=1)
        machine.advance(seconds=300.0)
        machine.delete(c=0)
        machine.advance(seconds=300.0)
        (key,) = machine.tokens

        async def stale() -> None:
            await machine.clusters[1].client.establish("dc1", machine.tokens[key])

        with pytest.raises(Divergence, match=r"dc2\.rows: model \(\('dc1', 'ESTABLISHING'\),\)"):
            machine._operator(A.Establish(1, 0, key[1]), stale)
        machine.diverged = True
    finally:
        machine.teardown()


@pytest.mark.parametrize("mutant", ["drop-disconnect:dialer-open-reset",
                                    "drop-disconnect:acceptor-open-reset"])
def test_the_open_stream_count_catches_a_missed_reset_at_the_reset(mutant: str) -> None:
    """A handler that does not mark its tracker entry disconnected when its stream is reset
    leaves the view as it was (rows ACTIVE, tracker connected): the model agrees while the
    reset is still in flight. Only the count of open stream calls tells: the implementation has
    none left, and every model state with the tracker still connected has the stream. Without
    the count the mistake showed only at the end, when the servers failed to settle."""
    for mutants in ([mutant], []):
        machine = machine_for(impl_mutants=mutants)()
        try:
            machine.setup(seed=0, upstream_pacing=False, establish_after=0.0)
            if mutants:
                with pytest.raises(Divergence, match=r"dc1\.streams: model 1 / impl 0"):
                    machine.reset(i=0)
                machine.diverged = True
            else:
                machine.reset(i=0)  # conforms without the mutant
        finally:
            machine.teardown()


def test_the_young_gc_generation_is_raised_for_an_example_and_restored_after_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``setup`` raises the collector's youngest threshold to ``YOUNG_GENERATION`` for the
    example; ``teardown`` puts the old thresholds back, also after a divergence."""
    before = gc.get_threshold()
    during: list[tuple[int, int, int]] = []
    observe = Candidates.observe
    calls = [0]
    failing = [False]

    def watching(self: Candidates, *args: Any, **kwargs: Any) -> None:
        during.append(gc.get_threshold())
        calls[0] += 1
        if calls[0] == 4 and failing[0]:
            raise Divergence("a divergence, raised by the test")
        observe(self, *args, **kwargs)

    monkeypatch.setattr(Candidates, "observe", watching)
    for fail in (False, True):
        failing[0], calls[0] = fail, 0
        try:
            run_scenario([("advance", {"seconds": 5.0})])
        except Divergence:
            assert fail
        else:
            assert not fail
        assert gc.get_threshold() == before
    assert len(during) > 8
    assert set(during) == {(max(YOUNG_GENERATION, before[0]), *before[1:])}
