"""Directed conformance scenarios for the implementation's mutants (peerkit.impl.mutants).

One job: for each mutant of the catalog ported to the implementation, a short fixed list of the
driver's rules (no search) after which conformance reports a divergence with that mutant on in
the implementation only, and none with it off; and, for the ported mutants conformance cannot
catch at all, the reason (``NOT_CAUGHT``). ``tests/conformance/test_mutants.py`` replays each
scenario both ways; ``benchmarks/conformance_mutants.py`` hunts each mutant by search too.

May import: the standard library, ``peerkit.impl.mutants`` and this package.
"""

from __future__ import annotations

from .candidates import Divergence
from .stateful import machine_for

__all__ = ["EOF_FIRST", "GAP", "NOT_CAUGHT", "SCENARIOS", "scenario_diverges", "setup_of"]

Step = tuple[str, dict[str, object]]

#: mutant -> the rules after ``setup`` (slow pacing, no gap between token and establishment)
#: that expose it; every scenario ends with ``settle`` (the settled requirement). An empty list:
#: setup itself (token, establishment, first replication) diverges.
SCENARIOS: dict[str, list[Step]] = {
    "drop-accept:acceptor-new-open-valid": [],
    "drop-import:acceptor-open-response": [],  # the dialer's trust bundle is not imported
    "drop-import:dialer-open-response": [],
    "drop-terminate:acceptor-open-terminated": [("delete", {"c": 1})],
    "drop-terminate:dialer-open-terminated": [("delete", {"c": 0})],
    "drop-disconnect:acceptor-open-reset": [("reset", {"i": 0})],
    "drop-disconnect:dialer-open-error-status": [("failover", {"c": 0})],
    "drop-disconnect:dialer-open-reset": [("reset", {"i": 0})],
    "drop-send-terminated:acceptor-open-teardown": [("delete", {"c": 0})],
    "drop-send-terminated:dialer-open-teardown": [("delete", {"c": 1})],
    "dialer-no-drain": [("hold", {"i": 0, "up": True}), ("delete", {"c": 1}),
                        ("advance", {"seconds": 5.0})],
    "acceptor-teardown-keeps-tracker": [("delete", {"c": 0})],
    # both ends then drain for ever: caught by the settle's stuck-stream check
    "drop-close-send:dialer-open-teardown": [("delete", {"c": 1})],
    "drop-close-send:dialer-open-terminated": [("delete", {"c": 0})],
    "dialer-gives-up-on-reset": [("reset", {"i": 0})],
    "refuse:acceptor-none-generatetoken": [],
    "refuse:dialer-none-establish": [],
    "refuse:acceptor-pending-user-delete": [("delete", {"c": 0})],
    "refuse:dialer-establishing-user-delete": [("delete", {"c": 1})],
    "refuse:acceptor-terminated-user-delete": [("delete", {"c": 1}),
                                               ("advance", {"seconds": 300.0}),
                                               ("delete", {"c": 0})],
    "refuse:dialer-terminated-user-delete": [("delete", {"c": 0}),
                                             ("advance", {"seconds": 300.0}),
                                             ("delete", {"c": 1})],
    "refuse:acceptor-pending-terminated-received": [("delete", {"c": 1})],
    "refuse:dialer-establishing-terminated-received": [("delete", {"c": 0})],
    "refuse:acceptor-deleting-deletion-routine-finished": [("delete", {"c": 0})],
    "refuse:dialer-deleting-deletion-routine-finished": [("delete", {"c": 1})],
    "deletion-removes-terminated": [("delete", {"c": 0})],
    # the failover spends the new term's sync token (its redial follows 2 s later): the pass
    # after the delete waits until 5 s after the failover, so dc2's stream is still serving
    # when dc1's Terminated reaches its marked row
    "terminate-marked-row": [("failover", {"c": 1}), ("advance", {"seconds": 2.0}),
                             ("delete", {"c": 1}), ("delete", {"c": 0})],
    "sync-teardown-stored": [],
    "sync-no-redial": [],
    # as above: dc2's stream serves on after its row is marked, and dc1 re-registers api
    "import-when-inactive": [("failover", {"c": 1}), ("advance", {"seconds": 2.0}),
                             ("delete", {"c": 1}), ("register", {"c": 0, "i": 0}),
                             ("register", {"c": 0, "i": 0})],
    "import-guard-inverted": [],
    "export-when-inactive": [("failover", {"c": 0}), ("advance", {"seconds": 2.0}),
                             ("delete", {"c": 0}), ("register", {"c": 0, "i": 0})],
    # api is unexported while the stream is down: only the reconnect's list can say so
    "no-service-list": [("reset", {"i": 0}), ("export", {"c": 0, "i": 0}),
                        ("advance", {"seconds": 5.0})],
    "service-list-ignored": [("reset", {"i": 0}), ("export", {"c": 0, "i": 0}),
                             ("advance", {"seconds": 5.0})],
    "no-trust-bundle": [],
    "failover-keeps-tracker": [("failover", {"c": 0})],
    "deletion-row-first": [("delete", {"c": 1})],
    # slow pacing, one deletion token every 20 s: nodes at once, the row at 20 s, the bundle
    # at 40 s; the observation at 32 s sees the bundle without its row
    "deletion-row-before-bundle": [("delete", {"c": 1}), ("advance", {"seconds": 16.0}),
                                   ("advance", {"seconds": 16.0})],
    "deletion-guard-inverted": [],
    "no-deletion-on-new-leader": [("failover", {"c": 1}), ("delete", {"c": 1})],
    # with the EOF-first view of a cancel (``EOF_FIRST``): the failover cancels dc2's call, and
    # dc1's handler, still OPEN, reads end-of-stream before the cancel
    "drop-disconnect:acceptor-open-eof": [("failover", {"c": 1})],
}


#: mutant -> setup's gap between token and establishment, where not 0: with 6 s the acceptor's
#: sync pass for the establishment waits for its limiter and runs after the stream connected
GAP: dict[str, float] = {"sync-teardown-stored": 6.0}

#: mutants whose scenario runs with the EOF-first view of a cancel (setup's ``eof_first``: a
#: Python gRPC server's handler reads end-of-stream before it learns of a client's cancel), the
#: only way an acceptor's handler meets an EOF while OPEN (a fixed dialer half-closes only
#: after Terminated)
EOF_FIRST: frozenset[str] = frozenset({"drop-disconnect:acceptor-open-eof"})


def setup_of(name: str) -> dict[str, float | bool]:
    """The keyword arguments of ``scenario_diverges`` for ``name``'s scenario, beyond the steps."""
    return {"gap": GAP.get(name, 0.0), "eof_first": name in EOF_FIRST}


def scenario_diverges(mutants: list[str], steps: list[Step], gap: float = 0.0,
                      eof_first: bool = False) -> bool:
    """Replay ``steps`` after setup (seed 0, slow pacing, ``gap``, ``eof_first``) with
    ``mutants`` on in the implementation, then settle; True when the driver reports a
    divergence (or a failed settle requirement: the ``Divergence`` of
    ``Candidates.require_settled``)."""
    machine = machine_for(impl_mutants=mutants)()
    try:
        machine.setup(seed=0, upstream_pacing=False, establish_after=gap, eof_first=eof_first)
        for name, kwargs in steps:
            getattr(machine, name)(**kwargs)
        machine._settle()
    except Divergence:
        machine.diverged = True
        return True
    finally:
        machine.teardown()
    return False


#: ported mutants no rule sequence of the driver can expose, and why
NOT_CAUGHT: dict[str, str] = {
    "accept-terminated-row":
        "not reachable by the driver: a dial reaches a TERMINATED acceptor row only from a "
        "dialer that re-established with a token of that row after deleting its own (the "
        "checker's counterexample, in `repeer`, reuses a used token); the driver establishes "
        "only with fresh tokens, since the model does not model ExchangeSecret",
    "terminated-row-answers-terminated":
        "not reachable by the driver, for the same reason as accept-terminated-row",
    "drop-send-terminated-only:acceptor-new-open-peering-marked-for-deletion":
        "what it changes is allowed by the model under another schedule: the dialer, never told, "
        "keeps retrying, and once the marked row is gone the model excuses a peer that no dial "
        "reached in time (finding F2); the model has no time, so 'the dial came before the row "
        "went' cannot be observed, and the view shows nothing of a refused dial",
    "sync-keeps-inactive":
        "what it changes is allowed by the model under another schedule: the stream of the "
        "marked row is torn down by the sync pass after the deletion routine removes the row "
        "(a missing row is not stored), so the peer is told late, not never; the checker "
        "kills it by the transition invariant teardown-of-inactive, which no observation of "
        "states can check",
}
