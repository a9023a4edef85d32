"""The fingerprint of a fixed derandomized conformance run, to show that a change keeps the draws.

Run from the repository root with the project's venv, on two commits, and compare the lines:

    .venv/bin/python benchmarks/conformance_sequence.py [--budget N] [BUG ...]

Method: the state machine of ``peerkit.conformance.stateful`` (the given bugs on in the
implementation only) runs with ``profiles.bug_hunt(N)`` settings: derandomized, the sequence the
CI bug hunts use. Printed: whether a divergence stopped it, the example runs and rule steps
(``STATS``), the number of observations, and a SHA-256 over every observation (what the rule
was, the implementation's view, and the candidate set after it, sorted), so that the same line on
two commits means the same examples, the same rules and the same candidate sets.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import time
from typing import Any

from peerkit.conformance import candidates
from peerkit.conformance.profiles import bug_hunt
from peerkit.conformance.stateful import machine_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=60, help="examples (as bug_hunt counts)")
    parser.add_argument("bugs", nargs="*")
    args = parser.parse_args()
    logging.getLogger("peerkit").setLevel(logging.CRITICAL)
    digest = hashlib.sha256()
    count = [0]
    observe = candidates.Candidates.observe

    def recording(self: candidates.Candidates, observed: Any, what: str,
                  faults: Any = ()) -> None:
        try:
            observe(self, observed, what, faults)
        finally:
            digest.update(repr((what, observed, sorted(map(repr, self.states)))).encode())
            count[0] += 1

    candidates.Candidates.observe = recording  # type: ignore[method-assign]
    machine = machine_for(impl_bugs=args.bugs)
    machine.TestCase.settings = bug_hunt(args.budget)
    start = time.perf_counter()
    caught = False
    try:
        machine.TestCase().runTest()
    except BaseException as exc:  # a divergence (or a group of them) ends a bug hunt
        if not candidates.divergences(exc):
            raise
        caught = True
    print(f"bugs {args.bugs or 'none'}: {'diverged' if caught else 'conformed'} after "
          f"{machine.STATS.get('examples', 0)} example runs, {machine.STATS.get('steps', 0)} "
          f"rule steps, {count[0]} observations, fingerprint {digest.hexdigest()[:16]}, "
          f"{len(machine.COVERED)} edge keys ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
