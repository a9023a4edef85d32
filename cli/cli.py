"""The `peerkit` command line.

Subcommands:

* ``peerkit check``: model-check a configuration, optionally with bug switches on. Exit 0 when
  every property holds, 1 when one is violated, 2 on bad usage, 3 when the search was cut short by
  a bound before any violation was found (so some property is undecided).
* ``peerkit bugs``: one line per bug switch: its name (the word ``--bug`` takes), then what it does.
* ``peerkit configs`` / ``peerkit properties``: list the named configurations and the properties.
* ``peerkit serve`` / ``peerkit demo``: run the reference implementation (peerkit.impl).
* ``peerkit replay FILE``: replay a counterexample of ``check --json`` against the
  implementation, through the conformance driver (``replay.py``).
* ``peerkit peering ...`` / ``peerkit services ...``: an operator's commands against a running
  ``peerkit serve`` (``operator.py``).

This module may import everything; nothing imports it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO, cast

from . import __version__, operator, replay, specgen
from .argtypes import positive_float, positive_int
from .checker import parallel
from .checker.engine import Bounds, Progress, check
from .checker.report import format_counterexample, format_summary, format_verdicts, result_json
from .model import BUGS, CONFIGS, PeeringModel, get_config
from .model.machine import SetupError
from .model.render import describe_step, mermaid, replay_program, summarize

EXIT_OK, EXIT_VIOLATED, EXIT_USAGE, EXIT_INCOMPLETE = 0, 1, 2, 3


def _bug_name(text: str) -> str:
    if text not in BUGS:
        raise argparse.ArgumentTypeError(
            f"unknown bug {text!r}; `peerkit bugs` lists them: {', '.join(sorted(BUGS))}"
        )
    return text


def _mutant_name(text: str) -> str:
    from .model.mutants import MUTANTS

    if text not in MUTANTS:
        raise argparse.ArgumentTypeError(
            f"unknown mutant {text!r}; `peerkit mutants` lists the {len(MUTANTS)} of them"
        )
    return text


def _config_name(text: str) -> str:
    if text not in CONFIGS:
        raise argparse.ArgumentTypeError(
            f"unknown configuration {text!r}; known: {', '.join(sorted(CONFIGS))}"
        )
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="peerkit",
        description="Model, model checker and reference implementation of Consul cluster "
        "peering's deletion lifecycle and peer-stream shutdown.",
    )
    parser.add_argument("--version", action="version", version=f"peerkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    chk = sub.add_parser("check", help="model-check a configuration (exit 0: all properties "
                         "hold, 1: one is violated, 3: search cut short)")
    chk.add_argument("--config", type=_config_name, default="default",
                     help="named configuration (see `peerkit configs`; default: default)")
    chk.add_argument("--bug", type=_bug_name, action="append", default=[], metavar="NAME",
                     help="switch a known bug on (repeatable; see `peerkit bugs`)")
    chk.add_argument("--mutant", type=_mutant_name, metavar="NAME",
                     help="check the model with one mistake of the mutation catalog in place "
                     "(`peerkit mutants` lists them)")
    chk.add_argument("--json", action="store_true",
                     help="print one JSON object on stdout instead of the text report")
    chk.add_argument("--trace-out", type=Path, metavar="FILE",
                     help="write the counterexample as a Mermaid sequence diagram (Markdown, or "
                     "raw Mermaid if FILE ends in .mmd)")
    chk.add_argument("--all", action="store_true",
                     help="keep going after the first violation and report each property's "
                     "shortest counterexample")
    chk.add_argument("--max-states", type=positive_int, metavar="N",
                     help="stop after N distinct states (exit 3 if nothing was violated)")
    chk.add_argument("--max-depth", type=positive_int, metavar="N",
                     help="explore no state more than N steps from the start (exit 3 if "
                     "deeper states were left unexplored and nothing was violated)")
    chk.add_argument("--max-seconds", type=positive_float, metavar="S",
                     help="stop after S seconds of search (exit 3 if nothing was violated)")
    chk.add_argument("--fingerprints", action="store_true",
                     help="store each visited state as a 64-bit fingerprint, as TLC does "
                     "(measured on the peering model: 61 to 79 bytes a state at peak, "
                     "liveness graph included, against about 800 exact); the report gives "
                     "the probability that a fingerprint collision omitted a state")
    chk.add_argument("--no-progress", action="store_true", help="no progress display on stderr")
    where = chk.add_mutually_exclusive_group()
    where.add_argument("--workers", type=positive_int, metavar="N",
                       help="search with N worker processes (default: $PEERKIT_WORKERS, else "
                       "the cores there are; 1: in this process); same states, verdicts and "
                       "counterexamples")
    where.add_argument("--cluster", metavar="ADDRESS",
                       help="search on the workers of the Dask cluster whose scheduler is at "
                       "ADDRESS (e.g. tcp://10.0.0.5:8786); needs peerkit[distributed]")

    sub.add_parser("bugs", help="list the bug switches, one per line")
    sub.add_parser("configs", help="list the named configurations")
    sub.add_parser("mutants", help="list the mutation catalog: plausible mistakes in the fixed "
                   "protocol, one per line (name, family, the mistake)")
    sub.add_parser("properties", help="list the properties the checker decides")
    specs = sub.add_parser("specs", help="regenerate specs/generated (tables and diagrams from "
                           "the model), or --check that it is current")
    specgen.add_arguments(specs)

    rep = sub.add_parser("replay", help="replay a counterexample (`peerkit check --json` "
                         "output) against the reference implementation (exit 0: conforms, 1: "
                         "diverged, 3: void)")
    replay.add_arguments(rep)

    serve = sub.add_parser("serve", help="run one cluster's peering server (reference "
                           "implementation)")
    demo = sub.add_parser("demo", help="two clusters on loopback walk the whole lifecycle")
    _add_impl_arguments(serve, "serve")
    _add_impl_arguments(demo, "demo")
    operator.add_commands(sub)
    return parser


def _add_impl_arguments(parser: argparse.ArgumentParser, name: str) -> None:
    try:
        module = _impl_module(name)
    except ImportError:
        parser.set_defaults(impl_missing=True)
        return
    module.add_arguments(parser)


def _impl_module(name: str) -> Any:
    import importlib

    return importlib.import_module(f"peerkit.impl.{name}")


# ---------------------------------------------------------------------------------------------


class _ProgressPrinter:
    """States, depth, queue and rate on stderr: a live line on a terminal, a line every few
    seconds otherwise (CI logs)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.last = 0.0

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        if not self.tty and now - self.last < 5.0:
            return
        self.last = now
        text = (f"  {p.states:>10,} states  depth {p.depth:>3}  queue {p.queue:>9,}  "
                f"{p.states_per_second:>9,.0f} states/s  {p.seconds:6.1f} s")
        if self.tty:
            self.stream.write("\r" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.tty and self.last:
            self.stream.write("\r" + " " * 90 + "\r")
            self.stream.flush()


def run_check(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    config = get_config(args.config)
    bugs = sorted(set(args.bug))
    try:
        model = PeeringModel(config, bugs, mutant=args.mutant)
        model.initial()
    except SetupError as exc:
        err.write(f"peerkit check: {exc} (configuration {config.name!r}"
                  f"{', mutant ' + args.mutant if args.mutant else ''})\n")
        return EXIT_VIOLATED
    bounds = Bounds(max_depth=args.max_depth, max_states=args.max_states,
                    max_seconds=args.max_seconds, stop_at_first=not args.all)
    if args.trace_out is not None:
        problem = _probe_writable(args.trace_out)
        if problem is not None:
            err.write(f"peerkit check: cannot write --trace-out {args.trace_out}: {problem}\n")
            return EXIT_USAGE
    progress = None if args.no_progress else _ProgressPrinter(err)
    if progress is not None and not args.json:
        err.write(f"peerkit check: configuration {config.name!r} ({config.description})"
                  f"{'; bugs: ' + ', '.join(bugs) if bugs else ''}"
                  f"{'; mutant: ' + args.mutant if args.mutant else ''}\n")
    factory = functools.partial(PeeringModel, config, bugs, mutant=args.mutant)
    workers = args.workers
    if args.fingerprints and (args.cluster is not None or (workers or 1) > 1):
        # the parallel search keeps states exactly, partitioned by owner; fingerprints are a
        # one-process storage mode (see checker/fingerprint.py)
        err.write("peerkit check: --fingerprints searches in one process: it does not combine "
                  "with --cluster or --workers above 1\n")
        return EXIT_USAGE
    if workers is None and args.fingerprints:
        workers = 1
    if workers is None:
        setting = os.environ.get("PEERKIT_WORKERS", "")
        try:
            workers = positive_int(setting) if setting else parallel.default_workers()
        except argparse.ArgumentTypeError as exc:
            err.write(f"peerkit check: PEERKIT_WORKERS: {exc}\n")
            return EXIT_USAGE
    try:
        if args.cluster is not None:
            from .cluster import ClusterUnavailable, DaskPool

            try:
                pool = DaskPool(factory, args.cluster)
            except ClusterUnavailable as exc:
                err.write(f"peerkit check: {exc}\n")
                return EXIT_USAGE
            try:
                result = parallel.check(factory, bounds=bounds, progress=progress,
                                        progress_interval=0.5, pool=pool)
            finally:
                pool.close()
        elif workers == 1:
            result = check(model, bounds, progress=progress, progress_interval=0.5,
                           fingerprints=args.fingerprints)
        else:
            result = parallel.check(factory, workers, bounds, progress=progress,
                                    progress_interval=0.5)
    except parallel.WorkerError as exc:
        err.write(f"peerkit check: a worker failed: {exc}\n")
        return EXIT_USAGE
    if progress is not None:
        progress.done()

    def describe(before: Any, action: Any, after: Any) -> str:
        return describe_step(model, before, action, after)

    titles = {p.id: p.title for p in result.properties}
    ce = result.counterexample
    if args.trace_out is not None and ce is not None:
        _write_trace(args.trace_out, model, ce, titles.get(ce.property_id, ""))
    elif args.trace_out is not None:
        err.write(f"peerkit check: no property was violated, so no trace was written to "
                  f"{args.trace_out}\n")

    if args.json:
        report = result_json(result, describe, extra={"config": config.name, "bugs": bugs,
                                                      "mutant": args.mutant})
        if ce is not None and args.trace_out is not None:
            report["trace_out"] = str(args.trace_out)
        json.dump(report, out, indent=2)
        out.write("\n")
    else:
        w = out.write
        w(f"peerkit check --config {config.name}"
          f"{''.join(' --bug ' + b for b in bugs)}"
          f"{' --mutant ' + args.mutant if args.mutant else ''}\n")
        for line in format_summary(result):
            w(line + "\n")
        w("\n")
        for violation in result.counterexamples:
            for line in format_counterexample(violation, describe,
                                              titles.get(violation.property_id, "")):
                w(line + "\n")
            last = violation.steps[-1].state if violation.steps else violation.initial
            if violation.loop:
                last = violation.loop[-1].state
            w("\n  The state at the end:\n")
            for line in summarize(last):
                w(f"    {line}\n")
            w("\n  To replay it in Python:\n\n")
            actions = [*violation.actions, *(s.action for s in violation.loop)]
            for line in replay_program(config.name, bugs, actions,
                                       mutant=args.mutant).splitlines():
                w(f"    {line}\n")
            w("\n")
        for line in format_verdicts(result):
            w(line + "\n")
        if ce is not None and args.trace_out is not None:
            w(f"\nsequence diagram written to {args.trace_out}\n")
    if not result.ok:
        return EXIT_VIOLATED
    if not result.complete:
        if not args.json:
            out.write("\nThe search was cut short; properties marked ?? are undecided.\n")
        return EXIT_INCOMPLETE
    return EXIT_OK


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _probe_writable(path: Path) -> str | None:
    """Why ``path`` cannot be written (None if it can), found by creating it before the search
    (and removing it again if it did not exist), so a bad path fails in a second, not after."""
    existed = path.exists()
    missing = [d for d in path.parents if not d.exists()]  # deepest first
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a"):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        with contextlib.suppress(OSError):
            if not existed and path.is_file():
                path.unlink()
            for directory in missing:
                directory.rmdir()
    return None


def _write_trace(path: Path, model: PeeringModel, ce: Any, title: str) -> None:
    actions = [*ce.actions, *(s.action for s in ce.loop)]
    diagram = mermaid(model, ce.initial, actions,
                      title=f"{ce.property_id} violated ({model.name})")
    if path.suffix == ".mmd":
        text = diagram
    else:
        text = (f"# Counterexample: {ce.property_id}\n\n{title}\n\n{ce.explanation}\n\n"
                f"Model: `{model.name}`, {_count(len(ce.steps), 'step')}"
                f"{f' then a loop of {len(ce.loop)}' if ce.loop else ''}.\n\n"
                f"```mermaid\n{diagram}```\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def run_bugs(out: TextIO) -> int:
    width = max(len(name) for name in BUGS)
    for bug in BUGS.values():
        out.write(f"{bug.name:<{width}}  {bug.summary} (fixed by {bug.fixed_by})\n")
    return EXIT_OK


def run_configs(out: TextIO) -> int:
    width = max(len(name) for name in CONFIGS)
    for cfg in CONFIGS.values():
        out.write(f"{cfg.name:<{width}}  {cfg.description}\n")
    return EXIT_OK


def run_mutants(out: TextIO) -> int:
    from .model.mutants import EQUIVALENT, MUTANTS

    width = max(len(name) for name in MUTANTS)
    for m in MUTANTS.values():
        note = f"  [equivalent: {EQUIVALENT[m.name]}]" if m.name in EQUIVALENT else ""
        out.write(f"{m.name:<{width}}  {m.family:<9}  {m.summary}{note}\n")
    out.write(f"{len(MUTANTS)} mutants, {len(EQUIVALENT)} shown equivalent "
              "(specs/mutants.md); `peerkit check --mutant NAME` checks one\n")
    return EXIT_OK


def run_properties(out: TextIO) -> int:
    model = PeeringModel(get_config("tiny"))
    rows: list[tuple[str, str, str]] = []
    rows += [(p.id, "invariant", p.title) for p in model.invariants]
    rows += [(p.id, "transition", p.title) for p in model.transition_invariants]
    rows += [(p.id, "liveness", p.title) for p in model.liveness]
    width = max(len(r[0]) for r in rows)
    for pid, kind, title in rows:
        out.write(f"{pid:<{width}}  {kind:<10}  {title}\n")
    return EXIT_OK


def main(argv: Sequence[str] | None = None, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    parser = build_parser()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    if args.command == "check":
        return run_check(args, out, err)
    if args.command == "bugs":
        return run_bugs(out)
    if args.command == "configs":
        return run_configs(out)
    if args.command == "mutants":
        return run_mutants(out)
    if args.command == "properties":
        return run_properties(out)
    if args.command == "specs":
        return specgen.run(args, out)
    if args.command == "replay":
        return replay.run(args, out, err)
    if args.command in ("peering", "services"):
        return operator.run(args, out, err)
    if getattr(args, "impl_missing", False):
        err.write(f"peerkit {args.command}: the reference implementation is not available\n")
        return EXIT_USAGE
    result: int = _impl_module(args.command).run(args)
    return result


class _PipeGuard(io.TextIOBase):
    """stdout for the console script: once the reader has gone (``peerkit check | head``),
    further output is dropped instead of raising BrokenPipeError, so the command still ends
    with its own exit code (a violation stays 1)."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream
        self.broken = False

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                self._stream.write(text)
            except BrokenPipeError:
                self._gone()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._gone()

    def isatty(self) -> bool:
        return self._stream.isatty()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._stream.encoding

    def fileno(self) -> int:
        return self._stream.fileno()

    def _gone(self) -> None:
        self.broken = True
        # what is still buffered goes nowhere, quietly (also at interpreter exit)
        os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())


def console_main() -> None:
    """The `peerkit` executable: main() with stdout guarded against a reader that goes away
    (e.g. `peerkit check | head -1`): the exit code is still the command's own."""
    guard = _PipeGuard(sys.stdout)
    sys.stdout = cast(TextIO, guard)
    try:
        code = main(out=sys.stdout)
        guard.flush()
    except KeyboardInterrupt:
        code = 130
    finally:
        sys.stdout = sys.__stdout__
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    console_main()
