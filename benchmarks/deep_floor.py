"""The floor under any search of `deep`: what the model and its properties alone cost.

Issue 10 asks for the `deep` configuration (9,451,564 states, 57,395,245 transitions, specs/
model.md) in under 60 s on a 2-core machine. Whatever the engine does, each state has to be
expanded (the model's ``successors``: ``enabled`` plus one ``step`` per transition), each new
state checked against the invariants, and each transition against the transition invariants.
This script measures those three costs on a sample of `deep`'s own reachable states, with no
engine around them, and multiplies them out to the whole configuration (the expansion both per
state and per transition, taking the lower, since a sample's out-degree need not be `deep`'s):
a lower bound on the
CPU time of a complete check (the engine's own work, storage and the liveness decision come on
top), and so on the cores a 60 s check would need even with perfect parallel speed-up.

The sample: breadth-first search from the start collects the first ``--prefix`` states
(depths 0 to about 12), and ``--walks`` seeded random walks of protocol, operator and fault
steps reach the deeper levels (up to depth 37); every ``--stride``-th prefix state and every
walk state are timed. The two parts are reported apart, because deeper states carry more
streams and rows and may cost more per step. Each cost is the best of ``--repeat`` passes over
the sample (``time.process_time``, CPU of this process), so other load on the machine inflates
it less.

Run:  python benchmarks/deep_floor.py [--prefix 60000] [--stride 6] [--walks 400] [--seed 1]
Writes benchmarks/results/deep_floor.json and prints a summary. Nothing is asserted about
speed; the figures go into README.md by hand, with the machine and the load they came from.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import machine_info, write_results

from peerkit.model import PeeringModel, get_config
from peerkit.model.state import World

RESULTS = Path(__file__).resolve().parent / "results" / "deep_floor.json"

#: the complete `deep` search (specs/model.md, "State counts and times")
DEEP_STATES = 9_451_564
DEEP_TRANSITIONS = 57_395_245
GOAL_SECONDS = 60.0


def bfs_prefix(model: PeeringModel, limit: int) -> list[World]:
    """The first `limit` states breadth-first search meets, in its order."""
    start = model.initial()
    seen = {start}
    order = [start]
    cursor = 0
    while cursor < len(order) and len(order) < limit:
        for _action, nxt in model.successors(order[cursor]):
            if nxt not in seen:
                seen.add(nxt)
                order.append(nxt)
                if len(order) >= limit:
                    break
        cursor += 1
    return order


def walk_states(model: PeeringModel, walks: int, seed: int, max_len: int = 60) -> list[World]:
    """States of seeded random walks from the start (each stops where nothing is enabled)."""
    rng = random.Random(seed)
    out: list[World] = []
    for _ in range(walks):
        w = model.initial()
        for _step in range(max_len):
            succ = list(model.successors(w))
            if not succ:
                break
            w = rng.choice(succ)[1]
            out.append(w)
    return out


def best_of(repeat: int, fn: Callable[[], int]) -> tuple[float, int]:
    """The lowest CPU seconds of `repeat` calls of `fn`, and what it returned (a count)."""
    best = float("inf")
    count = 0
    for _ in range(repeat):
        t0 = time.process_time()
        count = fn()
        best = min(best, time.process_time() - t0)
    return best, count


def costs(model: PeeringModel, sample: Sequence[World], repeat: int) -> dict[str, Any]:
    """Per-state and per-transition CPU costs of the model and its properties on `sample`."""
    successors = model.successors
    invariants = [inv.holds for inv in model.invariants]
    tinvs = [t.holds for t in model.transition_invariants]
    edges = [(s, a, n) for s in sample for a, n in successors(s)]

    def expand() -> int:
        n = 0
        for s in sample:
            for _edge in successors(s):
                n += 1
        return n

    def check_states() -> int:
        for s in sample:
            for holds in invariants:
                holds(s)
        return len(sample)

    def check_edges() -> int:
        for s, a, n in edges:
            for holds in tinvs:
                holds(s, a, n)
        return len(edges)

    expand_s, transitions = best_of(repeat, expand)
    inv_s, _ = best_of(repeat, check_states)
    tinv_s, _ = best_of(repeat, check_edges)
    per_state_expand = expand_s / len(sample)
    per_transition_expand = expand_s / max(1, transitions)
    per_state_inv = inv_s / len(sample)
    per_transition_tinv = tinv_s / max(1, transitions)
    # Expanding a state costs a part per state (`enabled`) and a part per transition (`step`);
    # one sample cannot tell them apart, and its out-degree need not be deep's (6.07). So the
    # expansion is multiplied out both ways, and the floor takes the lower.
    expand_total = min(DEEP_STATES * per_state_expand, DEEP_TRANSITIONS * per_transition_expand)
    total = (expand_total + DEEP_STATES * per_state_inv
             + DEEP_TRANSITIONS * per_transition_tinv)
    return {
        "states": len(sample),
        "transitions": transitions,
        "out_degree": round(transitions / len(sample), 2),
        "expand_us_per_state": round(per_state_expand * 1e6, 1),
        "expand_us_per_transition": round(per_transition_expand * 1e6, 2),
        "deep_expand_cpu_seconds": {"by_states": round(DEEP_STATES * per_state_expand, 1),
                                    "by_transitions": round(
                                        DEEP_TRANSITIONS * per_transition_expand, 1)},
        "invariants_us_per_state": round(per_state_inv * 1e6, 1),
        "transition_invariants_us_per_transition": round(per_transition_tinv * 1e6, 2),
        "deep_floor_cpu_seconds": round(total, 1),
        "cores_for_60s": round(total / GOAL_SECONDS, 1),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prefix", type=int, default=60_000,
                        help="breadth-first states to collect (default 60000)")
    parser.add_argument("--stride", type=int, default=6,
                        help="time every N-th prefix state (default 6)")
    parser.add_argument("--walks", type=int, default=400, help="random walks (default 400)")
    parser.add_argument("--seed", type=int, default=1, help="the walks' seed (default 1)")
    parser.add_argument("--repeat", type=int, default=3, help="passes; the best counts")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write results")
    args = parser.parse_args(argv)
    for name in ("prefix", "stride", "walks", "repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    model = PeeringModel(get_config("deep"))
    prefix = bfs_prefix(model, args.prefix)[:: args.stride]
    walks = walk_states(model, args.walks, args.seed)
    report: dict[str, Any] = {
        "benchmark": "deep_floor",
        "machine": machine_info(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "deep": {"states": DEEP_STATES, "transitions": DEEP_TRANSITIONS},
        "goal_seconds": GOAL_SECONDS,
        "bfs_prefix": costs(model, prefix, args.repeat),
        "random_walks": costs(model, walks, args.repeat),
    }
    write_results(args.json, report)
    for part in ("bfs_prefix", "random_walks"):
        r = report[part]
        print(f"{part:>12}: {r['states']:,} states, out-degree {r['out_degree']}; "
              f"expand {r['expand_us_per_state']} us/state, invariants "
              f"{r['invariants_us_per_state']} us/state, transition invariants "
              f"{r['transition_invariants_us_per_transition']} us/transition -> "
              f"deep floor {r['deep_floor_cpu_seconds']:,} CPU s = {r['cores_for_60s']} cores "
              f"for 60 s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
