"""A peer that stops reading (issue 8, reliability): the sending server's memory stays bounded
and the heartbeat timeout still ends the stream.

The in-memory network is given a send window (as gRPC's flow control has): a stream end whose
peer does not read can have at most that many messages undelivered, and its ``send`` waits for
room. The server's stream must not wait there for ever: a send that has not completed within
the heartbeat timeout ends the stream as a heartbeat timeout (whatever the peer still sends:
the server keeps taking messages in meanwhile, see test_mutual_burst.py).
Virtual time; the test plays the dialer with a raw stream.

May import: pytest, trio, peerkit.impl (stream, testing, transport), peerkit.proto,
peerkit.model.vocabulary.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from peerkit.impl.stream import HEARTBEAT_TIMEOUT
from peerkit.impl.testing import (
    Cluster,
    memory_call,
    open_message,
    open_raw_stream,
    register_and_export,
    running_cluster,
    token_and_secret,
)
from peerkit.impl.transport import Direction, MemoryNetwork, StreamFailed
from peerkit.model.vocabulary import ERR_HEARTBEAT_TIMEOUT
from peerkit.proto.peerstream_pb2 import ReplicationMessage as RM

WINDOW = 4


@pytest.fixture
async def net_and_dc1() -> AsyncIterator[tuple[MemoryNetwork, Cluster]]:
    net = MemoryNetwork(send_window=WINDOW)
    async with running_cluster(net, "dc1", "dc1:8502") as cluster:
        # more to send at once than the window holds: bundle, service list, 6 services, ...
        await register_and_export(cluster, [f"svc-{i}" for i in range(6)], "dc2")
        yield net, cluster


@pytest.mark.parametrize("peer_sends_heartbeats", [False, True])
async def test_a_peer_that_stops_reading_is_timed_out_with_bounded_memory(
    autojump_clock: trio.testing.MockClock,
    net_and_dc1: tuple[MemoryNetwork, Cluster],
    peer_sends_heartbeats: bool,
) -> None:
    net, dc1 = net_and_dc1
    peer_id, secret = await token_and_secret(dc1)
    stream = await open_raw_stream(dc1.client)
    await stream.send(open_message(peer_id, secret))
    call = memory_call(net)
    started = trio.current_time()
    queued: list[int] = []  # what waits undelivered towards the peer, every 5 s

    async def stalled_peer() -> None:
        # never reads; may keep sending heartbeats (the server takes them in, but they do not
        # unblock its sends: only a send completing counts against the stall)
        while True:
            queued.append(len(call.in_flight(Direction.SERVER_TO_CLIENT)))
            if peer_sends_heartbeats:
                with trio.move_on_after(5):
                    await stream.send(RM(heartbeat=RM.Heartbeat()))
            await trio.sleep(5)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stalled_peer)
        with trio.fail_after(10 * HEARTBEAT_TIMEOUT):  # virtual time
            await call.server.wait_finished()
        nursery.cancel_scope.cancel()
    ended = trio.current_time() - started
    assert len(queued) >= HEARTBEAT_TIMEOUT / 10  # sampled all along
    assert max(queued) == WINDOW  # the window filled, and no more was queued
    assert HEARTBEAT_TIMEOUT <= ended <= HEARTBEAT_TIMEOUT + 15, ended
    row = dc1.row("dc2")
    term = dc1.server.leadership
    assert row is not None and term is not None
    status = term.tracker.stream_status(row.id)
    assert status is not None and not status.connected
    assert status.disconnect_error_message == ERR_HEARTBEAT_TIMEOUT
    # the peer, reading at last, gets what was queued and then the ending
    with pytest.raises(StreamFailed):
        while True:
            await stream.receive()


async def test_the_send_window_blocks_only_while_the_peer_does_not_read(
    autojump_clock: trio.testing.MockClock,
    net_and_dc1: tuple[MemoryNetwork, Cluster],
) -> None:
    """A normal peer that reads gets everything through the same window."""
    net, dc1 = net_and_dc1
    peer_id, secret = await token_and_secret(dc1)
    stream = await open_raw_stream(dc1.client)
    await stream.send(open_message(peer_id, secret))
    seen: set[str] = set()
    with trio.fail_after(60):
        while len(seen) < 6:
            msg = await stream.receive()
            if msg.WhichOneof("Payload") == "response" and msg.response.ResourceID.startswith(
                    "svc-"):
                seen.add(msg.response.ResourceID)
    assert memory_call(net).server_outcome is None  # still running


def test_a_bad_send_window_is_refused() -> None:
    for bad in (0, -1, 1.5, True, "4"):
        with pytest.raises(ValueError, match="send_window"):
            MemoryNetwork(send_window=bad)  # type: ignore[arg-type]


async def test_a_slow_reader_is_not_cut_off_by_a_long_burst(
    autojump_clock: trio.testing.MockClock,
    net_and_dc1: tuple[MemoryNetwork, Cluster],
) -> None:
    """A peer that reads (one message every 10 s) and offers a heartbeat as often: the server's
    sends complete one by one, so a burst of sends lasting several heartbeat timeouts goes on
    (only a send stalled for the whole timeout ends the stream)."""
    net, dc1 = net_and_dc1
    await register_and_export(dc1, [f"more-{i:02d}" for i in range(30)], "dc2")
    peer_id, secret = await token_and_secret(dc1)
    stream = await open_raw_stream(dc1.client)
    await stream.send(open_message(peer_id, secret))
    call = memory_call(net)
    started = trio.current_time()
    seen: set[str] = set()
    with trio.fail_after(100 * HEARTBEAT_TIMEOUT):  # virtual time
        while len(seen) < 36:
            await trio.sleep(10)
            # (a stream handler before issue 8 took nothing in while it sent its burst: the
            # move_on keeps this test about the sender alone)
            with trio.move_on_after(1):
                await stream.send(RM(heartbeat=RM.Heartbeat()))
            msg = await stream.receive()
            if msg.WhichOneof("Payload") == "response":
                seen.add(msg.response.ResourceID)
    assert trio.current_time() - started > 2 * HEARTBEAT_TIMEOUT  # a long burst indeed
    assert call.server_outcome is None  # still running
    row = dc1.row("dc2")
    term = dc1.server.leadership
    assert row is not None and term is not None
    status = term.tracker.stream_status(row.id)
    assert status is not None and status.connected
