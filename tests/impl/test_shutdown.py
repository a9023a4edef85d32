"""Graceful stream shutdown over the in-memory network (virtual time), in both directions.

Upstream's sequences A and B (peering-protocol.md §5.6): the deleting side sends Terminated; the
other side marks its row TERMINATED; the dialer half-closes and drains; the acceptor drains until
that half-close; both RPC ends see a clean end (status OK / EOF). The network's per-direction
hold/release proves the order: while one direction is held, the side waiting on it is still
draining.

May import: pytest, trio, peerkit.impl (testing, transport), peerkit.proto,
peerkit.model.vocabulary.
"""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from peerkit.impl.testing import (
    Pair,
    fields,
    let_time_pass,
    log_records,
    memory_call,
    peer,
    two_clusters,
    until,
)
from peerkit.impl.transport import MemoryNetwork, StatusCode
from peerkit.impl.transport.base import OK
from peerkit.model.vocabulary import WARN_DRAIN_FAILED, PeeringState
from peerkit.proto import peerstream_pb2

RM = peerstream_pb2.ReplicationMessage
C2S = "client→server"
S2C = "server→client"
TERMINATED_BYTES = RM(terminated=RM.Terminated()).SerializeToString()


def stream_calls(net: MemoryNetwork) -> int:
    return sum(1 for c in net.streams if c.method.endswith("/StreamResources"))


def trace_of(net: MemoryNetwork, call_id: int) -> list[tuple[object, ...]]:
    return [e for e in net.trace if len(e) > 1 and e[1] == call_id]


def position(trace: list[tuple[object, ...]], *event: object) -> int:
    for i, e in enumerate(trace):
        if e[0] == event[0] and e[2:2 + len(event) - 1] == event[1:]:
            return i
    raise AssertionError(f"{event} not in trace {trace}")


@pytest.fixture
def caplog_info(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="peerkit")
    return caplog


async def test_dialer_deletes(autojump_clock: trio.testing.MockClock,
                              caplog_info: pytest.LogCaptureFixture) -> None:
    net = MemoryNetwork()
    async with two_clusters(net) as (dc1, dc2):
        await peer(dc1, dc2)
        pair = Pair(dc1, dc2)
        call = memory_call(net)
        row1, row2 = dc1.row("dc2"), dc2.row("dc1")
        assert row1 is not None and row2 is not None
        await dc2.client.peering_delete("dc1")
        # the acceptor is told: TERMINATED, its imported data removed, the row kept
        await until(dc1.store, lambda: dc1.state("dc2") is PeeringState.TERMINATED
                    and dc1.imported("dc2") == [] and dc1.store.trust_bundle_read("dc2") is None)
        # the dialer removes its data and then its row
        await until(dc2.store, lambda: dc2.row("dc1") is None)
        assert dc2.imported("dc1") == [] and dc2.store.trust_bundle_read("dc1") is None
        await trio.testing.wait_all_tasks_blocked()
        # both ends ended cleanly: the acceptor drained to the half-close and returned OK, the
        # dialer drained to that EOF
        assert call.server_outcome == OK and call.client_outcome == OK
        trace = trace_of(net, call.id)
        assert position(trace, "deliver", C2S, TERMINATED_BYTES) < position(
            trace, "half-close arrives") < position(trace, "status arrives", "OK")
        closed = log_records(caplog_info, "closed outbound stream")
        assert [fields(r)["drained"] for r in closed] == ["EOF"]
        assert log_records(caplog_info, WARN_DRAIN_FAILED) == []
        # the dialer stopped retrying; its status was deleted; the acceptor's is disconnected
        t1, t2 = pair.dc1.server.leadership, pair.dc2.server.leadership
        assert t1 is not None and t2 is not None
        assert t2.dialers == {} and t2.tracker.stream_status(row2.id) is None
        status1 = t1.tracker.stream_status(row1.id)
        assert status1 is not None and not status1.connected
        # nothing redials, the TERMINATED row stays
        await let_time_pass(600)
        assert stream_calls(net) == 1
        assert dc1.state("dc2") is PeeringState.TERMINATED


async def test_acceptor_deletes(autojump_clock: trio.testing.MockClock,
                                caplog_info: pytest.LogCaptureFixture) -> None:
    net = MemoryNetwork()
    async with two_clusters(net) as (dc1, dc2):
        await peer(dc1, dc2)
        call = memory_call(net)
        row1 = dc1.row("dc2")
        assert row1 is not None
        await dc1.client.peering_delete("dc2")
        await until(dc2.store, lambda: dc2.state("dc1") is PeeringState.TERMINATED
                    and dc2.imported("dc1") == [] and dc2.store.trust_bundle_read("dc1") is None)
        await until(dc1.store, lambda: dc1.row("dc2") is None)
        assert dc1.imported("dc2") == [] and dc1.store.trust_bundle_read("dc2") is None
        await trio.testing.wait_all_tasks_blocked()
        assert call.server_outcome == OK and call.client_outcome == OK
        trace = trace_of(net, call.id)
        assert position(trace, "deliver", S2C, TERMINATED_BYTES) < position(
            trace, "half-close arrives") < position(trace, "status arrives", "OK")
        assert log_records(caplog_info, WARN_DRAIN_FAILED) == []
        t1, t2 = dc1.server.leadership, dc2.server.leadership
        assert t1 is not None and t2 is not None
        assert t1.tracker.stream_status(row1.id) is None  # deleted after sending Terminated
        assert t2.dialers == {}
        await let_time_pass(600)
        assert stream_calls(net) == 1  # the dialer's sync pass skips the TERMINATED row
        assert dc2.state("dc1") is PeeringState.TERMINATED


async def test_dialer_half_closes_then_drains(autojump_clock: trio.testing.MockClock) -> None:
    """Dialer deletes; the acceptor→dialer direction is held: the acceptor got Terminated and
    the half-close and returned, but the dialer is still draining until the status arrives."""
    net = MemoryNetwork()
    async with two_clusters(net) as (dc1, dc2):
        await peer(dc1, dc2)
        call = memory_call(net)
        row2 = dc2.row("dc1")
        assert row2 is not None
        call.hold(S2C)
        await dc2.client.peering_delete("dc1")
        await until(dc1.store, lambda: dc1.state("dc2") is PeeringState.TERMINATED)
        await trio.testing.wait_all_tasks_blocked()
        trace = trace_of(net, call.id)
        assert position(trace, "deliver", C2S, TERMINATED_BYTES) < position(
            trace, "half-close arrives")
        assert call.server_outcome == OK  # the acceptor drained to EOF and returned
        assert call.client_outcome is None  # ... but the dialer has not seen the end yet
        t2 = dc2.server.leadership
        assert t2 is not None
        loop = t2.dialers.get(row2.id)
        assert loop is not None and loop.in_attempt  # still draining, not retrying
        await let_time_pass(300)  # the drain has no deadline of its own
        assert call.client_outcome is None and loop.in_attempt
        call.release(S2C)
        await trio.testing.wait_all_tasks_blocked()
        assert call.client_outcome == OK
        assert t2.dialers == {} and loop.stopped_by == "teardown"


async def test_acceptor_drains_until_the_half_close(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Acceptor deletes; the dialer→acceptor direction is held: the dialer got Terminated and
    half-closed, but the acceptor keeps its RPC open until that half-close arrives."""
    net = MemoryNetwork()
    async with two_clusters(net) as (dc1, dc2):
        await peer(dc1, dc2)
        call = memory_call(net)
        call.hold(C2S)
        await dc1.client.peering_delete("dc2")
        await until(dc2.store, lambda: dc2.state("dc1") is PeeringState.TERMINATED)
        await trio.testing.wait_all_tasks_blocked()
        assert "half-close" in call.in_flight(C2S)  # sent, not delivered
        assert call.server_outcome is None  # the acceptor is draining
        await let_time_pass(300)
        assert call.server_outcome is None and call.client_outcome is None
        call.release(C2S)
        await trio.testing.wait_all_tasks_blocked()
        assert call.server_outcome == OK and call.client_outcome == OK


async def test_drain_ending_badly_is_logged(autojump_clock: trio.testing.MockClock,
                                            caplog_info: pytest.LogCaptureFixture) -> None:
    net = MemoryNetwork()
    async with two_clusters(net) as (dc1, dc2):
        await peer(dc1, dc2)
        call = memory_call(net)
        call.hold(S2C)
        await dc2.client.peering_delete("dc1")
        await until(dc1.store, lambda: dc1.state("dc2") is PeeringState.TERMINATED)
        await trio.testing.wait_all_tasks_blocked()
        call.reset()  # the connection drops while the dialer drains
        await trio.testing.wait_all_tasks_blocked()
        assert call.client_outcome is not None
        assert call.client_outcome.code is StatusCode.UNAVAILABLE
        warnings = log_records(caplog_info, WARN_DRAIN_FAILED)
        assert len(warnings) == 1 and "connection reset" in fields(warnings[0])["error"]
        t2 = dc2.server.leadership
        assert t2 is not None and t2.dialers == {}  # still stops: it sent Terminated


async def test_python_server_eof_before_cancel(autojump_clock: trio.testing.MockClock) -> None:
    """With Python gRPC's "EOF first, then cancelled" server behaviour, a graceful shutdown is
    unchanged (the dialer never cancels in the fixed protocol)."""
    net = MemoryNetwork(eof_before_cancel=True)
    async with two_clusters(net) as (dc1, dc2):
        await peer(dc1, dc2)
        call = memory_call(net)
        await dc2.client.peering_delete("dc1")
        await until(dc1.store, lambda: dc1.state("dc2") is PeeringState.TERMINATED
                    and dc1.imported("dc2") == [])
        await trio.testing.wait_all_tasks_blocked()
        assert call.server_outcome == OK and call.client_outcome == OK


async def test_both_sides_delete_at_once(autojump_clock: trio.testing.MockClock,
                                         caplog_info: pytest.LogCaptureFixture) -> None:
    """Both operators delete: each side sends Terminated and drains past the other's; neither
    row turns TERMINATED (a row marked for deletion stays marked) and both are removed."""
    net = MemoryNetwork()
    async with two_clusters(net) as (dc1, dc2):
        await peer(dc1, dc2)
        call = memory_call(net)
        call.hold(C2S)
        call.hold(S2C)
        await dc1.client.peering_delete("dc2")
        await dc2.client.peering_delete("dc1")
        await trio.testing.wait_all_tasks_blocked()
        assert TERMINATED_BYTES in call.in_flight(C2S) and TERMINATED_BYTES in call.in_flight(S2C)
        call.release(C2S)
        call.release(S2C)
        await until(dc1.store, lambda: dc1.row("dc2") is None and dc1.imported("dc2") == [])
        await until(dc2.store, lambda: dc2.row("dc1") is None and dc2.imported("dc1") == [])
        await trio.testing.wait_all_tasks_blocked()
        assert call.server_outcome == OK and call.client_outcome == OK
        assert log_records(caplog_info, WARN_DRAIN_FAILED) == []
        assert len(log_records(caplog_info, "local peering is already inactive; left as it is")
                   ) == 0  # each side's handler had already returned when the other's arrived
