"""A persistent trio run, hosted on the calling thread, that synchronous code drives step by step.

One job: let a plain (synchronous) Hypothesis state machine drive trio code whose tasks live for
the whole example (python-stack.md §5.3): one trio *guest run* per example, on the test thread,
under ``MockClock(autojump_threshold=0)``, with the scheduler's RNG seeded so that interleavings
replay. ``GuestRun.call(fn)`` starts ``fn()`` inside the run and pumps the run's callbacks until
that step's result is set; the run does nothing between steps, so virtual time only moves while a
step is pumped.

May import: the standard library and trio (including its private scheduling hooks, which
``tests/test_determinism_canary.py`` watches). Nothing of peerkit.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import outcome
import trio
import trio.testing
from trio._core import _run as _trio_run

T = TypeVar("T")

#: callbacks one step may run before the driver gives up (a step that never completes)
MAX_CALLBACKS_PER_STEP = 2_000_000


class StepNeverFinished(Exception):
    """A step kept the run busy past ``MAX_CALLBACKS_PER_STEP`` callbacks without finishing."""


def _stopped(clock: trio.testing.MockClock) -> trio.testing.MockClock:
    """``clock``, whose ``current_time`` skips reading the real clock while its rate is 0 (it
    always is here): MockClock computes ``virtual base + rate * (real now - real base)``, which
    is then exactly the virtual base, and trio asks the time several times per guest tick. The
    same number, without a ``perf_counter`` call and two method calls each time. (MockClock is
    final, so the instance gets the method; its private fields are trio's, like the scheduling
    hooks above.)"""
    if not (isinstance(getattr(clock, "_virtual_base", None), float)
            and isinstance(getattr(clock, "_rate", None), float)):
        return clock  # a trio whose MockClock is laid out differently: leave it as it is
    real = clock.current_time

    def current_time() -> float:
        return clock._virtual_base if clock._rate == 0.0 else real()

    clock.current_time = current_time  # type: ignore[method-assign]
    return clock


class GuestRun:
    """One trio guest run. ``start(main)`` runs ``main(portal)`` in it; ``main`` must call
    ``await portal.serve()`` to accept steps, and returns when ``close()`` is called."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.clock = _stopped(trio.testing.MockClock(autojump_threshold=0))
        self._queue: collections.deque[Callable[[], object]] = collections.deque()
        self._done: outcome.Outcome[object] | None = None
        self._steps_send, self._steps_recv = trio.open_memory_channel[
            tuple[Callable[[], Awaitable[Any]], list[outcome.Outcome[Any]]]
        ](1_000)
        self.callbacks = 0  # pumped so far, for the benchmark
        self._scope: trio.CancelScope | None = None

    # -- host side ---------------------------------------------------------------------------
    def _post(self, fn: Callable[[], object]) -> None:
        self._queue.append(fn)

    def _finished(self, result: outcome.Outcome[object]) -> None:
        self._done = result

    def start(self, main: Callable[[GuestRun], Awaitable[object]]) -> None:
        # deterministic scheduling: trio's Hypothesis plugin turns it on; make sure, then seed
        _trio_run._ALLOW_DETERMINISTIC_SCHEDULING = True  # type: ignore[misc]
        _trio_run._r.seed(self.seed)
        async def wrapper() -> object:
            with trio.CancelScope() as scope:
                self._scope = scope
                return await main(self)
            return None

        trio.lowlevel.start_guest_run(
            wrapper,
            run_sync_soon_threadsafe=self._post,
            run_sync_soon_not_threadsafe=self._post,
            done_callback=self._finished,
            clock=self.clock,
            restrict_keyboard_interrupt_to_checkpoints=True,
        )

    def _pump_until(self, ready: Callable[[], bool]) -> None:
        budget = MAX_CALLBACKS_PER_STEP
        while not ready():
            if self._done is not None:
                self._done.unwrap()  # the run ended (or crashed) before the step finished
                raise RuntimeError("the trio run ended before the step finished")
            if not self._queue:
                raise RuntimeError("the trio run is idle but the step has not finished")
            budget -= 1
            if budget == 0:
                raise StepNeverFinished(f"a step ran {MAX_CALLBACKS_PER_STEP} callbacks")
            self.callbacks += 1
            self._queue.popleft()()

    def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        """Run ``fn()`` inside the trio run; return its result or raise its exception."""
        box: list[outcome.Outcome[Any]] = []
        self._steps_send.send_nowait((fn, box))
        self._pump_until(lambda: bool(box))
        result: T = box[0].unwrap()
        return result

    def close(self) -> None:
        """End ``serve()`` and pump until the run has finished; re-raise a crash."""
        if self._done is None:
            self._steps_send.close()
            try:
                self._pump_until(lambda: self._done is not None)
            except StepNeverFinished:
                # a step is stuck: cancel everything so that the run ends (and a new one can
                # start in this thread), then report the stuck step
                if self._scope is not None:
                    self._scope.cancel()
                self._pump_until(lambda: self._done is not None)
                raise
        assert self._done is not None
        self._done.unwrap()

    # -- guest side --------------------------------------------------------------------------
    async def serve(self) -> None:
        """Run steps one at a time until ``close()``. Called by ``main`` inside the run."""
        async with self._steps_recv:
            async for fn, box in self._steps_recv:
                box.append(await outcome.acapture(fn))
