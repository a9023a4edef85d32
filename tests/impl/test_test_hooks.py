"""The control service's optional test hooks (admin.proto's TestHookService): off by default,
and when on, a reset, a failover, a held deletion and a held receive that do what the
conformance suite maps them to (the model's Reset, Failover, a deletion step that comes late,
and a message that waits in flight), and the read of the deletion routines that gives the
suite the model's zombie bit (a routine that ran on after its term ended).

Two clusters on the in-memory network under virtual time (the gRPC path is exercised by
tests/conformance/test_target.py against ``peerkit serve --test-hooks``).

May import: pytest, trio, peerkit.impl, peerkit.model.vocabulary.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from peerkit.impl.server import ERR_TEST_HOOKS_OFF
from peerkit.impl.testing import eventually, let_time_pass, peer, two_clusters
from peerkit.impl.transport import MemoryNetwork, StatusCode, StreamFailed
from peerkit.model.vocabulary import PeeringState

DEADLINE = 120.0  # virtual seconds


async def test_the_hooks_are_off_by_default_and_change_nothing(
        autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    async with two_clusters(net) as (dc1, dc2):
        await peer(dc1, dc2)
        term = dc2.server.leadership
        calls = len(net.streams)
        for call in (dc2.client.reset_stream("dc1"), dc2.client.failover(),
                     dc1.client.hold_deletion(True), dc1.client.hold_receive("dc2", True),
                     dc1.client.deletion_routines()):
            with pytest.raises(StreamFailed) as caught:
                await call
            assert caught.value.code is StatusCode.FAILED_PRECONDITION
            assert caught.value.message == ERR_TEST_HOOKS_OFF
        await let_time_pass(30)
        assert dc2.server.leadership is term  # no failover
        assert len(net.streams) == calls  # no stream reset, so no redial
        assert dc1.connected("dc2") and dc2.connected("dc1")
        await dc2.client.peering_delete("dc1")  # no receive held: dc1 is told at once
        with trio.fail_after(DEADLINE):
            await eventually(lambda: dc1.state("dc2") is PeeringState.TERMINATED, dc1, dc2)
        await dc1.client.peering_delete("dc2")  # no deletion held
        with trio.fail_after(DEADLINE):
            await eventually(lambda: dc1.row("dc2") is None, dc1, dc2)


@pytest.mark.parametrize("side", ["dc1", "dc2"])  # the acceptor resets, the dialer resets
async def test_reset_stream_ends_the_stream_and_the_dialer_redials(
        autojump_clock: trio.testing.MockClock, side: str) -> None:
    net = MemoryNetwork()
    async with two_clusters(net, test_hooks=True) as (dc1, dc2):
        await peer(dc1, dc2)
        first = net.streams[-1]
        resetter, other = (dc1, "dc2") if side == "dc1" else (dc2, "dc1")
        assert await resetter.client.reset_stream(other) == 1
        with trio.fail_after(DEADLINE):
            await eventually(lambda: first.finished, dc1, dc2)
            # the dialer's retry loop (2 s later) opens a new stream, which connects
            await eventually(lambda: len(net.streams) > 1 and dc1.connected("dc2")
                             and dc2.connected("dc1"), dc1, dc2)
        assert first.client_outcome is not None and not first.client_outcome.ok
        assert dc1.state("dc2") is PeeringState.ACTIVE
        # a peering with no live stream: nothing to reset
        await dc1.client.generate_token("dc3")
        assert await dc1.client.reset_stream("dc3") == 0


@pytest.mark.parametrize("hook", ["reset_stream", "hold_receive"])
async def test_the_hooks_by_name_refuse_a_bad_or_unknown_name(
        autojump_clock: trio.testing.MockClock, hook: str) -> None:
    net = MemoryNetwork()
    async with two_clusters(net, test_hooks=True) as (dc1, _dc2):
        for name, code in (("", StatusCode.INVALID_ARGUMENT),
                           ("Not A Label", StatusCode.INVALID_ARGUMENT),
                           ("dc9", StatusCode.NOT_FOUND)):
            with pytest.raises(StreamFailed) as caught:
                if hook == "reset_stream":
                    await dc1.client.reset_stream(name)
                else:
                    await dc1.client.hold_receive(name, True)
            assert caught.value.code is code, (name, caught.value)
        if hook == "hold_receive":
            await dc1.client.hold_receive("dc9", False)  # releasing what is not held: no-op


async def test_failover_starts_a_new_term_and_the_peering_reconnects(
        autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    async with two_clusters(net, test_hooks=True) as (dc1, dc2):
        await peer(dc1, dc2)
        old = dc1.server.leadership
        assert old is not None
        assert await dc1.client.failover() == old.term + 1
        assert old.stopped and dc1.server.leadership is not old
        with trio.fail_after(DEADLINE):
            await eventually(lambda: dc1.connected("dc2") and dc2.connected("dc1"), dc1, dc2)


async def test_hold_deletion_holds_every_term_until_released(
        autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    async with two_clusters(net, test_hooks=True) as (dc1, dc2):
        await peer(dc1, dc2)
        await dc1.client.hold_deletion(True)
        await dc1.client.peering_delete("dc2")
        with trio.fail_after(DEADLINE):
            await eventually(lambda: dc2.state("dc1") is PeeringState.TERMINATED, dc1, dc2)
        await dc1.client.failover()  # the new term's routine is held too
        await let_time_pass(60)
        row = dc1.row("dc2")
        assert row is not None and row.state is PeeringState.DELETING
        assert dc1.imported("dc2") == ["db"]
        await dc1.client.hold_deletion(False)
        with trio.fail_after(DEADLINE):
            await eventually(lambda: dc1.row("dc2") is None and dc1.imported("dc2") == [],
                             dc1, dc2)


@pytest.mark.parametrize("bug", [False, True])
async def test_hold_receive_leaves_terminated_in_flight_until_released(
        autojump_clock: trio.testing.MockClock, bug: bool) -> None:
    """dc1 (the acceptor) stops reading; dc2 deletes: its Terminated waits unread until the
    release, then dc1 is told. With ``termination-race`` dc2 cancels right after Terminated:
    the cancel reaches dc1 while Terminated is unread, which discards it, and dc1 is never
    told (the bug the hold makes certain, where without it the cancel rarely wins)."""
    net = MemoryNetwork()
    bugs = ("termination-race",) if bug else ()
    async with two_clusters(net, test_hooks=True, bugs1=bugs, bugs2=bugs) as (dc1, dc2):
        await peer(dc1, dc2)
        await dc1.client.hold_receive("dc2", True)
        row = dc2.row("dc1")
        term = dc2.server.leadership
        assert row is not None and term is not None
        await dc2.client.peering_delete("dc1")
        with trio.fail_after(DEADLINE):  # dc2 tore its stream down: Terminated is sent
            await eventually(lambda: dc2.row("dc1") is None
                             and term.tracker.stream_status(row.id) is None, dc1, dc2)
        await let_time_pass(10)
        assert dc1.state("dc2") is PeeringState.ACTIVE  # not told while held
        await dc1.client.hold_receive("dc2", False)
        await let_time_pass(10)
        assert dc1.state("dc2") is (PeeringState.FAILING if bug else PeeringState.TERMINATED)
        assert not dc1.connected("dc2")



@pytest.mark.parametrize("bug", [False, True])
async def test_deletion_routines_reports_a_routine_that_outlives_its_term(
        autojump_clock: trio.testing.MockClock, bug: bool) -> None:
    """dc1 deletes with its deletion held, fails over with the work still pending, and
    releases. A correct server's first routine stops with its term; with ``deletion-no-stop``
    it runs on, and the read counts the passes it began after its term ended."""
    net = MemoryNetwork()
    bugs = ("deletion-no-stop",) if bug else ()
    async with two_clusters(net, test_hooks=True, bugs1=bugs) as (dc1, dc2):
        await peer(dc1, dc2)
        [first] = await dc1.client.deletion_routines()
        assert (first.Term, first.TermEnded, first.Running, first.PassesAfterTermEnded) == \
            (1, False, True, 0)
        await dc1.client.hold_deletion(True)
        await dc1.client.peering_delete("dc2")
        with trio.fail_after(DEADLINE):
            await eventually(lambda: dc2.state("dc1") is PeeringState.TERMINATED, dc1, dc2)
        await dc1.client.failover()
        await dc1.client.hold_deletion(False)
        with trio.fail_after(DEADLINE):
            await eventually(lambda: dc1.row("dc2") is None, dc1, dc2)
        await let_time_pass(10)
        old, new = await dc1.client.deletion_routines()
        assert (new.Term, new.TermEnded, new.Running, new.PassesAfterTermEnded) == \
            (2, False, True, 0)
        assert (old.Term, old.TermEnded) == (1, True)
        if bug:
            assert old.PassesAfterTermEnded > 0
        else:
            assert (old.Running, old.PassesAfterTermEnded) == (False, 0)
