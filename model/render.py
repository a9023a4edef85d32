"""Words and pictures for the model: actions and steps in plain English, world summaries, and a
counterexample as a Mermaid sequence diagram between the clusters.

Import rules: standard library and ``peerkit.model`` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import actions as A
from .state import (
    END_NAMES,
    MSG_ACK,
    MSG_NACK,
    MSG_OPEN,
    MSG_RESPONSE,
    PHASE_NAMES,
    Message,
    Stream,
    World,
    cluster_name,
    read_state,
)

if TYPE_CHECKING:
    from .machine import PeeringModel

_SIDE = {"d": "dialer", "a": "acceptor"}


def describe_message(msg: Message) -> str:
    kind = msg[0]
    if kind == MSG_RESPONSE and msg[1] == "exported-services":
        names = msg[2] if isinstance(msg[2], tuple) else ()
        return f"Response(exported services: {', '.join(map(str, names)) or 'none'})"
    if kind == MSG_RESPONSE:
        what = "trust bundle" if msg[1] == "roots" else f"service {msg[1]}"
        return f"Response({what}, {'UPSERT' if msg[2] else 'DELETE'})"
    if kind in (MSG_ACK, MSG_NACK):
        return f"{kind}({msg[1]})"
    return str(kind)


def describe_action(action: object) -> str:
    n = cluster_name
    if isinstance(action, A.GenerateToken):
        return f"{n(action.cluster)}: operator generates a peering token for {n(action.peer)}"
    if isinstance(action, A.Establish):
        return (f"{n(action.cluster)}: operator establishes a peering with "
                f"{n(action.acceptor)}'s token (peer ID {action.token_gen})")
    if isinstance(action, A.Delete):
        return f"{n(action.cluster)}: operator deletes the peering with {n(action.peer)}"
    if isinstance(action, A.Register):
        return f"{n(action.cluster)}: operator registers an instance of {action.service}"
    if isinstance(action, A.Deregister):
        return f"{n(action.cluster)}: operator deregisters {action.service}"
    if isinstance(action, A.Export):
        return f"{n(action.cluster)}: operator exports {action.service} to {n(action.peer)}"
    if isinstance(action, A.Unexport):
        return f"{n(action.cluster)}: operator stops exporting {action.service} to {n(action.peer)}"
    if isinstance(action, A.Reset):
        return f"FAULT: the connection of stream {action.sid} is reset"
    if isinstance(action, A.HeartbeatTimeout):
        return (f"FAULT: the {_SIDE[action.side]} end of stream {action.sid} hits its "
                "heartbeat timeout")
    if isinstance(action, A.Failover):
        return f"FAULT: {n(action.cluster)}'s leader fails over (tracker and routines are lost)"
    if isinstance(action, A.HandlerWriteFails):
        return (f"FAULT: stream {action.sid}: the {_SIDE[action.side]} receives the next "
                "message, and the store write it calls for fails")
    if isinstance(action, A.RoutineWriteFails):
        return (f"FAULT: {n(action.cluster)}: the deletion routine's next write for "
                f"{n(action.peer)} fails")
    if isinstance(action, A.Sync):
        return f"{n(action.cluster)}: sync pass (lists peerings, dials, tears down)"
    if isinstance(action, A.SyncSnapshot):
        return f"{n(action.cluster)}: sync pass copies the connected streams"
    if isinstance(action, A.SyncApply):
        return f"{n(action.cluster)}: sync pass lists peerings, dials and tears down"
    if isinstance(action, A.Dial):
        return f"{n(action.cluster)}: dials for its peering {action.gen} (sends Open)"
    if isinstance(action, A.Deliver):
        how = {"msg": "the next message", "end": "the end of the stream",
               "reset": "a reset that overtakes what is still queued",
               "eof": "end-of-stream (a client cancel, as a Python gRPC server first sees it)"}
        return f"stream {action.sid}: the {_SIDE[action.side]} receives {how[action.how]}"
    if isinstance(action, A.Publish):
        return f"stream {action.sid}: the {_SIDE[action.side]} publishes its changed exports"
    if isinstance(action, A.SendTerminated):
        return f"stream {action.sid}: the {_SIDE[action.side]} sees its doneCh closed"
    if isinstance(action, A.DeleteNodes):
        return f"{n(action.cluster)}: deletion routine deletes a batch of nodes of {n(action.peer)}"
    if isinstance(action, A.DeleteBundle):
        return f"{n(action.cluster)}: deletion routine deletes {n(action.peer)}'s trust bundle"
    if isinstance(action, A.DeleteRow):
        return f"{n(action.cluster)}: deletion routine deletes the row for {n(action.peer)}"
    if isinstance(action, A.Spin):
        return f"{n(action.cluster)}: the deposed leader's deletion loop goes round"
    return repr(action)


def _stream(w: World, sid: int) -> Stream | None:
    for st in w.streams:
        if st.sid == sid:
            return st
    return None


def describe_step(model: PeeringModel, before: World, action: A.Action, after: World) -> str:
    """One counterexample step: who did what, with what the handler received and what changed."""
    text = describe_action(action)
    if isinstance(action, A.Deliver):
        st = _stream(before, action.sid)
        if st is not None:
            inbound = st.down if action.side == "d" else st.up
            c = st.dialer if action.side == "d" else st.acceptor
            who = f"{cluster_name(c)} ({_SIDE[action.side]}, stream {action.sid})"
            if action.how == "msg" and inbound.msgs:
                got = describe_message(inbound.msgs[0])
            elif action.how == "end":
                got = END_NAMES[inbound.end]
            elif action.how == "reset":
                got = "a reset overtaking " + ", ".join(describe_message(m) for m in inbound.msgs)
            else:
                got = "end-of-stream (really a cancel)"
            text = f"{who} receives {got}"
    elif isinstance(action, A.SendTerminated):
        st = _stream(before, action.sid)
        if st is not None:
            c = st.dialer if action.side == "d" else st.acceptor
            text = (f"{cluster_name(c)} ({_SIDE[action.side]}, stream {action.sid}) sees its "
                    "doneCh closed")
    changes = _changes(before, after)
    return text + (f"  [{'; '.join(changes)}]" if changes else "")


def _changes(before: World, after: World) -> list[str]:
    out: list[str] = []
    for c, (b, a) in enumerate(zip(before.clusters, after.clusters, strict=True)):
        name = cluster_name(c)
        if b.rows != a.rows:
            for row in a.rows:
                old = b.row(row.peer)
                if old is None or old.gen != row.gen:
                    out.append(f"{name} row {cluster_name(row.peer)}: new, "
                               f"{read_state(a, row).name}")
                elif old.state != row.state:
                    out.append(f"{name} row {cluster_name(row.peer)}: {read_state(b, old).name} -> "
                               f"{read_state(a, row).name}")
            for row in b.rows:
                if a.row(row.peer) is None:
                    out.append(f"{name} row {cluster_name(row.peer)}: removed")
        if b.imported != a.imported:
            out.append(f"{name} imports: {_imports(a)}")
        if b.term != a.term:
            out.append(f"{name} has a new leader (term {a.term})")
    return out


def _imports(cl: object) -> str:
    imported = getattr(cl, "imported", ())
    if not imported:
        return "none"
    parts = []
    for imp in imported:
        items = list(imp.services) + (["trust bundle"] if imp.bundle else [])
        parts.append(f"from {cluster_name(imp.peer)}: {', '.join(items)}")
    return "; ".join(parts)


def summarize(w: World) -> list[str]:
    """A few lines describing a world, for the end of a counterexample."""
    lines = []
    for c, cl in enumerate(w.clusters):
        rows = ", ".join(
            f"{cluster_name(r.peer)}={read_state(cl, r).name}"
            f"{' (dialer)' if r.dialer else ''}" for r in cl.rows
        ) or "no peerings"
        lines.append(f"{cluster_name(c)} (term {cl.term}): peerings {rows}; imports "
                     f"{_imports(cl)}")
    for st in w.streams:
        lines.append(
            f"stream {st.sid}: {cluster_name(st.dialer)} {PHASE_NAMES[st.d_phase]} -> "
            f"{cluster_name(st.acceptor)} {PHASE_NAMES[st.a_phase]}; "
            f"up [{', '.join(describe_message(m) for m in st.up.msgs)}] "
            f"{END_NAMES[st.up.end]}; down "
            f"[{', '.join(describe_message(m) for m in st.down.msgs)}] {END_NAMES[st.down.end]}"
        )
    return lines


def mermaid(model: PeeringModel, initial: World, actions: Sequence[A.Action],
            title: str = "") -> str:
    """A counterexample as a Mermaid sequence diagram (renders in GitHub and most viewers)."""
    from .properties import sent_messages

    lines = ["sequenceDiagram"]
    if title:
        lines.append(f"    title {_safe(title)}")
    names = [cluster_name(c) for c in range(len(initial.clusters))]
    for name in names:
        lines.append(f"    participant {name}")
    w = initial
    for number, action in enumerate(actions, 1):
        after = model.step(w, action)
        sent = sent_messages(w, action, after)
        label = _safe(f"{number}. {describe_step(model, w, action, after)}")
        if sent:
            peer = _receiver(action, w)
            for c, _gen, msg in sent:
                lines.append(f"    {names[c]}-){names[peer]}: {number}. "
                             f"{_safe(describe_message(msg))}")
            lines.append(f"    Note over {names[sent[0][0]]}: {label}")
        else:
            where = _where(action, w, names)
            lines.append(f"    Note over {where}: {label}")
        w = after
    return "\n".join(lines) + "\n"


def _receiver(action: A.Action, w: World) -> int:
    if isinstance(action, A.Dial):
        row = w.clusters[action.cluster].row_by_gen(action.gen)
        return row.peer if row is not None else action.cluster
    st = _stream(w, getattr(action, "sid", -1))
    if st is None:
        return 0
    return st.acceptor if getattr(action, "side", "d") == "d" else st.dialer


def _where(action: object, w: World, names: list[str]) -> str:
    cluster = getattr(action, "cluster", None)
    if isinstance(cluster, int):
        return names[cluster]
    sid = getattr(action, "sid", None)
    if isinstance(sid, int):
        st = _stream(w, sid)
        if st is not None:
            side = getattr(action, "side", None)
            if side == "d":
                return names[st.dialer]
            if side == "a":
                return names[st.acceptor]
            return f"{names[st.dialer]},{names[st.acceptor]}"
    return ",".join(names[:2])


def _safe(text: str) -> str:
    # Mermaid treats ';' and '#' specially in messages
    return text.replace(";", ",").replace("#", "no.")


__all__ = ["MSG_OPEN", "describe_action", "describe_message", "describe_step", "mermaid",
           "summarize"]


def replay_program(config: str, bugs: Sequence[str], actions: Sequence[A.Action],
                   mutant: str | None = None) -> str:
    """A Python program that replays a run step by step (paste it into a file and run it).

    It ends by printing which properties the final state (and the final step) break.
    """
    lines = [
        "# Replays a peerkit run step by step; a step that is not enabled raises IllegalAction.",
        "from peerkit.model import PeeringModel, get_config",
        "from peerkit.model.actions import *  # noqa: F403",
        "from peerkit.model.render import summarize",
        "",
        f"model = PeeringModel(get_config({config!r}), bugs={sorted(bugs)!r}"
        + (f", mutant={mutant!r})" if mutant else ")"),
        "before = world = model.initial()",
    ]
    for action in actions:
        lines.append(f"before, world = world, model.step(world, step := {action!r})")
    if actions:
        lines += [
            "broken = [p.id for p in model.invariants if not p.holds(world)]",
            "broken += [p.id for p in model.transition_invariants "
            "if not p.holds(before, step, world)]",
            "print('properties broken at the end:', broken or 'none')",
        ]
    lines += ["print(*summarize(world), sep='\\n')"]
    return "\n".join(lines) + "\n"
