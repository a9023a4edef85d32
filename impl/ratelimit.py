"""Pacing for the leader routines: a token bucket, upstream's retry loop, and a Go-style context.

One job: provide the three timing primitives the routines are built on, all on trio's clock (so
they run in virtual time under ``trio.testing.MockClock``):

* ``TokenBucket(rate, burst)`` behaves like Go's ``rate.Limiter``: it starts full, refills at
  ``rate`` tokens per second up to ``burst``, and ``wait()`` reserves one token and sleeps until
  it is due. Reservations queue fairly (the bucket may go negative).
* ``retry_loop_backoff(fn, on_error)`` is upstream's ``retryLoopBackoff`` (2022,
  peering-protocol.md §4.1): before each iteration wait on a 0.2/s, burst-5 bucket; after an
  error sleep ``2**n`` seconds (n = 1, 2, ... until the sleep reaches 256 s), back to n = 0 after
  a success. ``fn`` returning True ends the loop (upstream cancels the loop's context instead);
  cancelling the caller ends it at once, sleeps included.
* ``retry_loop_backoff_peering(fn, on_error, retry_time)`` is the later upstream's
  ``retryLoopBackoffPeering`` for a dialer (agent/consul/leader_peering.go): no bucket; after the
  n-th error in a row sleep ``retry_time(n, error)``; ``fn`` returning ends the loop. Its schedule
  is ``peering_retry_timeout`` (upstream ``peeringRetryTimeout``): after FailedPrecondition
  (a follower answered) 8 ms for the first 5 errors, then doubling up to 8.192 s; after
  ResourceExhausted 8.192 s; otherwise 2**n s up to 64 s.
* ``Context``: a cancellation signal that is *not* a trio cancel scope, for the one place where
  peerkit reproduces Go's behaviour on purpose (bug ``deletion-no-stop``): a cancelled context
  makes ``TokenBucket.wait(ctx)`` and ``ctx.guard()`` fail at once with ``ContextCancelled``
  instead of cancelling the task, so a loop that does not check its context keeps spinning.

Constants: ``DELETION_RATE = DELETION_BURST = 10`` (``defaultDeletionApplyRate``, §3.2),
``LOOP_RATE_LIMIT = 0.2``, ``RETRY_BUCKET_SIZE = 5``, ``MAX_RETRY_BACKOFF = 256`` (§4.1).

May import: the standard library and trio.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import trio

__all__ = [
    "DELETION_BURST",
    "DELETION_RATE",
    "LOOP_RATE_LIMIT",
    "MAX_RETRY_BACKOFF",
    "RETRY_BUCKET_SIZE",
    "Context",
    "ContextCancelled",
    "TokenBucket",
    "backoff_seconds",
    "peering_retry_timeout",
    "retry_loop_backoff",
    "retry_loop_backoff_peering",
]

DELETION_RATE = 10.0  # raft applies per second (defaultDeletionApplyRate)
DELETION_BURST = 10
LOOP_RATE_LIMIT = 0.2  # loopRateLimit
RETRY_BUCKET_SIZE = 5  # retryBucketSize
MAX_RETRY_BACKOFF = 256  # maxRetryBackoff, seconds
# the dialer's schedule (agent/consul/leader_peering.go, the later upstream)
FAST_CONN_RETRY_TIMEOUT = 0.008  # fastConnRetryTimeout, seconds
MAX_FAST_CONN_RETRIES = 5  # maxFastConnRetries
MAX_FAST_RETRY_BACKOFF = 8.192  # maxFastRetryBackoff, seconds
MAX_RETRY_BACKOFF_PEERING = 64  # maxRetryBackoffPeering, seconds


class ContextCancelled(Exception):
    """A wait refused because its ``Context`` is cancelled (Go's ``context canceled``)."""

    def __init__(self) -> None:
        super().__init__("context canceled")


class Context:
    """A Go-style cancellation signal. ``cancel()`` is synchronous and idempotent."""

    def __init__(self) -> None:
        self._event = trio.Event()
        self._scopes: set[trio.CancelScope] = set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def cancel(self) -> None:
        self._event.set()
        for scope in list(self._scopes):
            scope.cancel()

    async def wait(self) -> None:
        """Wait until the context is cancelled."""
        await self._event.wait()

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Run the block until it ends or the context is cancelled; then ContextCancelled.

        Like passing ``ctx`` to a Go call: the call fails (it does not cancel the caller)."""
        with trio.CancelScope() as scope:
            self._scopes.add(scope)
            if self.cancelled:
                scope.cancel()
            try:
                yield
            finally:
                self._scopes.discard(scope)
        if scope.cancelled_caught:
            raise ContextCancelled()


class TokenBucket:
    """A token bucket on trio's clock (Go ``rate.Limiter`` semantics, ``Wait`` only)."""

    def __init__(self, rate: float, burst: int) -> None:
        if isinstance(rate, bool) or not isinstance(rate, int | float):
            raise TypeError(f"rate must be a number, not {type(rate).__name__}")
        if not math.isfinite(rate) or rate <= 0:
            raise ValueError(f"rate must be a finite number > 0, got {rate!r}")
        if isinstance(burst, bool) or not isinstance(burst, int):
            raise TypeError(f"burst must be an int, not {type(burst).__name__}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self.rate = float(rate)
        self.burst = burst
        self._tokens = float(burst)
        self._last: float | None = None
        self.waits = 0  # how many tokens were granted (for tests and metrics)

    def _advance(self, now: float) -> None:
        if self._last is not None and now > self._last:
            self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
        if self._last is None or now > self._last:
            self._last = now

    def tokens(self) -> float:
        """Tokens available now (negative while reservations are queued)."""
        self._advance(trio.current_time())
        return self._tokens

    async def wait(self, ctx: Context | None = None) -> None:
        """Take one token, sleeping until it is due.

        With a cancelled ``ctx`` this fails at once with ContextCancelled (and a ``ctx``
        cancelled during the sleep ends it with ContextCancelled), as Go's ``Wait(ctx)`` does;
        without ``ctx`` only trio cancellation interrupts the sleep."""
        if ctx is not None and ctx.cancelled:
            await trio.lowlevel.checkpoint()
            raise ContextCancelled()
        now = trio.current_time()
        self._advance(now)
        self._tokens -= 1.0
        delay = 0.0 if self._tokens >= 0 else -self._tokens / self.rate
        try:
            if ctx is None:
                await trio.sleep_until(now + delay)
            else:
                with ctx.guard():
                    await trio.sleep_until(now + delay)
        except BaseException:
            self._tokens += 1.0  # give the reservation back
            raise
        self.waits += 1


def backoff_seconds(failed_attempts: int) -> int:
    """The sleep after the ``failed_attempts``-th consecutive error (1 → 2 s, ... capped 256)."""
    n = 0
    for _ in range(failed_attempts):
        if (1 << n) < MAX_RETRY_BACKOFF:
            n += 1
    return 1 << n


async def retry_loop_backoff(
    fn: Callable[[], Awaitable[bool | None]],
    on_error: Callable[[Exception], None],
    *,
    limiter: TokenBucket | None = None,
) -> None:
    """Run ``fn`` forever with upstream's pacing; ``fn`` returning True stops the loop.

    An exception from ``fn`` is passed to ``on_error`` and followed by the backoff sleep."""
    bucket = limiter if limiter is not None else TokenBucket(LOOP_RATE_LIMIT, RETRY_BUCKET_SIZE)
    failed_attempts = 0
    while True:
        await bucket.wait()
        if (1 << failed_attempts) < MAX_RETRY_BACKOFF:
            failed_attempts += 1
        retry_time = 1 << failed_attempts
        try:
            stop = await fn()
        except Exception as exc:
            on_error(exc)
            await trio.sleep(retry_time)
            continue
        if stop:
            return
        failed_attempts = 0


def peering_retry_timeout(failed_attempts: int, code: str | None) -> float:
    """Seconds a dialer waits after its ``failed_attempts``-th error in a row (1 or more);
    ``code`` is the gRPC status code name of the error, None if it was not a status."""
    if code == "FAILED_PRECONDITION":
        # a follower answered: the leader is expected to be found at once
        if failed_attempts <= MAX_FAST_CONN_RETRIES:
            return FAST_CONN_RETRY_TIMEOUT
        shift = min(failed_attempts - MAX_FAST_CONN_RETRIES, 16)
        return min(FAST_CONN_RETRY_TIMEOUT * (1 << shift), MAX_FAST_RETRY_BACKOFF)
    if code == "RESOURCE_EXHAUSTED":
        return MAX_FAST_RETRY_BACKOFF
    if (1 << min(failed_attempts, 16)) < MAX_RETRY_BACKOFF_PEERING:
        return float(1 << failed_attempts)
    return float(MAX_RETRY_BACKOFF_PEERING)


async def retry_loop_backoff_peering(
    fn: Callable[[], Awaitable[object]],
    on_error: Callable[[Exception], None],
    retry_time: Callable[[int, Exception], float],
) -> None:
    """Run ``fn`` until it returns; after the n-th exception in a row sleep ``retry_time(n,
    exc)``. Upstream never resets the count: a success ends the loop."""
    failed_attempts = 0
    while True:
        try:
            await fn()
        except Exception as exc:
            on_error(exc)
            failed_attempts += 1
            await trio.sleep(retry_time(failed_attempts, exc))
            continue
        return
