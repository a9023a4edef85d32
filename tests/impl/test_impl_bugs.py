"""Bug detection: each historical bug switch (decision (d)) against the scenario that exposes it.

Every test is parametrized: with the switch on it asserts the BUGGY outcome the reference
describes (peering-protocol.md, bug table), with it off the correct one. All of them run on the
in-memory network in virtual time; the network's hold/reset controls make the races
deterministic.

May import: pytest, trio, peerkit.impl (codec, store, testing, transport), peerkit.model.vocabulary.
"""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from peerkit.impl.codec import METHOD_STREAM_RESOURCES
from peerkit.impl.store import CATALOG, PEERINGS, TRUST_BUNDLES
from peerkit.impl.testing import (
    fields,
    imported_instances,
    let_time_pass,
    log_records,
    memory_call,
    peer,
    running_cluster,
    two_clusters,
    until,
)
from peerkit.impl.transport import MemoryNetwork, StatusCode, StreamFailed
from peerkit.model.vocabulary import ERR_IMPORT_INACTIVE, ERR_WRITE_MARKED, PeeringState

ON_OFF = pytest.mark.parametrize("bug", [False, True], ids=["fixed", "bug"])
C2S = "client→server"
ONE_NODE_PER_BATCH = len("node-0000") + len("default") + len("dc2")
ALL = (PEERINGS, CATALOG, TRUST_BUNDLES)


def switch(bug: bool, name: str) -> frozenset[str]:
    return frozenset({name}) if bug else frozenset()


def stream_calls(net: MemoryNetwork) -> int:
    return sum(1 for c in net.streams if c.method == METHOD_STREAM_RESOURCES)


@ON_OFF
async def test_stored_map(autojump_clock: trio.testing.MockClock, bug: bool) -> None:
    """The acceptor's sync pass tears down a healthy inbound stream; the dialer ends TERMINATED
    although nobody deleted anything."""
    net = MemoryNetwork()
    bugs = switch(bug, "stored-map")
    async with two_clusters(net, bugs1=bugs, bugs2=bugs) as (dc1, dc2):
        await peer(dc1, dc2)
        assert dc2.state("dc1") is PeeringState.ACTIVE
        assert dc1.state("dc2") is PeeringState.ACTIVE
        await dc1.client.generate_token("dc3")  # any peering-table change: dc1 runs a sync pass
        if bug:
            await until(dc2.store, lambda: dc2.state("dc1") is PeeringState.TERMINATED)
            await until(dc2.store, lambda: dc2.imported("dc1") == [])
            row1 = dc1.row("dc2")
            assert row1 is not None and row1.is_active()  # dc1 never deleted its peering
            term = dc1.server.leadership
            assert term is not None and list(term.sync.torn_down) == [row1.id]
        else:
            await let_time_pass(600)
            assert dc2.state("dc1") is PeeringState.ACTIVE
            assert dc1.state("dc2") is PeeringState.ACTIVE
            assert dc2.imported("dc1") == ["api", "web"]
            assert stream_calls(net) == 1


@ON_OFF
async def test_termination_race(autojump_clock: trio.testing.MockClock, bug: bool) -> None:
    """The dialer deletes; with the bug it cancels right after sending Terminated and the cancel
    overtakes it (held in flight here): the acceptor never learns, keeps its row active and its
    imported data for good."""
    net = MemoryNetwork()  # a client cancel overtakes what is in flight, as a reset can
    bugs = switch(bug, "termination-race")
    async with two_clusters(net, bugs1=bugs, bugs2=bugs) as (dc1, dc2):
        await peer(dc1, dc2)
        assert dc1.imported("dc2") == ["db"]
        call = memory_call(net)
        call.hold(C2S)
        await dc2.client.peering_delete("dc1")
        await until(dc2.store, lambda: dc2.row("dc1") is None)  # the dialer cleans up either way
        await trio.testing.wait_all_tasks_blocked()
        if bug:
            assert call.client_outcome is not None and call.client_outcome.cancelled
            assert call.in_flight(C2S) == []  # the Terminated was dropped by the cancel
        else:
            assert call.client_outcome is None  # draining, waiting for the acceptor
            assert call.in_flight(C2S)[-1] == "half-close"
        call.release(C2S)
        if bug:
            await let_time_pass(600)
            row1 = dc1.row("dc2")
            assert row1 is not None and row1.state is PeeringState.PENDING  # still active
            assert dc1.state("dc2") is PeeringState.FAILING
            assert dc1.imported("dc2") == ["db"]  # orphaned imported data
            assert dc1.store.trust_bundle_read("dc2") is not None
        else:
            await until(dc1.store, lambda: dc1.state("dc2") is PeeringState.TERMINATED
                        and dc1.imported("dc2") == []
                        and dc1.store.trust_bundle_read("dc2") is None)
            await trio.testing.wait_all_tasks_blocked()
            assert call.client_outcome is not None and call.client_outcome.ok


@ON_OFF
async def test_no_reconnect(autojump_clock: trio.testing.MockClock, bug: bool) -> None:
    """The stream closes without Terminated (a connection reset); with the bug the dialer takes
    that as a deletion and never reconnects."""
    net = MemoryNetwork()
    async with two_clusters(net, bugs2=switch(bug, "no-reconnect")) as (dc1, dc2):
        await peer(dc1, dc2)
        memory_call(net).reset()
        await trio.testing.wait_all_tasks_blocked()
        assert dc2.state("dc1") is PeeringState.FAILING
        if bug:
            await let_time_pass(600)
            assert stream_calls(net) == 1
            assert dc2.state("dc1") is PeeringState.FAILING
            term = dc2.server.leadership
            assert term is not None and term.dialers == {}
        else:
            start = trio.current_time()
            await until(dc2.store, lambda: dc2.connected("dc1"), tables=ALL)
            assert trio.current_time() - start == pytest.approx(2.0)  # the first backoff
            assert stream_calls(net) == 2
            assert dc2.state("dc1") is PeeringState.ACTIVE
            await until(dc1.store, lambda: dc1.connected("dc2"), tables=ALL)


@ON_OFF
async def test_terminated_undeletable(autojump_clock: trio.testing.MockClock, bug: bool) -> None:
    """dc2 was told its peering is gone (TERMINATED); its operator deletes it. With the bug the
    delete is a no-op: the row stays for good and blocks the name."""
    net = MemoryNetwork()
    async with two_clusters(net, bugs2=switch(bug, "terminated-undeletable")) as (dc1, dc2):
        await peer(dc1, dc2)
        await dc1.client.peering_delete("dc2")
        await until(dc2.store, lambda: dc2.state("dc1") is PeeringState.TERMINATED
                    and dc2.imported("dc1") == [])
        await until(dc1.store, lambda: dc1.row("dc2") is None)
        await dc2.client.peering_delete("dc1")  # succeeds either way
        token = await dc1.client.generate_token("dc2")
        if bug:
            await let_time_pass(600)
            assert dc2.state("dc1") is PeeringState.TERMINATED
            with pytest.raises(StreamFailed) as info:
                await dc2.client.establish("dc1", token)
            assert (info.value.code, info.value.message) == (StatusCode.FAILED_PRECONDITION,
                                                             ERR_WRITE_MARKED)
        else:
            await until(dc2.store, lambda: dc2.row("dc1") is None)
            await dc2.client.establish("dc1", token)  # the name is free again
            await until(dc2.store, lambda: dc2.imported("dc1") == ["api", "web"])
            assert dc2.state("dc1") is PeeringState.ACTIVE


@ON_OFF
async def test_dial_deleted(autojump_clock: trio.testing.MockClock, bug: bool) -> None:
    """The acceptor's peering is marked deleted while the dialer is disconnected; then the
    dialer redials. Fixed: Terminated + Aborted, the dialer ends TERMINATED at once. Bug: the
    stream is accepted for a deleted peering, and torn down only when a later peering-table
    change (the row's removal) makes the acceptor run a sync pass."""
    net = MemoryNetwork()
    async with two_clusters(net, bugs1=switch(bug, "dial-deleted"),
                            deletion_batch_bytes=ONE_NODE_PER_BATCH) as (dc1, dc2):
        await peer(dc1, dc2)
        # imported data that takes dc1's deletion routine ~10 s (1 node per batch, 10/s)
        dc1.store.import_service_nodes("dc2", "default", "bulk", imported_instances("dc2", 100))
        row1 = dc1.row("dc2")
        assert row1 is not None
        first = memory_call(net)
        first.reset()  # the dialer is disconnected; it redials after its 2 s backoff
        await trio.testing.wait_all_tasks_blocked()  # both handlers have seen the reset
        assert not dc1.connected("dc2")
        await dc1.client.peering_delete("dc2")
        second = await net.wait_for_stream(method=METHOD_STREAM_RESOURCES, index=1)
        await trio.testing.wait_all_tasks_blocked()
        assert dc1.row("dc2") is not None  # the acceptor's row is still being deleted
        term1, term2 = dc1.server.leadership, dc2.server.leadership
        assert term1 is not None and term2 is not None
        if bug:
            status1 = term1.tracker.stream_status(row1.id)
            assert status1 is not None and status1.connected  # accepted for a DELETING row
            assert dc2.state("dc1") is PeeringState.ACTIVE
            row2 = dc2.row("dc1")
            assert row2 is not None
            status2 = term2.tracker.stream_status(row2.id)
            assert status2 is not None and ERR_IMPORT_INACTIVE in status2.last_nack_message
            # only the removal of dc1's row (a peering-table change) tears the stream down
            await until(dc2.store, lambda: dc2.state("dc1") is PeeringState.TERMINATED)
            assert dc1.row("dc2") is None
        else:
            assert second.client_outcome is not None
            assert second.client_outcome.code is StatusCode.ABORTED
            assert dc2.state("dc1") is PeeringState.TERMINATED
            assert term1.tracker.stream_status(row1.id) is None or not (
                term1.tracker.stream_status(row1.id).connected)  # type: ignore[union-attr]


@ON_OFF
async def test_deletion_no_stop(autojump_clock: trio.testing.MockClock, bug: bool,
                                caplog: pytest.LogCaptureFixture) -> None:
    """Leadership is lost mid-deletion. Fixed: the routine stops at once. Bug: it is not
    stopped, every rate-limiter wait fails at once on its cancelled context, and it spins on
    the deposed leader (peerkit bounds the spin at ``spin_limit`` passes)."""
    caplog.set_level(logging.ERROR, logger="peerkit")
    net = MemoryNetwork()
    async with running_cluster(net, "dc1", "dc1:8502", bugs=switch(bug, "deletion-no-stop"),
                               deletion_batch_bytes=ONE_NODE_PER_BATCH, spin_limit=200) as dc1:
        await dc1.client.generate_token("dc2")
        dc1.store.import_service_nodes("dc2", "default", "bulk", imported_instances("dc2", 100))
        await dc1.client.peering_delete("dc2")
        old = dc1.server.leadership
        assert old is not None
        await trio.sleep(2.05)  # virtual: 10 (burst) + 20 batches
        dc1.server.lose_leadership()
        await trio.testing.wait_all_tasks_blocked()
        failures = [r for r in log_records(caplog, "Failed to remove Nodes for peer")
                    if fields(r).get("error") == "context canceled"]
        assert old.deletion.finished.is_set()
        assert old.deletion.stats.node_batches == 30  # no progress after the loss either way
        if bug:
            assert old.deletion.stats.spins == 200
            assert len(failures) >= 199
        else:
            assert old.deletion.stats.spins == 0
            assert failures == []
        new = dc1.server.become_leader()
        await until(dc1.store, lambda: dc1.row("dc2") is None)
        assert new.deletion.stats.node_batches == 70


async def test_dialer_retries_fast_after_failed_precondition(
        autojump_clock: trio.testing.MockClock) -> None:
    """The later upstream's peeringRetryTimeout (agent/consul/leader_peering.go): an acceptor
    that lost its leadership answers FailedPrecondition, and the dialer retries after 8 ms five
    times, then doubling, instead of after 2, 4, 8 s; a new leader is found within a second."""
    net = MemoryNetwork()
    async with two_clusters(net) as (dc1, dc2):
        await peer(dc1, dc2)
        before = stream_calls(net)
        dc1.server.lose_leadership()
        await let_time_pass(1.0)
        # 8 ms x 5, then 16, 32, 64, 128, 256 ms: 10 redials in the first second (the old
        # schedule, 2 s then 4 s, made none)
        assert stream_calls(net) - before == 10
        dc1.server.become_leader()
        start = trio.current_time()
        await until(dc2.store, lambda: dc2.connected("dc1"), tables=ALL)
        assert trio.current_time() - start <= 8.192
