"""The mutant switches conformance cannot catch still change the implementation (so they are real
ports, not misspelt no-ops): each test here shows, by hand and with the switch on and off, the
mistake that ``peerkit.conformance.mutants.NOT_CAUGHT`` says the driver cannot observe (and the
EOF one, which the driver reaches only with the EOF-first view of a cancel).

Over the in-memory network under virtual time. May import: pytest, trio, peerkit.impl
(testing, transport, tracker), peerkit.proto, peerkit.model.vocabulary.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from peerkit.impl.testing import (
    Cluster,
    imported_instances,
    kind,
    let_time_pass,
    memory_call,
    open_message,
    open_raw_stream,
    peer,
    receive_until,
    running_cluster,
    token_and_secret,
    two_clusters,
    until,
)
from peerkit.impl.transport import MemoryNetwork, StatusCode, StreamFailed

ON_OFF = pytest.mark.parametrize("on", [True, False], ids=["on", "off"])


@asynccontextmanager
async def acceptor(mutant: str, on: bool) -> AsyncIterator[Cluster]:
    """dc1 alone, with ``mutant`` on or off; one imported node per deletion batch (10/s)."""
    async with running_cluster(MemoryNetwork(), "dc1", "dc1:8502", deletion_batch_bytes=1,
                               mutants=[mutant] if on else []) as cluster:
        yield cluster


async def _first_then_status(stream: object) -> tuple[list[str | None], StatusCode | None]:
    """What the hand-played dialer receives: the kinds of the messages, then the status."""
    kinds: list[str | None] = []
    try:
        while True:
            kinds.append(kind(await stream.receive()))  # type: ignore[attr-defined]
            if len(kinds) >= 3:
                return kinds, None  # accepted: the handler is sending its snapshot
    except StreamFailed as exc:
        return kinds, exc.code


@ON_OFF
@pytest.mark.parametrize("mutant", ["accept-terminated-row", "terminated-row-answers-terminated"])
async def test_a_dial_of_a_terminated_row(autojump_clock: trio.testing.MockClock, mutant: str,
                                          on: bool) -> None:
    async with acceptor(mutant, on) as dc1:
        peer_id, secret = await token_and_secret(dc1)
        dc1.store.peering_terminate_by_id(peer_id)
        stream = await open_raw_stream(dc1.client)
        await stream.send(open_message(peer_id, secret))
        kinds, code = await _first_then_status(stream)
    if not on:
        assert (kinds, code) == ([], StatusCode.ABORTED)
    elif mutant == "accept-terminated-row":
        assert code is None and kinds[0] == "response"  # served: the trust bundle first
    else:
        assert (kinds, code) == (["terminated"], StatusCode.ABORTED)


@ON_OFF
async def test_a_dial_of_a_marked_row(autojump_clock: trio.testing.MockClock, on: bool) -> None:
    async with acceptor("drop-send-terminated-only:acceptor-new-open-peering-marked-for-deletion",
                        on) as dc1:
        peer_id, secret = await token_and_secret(dc1)
        dc1.store.import_service_nodes("dc2", "default", "bulk", imported_instances("dc2", 40))
        await dc1.client.peering_delete("dc2")  # the 40 nodes keep the row for 4 s
        stream = await open_raw_stream(dc1.client)
        await stream.send(open_message(peer_id, secret))
        kinds, code = await _first_then_status(stream)
    assert code is StatusCode.ABORTED
    assert kinds == ([] if on else ["terminated"])


@ON_OFF
async def test_an_eof_while_serving(autojump_clock: trio.testing.MockClock, on: bool) -> None:
    async with acceptor("drop-disconnect:acceptor-open-eof", on) as dc1:
        peer_id, secret = await token_and_secret(dc1)
        stream = await open_raw_stream(dc1.client)
        await stream.send(open_message(peer_id, secret))
        await receive_until(stream, lambda m: kind(m) == "response")
        await stream.close_send()  # a half-close without Terminated: EOF for the acceptor
        async for _ in stream:  # the rest of the snapshot, then the end: status OK
            pass
        assert stream.outcome is not None and stream.outcome.ok
        status = dc1.server.leadership.tracker.stream_status(peer_id)  # type: ignore[union-attr]
    assert status is not None and status.connected is on


@ON_OFF
async def test_the_sync_pass_and_a_marked_row(autojump_clock: trio.testing.MockClock,
                                              on: bool) -> None:
    async with acceptor("sync-keeps-inactive", on) as dc1:
        peer_id, secret = await token_and_secret(dc1)
        stream = await open_raw_stream(dc1.client)
        await stream.send(open_message(peer_id, secret))
        await receive_until(stream, lambda m: kind(m) == "response")
        dc1.store.import_service_nodes("dc2", "default", "bulk", imported_instances("dc2", 40))
        await dc1.client.peering_delete("dc2")
        await let_time_pass(1.0)  # the row stays marked for 4 s (40 nodes at 10/s)
        sync = dc1.server.leadership.sync  # type: ignore[union-attr]
        assert dc1.store.peering_read_by_id(peer_id) is not None
        assert list(sync.torn_down) == ([] if on else [peer_id])


@ON_OFF
@pytest.mark.parametrize("mutant,deleter", [("drop-close-send:dialer-open-teardown", "dc2"),
                                            ("drop-close-send:dialer-open-terminated", "dc1")])
async def test_a_dialer_that_does_not_half_close(autojump_clock: trio.testing.MockClock,
                                                 mutant: str, deleter: str, on: bool) -> None:
    net = MemoryNetwork()
    async with two_clusters(net, mutants=[mutant] if on else []) as (dc1, dc2):
        await peer(dc1, dc2)
        call = memory_call(net)
        other = "dc1" if deleter == "dc2" else "dc2"
        await (dc1 if deleter == "dc1" else dc2).client.peering_delete(other)

        def told() -> bool:
            row = dc1.row("dc2")
            return row is None or not row.is_active()

        await until(dc1.store, told)  # Terminated went one way or the other
        await let_time_pass(300.0)
        # both ends wait in their drains for ever: the call never finishes
        assert call.finished is not on
