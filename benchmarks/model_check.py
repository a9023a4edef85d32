"""Benchmark: the model checker on the peering model.

Measures, in one run:
* the named configurations (default and ci, plus any given with --config), each explored
  completely several times: distinct states, transitions, depth, wall seconds, states/s;
* every bug switch on the default configuration: the violated property, the length of the
  shortest counterexample and the wall time to find it.

Run:  python benchmarks/model_check.py [--rounds 3] [--config NAME ...]
Writes benchmarks/results/model_check.json and prints a table. Nothing here is asserted; the
figures go into README.md by hand, with the machine they came from.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from peerkit.checker.engine import check
from peerkit.model import BUGS, PeeringModel, get_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import machine_info, write_results

RESULTS = Path(__file__).resolve().parent / "results" / "model_check.json"


def measure_config(name: str, rounds: int) -> dict[str, object]:
    runs = []
    for _ in range(rounds):
        model = PeeringModel(get_config(name))
        started = time.perf_counter()
        result = check(model)
        seconds = time.perf_counter() - started
        assert result.complete and result.ok, f"{name}: {result.stopped_because}"
        runs.append((result.distinct_states, result.transitions, result.depth, seconds))
    states, transitions, depth, _ = runs[0]
    times = [r[3] for r in runs]
    return {
        "config": name, "distinct_states": states, "transitions": transitions, "depth": depth,
        "seconds_median": round(statistics.median(times), 2),
        "seconds_min": round(min(times), 2), "seconds_max": round(max(times), 2),
        "states_per_second_median": round(states / statistics.median(times)),
    }


def measure_bug(bug: str, config: str) -> dict[str, object]:
    model = PeeringModel(get_config(config), {bug})
    started = time.perf_counter()
    result = check(model)
    seconds = time.perf_counter() - started
    ce = result.counterexample
    assert ce is not None, f"{bug} not found"
    return {"bug": bug, "config": config, "property": ce.property_id, "length": len(ce.steps),
            "states_explored": result.distinct_states, "seconds": round(seconds, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--config", action="append", default=[])
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    configs = ["default", "ci", *args.config]
    report: dict[str, object] = {"machine": machine_info(), "rounds": args.rounds}
    rows = [measure_config(name, args.rounds) for name in configs]
    report["configs"] = rows
    bugs = [measure_bug(bug, "default") for bug in BUGS]
    report["bugs"] = bugs
    print(f"{'config':<10} {'states':>10} {'transitions':>12} {'depth':>6} "
          f"{'seconds (median, min-max)':>28} {'states/s':>10}")
    for r in rows:
        print(f"{r['config']:<10} {r['distinct_states']:>10,} {r['transitions']:>12,} "
              f"{r['depth']:>6} {r['seconds_median']:>12} ({r['seconds_min']}-{r['seconds_max']})"
              f"{'':>6} {r['states_per_second_median']:>10,}")
    print()
    print(f"{'bug':<24} {'property':<30} {'steps':>5} {'states':>8} {'seconds':>8}")
    for b in bugs:
        print(f"{b['bug']:<24} {b['property']:<30} {b['length']:>5} {b['states_explored']:>8,} "
              f"{b['seconds']:>8}")
    write_results(RESULTS, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
