"""Engine speed: peerkit's checker against a bare BFS, musil and minicheck on one toy model.

The model is 7 independent counters, each 0..5 (6**7 = 279,936 states, 1,632,960 transitions),
with the invariant "no counter exceeds 5" checked on every state. Four searches are timed:

* ``engine``: ``peerkit.checker.engine.check`` on ``peerkit.checker.toys.counters(7, 5)``, with
  everything the engine offers on (invariant on every state, parent array for shortest
  counterexamples, bounds, progress clock, verdicts);
* ``bare``: a textbook BFS (a set and a deque) over the same successor function, with no
  invariant, no parents, no transition count, no report: the floor for a pure-Python search
  (its set is freed inside the timed region, as every other tool's call frees its tables);
* ``musil``: musil's ``check`` on an idiomatic musil model (tuple states, one guarded ``Action``
  per counter, the invariant in ``invariants``, the all-top state declared ``terminal``);
* ``minicheck``: minicheck's ``check_safety`` on an idiomatic ``Protocol`` (tuple states, a
  ``transitions`` function returning labelled successors, the invariant over the field dict).

Controls (rows marked as such, off with ``--no-controls``): ``bare+invariant`` is the bare BFS
that also evaluates the invariant on every new state (the floor for any search that checks it);
``engine@musil-py`` and
``bare@musil-py`` run the first two under musil's interpreter (musil needs Python >= 3.12), so
the engine/musil ratio can also be read with the interpreter held equal; ``musil-dataclass`` runs
musil with the frozen-dataclass states its README recommends, which is much slower than tuples.

Every run is a fresh process that builds its model, times only the search call, checks that
the tool reports 279,936 states and no violation, and then (untimed) checks that the tool does
see a broken invariant, with the expected shortest counterexample of 5 steps. Rounds are
interleaved (each round runs every tool once, in a rotating order), so a burst of load from
another process hurts every tool alike rather than one.

``--instructions`` counts instead of timing: each of engine, bare and bare+invariant runs once
under valgrind's cachegrind, less a process that only builds the model, which gives the same
figure whatever else the machine is doing (results/engine_instructions.json).

Run ``python benchmarks/engine_speed.py --help``; see benchmarks/README.md.
Standard library only (so that the same file serves as the worker under any interpreter).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results" / "engine_speed.json"
INSTRUCTION_RESULTS = HERE / "results" / "engine_instructions.json"

N, TOP = 7, 5
EXPECTED_STATES = (TOP + 1) ** N  # 279,936
EXPECTED_TRANSITIONS = N * TOP * (TOP + 1) ** (N - 1)  # 1,632,960
#: the sanity run uses the invariant "no counter reaches TOP": shortest violation is TOP steps
EXPECTED_CE_STEPS = TOP

MUSIL_REQ = "musil==0.36.7"
MINICHECK_REQ = "minicheck==0.4.0"
MUSIL_VENV = HERE / ".venv-musil"
MINICHECK_VENV = HERE / ".venv-minicheck"

#: targets from the brief; reported, never asserted
TARGET_BARE_FRACTION = 0.80


# =============================================================================================
# the worker: one tool, one timed search, one JSON line on stdout
# =============================================================================================


def _import_checker() -> tuple[Any, Any]:
    """peerkit's engine and toys: the installed package, or the source folder under another
    interpreter (the checker is standard library only)."""
    try:
        from peerkit.checker import engine, toys
    except ImportError:
        sys.path.insert(0, str(REPO))
        from checker import engine, toys  # type: ignore[no-redef]
    return engine, toys


def _run_engine(broken: bool) -> dict[str, Any]:
    engine, toys = _import_checker()
    model = toys.counters(N, TOP)
    if broken:
        from dataclasses import replace

        inv = model.invariants[0]
        model.invariants = (replace(inv, holds=lambda s: max(s) < TOP),)
    started = time.perf_counter()
    cpu = time.process_time()
    result = engine.check(model)
    cpu = time.process_time() - cpu
    seconds = time.perf_counter() - started
    if broken:
        ce = result.counterexample
        return {"violation_steps": None if ce is None else len(ce.steps)}
    holds = result.complete and all(p.verdict == "holds" for p in result.properties)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "states": result.distinct_states,
        "transitions": result.transitions,
        "verdict_ok": holds,
        "engine_seconds": result.seconds,
    }


def _run_bare(broken: bool) -> dict[str, Any]:
    """A textbook BFS: a set of seen states and a FIFO queue. Nothing else."""
    _engine, toys = _import_checker()
    model = toys.counters(N, TOP)
    successors = model.successors  # the same successor function the engine calls
    if broken:
        return {"violation_steps": None}  # the bare BFS checks no invariant, by design
    started = time.perf_counter()
    cpu = time.process_time()
    initial = model.initial_states()
    seen = set(initial)
    queue = deque(initial)
    while queue:
        state = queue.popleft()
        for _action, nxt in successors(state):
            if nxt not in seen:
                seen.add(nxt)
                queue.append(nxt)
    states = len(seen)
    # Every other row times a call that frees its own tables before it returns (about 45 ms
    # for 280k states here), so the bare BFS frees its set inside the timed region too.
    del seen, queue
    cpu = time.process_time() - cpu
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "states": states,
        "transitions": None,  # not even counted: that would be a report
        "verdict_ok": True,
    }


class _Violation(Exception):
    pass


def _run_bare_invariant(broken: bool) -> dict[str, Any]:
    """The textbook BFS of _run_bare plus the model's invariant on every new state: what any
    search that checks the invariant must do at least (no parents, no count, no report).

    The loop repeats _run_bare's on purpose: one loop for both rows would add a test to the
    bare BFS (per state or per new state) and so change what that row measures."""
    _engine, toys = _import_checker()
    model = toys.counters(N, TOP)
    successors = model.successors
    holds = model.invariants[0].holds
    if broken:
        holds = lambda s: max(s) < TOP  # noqa: E731
    started = time.perf_counter()
    cpu = time.process_time()
    initial = model.initial_states()
    seen = set(initial)
    queue = deque(initial)
    violated = False
    try:
        # a violation leaves the loop by an exception, so that the loop tests nothing more
        if not all(map(holds, initial)):
            raise _Violation
        while queue:
            state = queue.popleft()
            for _action, nxt in successors(state):
                if nxt not in seen:
                    seen.add(nxt)
                    queue.append(nxt)
                    if not holds(nxt):
                        raise _Violation
    except _Violation:
        violated = True
    states = len(seen)
    del seen, queue
    cpu = time.process_time() - cpu
    seconds = time.perf_counter() - started
    if broken:
        # no trace to measure: report only that the broken invariant was seen
        return {"violation_steps": None, "violation_found": violated}
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "states": states,
        "transitions": None,
        "verdict_ok": not violated,
    }


def _run_build_only(broken: bool) -> dict[str, Any]:
    """Import the checker and build the model, no search: what --instructions subtracts."""
    _engine, toys = _import_checker()
    toys.counters(N, TOP)
    return {"seconds": 0.0, "cpu_seconds": 0.0, "states": None, "transitions": None,
            "verdict_ok": True, "violation_steps": None}


def _run_musil(broken: bool) -> dict[str, Any]:
    import musil

    def increment(i: int) -> Any:
        # tuple states, one guarded action per counter
        return musil.Action(
            f"inc{i}",
            lambda s: s[i] < TOP,
            lambda s: (*s[:i], s[i] + 1, *s[i + 1:]),
        )

    if broken:
        invariant: Callable[[tuple[int, ...]], bool] = lambda s: max(s) < TOP  # noqa: E731
    else:
        invariant = lambda s: max(s) <= TOP  # noqa: E731
    model = musil.Model(
        # a bare tuple would be read as a collection of initial states: wrap it
        init=[(0,) * N],
        actions=[increment(i) for i in range(N)],
        invariants={"in-range": invariant},
        # the all-top state has no enabled action; it is the intended end, not a deadlock
        terminal=lambda s: all(v == TOP for v in s),
    )
    started = time.perf_counter()
    cpu = time.process_time()
    result = musil.check(model, max_states=10 * EXPECTED_STATES)
    cpu = time.process_time() - cpu
    seconds = time.perf_counter() - started
    if broken:
        return {"violation_steps": None if result.ok else len(result.action_names)}
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "states": result.states_explored,
        "transitions": None,  # musil does not count them
        "verdict_ok": bool(result.ok) and not result.truncated,
    }


def _run_musil_dataclass(broken: bool) -> dict[str, Any]:
    """Control: musil with the state shape its README recommends (a frozen dataclass, actions
    built with dataclasses.replace). Not the headline musil row, which uses tuple states."""
    from dataclasses import make_dataclass, replace

    import musil

    names = [f"c{i}" for i in range(N)]
    counters = make_dataclass("Counters", [(n, int, 0) for n in names], frozen=True)

    def increment(name: str) -> Any:
        return musil.Action(
            f"inc_{name}",
            lambda s: getattr(s, name) < TOP,
            lambda s: replace(s, **{name: getattr(s, name) + 1}),
        )

    limit = TOP - 1 if broken else TOP
    model = musil.Model(
        init=counters(),
        actions=[increment(n) for n in names],
        invariants={"in-range": lambda s: all(getattr(s, n) <= limit for n in names)},
        terminal=lambda s: all(getattr(s, n) == TOP for n in names),
    )
    started = time.perf_counter()
    cpu = time.process_time()
    result = musil.check(model, max_states=10 * EXPECTED_STATES)
    cpu = time.process_time() - cpu
    seconds = time.perf_counter() - started
    if broken:
        return {"violation_steps": None if result.ok else len(result.action_names)}
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "states": result.states_explored,
        "transitions": None,
        "verdict_ok": bool(result.ok) and not result.truncated,
    }


def _run_minicheck(broken: bool) -> dict[str, Any]:
    import minicheck

    labels = [f"inc{i}" for i in range(N)]

    def transitions(s: tuple[int, ...]) -> list[tuple[str, tuple[int, ...]]]:
        return [
            (labels[i], (*s[:i], v + 1, *s[i + 1:])) for i, v in enumerate(s) if v < TOP
        ]

    if broken:
        invariant: Callable[[dict[str, int]], bool] = lambda d: max(d.values()) < TOP  # noqa: E731
    else:
        invariant = lambda d: max(d.values()) <= TOP  # noqa: E731
    model = minicheck.Protocol(
        name="counters",
        candidate=False,
        fields=tuple(f"c{i}" for i in range(N)),
        initial=(0,) * N,
        transitions=transitions,
        invariants={"in_range": invariant},
    )
    started = time.perf_counter()
    cpu = time.process_time()
    report = minicheck.check_safety(model, max_states=10 * EXPECTED_STATES)
    cpu = time.process_time() - cpu
    seconds = time.perf_counter() - started
    prop = report["properties"]["in_range"]
    if broken:
        trace = prop["counterexample"]
        # the trace lists the initial state too
        return {"violation_steps": None if trace is None else len(trace) - 1}
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "states": report["reachable_states"],
        "transitions": None,
        "verdict_ok": prop["holds"] is True and report["exhaustive"],
    }


RUNNERS: dict[str, Callable[[bool], dict[str, Any]]] = {
    "engine": _run_engine,
    "bare": _run_bare,
    "bare-invariant": _run_bare_invariant,
    "build-only": _run_build_only,
    "musil": _run_musil,
    "musil-dataclass": _run_musil_dataclass,
    "minicheck": _run_minicheck,
}


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(kind: str, search_only: bool = False) -> None:
    run = RUNNERS[kind]
    rss_before = _peak_rss_mb()
    out = run(False)
    out["peak_rss_mb"] = _peak_rss_mb()
    out["rss_before_mb"] = rss_before
    out["python"] = platform.python_version()
    if not search_only:  # (--instructions counts the search alone)
        # untimed, after the measurement: the tool must see a broken invariant, shortest trace
        sanity = run(True)
        out["sanity_violation_steps"] = sanity["violation_steps"]
        out["sanity_violation_found"] = sanity.get("violation_found")
    print(json.dumps(out))


# =============================================================================================
# the driver
# =============================================================================================


@dataclass
class Tool:
    name: str  # row label
    kind: str  # which runner
    python: str | None  # interpreter; None if unavailable
    version: str = ""
    skipped: str = ""  # reason, if skipped
    runs: list[dict[str, Any]] = field(default_factory=list)
    control: bool = False


def _python_version(python: str) -> tuple[int, ...] | None:
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print(*sys.version_info[:3])"],
            capture_output=True, text=True, timeout=60, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return tuple(int(x) for x in out.split())


def _find_python(minimum: tuple[int, int], explicit: str | None) -> str | None:
    candidates: list[str] = []
    if explicit:
        candidates.append(explicit)
    if os.environ.get("MUSIL_PYTHON"):
        candidates.append(os.environ["MUSIL_PYTHON"])
    for name in ("python3.12", "python3.13", "python3.14"):
        found = shutil.which(name)
        if found:
            candidates.append(found)
    home = Path.home()
    candidates += sorted(glob.glob(str(home / ".pyenv/versions/3.1[2-9]*/bin/python")))
    for python in candidates:
        version = _python_version(python)
        if version is not None and version[:2] >= minimum:
            return python
    return None


def _package_version(python: str, dist: str) -> str | None:
    try:
        out = subprocess.run(
            [python, "-c", f"import importlib.metadata as m; print(m.version({dist!r}))"],
            capture_output=True, text=True, timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _ensure_venv(venv: Path, base_python: str, requirement: str) -> tuple[str, str]:
    """Create `venv` from `base_python` and install `requirement` there, unless already done.

    Returns (python, installed version). Raises RuntimeError with the reason on failure.
    """
    dist = requirement.split("==")[0]
    python = venv / "bin" / "python"
    wanted = requirement.split("==")[1]
    if python.exists() and _package_version(str(python), dist) == wanted:
        return str(python), wanted
    print(f"setting up {venv.relative_to(REPO)} ({requirement}) ...", file=sys.stderr)
    steps = [
        [base_python, "-m", "venv", "--clear", str(venv)],
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         requirement],
    ]
    for cmd in steps:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-500:]}")
    version = _package_version(str(python), dist)
    if version is None:
        raise RuntimeError(f"{requirement} installed but not importable in {venv}")
    return str(python), version


def _base_python() -> str:
    """The interpreter this venv was made from (so helper venvs use the same Python build)."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    return str(base)


def _setup(args: argparse.Namespace) -> list[Tool]:
    here = sys.executable
    peerkit_version = _package_version(here, "peerkit") or "source"
    tools = [
        Tool("engine", "engine", here, f"peerkit {peerkit_version}"),
        Tool("bare", "bare", here, "textbook BFS (set + deque)"),
    ]
    musil_python: str | None = None
    musil = Tool("musil", "musil", None)
    try:
        base = _find_python((3, 12), args.musil_python)
        if base is None:
            raise RuntimeError("no Python >= 3.12 found (give --musil-python)")
        musil_python, version = _ensure_venv(MUSIL_VENV, base, MUSIL_REQ)
        musil.python, musil.version = musil_python, f"musil {version}"
    except RuntimeError as error:
        musil.skipped = str(error)
    tools.append(musil)
    minicheck = Tool("minicheck", "minicheck", None)
    try:
        python, version = _ensure_venv(MINICHECK_VENV, _base_python(), MINICHECK_REQ)
        minicheck.python, minicheck.version = python, f"minicheck {version}"
    except RuntimeError as error:
        minicheck.skipped = str(error)
    tools.append(minicheck)
    if args.controls:
        tools.append(Tool("bare+invariant", "bare-invariant", here,
                          "textbook BFS + the invariant on every new state", control=True))
    if args.controls and musil_python is not None:
        tools.append(Tool("engine@musil-py", "engine", musil_python,
                          f"peerkit {peerkit_version} (source)", control=True))
        tools.append(Tool("bare@musil-py", "bare", musil_python, "textbook BFS", control=True))
        tools.append(Tool("musil-dataclass", "musil-dataclass", musil_python,
                          f"{musil.version} (frozen-dataclass states)", control=True))
    wanted = set(args.tools.split(",")) if args.tools else None
    if wanted is not None:
        unknown = wanted - {t.name for t in tools}
        if unknown:
            raise SystemExit(f"unknown tools {sorted(unknown)}; have {[t.name for t in tools]}")
        tools = [t for t in tools if t.name in wanted]
    missing = [t for t in tools if t.skipped]
    if missing and not args.skip_missing:
        reasons = "; ".join(f"{t.name}: {t.skipped}" for t in missing)
        raise SystemExit(f"cannot set up {reasons}\n(re-run with --skip-missing to report them "
                         "as skipped)")
    return tools


def _run_once(tool: Tool) -> dict[str, Any]:
    assert tool.python is not None
    done = subprocess.run(
        [tool.python, str(Path(__file__).resolve()), "--worker", tool.kind],
        capture_output=True, text=True, cwd=str(REPO),
    )
    if done.returncode != 0:
        raise RuntimeError(f"{tool.name} worker failed:\n{done.stderr.strip()[-2000:]}")
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    problems = []
    if out["states"] != EXPECTED_STATES:
        problems.append(f"reported {out['states']} states, expected {EXPECTED_STATES}")
    if out.get("transitions") not in (None, EXPECTED_TRANSITIONS):
        problems.append(f"counted {out['transitions']} transitions")
    if not out["verdict_ok"]:
        problems.append("did not report the invariant as holding on a complete search")
    if tool.kind == "bare-invariant":
        if out["sanity_violation_found"] is not True:
            problems.append("did not see the broken invariant in the sanity run")
    elif tool.kind != "bare" and out["sanity_violation_steps"] != EXPECTED_CE_STEPS:
        problems.append(
            f"broken-invariant sanity run gave {out['sanity_violation_steps']} steps, "
            f"expected a shortest counterexample of {EXPECTED_CE_STEPS}"
        )
    if problems:
        raise RuntimeError(f"{tool.name}: " + "; ".join(problems))
    out["states_per_second"] = out["states"] / out["seconds"]
    out["cpu_states_per_second"] = out["states"] / out["cpu_seconds"]
    return out


def _machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return {
        "cpu_model": cpu,
        "cores": os.cpu_count(),
        "cores_available": affinity,
        "memory_gib": mem,
        "kernel": platform.release(),
        "machine": platform.machine(),
    }


def _git() -> dict[str, Any]:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, cwd=REPO,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "commit": git("rev-parse", "HEAD"),
        # other work in the checkout may have changed the engine since the commit
        "checker_dirty": bool(git("status", "--porcelain", "--", "checker")),
    }


def _summary(tool: Tool) -> dict[str, Any]:
    rates = [r["states_per_second"] for r in tool.runs]
    cpu_rates = [r["cpu_states_per_second"] for r in tool.runs]
    seconds = [r["seconds"] for r in tool.runs]
    median = statistics.median(rates)
    return {
        "median_states_per_second": round(median),
        "min_states_per_second": round(min(rates)),
        "max_states_per_second": round(max(rates)),
        "spread_percent": round(100 * (max(rates) - min(rates)) / median, 1),
        "median_cpu_states_per_second": round(statistics.median(cpu_rates)),
        "median_seconds": round(statistics.median(seconds), 3),
        "peak_rss_mb": round(max(r["peak_rss_mb"] for r in tool.runs), 1),
    }


def _ratio(tools: dict[str, Tool], a: str, b: str) -> dict[str, Any] | None:
    """a/b from the medians, and the range of the per-round (paired) ratios."""
    ta, tb = tools.get(a), tools.get(b)
    if ta is None or tb is None or not ta.runs or not tb.runs:
        return None
    paired = [
        ra["states_per_second"] / rb["states_per_second"]
        for ra, rb in zip(ta.runs, tb.runs, strict=False)
    ]
    median_a = statistics.median(r["states_per_second"] for r in ta.runs)
    median_b = statistics.median(r["states_per_second"] for r in tb.runs)
    cpu_a = statistics.median(r["cpu_states_per_second"] for r in ta.runs)
    cpu_b = statistics.median(r["cpu_states_per_second"] for r in tb.runs)
    return {
        "of_medians": round(median_a / median_b, 3),
        "of_cpu_time_medians": round(cpu_a / cpu_b, 3),
        "per_round_median": round(statistics.median(paired), 3),
        "per_round_min": round(min(paired), 3),
        "per_round_max": round(max(paired), 3),
    }


#: rows --instructions counts (row label -> runner), all on this interpreter
INSTRUCTION_ROWS = {"engine": "engine", "bare": "bare", "bare+invariant": "bare-invariant"}


def _count_instructions(valgrind: str, kind: str) -> tuple[int, dict[str, Any]]:
    """Instructions one worker process executes under cachegrind (no cache simulation), with
    the worker's JSON line. The count is the same on every run within about 0.1%, whatever
    else the machine runs."""
    cmd = [valgrind, "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
           sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--search-only"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO))
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{kind} under cachegrind failed:\n{done.stderr.strip()[-2000:]}")
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return int(found.group(1).replace(",", "")), out


def _instructions(args: argparse.Namespace, argv: list[str] | None) -> int:
    """--instructions: the search alone of each row, in instructions (see the module doc)."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("--instructions needs valgrind on PATH (apt-get install valgrind)")
    rows = list(INSTRUCTION_ROWS)
    if args.tools:
        rows = [r for r in args.tools.split(",") if r]
        unknown = set(rows) - set(INSTRUCTION_ROWS)
        if unknown:
            raise SystemExit(f"--instructions counts only {list(INSTRUCTION_ROWS)}, "
                             f"not {sorted(unknown)}")
    load_before = os.getloadavg()
    started = time.time()
    build, _ = _count_instructions(valgrind, "build-only")
    print(f"build only: {build:,} instructions", file=sys.stderr)
    counted: dict[str, dict[str, Any]] = {}
    for row in rows:
        total, out = _count_instructions(valgrind, INSTRUCTION_ROWS[row])
        if out["states"] != EXPECTED_STATES or not out["verdict_ok"] or (
                out["transitions"] not in (None, EXPECTED_TRANSITIONS)):
            raise RuntimeError(f"{row}: wrong result under cachegrind: {out}")
        counted[row] = {"process": total, "search": total - build}
        print(f"{row}: {total - build:,} instructions (search)", file=sys.stderr)
    ratios = {
        f"{a}/{b}": round(counted[b]["search"] / counted[a]["search"], 3)
        for a, b in (("engine", "bare"), ("engine", "bare+invariant"), ("bare+invariant", "bare"))
        if a in counted and b in counted
    }
    version = subprocess.run([valgrind, "--version"], capture_output=True, text=True).stdout
    report = {
        "benchmark": "engine_speed --instructions",
        "model": {"name": f"counters({N}, {TOP})", "states": EXPECTED_STATES,
                  "transitions": EXPECTED_TRANSITIONS},
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_seconds": round(time.time() - started, 1),
        "how": ("one process per row under valgrind --tool=cachegrind --cache-sim=no, running "
                "the search only (no sanity run); search = the process's instructions less "
                "those of a process that imports the same modules and builds the model; a "
                "ratio a/b is instructions(b) / instructions(a), i.e. a's speed over b's"),
        "command": " ".join([Path(sys.executable).name, "benchmarks/engine_speed.py",
                             *(argv if argv is not None else sys.argv[1:])]),
        "python": platform.python_version(),
        "valgrind": version.strip(),
        "machine": {**_machine(), "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "peerkit": _git(),
        "build_only_instructions": build,
        "instructions": counted,
        "ratios": ratios,
    }
    path = args.json if args.json is not None else INSTRUCTION_RESULTS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\ninstructions, search alone: counters({N}, {TOP}), Python "
          f"{platform.python_version()}")
    for row, c in counted.items():
        print(f"{row:<16} {c['search'] / 1e6:>10,.0f}M")
    for name, value in ratios.items():
        print(f"{name:<24} {value:.3f}")
    print(f"\nwritten: {path}")
    return 0


def _fmt_rate(x: float) -> str:
    return f"{x / 1000:,.0f}k"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--skip-missing", action="store_true",
                        help="report a tool that cannot be installed as skipped, not an error")
    parser.add_argument("--tools", default="",
                        help="comma-separated subset of the rows, e.g. engine,bare,minicheck")
    parser.add_argument("--no-controls", dest="controls", action="store_false",
                        help="do not run engine and bare under musil's interpreter as well")
    parser.add_argument("--musil-python", default=None,
                        help="a Python >= 3.12 to build musil's venv from (default: search)")
    parser.add_argument("--json", type=Path, default=None,
                        help=f"default {RESULTS} ({INSTRUCTION_RESULTS} with --instructions)")
    parser.add_argument("--instructions", action="store_true",
                        help="count the instructions of the search (engine, bare, "
                             "bare+invariant) under valgrind's cachegrind instead of timing")
    parser.add_argument("--worker", choices=sorted(RUNNERS), help=argparse.SUPPRESS)
    parser.add_argument("--search-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.search_only)
        return 0
    if args.instructions:
        return _instructions(args, argv)
    if args.json is None:
        args.json = RESULTS
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    tools = _setup(args)
    active = [t for t in tools if not t.skipped]
    load_before = os.getloadavg()
    started = time.time()
    for number in range(args.rounds):
        shift = number % len(active)
        order = active[shift:] + active[:shift]
        for tool in order:
            out = _run_once(tool)
            out["round"] = number + 1
            tool.runs.append(out)
            print(f"round {number + 1}/{args.rounds}  {tool.name:<16} "
                  f"{_fmt_rate(out['states_per_second']):>6} states/s  "
                  f"({out['seconds']:.2f} s)", file=sys.stderr)
    load_after = os.getloadavg()
    by_name = {t.name: t for t in tools}

    ratios = {
        "engine/bare": _ratio(by_name, "engine", "bare"),
        "engine/bare+invariant": _ratio(by_name, "engine", "bare+invariant"),
        "bare+invariant/bare": _ratio(by_name, "bare+invariant", "bare"),
        "engine/musil": _ratio(by_name, "engine", "musil"),
        "engine/minicheck": _ratio(by_name, "engine", "minicheck"),
        "engine/musil, same interpreter": _ratio(by_name, "engine@musil-py", "musil"),
        "engine/bare, musil's interpreter": _ratio(by_name, "engine@musil-py", "bare@musil-py"),
    }
    ratios = {k: v for k, v in ratios.items() if v is not None}

    def target(name: str, threshold: float, text: str) -> dict[str, Any]:
        r = ratios.get(name)
        if r is None:
            return {"target": text, "met": None, "note": "not measured (tool skipped)"}
        return {"target": text, "met": r["of_medians"] >= threshold,
                "ratio_of_medians": r["of_medians"],
                "met_on_cpu_time": r["of_cpu_time_medians"] >= threshold,
                "ratio_of_cpu_time_medians": r["of_cpu_time_medians"]}

    targets = {
        "engine faster than musil": target("engine/musil", 1.0, "engine/musil > 1"),
        "engine faster than minicheck": target("engine/minicheck", 1.0, "engine/minicheck > 1"),
        "engine at least 80% of bare BFS": target("engine/bare", TARGET_BARE_FRACTION,
                                                  "engine/bare >= 0.80"),
    }

    report: dict[str, Any] = {
        "benchmark": "engine_speed",
        "model": {
            "name": f"counters({N}, {TOP})",
            "states": EXPECTED_STATES,
            "transitions": EXPECTED_TRANSITIONS,
            "invariant": f"no counter exceeds {TOP} (every state)",
        },
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_seconds": round(time.time() - started, 1),
        "how": (
            f"{args.rounds} interleaved rounds (rotating order), a fresh process per run, "
            "timing only the search call with time.perf_counter (CPU time from "
            "time.process_time as well); states/s = reported distinct states / seconds; every "
            "run checked to report 279,936 states and no violation, and (untimed) to find the "
            "5-step shortest counterexample of a broken invariant"
        ),
        "command": " ".join([Path(sys.executable).name, "benchmarks/engine_speed.py",
                             *(argv if argv is not None else sys.argv[1:])]),
        "machine": {**_machine(), "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in load_after]},
        "peerkit": _git(),
        "tools": {},
        "ratios": ratios,
        "targets": targets,
    }
    for tool in tools:
        entry: dict[str, Any] = {"kind": tool.kind, "control": tool.control,
                                 "version": tool.version}
        if tool.skipped:
            entry.update(status="skipped", reason=tool.skipped)
        else:
            entry.update(status="ok", python=tool.runs[0]["python"], **_summary(tool),
                         runs=tool.runs)
        report["tools"][tool.name] = entry

    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(args.json)

    # -- the table ---------------------------------------------------------------------------
    m = report["machine"]
    print(f"\nengine speed: counters({N}, {TOP}), {EXPECTED_STATES:,} states, "
          f"{EXPECTED_TRANSITIONS:,} transitions")
    print(f"{m['cpu_model']}, {m['cores']} cores; {args.rounds} interleaved rounds, fresh "
          f"process per run; load average {load_before[0]:.2f} -> {load_after[0]:.2f}")
    header = (f"{'tool':<16} {'python':<8} {'states/s median':>15} {'min-max':>15} "
              f"{'spread':>7} {'CPU st/s':>9} {'s median':>9} {'peak RSS':>9}  version")
    print(header)
    print("-" * len(header))
    # states/s = states / wall seconds of the search call; "CPU st/s" uses process CPU time,
    # which waiting for the CPU (another process on a 2-core machine) does not inflate
    for tool in tools:
        if tool.skipped:
            print(f"{tool.name:<16} skipped: {tool.skipped}")
            continue
        s = _summary(tool)
        print(
            f"{tool.name:<16} {tool.runs[0]['python']:<8} "
            f"{_fmt_rate(s['median_states_per_second']):>15} "
            f"{_fmt_rate(s['min_states_per_second']) + '-' + _fmt_rate(s['max_states_per_second']):>15} "  # noqa: E501
            f"{s['spread_percent']:>6.1f}% {_fmt_rate(s['median_cpu_states_per_second']):>9} "
            f"{s['median_seconds']:>9.2f} {s['peak_rss_mb']:>7.0f}MB  {tool.version}"
        )
    print()
    for name, r in ratios.items():
        print(f"{name:<34} {r['of_medians']:.2f} (per round {r['per_round_min']:.2f}"
              f"-{r['per_round_max']:.2f}; on CPU time {r['of_cpu_time_medians']:.2f})")
    print()
    for name, t in targets.items():
        if t["met"] is None:
            status = "not measured"
        else:
            status = (f"{'met' if t['met'] else 'NOT met'} ({t['ratio_of_medians']:.3f}); "
                      f"on CPU time {'met' if t['met_on_cpu_time'] else 'NOT met'} "
                      f"({t['ratio_of_cpu_time_medians']:.3f})")
        print(f"target: {name:<34} {status}")
    print(f"\nwritten: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
