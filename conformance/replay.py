"""Replay a model checker counterexample against the implementation, through the conformance driver.

One job: turn the checker's shortest counterexample (the JSON of ``peerkit check --json``) into a
program of the conformance driver's rules, and run it. The regression is minimal by construction:
the checker's counterexample is a shortest one, and the program does no more than it says.

How a counterexample becomes a program (``translate``):

* the model's environment actions (operator calls, resets, failovers) become the driver's rules
  that pin the same actions (``delete(c=1)`` for ``Delete(1, 0)``), in the same order;
* the model's protocol steps between two of them happen by themselves in the implementation:
  the program lets enough virtual time pass for them (``advance``), from ``STEP_SECONDS``, the
  time each kind of step may wait for a limiter or a backoff under the driver's slow pacing;
* a message the counterexample loses to a reset (a cancel overtaking ``Terminated``, or a
  connection reset with messages in flight) is one the implementation must not deliver before
  the reset either: the program holds that direction of the stream from the environment action
  before the step that sent it (the in-memory network would otherwise deliver it at once);
  likewise a connection reset the counterexample takes right after an operator action, before
  the protocol steps that action starts: the implementation takes those at once (a delete's
  teardown sends Terminated), so the stream is held from the operator action on and the reset
  drops what was sent meanwhile, as the model allows;
* the counterexample's start: a configuration that starts ``established`` (the acceptor's first
  sync pass since the establishment still due) is reached by the driver's set-up with a 6 s gap
  between token and establishment, which leaves that sync pass waiting for its limiter until the
  stream is up; a configuration that starts ``empty`` has its first GenerateToken and Establish
  done by the set-up.

The program then ends as every conformance example does: everything held is released, 700
virtual seconds pass, and some model candidate must be settled.

``run`` runs a program on the implementation with the given switches and the model without any,
and says where it diverged, if it did. ``render`` prints the program as Python a person can
paste. What cannot be replayed (more than two clusters, heartbeat timeouts, write faults: the
driver has no rule for them) is refused with a ``ReplayError`` naming the step.

Every byte of the file may be hostile: ``load`` validates the JSON, each action's type and
fields, and that the actions are, in order, steps the model can take; anything else is a
``ReplayError`` with one line saying what is wrong.

May import: the standard library, ``peerkit.model`` and this package (``stateful`` needs trio,
hypothesis and the implementation). Never the checker: the file is its output, not its API.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from peerkit.model import actions as A
from peerkit.model.config import Config, get_config
from peerkit.model.machine import PeeringModel
from peerkit.model.state import World
from peerkit.model.vocabulary import BUGS

from .candidates import Divergence

#: The longest a protocol step of each kind may wait in the implementation under the driver's
#: slow pacing (``setup(upstream_pacing=False)``): a sync pass waits for its limiter (burst 1,
#: 0.2/s: 5 s), a deletion-routine step for its limiter (0.05/s: 20 s), a redial for the
#: dialer's first backoff (2 s). Message deliveries and the rest take no virtual time.
STEP_SECONDS: dict[str, float] = {
    "Sync": 5.0,
    "SyncSnapshot": 5.0,
    "Dial": 2.0,
    "DeleteNodes": 20.0,
    "DeleteBundle": 20.0,
    "DeleteRow": 20.0,
}

#: environment actions the driver has a rule for
_DRIVEN = (A.GenerateToken, A.Establish, A.Delete, A.Register, A.Deregister, A.Export,
           A.Unexport, A.Reset, A.Failover)


class ReplayError(ValueError):
    """The file is not a counterexample this driver can replay (one line says why)."""


class OffScript(Exception):
    """The implementation, still consistent with the model, is not where the counterexample
    went: a rule of the program is one the model cannot take in any candidate state (the
    driver would skip it silently). Neither a pass nor a divergence: the replay is void."""


@dataclass(frozen=True)
class Counterexample:
    config: Config
    bugs: frozenset[str]
    mutant: str | None
    violated: str
    actions: tuple[Any, ...]
    #: the model's worlds along the counterexample (one more than the actions)
    worlds: tuple[World, ...]


@dataclass(frozen=True)
class Step:
    rule: str
    kwargs: dict[str, Any]
    #: the counterexample's steps this rule stands for (1-based), for the printout
    why: str = ""


@dataclass(frozen=True)
class Program:
    setup: dict[str, Any]
    steps: tuple[Step, ...]
    #: environment actions of the counterexample, and all of its steps
    env_actions: int = 0
    checker_steps: int = 0


@dataclass
class Outcome:
    diverged: bool
    #: the program could not be followed (``OffScript``): neither a pass nor a divergence
    off_script: bool = False
    #: the rule that diverged (0: the set-up, len(steps)+1: the final settle), and the report
    at: int = 0
    message: str = ""
    steps_run: list[str] = field(default_factory=list)


# =============================================================================================
# loading
# =============================================================================================
def load(text: str) -> Counterexample:
    """Parse ``peerkit check --json`` output (or the counterexample object alone)."""
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ReplayError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ReplayError("expected a JSON object (the output of `peerkit check --json`)")
    steps = doc.get("counterexample")
    if not steps:
        raise ReplayError("the file holds no counterexample (every property held?)")
    if doc.get("counterexample_loop"):
        raise ReplayError("a lasso counterexample (a cycle) cannot be replayed as a finite "
                          "program")
    name = doc.get("config", "default")
    if not isinstance(name, str):
        raise ReplayError("'config' must be a configuration name")
    try:
        config = get_config(name)
    except (KeyError, ValueError):
        raise ReplayError(f"unknown configuration {name!r}") from None
    bugs = doc.get("bugs") or []
    if not isinstance(bugs, list) or not all(isinstance(b, str) and b in BUGS for b in bugs):
        raise ReplayError(f"'bugs' must be a list of bug names, got {bugs!r}")
    mutant = doc.get("mutant")
    if mutant is not None and not isinstance(mutant, str):
        raise ReplayError("'mutant' must be a name or null")
    if not isinstance(steps, list):
        raise ReplayError("'counterexample' must be a list of steps")
    actions = tuple(_action(i, s) for i, s in enumerate(steps, 1))
    model = PeeringModel(config, frozenset(bugs), mutant)
    worlds = _walk(model, actions)
    violated = doc.get("violated_property") or "?"
    return Counterexample(config, frozenset(bugs), mutant, str(violated), actions, worlds)


def _action(i: int, step: object) -> Any:
    raw = step.get("action") if isinstance(step, dict) else None
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise ReplayError(f"step {i}: expected {{'action': {{'type': ..., ...}}}}")
    cls = A.ACTION_TYPES.get(raw["type"])
    if cls is None:
        raise ReplayError(f"step {i}: unknown action type {raw['type']!r}")
    names: tuple[str, ...] = getattr(cls, "_fields", ())
    given = {k: v for k, v in raw.items() if k != "type"}
    if set(given) != set(names):
        raise ReplayError(f"step {i}: {raw['type']} takes fields {', '.join(names)}, "
                          f"got {', '.join(sorted(given)) or 'none'}")
    for k, v in given.items():
        if not isinstance(v, int | str) or isinstance(v, bool):
            raise ReplayError(f"step {i}: field {k!r} must be a number or a string")
    return cls(**given)


def _walk(model: PeeringModel, actions: Sequence[Any]) -> tuple[World, ...]:
    reasons = []
    for start in model.initial_states():
        worlds = [start]
        for i, action in enumerate(actions, 1):
            if action not in model.enabled(worlds[-1]):
                reasons.append(f"step {i} ({model.format_action(action)}) is not a step the "
                               f"model can take there: {model.why_not(worlds[-1], action)}")
                break
            worlds.append(model.step(worlds[-1], action))
        else:
            return tuple(worlds)
    raise ReplayError(reasons[0] if reasons else "the model has no initial state")


# =============================================================================================
# translating
# =============================================================================================
def translate(cex: Counterexample) -> Program:
    if cex.config.clusters != 2:
        raise ReplayError(f"the driver runs 2 clusters; configuration {cex.config.name!r} "
                          f"has {cex.config.clusters}")
    actions = list(cex.actions)
    skip: set[int] = set()
    if cex.config.start == "empty":
        skip = _setup_steps(actions)
    holds = _holds(cex)
    steps: list[Step] = []
    pending = 0.0
    covered: list[int] = []
    env = 0
    for i, action in enumerate(actions):
        if i in skip:
            continue
        if A.is_protocol(action):
            pending += STEP_SECONDS.get(type(action).__name__, 0.0)
            covered.append(i + 1)
            continue
        env += 1
        if not isinstance(action, _DRIVEN):
            raise ReplayError(f"step {i + 1}: the driver has no rule for "
                              f"{type(action).__name__}")
        if pending:
            steps.append(Step("advance", {"seconds": pending}, _span(covered)))
        pending, covered = 0.0, []
        for direction in sorted(holds.get(i, ())):
            steps.append(Step("hold", {"i": 0, "up": direction == "up"}, _HOLD))
        steps.append(_rule(cex, i, action))
    if pending:
        steps.append(Step("advance", {"seconds": pending}, _span(covered)))
    setup = {"seed": 0, "upstream_pacing": False,
             "establish_after": 6.0 if cex.config.start == "established" else 0.0}
    before_first = holds.get(-1)
    if before_first:
        steps[:0] = [Step("hold", {"i": 0, "up": d == "up"}, _HOLD) for d in sorted(before_first)]
    return Program(setup, tuple(steps), env, len(actions))


_HOLD = "what the stream carries from here on is lost to a reset"


def _span(steps: list[int]) -> str:
    if not steps:
        return ""
    return f"step {steps[0]}" if len(steps) == 1 else f"steps {steps[0]}-{steps[-1]}"


def _setup_steps(actions: list[Any]) -> set[int]:
    """The driver's set-up generates dc1's token for dc2 and establishes it on dc2 first."""
    out: set[int] = set()
    want: list[type] = [A.GenerateToken, A.Establish]
    for i, a in enumerate(actions):
        if not want:
            break
        if A.is_protocol(a):
            continue
        if type(a) is not want[0] or not _is_setup(a):
            raise ReplayError(f"step {i + 1}: the driver's set-up first peers dc2 with dc1's "
                              f"token; this counterexample starts differently")
        out.add(i)
        want.pop(0)
    return out


def _is_setup(a: Any) -> bool:
    if isinstance(a, A.GenerateToken):
        return bool(a.cluster == 0 and a.peer == 1)
    return bool(a.cluster == 1 and a.acceptor == 0)


#: operator actions after which the implementation may at once send on a live stream
#: (Terminated on a teardown, Responses on a change of exports)
_SENDS_AT_ONCE = (A.Delete, A.Register, A.Deregister, A.Export, A.Unexport)


def _holds(cex: Counterexample) -> dict[int, set[str]]:
    """For each environment action (index; -1: before the first), the directions to hold
    before it.

    Two cases. (1) Messages the counterexample sends after it and then loses to a reset.
    (2) A connection reset that the counterexample takes right after an operator action,
    before any message moved on the stream: the implementation takes its protocol steps at
    once (a delete's sync pass tears the stream down and sends Terminated before the reset
    can come), where the counterexample delays them past the reset; holding the stream from
    the operator action on lets the reset drop what the implementation sent meanwhile, which
    the model allows too."""
    lost_at = _lost_messages(cex)
    out: dict[int, set[str]] = {}
    env_steps = [i for i, a in enumerate(cex.actions) if not A.is_protocol(a)]
    for prev, cur in itertools.pairwise(env_steps):
        if not isinstance(cex.actions[cur], A.Reset):
            continue
        if not isinstance(cex.actions[prev], _SENDS_AT_ONCE):
            continue
        moved = any(isinstance(a, A.Deliver) and a.how == "msg"
                    for a in cex.actions[prev + 1:cur])
        if not moved and cex.worlds[cur].streams:
            out.setdefault(prev, set()).update(("up", "down"))
    for sent, direction in lost_at:
        before = max((j for j in env_steps if j <= sent), default=-1)
        out.setdefault(before, set()).add(direction)
    return out


def _lost_messages(cex: Counterexample) -> list[tuple[int, str]]:
    """(step index that sent it, "up"/"down") for every message a reset dropped."""
    fifos: dict[tuple[int, str], list[int]] = {}
    lost: list[tuple[int, str]] = []
    for i, action in enumerate(cex.actions):
        before = {s.sid: s for s in cex.worlds[i].streams}
        after = {s.sid: s for s in cex.worlds[i + 1].streams}
        resets = isinstance(action, A.Reset) or (
            isinstance(action, A.Deliver) and action.how == "reset")
        for sid in before.keys() | after.keys():
            for direction, reader in (("up", "a"), ("down", "d")):
                fifo = fifos.get((sid, direction), [])
                consumed = int(isinstance(action, A.Deliver) and action.sid == sid
                               and action.side == reader and action.how == "msg")
                kept = fifo[consumed:]
                st = after.get(sid)
                n_after = len(getattr(st, direction).msgs) if st is not None else 0
                if n_after >= len(kept):
                    fifos[(sid, direction)] = kept + [i] * (n_after - len(kept))
                    continue
                gone = kept[:len(kept) - n_after]
                fifos[(sid, direction)] = kept[len(kept) - n_after:]
                if resets:
                    lost.extend((sent, direction) for sent in gone)
    return lost


def _rule(cex: Counterexample, i: int, a: Any) -> Step:
    why = f"step {i + 1}"
    simple = {A.GenerateToken: "generate_token", A.Establish: "establish",
              A.Delete: "delete", A.Failover: "failover"}
    if type(a) in simple:
        return Step(simple[type(a)], {"c": a.cluster}, why)
    if isinstance(a, A.Register | A.Deregister | A.Export | A.Unexport):
        services = cex.config.services
        if a.service not in services:
            raise ReplayError(f"step {i + 1}: service {a.service!r} is not one of the "
                              f"configuration's {services}")
        rule = "register" if isinstance(a, A.Register | A.Deregister) else "export"
        return Step(rule, {"c": a.cluster, "i": services.index(a.service)}, why)
    assert isinstance(a, A.Reset)
    return Step("reset", {"i": 0}, why)


# =============================================================================================
# running and printing
# =============================================================================================
def with_seed(program: Program, seed: int) -> Program:
    """The same program under another trio scheduler seed."""
    return replace(program, setup={**program.setup, "seed": seed})


def render(program: Program, impl_bugs: Iterable[str] = ()) -> str:
    """The program as Python a person can paste and run."""
    bugs = sorted(impl_bugs)
    lines = ["from peerkit.conformance.stateful import machine_for", "",
             f"state = machine_for(impl_bugs={bugs!r})()",
             f"state.setup({_args(program.setup)})"]
    for step in program.steps:
        comment = f"  # {step.why}" if step.why else ""
        lines.append(f"state.{step.rule}({_args(step.kwargs)}){comment}")
    lines.append("state.teardown()  # releases every hold, settles, requires a settled model")
    return "\n".join(lines) + "\n"


def _args(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def run(program: Program, impl_bugs: Iterable[str] = ()) -> Outcome:
    """Run the program on the implementation (with ``impl_bugs``) against the bug-free model."""
    from .stateful import machine_for

    machine = machine_for(impl_bugs=impl_bugs)()
    outcome = Outcome(False)
    at = 0
    try:
        machine.setup(**program.setup)
        outcome.steps_run.append(f"setup({_args(program.setup)})")
        for index, step in enumerate(program.steps, 1):
            at = index
            _check_enabled(machine, step)
            getattr(machine, step.rule)(**step.kwargs)
            outcome.steps_run.append(f"{step.rule}({_args(step.kwargs)})")
        at = len(program.steps) + 1
        machine._settle()
        outcome.steps_run.append("settle")
    except Divergence as exc:
        machine.diverged = True
        outcome.diverged, outcome.at, outcome.message = True, at, str(exc)
    except OffScript as exc:
        machine.diverged = True  # no final settle: the run is void
        outcome.off_script, outcome.at, outcome.message = True, at, str(exc)
    finally:
        machine.teardown()
    return outcome


def _check_enabled(machine: Any, step: Step) -> None:
    """A rule the model cannot take in any candidate would be a silent no-op in the driver
    (its preconditions make it so); in a replay it means the run went elsewhere: say so."""
    wanted: dict[str, type | tuple[type, ...]] = {
        "generate_token": A.GenerateToken, "establish": A.Establish, "delete": A.Delete,
        "failover": A.Failover, "reset": A.Reset,
        "register": (A.Register, A.Deregister), "export": (A.Export, A.Unexport)}
    types = wanted.get(step.rule)
    if types is None:
        if step.rule == "hold" and not machine._live_calls():
            raise OffScript(f"replay: {step.rule}({_args(step.kwargs)}): no live stream to "
                             f"hold (the implementation is not where the counterexample was)")
        return
    c = step.kwargs.get("c")
    if not any(isinstance(a, types) and getattr(a, "cluster", c) == c
               for a in machine._enabled()):
        raise OffScript(f"replay: {step.rule}({_args(step.kwargs)}): the model can take this "
                         f"step in none of the candidate states")
