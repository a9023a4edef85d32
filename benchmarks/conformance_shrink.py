"""Shrunk length: how short Hypothesis makes the conformance program that catches each bug, against
the model checker's shortest counterexample and the replay of it.

Run from the repository root with the project's venv:

    .venv/bin/python benchmarks/conformance_shrink.py [--seeds K] [--budget N] [--json PATH]
        [--first-seed S0] [--bug BUG ...] [--shrink-seconds S]

Method: for each bug switch (on in the implementation only) and each Hypothesis seed
(``hypothesis.core.global_force_seed`` S0..S0+K-1, S0 = 0 by default), the conformance state
machine runs with shrinking on and the database off until it fails; the program Hypothesis
prints for the shrunk failure (the ``state.rule(...)`` lines it attaches to the exception) is
counted, without ``setup`` and ``teardown``. The checker's side comes from
``tests/conformance/counterexamples/BUG.json`` (the shortest counterexample, ``peerkit check
--json``): all its steps, and its environment actions (operator calls and faults, the steps a
driver rule pins; the protocol steps between them happen by themselves in the implementation).
The replay is ``peerkit.conformance.replay.translate`` of
that file (environment actions plus the ``advance`` and ``hold`` rules it needs).

``--shrink-seconds`` bounds the shrinking of each failure: Hypothesis stops shrinking at its next
check after that many seconds (its own bound is 300 s, ``MAX_SHRINKING_SECONDS`` of its engine,
which this sets), and reports the shortest program found so far; a run that hit the bound says so
(``shrink_bounded``), and its count is an upper bound of what unbounded shrinking reaches.

Rule counts are exact; seconds depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import hypothesis.core
import hypothesis.internal.conjecture.engine as hypothesis_engine
from hypothesis import Phase, settings
from hypothesis.reporting import with_reporter

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine_info import machine_info

from peerkit.conformance import replay
from peerkit.conformance.candidates import divergences
from peerkit.conformance.profiles import _SUPPRESS, STEPS
from peerkit.conformance.stateful import machine_for
from peerkit.model.vocabulary import BUGS

ROOT = Path(__file__).resolve().parent.parent
STORED = ROOT / "tests" / "conformance" / "counterexamples"


def shrunk(bug: str, seed: int, budget: int, shrink_seconds: float) -> dict[str, Any]:
    machine = machine_for(impl_bugs=[bug])
    machine.TestCase.settings = settings(
        max_examples=budget, database=None, deadline=None, stateful_step_count=STEPS,
        phases=(Phase.explicit, Phase.generate, Phase.shrink), report_multiple_bugs=False,
        print_blob=False, suppress_health_check=_SUPPRESS)
    old = hypothesis.core.global_force_seed
    hypothesis.core.global_force_seed = seed
    hypothesis_engine.MAX_SHRINKING_SECONDS = shrink_seconds  # type: ignore[assignment]
    start = time.perf_counter()
    reported: list[str] = []  # Hypothesis's reports: its warning when shrinking hit the bound
    try:
        with with_reporter(reported.append):
            machine.TestCase().runTest()
    except BaseException as exc:  # the failure is the measurement
        seconds = time.perf_counter() - start
        found = divergences(exc)
        div = found[0] if found else None
        notes = "\n".join(getattr(exc, "__notes__", []) or getattr(div, "__notes__", []))
        lines = [ln.strip() for ln in notes.splitlines() if ln.strip().startswith("state.")]
        rules = [ln for ln in lines if not ln.startswith(("state.setup(", "state.teardown("))]
        return {"seed": seed, "caught": div is not None, "rules": len(rules),
                "program": lines, "seconds": round(seconds, 2),
                "shrink_bounded": any("making very slow progress" in r for r in reported)}
    finally:
        hypothesis.core.global_force_seed = old
    return {"seed": seed, "caught": False, "seconds": round(time.perf_counter() - start, 2)}


def checker_side(bug: str) -> dict[str, Any]:
    cex = replay.load((STORED / f"{bug}.json").read_text())
    program = replay.translate(cex)
    return {"config": cex.config.name, "checker_steps": program.checker_steps,
            "env_actions": program.env_actions, "replay_rules": len(program.steps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="the seeds are FIRST_SEED .. FIRST_SEED + SEEDS - 1")
    parser.add_argument("--budget", type=int, default=2_500)
    parser.add_argument("--bug", action="append", default=[])
    parser.add_argument("--shrink-seconds", type=float,
                        default=float(hypothesis_engine.MAX_SHRINKING_SECONDS),
                        help="bound on each failure's shrinking (default: Hypothesis's own)")
    parser.add_argument("--json", type=Path,
                        default=ROOT / "benchmarks" / "results" / "conformance_shrink.json")
    args = parser.parse_args()
    logging.getLogger("peerkit").setLevel(logging.CRITICAL)
    results: dict[str, Any] = {"machine": machine_info(), "seeds": args.seeds,
                               "first_seed": args.first_seed,
                               "budget": args.budget, "shrink_seconds": args.shrink_seconds,
                               "bugs": {}}
    for bug in args.bug or sorted(BUGS):
        runs = [shrunk(bug, seed, args.budget, args.shrink_seconds)
                for seed in range(args.first_seed, args.first_seed + args.seeds)]
        caught = [r["rules"] for r in runs if r["caught"]]
        entry = checker_side(bug) | {
            "runs": runs,
            "shrunk_rules_median": statistics.median(caught) if caught else None,
            "shrunk_rules_min": min(caught) if caught else None,
        }
        results["bugs"][bug] = entry
        print(f"{bug}: checker {entry['checker_steps']} steps ({entry['env_actions']} "
              f"environment), replay {entry['replay_rules']} rules, shrunk "
              f"{[r.get('rules') for r in runs]} rules, "
              f"{[r['seconds'] for r in runs]} s", flush=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
