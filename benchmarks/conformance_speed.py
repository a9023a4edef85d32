"""Conformance speed: rule steps/s and examples/s of the Hypothesis conformance run, the time and
examples it takes to catch each bug switch (5 Hypothesis seeds each), and the model coverage of
the bug-free run against every edge key the model reaches.

Run from the repository root with the project's venv:

    .venv/bin/python benchmarks/conformance_speed.py [--examples N] [--seeds K] [--json PATH]
        [--bug BUG ...] [--no-coverage]

Method: every measurement runs the state machine of ``peerkit.conformance.stateful`` in this
process with the database off. The bug-free run uses ``derandomize=True`` (a fixed sequence of
examples) and times the whole ``runTest`` with ``time.perf_counter``. Each bug hunt forces a
Hypothesis seed (``hypothesis.core.global_force_seed``, as ``pytest --hypothesis-seed`` does),
turns shrinking off, and records the wall time and the number of examples until the first
divergence (or that none was found within the budget). Coverage: the edge keys of
``peerkit.conformance.coverage`` on the edges the bug-free run's candidate sets went through,
against the keys on every edge of the complete state space of a named configuration, explored
breadth first over ``PeeringModel.successors`` (the same graph ``peerkit check`` explores).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import hypothesis.core
from hypothesis import Phase, settings

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine_info import machine_info

from peerkit.conformance.candidates import divergences
from peerkit.conformance.coverage import reachable_keys
from peerkit.conformance.profiles import _SUPPRESS, STEPS
from peerkit.conformance.stateful import CONFORMANCE_CONFIG, machine_for
from peerkit.model import PeeringModel, get_config
from peerkit.model.vocabulary import BUGS


def _settings(examples: int, derandomize: bool) -> settings:
    return settings(max_examples=examples, derandomize=derandomize, database=None,
                    phases=(Phase.explicit, Phase.generate), deadline=None,
                    stateful_step_count=STEPS, suppress_health_check=_SUPPRESS)


def clean_run(examples: int) -> dict[str, Any]:
    machine = machine_for()
    machine.TestCase.settings = _settings(examples, derandomize=True)
    start = time.perf_counter()
    machine.TestCase().runTest()
    seconds = time.perf_counter() - start
    stats = machine.STATS
    return {
        "examples": stats["examples"],
        "rule_steps": stats["steps"],
        "seconds": round(seconds, 2),
        "examples_per_second": round(stats["examples"] / seconds, 1),
        "steps_per_second": round(stats["steps"] / seconds, 1),
        "largest_closure": stats.get("largest_closure", 0),
        "covered": sorted(machine.COVERED),
    }


def hunt(bug: str, seed: int, budget: int) -> dict[str, Any]:
    machine = machine_for(impl_bugs=[bug])
    machine.TestCase.settings = _settings(budget, derandomize=False)
    hypothesis.core.global_force_seed = seed  # type: ignore[attr-defined]
    start = time.perf_counter()
    caught = False
    try:
        machine.TestCase().runTest()
    except BaseException as exc:  # a divergence (or a group of them) is what we hunt for
        if not divergences(exc):
            raise
        caught = True
    finally:
        hypothesis.core.global_force_seed = None  # type: ignore[attr-defined]
    return {"seed": seed, "caught": caught, "examples": machine.STATS.get("examples", 0),
            "seconds": round(time.perf_counter() - start, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=int, default=1000)
    parser.add_argument("--coverage-configs", default="default,churn,tiny")
    parser.add_argument("--conformance-limit", type=int, default=300_000,
                        help="states of the conformance configuration to enumerate")
    parser.add_argument("--bug", action="append", default=[],
                        help="hunt only this bug (repeatable; default: every bug)")
    parser.add_argument("--no-coverage", action="store_true",
                        help="skip the coverage part (enumerating the reference state spaces)")
    parser.add_argument("--json", default="benchmarks/results/conformance_speed.json")
    args = parser.parse_args()
    logging.getLogger("peerkit").setLevel(logging.CRITICAL)

    out: dict[str, Any] = {"machine": machine_info(), "config": CONFORMANCE_CONFIG.name,
                           "steps_per_example": STEPS, "examples": args.examples,
                           "seeds": args.seeds, "budget": args.budget}
    clean = clean_run(args.examples)
    print(f"bug-free: {clean['examples']} examples, {clean['rule_steps']} rule steps in "
          f"{clean['seconds']} s: {clean['examples_per_second']} examples/s, "
          f"{clean['steps_per_second']} steps/s; largest closure {clean['largest_closure']}")
    out["clean"] = clean

    out["bugs"] = {}
    for bug in args.bug or sorted(BUGS):
        runs = [hunt(bug, seed, args.budget) for seed in range(args.seeds)]
        out["bugs"][bug] = runs
        caught = [r for r in runs if r["caught"]]
        print(f"{bug}: caught in {len(caught)}/{len(runs)} seeds; examples "
              f"{[r['examples'] for r in runs]}; seconds {[r['seconds'] for r in runs]}",
              flush=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")  # so far, if cut short

    if args.no_coverage:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")
        return

    covered = {tuple(k) for k in clean["covered"]}
    out["coverage"] = {"covered_keys": len(covered)}
    references = [(name, PeeringModel(get_config(name)), 10_000_000)
                  for name in args.coverage_configs.split(",")]
    references.append(("conformance", PeeringModel(CONFORMANCE_CONFIG),
                       args.conformance_limit))
    union: set[tuple[str, ...]] = set()
    for name, model, limit in references:
        start = time.perf_counter()
        reachable, complete = reachable_keys(model, limit)
        if name != "conformance":
            union |= reachable
        in_both = covered & reachable
        out["coverage"][name] = {
            "complete": complete,
            "reachable_keys": len(reachable),
            "covered_and_reachable": len(in_both),
            "fraction": round(len(in_both) / len(reachable), 3),
            "not_covered": sorted(reachable - covered),
            "seconds_to_enumerate": round(time.perf_counter() - start, 1),
        }
        print(f"coverage of {name}{'' if complete else f' (first {limit:,} states)'}: "
              f"{len(in_both)}/{len(reachable)} edge keys "
              f"({len(in_both) / len(reachable):.0%})")
    in_union = covered & union
    out["coverage"]["union_of_named"] = {
        "reachable_keys": len(union), "covered_and_reachable": len(in_union),
        "fraction": round(len(in_union) / len(union), 3),
        "not_covered": sorted(union - covered),
        "covered_outside": sorted(covered - union),
    }
    print(f"coverage of the named configurations together: {len(in_union)}/{len(union)} "
          f"({len(in_union) / len(union):.0%}); not covered: {sorted(union - covered)}")
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
