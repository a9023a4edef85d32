"""The checker's shortest counterexample for each bug, replayed against the implementation through
the conformance driver (``peerkit.conformance.replay``, ``peerkit replay FILE``): a regression
test that is minimal by construction.

The counterexamples are stored in ``counterexamples/`` as ``peerkit check --json`` printed them
(configuration ``ci``, or ``default`` for the one bug ``ci`` cannot show); a test reruns the checker
and fails when a stored one is no longer the checker's, with the command that regenerates it.

May import: pytest, peerkit (cli, conformance, model).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from peerkit.cli import main
from peerkit.conformance import replay
from peerkit.model.vocabulary import BUGS

HERE = Path(__file__).parent / "counterexamples"
#: the configuration each stored counterexample comes from: ``ci`` (small, starts established,
#: two clusters) unless it cannot show the bug (no failovers there)
CONFIG_OF = {bug: "ci" for bug in BUGS} | {"deletion-no-stop": "default"}


def _file(bug: str) -> Path:
    return HERE / f"{bug}.json"


def _check_json(config: str, bug: str) -> dict[str, object]:
    out = io.StringIO()
    code = main(["check", "--config", config, "--bug", bug, "--json", "--no-progress"],
                out=out, err=io.StringIO())
    assert code == 1, f"{bug} is no longer caught in {config}"
    doc: dict[str, object] = json.loads(out.getvalue())
    return doc


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_the_stored_counterexample_is_the_checkers_current_one(bug: str) -> None:
    stored = json.loads(_file(bug).read_text())
    fresh = _check_json(CONFIG_OF[bug], bug)
    assert [s["action"] for s in stored["counterexample"]] == [
        s["action"] for s in fresh["counterexample"]  # type: ignore[attr-defined]
    ], (f"stale: regenerate with `peerkit check --config {CONFIG_OF[bug]} --bug {bug} --json "
        f"--no-progress > tests/conformance/counterexamples/{bug}.json`")


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_the_checkers_counterexample_replays_against_the_implementation(bug: str) -> None:
    """With the bug in the implementation only, the replay diverges; without it, it conforms
    and settles (so the program is a regression test for the fix, and a proof that it can
    fail)."""
    cex = replay.load(_file(bug).read_text())
    assert cex.bugs == {bug}
    program = replay.translate(cex)
    # minimal by construction: one rule per environment action, plus time steps and holds
    rules = [s.rule for s in program.steps]
    assert sum(r not in ("advance", "hold") for r in rules) == program.env_actions
    caught = replay.run(program, [bug])
    assert caught.diverged, f"{bug}: the replay did not catch the bug"
    clean = replay.run(program, [])
    assert not clean.diverged and not clean.off_script, clean.message
    assert clean.steps_run[-1] == "settle"


def test_a_message_lost_to_a_reset_is_held_from_the_step_before_it_was_sent() -> None:
    """termination-race's counterexample loses dc2's Terminated to the cancel that overtakes it:
    the program holds dc2's outbound direction (client to server) before the delete."""
    program = replay.translate(replay.load(_file("termination-race").read_text()))
    rules = [(s.rule, s.kwargs) for s in program.steps]
    assert rules.index(("hold", {"i": 0, "up": True})) == rules.index(("delete", {"c": 1})) - 1


def test_the_program_prints_as_python_that_runs() -> None:
    program = replay.translate(replay.load(_file("deletion-no-stop").read_text()))
    text = replay.render(program, ["deletion-no-stop"])
    assert "machine_for(impl_bugs=['deletion-no-stop'])" in text
    assert "state.delete(c=0)  # step 1\nstate.failover(c=0)  # step 2\n" in text
    code = compile(text, "<replay>", "exec")  # it is Python
    assert code.co_names


def test_peerkit_replay_exit_codes(tmp_path: Path) -> None:
    f = str(_file("no-reconnect"))
    out = io.StringIO()
    assert main(["replay", f], out=out, err=io.StringIO()) == 0
    assert "CONFORMS" in out.getvalue() and "state.reset(i=0)  # step 2" in out.getvalue()
    out = io.StringIO()
    assert main(["replay", "--with-bugs", f], out=out, err=io.StringIO()) == 1
    assert "DIVERGED at the final settle" in out.getvalue()
    assert "dc2: rows dc1=FAILING" in out.getvalue()
    out = io.StringIO()
    assert main(["replay", "--print-only", "--seed", "7", f], out=out, err=io.StringIO()) == 0
    assert "seed=7" in out.getvalue() and "CONFORMS" not in out.getvalue()
    err = io.StringIO()
    assert main(["replay", str(tmp_path / "missing.json")], out=io.StringIO(), err=err) == 2
    assert err.getvalue().count("\n") == 1 and "cannot read" in err.getvalue()


def _valid() -> dict[str, object]:
    doc: dict[str, object] = json.loads(_file("dial-deleted").read_text())
    return doc


def _with(**changes: object) -> str:
    return json.dumps(_valid() | changes)


def _step(action: dict[str, object]) -> str:
    return _with(counterexample=[{"action": action}])


HOSTILE = {
    "empty": ("", "not JSON"),
    "truncated": (_with()[:200], "not JSON"),
    "deeply nested": ("[" * 200_000, "not JSON"),
    "a list": ("[]", "expected a JSON object"),
    "no counterexample": (_with(counterexample=None), "holds no counterexample"),
    "not a list": (_with(counterexample="x"), "must be a list"),
    "a lasso": (_with(counterexample_loop=[{"step": 1}]), "lasso"),
    "unknown config": (_with(config="nope"), "unknown configuration"),
    "config not a name": (_with(config=3), "configuration name"),
    "unknown bug": (_with(bugs=["nope"]), "bug names"),
    "mutant not a name": (_with(mutant=[1]), "'mutant'"),
    "step not an object": (_with(counterexample=[3]), "step 1: expected"),
    "unknown action": (_step({"type": "Explode"}), "unknown action type"),
    "missing field": (_step({"type": "Delete", "cluster": 0}), "takes fields cluster, peer"),
    "extra field": (_step({"type": "Failover", "cluster": 0, "x": 1}), "takes fields"),
    "bool field": (_step({"type": "Failover", "cluster": True}), "must be a number"),
    "nested field": (_step({"type": "Failover", "cluster": [0]}), "must be a number"),
    "not enabled": (_step({"type": "DeleteRow", "cluster": 0, "peer": 1}),
                    "not a step the model can take"),
    "out of range": (_step({"type": "Failover", "cluster": 9}), "not a step the model"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_file_that_is_not_a_replayable_counterexample_is_refused(case: str,
                                                                   tmp_path: Path) -> None:
    text, expected = HOSTILE[case]
    with pytest.raises(replay.ReplayError, match=expected):
        replay.translate(replay.load(text))
    f = tmp_path / "cex.json"
    f.write_text(text)
    err = io.StringIO()
    assert main(["replay", str(f)], out=io.StringIO(), err=err) == 2
    assert err.getvalue().count("\n") == 1 and expected in err.getvalue()


def test_a_counterexample_of_three_clusters_is_refused() -> None:
    doc = _check_json("race", "stored-map")
    with pytest.raises(replay.ReplayError, match="the driver runs 2 clusters"):
        replay.translate(replay.load(json.dumps(doc)))
