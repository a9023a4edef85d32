"""The model explores exactly the graph it explored before it was made faster (issue 10, item 5).

benchmarks/results/model_fingerprint_0d7973d.json holds the fingerprints of main at 0d7973d:
the checker's figures, verdicts and counterexamples, and a digest of the whole state graph
(every state, every successor list in order). Here the cheap cases are fingerprinted again and
must match; `python benchmarks/model_fingerprint.py --graph --compare FILE` does every case.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
BEFORE = BENCHMARKS / "results" / "model_fingerprint_0d7973d.json"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("model_fingerprint",
                                                  BENCHMARKS / "model_fingerprint.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# a few seconds in all: one configuration with every property holding, one bug that is found
@pytest.mark.parametrize("config,bug", [("race", None), ("ci", "no-reconnect")])
def test_the_graph_and_the_verdicts_are_those_of_0d7973d(config: str, bug: str | None) -> None:
    script = _script()
    before = json.loads(BEFORE.read_text())
    name = script.case_name(config, bug)
    now = script.fingerprint(config, bug, graph=True)
    assert script.compare({name: before[name]}, {name: now}) == []
    # the comparison covered the graph digest and the counterexamples, not only the counts
    assert {"graph_sha256", "counterexamples", "verdicts"} <= before[name].keys() & now.keys()


def test_the_comparison_sees_a_different_graph() -> None:
    script = _script()
    before = json.loads(BEFORE.read_text())
    changed = dict(before["race"], graph_sha256="0" * 64)
    assert script.compare({"race": changed}, {"race": before["race"]}) != []
