"""What a broken or foreign disk can do to a server: nothing worse than a clear refusal.

One job: the deletion routine survives store errors anywhere in a pass (it logs, backs off
1, 2, 4, ... seconds and retries; never a tight loop) and finishes once the store recovers; a
SQLite file that is not peerkit's is refused on open with a clear message; a data dir can be
open by one store (one server process) at a time.

Store-error tests run under virtual time; the two-process test runs ``peerkit serve`` in
subprocesses (real gRPC on 127.0.0.1, port 0), stopped with SIGTERM.

May import: pytest, trio, the standard library (sqlite3, subprocess), peerkit.impl.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from peerkit.impl.leader import DELETION_RETRY_MAX, DeletionRoutine
from peerkit.impl.logs import EventLog
from peerkit.impl.store import (
    CATALOG,
    DB_FILENAME,
    Change,
    ImportService,
    MemoryStore,
    NodeInfo,
    Peering,
    SqliteStore,
    StoreFailure,
    StoreOpenError,
)
from peerkit.impl.testing import (
    Cluster,
    eventually,
    imported_instances,
    let_time_pass,
    open_message,
    open_raw_stream,
    peer,
    running_cluster,
    token_and_secret,
    until,
)
from peerkit.impl.transport import MemoryNetwork, StatusCode, StreamFailed

SERVE = ("import sys, argparse\nfrom peerkit.impl import serve\np = argparse.ArgumentParser()\n"
         "serve.add_arguments(p)\nsys.exit(serve.run(p.parse_args(sys.argv[1:])))")
NOW = 1_750_000_000.0


@asynccontextmanager
async def two_clusters_with(net: MemoryNetwork,
                            store1: SqliteStore) -> AsyncIterator[tuple[Cluster, Cluster]]:
    """dc1 on ``store1`` (SQLite), dc2 on a memory store."""
    async with running_cluster(net, "dc1", "dc1:8502", store=store1) as dc1, \
            running_cluster(net, "dc2", "dc2:8502") as dc2:
        yield dc1, dc2


class FlakyStore(MemoryStore):
    """A memory store whose chosen method raises a disk error while ``failing`` is set; it
    gives up failing after ``limit`` calls, so that a routine that spins cannot hang a test."""

    def __init__(self, method: str, limit: int = 10_000) -> None:
        super().__init__()
        self.method = method
        self.failing = False
        self.calls = 0
        self.limit = limit

    def _maybe_fail(self, name: str) -> None:
        if self.failing and name == self.method:
            self.calls += 1
            if self.calls <= self.limit:
                raise sqlite3.OperationalError("disk I/O error")

    def table_index(self, table: str) -> int:
        self._maybe_fail("table_index")
        return super().table_index(table)

    def peering_list_deleted(self) -> list[Peering]:
        self._maybe_fail("peering_list_deleted")
        return super().peering_list_deleted()

    def imported_node_dump(self, peer_name: str, partition: str) -> list[NodeInfo]:
        self._maybe_fail("imported_node_dump")
        return super().imported_node_dump(peer_name, partition)


@pytest.mark.parametrize("method", ["peering_list_deleted", "imported_node_dump",
                                    "table_index"])
async def test_deletion_routine_backs_off_on_store_errors_and_recovers(
    autojump_clock: trio.testing.MockClock, method: str
) -> None:
    store = FlakyStore(method)
    store.peering_write(Peering(name="dc2"))
    store.import_service_nodes("dc2", "default", "bulk", imported_instances("dc2", 3))
    routine = DeletionRoutine(store, EventLog("peerkit.test"))
    async with trio.open_nursery() as nursery:
        store.failing = True
        store.peering_mark_deleted("dc2", "default", NOW)
        nursery.start_soon(routine.run)
        await let_time_pass(200)
        # 200 s of failures: waits of 1, 2, 4, ..., 64, 64 s; a handful of tries, not thousands
        assert 5 <= store.calls <= 12, store.calls
        assert list(routine.stats.backoffs)[:7] == [1, 2, 4, 8, 16, 32, 64]
        assert max(routine.stats.backoffs) == DELETION_RETRY_MAX
        assert len(routine.stats.failures) == len(routine.stats.backoffs)
        assert not routine.finished.is_set()  # still running
        assert store.peering_read("dc2") is not None
        store.failing = False
        with trio.fail_after(DELETION_RETRY_MAX + 10):  # virtual time
            await until(store, lambda: store.peering_read("dc2") is None)
        assert store.imported_node_dump("dc2", "default") == []
        nursery.cancel_scope.cancel()


async def test_deletion_routine_waits_are_reset_after_a_good_pass(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = FlakyStore("imported_node_dump")
    routine = DeletionRoutine(store, EventLog("peerkit.test"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(routine.run)
        for name in ("dc2", "dc3"):
            store.peering_write(Peering(name=name))
            store.import_service_nodes(name, "default", "bulk", imported_instances(name, 1))
            store.failing = True
            store.peering_mark_deleted(name, "default", NOW)
            await let_time_pass(4)  # fails at once, then after 1 s, then after 2 s
            store.failing = False
            await until(store, lambda n=name: store.peering_read(n) is None)  # type: ignore[misc]
        assert list(routine.stats.backoffs) == [1, 2, 4, 1, 2, 4]
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------------------------
# foreign databases


def make_db(data_dir: Path, *statements: str) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(data_dir / DB_FILENAME, isolation_level=None)
    for statement in statements:
        conn.execute(statement)
    conn.close()


FOREIGN: list[tuple[str, Callable[[Path], None], str]] = [
    ("other-app", lambda d: make_db(
        d, "CREATE TABLE peerings (id INTEGER PRIMARY KEY, name TEXT)",
        "INSERT INTO peerings VALUES (1, 'x')"), "is not a peerkit database: it holds tables"),
    ("same-name-other-layout", lambda d: make_db(
        d, "CREATE TABLE peerings (id INTEGER PRIMARY KEY, name TEXT)",
        "PRAGMA user_version = 1"), "table 'peerings' has columns ['id', 'name']"),
    ("foreign-rows", lambda d: make_db(
        d, "CREATE TABLE peerings (k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID",
        "INSERT INTO peerings VALUES ('[\"a\"]', '{\"hello\": 1}')",
        "PRAGMA user_version = 1"), "is not a peerkit record"),
    ("not-json-rows", lambda d: make_db(
        d, "CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID",
        "INSERT INTO meta VALUES ('[\"store\"]', 'not json')",
        "PRAGMA user_version = 1"), "table 'meta'"),
    ("newer", lambda d: make_db(d, "PRAGMA user_version = 99"), "schema version 99"),
]


@pytest.mark.parametrize(("make", "reason"), [f[1:] for f in FOREIGN],
                         ids=[f[0] for f in FOREIGN])
def test_foreign_database_is_refused(tmp_path: Path, make: Callable[[Path], None],
                                     reason: str) -> None:
    make(tmp_path)
    before = (tmp_path / DB_FILENAME).read_bytes()
    with pytest.raises(StoreOpenError) as info:
        SqliteStore(tmp_path)
    assert reason in str(info.value)
    assert (tmp_path / DB_FILENAME).read_bytes() == before  # not touched
    # the lock was released: a peerkit database elsewhere is unaffected, and this dir reopens
    # (and is refused again) without "in use"
    with pytest.raises(StoreOpenError, match=reason.split("'")[0]):
        SqliteStore(tmp_path)


def test_a_fresh_and_a_reopened_database_are_accepted(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    store.peering_write(Peering(name="dc2"))
    store.close()
    again = SqliteStore(tmp_path)
    assert [p.name for p in again.peering_list()] == ["dc2"]
    again.close()


def _plan(conn: sqlite3.Connection) -> str:
    return str(conn.execute(
        "EXPLAIN QUERY PLAN SELECT v FROM services WHERE ((k >= ? AND k < ?) OR k = ?) "
        "AND json_extract(v, '$.name') IN (?)", ("a", "b", "c", "d")).fetchall())


def test_the_services_name_index_is_built_on_open_and_used(tmp_path: Path) -> None:
    """Opening builds the services-by-name index (issue 10), also in a file made without
    it, and the lookup of an import batch's services by name uses it."""
    store = SqliteStore(tmp_path)
    store.peering_write(Peering(name="dc2"))
    store.close()
    conn = sqlite3.connect(tmp_path / DB_FILENAME)
    assert "services_by_name" in _plan(conn)
    conn.execute("DROP INDEX services_by_name")  # as a file written before the index
    conn.close()
    conn = sqlite3.connect(tmp_path / DB_FILENAME)  # (a fresh statement cache)
    assert "services_by_name" not in _plan(conn)
    conn.close()
    SqliteStore(tmp_path).close()
    conn = sqlite3.connect(tmp_path / DB_FILENAME)
    assert "services_by_name" in _plan(conn)
    conn.close()


def test_a_services_row_that_is_not_json_opens_without_the_index(tmp_path: Path) -> None:
    """A damaged services row keeps the index from being built: the store opens all the
    same, and the row is a StoreFailure when it is read, not a crash."""
    store = SqliteStore(tmp_path)
    store.peering_write(Peering(name="dc2"))
    store.close()
    conn = sqlite3.connect(tmp_path / DB_FILENAME, isolation_level=None)
    conn.execute("DROP INDEX services_by_name")
    conn.execute("INSERT INTO services VALUES ('[\"dc2\",\"default\",\"n\",\"s\"]', "
                 "'not json')")
    conn.close()
    store = SqliteStore(tmp_path)
    try:
        assert [p.name for p in store.peering_list()] == ["dc2"]
        with pytest.raises(StoreFailure):
            store.imported_service_names("dc2", "default")
        with pytest.raises(StoreFailure):
            store.import_batch("dc2", "default", [ImportService("s", [])])
    finally:
        store.close()
    conn = sqlite3.connect(tmp_path / DB_FILENAME)
    assert "services_by_name" not in _plan(conn)
    conn.close()


def test_empty_data_dir_name_is_refused() -> None:
    with pytest.raises(StoreOpenError, match="must not be empty"):
        SqliteStore("")


# ---------------------------------------------------------------------------------------------
# one server per data dir


def test_second_open_of_a_data_dir_is_refused_until_the_first_closes(tmp_path: Path) -> None:
    first = SqliteStore(tmp_path)
    with pytest.raises(StoreOpenError, match=r"in use by another peerkit process \(pid \d+\)"):
        SqliteStore(tmp_path)
    first.peering_write(Peering(name="dc2"))  # the first is unaffected
    first.close()
    second = SqliteStore(tmp_path)
    assert [p.name for p in second.peering_list()] == ["dc2"]
    second.close()


@pytest.mark.grpc
def test_two_serve_processes_on_one_data_dir(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", SERVE, "--name", "dc1", "--data-dir", str(tmp_path),
            "--grpc-addr", "127.0.0.1:0", "--plaintext"]
    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert first.stdout is not None
        line = first.stdout.readline()
        assert line.startswith("peerkit serve: dc1 listening on "), line
        second = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert second.stdout == ""
        err = second.stderr.strip()
        assert err.startswith("peerkit serve: cannot open data dir")
        assert f"in use by another peerkit process (pid {first.pid})" in err
        assert "Traceback" not in err and len(err.splitlines()) == 1
        assert first.poll() is None  # the first server is still running
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)
    assert first.returncode == 0


def test_serve_refuses_a_foreign_database(tmp_path: Path) -> None:
    make_db(tmp_path, "CREATE TABLE peerings (id INTEGER PRIMARY KEY, name TEXT)")
    result = subprocess.run(
        [sys.executable, "-c", SERVE, "--name", "dc1", "--data-dir", str(tmp_path),
         "--grpc-addr", "127.0.0.1:0", "--plaintext"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "is not a peerkit database" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------
# a failing disk under a serving server


class FailingConnection:
    """Wraps a sqlite3 connection; while ``failing`` every statement raises a disk error."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.failing = False

    def execute(self, sql: str, params: tuple[object, ...] = ()) -> sqlite3.Cursor:
        if self.failing:
            raise sqlite3.OperationalError("disk I/O error")
        return self.conn.execute(sql, params)

    @property
    def in_transaction(self) -> bool:
        return self.conn.in_transaction

    def close(self) -> None:
        self.conn.close()


def break_disk(store: SqliteStore) -> FailingConnection:
    """Every statement fails while ``failing``: on the store's connection, and on the
    connections its large reads open in a worker thread (``snapshot_reader``)."""
    backend = store._backend
    wrapper = FailingConnection(backend._conn)  # type: ignore[attr-defined]
    backend._conn = wrapper  # type: ignore[attr-defined]
    reader = backend.snapshot_reader

    def failing_reader() -> Any:
        make = reader()

        @contextmanager
        def read() -> Iterator[Any]:
            if wrapper.failing:
                raise StoreFailure("the SQLite database failed: disk I/O error")
            with make() as raw:  # type: ignore[misc]
                yield raw

        return read

    backend.snapshot_reader = failing_reader  # type: ignore[method-assign]
    return wrapper


async def test_rpcs_on_a_failing_disk_are_unavailable_and_the_server_survives(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    store = SqliteStore(tmp_path)
    async with running_cluster(MemoryNetwork(), "dc1", "dc1:8502", store=store) as dc1:
        await dc1.client.generate_token("dc2")
        peer_id, secret = await token_and_secret(dc1, "dc3")
        disk = break_disk(store)
        disk.failing = True
        for call in (dc1.client.generate_token("dc4"), dc1.client.peering_read("dc2"),
                     dc1.client.peering_list(), dc1.client.register_service("n1", "api"),
                     dc1.client.peering_delete("dc2"), dc1.client.read_catalog()):
            with pytest.raises(StreamFailed) as info:
                await call
            assert info.value.code is StatusCode.UNAVAILABLE
            assert info.value.message.startswith("the state store failed: ")
        stream = await open_raw_stream(dc1.client)
        await stream.send(open_message(peer_id, secret))
        with pytest.raises(StreamFailed) as sinfo:
            await stream.receive()
        assert sinfo.value.code is StatusCode.UNAVAILABLE
        status = await dc1.client.status()  # needs no store
        assert status.IsLeader
        disk.failing = False
        assert sorted(p.Name for p in await dc1.client.peering_list()) == ["dc2", "dc3"]
        await dc1.client.register_service("n1", "api")
    store.close()


async def test_a_corrupt_row_is_unavailable_not_a_crash(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    store = SqliteStore(tmp_path)
    async with running_cluster(MemoryNetwork(), "dc1", "dc1:8502", store=store) as dc1:
        await dc1.client.generate_token("dc2")
        other = sqlite3.connect(tmp_path / DB_FILENAME, isolation_level=None)
        other.execute("UPDATE peerings SET v = '{\"not\": \"a peering\"}'")
        other.close()
        with pytest.raises(StreamFailed) as info:
            await dc1.client.peering_read("dc2")
        assert info.value.code is StatusCode.UNAVAILABLE
        assert "a row of table 'peerings' does not decode" in info.value.message
        assert (await dc1.client.status()).IsLeader
    store.close()


async def test_a_stream_ends_when_the_exporters_disk_fails_and_resumes_after(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    net = MemoryNetwork()
    store1 = SqliteStore(tmp_path)
    async with two_clusters_with(net, store1) as (dc1, dc2):
        await peer(dc1, dc2, services1=("api",), services2=())
        disk = break_disk(store1)
        disk.failing = True
        # a local change wakes the export watcher: the stream ends with an error, no crash
        store1._committed(Change(store1.index + 1, frozenset({CATALOG}), local_catalog=True))
        await eventually(lambda: not dc2.connected("dc1"), dc1, dc2)
        assert dc1.server.is_leader  # still serving (Status itself reads the failing store)
        disk.failing = False
        assert (await dc1.client.status()).IsLeader
        await dc1.client.register_service("n2", "web")
        await dc1.client.export_service("web", "dc2")
        await until(dc2.store, lambda: dc2.imported("dc1") == ["api", "web"])
        assert dc2.connected("dc1")
    store1.close()


def test_serve_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    (tmp_path / DB_FILENAME).write_text("this is not SQLite\n" * 100)
    result = subprocess.run(
        [sys.executable, "-c", SERVE, "--name", "dc1", "--data-dir", str(tmp_path),
         "--grpc-addr", "127.0.0.1:0", "--plaintext"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == (f"peerkit serve: cannot open data dir {str(tmp_path)!r}: "
                                     "file is not a database")
