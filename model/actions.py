"""The model's inputs: every action is a small immutable value naming who does what.

Actions fall into three kinds, and the kind matters to the properties:

* ``operator``: what a person does through the API (generate a token, establish, delete, export,
  register). Each spends a budget.
* ``fault``: what the environment does to us (a connection reset, a heartbeat timeout, a leader
  failover). Each spends a budget.
* ``protocol``: everything the clusters do on their own (deliver a message to a handler, a sync
  pass, a dial, a deletion-routine step). Free. Liveness ("the system settles") may use only these.

Actions are NamedTuples for speed, with equality and hashing that also compare the action's
type, so that ``Delete(0, 1) != DeleteRow(0, 1)`` even though both are the tuple ``(0, 1)``.

Import rules: standard library only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

OPERATOR = "operator"
FAULT = "fault"
PROTOCOL = "protocol"

_T = TypeVar("_T")

ACTION_TYPES: dict[str, type] = {}


def _action(kind: str) -> Callable[[type[_T]], type[_T]]:
    def mark(cls: type[_T]) -> type[_T]:
        def __eq__(self: Any, other: object) -> bool:
            return type(self) is type(other) and tuple.__eq__(self, other)  # type: ignore[operator]

        def __ne__(self: Any, other: object) -> bool:
            return not __eq__(self, other)

        def __hash__(self: Any) -> int:
            return hash((cls.__name__, *self))

        cls.__eq__ = __eq__  # type: ignore[method-assign]
        cls.__ne__ = __ne__  # type: ignore[method-assign]
        cls.__hash__ = __hash__  # type: ignore[method-assign]
        cls.KIND = kind  # type: ignore[attr-defined]
        ACTION_TYPES[cls.__name__] = cls
        return cls

    return mark


# -- operator ----------------------------------------------------------------------------------


@_action(OPERATOR)
class GenerateToken(NamedTuple):
    """The acceptor `cluster` creates a PENDING peering named after `peer` and issues a token."""

    cluster: int
    peer: int


@_action(OPERATOR)
class Establish(NamedTuple):
    """The dialer `cluster` creates an ESTABLISHING peering from the token (acceptor, row ID)."""

    cluster: int
    acceptor: int
    token_gen: int


@_action(OPERATOR)
class Delete(NamedTuple):
    """The operator deletes `cluster`'s peering named after `peer` (PeeringDelete)."""

    cluster: int
    peer: int


@_action(OPERATOR)
class Register(NamedTuple):
    cluster: int
    service: str


@_action(OPERATOR)
class Deregister(NamedTuple):
    cluster: int
    service: str


@_action(OPERATOR)
class Export(NamedTuple):
    cluster: int
    service: str
    peer: int


@_action(OPERATOR)
class Unexport(NamedTuple):
    cluster: int
    service: str
    peer: int


# -- faults ------------------------------------------------------------------------------------


@_action(FAULT)
class Reset(NamedTuple):
    """The connection under stream `sid` is reset: both directions are cancelled."""

    sid: int


@_action(FAULT)
class HeartbeatTimeout(NamedTuple):
    """The handler at `side` ("d" or "a") of stream `sid` gives up: no heartbeat for 2 minutes."""

    sid: int
    side: str


@_action(FAULT)
class Failover(NamedTuple):
    """`cluster`'s leader loses leadership; a new leader takes over with the same store."""

    cluster: int


@_action(FAULT)
class HandlerWriteFails(NamedTuple):
    """The handler at `side` of stream `sid` receives its next message, and the store write that
    message calls for (TerminateByID, or an imported item) fails: a raft apply error."""

    sid: int
    side: str


@_action(FAULT)
class RoutineWriteFails(NamedTuple):
    """The deletion routine's next raft apply for `peer`'s data in `cluster` fails; the routine
    logs it and retries on its next pass."""

    cluster: int
    peer: int


# -- protocol ----------------------------------------------------------------------------------


@_action(PROTOCOL)
class Sync(NamedTuple):
    """A whole sync pass in one step: snapshot, list, dial, tear down (when not split)."""

    cluster: int


@_action(PROTOCOL)
class SyncSnapshot(NamedTuple):
    """First half of a sync pass: copy the connected streams, before listing peerings."""

    cluster: int


@_action(PROTOCOL)
class SyncApply(NamedTuple):
    """Second half: list peerings, dial what is not connected, tear down what is not stored."""

    cluster: int


@_action(PROTOCOL)
class Dial(NamedTuple):
    """The retry loop of dialer row `gen` in `cluster` opens a stream (an attempt)."""

    cluster: int
    gen: int


@_action(PROTOCOL)
class Deliver(NamedTuple):
    """The handler at `side` of stream `sid` receives the next thing on its inbound channel.

    `how` is "msg" (the next message), "end" (the channel's end after its last message), "reset"
    (a cancellation overtaking whatever is still queued) or "eof" (a Python gRPC server seeing a
    client's cancel first as end-of-stream).
    """

    sid: int
    side: str
    how: str


@_action(PROTOCOL)
class Publish(NamedTuple):
    """The subscription manager at `side` of stream `sid` sends what changed since it last
    sent (one Response per changed resource, in name order)."""

    sid: int
    side: str


@_action(PROTOCOL)
class SendTerminated(NamedTuple):
    """The handler at `side` sees its doneCh closed: it sends Terminated and returns."""

    sid: int
    side: str


@_action(PROTOCOL)
class DeleteNodes(NamedTuple):
    """Deletion routine: one Txn batch deleting imported nodes (with services and checks)."""

    cluster: int
    peer: int


@_action(PROTOCOL)
class DeleteBundle(NamedTuple):
    cluster: int
    peer: int


@_action(PROTOCOL)
class DeleteRow(NamedTuple):
    cluster: int
    peer: int


@_action(PROTOCOL)
class Spin(NamedTuple):
    """A deletion routine left running on a deposed leader (bug deletion-no-stop) loops once
    without doing anything; it returns once no inactive peering has deletion work left."""

    cluster: int


Action = (
    GenerateToken | Establish | Delete | Register | Deregister | Export | Unexport
    | Reset | HeartbeatTimeout | Failover | HandlerWriteFails | RoutineWriteFails
    | Sync | SyncSnapshot | SyncApply | Dial | Deliver | Publish | SendTerminated
    | DeleteNodes | DeleteBundle | DeleteRow | Spin
)


def kind_of(action: object) -> str:
    kind = getattr(type(action), "KIND", None)
    if kind is None:
        raise TypeError(f"not a model action: {action!r}")
    return str(kind)


def is_protocol(action: object) -> bool:
    return getattr(type(action), "KIND", None) == PROTOCOL
