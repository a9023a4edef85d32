"""Conformance: the trio implementation is held to the model, step by step, by a Hypothesis state
machine (peerkit.conformance.stateful); every bug switch in the implementation alone is caught.

May import: pytest, hypothesis, peerkit.conformance, peerkit.model.
"""

from __future__ import annotations

import pytest
from hypothesis import settings

from peerkit.conformance.candidates import Divergence, divergences
from peerkit.conformance.profiles import BUG_BUDGET, bug_hunt, store_backend
from peerkit.conformance.stateful import machine_for
from peerkit.model.vocabulary import BUGS

#: No bug switch: every example of the profile passes (``ci`` or ``thorough``). A module-level
#: ``TestCase`` (not a function that calls ``runTest``), so that pytest, pytest-xdist and HypoFuzz
#: all collect it as the Hypothesis test it is: HypoFuzz fuzzes a state machine through its
#: ``TestCase.runTest``.
TestConformance = machine_for(store=store_backend()).TestCase


def test_the_implementation_conforms_on_the_sqlite_store() -> None:
    """The same machine on the SQLite store (``peerkit serve``'s), a few fixed examples; the
    whole profile runs on it with ``PEERKIT_CONFORMANCE_STORE=sqlite``."""
    machine = machine_for(store="sqlite")
    machine.TestCase.settings = bug_hunt(8)
    machine.TestCase().runTest()
    assert machine.STATS["examples"] >= 8


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_bug_in_the_implementation_is_caught(bug: str) -> None:
    """The bug on in the implementation and off in the model: a divergence within
    ``BUG_BUDGET`` derandomized examples (no shrinking, no database: a fixed proof)."""
    machine = machine_for(impl_bugs=[bug])
    machine.TestCase.settings = bug_hunt(BUG_BUDGET)
    with pytest.raises(BaseException) as info:  # a Divergence, or a group of them
        machine.TestCase().runTest()
    assert divergences(info.value), f"{bug}: failed with {info.value!r}, not a divergence"


def test_a_failure_prints_the_shrunk_program_and_the_diff(capsys: pytest.CaptureFixture[str],
                                                          ) -> None:
    """A shrunk failure is a program of rules plus the model's candidates beside the
    implementation, as a diff of abstracted states."""
    machine = machine_for(impl_bugs=["stored-map"])
    machine.TestCase.settings = settings(bug_hunt(BUG_BUDGET, shrink=True),
                                         print_blob=False, report_multiple_bugs=False)
    with pytest.raises(Divergence) as info:
        machine.TestCase().runTest()
    message = str(info.value)
    assert "model" in message and "impl" in message
    # Hypothesis attaches the shrunk program to the exception (and prints it under pytest)
    program = "\n".join(getattr(info.value, "__notes__", [])) + capsys.readouterr().out
    assert "state = Conformance_stored_map()" in program
    assert "state.setup(" in program and "establish_after=6.0" in program


def test_a_shared_example_database_is_named_by_the_environment(tmp_path: object) -> None:
    """``PEERKIT_HYPOTHESIS_DB`` points every worker (xdist, HypoFuzz, other machines on a shared
    filesystem) at one directory; unset, Hypothesis's default directory is used."""
    from hypothesis.database import DirectoryBasedExampleDatabase

    from peerkit.conformance.profiles import DATABASE_ENV, example_database

    assert example_database({}) is None
    assert example_database({DATABASE_ENV: ""}) is None
    db = example_database({DATABASE_ENV: str(tmp_path)})
    assert isinstance(db, DirectoryBasedExampleDatabase)
    db.save(b"key", b"value")
    again = example_database({DATABASE_ENV: str(tmp_path)})
    assert again is not None and list(again.fetch(b"key")) == [b"value"]
