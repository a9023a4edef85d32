"""Benchmark: states/s of the peering model before and after "Faster steps", side by side.

Each round runs `check` on one configuration once with a baseline checkout's installed peerkit
(its interpreter, in a child process) and once with this checkout's, alternating which goes
first, and records CPU seconds (`time.process_time` in the child: this machine is shared, and
CPU time is less disturbed by other load than wall time) and wall seconds. The two runs must
explore the same number of states and transitions, or the benchmark stops: a faster model that
explores something else is not faster.

Run:  python benchmarks/model_steps.py --baseline /work/main/.venv/bin/python [--rounds 3]
          [--config default] [--max-states N]
Writes benchmarks/results/model_steps.json and prints a table. Nothing is asserted about speed;
the figures go into README.md by hand, with the machine and the load they came from.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import machine_info, write_results

RESULTS = Path(__file__).resolve().parent / "results" / "model_steps.json"

#: what each child runs: one check, reported as JSON on stdout
_CHILD = """
import json, sys, time
from peerkit.checker.engine import Bounds, check
from peerkit.model import PeeringModel, get_config
config, max_states = sys.argv[1], (int(sys.argv[2]) if sys.argv[2] != "-" else None)
model = PeeringModel(get_config(config))
wall, cpu = time.perf_counter(), time.process_time()
result = check(model, Bounds(max_states=max_states))
cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
print(json.dumps({"states": result.distinct_states, "transitions": result.transitions,
                  "cpu": cpu, "wall": wall}))
"""


def run_once(python: str, config: str, max_states: int | None) -> dict[str, float]:
    out = subprocess.run(
        [python, "-c", _CHILD, config, str(max_states) if max_states else "-"],
        check=True, capture_output=True, text=True, cwd="/",  # cwd: import the installed code
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


def load() -> float:
    return round(os.getloadavg()[0], 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", required=True,
                        help="the interpreter of the checkout to compare with (its venv python)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--config", action="append", default=[])
    parser.add_argument("--max-states", type=int, default=None)
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    configs = args.config or ["default"]
    pythons = {"before": args.baseline, "after": sys.executable}
    report: dict[str, object] = {"machine": machine_info(), "rounds": args.rounds,
                                 "baseline": args.baseline, "max_states": args.max_states,
                                 "load_at_start": load()}
    rows = []
    for config in configs:
        runs: dict[str, list[dict[str, float]]] = {"before": [], "after": []}
        loads = []
        for r in range(args.rounds):
            order = ("before", "after") if r % 2 == 0 else ("after", "before")
            for which in order:
                runs[which].append(run_once(pythons[which], config, args.max_states))
                loads.append(load())
            b, a = runs["before"][-1], runs["after"][-1]
            if (b["states"], b["transitions"]) != (a["states"], a["transitions"]):
                raise SystemExit(f"{config}: before explored {b['states']} states and "
                                 f"{b['transitions']} transitions, after {a['states']} and "
                                 f"{a['transitions']}: not the same model")
            print(f"{config} round {r + 1}: before {b['cpu']:.2f} s CPU, after {a['cpu']:.2f} s "
                  f"CPU (load {loads[-1]})", flush=True)
        states = int(runs["before"][0]["states"])
        row: dict[str, object] = {"config": config, "states": states,
                                  "transitions": runs["before"][0]["transitions"],
                                  "load_min": min(loads), "load_max": max(loads)}
        for which in ("before", "after"):
            cpu = statistics.median(x["cpu"] for x in runs[which])
            wall = statistics.median(x["wall"] for x in runs[which])
            row[which] = {"cpu_seconds_median": round(cpu, 2),
                          "cpu_seconds": [round(x["cpu"], 2) for x in runs[which]],
                          "wall_seconds_median": round(wall, 2),
                          "states_per_cpu_second": round(states / cpu)}
        before, after = row["before"], row["after"]
        assert isinstance(before, dict) and isinstance(after, dict)
        row["speedup_cpu"] = round(before["cpu_seconds_median"] / after["cpu_seconds_median"], 2)
        rows.append(row)
    report["configs"] = rows
    report["load_at_end"] = load()
    print(f"\n{'config':<10} {'states':>9} {'before s/states/s':>20} {'after s/states/s':>20} "
          f"{'speed-up':>9} {'load':>10}")
    for row in rows:
        b, a = row["before"], row["after"]
        assert isinstance(b, dict) and isinstance(a, dict)
        print(f"{row['config']:<10} {row['states']:>9,} "
              f"{b['cpu_seconds_median']:>8} / {b['states_per_cpu_second']:>8,} "
              f"{a['cpu_seconds_median']:>8} / {a['states_per_cpu_second']:>8,} "
              f"{row['speedup_cpu']:>8}x {row['load_min']:>4}-{row['load_max']}")
    write_results(RESULTS, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
