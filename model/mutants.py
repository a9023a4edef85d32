"""The mutation catalog: plausible mistakes in the *fixed* protocol, each a small overlay.

The six historical bugs (vocabulary.BUGS) show that peerkit catches the mistakes upstream made.
This catalog asks the harder question: would it catch the mistakes nobody has made yet? Each
mutant is one plausible slip in a rule of the fixed protocol, made the same way the bug switches
are: an overlay on an entry of a transition table (tables.py), or a named switch that a routine in
machine.py checks. `peerkit mutants` lists them; `peerkit check --mutant NAME` checks one; a test
asserts that the CI configurations kill every one of them that is not shown equivalent
(specs/mutants.md gives the argument for each equivalent one).

Part of the catalog is systematic (generated from the tables): every effect of every handler-table
entry dropped in turn, and every lifecycle transition replaced by its refusal. The rest is written
by hand: guards of the sync pass, the import guard and the deletion routine inverted, the order of
the deletion routine's steps swapped, and other slips a porter could make.

Import rules: standard library and ``peerkit.model`` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from .state import DELETING, DONE, DRAINING, NEW, OPEN, TERMINATED
from .tables import (
    ACCEPTOR,
    DELETION_FINISHED,
    DIALER,
    ENDPOINT,
    IN_EOF,
    IN_RESET,
    LIFECYCLE,
    OPEN_DUPLICATE,
    OPEN_TERMINATED,
    REMOVED,
    TEARDOWN,
    TERMINATED_MSG,
    TERMINATED_RECEIVED,
    LifecycleNext,
    Outcome,
    Refused,
)


class Mutant(NamedTuple):
    name: str
    #: the mistake it stands for, in one line
    summary: str
    #: "table" (generated from a table entry) or "routine" (a hand-written switch)
    family: str
    lifecycle: Mapping[tuple[str, int | None, str], LifecycleNext] = {}
    endpoint: Mapping[tuple[str, int, str], Outcome] = {}
    #: a routine switch that machine.py checks by name
    switch: str = ""


#: Effects that change nothing in the model (they stand for a log line, or for *not* doing
#: something), so dropping one cannot change behaviour; the systematic family skips them.
NO_OP_EFFECTS = frozenset({"discard", "retry", "warn"})

_PHASE = {NEW: "new", OPEN: "open", DRAINING: "draining", DONE: "done"}


def _slug(text: str) -> str:
    out = "".join(ch if ch.isalnum() else "-" for ch in text.lower())
    while "--" in out:
        out = out.replace("--", "-")
    return out.strip("-")


def _dropped_effects() -> list[Mutant]:
    """Every effect of every stream-handler entry dropped in turn."""
    out = []
    for (role, phase, inp), outcome in ENDPOINT.items():
        for effect in outcome.effects:
            if effect in NO_OP_EFFECTS:
                continue
            kept = tuple(e for e in outcome.effects if e != effect)
            out.append(Mutant(
                f"drop-{effect}:{role}-{_PHASE[phase]}-{_slug(inp)}",
                f"the {role} handler, {_PHASE[phase].upper()}, on {inp!r} forgets to "
                f"{effect!r}",
                "table",
                endpoint={(role, phase, inp): Outcome(kept, outcome.next)},
            ))
    return out


def _state_word(state: int | None) -> str:
    names = {None: "none", 1: "pending", 2: "establishing", 5: "deleting", 6: "terminated"}
    return names[state]


def _refused_transitions() -> list[Mutant]:
    """Every lifecycle transition replaced by its refusal."""
    out = []
    for (role, state, event), nxt in LIFECYCLE.items():
        if isinstance(nxt, Refused):
            continue
        out.append(Mutant(
            f"refuse:{role}-{_state_word(state)}-{_slug(event)}",
            f"a {role} row in state {_state_word(state).upper()} refuses {event!r} (it should "
            f"go to {'REMOVED' if nxt == REMOVED else _state_word(nxt).upper()})",
            "table",
            lifecycle={(role, state, event): Refused("mutant: refused")},
        ))
    return out


def _by_hand() -> list[Mutant]:
    t = ENDPOINT
    m = [
        # -- stream shutdown --------------------------------------------------------------------
        Mutant("dialer-no-drain",
               "the dialer sends Terminated and CloseSend, then returns without draining",
               "handler", endpoint={(DIALER, OPEN, TEARDOWN): Outcome(
                   t[DIALER, OPEN, TEARDOWN].effects, DONE)}),
        Mutant("dialer-no-drain-after-terminated",
               "the dialer, told Terminated, half-closes and returns without draining",
               "handler", endpoint={(DIALER, OPEN, TERMINATED_MSG): Outcome(
                   t[DIALER, OPEN, TERMINATED_MSG].effects, DONE)}),
        Mutant("acceptor-no-drain",
               "the acceptor sends Terminated and returns at once instead of draining",
               "handler", endpoint={(ACCEPTOR, OPEN, TEARDOWN): Outcome(
                   t[ACCEPTOR, OPEN, TEARDOWN].effects, DONE)}),
        Mutant("acceptor-no-drain-after-terminated",
               "the acceptor, told Terminated, returns at once instead of draining",
               "handler", endpoint={(ACCEPTOR, OPEN, TERMINATED_MSG): Outcome(
                   t[ACCEPTOR, OPEN, TERMINATED_MSG].effects, DONE)}),
        Mutant("acceptor-teardown-keeps-tracker",
               "the acceptor's teardown sends Terminated but leaves the tracker entry connected",
               "handler", endpoint={(ACCEPTOR, OPEN, TEARDOWN): Outcome(
                   ("send-terminated-only",), DRAINING)}),
        Mutant("dialer-terminates-on-eof",
               "the dialer takes a stream that ends cleanly for a termination",
               "handler", endpoint={(DIALER, OPEN, IN_EOF): Outcome(
                   ("terminate", "stop-retrying"), DONE)}),
        Mutant("dialer-gives-up-on-reset",
               "the dialer stops retrying after a reset (no-reconnect for resets only)",
               "handler", endpoint={(DIALER, OPEN, IN_RESET): Outcome(
                   ("disconnect", "stop-retrying"), DONE)}),
        # -- the acceptor's first-message checks --------------------------------------------------
        Mutant("accept-terminated-row",
               "the acceptor accepts a dial for a peering it holds as TERMINATED",
               "handler", endpoint={(ACCEPTOR, NEW, OPEN_TERMINATED): Outcome(("accept",), OPEN)}),
        Mutant("accept-duplicate",
               "the acceptor accepts a second stream for a peering that has one connected",
               "handler", endpoint={(ACCEPTOR, NEW, OPEN_DUPLICATE): Outcome(("accept",), OPEN)}),
        Mutant("terminated-row-answers-terminated",
               "an acceptor whose row is TERMINATED answers a dial with Terminated",
               "handler", endpoint={(ACCEPTOR, NEW, OPEN_TERMINATED): Outcome(
                   ("send-terminated-only", "end-error"), DONE)}),
        # -- lifecycle ---------------------------------------------------------------------------
        Mutant("deletion-removes-terminated",
               "the deletion routine removes a TERMINATED row too (upstream's intermediate "
               "version)",
               "lifecycle", lifecycle={(role, TERMINATED, DELETION_FINISHED): REMOVED
                                       for role in (ACCEPTOR, DIALER)}),
        Mutant("terminate-marked-row",
               "TerminateByID without a state check turns a row being deleted TERMINATED "
               "(upstream, finding F3)",
               "lifecycle", lifecycle={(role, DELETING, TERMINATED_RECEIVED): TERMINATED
                                       for role in (ACCEPTOR, DIALER)}),
    ]
    switches = [
        ("sync-keeps-inactive", "the sync pass puts inactive peerings in its stored map too"),
        ("sync-list-before-snapshot",
         "the sync pass lists peerings before copying the connected streams"),
        ("sync-teardown-stored",
         "the sync pass tears down the streams it stored instead of those it did not"),
        ("sync-no-redial", "the sync pass never starts a dialer retry loop"),
        ("dial-inactive", "a dialer's retry loop keeps dialing after its row became inactive"),
        ("import-when-inactive", "the store accepts imported data for an inactive peering"),
        ("import-guard-inverted",
         "the import guard is inverted: imports only for inactive peerings"),
        ("export-when-inactive", "a side whose peering is inactive keeps publishing updates"),
        ("no-service-list", "a new stream does not send the exported-service list (F4)"),
        ("service-list-ignored", "the importer ignores the exported-service list"),
        ("no-trust-bundle", "a new stream does not send the trust bundle"),
        ("failover-keeps-tracker", "a new leader starts with the old leader's stream tracker"),
        ("deletion-row-first",
         "the deletion routine removes the row before the imported nodes and bundle"),
        ("deletion-row-before-bundle",
         "the deletion routine removes the row after the nodes but before the trust bundle"),
        ("deletion-bundle-first",
         "the deletion routine deletes the trust bundle before the nodes"),
        ("deletion-guard-inverted",
         "the deletion routine works on active peerings instead of inactive ones"),
        ("no-deletion-on-new-leader", "a new leader does not start the deletion routine"),
        ("deletion-without-routine",
         "deletion writes happen with no deletion routine of the current leader running"),
    ]
    m += [Mutant(name, summary, "routine", switch=name) for name, summary in switches]
    return m


MUTANTS: dict[str, Mutant] = {
    mutant.name: mutant
    for mutant in (*_dropped_effects(), *_refused_transitions(), *_by_hand())
}
#: the switches a mutant may set; machine.py checks each by name
SWITCHES = frozenset(m.switch for m in MUTANTS.values() if m.switch)

#: Mutants shown equivalent: no behaviour the properties can observe changes. Each value names
#: the section of specs/mutants.md that gives the argument; the CI configurations are explored
#: completely for each of them by `benchmarks/mutants.py`, which confirms that none is killed.
EQUIVALENT: dict[str, str] = {
    **{name: "E1: an acceptor's error status and its clean end look alike to the dialer"
       for name in MUTANTS if name.startswith("drop-end-error:")},
    "drop-stop-retrying:dialer-open-terminated":
        "E2: a row that becomes inactive stops its retry loop anyway",
    "drop-stop-retrying:dialer-open-teardown":
        "E2: a row that becomes inactive stops its retry loop anyway",
    "drop-disconnect:dialer-open-eof":
        "E3: a serving dialer never meets a clean end of stream",
    "dialer-terminates-on-eof": "E3: a serving dialer never meets a clean end of stream",
    "dialer-no-drain-after-terminated":
        "E4: the side that was told has nothing left to lose by not draining",
    "acceptor-no-drain-after-terminated":
        "E4: the side that was told has nothing left to lose by not draining",
    "acceptor-no-drain": "E5: an acceptor's messages reach the dialer before its end",
    "deletion-bundle-first": "E6: nodes and bundle of an inactive peering are never read",
    "accept-duplicate": "E7: registering with the tracker refuses a second stream anyway",
    "refuse:acceptor-pending-generatetoken":
        "E8: writing an active row again is an operator's convenience no property asks for",
    "refuse:dialer-establishing-establish":
        "E8: writing an active row again is an operator's convenience no property asks for",
}


def get_mutant(name: str) -> Mutant:
    if not isinstance(name, str):
        raise TypeError(f"a mutant name is a string, not {type(name).__name__}")
    try:
        return MUTANTS[name]
    except KeyError:
        raise ValueError(f"unknown mutant {name!r}; `peerkit mutants` lists them") from None
