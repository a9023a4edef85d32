"""Benchmark: the mutation catalog and the six bugs against the CI configurations.

Every named configuration (but `deep`, unless --deep) explored once with no mutant. For every
mutant and every bug switch: the configuration that kills it (trying `CI_CONFIGS` in
order, cheapest first), the violated property, the length of the shortest counterexample, the
states explored and the wall time to kill. For every mutant shown equivalent: every CI
configuration explored completely, and whether any killed it (none should).

Run:  python benchmarks/mutants.py [--skip-equivalent]
Writes benchmarks/results/mutants.json and prints a table. Nothing here is asserted; the figures
go into README.md by hand, with the machine they came from.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from peerkit.checker.engine import check
from peerkit.model import BUGS, CONFIGS, PeeringModel, get_config
from peerkit.model.mutants import EQUIVALENT, MUTANTS
from peerkit.mutation import run_one

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import machine_info

RESULTS = Path(__file__).resolve().parent / "results" / "mutants.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-equivalent", action="store_true",
                        help="do not explore the CI configurations for the equivalent mutants")
    parser.add_argument("--deep", action="store_true",
                        help="also explore `deep` (millions of states; many minutes, GBs)")
    args = parser.parse_args()
    configs = []
    names = [n for n in CONFIGS if n != "deep" or args.deep]
    for name in names:
        started = time.perf_counter()
        result = check(PeeringModel(get_config(name)))
        configs.append({"config": name, "distinct_states": result.distinct_states,
                        "transitions": result.transitions, "ok": result.ok,
                        "seconds": round(time.perf_counter() - started, 2)})
        print(f"config {name:16s} {result.distinct_states:>9,} states "
              f"{configs[-1]['seconds']:>7.2f} s ok={result.ok}", flush=True)
    rows = []
    for kind, names in (("bug", list(BUGS)), ("mutant", list(MUTANTS))):
        for name in names:
            equivalent = kind == "mutant" and name in EQUIVALENT
            if equivalent and args.skip_equivalent:
                continue
            kill = run_one(name if kind == "mutant" else None,
                           (name,) if kind == "bug" else ())
            rows.append({"kind": kind, "name": name, "equivalent": equivalent,
                         "killed": kill.killed, "config": kill.config,
                         "property": kill.property_id, "length": kill.steps,
                         "states_explored": kill.states, "seconds": round(kill.seconds, 3)})
            print(f"{kind:6s} {name:70s} {'EQUIV ' if equivalent else ''}"
                  f"{kill.config or 'survives':15s} {kill.property_id:32s} {kill.steps:>3} "
                  f"{kill.states:>9,} {kill.seconds:8.2f} s", flush=True)
    killable = [r for r in rows if r["kind"] == "mutant" and not r["equivalent"]]
    summary = {
        "mutants": len(MUTANTS), "equivalent": len(EQUIVALENT),
        "killed": sum(1 for r in killable if r["killed"]), "not_equivalent": len(killable),
        "equivalent_killed": sum(1 for r in rows if r["equivalent"] and r["killed"]),
        "seconds_to_kill_all": round(sum(float(r["seconds"]) for r in killable), 1),
    }
    print(json.dumps(summary))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine_info(), "configs": configs,
                                   "summary": summary, "rows": rows}, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
