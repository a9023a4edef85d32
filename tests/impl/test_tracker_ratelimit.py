"""Unit tests of the stream tracker (peerkit.impl.tracker) and the pacing primitives
(peerkit.impl.ratelimit) under trio's MockClock.

The tracker tests port upstream's TestStreamTracker_EnsureConnectedDisconnected and
TestStreamTracker_connectedStreams (peering-protocol.md §7.3) to peerkit's API.

May import: pytest, trio and peerkit.impl.{tracker,ratelimit}, peerkit.model.vocabulary.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import pytest
import trio
import trio.testing

from peerkit.impl.ratelimit import (
    DELETION_BURST,
    DELETION_RATE,
    MAX_RETRY_BACKOFF,
    Context,
    ContextCancelled,
    TokenBucket,
    backoff_seconds,
    peering_retry_timeout,
    retry_loop_backoff,
    retry_loop_backoff_peering,
)
from peerkit.impl.tracker import DuplicateStreamError, StreamStatus, StreamTracker
from peerkit.model.vocabulary import ERR_ACTIVE_STREAM

# ---------------------------------------------------------------------------------------------
# tracker


async def test_ensure_connected_disconnected(autojump_clock: trio.testing.MockClock) -> None:
    tracker = StreamTracker()
    peer = "63b60245-c475-426b-b314-4588d210859d"
    # new
    done = tracker.connected(peer)
    status = tracker.stream_status(peer)
    assert status == StreamStatus(connected=True)
    assert not done.is_set()
    # duplicate
    with pytest.raises(DuplicateStreamError) as info:
        tracker.connected(peer)
    assert str(info.value) == ERR_ACTIVE_STREAM.format(id=peer)
    assert info.value.message == f'there is an active stream for the given PeerID "{peer}"'
    # ack
    await trio.sleep(1)
    tracker.track_ack(peer)
    status = tracker.stream_status(peer)
    assert status is not None and status.last_ack == trio.current_time()
    # disconnect
    await trio.sleep(1)
    tracker.disconnected(peer, "boom")
    status = tracker.stream_status(peer)
    assert status is not None
    assert not status.connected
    assert status.disconnect_time == trio.current_time()
    assert status.disconnect_error_message == "boom"
    assert status.last_ack is not None  # statistics survive a disconnect
    # reconnect: DisconnectTime cleared, SAME done event
    again = tracker.connected(peer)
    assert again is done
    status = tracker.stream_status(peer)
    assert status is not None and status.connected
    assert status.disconnect_time is None and status.disconnect_error_message == ""
    # delete gives "not found"
    tracker.delete_status(peer)
    assert tracker.stream_status(peer) is None
    tracker.disconnected(peer, "late")  # a missing entry: no-op
    assert tracker.stream_status(peer) is None
    # a fresh entry gets a fresh done event
    assert tracker.connected(peer) is not done


async def test_connected_streams() -> None:
    tracker = StreamTracker()
    assert tracker.connected_streams() == {}
    done_foo = tracker.connected("foo")
    done_bar = tracker.connected("bar")
    tracker.disconnected("bar", None)
    done_baz = tracker.connected("baz")
    streams = tracker.connected_streams()
    assert streams == {"foo": done_foo, "baz": done_baz}
    assert done_bar not in streams.values()
    tracker.close_done("foo")
    tracker.close_done("foo")  # idempotent
    tracker.close_done("missing")  # no-op
    assert done_foo.is_set() and not done_baz.is_set()


async def test_status_is_a_copy_and_statistics() -> None:
    tracker = StreamTracker(clock=lambda: 42.0)
    tracker.connected("p")
    before = tracker.stream_status("p")
    tracker.track_nack("p", "client peer was unable to apply resource: no")
    tracker.track_send_error("p", "EOF")
    tracker.track_receive_success("p")
    tracker.track_receive_error("p", "bad")
    tracker.track_heartbeat("p")
    after = tracker.stream_status("p")
    assert before == StreamStatus(connected=True)  # unchanged copy
    assert after == StreamStatus(
        connected=True, last_nack=42.0,
        last_nack_message="client peer was unable to apply resource: no",
        last_send_error=42.0, last_send_error_message="EOF", last_receive_success=42.0,
        last_receive_error=42.0, last_receive_error_message="bad", last_heartbeat=42.0)
    tracker.track_ack("missing")  # statistics for a missing entry are dropped
    assert tracker.stream_status("missing") is None
    with pytest.raises(ValueError):
        tracker.connected("")
    with pytest.raises(TypeError):
        tracker.connected(7)  # type: ignore[arg-type]


def test_statistics_read_as_the_updates_in_order_built_them() -> None:
    """The tracker folds statistics updates into the status only when it is read (issue 10):
    whatever the mix of updates, (dis)connects and reads, every read equals the status that
    applying each update at once, in order, gives."""
    rng = random.Random(10)
    now = [0.0]
    tracker = StreamTracker(clock=lambda: now[0])
    tracker.connected("p")
    expected = StreamStatus()
    updates = {
        "track_ack": ("last_ack",),
        "track_nack": ("last_nack", "last_nack_message"),
        "track_send_error": ("last_send_error", "last_send_error_message"),
        "track_receive_success": ("last_receive_success",),
        "track_receive_error": ("last_receive_error", "last_receive_error_message"),
        "track_heartbeat": ("last_heartbeat",),
    }
    for step in range(500):
        now[0] = float(step + 1)
        kind = rng.choice([*updates, "read", "all", "down", "up"])
        if kind == "read":
            assert tracker.stream_status("p") == expected
        elif kind == "all":
            assert tracker.all_statuses() == {"p": expected}
        elif kind == "down":
            tracker.disconnected("p", f"e{step}")
            expected = replace(expected, connected=False, disconnect_time=now[0],
                               disconnect_error_message=f"e{step}")
        elif kind == "up":
            if not expected.connected:
                tracker.connected("p")
                expected = replace(expected, connected=True, disconnect_time=None,
                                   disconnect_error_message="")
        else:
            fields = updates[kind]
            args = () if len(fields) == 1 else (f"m{step}",)
            getattr(tracker, kind)("p", *args)
            expected = replace(expected, **dict(zip(fields, (now[0], *args), strict=True)))
    assert tracker.stream_status("p") == expected


# ---------------------------------------------------------------------------------------------
# token bucket


async def test_token_bucket_burst_then_rate(autojump_clock: trio.testing.MockClock) -> None:
    bucket = TokenBucket(DELETION_RATE, DELETION_BURST)
    start = trio.current_time()
    times = []
    for _ in range(30):
        await bucket.wait()
        times.append(trio.current_time() - start)
    assert times[:10] == [0.0] * 10  # the burst
    # then one token every 1/10 s
    for i, t in enumerate(times[10:], start=1):
        assert t == pytest.approx(i / DELETION_RATE)
    assert bucket.waits == 30


async def test_token_bucket_refills_up_to_burst(autojump_clock: trio.testing.MockClock) -> None:
    bucket = TokenBucket(2.0, 3)
    for _ in range(3):
        await bucket.wait()
    assert bucket.tokens() == pytest.approx(0.0)
    await trio.sleep(100)  # refills, but never beyond the burst
    assert bucket.tokens() == pytest.approx(3.0)


async def test_token_bucket_concurrent_waiters_are_spaced(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bucket = TokenBucket(1.0, 1)
    done: list[float] = []

    async def taker() -> None:
        await bucket.wait()
        done.append(trio.current_time())

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(taker)
    assert sorted(t - start for t in done) == pytest.approx([0.0, 1.0, 2.0, 3.0])


async def test_token_bucket_cancelled_wait_returns_its_token(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bucket = TokenBucket(1.0, 1)
    await bucket.wait()
    with trio.move_on_after(0.5):
        await bucket.wait()
    assert bucket.waits == 1
    assert bucket.tokens() == pytest.approx(0.5)  # refilled for 0.5 s; nothing was taken


def test_token_bucket_validation() -> None:
    for rate, burst, exc in ((0, 1, ValueError), (1.0, 0, ValueError), ("1", 1, TypeError),
                             (1.0, 1.5, TypeError), (float("inf"), 1, ValueError)):
        with pytest.raises(exc):
            TokenBucket(rate, burst)  # type: ignore[arg-type]


async def test_context_makes_waits_fail_at_once(autojump_clock: trio.testing.MockClock) -> None:
    ctx = Context()
    bucket = TokenBucket(1.0, 1)
    await bucket.wait(ctx)
    start = trio.current_time()

    async def cancel_later() -> None:
        await trio.sleep(0.25)
        ctx.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cancel_later)
        with pytest.raises(ContextCancelled):
            await bucket.wait(ctx)  # would sleep 1 s; the context ends it
    assert trio.current_time() - start == pytest.approx(0.25)
    with pytest.raises(ContextCancelled):
        await bucket.wait(ctx)  # cancelled already: fails without waiting
    assert trio.current_time() - start == pytest.approx(0.25)
    with pytest.raises(ContextCancelled), ctx.guard():
        await trio.sleep_forever()
    assert str(ContextCancelled()) == "context canceled"


# ---------------------------------------------------------------------------------------------
# retry loop


def test_backoff_schedule() -> None:
    assert [backoff_seconds(n) for n in range(1, 11)] == [2, 4, 8, 16, 32, 64, 128, 256, 256,
                                                          256]
    assert MAX_RETRY_BACKOFF == 256


async def test_retry_loop_backs_off_and_resets(autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()
    calls: list[float] = []
    errors: list[str] = []
    # fail 9 times, succeed once, fail twice more, then stop
    script = ["err"] * 9 + ["ok"] + ["err", "err", "stop"]

    async def fn() -> bool:
        calls.append(trio.current_time() - start)
        step = script[len(calls) - 1]
        if step == "err":
            raise RuntimeError(f"attempt {len(calls)}")
        return step == "stop"

    await retry_loop_backoff(fn, lambda exc: errors.append(str(exc)))
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    # 2, 4, ..., 256, 256 after errors; after the success the backoff starts again at 2 s
    assert gaps[:9] == pytest.approx([2, 4, 8, 16, 32, 64, 128, 256, 256])
    assert gaps[9] == pytest.approx(0.0)  # the success is followed at once (bucket permitting)
    assert gaps[10] == pytest.approx(2.0)
    assert len(errors) == 11


async def test_retry_loop_paces_successful_iterations(
    autojump_clock: trio.testing.MockClock,
) -> None:
    start = trio.current_time()
    calls: list[float] = []

    async def fn() -> bool:
        calls.append(trio.current_time() - start)
        return len(calls) == 8

    await retry_loop_backoff(fn, lambda exc: None)
    # burst of 5, then one per 5 s (0.2/s)
    assert calls == pytest.approx([0, 0, 0, 0, 0, 5, 10, 15])


async def test_retry_loop_sleep_ends_on_cancel(autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()

    async def fail() -> bool:
        raise RuntimeError("no")

    with trio.move_on_after(3):
        await retry_loop_backoff(fail, lambda exc: None)
    assert trio.current_time() - start == pytest.approx(3.0)


def test_dialer_backoff_schedule_is_the_later_upstreams() -> None:
    """peeringRetryTimeout (agent/consul/leader_peering.go): FailedPrecondition (a follower
    answered) retries after 8 ms five times, then doubles up to 8.192 s; ResourceExhausted
    waits 8.192 s; anything else 2, 4, ... 64 s and never longer."""
    fast = [peering_retry_timeout(n, "FAILED_PRECONDITION") for n in range(1, 14)]
    assert fast == pytest.approx([0.008] * 5 + [0.016, 0.032, 0.064, 0.128, 0.256, 0.512,
                                                1.024, 2.048])
    assert peering_retry_timeout(40, "FAILED_PRECONDITION") == pytest.approx(8.192)
    assert peering_retry_timeout(1, "RESOURCE_EXHAUSTED") == pytest.approx(8.192)
    assert [peering_retry_timeout(n, None) for n in range(1, 10)] == [2, 4, 8, 16, 32, 64, 64,
                                                                     64, 64]
    assert peering_retry_timeout(10**6, "UNAVAILABLE") == 64


async def test_dialer_loop_counts_errors_without_a_bucket(
        autojump_clock: trio.testing.MockClock) -> None:
    """retryLoopBackoffPeering: no rate limiter, the n-th error in a row waits retry_time(n)."""
    start = trio.current_time()
    calls: list[float] = []
    seen: list[int] = []

    async def attempt() -> None:
        calls.append(trio.current_time() - start)
        if len(calls) < 8:
            raise ValueError("refused")

    def retry_time(n: int, exc: Exception) -> float:
        seen.append(n)
        return peering_retry_timeout(n, "FAILED_PRECONDITION")

    await retry_loop_backoff_peering(attempt, lambda exc: None, retry_time)
    assert seen == [1, 2, 3, 4, 5, 6, 7]
    assert calls == pytest.approx([0, 0.008, 0.016, 0.024, 0.032, 0.040, 0.056, 0.088])
