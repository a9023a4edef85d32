"""Hypothesis's own cost per rule step in a conformance-shaped state machine: the floor under
the conformance run's rule steps per second, whatever the driver, the model and the
implementation cost.

Run from the repository root with the project's venv:

    .venv/bin/python benchmarks/hypothesis_floor.py [--examples N] [--rounds K] [--json PATH]

Method: a `RuleBasedStateMachine` is built from the conformance machine
(``peerkit.conformance.stateful.machine_for()``): the same rules and the same initialize rule,
each with the same argument strategies, read from the markers Hypothesis puts on them, but every
body only counts and no rule has a precondition. It runs with the settings of the bug-free run of
``benchmarks/conformance_speed.py`` (derandomized, no database, the explicit and generate phases,
``STEPS`` steps an example) and reports rule steps per CPU second of the whole ``runTest``
(``time.process_time``, less disturbed by other jobs than wall time). The real machine's rules
also have preconditions, which Hypothesis evaluates for every candidate rule; they are left out
here, so this floor is, if anything, lower than the real one.

What it shows: the conformance run cannot go faster than this per rule step even if the driver,
the abstraction, the model's candidate search and the implementation under trio cost nothing.
Nothing is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import hypothesis.stateful as hs
from hypothesis import Phase, settings

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine_info import machine_info, write_results

from peerkit.conformance.profiles import _SUPPRESS, STEPS
from peerkit.conformance.stateful import machine_for

RESULTS = Path(__file__).resolve().parent / "results" / "hypothesis_floor.json"


def floor_machine(counter: list[int]) -> type[hs.RuleBasedStateMachine]:
    """The conformance machine's rules and initialize rule, with bodies that only count:
    ``counter[0]`` the rule steps, ``counter[1]`` the set-ups (example runs)."""
    real = machine_for()
    namespace: dict[str, Any] = {}
    for name in dir(real):
        member = getattr(real, name, None)
        marked = getattr(member, hs.RULE_MARKER, None)
        initial = getattr(member, hs.INITIALIZE_RULE_MARKER, None)
        if marked is None and initial is None:
            continue

        slot = 0 if initial is None else 1

        def body(self: Any, _slot: int = slot, **_: Any) -> None:
            counter[_slot] += 1

        body.__name__ = name
        found = initial if initial is not None else marked
        assert found is not None
        arguments = found.arguments
        decorate = hs.initialize if initial is not None else hs.rule
        namespace[name] = decorate(**arguments)(body)
    if not any(getattr(v, hs.RULE_MARKER, None) for v in namespace.values()):
        raise RuntimeError("found no rules on the conformance machine: the markers moved?")
    return type("Floor", (hs.RuleBasedStateMachine,), namespace)


def one_round(examples: int) -> dict[str, Any]:
    counter = [0, 0]
    machine = floor_machine(counter)
    machine.TestCase.settings = settings(
        max_examples=examples, derandomize=True, database=None,
        phases=(Phase.explicit, Phase.generate), deadline=None,
        stateful_step_count=STEPS, suppress_health_check=_SUPPRESS)
    cpu, wall = time.process_time(), time.perf_counter()
    machine.TestCase("runTest").runTest()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"rule_steps": counter[0], "example_runs": counter[1], "cpu_seconds": round(cpu, 3),
            "wall_seconds": round(wall, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    runs = [one_round(args.examples) for _ in range(args.rounds)]
    for run in runs:
        # per rule step, the set-ups included, as conformance_speed.py counts its rule steps/s
        run["ms_cpu_per_rule_step"] = round(1e3 * run["cpu_seconds"] / run["rule_steps"], 4)
        run["rule_steps_per_cpu_second"] = round(run["rule_steps"] / run["cpu_seconds"])
        print(f"{run['rule_steps']:,} rule steps in {run['example_runs']:,} example runs, "
              f"{run['cpu_seconds']:.2f} CPU s: {run['ms_cpu_per_rule_step']:.3f} ms a rule step, "
              f"{run['rule_steps_per_cpu_second']:,} rule steps per CPU s")
    median = statistics.median(r["ms_cpu_per_rule_step"] for r in runs)
    print(f"median {median:.3f} ms of CPU per rule step")
    write_results(args.json, {
        "benchmark": "hypothesis_floor", "command": " ".join(sys.argv),
        "examples": args.examples, "steps_per_example": STEPS, "machine": machine_info(),
        "runs": runs, "median_ms_cpu_per_rule_step": median})


if __name__ == "__main__":
    main()
