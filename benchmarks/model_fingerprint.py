"""Equivalence check: a fingerprint of the peering model that any faster rewrite must reproduce.

For each case (a CI configuration, or a bug switched on in a configuration) it records
* the checker's figures: distinct states, transitions, depth, each property's verdict and each
  counterexample's actions (as `peerkit check --all` runs it), and where something is violated,
  the states explored and the counterexample of a search that stops at the first violation;
* optionally (--graph) a SHA-256 digest of the whole state graph in breadth-first order: every
  state's repr when first met, and for every state the ordered list of its successors as
  (action repr, index of the next state). Two models with equal digests have the same states,
  the same successors in the same order, and so print the same counterexamples.

It imports only `peerkit`, so the same file fingerprints any installed peerkit: run it with
another checkout's interpreter to get that checkout's figures, e.g.

    /work/main/.venv/bin/python benchmarks/model_fingerprint.py --graph --out before.json
    .venv/bin/python benchmarks/model_fingerprint.py --graph --compare before.json

benchmarks/results/model_fingerprint_0d7973d.json holds the figures of main at 0d7973d, taken
before the model was made faster; tests/model/test_fingerprint.py compares the cheap cases on
every test run. Exit status 1 when --compare finds a difference.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from peerkit.checker.engine import Bounds, check
from peerkit.model import BUGS, PeeringModel, get_config
from peerkit.model.config import CI_CONFIGS

RESULTS = Path(__file__).resolve().parent / "results" / "model_fingerprint_0d7973d.json"

#: (configuration, bug or None): every CI configuration as it is, and every bug in the
#: configuration the benchmarks use for it (default: the only one where every bug shows)
CASES: tuple[tuple[str, str | None], ...] = (
    *((name, None) for name in CI_CONFIGS),
    *(("default", bug) for bug in sorted(BUGS)),
    *(("ci", bug) for bug in sorted(BUGS) if bug != "deletion-no-stop"),
)


def case_name(config: str, bug: str | None) -> str:
    return config if bug is None else f"{config} +{bug}"


def graph_digest(model: PeeringModel) -> dict[str, object]:
    """Breadth-first over the whole state space, hashing states and ordered successor lists."""
    h = hashlib.sha256()
    index: dict[Any, int] = {}
    states: list[Any] = []
    for s in model.initial_states():
        if s not in index:
            index[s] = len(states)
            states.append(s)
            h.update(repr(s).encode())
    cursor = 0
    edges = 0
    while cursor < len(states):
        s = states[cursor]
        cursor += 1
        h.update(b"|")
        for action, nxt in model.successors(s):
            edges += 1
            nid = index.get(nxt)
            if nid is None:
                nid = index[nxt] = len(states)
                states.append(nxt)
                h.update(repr(nxt).encode())
            h.update(f"{action!r}>{nid};".encode())
    return {"graph_states": len(states), "graph_edges": edges, "graph_sha256": h.hexdigest()}


def fingerprint(config: str, bug: str | None, graph: bool) -> dict[str, object]:
    model = PeeringModel(get_config(config), {bug} if bug else ())
    started = time.perf_counter()
    result = check(model, Bounds(stop_at_first=False))
    seconds = time.perf_counter() - started
    out: dict[str, object] = {
        "distinct_states": result.distinct_states, "transitions": result.transitions,
        "depth": result.depth, "complete": result.complete,
        "verdicts": {p.id: p.verdict for p in result.properties},
        "counterexamples": {
            ce.property_id: {"actions": [repr(a) for a in ce.actions],
                             "loop": [repr(s.action) for s in ce.loop]}
            for ce in result.counterexamples
        },
        "check_seconds": round(seconds, 2),
    }
    if not result.ok:
        # as `peerkit check` runs by default: stop at the first violation
        first = check(model)
        ce = first.counterexample
        assert ce is not None
        out["first"] = {"distinct_states": first.distinct_states,
                        "transitions": first.transitions, "property": ce.property_id,
                        "actions": [repr(a) for a in ce.actions]}
    if graph:
        out.update(graph_digest(model))
    return out


def compare(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """The differences between two fingerprints (timings aside)."""
    diffs = []
    for name, old in before.items():
        new = after.get(name)
        if new is None:
            continue
        for key, value in old.items():
            if key.endswith("seconds") or key not in new:
                continue
            if new[key] != value:
                diffs.append(f"{name}: {key} was {value!r}, now {new[key]!r}")
    return diffs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--graph", action="store_true", help="also digest the state graph")
    parser.add_argument("--case", action="append", default=[],
                        help="only this case (e.g. 'ci' or 'default +stored-map'); repeatable")
    parser.add_argument("--out", type=Path, help="write the fingerprints here (JSON)")
    parser.add_argument("--compare", type=Path, help="compare with fingerprints in this file")
    args = parser.parse_args()
    chosen = [(c, b) for c, b in CASES if case_name(c, b) in args.case]
    # the cases named, in the order named (cheapest first is the caller's choice)
    wanted = sorted(chosen, key=lambda cb: args.case.index(case_name(*cb))) if args.case \
        else list(CASES)
    if not wanted:
        parser.error(f"no such case; known: {', '.join(case_name(c, b) for c, b in CASES)}")
    prints: dict[str, object] = {}
    for config, bug in wanted:
        name = case_name(config, bug)
        prints[name] = fp = fingerprint(config, bug, args.graph)
        print(f"{name:<34} {fp['distinct_states']:>9,} states {fp['transitions']:>10,} "
              f"transitions depth {fp['depth']:>3} {fp['check_seconds']:>7} s", flush=True)
        if args.out:  # after every case, so that a long run cut short keeps what it did
            args.out.write_text(json.dumps(prints, indent=1, sort_keys=True) + "\n")
    if args.compare:
        diffs = compare(json.loads(args.compare.read_text()), prints)
        for d in diffs:
            print("DIFFERENT:", d)
        print(f"{len(prints)} cases compared with {args.compare}: "
              f"{'identical' if not diffs else f'{len(diffs)} differences'}")
        return 1 if diffs else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
