"""The shared vocabulary: names that the model, the specs and the implementation agree on.

Everything here is plain data: the peering state enum in its released numbering, the bug
switches, the property identifiers, and the exact error strings of the store and the stream.
The implementation (``peerkit.impl``) imports this module so that a bug switched on by name, a
property reported by ID or an error compared by string means the same thing on both sides.

Import rules: this module imports only the standard library. It must never import trio, grpc or
anything from ``peerkit.impl``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class PeeringState(enum.IntEnum):
    """PeeringState, released numbering (peering-protocol.md decision (a)).

    ACTIVE and FAILING are never stored: they are computed on read from the stream tracker.
    DELETING always goes together with a set DeletedAt.
    """

    UNDEFINED = 0
    PENDING = 1  # the acceptor's new row, created by GenerateToken
    ESTABLISHING = 2  # the dialer's new row, created by Establish
    ACTIVE = 3  # read view: a stream is connected
    FAILING = 4  # read view: the last stream ended with an error
    DELETING = 5  # marked for deletion (DeletedAt set); the deletion routine removes it
    TERMINATED = 6  # the peer deleted the peering; the row is kept as a signal


#: States a row can hold in the store. ACTIVE and FAILING are views, never written.
STORED_STATES = frozenset(
    {
        PeeringState.PENDING,
        PeeringState.ESTABLISHING,
        PeeringState.DELETING,
        PeeringState.TERMINATED,
    }
)


def is_active_state(state: PeeringState, deleted: bool) -> bool:
    """Upstream's ``IsActive()``: not TERMINATED and not marked for deletion."""
    return state is not PeeringState.TERMINATED and not deleted


# --------------------------------------------------------------------------------------------
# Bug switches (decision (d)). The key is the word `peerkit check --bug` takes.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bug:
    name: str
    summary: str
    fixed_by: str
    details: str


BUGS: dict[str, Bug] = {
    bug.name: bug
    for bug in (
        Bug(
            "stored-map",
            "the sync pass stores only dialed peerings, so the acceptor tears down healthy "
            "inbound streams and sends Terminated to a healthy dialer",
            "the seed",
            "peering-protocol.md §4.4",
        ),
        Bug(
            "termination-race",
            "the dialer cancels the stream right after sending Terminated and the acceptor "
            "ignores the cancellation, so it may never learn of the termination",
            "the seed",
            "peering-protocol.md §5.7",
        ),
        Bug(
            "terminated-undeletable",
            "the delete RPC returns early for a TERMINATED peering, so the row stays for good "
            "and blocks its name",
            "#14364",
            "peering-protocol.md T10, §1.7",
        ),
        Bug(
            "no-reconnect",
            "a stream that ends without Terminated stops the dialer's retries, so it never "
            "reconnects",
            "#13745",
            "peering-protocol.md §4.5",
        ),
        Bug(
            "deletion-no-stop",
            "the deletion loop ignores cancellation and is not stopped on leadership loss, so "
            "it keeps spinning on a server that is no longer the leader",
            "#14344, #17483",
            "peering-protocol.md §3.1, §3.5",
        ),
        Bug(
            "dial-deleted",
            "the acceptor accepts a dial for a peering marked for deletion instead of "
            "answering Terminated and Aborted",
            "#14285",
            "peering-protocol.md §5.8",
        ),
    )
}


def validate_bugs(names: object) -> frozenset[str]:
    """Check a collection of bug names; raise ValueError naming the unknown ones."""
    if isinstance(names, str) or not hasattr(names, "__iter__"):
        raise TypeError(f"bugs must be a collection of bug names, not {type(names).__name__}")
    chosen = frozenset(names)
    for name in chosen:
        if not isinstance(name, str):
            raise TypeError(f"bug names are strings, got {name!r}")
    unknown = sorted(chosen - BUGS.keys())
    if unknown:
        raise ValueError(
            f"unknown bug(s): {', '.join(unknown)}; known bugs: {', '.join(sorted(BUGS))}"
        )
    return chosen


# --------------------------------------------------------------------------------------------
# Property identifiers. The model defines how each is checked (model/properties.py); the specs
# and the implementation's tests refer to them by these IDs.
# --------------------------------------------------------------------------------------------

NO_ORPHANS = "no-orphans"
NO_IMPORT_WHEN_INACTIVE = "no-import-when-inactive"
NO_EXPORT_WHEN_INACTIVE = "no-export-when-inactive"
TERMINATED_ROW_KEPT = "terminated-row-kept"
TERMINATED_ONLY_WHEN_INACTIVE = "terminated-only-when-inactive"
NO_TEARDOWN_OF_ACTIVE = "no-teardown-of-active"
STORE_RULES = "store-rules"
ROUTINES_ONLY_ON_LEADER = "routines-only-on-leader"
TEARDOWN_OF_INACTIVE = "teardown-of-inactive"
ACCEPT_ONLY_WHEN_ACTIVE = "accept-only-when-active"
TRACKER_CONSISTENT = "tracker-consistent"
TERMINATED_ONLY_IF_PEER_DELETED = "terminated-only-if-peer-deleted"
DELETION_BY_CURRENT_LEADER = "deletion-by-current-leader"
SETTLES = "settles"
SETTLED_IS_CLEAN = "settled-is-clean"

PROPERTY_IDS = (
    NO_ORPHANS,
    NO_IMPORT_WHEN_INACTIVE,
    NO_EXPORT_WHEN_INACTIVE,
    TERMINATED_ROW_KEPT,
    TERMINATED_ONLY_WHEN_INACTIVE,
    NO_TEARDOWN_OF_ACTIVE,
    TEARDOWN_OF_INACTIVE,
    ACCEPT_ONLY_WHEN_ACTIVE,
    STORE_RULES,
    ROUTINES_ONLY_ON_LEADER,
    DELETION_BY_CURRENT_LEADER,
    TRACKER_CONSISTENT,
    TERMINATED_ONLY_IF_PEER_DELETED,
    SETTLES,
    SETTLED_IS_CLEAN,
)

# --------------------------------------------------------------------------------------------
# Error strings. Quoted exactly from upstream where peering-protocol.md records them; the ones
# marked "peerkit" are ours, for cases the reference leaves open.
# --------------------------------------------------------------------------------------------

# State store (peering-protocol.md §2.3)
ERR_WRITE_MARKED = "cannot write to peering that is marked for deletion"
ERR_CREATE_MARKED = "cannot create a new peering marked for deletion"
ERR_DELETE_UNMARKED = "cannot delete a peering without first marking for deletion"
# peerkit: imported catalog data and trust bundles may only be written for an active peering
ERR_IMPORT_INACTIVE = "cannot write imported data for a peering that is not active"

# Stream tracker (§4.5)
ERR_ACTIVE_STREAM = 'there is an active stream for the given PeerID "{id}"'

# Stream handshake (§5.3, §5.8, §7.3); the released first message is Open (§6.4)
ERR_FOLLOWER = "cannot establish a peering stream on a follower node"
ERR_NOT_LEADER_ANYMORE = "node is not a leader anymore; cannot continue streaming"
# Upstream's texts, verbatim (agent/grpc-external/services/peerstream/stream_resources.go,
# StreamResources and realHandleStream; replication.go, processResponse and handleUpsert).
ERR_FIRST_NOT_OPEN = "first message when initiating a peering must be: Open"
ERR_OPEN_NO_PEER_ID = "initial subscription request must specify a PeerID"
ERR_OPEN_BAD_SECRET = "invalid peering stream secret"
ERR_UNKNOWN_PEER = "initial subscription for unknown PeerID: {id}"
# upstream answers a dial for a TERMINATED row with this text too (it only skips Terminated)
ERR_MARKED_DELETED = "peering is marked as deleted: {id}"
ERR_WRONG_END = "expected PeerID to be empty; the wrong end of peering is being dialed"
ERR_REGISTER_STREAM = "failed to register stream: {error}"
ERR_STREAM_ENDED = "stream ended unexpectedly"
ERR_RECEIVE_FAILED = "unexpected error receiving from the stream: {error}"
ERR_NO_NONCE = "received response without a nonce for: {url}:{id}"
ERR_MISMATCHED_URL = "mismatched resourceURL {url} and Any typeUrl {type_url}"
# A received Request (realHandleStream's request branch), each InvalidArgument, ending the
# stream: an unknown ResourceURL; then, for a type not yet subscribed to, a PeerID other than
# the remote's (on the dialing side; Go's %q quoting), a nonce, an error; and an Error without
# a nonce on a subscribed type
ERR_SUBSCRIPTION_UNKNOWN_URL = "subscription request to unknown resource URL: {url}"
ERR_SUBSCRIPTION_PEER_ID = ("initial subscription requests for a resource type must have "
                            "consistent PeerID values: got={got} expected={expected}")
ERR_SUBSCRIPTION_NONCE = (
    "initial subscription requests for a resource type must not contain a nonce")
ERR_SUBSCRIPTION_ERROR = (
    "initial subscription request for a resource type must not contain an error")
# ExchangeSecret (stream_resources.go, ExchangeSecret): an unknown PeerID, a row whose secrets
# are gone (marked for deletion, TERMINATED) and a wrong secret all get this, PermissionDenied
ERR_BAD_ESTABLISHMENT_SECRET = "invalid peering establishment secret"
ERR_HEARTBEAT_TIMEOUT = "heartbeat timeout"
WARN_DRAIN_FAILED = (
    "failed to tear down stream gracefully: peer may not have received termination message"
)
