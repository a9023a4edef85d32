"""Run the mutation catalog against the checker: which configuration kills each mutant, how.

A mutant is *killed* when checking some configuration of `CI_CONFIGS` (tried in order, cheapest
first) reports a violated property, or when the configuration's starting world cannot even be
reached with the mutant in place (a mistake that breaks the happy path). It *survives* when every
configuration is explored completely with every property holding.

This module may import the model and the checker; the CLI, specgen, the tests and the benchmark
share it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import cache
from typing import NamedTuple

from .checker.engine import Bounds, check
from .model import BUGS, PeeringModel, get_config
from .model.config import CI_CONFIGS
from .model.machine import SetupError
from .model.mutants import EQUIVALENT, MUTANTS

#: What "killed within bounds" means: the checks of all the configurations tried, added up, explore
#: at most this many distinct states (the CI configurations hold about 180,000 together).
STATE_BUDGET = 400_000

#: the property reported when the starting world cannot be reached
SETUP = "setup"


class Kill(NamedTuple):
    config: str  # the configuration that killed it ("" if none did)
    property_id: str  # the violated property, or SETUP ("" if none)
    steps: int  # the shortest counterexample's length
    states: int  # distinct states explored in all the configurations tried
    seconds: float  # wall time, all configurations tried (not deterministic: reports only)
    prefix: int = 0  # the counterexample's steps before its loop (``steps`` counts the loop too)

    @property
    def killed(self) -> bool:
        return bool(self.config)


def run_one(mutant: str | None, bugs: Sequence[str] = (),
            configs: Sequence[str] = CI_CONFIGS) -> Kill:
    """Check the configurations in order until one fails."""
    started = time.perf_counter()
    states = 0
    for name in configs:
        try:
            model = PeeringModel(get_config(name), bugs, mutant=mutant)
            model.initial()
        except SetupError:
            return Kill(name, SETUP, 0, states, time.perf_counter() - started)
        remaining = max(STATE_BUDGET - states, 1)
        result = check(model, Bounds(max_states=remaining))
        states += result.distinct_states
        ce = result.counterexample
        if ce is not None:
            return Kill(name, ce.property_id, len(ce.steps) + len(ce.loop), states,
                        time.perf_counter() - started, len(ce.steps))
        if not result.complete:
            raise RuntimeError(f"mutant {mutant}: the state budget ran out in {name} before a "
                               "verdict")
    return Kill("", "", 0, states, time.perf_counter() - started)


@cache
def catalog_kills() -> dict[str, Kill]:
    """Every mutant not shown equivalent, checked once per process."""
    return {name: run_one(name) for name in MUTANTS if name not in EQUIVALENT}


@cache
def bug_kills() -> dict[str, Kill]:
    """Every historical bug, through the same CI configurations."""
    return {name: run_one(None, (name,)) for name in BUGS}
