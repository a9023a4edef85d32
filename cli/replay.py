"""`peerkit replay FILE`: a checker counterexample, replayed against the implementation.

One job: the command-line face of ``peerkit.conformance.replay``. FILE is what ``peerkit check
--json`` printed for a violation; the counterexample becomes a program of the conformance
driver's rules (printed first, as Python a person can paste), which runs on two reference servers
(memory stores, the in-memory network, virtual time) against the model without bug switches.

Exit codes: 0 the implementation conforms all the way (a regression test passes), 1 it diverged
from the model (printed: where, the model's candidates beside the implementation), 2 bad usage or
a file that is not a replayable counterexample (one line), 3 the replay is void: the
implementation went where the program could not follow (no verdict either way).

``--with-bugs`` switches on in the implementation the bugs the counterexample was found with:
the way to see a replay catch its bug. ``--print-only`` prints the program and runs nothing.

Needs the test extra (Hypothesis): ``pip install "peerkit[test]"``.

May import: the standard library, ``peerkit.conformance`` (lazily: the extra may be missing).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TextIO

EXIT_CONFORMS = 0
EXIT_DIVERGED = 1
EXIT_USAGE = 2
EXIT_VOID = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, metavar="FILE",
                        help="the output of `peerkit check --json` for a violation")
    parser.add_argument("--with-bugs", action="store_true",
                        help="switch on, in the implementation only, the bugs the "
                        "counterexample was found with")
    parser.add_argument("--seed", type=int, default=0,
                        help="trio's scheduler seed for the run (default 0)")
    parser.add_argument("--print-only", action="store_true",
                        help="print the program and do not run it")


def run(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        from peerkit.conformance import replay
    except ImportError as exc:
        err.write(f"peerkit replay: needs the test extra (pip install \"peerkit[test]\"): "
                  f"{exc}\n")
        return EXIT_USAGE
    try:
        text = args.file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        err.write(f"peerkit replay: cannot read {args.file}: {exc}\n")
        return EXIT_USAGE
    try:
        cex = replay.load(text)
        program = replay.translate(cex)
    except replay.ReplayError as exc:
        err.write(f"peerkit replay: {args.file}: {exc}\n")
        return EXIT_USAGE
    program = replay.with_seed(program, args.seed)
    bugs = sorted(cex.bugs) if args.with_bugs else []
    out.write(f"# {args.file}: {cex.violated} violated in configuration {cex.config.name!r}"
              f"{' with bug ' + ', '.join(sorted(cex.bugs)) if cex.bugs else ''}; "
              f"{program.checker_steps} checker steps, {program.env_actions} of them "
              f"environment actions, become {len(program.steps)} rules\n")
    out.write(replay.render(program, bugs))
    if args.print_only:
        return EXIT_CONFORMS
    logger = logging.getLogger("peerkit")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # the servers log every retry; the verdict is what counts
    try:
        outcome = replay.run(program, bugs)
    finally:
        logger.setLevel(level)
    where = "the set-up" if outcome.at == 0 else (
        "the final settle" if outcome.at > len(program.steps) else f"rule {outcome.at}")
    if outcome.diverged:
        out.write(f"\nDIVERGED at {where}: the implementation"
                  f"{' (with ' + ', '.join(bugs) + ')' if bugs else ''} did what the model "
                  f"cannot\n{outcome.message}\n")
        return EXIT_DIVERGED
    if outcome.off_script:
        out.write(f"\nVOID at {where}: {outcome.message}\n")
        return EXIT_VOID
    out.write(f"\nCONFORMS: the implementation"
              f"{' (with ' + ', '.join(bugs) + ')' if bugs else ''} followed the model through "
              f"all {len(program.steps)} rules and settled\n")
    return EXIT_CONFORMS
