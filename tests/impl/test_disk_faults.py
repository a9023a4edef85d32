"""The disk full, or the database read-only, while a server is serving (issue 8).

One job: with dc1 on SQLite, peered with dc2 over the in-memory network (virtual time), make
dc1's database unable to grow (``PRAGMA max_page_count`` at its current size: SQLite then fails
writes that need a new page with SQLITE_FULL, "database or disk is full") or read-only (its
connection swapped for one opened ``mode=ro``: SQLITE_READONLY; chmod would not stop root), and
check: each RPC that writes answers UNAVAILABLE with a message naming the cause; reads still
answer; the store is unchanged (a write that failed half-way left no row: a transaction per
operation); the server keeps serving; an import that fails on the disk ends the stream rather
than being lost behind a NACK; once the disk is back, writes work and replication converges.

``max_page_count`` bounds the database's pages, not the bytes of its WAL: a write that fits in
pages the database already has still succeeds, as it may on a real full disk. The writes here
are large enough to need new pages.

May import: pytest, trio, the standard library (sqlite3), peerkit.impl.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
import trio
import trio.testing

from peerkit.impl.store import DB_FILENAME, SqliteStore
from peerkit.impl.testing import Cluster, eventually, peer, running_cluster
from peerkit.impl.transport import MemoryNetwork, StatusCode, StreamFailed

BIG_TAGS = tuple(f"tag-{i:02d}-" + "x" * 240 for i in range(40))  # ~10 KB: new pages
BIG_META = {f"key{i:02d}": "v" * 500 for i in range(40)}  # ~20 KB


def connection(store: SqliteStore) -> sqlite3.Connection:
    conn: sqlite3.Connection = store._backend._conn  # type: ignore[attr-defined]
    return conn


@contextmanager
def disk_full(store: SqliteStore) -> Iterator[None]:
    """The database cannot grow past its current size until the block ends."""
    conn = connection(store)
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    try:
        yield
    finally:
        conn.execute("PRAGMA max_page_count = 1073741823")


@contextmanager
def read_only(store: SqliteStore) -> Iterator[None]:
    """The store's connection is a read-only one until the block ends."""
    backend = store._backend
    writable = connection(store)
    ro = sqlite3.connect(f"file:{store.path}?mode=ro", uri=True, isolation_level=None)
    backend._conn = ro  # type: ignore[attr-defined]
    try:
        yield
    finally:
        backend._conn = writable  # type: ignore[attr-defined]
        ro.close()


FAULTS: dict[str, tuple[Callable[[SqliteStore], AbstractContextManager[None]], str]] = {
    "disk-full": (disk_full, "database or disk is full"),
    "read-only": (read_only, "attempt to write a readonly database"),
}


@pytest.fixture
async def clusters(tmp_path: Path) -> AsyncIterator[tuple[Cluster, Cluster, SqliteStore]]:
    net = MemoryNetwork()
    store = SqliteStore(tmp_path)
    async with running_cluster(net, "dc1", "dc1:8502", store=store) as dc1, \
            running_cluster(net, "dc2", "dc2:8502") as dc2:
        await peer(dc1, dc2, services1=("api",), services2=("db",))
        yield dc1, dc2, store
    store.close()


async def expect_unavailable(call: object, cause: str) -> None:
    with pytest.raises(StreamFailed) as info:
        await call  # type: ignore[misc]
    assert info.value.code is StatusCode.UNAVAILABLE, info.value
    assert info.value.message == f"the state store failed: the SQLite database failed: {cause}"


@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_writes_fail_clearly_reads_answer_nothing_partial_and_it_recovers(
    autojump_clock: trio.testing.MockClock,
    clusters: tuple[Cluster, Cluster, SqliteStore], fault: str,
) -> None:
    dc1, _dc2, store = clusters
    make, cause = FAULTS[fault]
    before = store.dump()
    with make(store):
        # each write RPC: a clear error (each would need new pages, or any write at all)
        await expect_unavailable(dc1.client.generate_token("dc3", meta=BIG_META), cause)
        await expect_unavailable(
            dc1.client.register_service("big-node", "big", tags=BIG_TAGS), cause)
        await expect_unavailable(
            dc1.client.register_service("big-node", "big", tags=BIG_TAGS), cause)  # again
        # the reads answer
        assert [p.Name for p in await dc1.client.peering_list()] == ["dc2"]
        read = await dc1.client.peering_read("dc2")
        assert read is not None and read.Name == "dc2"
        assert await dc1.client.imported_services("dc2") == ["db"]
        assert await dc1.client.trust_bundle_read("dc2") is not None
        assert [e.ServiceName for e in (await dc1.client.read_catalog()).Exports] == ["api"]
        assert (await dc1.client.status()).IsLeader
        # nothing partial: the register RPC writes the node first, the service after it
        assert store.dump() == before
        assert dc1.connected("dc2")  # the stream is not disturbed by a failed RPC
    # the disk is back: the same writes succeed
    await dc1.client.generate_token("dc3", meta=BIG_META)
    await dc1.client.register_service("big-node", "big", tags=BIG_TAGS)
    assert sorted(p.Name for p in await dc1.client.peering_list()) == ["dc2", "dc3"]
    assert "big" in {s.name for s in store.dump().services}


@pytest.mark.parametrize("fault", sorted(FAULTS))
async def test_an_import_that_fails_on_the_disk_is_not_lost(
    autojump_clock: trio.testing.MockClock,
    clusters: tuple[Cluster, Cluster, SqliteStore], fault: str,
) -> None:
    """dc2 exports a large service while dc1's disk cannot take it: dc1 imports nothing of it
    and ends the stream (a NACK alone would leave it unapplied: nothing is resent after one);
    dc2 redials with backoff. Once the disk is back, the next stream brings it whole."""
    dc1, dc2, store = clusters
    make, cause = FAULTS[fault]
    before = store.dump()
    with make(store):
        await dc2.client.register_service("big-node", "big", tags=BIG_TAGS)
        await dc2.client.export_service("big", "dc1")
        with trio.fail_after(60):  # virtual
            await eventually(lambda: not dc1.connected("dc2"), dc1, dc2)
        assert store.dump() == before  # none of it (the node goes in first, then the rest)
        row = dc1.row("dc2")
        term = dc1.server.leadership
        assert row is not None and term is not None
        status = term.tracker.stream_status(row.id)
        assert status is not None and cause in status.disconnect_error_message
        assert cause in status.last_receive_error_message
        assert (await dc1.client.status()).IsLeader  # still serving
    with trio.fail_after(600):  # virtual: the dialer's backoff
        await eventually(lambda: dc1.imported("dc2") == ["big", "db"] and dc1.connected("dc2"),
                         dc1, dc2)
    assert [s.tags for s in store.dump().services if s.name == "big"] == [BIG_TAGS]


def test_the_database_file_is_the_one_made_read_only(tmp_path: Path) -> None:
    """The read-only fault really is a read-only open of the store's own file."""
    store = SqliteStore(tmp_path)
    try:
        with read_only(store):
            conn = connection(store)
            assert conn.execute("PRAGMA database_list").fetchone()[2] == str(
                tmp_path / DB_FILENAME)
            with pytest.raises(sqlite3.OperationalError, match="readonly"):
                conn.execute("CREATE TABLE t (x)")
    finally:
        store.close()
