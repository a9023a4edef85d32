"""Long-lived objects of the implementation keep bounded history (issue 8, reliability).

The leader's sync routine (streams torn down), deletion routine (failures, back-off waits), dial
loops (attempts), the server (past leadership terms) and the stream tracker (status entries of
peerings that no longer exist), and an exporting stream's record of what it sent (services no
longer exported), must not grow without bound over a long life. Each test drives many more
events than the bound, under virtual time on the in-memory network, and checks the collection
stays at its bound (keeping the newest) or is emptied.

May import: pytest, trio, peerkit.impl (leader, logs, server, store, stream, testing, tracker,
transport), peerkit.model.vocabulary.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from peerkit.impl.leader import (
    DELETION_RETRY_MAX,
    HISTORY_LIMIT,
    DeletionRoutine,
    LeaderConfig,
    Leadership,
)
from peerkit.impl.logs import EventLog
from peerkit.impl.server import TERMS_KEPT, PeeringServer
from peerkit.impl.store import MemoryStore, Peering
from peerkit.impl.stream import StreamSession
from peerkit.impl.testing import (
    eventually,
    let_time_pass,
    peer,
    two_clusters,
)
from peerkit.impl.tracker import StreamTracker
from peerkit.impl.transport import MemoryNetwork
from peerkit.model.vocabulary import PeeringState


class _BrokenStore(MemoryStore):
    """Every listing of deleted peerings fails: the deletion routine fails pass after pass."""

    def peering_list_deleted(self) -> list[Peering]:
        raise RuntimeError("disk on fire")


def _config(store: MemoryStore) -> LeaderConfig:
    return LeaderConfig(name="dc1", store=store, transport=MemoryNetwork(),
                        log=EventLog("peerkit.test"), trust_domain="dc1.test", root_pems=())


def test_the_bound_is_a_real_limit() -> None:
    assert 10 <= HISTORY_LIMIT <= 1000


async def test_deletion_failures_and_backoffs_stay_bounded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    routine = DeletionRoutine(_BrokenStore(), EventLog("peerkit.test"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(routine.run)
        # 3x the bound of failed passes: after the first few, one every DELETION_RETRY_MAX s
        await let_time_pass(3 * HISTORY_LIMIT * DELETION_RETRY_MAX)
        assert routine.stats.passes > 2 * HISTORY_LIMIT
        assert len(routine.stats.failures) == HISTORY_LIMIT
        assert len(routine.stats.backoffs) == HISTORY_LIMIT
        assert list(routine.stats.backoffs)[-1] == DELETION_RETRY_MAX  # the newest are kept
        assert "disk on fire" in routine.stats.failures[-1]
        nursery.cancel_scope.cancel()


async def test_sync_torn_down_stays_bounded(autojump_clock: trio.testing.MockClock) -> None:
    term = Leadership(_config(MemoryStore()), 1)
    ids = [f"peering-{i:04d}" for i in range(3 * HISTORY_LIMIT)]
    for peering_id in ids:
        done = term.tracker.connected(peering_id)  # a stream whose peering is not stored
        term.sync.sync_pass()
        assert done.is_set()  # torn down
    assert list(term.sync.torn_down) == ids[-HISTORY_LIMIT:]


async def test_dial_attempts_stay_bounded(autojump_clock: trio.testing.MockClock) -> None:
    """A dialer peering whose peer never answers: the dial loop retries for ever (every 256 s
    at most); it keeps only the newest attempts."""
    store = MemoryStore()
    store.peering_write(Peering(name="dc2", peer_id="remote-id", peer_server_addresses=(
        "nowhere:8502",), state=PeeringState.ESTABLISHING))
    row = store.peering_read("dc2")
    assert row is not None and row.should_dial()
    term = Leadership(_config(store), 1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(term.run, nursery)
        await trio.testing.wait_all_tasks_blocked()  # the first sync pass started the dial loop
        loop = term.dialers[row.id]
        await let_time_pass(3 * HISTORY_LIMIT * 256)
        assert len(loop.attempts) == HISTORY_LIMIT
        assert set(loop.attempts) == {"nowhere:8502"}
        term.stop()


async def test_past_terms_stay_bounded(autojump_clock: trio.testing.MockClock) -> None:
    net = MemoryNetwork()
    srv = PeeringServer("dc1", MemoryStore(), net)
    async with srv.serve("dc1:8502", leader=False):
        for _ in range(3 * TERMS_KEPT):
            srv.become_leader()
            await trio.testing.wait_all_tasks_blocked()
            srv.lose_leadership()
        term = srv.become_leader()
        assert term.term == 3 * TERMS_KEPT + 1  # numbering goes on past the bound
        terms = srv.terms
        assert len(terms) == TERMS_KEPT and terms[-1] is term
        assert [t.term for t in terms] == list(range(2 * TERMS_KEPT + 2, 3 * TERMS_KEPT + 2))


async def test_status_lists_no_stream_of_a_deleted_peering(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Peer, delete on one side (the other is told and TERMINATED), delete the TERMINATED row
    too; repeat. After every peering is deleted, Status on either side lists no stream entry,
    and in particular none without a peer name."""
    net = MemoryNetwork()
    async with two_clusters(net) as (dc1, dc2):
        for _ in range(3):
            await peer(dc1, dc2)
            await dc1.client.peering_delete("dc2")
            await eventually(lambda: dc1.row("dc2") is None
                             and dc2.state("dc1") is PeeringState.TERMINATED, dc1, dc2)
            await dc2.client.peering_delete("dc1")
            await eventually(lambda: dc2.row("dc1") is None, dc1, dc2)
            await let_time_pass(600)  # heartbeats, reconnects: whatever would still happen
            for cluster in (dc1, dc2):
                status = await cluster.client.status()
                assert [s.PeeringID for s in status.Streams if not s.PeerName] == []
                assert list(status.Streams) == []


@pytest.mark.parametrize("count", [1, HISTORY_LIMIT])
async def test_a_short_history_is_kept_whole(
    autojump_clock: trio.testing.MockClock, count: int,
) -> None:
    term = Leadership(_config(MemoryStore()), 1)
    ids = [f"p-{i}" for i in range(count)]
    for peering_id in ids:
        term.tracker.connected(peering_id)
    term.sync.sync_pass()
    assert list(term.sync.torn_down) == sorted(ids)  # in the tracker's (sorted) order


async def test_tracker_forgets_only_disconnected_entries_of_gone_peerings(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tracker = StreamTracker()
    for pid in ("kept", "gone", "live"):
        tracker.connected(pid)
    tracker.disconnected("kept", "boom")
    tracker.disconnected("gone", None)
    version = tracker.version
    assert tracker.forget_disconnected({"kept"}) == ["gone"]
    assert sorted(tracker.all_statuses()) == ["kept", "live"]  # "live" is connected: it stays
    assert tracker.version == version + 1  # observers are woken
    assert tracker.forget_disconnected({"kept"}) == []
    assert tracker.version == version + 1  # nothing forgotten, nobody woken
    with pytest.raises(TypeError):
        tracker.forget_disconnected("kept")  # a str is not a set of ids; nothing changes
    assert sorted(tracker.all_statuses()) == ["kept", "live"]


async def test_a_stream_remembers_only_the_services_it_still_exports(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The exporting side of a long-lived stream remembers what it last sent per service; a
    service that is unexported (its delete sent) must be forgotten, or the record grows with
    every service ever exported over the stream's life."""
    sessions: list[StreamSession] = []
    post_init = StreamSession.__post_init__

    def recording(self: StreamSession) -> None:
        sessions.append(self)
        post_init(self)

    monkeypatch.setattr(StreamSession, "__post_init__", recording)
    net = MemoryNetwork()
    async with two_clusters(net) as (dc1, dc2):
        await peer(dc1, dc2, services1=("api",), services2=())
        for i in range(20):
            service = f"svc-{i}"
            await dc1.client.register_service(f"dc1-extra-{i}", service, port=9000 + i)
            await dc1.client.export_service(service, "dc2")
            await eventually(lambda s=service: s in dc2.imported("dc1"), dc1, dc2)  # type: ignore[misc]
            await dc1.client.unexport_service(service, "dc2")
            await eventually(lambda s=service: s not in dc2.imported("dc1"), dc1, dc2)  # type: ignore[misc]
        assert dc2.imported("dc1") == ["api"]
        assert sessions, "no stream published anything"
        for session in sessions:
            assert set(session._sent) <= {"api"}, sorted(session._sent)
