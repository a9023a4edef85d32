"""Conformance speed: rule steps/s and examples/s of the Hypothesis conformance run, the time and
examples it takes to catch each bug switch (5 Hypothesis seeds each), and the model coverage of
the bug-free run against every edge key the model reaches.

Run from the repository root with the project's venv:

    .venv/bin/python benchmarks/conformance_speed.py [--examples N] [--seeds K] [--json PATH]
        [--bug BUG ...] [--no-coverage]

Method: every measurement runs the state machine of ``peerkit.conformance.stateful`` in this
process with the database off. The bug-free run uses ``derandomize=True`` (a fixed sequence of
examples) and times the whole ``runTest`` with ``time.perf_counter`` (and the process's CPU time,
which the other jobs on a shared machine disturb less), counts the guest ticks (trio scheduler
batches) of the rule steps and, apart, of starting and stopping the servers, and splits the wall
time into where it goes: the implementation running in the guest run (rule steps), the servers
starting and stopping in it (set-up, tear-down), the abstraction of its state, the model's
candidate search, and the rest (Hypothesis, the driver's own Python); ``--seeds 0 --no-coverage``
runs only this part. Each bug hunt forces a Hypothesis seed (``hypothesis.core.global_force_seed``,
as ``pytest --hypothesis-seed`` does), turns shrinking off, and records the wall time and the
number of examples until the first divergence (or that none was found within the budget). Coverage:
the edge keys of ``peerkit.conformance.coverage`` on the edges the bug-free run's candidate sets
went through, against the keys on every edge of the complete state space of a named configuration,
explored breadth first over ``PeeringModel.successors`` (the same graph ``peerkit check``
explores).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import hypothesis.core
from hypothesis import Phase, settings

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine_info import machine_info

from peerkit.conformance import candidates, guest, stateful
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


TICKS = "guest ticks"
SERVERS = "trio: servers started and stopped (set-up, tear-down)"
SERVER_TICKS = "guest ticks starting and stopping servers"

#: where a rule step's time goes: (label, object, attribute) of the calls timed by ``_split``
_PARTS = (
    ("trio: the implementation runs (guest run)", guest.GuestRun, "call"),
    ("model: candidate search (observe, pin, settled)", candidates.Candidates, "observe"),
    ("model: candidate search (observe, pin, settled)", candidates.Candidates, "pin"),
    ("model: candidate search (observe, pin, settled)", candidates.Candidates,
     "require_settled"),
    ("abstraction of the implementation (impl_view)", stateful, "impl_view"),
    # every other pump of the guest run: set-up's until both servers run, close's until they
    # have stopped (a step's own pump, inside ``call``, is counted there)
    (SERVERS, guest.GuestRun, "_pump_until"),
)


@contextmanager
def _split(totals: dict[str, float]) -> Iterator[None]:
    """Add the wall seconds spent in each of ``_PARTS`` to ``totals`` (wrapping them for the
    duration). The parts do not nest: observe is handed a view already made."""
    saved = [(obj, name, getattr(obj, name)) for _label, obj, name in _PARTS]
    in_call = [False]  # a step's pump is the step's, not the servers'

    def timed(label: str, fn: Callable[..., Any], pumps: bool) -> Callable[..., Any]:
        """``pumps``: ``fn`` is a method of ``GuestRun``, whose guest ticks are counted too."""
        ticks_key = SERVER_TICKS if label == SERVERS else TICKS

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if label == SERVERS and in_call[0]:
                return fn(*args, **kwargs)
            start = time.perf_counter()
            ticks = args[0].callbacks if pumps else 0
            was, in_call[0] = in_call[0], in_call[0] or (label != SERVERS and pumps)
            try:
                return fn(*args, **kwargs)
            finally:
                in_call[0] = was
                totals[label] = totals.get(label, 0.0) + time.perf_counter() - start
                if pumps:
                    totals[ticks_key] = totals.get(ticks_key, 0) + args[0].callbacks - ticks
        return wrapper

    for label, obj, name in _PARTS:
        setattr(obj, name, timed(label, getattr(obj, name), obj is guest.GuestRun))
    try:
        yield
    finally:
        for obj, name, fn in saved:
            setattr(obj, name, fn)


def clean_run(examples: int) -> dict[str, Any]:
    machine = machine_for()
    machine.TestCase.settings = _settings(examples, derandomize=True)
    totals: dict[str, float] = {}
    with _split(totals):
        start, cpu = time.perf_counter(), time.process_time()
        machine.TestCase().runTest()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    stats = machine.STATS
    ticks = int(totals.pop(TICKS, 0))
    server_ticks = int(totals.pop(SERVER_TICKS, 0))
    split = {label: round(t, 2) for label, t in totals.items()}
    split["Hypothesis, the driver's rules and set-up (the rest)"] = round(
        seconds - sum(totals.values()), 2)
    return {
        "examples": stats["examples"],
        "rule_steps": stats["steps"],
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 2),
        "examples_per_second": round(stats["examples"] / seconds, 1),
        "steps_per_second": round(stats["steps"] / seconds, 1),
        "steps_per_cpu_second": round(stats["steps"] / cpu, 1),
        "guest_ticks": ticks,
        "guest_ticks_servers": server_ticks,
        "split_seconds": split,
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
          f"{clean['steps_per_second']} steps/s ({clean['steps_per_cpu_second']} per CPU "
          f"second); {clean['guest_ticks']} guest ticks in rule steps (and "
          f"{clean['guest_ticks_servers']} starting and stopping servers); largest closure "
          f"{clean['largest_closure']}")
    for label, part in clean["split_seconds"].items():
        print(f"  {part:7.2f} s  {label}")
    out["clean"] = clean

    out["bugs"] = {}
    for bug in (args.bug or sorted(BUGS)) if args.seeds > 0 else ():
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
