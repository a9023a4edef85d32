"""The implementation's view remembers its store reads per store index (``abstraction._stored``):
along a fixed run of the conformance machine (operator calls, churn, resets, failovers, holds,
settles), every view made with the remembered reads equals the view read afresh, and the
remembered reads were used (most steps write nothing).

The check can fail: a remembered read kept past a write (the index ignored) gives a stale view
at the first step that writes after one that did not.

May import: pytest, peerkit.conformance.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from peerkit.conformance import abstraction, stateful
from peerkit.conformance.abstraction import View
from peerkit.conformance.profiles import bug_hunt
from peerkit.conformance.stateful import machine_for
from peerkit.impl.testing import Cluster
from peerkit.impl.transport import MemoryCall

#: examples of the fixed run (a few seconds)
EXAMPLES = 5


def test_the_remembered_store_reads_give_the_view_read_afresh(
        monkeypatch: pytest.MonkeyPatch) -> None:
    real = stateful.impl_view
    views: list[View] = []
    reused = [0]

    def checked(clusters: tuple[Cluster, ...],
                calls: Sequence[MemoryCall] | None = None) -> View:
        remembered = dict(abstraction._STORED)
        reused[0] += sum(1 for c in clusters
                         if c.store in remembered and remembered[c.store][0] == c.store.index)
        view = real(clusters, calls)
        kept = dict(abstraction._STORED)
        abstraction._STORED.clear()
        fresh = real(clusters, calls)
        abstraction._STORED.clear()
        abstraction._STORED.update(kept)  # what the run would have remembered without us
        assert view == fresh
        views.append(view)
        return view

    monkeypatch.setattr(stateful, "impl_view", checked)
    machine = machine_for()
    machine.TestCase.settings = bug_hunt(EXAMPLES)
    machine.TestCase().runTest()
    assert len(set(views)) > 10  # the run went through many different views (16 of 143)
    assert reused[0] > len(views)  # and most of the 2 stores' reads were remembered ones
