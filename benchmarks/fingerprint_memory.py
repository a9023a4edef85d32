"""Fingerprint mode's memory: bytes per visited state, exact mode against `check --fingerprints`.

Each measurement is a fresh process that builds the peering model for one configuration, takes
its resident set size (VmRSS) after a garbage collection, runs one search, and reads the peak
resident set size (VmHWM), also just before the liveness decision of a complete search (so the
search's own peak and the decision's are told apart). The growth, peak minus before, is all the
search allocated at its worst moment: the visited-state store, the liveness graph, the states
held in full (all of them in the exact mode; a chunk of the current and of the next BFS level in
fingerprint mode, the rest of those levels compressed), the liveness decision's arrays and the
allocator's slack. It is divided by the number of distinct states. The engine's own accounting
(allocated bytes of its arrays, FingerprintReport) is reported next to it, split into bytes per
state (fingerprint table, fingerprints, parents, target bits) and bytes per transition (the
shared liveness edge store).

Runs: `default` complete (liveness decided) in both modes, a prefix of `deep` (the first N
states, default 300,000; liveness then undecided) in both modes, and on request the toy
`counters(7, 5)` (279,936 states, no liveness property, so no edge store). Both modes must
report the same states and transitions; the script fails if they do not.

``--compare-python PY`` measures another checkout side by side in the same run: after each
configuration's two rows, the same two with PY, an interpreter whose ``peerkit`` is the other
checkout (its rows say ``"code": "compared"``). It must find the same states and transitions.

It also times the two fingerprint functions per call on the states of `ci` (process_fingerprint
is hash(); fingerprint is BLAKE2b over the canonical text, the same in every process).

Run ``python benchmarks/fingerprint_memory.py --help``; results go to
benchmarks/results/fingerprint_memory.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from machine_info import machine_info

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "fingerprint_memory.json"

#: the brief's target, reported (never asserted)
TARGET_BYTES_PER_STATE = 100


def _kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def worker(config: str, fingerprints: bool, max_states: int | None) -> dict[str, Any]:
    import gc

    from peerkit.checker import engine
    from peerkit.checker.engine import Bounds, check
    from peerkit.model import PeeringModel, get_config

    # the peak as the search ends and the liveness decision begins (complete searches only)
    decide = engine._Search._decide_liveness
    marks: dict[str, int] = {}

    def wrapped(self: Any) -> None:
        marks["search_peak"] = _kib("VmHWM")
        decide(self)

    engine._Search._decide_liveness = wrapped  # type: ignore[method-assign]
    model: Any
    if config == "counters":
        from peerkit.checker.toys import counters

        model = counters(7, 5)
    else:
        model = PeeringModel(get_config(config))
        model.initial()
    gc.collect()
    before = _kib("VmRSS")
    started = time.perf_counter()
    result = check(model, Bounds(max_states=max_states), fingerprints=fingerprints)
    seconds = time.perf_counter() - started
    peak = _kib("VmHWM")
    growth = (peak - before) * 1024
    out: dict[str, Any] = {
        "config": config,
        "mode": "fingerprints" if fingerprints else "exact",
        "max_states": max_states,
        "distinct_states": result.distinct_states,
        "transitions": result.transitions,
        "complete": result.complete,
        "ok": result.ok,
        "seconds": round(seconds, 2),
        "rss_before_mib": round(before / 1024, 1),
        "rss_peak_growth_mib": round(growth / 2**20, 1),
        "peak_growth_bytes_per_state": round(growth / max(result.distinct_states, 1), 1),
    }
    if "search_peak" in marks:
        search_growth = (marks["search_peak"] - before) * 1024
        out["search_peak_growth_bytes_per_state"] = round(
            search_growth / max(result.distinct_states, 1), 1)
    fp = result.fingerprints
    if fp is not None:
        out.update({
            "store_bytes_per_state": round(fp.bytes_per_state, 1),
            "edge_store_bytes_per_transition": round(fp.bytes_per_transition, 1),
            "edges": fp.edges,
            "peak_frontier_states": fp.peak_frontier,
            "peak_frontier_compressed_mib": round(fp.peak_frontier_bytes / 2**20, 1),
            "omission_probability": fp.omission_probability,
            "collisions_detected": fp.collisions_detected,
        })
    return out


def fingerprint_cost(config: str = "ci", limit: int = 5000) -> dict[str, Any]:
    """Microseconds per call of each fingerprint function on `limit` states of `config`."""
    from collections import deque

    from peerkit.checker.fingerprint import fingerprint, process_fingerprint
    from peerkit.model import PeeringModel, get_config

    model = PeeringModel(get_config(config))
    states = list(model.initial_states())
    seen = set(states)
    queue = deque(states)
    while queue and len(states) < limit:
        for _action, nxt in model.successors(queue.popleft()):
            if nxt not in seen:
                seen.add(nxt)
                states.append(nxt)
                queue.append(nxt)
    out: dict[str, Any] = {"config": config, "states": len(states)}
    for name, fn in (("process_fingerprint", process_fingerprint),
                     ("fingerprint", fingerprint)):
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            for state in states:
                fn(state)
            best = min(best, time.perf_counter() - started)
        out[f"{name}_us"] = round(best / len(states) * 1e6, 2)
    return out


def _spawn(config: str, fingerprints: bool, max_states: int | None,
           python: str = sys.executable) -> dict[str, Any]:
    argv = [python, __file__, "--worker", config]
    if fingerprints:
        argv.append("--fingerprints")
    if max_states is not None:
        argv += ["--max-states", str(max_states)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=True)
    row: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return row


def _uptime() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", metavar="CONFIG", help=argparse.SUPPRESS)
    parser.add_argument("--fingerprints", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--max-states", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--deep-states", type=int, default=300_000,
                        help="how many states of `deep` to explore (default 300,000)")
    parser.add_argument("--runs", default="default,deep",
                        help="comma-separated: default (complete), deep (a prefix), counters "
                        "(the toy counters(7, 5): no liveness; default: default,deep)")
    parser.add_argument("--compare-python", metavar="PY",
                        help="also run every row with PY, whose peerkit is another checkout")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write the results")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.fingerprints, args.max_states)))
        return 0

    runs = [(name, args.deep_states if name == "deep" else None)
            for name in args.runs.split(",")]
    rows = []
    failed = False
    codes = [("this", sys.executable)]
    if args.compare_python:
        codes.append(("compared", args.compare_python))
    for config, limit in runs:
        pair = []
        for code, python in codes:
            for fingerprints in (False, True):
                load = _uptime()
                row = _spawn(config, fingerprints, limit, python)
                row["load_before"] = load
                row["code"] = code
                print(json.dumps(row))
                rows.append(row)
                pair.append(row)
        first = pair[0]
        if any((first["distinct_states"], first["transitions"]) != (
                row["distinct_states"], row["transitions"]) for row in pair):
            print(f"MISMATCH on {config}: the rows disagree on states or transitions",
                  file=sys.stderr)
            failed = True
    cost = fingerprint_cost()
    print(json.dumps(cost))
    report = {"machine": machine_info(), "target_bytes_per_state": TARGET_BYTES_PER_STATE,
              "compare_python": args.compare_python,
              "runs": rows, "fingerprint_cost": cost}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
