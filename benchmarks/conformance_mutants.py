"""Conformance against the implementation's mutants: for every mutant of the catalog ported to
the implementation (``peerkit.impl.mutants.IMPL_MUTANTS``), whether its directed scenario
diverges, and how many examples and seconds a derandomized Hypothesis hunt takes to catch it.

Run from the repository root with the project's venv:

    .venv/bin/python benchmarks/conformance_mutants.py [--budget N] [--json PATH] [NAME ...]

Method: each mutant is switched on in the implementation only (the model runs unmutated).
*Directed*: ``peerkit.conformance.mutants.scenario_diverges`` replays its fixed scenario (none
for the mutants in ``NOT_CAUGHT``). *Hunt*: the state machine of ``peerkit.conformance.stateful``
runs with ``peerkit.conformance.profiles.bug_hunt(budget)`` settings (derandomized: the same
sequence of examples every time; no database; no shrinking), in this process, timed with
``time.perf_counter``; the result is the number of example runs until the first divergence
(``machine.STATS["examples"]``, which also counts the runs Hypothesis discards), or "not caught
within the budget". Results are written after every mutant, so a cut-short run keeps what it
measured. NAMEs restrict the run to those mutants; ``--merge`` keeps the mutants already in the
JSON file (a run in parts); ``--not-caught-budget`` gives the mutants of ``NOT_CAUGHT`` (which no
rule sequence of the driver can expose, so every example of their hunt runs) a smaller budget.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine_info import machine_info

from peerkit.conformance.candidates import divergences
from peerkit.conformance.mutants import NOT_CAUGHT, SCENARIOS, scenario_diverges, setup_of
from peerkit.conformance.profiles import STEPS, bug_hunt
from peerkit.conformance.stateful import machine_for
from peerkit.impl.mutants import IMPL_MUTANTS


def hunt(mutant: str, budget: int) -> dict[str, Any]:
    machine = machine_for(impl_mutants=[mutant])
    machine.TestCase.settings = bug_hunt(budget)
    start = time.perf_counter()
    caught = False
    try:
        machine.TestCase().runTest()
    except BaseException as exc:  # a divergence (or a group of them) is what we hunt for
        if not divergences(exc):
            raise
        caught = True
    return {"caught": caught, "examples": machine.STATS.get("examples", 0),
            "seconds": round(time.perf_counter() - start, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--json", default="benchmarks/results/conformance_mutants.json")
    parser.add_argument("--not-caught-budget", type=int, default=None,
                        help="budget for the mutants of NOT_CAUGHT (default: --budget)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the results already in the JSON file")
    parser.add_argument("names", nargs="*", help="only these mutants (default: every one)")
    args = parser.parse_args()
    logging.getLogger("peerkit").setLevel(logging.CRITICAL)
    names = args.names or sorted(IMPL_MUTANTS)
    unknown = sorted(set(names) - set(IMPL_MUTANTS))
    if unknown:
        parser.error(f"not ported mutants: {', '.join(unknown)}")

    out: dict[str, Any] = {"machine": machine_info(), "budget": args.budget,
                           "steps_per_example": STEPS, "mutants": {}}
    if args.merge and Path(args.json).exists():
        out["mutants"] = json.loads(Path(args.json).read_text())["mutants"]
    for name in names:
        budget = args.budget
        if name in NOT_CAUGHT and args.not_caught_budget is not None:
            budget = args.not_caught_budget
        start = time.perf_counter()
        directed = (scenario_diverges([name], SCENARIOS[name], **setup_of(name))
                    if name in SCENARIOS else None)
        directed_seconds = round(time.perf_counter() - start, 2)
        result = {"directed": directed, "directed_seconds": directed_seconds,
                  "not_caught_reason": NOT_CAUGHT.get(name), "budget": budget,
                  **hunt(name, budget)}
        out["mutants"][name] = result
        found = (f"caught after {result['examples']} examples" if result["caught"]
                 else f"not caught within {budget} examples")
        print(f"{name}: directed {directed}; hunt {found}, {result['seconds']} s", flush=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
