"""Reports of a search: the machine-readable JSON object and the human-readable text.

Both are generic: the model supplies how to describe an action (and, optionally, a step with the
states around it); the checker supplies the numbers, the verdicts and the counterexample.

Import rules: standard library and ``peerkit.checker`` only.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, TypeVar

from .engine import Counterexample, FingerprintReport, Result, Step

S = TypeVar("S", bound=Hashable)
A = TypeVar("A")

DescribeStep = Callable[[Any, Any, Any], str]  # (state before, action, state after) -> text


def action_to_json(action: object) -> dict[str, Any]:
    """An action as a JSON object: its type name plus its fields (for NamedTuples and
    dataclasses), or its repr."""
    fields = getattr(action, "_asdict", None)
    if callable(fields):
        return {"type": type(action).__name__, **fields()}
    return {"type": type(action).__name__, "repr": repr(action)}


def _steps_json(
    initial: Any, steps: Sequence[Step[Any, Any]], describe: DescribeStep | None,
    first_number: int = 1,
) -> list[dict[str, Any]]:
    out = []
    before = initial
    for number, step in enumerate(steps, first_number):
        item: dict[str, Any] = {"step": number, "action": action_to_json(step.action)}
        if describe is not None:
            item["description"] = describe(before, step.action, step.state)
        out.append(item)
        before = step.state
    return out


def counterexample_json(ce: Counterexample[Any, Any], describe: DescribeStep | None = None
                        ) -> dict[str, Any]:
    last = ce.steps[-1].state if ce.steps else ce.initial
    return {
        "property": ce.property_id,
        "kind": ce.kind,
        "explanation": ce.explanation,
        "length": len(ce.steps),
        "steps": _steps_json(ce.initial, ce.steps, describe),
        "loop": _steps_json(last, ce.loop, describe, len(ce.steps) + 1),
    }


def result_json(result: Result[Any, Any], describe: DescribeStep | None = None,
                extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The report as one JSON-able dict. The keys listed in the CLI contract are always there."""
    first = result.counterexample
    out: dict[str, Any] = dict(extra or {})
    out.update({
        "model": result.model,
        "ok": result.ok,
        "complete": result.complete,
        "stopped_because": result.stopped_because,
        "distinct_states": result.distinct_states,
        "transitions": result.transitions,
        "depth": result.depth,
        "seconds": round(result.seconds, 3),
        "states_per_second": round(result.states_per_second, 1),
        "properties": [
            {"id": p.id, "title": p.title, "kind": p.kind, "verdict": p.verdict, "note": p.note}
            for p in result.properties
        ],
        "reductions": result.reductions or [],
        "fingerprints": fingerprints_json(result.fingerprints),
    })
    if first is not None:
        cj = counterexample_json(first, describe)
        out["violated_property"] = first.property_id
        out["explanation"] = first.explanation
        out["counterexample"] = cj["steps"]
        out["counterexample_loop"] = cj["loop"]
        out["violations"] = [counterexample_json(ce, describe) for ce in result.counterexamples]
    return out


def fingerprints_json(fp: FingerprintReport | None) -> dict[str, Any] | None:
    """Fingerprint mode's figures (None in the exact mode)."""
    if fp is None:
        return None
    return {
        "function": fp.function,
        "bits": fp.bits,
        "omission_probability": fp.omission_probability,
        "collisions_detected": fp.collisions_detected,
        "state_store_bytes": fp.state_store_bytes,
        "bytes_per_state": round(fp.bytes_per_state, 1),
        "edge_store_bytes": fp.edge_store_bytes,
        "edges": fp.edges,
        "bytes_per_transition": round(fp.bytes_per_transition, 1),
        "peak_frontier_states": fp.peak_frontier,
    }


def format_fingerprints(fp: FingerprintReport) -> list[str]:
    how = {"process_fingerprint": "hash() within this process",
           "fingerprint": "BLAKE2b, the same in every process"}.get(fp.function, fp.function)
    lines = [
        f"fingerprints: {fp.bits}-bit ({how}); "
        f"{fp.bytes_per_state:.1f} bytes per state stored, "
        f"{fp.bytes_per_transition:.1f} bytes per transition for the liveness graph "
        f"({_count(fp.edges, 'edge')}); at most {fp.peak_frontier:,} states held in full "
        "(two BFS levels)",
        f"fingerprints: probability that a collision omitted a state: "
        f"{fp.omission_probability:.1e} (TLC's estimate, for uniformly distributed "
        f"fingerprints); collisions detected and resolved: {fp.collisions_detected}",
    ]
    return lines


def format_counterexample(
    ce: Counterexample[Any, Any],
    describe: DescribeStep,
    title: str = "",
) -> list[str]:
    lines = []
    head = f"VIOLATED {ce.property_id}" + (f": {title}" if title else "")
    lines.append(head)
    if ce.explanation:
        lines.append(f"  {ce.explanation}")
    lines.append("")
    kind = {"invariant": "reaches a state that breaks it",
            "transition": "ends with a step that breaks it",
            "liveness": "reaches a state from which a run need never reach a target"}[ce.kind]
    lines.append(f"Counterexample: {_count(len(ce.steps), 'step')} (a shortest one), {kind}:")
    before = ce.initial
    width = len(str(len(ce.steps) + len(ce.loop)))
    for number, step in enumerate(ce.steps, 1):
        lines.append(f"  {number:>{width}}. {describe(before, step.action, step.state)}")
        before = step.state
    if ce.loop:
        lines.append("  ... and from there it can go round for ever:")
        for number, step in enumerate(ce.loop, len(ce.steps) + 1):
            lines.append(f"  {number:>{width}}. {describe(before, step.action, step.state)}")
            before = step.state
    return lines


def _count(n: int, noun: str) -> str:
    """"1 step", "2 steps" (with thousands separators)."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def format_summary(result: Result[Any, Any]) -> list[str]:
    lines = [
        f"explored {_count(result.distinct_states, 'distinct state')} and "
        f"{_count(result.transitions, 'transition')} to depth {result.depth} in "
        f"{result.seconds:.1f} s "
        f"({result.states_per_second:,.0f} states/s); {result.stopped_because}",
    ]
    for red in result.reductions:
        lines.append(f"reduction: {red['name']}: {red['why_sound']}")
    if not result.reductions:
        lines.append("reductions: none (every state is explored as it is)")
    if result.fingerprints is not None:
        lines += format_fingerprints(result.fingerprints)
    return lines


def format_verdicts(result: Result[Any, Any]) -> list[str]:
    mark = {"holds": "ok  ", "violated": "FAIL", "unknown": "??  "}
    lines = ["Properties:"]
    for p in result.properties:
        note = f" ({p.note})" if p.note else ""
        lines.append(f"  {mark[p.verdict]} {p.id:<32} {p.kind:<10} {p.title}{note}")
    return lines
