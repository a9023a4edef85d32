"""Benchmark: the most a singleton ample-set reduction could remove, with C1 checked exactly.

`por_potential.py` tests the conditions for {a} to be an ample set *locally*: against the actions
enabled in s only. This script tests them *exactly*, on the complete state graph, over every path
from s that does not take a (the "region" of a at s). That is the definition a partial-order
reduction's soundness theorem asks for (Godefroid's persistent sets; Clarke, Grumberg and Peled's
C1 and C2), so no reduction justified by those theorems can take one action alone at a state
where this check fails, whatever independence relation or stubborn-set algorithm it uses (a
reduction argued some other way, for one property at a time, is not bounded by it). The reduced
count this script reports is therefore a CEILING for singleton ample sets (up to which candidate
is taken first), where `por_potential.py`'s was only an optimistic estimate.

For a state s and an enabled protocol action a, {a} passes when, for every state t of the region
(s itself, and every state reached from s by steps other than a):

* persistence (C1): a is enabled in t, and for every step t -b-> t' with b != a, a and b commute
  there: b is enabled after a and step(step(t, a), b) == step(t', a);
* invisibility (C2): every atomic proposition has the same value in t and step(t, a). The
  propositions are `por_potential.py`'s *reads* set (`settled`, `settles`' target, and everything
  the invariants read) or its *verdicts* set (`settled`, each invariant's verdict, the target);
* transition invariants: each gives the step t -b-> t' the same verdict as step(t, a) -b->
  step(t', a), and gives a the same verdict in t as in s;
* liveness counts: a is a protocol step (`settles` counts protocol steps only).

The reduced search is breadth-first from the start: at each state it takes the first passing
action alone if its successor is new (the proviso that keeps a postponed action from being
ignored round a cycle), and every enabled action otherwise. A passing region is remembered, so
each state of it is not checked again for the same action.

What this leaves out, which can only make the ceiling higher than a real reduction: ample sets of
more than one action (they do not preserve `settles`, a branching-time property, without a
further argument: condition C4), and the cost of deciding C1 without the complete graph.

``--static`` adds what a reduction that decides C1 from a static dependency relation must also
refuse, and measures what is left. Such a relation is over *actions* as the model names them
(``Deliver(sid, side, how)`` is one action for every message that end will ever receive), and it
must hold in every state and for every bug switch and mutant (whose tables give any input any
effect). So every handler step at a cluster may write that cluster's rows (a Terminated, or a
mutant's effect), its tracker (an Open accepted, a handler returning) and its imports; every
leader step (sync pass, deletion routine) and every other handler at the cluster reads them; an
operator's step at a cluster writes its rows (delete, establish) or its exports (churn), which
its handlers read; a fault writes its stream's channels or its cluster's leader memory. With
``--static`` a candidate is also refused while another action is enabled that such a relation
makes dependent on it: any action of the same cluster (its sync pass, deletion routine, dials,
another end's handler), an operator step at that cluster, a failover of it, or a fault on the
candidate's stream. That is generous to the reduction: it lets the two ends of one stream and
the two deliveries of one end pass (a real relation would not), and it ignores disabled
dependent actions and what could enable them (a stubborn set must add those too); it is strict
in two places only, a reset against a delivery on its stream and a churn step against a sync
pass, which the model's channels and tables would let commute.

Run:  nice .venv/bin/python benchmarks/por_ceiling.py [--config tiny --config ci ...]
          [--aps reads|verdicts] [--static] [--json PATH]
      nice .venv/bin/python benchmarks/por_ceiling.py --catalog ci [--json PATH]
(the second: every bug and mutant on one configuration, the safety properties the complete graph
violates against those the reduced search meets; none may be missed)
Default configurations: tiny, ci. Writes benchmarks/results/por_ceiling.json and prints a
table. Nothing is asserted; figures go into specs/model.md by hand.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import machine_info, write_results
from por_potential import Graph, explore, peering_ap_sets

RESULTS = Path(__file__).resolve().parent / "results" / "por_ceiling.json"


class Ceiling:
    """The exact singleton-ample test on one complete graph."""

    def __init__(self, graph: Graph[Any, Any],
                 aps: Sequence[tuple[str, Callable[[Any], Hashable]]],
                 tinvs: Sequence[Callable[[Any, Any, Any], bool]],
                 counted: Callable[[Any], bool],
                 refused: Callable[[Any, Any, Any], bool] | None = None) -> None:
        self.succ = graph.succ
        self.graph = graph
        self.aps = aps
        self.tinvs = tinvs
        self.counted = counted
        #: (state, candidate, another enabled action) -> True if the candidate must be refused
        #: while that action is enabled (``--static``); None: no such rule
        self.refused = refused
        self._labels: dict[Any, tuple[Hashable, ...]] = {}
        self._verdicts: dict[tuple[Any, Any], tuple[bool, ...]] = {}
        #: (state, action) pairs inside a region that passed: they pass too (their region is a
        #: subset, and a's verdict in them equals its verdict at the region's start)
        self.passed: set[tuple[Any, Any]] = set()
        self.checked = 0
        self.region_states = 0

    def labels(self, s: Any) -> tuple[Hashable, ...]:
        got = self._labels.get(s)
        if got is None:
            got = self._labels[s] = tuple(p(s) for _, p in self.aps)
        return got

    def verdict(self, s: Any, a: Any) -> tuple[bool, ...]:
        key = (s, a)
        got = self._verdicts.get(key)
        if got is None:
            got = self._verdicts[key] = tuple(bool(ti(s, a, self.succ[s][a]))
                                              for ti in self.tinvs)
        return got

    def passes(self, s: Any, a: Any) -> bool:
        """Whether {a} is a persistent, invisible, verdict-keeping singleton in s."""
        refused = self.refused
        if refused is not None and any(refused(s, a, b) for b in self.succ[s] if b != a):
            return False  # (before the cache: the rule looks at what is enabled in s itself)
        if (s, a) in self.passed:
            return True
        if not self.counted(a):
            return False
        self.checked += 1
        succ = self.succ
        own = self.verdict(s, a)
        region = {s}
        queue = deque([s])
        while queue:
            t = queue.popleft()
            out = succ[t]
            ta = out.get(a)
            if ta is None:
                return False  # a got disabled by steps that do not take it
            if self.labels(ta) != self.labels(t) or self.verdict(t, a) != own:
                return False
            after_a = succ[ta]
            for b, tb in out.items():
                if b == a:
                    continue
                tba = succ[tb].get(a)
                if tba is None or after_a.get(b) != tba:
                    return False
                if self.verdict(t, b) != self.verdict(ta, b):
                    return False
                if tb not in region:
                    region.add(tb)
                    queue.append(tb)
        self.region_states += len(region)
        self.passed.update((t, a) for t in region)
        return True

    def reduced(self) -> dict[str, Any]:
        """Breadth-first search taking the first passing action alone when its successor is
        new; the states and transitions it explores, and what it took alone, by action type."""
        succ = self.succ
        seen = set(self.graph.initial)
        queue = deque(self.graph.initial)
        transitions = 0
        alone_by_kind: dict[str, int] = {}
        reduced_states = 0
        #: per explored state, the action taken alone (None: fully expanded)
        self.taken: dict[Any, Any] = {}
        while queue:
            s = queue.popleft()
            alone = None
            for a, t in succ[s].items():
                if t not in seen and self.passes(s, a):
                    alone = a
                    break
            step = [(alone, succ[s][alone])] if alone is not None else list(succ[s].items())
            self.taken[s] = alone
            if alone is not None:
                reduced_states += 1
                kind = type(alone).__name__ + (f"/{alone.how}" if hasattr(alone, "how") else "")
                alone_by_kind[kind] = alone_by_kind.get(kind, 0) + 1
            for _, t in step:
                transitions += 1
                if t not in seen:
                    seen.add(t)
                    queue.append(t)
        return {"states": len(seen), "transitions": transitions,
                "states_taking_one_action": reduced_states, "taken_alone": alone_by_kind}


def _touched(s: Any, action: Any) -> set[int]:
    """The clusters whose parts a peering action touches: its own, or its stream's end's (both
    ends' for a reset)."""
    if hasattr(action, "cluster"):
        return {action.cluster}
    for st in s.streams:
        if st.sid == action.sid:
            side = getattr(action, "side", None)
            if side is None:
                return {st.dialer, st.acceptor}
            return {st.dialer if side == "d" else st.acceptor}
    return set()


def statically_dependent(s: Any, a: Any, b: Any) -> bool:
    """``--static``'s rule for the peering model (module docstring): whether a dependency
    relation over the model's actions, valid in every state and for every mutant, makes `b`
    dependent on the candidate `a` in `s`."""
    from peerkit.model import actions as act

    if isinstance(b, act.Reset):  # it writes its stream's channels, nothing of a cluster
        return b.sid == getattr(a, "sid", None)
    if not _touched(s, a) & _touched(s, b):
        return False
    # the same cluster: an operator step or failover there, its leader's steps, another end
    return not (isinstance(a, act.Deliver | act.Publish | act.SendTerminated)
                and isinstance(b, act.Deliver | act.Publish | act.SendTerminated)
                and a.sid == b.sid)  # (generous: the two ends of one stream pass)


def measure(config: str, ap_set: str, static: bool = False) -> dict[str, Any]:
    from peerkit.model import PeeringModel, get_config
    from peerkit.model import actions as act

    model = PeeringModel(get_config(config))
    t0 = time.perf_counter()
    graph = explore(model)
    explored = time.perf_counter() - t0
    aps = peering_ap_sets(model)[ap_set]
    ceiling = Ceiling(graph, aps, [ti.holds for ti in model.transition_invariants],
                      act.is_protocol, statically_dependent if static else None)
    t1 = time.perf_counter()
    red = ceiling.reduced()
    full_states = len(graph.succ)
    return {
        "config": config, "propositions": ap_set, "static": static,
        "full": {"states": full_states, "transitions": graph.transitions},
        "reduced": red,
        "fewer_states_percent": round(100 * (1 - red["states"] / full_states), 2),
        "pairs_checked": ceiling.checked,
        "region_states_visited": ceiling.region_states,
        "seconds": {"explore": round(explored, 1), "ceiling": round(time.perf_counter() - t1, 1)},
    }


def catalog(config: str) -> dict[str, Any]:
    """Every known bug (alone) and every mutant on `config`: does the reduced search (both sets
    of propositions) meet every safety property the complete graph violates? It must, if the
    test is exact; a miss would be a fault in this script."""
    from por_potential import safety_violations

    from peerkit.model import BUGS, PeeringModel, get_config
    from peerkit.model import actions as act
    from peerkit.model.machine import SetupError
    from peerkit.model.mutants import MUTANTS

    cases: list[tuple[str, tuple[str, ...], str | None]] = [
        *((f"bug {b}", (b,), None) for b in sorted(BUGS)),
        *((f"mutant {m}", (), m) for m in sorted(MUTANTS))]
    out: dict[str, Any] = {}
    for name, bugs, mutant in cases:
        try:
            model = PeeringModel(get_config(config), bugs=bugs, mutant=mutant)
            graph = explore(model)
        except SetupError as exc:  # the checker reports these as they are: no graph
            out[name] = {"setup_error": str(exc)}
            continue
        full = safety_violations(model, graph)
        row: dict[str, Any] = {"states": len(graph.succ), "safety_violated_in_graph": full}
        for ap_set, aps in peering_ap_sets(model).items():
            test = Ceiling(graph, aps, [ti.holds for ti in model.transition_invariants],
                           act.is_protocol)
            red = test.reduced()
            found = safety_violations(model, graph, test.taken)
            row[ap_set] = {"reduced_states": red["states"],
                           "missed": sorted(set(full) - set(found))}
        out[name] = row
        print(f"{name}: {row['states']} states, violated {full}; " + "; ".join(
            f"{k} {row[k]['reduced_states']} states, missed {row[k]['missed']}"
            for k in ("reads", "verdicts")), flush=True)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", help="configuration (repeatable)")
    parser.add_argument("--aps", choices=("reads", "verdicts"), action="append",
                        help="atomic propositions (repeatable; default: both)")
    parser.add_argument("--static", action="store_true",
                        help="also refuse what a static dependency relation must (docstring)")
    parser.add_argument("--catalog", metavar="CONFIG",
                        help="instead: every bug and mutant on CONFIG, violations compared")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write results")
    args = parser.parse_args(argv)
    if args.catalog:
        cases = catalog(args.catalog)
        missed = sorted(n for n, r in cases.items()
                        if any(r.get(k, {}).get("missed") for k in ("reads", "verdicts")))
        write_results(args.json, {"benchmark": "por_ceiling_catalog", "config": args.catalog,
                                  "machine": machine_info(), "cases": cases, "missed": missed})
        print(f"{len(cases)} cases; a violation missed in: {missed or 'none'}")
        return 0
    configs = args.config or ["tiny", "ci"]
    ap_sets = args.aps or ["reads", "verdicts"]
    rows = [measure(c, a, args.static) for c in configs for a in ap_sets]
    write_results(args.json, {"benchmark": "por_ceiling", "machine": machine_info(),
                              "rows": rows})
    print(f"{'config':<10} {'aps':<9} {'static':<7} {'states':>9} {'reduced':>9} {'fewer':>7}"
          "  taken alone")
    for r in rows:
        print(f"{r['config']:<10} {r['propositions']:<9} {r['static']!s:<7} "
              f"{r['full']['states']:>9,} "
              f"{r['reduced']['states']:>9,} {r['fewer_states_percent']:>6}%  "
              f"{r['reduced']['taken_alone']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
