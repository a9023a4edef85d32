"""The protocol's transition tables, as data.

Two tables carry the protocol; the rest of the model is bookkeeping around them.

`LIFECYCLE` is the peering row's life on one side: ``(role, stored state, event) -> next``, where
the stored state is what the state store holds (PENDING, ESTABLISHING, DELETING, TERMINATED; ACTIVE
and FAILING are computed on read, see `VIEW_RULES`) and ``next`` is a stored state, `REMOVED`, or
`Refused` (the event changes nothing; the reason says why).

`ENDPOINT` is one stream handler's life: ``(role, phase, input) -> Outcome(effects, next phase)``.
Inputs are what a handler can meet: a message kind read from its inbound channel (the acceptor's
first message is classified further, e.g. "Open(unknown peer)"), the end of that channel ("EOF",
"error status", "reset"), or "teardown" (its doneCh was closed by the sync pass). Effects are names
of small pure functions in `machine.py`; `EFFECTS` documents each. A pair missing from the table is
listed in `IMPOSSIBLE` with the reason it cannot occur, and tests prove the two together are total
over roles × phases × inputs (as h2 does for its stream table).

Each bug switch is an overlay of table entries (`LIFECYCLE_BUGS`, `ENDPOINT_BUGS`), so that the
buggy protocol is visibly the fixed one with a few rows changed. Bugs that live in a leader
routine rather than in a table (stored-map, deletion-no-stop) are described in `ROUTINE_BUGS` and
implemented in machine.py.

The tables and diagrams in specs/generated/ are built from these tables (model/diagrams.py) by
``peerkit specs``; a test fails when the committed ones are stale.

Import rules: standard library and ``peerkit.model`` only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from .state import DELETING, DRAINING, ESTABLISHING, NEW, OPEN, PENDING, TERMINATED
from .state import DONE as DONE_PHASE

ACCEPTOR = "acceptor"
DIALER = "dialer"
ROLES = (ACCEPTOR, DIALER)

# ---------------------------------------------------------------------------------------------
# Lifecycle of a peering row
# ---------------------------------------------------------------------------------------------

REMOVED = -1  # the row is gone from the store


class Refused(NamedTuple):
    reason: str


GENERATE_TOKEN = "GenerateToken"
ESTABLISH = "Establish"
USER_DELETE = "user delete"
TERMINATED_RECEIVED = "Terminated received"
DELETION_FINISHED = "deletion routine finished"

LIFECYCLE_EVENTS = (GENERATE_TOKEN, ESTABLISH, USER_DELETE, TERMINATED_RECEIVED, DELETION_FINISHED)
#: The stored states of an existing row; None stands for "no row".
LIFECYCLE_STATES: tuple[int | None, ...] = (None, PENDING, ESTABLISHING, DELETING, TERMINATED)

_INITIAL = {ACCEPTOR: PENDING, DIALER: ESTABLISHING}
_CREATE = {ACCEPTOR: GENERATE_TOKEN, DIALER: ESTABLISH}

LifecycleNext = int | Refused


def _lifecycle() -> dict[tuple[str, int | None, str], LifecycleNext]:
    table: dict[tuple[str, int | None, str], LifecycleNext] = {}
    for role in ROLES:
        initial = _INITIAL[role]
        other_initial = _INITIAL[DIALER if role == ACCEPTOR else ACCEPTOR]
        # creating the row
        table[role, None, _CREATE[role]] = initial
        # again on an active row: upstream rewrites it under the same ID. GenerateToken
        # regenerates the establishment secret; Establish exchanges the new token's secret and
        # replaces PeerID, the server addresses and the stream secret (agent/rpc/peering/
        # service.go GenerateToken, Establish; this is how operators rotate secrets and move
        # servers). Secrets are not modelled, so only a changed PeerID shows (specs/lifecycle.md).
        table[role, initial, _CREATE[role]] = initial
        # peerkit: refused on an inactive row. Upstream's PeeringWrite refuses only DELETING;
        # over a TERMINATED row it lets a dialer re-establish (#16776) and an acceptor generate a
        # token whose dials it then refuses (specs/lifecycle.md, "Where peerkit differs").
        for state in (DELETING, TERMINATED):
            table[role, state, _CREATE[role]] = Refused(
                "cannot write to peering that is marked for deletion")
        for event in (USER_DELETE, TERMINATED_RECEIVED, DELETION_FINISHED):
            table[role, None, event] = Refused("there is no such peering (a no-op)")
        # the other role's creation event never applies to this role's rows
        table[role, None, _CREATE[DIALER if role == ACCEPTOR else ACCEPTOR]] = Refused(
            "not this role's way of creating a peering"
        )
        for state in (initial, DELETING, TERMINATED):
            table[role, state, _CREATE[DIALER if role == ACCEPTOR else ACCEPTOR]] = Refused(
                "not this role's way of creating a peering"
            )
        table[role, other_initial, USER_DELETE] = Refused("not a state of this role")
        table[role, other_initial, TERMINATED_RECEIVED] = Refused("not a state of this role")
        table[role, other_initial, DELETION_FINISHED] = Refused("not a state of this role")
        for event in (_CREATE[role], _CREATE[DIALER if role == ACCEPTOR else ACCEPTOR]):
            table[role, other_initial, event] = Refused("not a state of this role")
        # an active row
        table[role, initial, USER_DELETE] = DELETING
        table[role, initial, TERMINATED_RECEIVED] = TERMINATED
        table[role, initial, DELETION_FINISHED] = Refused("the row is active")
        # marked for deletion
        table[role, DELETING, USER_DELETE] = Refused("already marked for deletion (a no-op)")
        # peerkit: a row the operator marked stays marked. Upstream's TerminateByID has no state
        # check and would turn it TERMINATED, which the deletion routine then keeps for good
        # (specs/findings.md, F3).
        table[role, DELETING, TERMINATED_RECEIVED] = Refused(
            "the row is already marked for deletion; it stays marked"
        )
        table[role, DELETING, DELETION_FINISHED] = REMOVED
        # terminated by the peer
        table[role, TERMINATED, USER_DELETE] = DELETING  # the fix of #14364
        table[role, TERMINATED, TERMINATED_RECEIVED] = Refused("already terminated")
        table[role, TERMINATED, DELETION_FINISHED] = Refused(
            "a TERMINATED row is kept as a signal to the operator"
        )
    return table


LIFECYCLE: Mapping[tuple[str, int | None, str], LifecycleNext] = _lifecycle()

LIFECYCLE_BUGS: Mapping[str, Mapping[tuple[str, int | None, str], LifecycleNext]] = {
    "terminated-undeletable": {
        (role, TERMINATED, USER_DELETE): Refused(
            "bug: the delete RPC returns early for an inactive peering"
        )
        for role in ROLES
    },
}

#: How ACTIVE and FAILING are computed on read (they are never stored).
VIEW_RULES = (
    ("the row is DELETING or TERMINATED", "that stored state"),
    ("the tracker has a connected entry for the row", "ACTIVE"),
    ("the tracker has a disconnected entry for the row", "FAILING"),
    ("the tracker has no entry for the row", "the stored state (PENDING or ESTABLISHING)"),
)

# ---------------------------------------------------------------------------------------------
# One stream handler
# ---------------------------------------------------------------------------------------------

# Inputs
OPEN_VALID = "Open(valid)"
OPEN_UNKNOWN = "Open(unknown peer)"
OPEN_DELETED = "Open(peering marked for deletion)"
OPEN_TERMINATED = "Open(peering terminated)"
OPEN_DUPLICATE = "Open(stream already connected)"
RESPONSE = "Response"
ACK = "Ack"
NACK = "Nack"
TERMINATED_MSG = "Terminated"
IN_EOF = "EOF"
IN_ERROR = "error status"
IN_RESET = "reset"
TEARDOWN = "teardown"

OPEN_INPUTS = (OPEN_VALID, OPEN_UNKNOWN, OPEN_DELETED, OPEN_TERMINATED, OPEN_DUPLICATE)
INPUTS = (*OPEN_INPUTS, RESPONSE, ACK, NACK, TERMINATED_MSG, IN_EOF, IN_ERROR, IN_RESET, TEARDOWN)
PHASES = (NEW, OPEN, DRAINING, DONE_PHASE)

#: What each effect does. machine.py implements exactly these.
EFFECTS: Mapping[str, str] = {
    "accept": "register the stream in the tracker as connected; the subscription manager "
    "sends the trust bundle, the exported-service list and every exported service. If another "
    "stream is connected for the peering, registering fails (upstream's tracker.Connected "
    "error): the RPC ends with an error status instead, whatever the table says next",
    "import": "apply the Response to the local catalog (refused for an inactive peering) and "
    "reply with an Ack, or a Nack if it was refused",
    "terminate": "TerminateByID on the local peering (ignored if it is already inactive), and "
    "the tracker marks the stream disconnected",
    "disconnect": "the tracker marks the stream disconnected",
    "send-terminated": "send Terminated and delete the tracker entry",
    "send-terminated-only": "send Terminated (the peering is not tracked)",
    "close-send": "half-close the outbound direction (CloseSend)",
    "cancel": "cancel the RPC: the outbound direction is reset, possibly overtaking messages",
    "end-error": "end the RPC with an error status",
    "stop-retrying": "cancel the dialer's retry loop for this peering",
    "retry": "leave the retry loop running: it will dial again",
    "discard": "drop what was received",
    "warn": "log 'failed to tear down stream gracefully: peer may not have received "
    "termination message'",
}


class Outcome(NamedTuple):
    effects: tuple[str, ...]
    next: int  # a phase


_MESSAGES = (RESPONSE, ACK, NACK, TERMINATED_MSG)


def _endpoint() -> dict[tuple[str, int, str], Outcome]:
    t: dict[tuple[str, int, str], Outcome] = {}
    # -- acceptor: a new RPC; its first message decides ----------------------------------------
    t[ACCEPTOR, NEW, OPEN_VALID] = Outcome(("accept",), OPEN)
    t[ACCEPTOR, NEW, OPEN_UNKNOWN] = Outcome(("end-error",), DONE_PHASE)
    # the fix of #14285: answer a dial for a deleted peering with Terminated, then Aborted
    t[ACCEPTOR, NEW, OPEN_DELETED] = Outcome(("send-terminated-only", "end-error"), DONE_PHASE)
    t[ACCEPTOR, NEW, OPEN_TERMINATED] = Outcome(("end-error",), DONE_PHASE)
    t[ACCEPTOR, NEW, OPEN_DUPLICATE] = Outcome(("end-error",), DONE_PHASE)
    for first in (*_MESSAGES,):
        t[ACCEPTOR, NEW, first] = Outcome(("end-error",), DONE_PHASE)  # not an Open first
    for end in (IN_EOF, IN_RESET):
        t[ACCEPTOR, NEW, end] = Outcome(("end-error",), DONE_PHASE)  # the first Recv failed
    # -- acceptor: serving --------------------------------------------------------------------
    t[ACCEPTOR, OPEN, RESPONSE] = Outcome(("import",), OPEN)
    t[ACCEPTOR, OPEN, ACK] = Outcome(("discard",), OPEN)
    t[ACCEPTOR, OPEN, NACK] = Outcome(("discard",), OPEN)
    t[ACCEPTOR, OPEN, TERMINATED_MSG] = Outcome(("terminate",), DRAINING)
    t[ACCEPTOR, OPEN, IN_EOF] = Outcome(("disconnect",), DONE_PHASE)
    t[ACCEPTOR, OPEN, IN_RESET] = Outcome(("disconnect",), DONE_PHASE)
    t[ACCEPTOR, OPEN, TEARDOWN] = Outcome(("send-terminated",), DRAINING)
    # -- acceptor: draining until the dialer half-closes ---------------------------------------
    for msg in _MESSAGES:
        t[ACCEPTOR, DRAINING, msg] = Outcome(("discard",), DRAINING)
    t[ACCEPTOR, DRAINING, IN_EOF] = Outcome((), DONE_PHASE)
    t[ACCEPTOR, DRAINING, IN_RESET] = Outcome((), DONE_PHASE)
    # -- dialer: serving ----------------------------------------------------------------------
    t[DIALER, OPEN, RESPONSE] = Outcome(("import",), OPEN)
    t[DIALER, OPEN, ACK] = Outcome(("discard",), OPEN)
    t[DIALER, OPEN, NACK] = Outcome(("discard",), OPEN)
    t[DIALER, OPEN, TERMINATED_MSG] = Outcome(
        ("terminate", "close-send", "stop-retrying"), DRAINING
    )
    for end in (IN_EOF, IN_ERROR, IN_RESET):
        # the fix of #13745: a stream that ends without Terminated is retried
        t[DIALER, OPEN, end] = Outcome(("disconnect", "retry"), DONE_PHASE)
    t[DIALER, OPEN, TEARDOWN] = Outcome(
        ("send-terminated", "close-send", "stop-retrying"), DRAINING
    )
    # -- dialer: draining until the acceptor's handler returns ---------------------------------
    for msg in _MESSAGES:
        t[DIALER, DRAINING, msg] = Outcome(("discard",), DRAINING)
    t[DIALER, DRAINING, IN_EOF] = Outcome((), DONE_PHASE)
    t[DIALER, DRAINING, IN_ERROR] = Outcome(("warn",), DONE_PHASE)
    t[DIALER, DRAINING, IN_RESET] = Outcome(("warn",), DONE_PHASE)
    return t


ENDPOINT: Mapping[tuple[str, int, str], Outcome] = _endpoint()


def _impossible() -> dict[tuple[str, int, str], str]:
    out: dict[tuple[str, int, str], str] = {}
    for role in ROLES:
        for inp in INPUTS:
            out[role, DONE_PHASE, inp] = "a handler that has returned receives nothing more"
    for phase in (OPEN, DRAINING):
        for inp in OPEN_INPUTS:
            out[ACCEPTOR, phase, inp] = "the dialer sends Open once, as its first message"
        out[ACCEPTOR, phase, IN_ERROR] = "only a client receives an error status"
    out[ACCEPTOR, NEW, IN_ERROR] = "only a client receives an error status"
    out[ACCEPTOR, NEW, TEARDOWN] = "a stream is tracked, and so torn down, only once accepted"
    out[ACCEPTOR, DRAINING, TEARDOWN] = "the handler has returned; its doneCh is not watched"
    for inp in INPUTS:
        out[DIALER, NEW, inp] = "a dialer's stream starts OPEN: it sends Open itself"
    for phase in (OPEN, DRAINING):
        for inp in OPEN_INPUTS:
            out[DIALER, phase, inp] = "the acceptor never sends Open"
    out[DIALER, DRAINING, TEARDOWN] = "the handler has returned; its doneCh is not watched"
    return out


IMPOSSIBLE: Mapping[tuple[str, int, str], str] = _impossible()

ENDPOINT_BUGS: Mapping[str, Mapping[tuple[str, int, str], Outcome]] = {
    # The dialer cancels right after sending Terminated (no CloseSend, no drain); the cancel may
    # overtake the Terminated still in flight. The acceptor treats the cancel like any end.
    "termination-race": {
        (DIALER, OPEN, TEARDOWN): Outcome(
            ("send-terminated", "cancel", "stop-retrying"), DONE_PHASE
        ),
    },
    # HandleStream returns nil on any end of stream; the dialer takes that as a deletion.
    "no-reconnect": {
        (DIALER, OPEN, end): Outcome(("disconnect", "stop-retrying"), DONE_PHASE)
        for end in (IN_EOF, IN_ERROR, IN_RESET)
    },
    # The acceptor does not check whether the peering is active.
    "dial-deleted": {
        (ACCEPTOR, NEW, OPEN_DELETED): Outcome(("accept",), OPEN),
    },
}

ROUTINE_BUGS: Mapping[str, str] = {
    "stored-map": "the sync pass puts only peerings this side dials into its stored map, so it "
    "tears down the streams of every peering it accepted",
    "deletion-no-stop": "on leadership loss the deletion routine is neither stopped nor notices "
    "its cancelled context: it keeps spinning on the deposed leader",
}


def lifecycle_table(bugs: frozenset[str] = frozenset()) -> dict[tuple[str, int | None, str],
                                                                 LifecycleNext]:
    table = dict(LIFECYCLE)
    for bug in sorted(bugs):
        table.update(LIFECYCLE_BUGS.get(bug, {}))
    return table


def endpoint_table(bugs: frozenset[str] = frozenset()) -> dict[tuple[str, int, str], Outcome]:
    table = dict(ENDPOINT)
    for bug in sorted(bugs):
        table.update(ENDPOINT_BUGS.get(bug, {}))
    return table
