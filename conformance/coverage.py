"""Model coverage: which action type × table entry a step of the model is.

One job: name a model step ``(world, action, next world)`` by the part of the model it exercises,
so a conformance run can say which parts it drove the implementation through and compare with
what the model checker reaches in the same configuration:

* ``Deliver``: the handler table entry (role, phase before, input, phase after); the input is the
  kind of message, or how the channel ended (``Open`` inputs are told apart by the phase after:
  accepted or refused);
* ``SendTerminated``: the handler table's teardown entry for the role;
* ``HandlerWriteFails``: like ``Deliver`` (the message whose write fails: Response or Terminated);
* ``HeartbeatTimeout``: the role of the end that gives up;
* ``RoutineWriteFails``: the role and stored state of the row whose data the routine failed to
  delete;
* ``Delete`` and ``DeleteRow``: the lifecycle table entry (role, stored state before, after);
* every other action (including types this module does not know): its type name.

Only the public state records are read (``World``, ``Stream``, ``Row``); nothing private of the
machine.

May import: the standard library and ``peerkit.model``.
"""

from __future__ import annotations

from collections.abc import Iterable

from peerkit.model import actions as A
from peerkit.model.state import END_NAMES, PHASE_NAMES, World
from peerkit.model.vocabulary import PeeringState

EdgeKey = tuple[str, ...]


def _stream(w: World, sid: int) -> object | None:
    for st in w.streams:
        if st.sid == sid:
            return st
    return None


def _state_name(w: World, cluster: int, peer: int) -> str:
    row = w.clusters[cluster].row(peer)
    if row is None:
        return "none"
    return PeeringState(row.state).name


def _role(w: World, cluster: int, peer: int) -> str:
    row = w.clusters[cluster].row(peer)
    if row is None:
        return "?"
    return "dialer" if row.dialer else "acceptor"


def edge_key(w: World, action: object, after: World) -> EdgeKey:
    name = type(action).__name__
    if isinstance(action, A.Deliver | A.SendTerminated | A.HandlerWriteFails):
        st = _stream(w, action.sid)
        st2 = _stream(after, action.sid)
        if st is None:
            return (name,)
        side = action.side
        role = "dialer" if side == "d" else "acceptor"
        phase = st.d_phase if side == "d" else st.a_phase  # type: ignore[attr-defined]
        if st2 is None:
            phase2 = "DONE"
        else:
            phase2 = PHASE_NAMES[st2.d_phase if side == "d" else st2.a_phase]  # type: ignore[attr-defined]
        if isinstance(action, A.SendTerminated):
            return (name, role, PHASE_NAMES[phase], "doneCh closed", phase2)
        inbound = st.down if side == "d" else st.up  # type: ignore[attr-defined]
        if isinstance(action, A.HandlerWriteFails) or action.how == "msg":
            inp = str(inbound.msgs[0][0])
        elif action.how == "end":
            inp = END_NAMES[inbound.end]
        else:
            inp = action.how
        return (name, role, PHASE_NAMES[phase], inp, phase2)
    if isinstance(action, A.HeartbeatTimeout):  # the end is always OPEN
        return (name, "dialer" if action.side == "d" else "acceptor")
    if isinstance(action, A.RoutineWriteFails):
        return (name, _role(w, action.cluster, action.peer),
                _state_name(w, action.cluster, action.peer))
    if isinstance(action, A.Delete | A.DeleteRow):
        return (name, _role(w, action.cluster, action.peer),
                _state_name(w, action.cluster, action.peer),
                _state_name(after, action.cluster, action.peer))
    return (name,)


def reachable_keys(model: object, limit: int = 2_000_000) -> tuple[set[EdgeKey], bool]:
    """The edge keys of the configuration's state space, breadth first like the checker, for
    the coverage denominator; and whether the space was explored completely (False: stopped
    after ``limit`` states, so the keys are a lower bound). ``model`` is a ``PeeringModel``."""
    from collections import deque

    initial: Iterable[World] = model.initial_states()  # type: ignore[attr-defined]
    seen = set(initial)
    queue = deque(seen)
    keys: set[EdgeKey] = set()
    while queue:
        w = queue.popleft()
        for a, w2 in model.successors(w):  # type: ignore[attr-defined]
            keys.add(edge_key(w, a, w2))
            if w2 not in seen:
                seen.add(w2)
                if len(seen) > limit:
                    return keys, False
                queue.append(w2)
    return keys, True
