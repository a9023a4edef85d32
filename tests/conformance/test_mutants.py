"""Conformance catches the model's mutants made again in the implementation (issue 7).

Three checks: the implementation's mutant table and the model's catalog agree (every catalog
mutant is ported, not ported with a reason, or shown equivalent); every ported switch is read
somewhere in impl/ (a misspelt switch would be a no-op, and its check a vacuous pass); and each
ported mutant, on in the implementation only, is caught by a short directed scenario replayed
through the driver without search, a scenario that conforms with the switch off (so the check
can fail and is not vacuous). A few mutants are also hunted by search, derandomized, with a
small budget: the search finds them too, not only the scenario written for them
(``benchmarks/conformance_mutants.py`` hunts every one).

May import: pytest, peerkit.conformance, peerkit.impl.mutants, peerkit.model.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from peerkit.conformance.candidates import divergences
from peerkit.conformance.mutants import NOT_CAUGHT, SCENARIOS, scenario_diverges, setup_of
from peerkit.conformance.profiles import bug_hunt
from peerkit.conformance.stateful import machine_for
from peerkit.impl.mutants import IMPL_MUTANTS, NOT_PORTED, validate_mutants
from peerkit.model.mutants import EQUIVALENT, MUTANTS

ROOT = Path(__file__).resolve().parents[2]


def test_the_catalog_is_partitioned() -> None:
    """Each catalog mutant is ported, not ported (with a reason) or shown equivalent: once."""
    ported, not_ported, equivalent = set(IMPL_MUTANTS), set(NOT_PORTED), set(EQUIVALENT)
    assert ported | not_ported | equivalent == set(MUTANTS)
    assert not ported & not_ported and not ported & equivalent and not not_ported & equivalent
    assert all(IMPL_MUTANTS.values()) and all(NOT_PORTED.values())
    assert set(NOT_CAUGHT) <= ported and all(NOT_CAUGHT.values())
    assert set(SCENARIOS) == ported - set(NOT_CAUGHT)


def test_every_switch_is_read_in_the_implementation() -> None:
    """A misspelt switch would be a mutant that changes nothing and so passes vacuously."""
    source = "\n".join(p.read_text() for p in sorted((ROOT / "impl").rglob("*.py"))
                       if p.name != "mutants.py")
    missing = sorted(name for name in IMPL_MUTANTS if f'"{name}"' not in source)
    assert not missing, f"mutant switches impl/ never reads: {missing}"


def test_unknown_mutants_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown implementation mutant"):
        validate_mutants(["no-such-mutant"])
    with pytest.raises(TypeError):
        validate_mutants("deletion-row-first")
    assert validate_mutants(()) == frozenset()


#: scenario (its repr) -> whether it diverged with no mutant on; several mutants share one
_UNMUTATED: dict[str, bool] = {}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_each_ported_mutant_has_a_scenario_the_driver_catches(name: str) -> None:
    """Without search: the scenario diverges with the mutant on and conforms without it."""
    steps, setup = SCENARIOS[name], setup_of(name)
    assert scenario_diverges([name], steps, **setup), (
        f"{name}: the scenario did not diverge with it on")
    key = repr((steps, sorted(setup.items())))
    if key not in _UNMUTATED:
        _UNMUTATED[key] = scenario_diverges([], steps, **setup)
    assert not _UNMUTATED[key], f"{name}: the scenario diverged with no mutant on"


#: mutants the derandomized search catches within a few dozen examples (measured by
#: benchmarks/conformance_mutants.py: 12, 26 and 8 examples); one of the deletion routine, one
#: of the dialer's handler, one of the acceptor's teardown
HUNTED = ("deletion-row-first", "dialer-gives-up-on-reset",
          "drop-send-terminated:acceptor-open-teardown")
HUNT_BUDGET = 100


@pytest.mark.parametrize("name", HUNTED)
def test_a_search_catches_a_few_mutants(name: str) -> None:
    machine = machine_for(impl_mutants=[name])
    machine.TestCase.settings = bug_hunt(HUNT_BUDGET)
    with pytest.raises(BaseException) as info:  # a Divergence, or a group of them
        machine.TestCase().runTest()
    assert divergences(info.value), f"{name}: failed with {info.value!r}, not a divergence"
