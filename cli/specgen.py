"""`peerkit specs`: write the generated parts of specs/ (state tables and diagrams from the model's
own tables, the bug table from a checker run per bug), or with --check, fail if the committed
files are stale.

This module may import the model and the checker; it is the only place that writes specs/.
"""

from __future__ import annotations

import argparse
import difflib
from pathlib import Path
from typing import TextIO

from .checker.engine import check
from .model import BUGS, PeeringModel, get_config
from .model.diagrams import all_documents, bugs_markdown

GENERATED = Path("specs") / "generated"


def bug_findings(config: str = "default") -> dict[str, tuple[str, int, str]]:
    """bug -> (violated property, shortest counterexample length, configuration)."""
    out = {}
    for name in BUGS:
        result = check(PeeringModel(get_config(config), {name}))
        ce = result.counterexample
        if ce is None:
            raise RuntimeError(f"the checker did not find bug {name} in config {config}")
        out[name] = (ce.property_id, len(ce.steps), config)
    return out


def documents() -> dict[str, str]:
    docs = all_documents()
    docs["bugs.md"] = bugs_markdown(bug_findings())
    return docs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if a committed file differs")
    parser.add_argument("--dir", type=Path, default=GENERATED,
                        help=f"where the generated files live (default: {GENERATED})")


def run(args: argparse.Namespace, out: TextIO) -> int:
    folder: Path = args.dir
    stale = []
    for name, text in documents().items():
        path = folder / name
        current = path.read_text() if path.exists() else ""
        if current == text:
            continue
        if args.check:
            stale.append(name)
            diff = difflib.unified_diff(current.splitlines(), text.splitlines(),
                                        f"committed/{name}", f"generated/{name}", lineterm="",
                                        n=1)
            out.write("\n".join(list(diff)[:40]) + "\n")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            out.write(f"wrote {path}\n")
    if stale:
        out.write(f"stale: {', '.join(stale)}; run `peerkit specs` and commit the result\n")
        return 1
    if args.check:
        out.write("specs/generated is current\n")
    return 0
