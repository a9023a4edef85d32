"""The model's state: immutable, hashable records of N clusters and the streams between them.

Every record is a NamedTuple of ints, strings and tuples, so states hash and compare by value, cost
little to build, and print readably. Collections inside a state are tuples kept sorted, never sets,
so that iteration order (and with it the order in which the checker meets states, and so the
counterexample it prints) does not depend on string hashing.

A world holds:

* per cluster (`Cluster`): the leader's term, the state store (peering `Row`s, imported data,
  local registrations and exports), and the leader's in-memory parts: the stream tracker, the sync
  routine's progress and the dialer retry loops. A failover keeps the store and drops the rest.
* the live `Stream`s: one gRPC bidirectional stream each, as two FIFO `Channel`s (dialer to
  acceptor "up", acceptor to dialer "down") and the phase of the handler at each end.
* the operator's issued tokens, what is left of each budget, and ghost variables that only the
  properties read (they record history the protocol itself does not keep; see `Ghost`).

Import rules: standard library and ``peerkit.model.vocabulary`` only.
"""

from __future__ import annotations

from typing import NamedTuple

from .vocabulary import PeeringState

# Stored states as plain ints: IntEnum members hash through a Python-level __hash__, and states
# are hashed millions of times. `PeeringState(x).name` turns them back into names for display.
PENDING = int(PeeringState.PENDING)
ESTABLISHING = int(PeeringState.ESTABLISHING)
ACTIVE = int(PeeringState.ACTIVE)
FAILING = int(PeeringState.FAILING)
DELETING = int(PeeringState.DELETING)
TERMINATED = int(PeeringState.TERMINATED)

ROOTS = "roots"  # the trust-bundle resource
#: the ExportedServiceList resource: the names of every service exported to the peer, sent when a
#: stream starts so the importer can drop services it still holds from an earlier stream
SERVICE_LIST = "exported-services"
# every other resource name is a service


class Row(NamedTuple):
    """One peering row in a cluster's state store."""

    peer: int  # the remote cluster's index; the row's Name is that cluster's name
    gen: int  # the row's ID, unique within its cluster (the store's UUID)
    state: int  # a stored state: PENDING, ESTABLISHING, DELETING or TERMINATED
    peer_gen: int  # dialer: the acceptor's row ID from the token (PeerID); acceptor: 0
    dialer: bool  # the row holds server addresses (ShouldDial); False on the acceptor side
    #: ghost: a stream between this row and its counterpart was accepted at least once
    linked: bool = False

    @property
    def active(self) -> bool:
        return self.state != DELETING and self.state != TERMINATED


class Imported(NamedTuple):
    """What a cluster imported from one peer name: service nodes and the trust bundle."""

    peer: int
    services: tuple[str, ...]  # each is one imported node with its service and checks
    bundle: bool


class Track(NamedTuple):
    """A stream tracker entry, keyed by the local peering ID."""

    gen: int
    connected: bool


class Cluster(NamedTuple):
    term: int  # the leader's incarnation; a failover increments it
    rows: tuple[Row, ...]  # sorted by peer
    next_gen: int  # the next row ID the store hands out
    imported: tuple[Imported, ...]  # sorted by peer; only non-empty entries
    registered: tuple[str, ...]  # local services with an instance, sorted
    exports: tuple[tuple[str, int], ...]  # (service, peer cluster) export entries, sorted
    # -- leader memory: lost on failover --
    tracker: tuple[Track, ...]  # sorted by gen
    sync_due: bool  # the peering-table watch fired; a sync pass is pending
    snapshot: tuple[int, ...] | None  # mid-pass: connected stream IDs taken before the list
    dialing: tuple[int, ...]  # row IDs with a running dialer retry loop, sorted
    #: the leader terms whose deletion routine is running, sorted. Each new leader starts its own
    #: (so normally this is just `term`); a deposed leader's routine is stopped, except with the
    #: bug deletion-no-stop, where a busy one keeps looping.
    deleters: tuple[int, ...]

    def row(self, peer: int) -> Row | None:
        for r in self.rows:
            if r.peer == peer:
                return r
        return None

    def row_by_gen(self, gen: int) -> Row | None:
        for r in self.rows:
            if r.gen == gen:
                return r
        return None

    def imports_from(self, peer: int) -> Imported | None:
        for imp in self.imported:
            if imp.peer == peer:
                return imp
        return None

    def track(self, gen: int) -> Track | None:
        for t in self.tracker:
            if t.gen == gen:
                return t
        return None


# Endpoint phases. A handler that has returned is DONE; a stream whose ends are both DONE is
# removed from the world.
NEW = 0  # acceptor only: the RPC arrived, the first message has not been read
OPEN = 1  # the handler runs: replicates, imports, watches its doneCh
DRAINING = 2  # the handler returned; reading to end-of-stream and discarding everything
DONE = 3

PHASE_NAMES = {NEW: "NEW", OPEN: "OPEN", DRAINING: "DRAINING", DONE: "DONE"}

# How a channel ends, after the messages in it.
LIVE = 0  # still open
EOF = 1  # the sender half-closed (client) or the handler returned OK (server)
ERROR = 2  # server to client only: the RPC ended with an error status
RESET = 3  # cancelled or reset; unlike EOF and ERROR this may overtake messages in flight

END_NAMES = {LIVE: "live", EOF: "EOF", ERROR: "error status", RESET: "reset"}

# Message kinds on a channel. Messages are tuples whose first item is the kind.
MSG_OPEN = "Open"
# (MSG_RESPONSE, resource, present): UPSERT if present, else DELETE; for SERVICE_LIST the third
# item is the tuple of exported service names
MSG_RESPONSE = "Response"
MSG_ACK = "Ack"  # (MSG_ACK, resource): a Request echoing the nonce, no error
MSG_NACK = "Nack"  # (MSG_NACK, resource): a Request with an error
MSG_TERMINATED = "Terminated"

Message = tuple[object, ...]


class Channel(NamedTuple):
    msgs: tuple[Message, ...] = ()
    end: int = LIVE


class Stream(NamedTuple):
    sid: int  # the lowest number not used by another live stream
    dialer: int  # cluster index
    acceptor: int
    dialer_gen: int  # the dialer's LocalID
    peer_gen: int  # the PeerID sent in Open: the acceptor's row ID from the token
    d_term: int  # the term of the dialer's leader that opened it
    a_term: int  # the term of the acceptor's leader it reached
    d_phase: int
    a_phase: int
    d_done: bool  # the dialer's doneCh was closed by its sync pass
    a_done: bool
    up: Channel  # dialer -> acceptor
    down: Channel  # acceptor -> dialer
    # What each end last published per resource, as (resource, present) pairs, sorted.
    d_sent: tuple[tuple[str, bool], ...]
    a_sent: tuple[tuple[str, bool], ...]


#: A peering *pair* is named by its acceptor row, (acceptor cluster, acceptor row ID): the token.
Pair = tuple[int, int]


def pair_of(c: int, row: Row) -> Pair:
    """The pair that cluster `c`'s `row` belongs to."""
    return (row.peer, row.peer_gen) if row.dialer else (c, row.gen)


class Ghost(NamedTuple):
    """History that only the properties read; the protocol never looks at it.

    Clause (d) of settled-is-clean ("the peer was told") cannot hold after some faults (finding
    F2). Rather than excuse every run that ever had a fault, the ghost records the *pairs* for
    which a fault struck inside a real window, and only those are excused (specs/properties.md).
    """

    #: (cluster, row ID) of rows the operator asked to delete
    user_deleted: tuple[tuple[int, int], ...] = ()
    #: (pair, deleting cluster): the operator of `deleting cluster` deleted its row of `pair`
    deleted_by: tuple[tuple[Pair, int], ...] = ()
    #: pairs whose peer may legitimately never be told (finding F2): a fault hit their stream
    #: while one of the two rows was inactive or gone, or one side was deleted while no healthy
    #: stream joined them and no later dial could reach the deleted row
    excused: tuple[Pair, ...] = ()
    #: pairs whose acceptor row was marked for deletion while no healthy stream joined the two
    #: rows: the dialer can only learn of it by dialing before the row is removed (#14285)
    unannounced: tuple[Pair, ...] = ()
    #: pairs where a store write of a handler failed (finding F6): the peer may stay untold and
    #: a replicated item may stay missing until the next change
    apply_failed: tuple[Pair, ...] = ()


class Budget(NamedTuple):
    tokens: int
    establishes: int
    deletes: int  # operator deletes of an active peering
    cleanups: int  # operator deletes of a TERMINATED peering (the cleanup after being told)
    churn: int  # register / deregister / export / unexport
    faults: int  # connection resets, heartbeat timeouts and failed store writes
    failovers: int


class World(NamedTuple):
    clusters: tuple[Cluster, ...]
    streams: tuple[Stream, ...]  # sorted by sid
    tokens: tuple[tuple[int, int], ...]  # issued tokens: (acceptor cluster, acceptor row ID)
    budget: Budget
    ghost: Ghost


def read_state(cluster: Cluster, row: Row) -> PeeringState:
    """The state a PeeringRead reports: ACTIVE and FAILING are computed from the tracker."""
    if not row.active:
        return PeeringState(row.state)
    track = cluster.track(row.gen)
    if track is None:
        return PeeringState(row.state)
    return PeeringState.ACTIVE if track.connected else PeeringState.FAILING


def cluster_name(index: int) -> str:
    return f"dc{index + 1}"


#: Records up to this many fields get a generated `_replace`; wider ones (Stream) keep the loop,
#: which is faster there (measured: benchmarks/README.md, "Faster steps").
_GENERATED_UP_TO = 11
_UNCHANGED = object()  # the default of each generated keyword: "keep this field"


def _install_fast_replace(cls: type) -> None:
    """Give a NamedTuple a leaner `_replace` (the stock one goes through map, pop and _make).

    The model replaces fields of these records millions of times per search. For records of a
    few fields the method is generated, as `collections.namedtuple` generates its methods:
    keyword-only parameters, one per field, and a tuple built in one go, e.g. for Channel

        def _replace(self, *, msgs=_UNCHANGED, end=_UNCHANGED):
            return _new(_cls, (self[0] if msgs is _UNCHANGED else msgs,
                               self[1] if end is _UNCHANGED else end))

    (an unknown field name is a TypeError). Wider records copy the fields to a list and set
    the changed ones (an unknown field name is a ValueError).
    """
    fields: tuple[str, ...] = cls._fields  # type: ignore[attr-defined]
    new = tuple.__new__
    if len(fields) <= _GENERATED_UP_TO:
        params = ", ".join(f"{name}=_UNCHANGED" for name in fields)
        values = ", ".join(f"self[{i}] if {name} is _UNCHANGED else {name}"
                           for i, name in enumerate(fields))
        namespace = {"_UNCHANGED": _UNCHANGED, "_new": new, "_cls": cls}
        exec(f"def _replace(self, *, {params}):\n    return _new(_cls, ({values},))\n",
             namespace)
        cls._replace = namespace["_replace"]  # type: ignore[attr-defined]
        return
    index = {name: i for i, name in enumerate(fields)}

    def _replace(self: tuple[object, ...], **changes: object) -> tuple[object, ...]:
        values = list(self)
        for name, value in changes.items():
            try:
                values[index[name]] = value
            except KeyError:
                raise ValueError(f"{cls.__name__} has no field {name!r}") from None
        return new(cls, values)

    cls._replace = _replace  # type: ignore[attr-defined]


for _record in (Row, Imported, Track, Cluster, Channel, Stream, Ghost, Budget, World):
    _install_fast_replace(_record)
