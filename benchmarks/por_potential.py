"""Benchmark: how much could partial-order reduction remove from the peering model's state graph?

Method. Explore the complete state graph of a configuration (breadth-first over
`PeeringModel.successors`, every transition kept). For every reachable state s and every action a
enabled in s, test the NECESSARY local conditions for {a} to be a singleton ample set:

* C2, invisibility: every atomic proposition has the same value in s and in step(s, a). The atomic
  propositions taken (conservatively: a superset of what the properties read) are `settled`
  (`model/properties.py`: `unsettled_reason` is None), the verdict of every state invariant, and
  the target predicate of every liveness property (for the peering model, `settles`' target is
  `settled` again).
* C1, local independence: for every other action b enabled in s, a is still enabled after b, b is
  still enabled after a, and both orders reach the same state.
* transition invariants: for every such b, each transition invariant gives the step b the same
  verdict from s and from step(s, a), and the step a the same verdict from s and from step(s, b)
  (the reduced search sees (s,a), (sa,b) in place of (s,b), (sb,a)).

An action meeting all three is a *candidate*. Reported per configuration: the states with at least
one candidate, the (state, action) pairs passing each condition, broken down by action kind (the
model's action vocabulary: the action's type, Deliver split by `how`; and operator / fault /
protocol), and an OPTIMISTIC BOUND: a breadth-first search that at each state takes the first
candidate alone (in `enabled` order), unless its successor was already visited (a stand-in for the
cycle proviso), and otherwise every enabled action; the states it reaches against the full count.

The bound is UNSOUND BY DESIGN and only an upper bound of what a singleton ample-set reduction
could save: C1 is checked only against the actions enabled in s (the real C1 is about every
action on every path from s), the proviso is approximated, and nothing is done for weak fairness
or for the liveness properties' `counts`. A sound reduction would remove no more than this (up to
the choice of which candidate to take, and ample sets of more than one action, which this does not
try).

Run:  nice .venv/bin/python benchmarks/por_potential.py [--config tiny --config ci ...]
          [--json PATH]
Default configurations: tiny, ci, default (default takes a few minutes and ~1 GB on one core).
Writes benchmarks/results/por_potential.json and prints a table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

S = TypeVar("S", bound=Hashable)
A = TypeVar("A", bound=Hashable)

RESULTS = Path(__file__).resolve().parent / "results" / "por_potential.json"
#: the conditions, in the order they are reported
CONDITIONS = ("c2_invisible", "c1_local_independent", "transition_invariants_kept",
              "liveness_counts_kept", "candidate_without_counts")


S_co = TypeVar("S_co", bound=Hashable, covariant=True)
A_co = TypeVar("A_co", bound=Hashable, covariant=True)


class _Checkable(Protocol[S_co, A_co]):
    """What the analysis reads of a model (`peerkit.checker.api.Model`, minus the reductions)."""

    def initial_states(self) -> Iterable[S_co]: ...

    def successors(self, state: Any) -> Iterable[tuple[A_co, S_co]]: ...

    @property
    def invariants(self) -> Sequence[Any]: ...

    @property
    def transition_invariants(self) -> Sequence[Any]: ...

    @property
    def liveness(self) -> Sequence[Any]: ...


@dataclass
class Graph(Generic[S, A]):
    """A complete state graph: successors of every reachable state, in `successors` order."""

    initial: list[S]
    succ: dict[S, dict[A, S]]

    @property
    def transitions(self) -> int:
        return sum(len(out) for out in self.succ.values())


def explore(model: _Checkable[S, A], max_states: int | None = None) -> Graph[S, A]:
    """Breadth-first over the whole graph; refuses to stop short (the measure needs it all)."""
    initial = list(dict.fromkeys(model.initial_states()))
    succ: dict[S, dict[A, S]] = {}
    seen = set(initial)
    queue = deque(initial)
    while queue:
        s = queue.popleft()
        out: dict[A, S] = {}
        for a, t in model.successors(s):
            out[a] = t
            if t not in seen:
                seen.add(t)
                queue.append(t)
        succ[s] = out
        if max_states is not None and len(seen) > max_states:
            raise RuntimeError(f"more than {max_states} states: the graph is not complete")
    return Graph(initial, succ)


def propositions(model: _Checkable[S, A],
                 extra: Sequence[tuple[str, Callable[[S], bool]]] = ()
                 ) -> list[tuple[str, Callable[[S], bool]]]:
    """The atomic propositions C2 compares: `extra`, each invariant, each liveness target."""
    aps = list(extra)
    aps += [(f"invariant:{inv.id}", inv.holds) for inv in model.invariants]
    aps += [(f"target:{live.id}", live.target) for live in model.liveness]
    return aps


@dataclass
class Analysis(Generic[S, A]):
    """Per state, the candidate actions (in enabled order); and the tallies per action kind."""

    candidates: dict[S, list[A]]
    #: the same without the liveness-counts condition (the three conditions of the method alone)
    candidates_without_counts: dict[S, list[A]] = field(default_factory=dict)
    #: kind -> {"enabled": n, each condition: n passing it, "candidate": n passing all}
    pairs: dict[str, dict[str, int]] = field(default_factory=dict)
    #: kind -> number of states where some action of that kind is a candidate
    states_with_kind: dict[str, int] = field(default_factory=dict)


def analyse(graph: Graph[S, A], aps: Sequence[tuple[str, Callable[[S], Hashable]]],
            transition_invariants: Sequence[Callable[[S, A, S], bool]],
            kind: Callable[[A], str], counted: Sequence[Callable[[A], bool]] = ()
            ) -> Analysis[S, A]:
    """Test C2, local C1, the transition invariants and the liveness counts for every (state,
    enabled action)."""
    succ = graph.succ
    label: dict[S, tuple[Hashable, ...]] = {}

    def labels(s: S) -> tuple[Hashable, ...]:
        got = label.get(s)
        if got is None:
            got = label[s] = tuple(p(s) for _, p in aps)
        return got

    verdicts: dict[tuple[S, A], tuple[bool, ...]] = {}

    def verdict(s: S, a: A) -> tuple[bool, ...]:
        key = (s, a)
        got = verdicts.get(key)
        if got is None:
            t = succ[s][a]
            got = verdicts[key] = tuple(bool(ti(s, a, t)) for ti in transition_invariants)
        return got

    out = Analysis[S, A](candidates={})
    for s, enabled in succ.items():
        here = labels(s)
        chosen: list[A] = []
        chosen_without_counts: list[A] = []
        kinds_here: set[str] = set()
        # a liveness property judges only its counted steps: taking an uncounted action alone
        # would drop every counted step of s from the graph that property is decided on
        counted_here = [any(c(b) for b in enabled) for c in counted]
        for a, sa in enabled.items():
            c2 = labels(sa) == here
            c1 = True
            ti_ok = True
            after_a = succ[sa]
            for b, sb in enabled.items():
                if b == a:
                    continue
                after_b = succ[sb]
                if b not in after_a or a not in after_b:
                    c1 = False
                    break
                sab, sba = after_a[b], after_b[a]
                if sab != sba:
                    c1 = False
                    break
                if ti_ok and (verdict(s, b) != verdict(sa, b) or verdict(s, a) != verdict(sb, a)):
                    ti_ok = False
            counts_ok = all(c(a) or not here_counted
                            for c, here_counted in zip(counted, counted_here, strict=True))
            k = kind(a)
            tally = out.pairs.setdefault(k, dict.fromkeys(("enabled", *CONDITIONS, "candidate"), 0))
            tally["enabled"] += 1
            tally["c2_invisible"] += c2
            tally["c1_local_independent"] += c1
            # (counted only where C1 held: where it failed, not every pair was compared)
            tally["transition_invariants_kept"] += c1 and ti_ok
            tally["liveness_counts_kept"] += counts_ok
            if c2 and c1 and ti_ok:
                tally["candidate_without_counts"] += 1
                chosen_without_counts.append(a)
                if counts_ok:
                    tally["candidate"] += 1
                    chosen.append(a)
                    kinds_here.add(k)
        out.candidates[s] = chosen
        out.candidates_without_counts[s] = chosen_without_counts
        for k in kinds_here:
            out.states_with_kind[k] = out.states_with_kind.get(k, 0) + 1
    return out


def optimistic_reduced(graph: Graph[S, A], candidates: dict[S, list[A]], last: bool = False
                       ) -> tuple[int, int, dict[S, A | None]]:
    """BFS taking the first candidate alone whose successor is new (else every enabled action);
    with `last`, the last such candidate (to see how much the choice matters).

    Returns the states and transitions it explores and, per reached state, the action taken alone
    (None: the state was fully expanded)."""
    succ = graph.succ
    seen = set(graph.initial)
    queue = deque(graph.initial)
    transitions = 0
    taken: dict[S, A | None] = {}
    while queue:
        s = queue.popleft()
        order = reversed(candidates[s]) if last else candidates[s]
        alone = next((a for a in order if succ[s][a] not in seen), None)
        taken[s] = alone
        step = [(alone, succ[s][alone])] if alone is not None else list(succ[s].items())
        for _, t in step:
            transitions += 1
            if t not in seen:
                seen.add(t)
                queue.append(t)
    return len(seen), transitions, taken


def safety_violations(model: _Checkable[S, A], graph: Graph[S, A],
                      taken: dict[S, A | None] | None = None) -> list[str]:
    """The invariants and transition invariants violated somewhere in the graph, or (with `taken`
    from `optimistic_reduced`) in the part of it that search explored."""
    succ = graph.succ
    states = list(succ) if taken is None else list(taken)

    def edges(s: S) -> list[tuple[A, S]]:
        alone = None if taken is None else taken[s]
        return list(succ[s].items()) if alone is None else [(alone, succ[s][alone])]

    broken = [inv.id for inv in model.invariants if not all(inv.holds(s) for s in states)]
    broken += [ti.id for ti in model.transition_invariants
               if not all(ti.holds(s, a, t) for s in states for a, t in edges(s))]
    return broken


def _bound(graph: Graph[S, A], candidates: dict[S, list[A]], kind: Callable[[A], str],
           last: bool = False, model: _Checkable[S, A] | None = None) -> dict[str, Any]:
    states, transitions, taken = optimistic_reduced(graph, candidates, last)
    taken_kinds: dict[str, int] = {}
    for a in taken.values():
        if a is not None:
            taken_kinds[kind(a)] = taken_kinds.get(kind(a), 0) + 1
    return {
        "states": states,
        "transitions": transitions,
        "fraction_of_states_removed": round(1 - states / len(graph.succ), 4),
        "states_expanded_by_one_action": sum(1 for a in taken.values() if a is not None),
        "action_taken_alone_by_kind": dict(sorted(taken_kinds.items())),
        **({"safety_violated_in_search": safety_violations(model, graph, taken)}
           if model is not None else {}),
    }


BOUND_LABEL = ("UNSOUND by design, an upper bound: C1 checked only against the actions enabled "
               "in the state, the cycle proviso approximated, weak fairness ignored; no "
               "reduction by singleton ample sets making the same choices could save more")


def measure(model: _Checkable[S, A], kind: Callable[[A], str],
            ap_sets: dict[str, Sequence[tuple[str, Callable[[S], Hashable]]]],
            coarse: Callable[[A], str] | None = None,
            max_states: int | None = None,
            count_states: Sequence[tuple[str, Callable[[S], Hashable]]] = ()) -> dict[str, Any]:
    """The whole measure on one model, once per set of atomic propositions, as a JSON-ready dict
    (with, for `count_states`, how many states satisfy each predicate)."""
    t0 = time.process_time()
    graph = explore(model, max_states)
    states = len(graph.succ)
    report: dict[str, Any] = {
        "states": states,
        "transitions": graph.transitions,
        "transition_invariants": [ti.id for ti in model.transition_invariants],
        "liveness_counts": [live.id for live in model.liveness],
        "cpu_seconds_explore": round(time.process_time() - t0, 2),
        "bound_label": BOUND_LABEL,
        "states_where": {name: len([st for st in graph.succ if pred(st)])
                         for name, pred in count_states},
        "safety_violated_in_graph": safety_violations(model, graph),
        "by_propositions": {},
    }
    coarse_of = ({kind(a): coarse(a) for out in graph.succ.values() for a in out}
                 if coarse is not None else {})
    tis = [ti.holds for ti in model.transition_invariants]
    counted = [live.counts for live in model.liveness]
    for name, aps in ap_sets.items():
        t1 = time.process_time()
        analysis = analyse(graph, aps, tis, kind, counted)
        with_candidate = sum(1 for c in analysis.candidates.values() if c)
        with_candidate_nc = sum(1 for c in analysis.candidates_without_counts.values() if c)
        part: dict[str, Any] = {
            "atomic_propositions": [ap for ap, _ in aps],
            "states_with_candidate": with_candidate,
            "fraction_states_with_candidate": round(with_candidate / states, 4),
            "states_with_candidate_without_counts": with_candidate_nc,
            "fraction_states_with_candidate_without_counts": round(with_candidate_nc / states, 4),
            "by_kind": {k: {**v, "states_with_candidate_of_kind":
                            analysis.states_with_kind.get(k, 0)}
                        for k, v in sorted(analysis.pairs.items())},
            "optimistic_bound": _bound(graph, analysis.candidates, kind, model=model),
            "optimistic_bound_without_counts": _bound(graph, analysis.candidates_without_counts,
                                                      kind),
            "optimistic_bound_last_candidate": _bound(graph, analysis.candidates, kind, last=True),
        }
        if coarse_of:
            by_coarse: dict[str, dict[str, int]] = {}
            for k_action, tally in analysis.pairs.items():
                agg = by_coarse.setdefault(coarse_of[k_action], dict.fromkeys(tally, 0))
                for key, n in tally.items():
                    agg[key] += n
            part["by_coarse_kind"] = dict(sorted(by_coarse.items()))
        part["cpu_seconds"] = round(time.process_time() - t1, 2)
        report["by_propositions"][name] = part
    return report


# --- the peering model ------------------------------------------------------------------------


def peering_ap_sets(model: Any) -> dict[str, Sequence[tuple[str, Callable[[Any], Hashable]]]]:
    """Two sets of atomic propositions for the peering model.

    "verdicts" (the method's): `settled`, each invariant's verdict, each liveness target.
    "reads" (stricter): `settled`, each liveness target, and in place of each invariant's verdict
    the part of the world that invariant reads, so an action is visible when it changes anything
    an invariant looks at, whatever the verdict (on a configuration where every property holds
    the verdicts never change, so "verdicts" alone reduces C2 to `settled`).
    """
    from peerkit.model.properties import settled

    def is_settled(w: Any) -> bool:
        return bool(settled(model, w))

    def store(w: Any) -> Hashable:  # no-orphans, store-rules, terminated-only-if-peer-deleted
        return tuple((cl.rows, cl.imported, cl.next_gen) for cl in w.clusters)

    def leaders(w: Any) -> Hashable:  # routines-only-on-leader, tracker-consistent
        return (tuple((cl.term, cl.deleters, cl.tracker) for cl in w.clusters),
                tuple((st.sid, st.dialer, st.acceptor, st.dialer_gen, st.peer_gen, st.d_term,
                       st.a_term, st.d_phase, st.a_phase) for st in w.streams))

    def clean(w: Any) -> Hashable:  # settled-is-clean: what `unclean_reason` reads
        return (tuple((cl.exports, cl.registered) for cl in w.clusters),
                w.ghost.user_deleted, w.ghost.deleted_by, w.ghost.excused, w.ghost.apply_failed)

    verdicts = propositions(model, [("settled", is_settled)])
    reads = [("settled", is_settled), ("reads:store", store), ("reads:leaders", leaders),
             ("reads:clean", clean),
             *((f"target:{live.id}", live.target) for live in model.liveness)]
    return {"verdicts": verdicts, "reads": reads}


def peering_report(config: str, bugs: Sequence[str] = (), mutant: str | None = None
                   ) -> dict[str, Any]:
    from peerkit.model import PeeringModel, get_config
    from peerkit.model import actions as act

    model = PeeringModel(get_config(config), bugs=bugs, mutant=mutant)

    def kind(a: Any) -> str:
        return type(a).__name__ + (f"/{a.how}" if isinstance(a, act.Deliver) else "")

    aps = peering_ap_sets(model)
    return measure(model, kind, aps, coarse=act.kind_of, count_states=[aps["verdicts"][0]])


def catalog(config: str) -> dict[str, Any]:
    """Every known bug (alone) and every mutant of the catalog on `config`: does the optimistic
    search still meet every safety violation the complete graph has? (Liveness is not checked.)"""
    from peerkit.model import BUGS
    from peerkit.model.machine import SetupError
    from peerkit.model.mutants import MUTANTS

    cases: list[tuple[str, Sequence[str], str | None]] = [
        *((f"bug {b}", (b,), None) for b in sorted(BUGS)),
        *((f"mutant {m}", (), m) for m in sorted(MUTANTS))]
    out: dict[str, Any] = {}
    for name, bugs, mutant in cases:
        try:
            r = peering_report(config, bugs, mutant)
        except SetupError as exc:  # the checker reports these as they are: no graph to measure
            out[name] = {"setup_error": str(exc)}
            print(f"{name}: {exc}", flush=True)
            continue
        full = r["safety_violated_in_graph"]
        row: dict[str, Any] = {"states": r["states"], "safety_violated_in_graph": full}
        for props, part in r["by_propositions"].items():
            b = part["optimistic_bound"]
            row[props] = {"search_states": b["states"],
                          "missed": sorted(set(full) - set(b["safety_violated_in_search"]))}
        out[name] = row
        print(f"{name}: {r['states']} states, violated {full}; " + "; ".join(
            f"{props} search {row[props]['search_states']} states, missed {row[props]['missed']}"
            for props in r["by_propositions"]), flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--config", action="append", default=[])
    parser.add_argument("--bug", action="append", default=[],
                        help="switch a known bug on in every configuration (repeatable)")
    parser.add_argument("--catalog", metavar="CONFIG",
                        help="instead: every bug and mutant on CONFIG, asking only whether the "
                             "optimistic search meets the safety violations the graph has")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine_info import machine_info, write_results

    report: dict[str, Any] = {"machine": machine_info(), "command": " ".join(sys.argv),
                              "bugs": args.bug, "method": (__doc__ or "").split("\n\n")[1],
                              "configs": {}}
    if args.catalog:
        report["catalog"] = {args.catalog: catalog(args.catalog)}
        write_results(args.json, report)
        return 0
    for config in args.config or ["tiny", "ci", "default"]:
        load_before = round(os.getloadavg()[0], 2)
        r = peering_report(config, args.bug)
        r["load_1min_before_after"] = [load_before, round(os.getloadavg()[0], 2)]
        report["configs"][config] = r
        print(f"{config}: {r['states']} states, {r['transitions']} transitions "
              f"(explored in {r['cpu_seconds_explore']} s CPU; load {r['load_1min_before_after']});"
              f" states where: {r['states_where']}; safety violated: "
              f"{r['safety_violated_in_graph']}")
        for name, part in r["by_propositions"].items():
            b, b_nc = part["optimistic_bound"], part["optimistic_bound_without_counts"]
            b_last = part["optimistic_bound_last_candidate"]
            print(f"  [{name}] {part['fraction_states_with_candidate']:.1%} of states have a "
                  f"candidate ({part['fraction_states_with_candidate_without_counts']:.1%} "
                  f"without the counts condition); optimistic bound {b['states']} states "
                  f"({b['fraction_of_states_removed']:.1%} fewer; without counts "
                  f"{b_nc['fraction_of_states_removed']:.1%}; taking the last candidate "
                  f"{b_last['fraction_of_states_removed']:.1%}); {part['cpu_seconds']} s CPU; "
                  f"safety violated in that search: {b['safety_violated_in_search']}")
            for k, v in part["by_kind"].items():
                print(f"    {k:18} " + " ".join(f"{key}={n}" for key, n in v.items()))
    write_results(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
