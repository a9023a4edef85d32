"""The parallel search: states/s per core, the speed-up of workers, and Dask against Ray.

Two measurements, each in interleaved rounds (every round runs every mode once, in a rotating
order, so a burst of load from another process hurts every mode alike), with the load average
(`os.getloadavg`) recorded before each run:

* ``local``: the peering model on one configuration (``default``) with the sequential engine
  (``engine.check``), ``parallel.check`` with 1 worker process and with 2 (``--workers``);
* ``distributed --engine dask --engine ray``: ``parallel.check`` on a local cluster of two
  worker processes of each engine, against ``--workers 2``, on one configuration (run this file
  with a python that has both installed; the engine not chosen for ``peerkit[distributed]``
  has its pool here, `RayPool`). A new pool (actors) per run; the clusters start once.

* ``compare --baseline PYTHON``: ``peerkit check --workers 1`` and ``--workers 2`` through the
  CLI, of a baseline checkout (the ``peerkit`` beside its venv's PYTHON) and of this one, all
  four in every round; wall and CPU seconds and each one's speed-up of 2 workers over 1
  (results to ``--out``, by default benchmarks/results/parallel_compare.json);

* ``critical --baseline PYTHON``: the same split search of a baseline checkout and of this one,
  with each worker's CPU seconds in each round: the sum over rounds of the largest, plus the
  coordinator's CPU, bounds the wall time on free cores and moves little with load;

* ``split``: CPU seconds of the engine against the same search split into 1 and 2 partitions
  run one after another in this process (`parallel.InProcessPool`): what partitioning costs in work,
  apart from processes, pipes and parallelism.

Every run checks that the state and transition counts and the verdicts equal the sequential
engine's. Results go to benchmarks/results/parallel.json (one key per measurement).

    python benchmarks/parallel.py local --config default --rounds 3
    python benchmarks/parallel.py compare --baseline /path/to/base/.venv/bin/python \
        --config default --config churn --rounds 3
    /path/to/venv/bin/python benchmarks/parallel.py distributed --engine dask --engine ray
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine_info import machine_info, write_results  # noqa: E402

from peerkit.checker import engine, parallel  # noqa: E402
from peerkit.model import PeeringModel, get_config  # noqa: E402

RESULTS = HERE / "results" / "parallel.json"


class RayPool:
    """`parallel.Pool` on Ray actors, one per CPU of a local Ray instance (for the comparison)."""

    def __init__(self, model_factory: Callable[[], Any], workers: int) -> None:
        import ray

        if not ray.is_initialized():
            ray.init(num_cpus=workers, include_dashboard=False, logging_level="ERROR")
        remote = ray.remote(num_cpus=1)(parallel.Partition)
        self.ray = ray
        self.actors = [remote.remote(model_factory, me, workers, True) for me in range(workers)]

    @property
    def workers(self) -> int:
        return len(self.actors)

    def call_all(self, method: str, args: Sequence[tuple[Any, ...]]) -> list[Any]:
        return self.ray.get([getattr(actor, method).remote(*arg)
                             for actor, arg in zip(self.actors, args, strict=True)])

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)


def outcome(result: engine.Result[Any, Any]) -> tuple[Any, ...]:
    return (result.distinct_states, result.transitions, result.depth,
            [(p.id, p.verdict) for p in result.properties])


def cpu() -> tuple[float, float]:
    """CPU seconds (user + system) of this process, and of its ended children."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, children.ru_utime + children.ru_stime


def timed(run: Callable[[], Any]) -> tuple[float, float, float, Any]:
    """Wall seconds, CPU seconds here and in worker processes (ended by then), the result."""
    mine, theirs = cpu()
    started = time.perf_counter()
    result = run()
    wall = time.perf_counter() - started
    mine2, theirs2 = cpu()
    return wall, mine2 - mine, theirs2 - theirs, result


def rounds(modes: dict[str, Callable[[], Any]], count: int, expected: tuple[Any, ...],
           outcome: Callable[[Any], tuple[Any, ...]] = outcome) -> dict[str, Any]:
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in modes}
    names = list(modes)
    for r in range(count):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            load = os.getloadavg()[0]
            seconds, mine, theirs, result = timed(modes[name])
            if outcome(result) != expected:
                raise SystemExit(f"{name}: {outcome(result)[:3]} differs from the engine's "
                                 f"{expected[:3]}")
            runs[name].append({"seconds": round(seconds, 3), "cpu_coordinator": round(mine, 3),
                               "cpu_workers": round(theirs, 3), "load1": load})
            print(f"round {r + 1} {name}: {seconds:.2f} s, cpu {mine:.2f} s here + "
                  f"{theirs:.2f} s in workers (load {load:.2f})", flush=True)
    return {name: {"runs": got,
                   "seconds_median": round(statistics.median(x["seconds"] for x in got), 3),
                   "cpu_median": round(statistics.median(
                       x["cpu_coordinator"] + x["cpu_workers"] for x in got), 3)}
            for name, got in runs.items()}


def save(key: str, entry: dict[str, Any]) -> None:
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    entry["machine"] = machine_info()
    data[key] = entry
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {RESULTS} [{key}]")


def local(config: str, count: int) -> None:
    factory = functools.partial(PeeringModel, get_config(config))
    reference = engine.check(factory())
    expected = outcome(reference)
    modes = {
        "sequential": lambda: engine.check(factory()),
        "workers-1": lambda: parallel.check(factory, 1),
        "workers-2": lambda: parallel.check(factory, 2),
    }
    got = rounds(modes, count, expected)
    states = reference.distinct_states
    for entry in got.values():
        # per core: per CPU second spent, over every process of the run (wall time on this
        # shared machine says more about the other sessions than about the search)
        entry["states_per_cpu_second"] = round(states / entry["cpu_median"])
    seq, one, two = (got[n]["seconds_median"] for n in ("sequential", "workers-1", "workers-2"))
    save(f"local-{config}", {
        "config": config, "distinct_states": states, "transitions": reference.transitions,
        "rounds": count, "modes": got,
        "speedup_workers2_over_workers1": round(one / two, 2),
        "speedup_workers2_over_sequential": round(seq / two, 2),
        "load_note": "wall times taken while other sessions shared the 2 cores (load1 in each "
                     "run); the kernel's autogroup scheduling shares the CPU between sessions, "
                     "so more worker processes do not get more CPU under load",
    })


def cli_outcome(report: dict[str, Any]) -> tuple[Any, ...]:
    """What the CLI's JSON report says of the search, less its timings."""
    return (report["distinct_states"], report["transitions"], report["depth"],
            [(p["id"], p["verdict"]) for p in report["properties"]])


def cli_check(python: str, config: str, workers: int) -> dict[str, Any]:
    """``peerkit check --config CONFIG --workers N --json`` with the peerkit beside `python`."""
    peerkit = str(Path(python).parent / "peerkit")
    run = subprocess.run([peerkit, "check", "--config", config, "--workers", str(workers),
                          "--json", "--no-progress"], capture_output=True, text=True, cwd="/")
    if run.returncode != 0:
        raise SystemExit(f"{peerkit} exited {run.returncode}: {run.stderr[-2000:]}")
    report: dict[str, Any] = json.loads(run.stdout)
    return report


def speedups(entry: dict[str, Any], medians: dict[str, Any], field: str, name: str,
             digits: int, heading: str) -> None:
    """Each side's median `field` with 1 worker over the one with 2, as ``entry[SIDE_name]``;
    print both."""
    for which in ("before", "after"):
        entry[f"{which}_{name}"] = round(medians[f"{which}-workers-1"][field]
                                         / medians[f"{which}-workers-2"][field], digits)
    print(f"{heading}: before {entry[f'before_{name}']}x, after {entry[f'after_{name}']}x",
          flush=True)


def compare(baseline: str, configs: list[str], count: int, out: Path) -> None:
    """``peerkit check --workers 1`` and ``--workers 2`` of a baseline checkout (the peerkit
    beside its `baseline` python) and of this one, all four in each round (rotating order)."""
    pythons = {"before": baseline, "after": sys.executable}
    report: dict[str, Any] = {"machine": machine_info(), "baseline": baseline, "rounds": count,
                              "configs": {}}
    for config in configs:
        expected = cli_outcome(cli_check(sys.executable, config, 1))
        modes = {f"{which}-workers-{n}": functools.partial(cli_check, python, config, n)
                 for which, python in pythons.items() for n in (1, 2)}
        got = rounds(modes, count, expected, cli_outcome)
        entry: dict[str, Any] = {"distinct_states": expected[0], "transitions": expected[1],
                                 "modes": got}
        speedups(entry, got, "seconds_median", "speedup_workers2_over_workers1", 2,
                 f"{config}, --workers 2 over --workers 1")
        report["configs"][config] = entry
    write_results(out, report)


#: what each child of `critical` runs: one split search in its own process, each worker's CPU
#: seconds in each round measured (the partitions run one after another, as in `split`)
_CRITICAL_CHILD = """
import collections, functools, json, sys, time
from peerkit.checker import parallel
from peerkit.model import PeeringModel, get_config
class Timed(parallel.InProcessPool):
    def call_all(self, method, args):
        out, took = [], []
        for part, arg in zip(self.parts, args):
            started = time.process_time()
            out.append(getattr(part, method)(*arg))
            took.append(time.process_time() - started)
        self.path += max(took)
        self.work += sum(took)
        self.rounds[method] += 1
        self.took.append((method, took))
        return out
factory = functools.partial(PeeringModel, get_config(sys.argv[1]))
pool = Timed(factory, int(sys.argv[2]))
pool.path, pool.work, pool.rounds, pool.took = 0.0, 0.0, collections.Counter(), []
started = time.process_time()
result = parallel.check(factory, pool=pool)
cpu = time.process_time() - started
# where a level's `number` and the next level's `expand` are rounds of their own: how much of
# the path one round for both would save, measured in this same run
merge = 0.0
for (m1, number), (m2, expand) in zip(pool.took, pool.took[1:]):
    if (m1, m2) == ("number", "expand"):
        merge += max(number) + max(expand) - max(map(sum, zip(number, expand)))
print(json.dumps({"states": result.distinct_states, "transitions": result.transitions,
                  "merge_would_save": merge,
                  "critical_path": pool.path, "workers_cpu": pool.work,
                  "coordinator_cpu": cpu - pool.work, "rounds": dict(pool.rounds)}))
"""


def critical(baseline: str, configs: list[str], count: int, out: Path) -> None:
    """The split search's critical path in CPU seconds, of a baseline checkout and of this one:
    the sum over the rounds of the largest worker's CPU seconds in the round, plus the
    coordinator's, is what the search would take on a core per worker and one for the
    coordinator, with no other load and free messages; unlike wall time it hardly moves with
    the load of a shared machine."""
    pythons = {"before": baseline, "after": sys.executable}
    report: dict[str, Any] = {"machine": machine_info(), "baseline": baseline, "rounds": count,
                              "configs": {}}
    for config in configs:
        runs: dict[str, list[dict[str, Any]]] = {}
        for r in range(count):
            order = [(w, n) for w in pythons for n in (1, 2)]
            for which, n in order[r % 4:] + order[:r % 4]:
                load = os.getloadavg()[0]
                child = subprocess.run([pythons[which], "-c", _CRITICAL_CHILD, config, str(n)],
                                       check=True, capture_output=True, text=True, cwd="/")
                got = json.loads(child.stdout)
                got["load1"] = load
                runs.setdefault(f"{which}-workers-{n}", []).append(got)
                print(f"round {r + 1} {which} {n}: path {got['critical_path']:.2f} s "
                      f"(merging number and expand would save {got['merge_would_save']:.2f}) + "
                      f"coordinator {got['coordinator_cpu']:.2f} s of {got['workers_cpu']:.2f} s "
                      f"in workers, rounds {got['rounds']} (load {load:.2f})", flush=True)
        if len({(x["states"], x["transitions"]) for xs in runs.values() for x in xs}) != 1:
            raise SystemExit(f"{config}: the runs explored different graphs")
        entry: dict[str, Any] = {"runs": runs}
        for mode, xs in runs.items():
            entry[mode] = {
                "critical_path_median": round(statistics.median(
                    x["critical_path"] + x["coordinator_cpu"] for x in xs), 3),
                "cpu_median": round(statistics.median(
                    x["workers_cpu"] + x["coordinator_cpu"] for x in xs), 3)}
        speedups(entry, entry, "critical_path_median", "speedup_bound_workers2_over_workers1", 3,
                 f"{config}, critical path of 2 workers over 1")
        report["configs"][config] = entry
    write_results(out, report)


def distributed(engines: list[str], config: str, count: int) -> None:
    """Each engine's local cluster of two workers against ``--workers 2``, interleaved."""
    factory = functools.partial(PeeringModel, get_config(config))
    reference = engine.check(factory())
    makers: dict[str, Callable[[], Any]] = {}
    start_seconds: dict[str, float] = {}
    closers: list[Callable[[], Any]] = []
    for which in engines:
        started = time.perf_counter()
        if which == "dask":
            from distributed import LocalCluster

            from peerkit.cluster import DaskPool

            cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                   dashboard_address=None)
            closers.append(cluster.close)
            address = cluster.scheduler_address
            makers[which] = lambda address=address: DaskPool(factory, address)
        else:
            import ray

            ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
            closers.append(ray.shutdown)
            makers[which] = lambda: RayPool(factory, 2)
        start_seconds[which] = round(time.perf_counter() - started, 2)

    def on_cluster(make: Callable[[], Any]) -> engine.Result[Any, Any]:
        pool = make()
        try:
            return parallel.check(factory, pool=pool)
        finally:
            pool.close()

    modes: dict[str, Callable[[], engine.Result[Any, Any]]] = {
        "workers-2": lambda: parallel.check(factory, 2)}
    for which, make in makers.items():
        modes[which] = functools.partial(on_cluster, make)
    try:
        got = rounds(modes, count, outcome(reference))
    finally:
        for close in closers:
            close()
    two = got["workers-2"]["seconds_median"]
    save(f"distributed-{config}", {
        "config": config, "distinct_states": reference.distinct_states,
        "transitions": reference.transitions, "rounds": count,
        "cluster_start_seconds": start_seconds, "modes": got,
        "cluster_over_workers2": {w: round(got[w]["seconds_median"] / two, 2) for w in makers},
    })


def split(config: str, count: int) -> None:
    """CPU seconds of the engine against the same search split into 1 and 2 partitions that
    run in this process: the extra work partitioning costs, apart from any parallelism."""
    factory = functools.partial(PeeringModel, get_config(config))
    reference = engine.check(factory())
    modes = {
        "sequential": lambda: engine.check(factory()),
        "partitions-1": lambda: parallel.check(factory, pool=parallel.InProcessPool(factory, 1)),
        "partitions-2": lambda: parallel.check(factory, pool=parallel.InProcessPool(factory, 2)),
    }
    got = rounds(modes, count, outcome(reference))
    seq = got["sequential"]["cpu_median"]
    save(f"split-{config}", {
        "config": config, "distinct_states": reference.distinct_states, "rounds": count,
        "modes": got,
        "work_over_sequential": {m: round(got[m]["cpu_median"] / seq, 2)
                                 for m in ("partitions-1", "partitions-2")},
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    loc = sub.add_parser("local")
    loc.add_argument("--config", default="default")
    loc.add_argument("--rounds", type=int, default=3)
    dis = sub.add_parser("distributed")
    dis.add_argument("--engine", choices=("dask", "ray"), action="append", required=True)
    dis.add_argument("--config", default="ci")
    dis.add_argument("--rounds", type=int, default=3)
    spl = sub.add_parser("split")
    spl.add_argument("--config", default="ci")
    spl.add_argument("--rounds", type=int, default=3)
    for name, what in (("compare", "--workers 1 and 2 through the CLI"),
                       ("critical", "the split search's critical path in CPU seconds")):
        ab = sub.add_parser(name, help=f"{what}, of a baseline checkout and of this one, "
                            "alternated")
        ab.add_argument("--baseline", required=True, help="the baseline checkout's venv python")
        ab.add_argument("--config", action="append", default=[])
        ab.add_argument("--rounds", type=int, default=3)
        ab.add_argument("--out", type=Path, default=HERE / "results" / f"parallel_{name}.json")
    args = parser.parse_args()
    if args.what == "compare":
        compare(args.baseline, args.config or ["default"], args.rounds, args.out)
    elif args.what == "critical":
        critical(args.baseline, args.config or ["default"], args.rounds, args.out)
    elif args.what == "local":
        local(args.config, args.rounds)
    elif args.what == "split":
        split(args.config, args.rounds)
    else:
        distributed(list(dict.fromkeys(args.engine)), args.config, args.rounds)


if __name__ == "__main__":
    main()
