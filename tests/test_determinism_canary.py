"""Canary for the trio internals that deterministic tests rely on.

Reproducible schedules depend on private trio hooks (python-stack.md §6): the module-global
``trio._core._run._r`` (the scheduler's Random) and ``_ALLOW_DETERMINISTIC_SCHEDULING``. trio's
minor version is pinned in pyproject.toml for this reason; this test fails loudly if an upgrade
removes the hooks or they stop working, instead of letting tests turn silently flaky."""

from __future__ import annotations

import hashlib

import trio
import trio.testing
from trio._core import _run


def _schedule_digest(seed: int) -> str:
    """Run a small program whose task interleaving shows in its trace; hash the trace."""
    trace: list[str] = []

    async def worker(name: str) -> None:
        for i in range(6):
            trace.append(f"{name}{i}")
            await trio.lowlevel.checkpoint()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for name in "abcdef":
                nursery.start_soon(worker, name)

    _run._r.seed(seed)
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0),
             restrict_keyboard_interrupt_to_checkpoints=True)
    return hashlib.sha256(",".join(trace).encode()).hexdigest()


def test_private_scheduling_hooks_exist() -> None:
    assert hasattr(_run, "_r"), "trio._core._run._r is gone: schedules cannot be seeded"
    assert hasattr(_run, "_ALLOW_DETERMINISTIC_SCHEDULING")
    # trio's Hypothesis plugin (or pytest-trio) switches deterministic scheduling on
    assert _run._ALLOW_DETERMINISTIC_SCHEDULING is True


def test_one_seed_gives_one_schedule() -> None:
    assert len({_schedule_digest(7) for _ in range(5)}) == 1


def test_different_seeds_give_different_schedules() -> None:
    assert len({_schedule_digest(seed) for seed in range(12)}) > 1
