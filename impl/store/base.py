"""The state store: upstream's write rules and errors, written once over a tiny backend interface.

``StateStore`` is the interface every caller uses. It implements every rule itself, on top of a
``Backend`` that only knows how to get, put, delete and scan rows by table and key inside a
transaction. The in-memory backend (``memory.py``) and the SQLite backend (``sqlite.py``) provide
that primitive layer and nothing else, so they cannot drift apart in behaviour.

Indexes and watches
-------------------
The store keeps a raft-like index. A write operation that puts or deletes at least one row commits
at ``index + 1`` and records that index for each *watch table* it touched: ``peerings``,
``trust_bundles``, ``catalog`` (nodes, services and checks) and ``exports``. An operation whose rule
makes it a no-op (deleting something absent, exporting twice, ...) touches no row, so it consumes
no index and wakes nobody. A refused operation (``StoreError``, ``ValueError``, ``TypeError``)
changes nothing at all, index included.

After a commit the store wakes every ``wait_for_change`` caller (a ``trio.Event`` replaced per
change) and then calls the synchronous subscribers in subscription order.

``LOCAL_CATALOG`` is a watch name for ``wait_for_change`` and ``table_index`` only: the index of
the last write that touched a *local* catalog row (``peer_name == ""``). An exporter's stream
end watches it instead of ``catalog`` because imported rows never change what it exports; with
mutual exports, watching the whole catalog woke every stream's exporter on every import (issue
10). It is kept in memory (not in ``meta``, not in dumps) and starts at the catalog's index on
open, so a restart can only wake a watcher once too often, never miss a change.

Batched import: ``import_batch`` applies the Responses a stream end received together in ONE
write transaction (one commit, one index), each with the same rules and results as the single
calls; a backend failure rolls the whole batch back, so a crash mid-batch leaves none of it
(and none of it was acknowledged: the stream ACKs after the commit). It runs through a
write-behind view of the transaction (``_BatchTxn``): the rows under the batch's nodes are read
with one query per table, writes are made at the end with ``put_many``/``delete_many``, and a
row equal to the stored one is not rewritten (it still counts as a write for the index), so a
batch costs a few SQLite statements instead of several per op (issue 10).

Concurrency
-----------
All operations except ``wait_for_change`` are synchronous and short; they are meant to be called
from the trio thread (they never await, so no other task can interleave with a transaction). The
store is not thread-safe.
"""

from __future__ import annotations

import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from typing import Final, TypeVar

import trio

from peerkit.model.vocabulary import (
    ERR_CREATE_MARKED,
    ERR_DELETE_UNMARKED,
    ERR_IMPORT_INACTIVE,
    ERR_WRITE_MARKED,
    PeeringState,
)

from .records import (
    DEFAULT_PARTITION,
    Check,
    CheckServiceNode,
    ExportEntry,
    Node,
    NodeInfo,
    Peering,
    Service,
    TrustBundle,
    check_int,
    check_name,
    check_str_tuple,
    check_timestamp,
)

# --------------------------------------------------------------------------------------------
# Errors, tables, rows
# --------------------------------------------------------------------------------------------


class StoreFailure(Exception):
    """The backend could not do an operation (an I/O error, a full disk, a row that does not
    decode); the operation changed nothing. Unlike StoreError this is not a rule's refusal: the
    caller reports it (UNAVAILABLE to an RPC's client) or retries later, and never crashes."""


class StoreError(Exception):
    """A write refused by a store rule. ``message`` is one of the vocabulary's ERR_* strings."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, kw_only=True)
class IndexEntry:
    """A row of the ``meta`` table: the store index (name "store") or a watch table's index."""

    name: str
    index: int

    def __post_init__(self) -> None:
        check_name(self.name, "IndexEntry.name")
        check_int(self.index, "IndexEntry.index")


Key = tuple[str, ...]
Row = Peering | TrustBundle | Node | Service | Check | ExportEntry | IndexEntry
R = TypeVar("R", Peering, TrustBundle, Node, Service, Check, ExportEntry, IndexEntry)

PEERINGS = "peerings"
TRUST_BUNDLES = "trust_bundles"
CATALOG = "catalog"
EXPORTS = "exports"
#: The tables a watch can name.
WATCH_TABLES = frozenset({PEERINGS, TRUST_BUNDLES, CATALOG, EXPORTS})
#: The local rows of the catalog only (see the module docstring); not persisted.
LOCAL_CATALOG = "local_catalog"
_WAITABLE = WATCH_TABLES | {LOCAL_CATALOG}

#: Physical table name -> the record type it holds. Backends create exactly these tables.
TABLES: Mapping[str, type[Row]] = {
    "peerings": Peering,
    "trust_bundles": TrustBundle,
    "nodes": Node,
    "services": Service,
    "checks": Check,
    "exports": ExportEntry,
    "meta": IndexEntry,
}
_TABLE_OF: dict[type[Row], str] = {cls: name for name, cls in TABLES.items()}
_WATCH_OF: dict[str, str] = {
    "peerings": PEERINGS,
    "trust_bundles": TRUST_BUNDLES,
    "nodes": CATALOG,
    "services": CATALOG,
    "checks": CATALOG,
    "exports": EXPORTS,
}
_STORE_INDEX = "store"
#: Rows per page of ``StateStore.dump_paged`` (a page of small rows decodes in about a ms).
DUMP_PAGE_ROWS = 500


def key_of(row: Row) -> Key:
    """The primary key of a row in its table. Keys lead with the fields scans filter on."""
    if isinstance(row, Peering):
        return (row.id,)
    if isinstance(row, TrustBundle):
        return (row.partition, row.peer_name)
    if isinstance(row, Node):
        return (row.peer_name, row.partition, row.name)
    if isinstance(row, Service):
        return (row.peer_name, row.partition, row.node, row.id)
    if isinstance(row, Check):
        return (row.peer_name, row.partition, row.node, row.check_id)
    if isinstance(row, ExportEntry):
        return (row.partition, row.service)
    return (row.name,)


# --------------------------------------------------------------------------------------------
# The backend primitive interface
# --------------------------------------------------------------------------------------------


class BackendTxn(ABC):
    """Row access inside one backend transaction. Tables are the keys of ``TABLES``."""

    @abstractmethod
    def get(self, table: str, key: Key) -> Row | None:
        """The row stored under ``key``, or None."""

    @abstractmethod
    def put(self, table: str, key: Key, row: Row) -> None:
        """Insert or replace the row under ``key``."""

    @abstractmethod
    def delete(self, table: str, key: Key) -> bool:
        """Remove the row under ``key``; return whether there was one."""

    @abstractmethod
    def scan(self, table: str, prefix: Key = ()) -> list[Row]:
        """Every row whose key starts with ``prefix``, in no particular order."""

    def scan_matching(self, table: str, prefix: Key, field: str,
                      values: Collection[str]) -> list[Row]:
        """The rows of ``scan(table, prefix)`` whose ``field`` is one of ``values``. A backend
        may filter before decoding (SQLite does, in SQL); this default filters after."""
        return [row for row in self.scan(table, prefix) if getattr(row, field) in values]

    def scan_pages(self, table: str, rows: int) -> Iterator[list[Row]]:
        """Every row of ``table``, in lists of at most ``rows`` (read and decoded page by
        page where the backend can; this default gives one page)."""
        yield self.scan(table)

    def scan_prefixes(self, table: str, prefixes: Collection[Key]) -> list[Row]:
        """Every row whose key starts with one of ``prefixes`` (none a prefix of another),
        in no particular order. SQLite reads them in one statement by key ranges."""
        return [row for prefix in prefixes for row in self.scan(table, prefix)]

    def scan_prefixes_of(self, tables: Sequence[str],
                         prefixes: Collection[Key]) -> dict[str, list[Row]]:
        """``scan_prefixes`` of each of ``tables`` with the same prefixes, by table. SQLite
        reads them all in one statement (a statement is what a batch pays for, issue 10)."""
        return {table: self.scan_prefixes(table, prefixes) for table in tables}

    def put_many(self, table: str, rows: Sequence[tuple[Key, Row]]) -> None:
        """``put`` of each (key, row); the keys are distinct. A backend may write them in
        fewer statements (SQLite does: a statement per statement is what a batch pays for)."""
        for key, row in rows:
            self.put(table, key, row)

    def delete_many(self, table: str, keys: Sequence[Key]) -> None:
        """``delete`` of each key (distinct keys; absent ones are skipped)."""
        for key in keys:
            self.delete(table, key)


class Backend(ABC):
    """Storage for ``StateStore``: atomic transactions over keyed rows, and nothing else."""

    @abstractmethod
    def transaction(self, *, write: bool) -> AbstractContextManager[BackendTxn]:
        """A transaction that commits when the block ends normally and rolls back on error.

        A rolled-back transaction must leave no trace. ``write=False`` promises no put/delete.
        """

    def snapshot_reader(self) -> Callable[[], AbstractContextManager[BackendTxn]] | None:
        """A factory of read transactions each on a connection of its own, which may stay
        open while the store goes on writing (a consistent snapshot, read page by page
        between other tasks' steps); None (the default) when the backend has none (the
        memory backend: it has no I/O or decoding to spread out)."""
        return None

    @abstractmethod
    def close(self) -> None:
        """Release resources. Idempotent."""


# --------------------------------------------------------------------------------------------
# Value types returned by the store
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One committed write: its index and the watch tables it touched."""

    index: int
    tables: frozenset[str]
    local_catalog: bool = False  # it wrote a local catalog row (LOCAL_CATALOG)


@dataclass(frozen=True, kw_only=True)
class StoreDump:
    """Everything the store holds, each table sorted by key; equal dumps mean equal stores."""

    index: int
    table_indexes: tuple[tuple[str, int], ...]
    peerings: tuple[Peering, ...]
    trust_bundles: tuple[TrustBundle, ...]
    nodes: tuple[Node, ...]
    services: tuple[Service, ...]
    checks: tuple[Check, ...]
    exports: tuple[ExportEntry, ...]


Subscriber = Callable[[Change], None]
#: ``local_instances_by_service`` reads all local nodes and checks at once above this many
#: instances (below, a read per node costs less than reading the whole local catalog).
_BULK_READ_FROM: Final = 16
ImportedInstance = tuple[Node, Service, Sequence[Check]]


class _Tx:
    """Typed access over a backend transaction; tracks the watch tables a write touched."""

    def __init__(self, raw: BackendTxn, index: int) -> None:
        self.raw = raw
        self.index = index
        self.touched: set[str] = set()
        self.local_catalog = False  # a local (peer_name "") node, service or check was written

    def get(self, cls: type[R], key: Key) -> R | None:
        row = self.raw.get(_TABLE_OF[cls], key)
        if row is None:
            return None
        if not isinstance(row, cls):
            raise TypeError(f"backend returned {type(row).__name__} from {_TABLE_OF[cls]}")
        return row

    def scan(self, cls: type[R], prefix: Key = ()) -> list[R]:
        return self._typed(cls, self.raw.scan(_TABLE_OF[cls], prefix))

    def scan_matching(self, cls: type[R], prefix: Key, field: str,
                      values: Collection[str]) -> list[R]:
        return self._typed(cls, self.raw.scan_matching(_TABLE_OF[cls], prefix, field, values))

    @staticmethod
    def _typed(cls: type[R], rows: list[Row]) -> list[R]:
        out: list[R] = []
        for row in rows:
            if not isinstance(row, cls):
                raise TypeError(f"backend returned {type(row).__name__} from {_TABLE_OF[cls]}")
            out.append(row)
        return out

    def put(self, row: Row) -> None:
        table = _TABLE_OF[type(row)]
        self.raw.put(table, key_of(row), row)
        self._touch(table, row)

    def delete(self, row: Row) -> None:
        table = _TABLE_OF[type(row)]
        if self.raw.delete(table, key_of(row)):
            self._touch(table, row)

    def _touch(self, table: str, row: Row) -> None:
        watch = _WATCH_OF[table]
        self.touched.add(watch)
        if isinstance(row, Node | Service | Check) and not row.peer_name:
            self.local_catalog = True


def _by_peering_name(p: Peering) -> tuple[str, str, str]:
    return (p.partition, p.name.lower(), p.id)


def _check_partition(partition: object) -> str:
    return check_name(partition, "partition")


# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------


class _Reading:
    """``StateStore._read()``: a read transaction, as a plain class rather than a generator
    context manager (``_write``'s form): reads are most of what the store does (a conformance
    run of 300 examples makes over 100,000) and the generator's set-up was a measurable part of
    each. The same steps as ``_write`` without the commit: refuse if closed or nested, mark
    busy, enter the backend's read transaction; on the way out leave it (passing the error on,
    so it rolls back) and clear busy."""

    __slots__ = ("_inner", "_store")

    def __init__(self, store: StateStore) -> None:
        self._store = store

    def __enter__(self) -> _Tx:
        store = self._store
        store._enter()
        store._busy = True
        try:
            inner = store._backend.transaction(write=False)
            raw = inner.__enter__()
        except BaseException:
            store._busy = False
            raise
        self._inner = inner
        return _Tx(raw, store._index)

    def __exit__(self, *exc: object) -> bool | None:
        try:
            return self._inner.__exit__(*exc)  # type: ignore[arg-type]
        finally:
            self._store._busy = False


class StateStore:
    """The peering state store. Construct a concrete one with ``MemoryStore`` or ``SqliteStore``.

    ``id_factory`` produces candidate peering IDs (default: random UUIDs); the store retries
    until it gets one that is unused.
    """

    #: mistakes of the mutation catalog in the import guard (peerkit.impl.mutants); a server
    #: started with mutants sets them; none by default
    mutants: frozenset[str] = frozenset()

    def __init__(self, backend: Backend, *, id_factory: Callable[[], str] | None = None) -> None:
        self._backend = backend
        self._id_factory: Callable[[], str] = id_factory or (lambda: str(uuid.uuid4()))
        self._closed = False
        self._busy = False
        self._subscribers: list[Subscriber] = []
        self._changed = trio.Event()
        self._index = 0
        self._table_indexes: dict[str, int] = dict.fromkeys(sorted(WATCH_TABLES), 0)
        with backend.transaction(write=False) as raw:
            for row in _Tx(raw, 0).scan(IndexEntry):
                if row.name == _STORE_INDEX:
                    self._index = row.index
                elif row.name in WATCH_TABLES:
                    self._table_indexes[row.name] = row.index
        self._local_catalog_index = self._table_indexes[CATALOG]
        #: ``import_batch``'s last peering lookup: (peer name, partition, the peerings
        #: index it was made at, mutants) -> whether imports were refused
        self._import_guard: tuple[tuple[str, str, int, frozenset[str]], bool] | None = None

    # ---- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Close the backend and wake every ``wait_for_change`` (which then raises)."""
        if self._closed:
            return
        self._closed = True
        self._backend.close()
        self._changed.set()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- transactions ---------------------------------------------------------------------

    def _enter(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the state store is closed")
        if self._busy:
            raise RuntimeError("state store operations cannot be nested")

    def _read(self) -> _Reading:
        return _Reading(self)

    @contextmanager
    def _write(self) -> Iterator[_Tx]:
        self._enter()
        self._busy = True
        try:
            with self._backend.transaction(write=True) as raw:
                tx = _Tx(raw, self._index + 1)
                yield tx
                touched = frozenset(tx.touched)
                if touched:
                    raw.put_many("meta", [
                        ((name,), IndexEntry(name=name, index=tx.index))
                        for name in (_STORE_INDEX, *sorted(touched))])
        finally:
            self._busy = False
        if touched:
            self._committed(Change(tx.index, touched, tx.local_catalog))

    def _committed(self, change: Change) -> None:
        self._index = change.index
        for table in change.tables:
            self._table_indexes[table] = change.index
        if change.local_catalog:
            self._local_catalog_index = change.index
        event, self._changed = self._changed, trio.Event()
        event.set()
        for callback in list(self._subscribers):
            callback(change)

    # ---- watches --------------------------------------------------------------------------

    @property
    def index(self) -> int:
        """The index of the last committed write (0 for an empty store)."""
        return self._index

    def table_index(self, table: str) -> int:
        """The index of the last write that touched ``table`` (one of ``WATCH_TABLES``, or
        ``LOCAL_CATALOG``)."""
        return self._watch_index(_check_watch_table(table))

    def _watch_index(self, table: str) -> int:
        if table == LOCAL_CATALOG:
            return self._local_catalog_index
        return self._table_indexes[table]

    async def wait_for_change(self, tables: Iterable[str], after_index: int) -> int:
        """Wait until one of ``tables`` changed after ``after_index``; return its table index.

        The result is the highest table index among ``tables``, so passing it back as
        ``after_index`` waits for the next change. Returns (after a checkpoint) at once if a
        change already happened. Raises ``trio.ClosedResourceError`` if the store is closed.
        """
        if isinstance(tables, str):
            raise TypeError("tables must be a collection of table names, not a str")
        watched = tuple(_check_watch_table(t) for t in tables)
        if not watched:
            raise ValueError("wait_for_change needs at least one table")
        check_int(after_index, "after_index")
        while True:
            if self._closed:
                raise trio.ClosedResourceError("the state store is closed")
            current = max(self._watch_index(t) for t in watched)
            if current > after_index:
                await trio.lowlevel.checkpoint()
                return max(self._watch_index(t) for t in watched)
            await self._changed.wait()

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(change)`` after every committed write; return an unsubscribe function.

        Callbacks run synchronously after the commit. An exception from a callback propagates
        to the writer, whose write has nevertheless committed.
        """
        if not callable(callback):
            raise TypeError("callback must be callable")
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    # ---- peerings: writes ------------------------------------------------------------------

    def peering_write(self, p: Peering) -> Peering:
        """Create or replace a peering by (partition, case-insensitive name); return the row.

        Rules (peering-protocol.md §2.3, released numbering):
        - an existing inactive row refuses the write (ERR_WRITE_MARKED);
        - an existing active row is replaced by the input, keeping its id and create_index; an
          input state of UNDEFINED keeps the existing state;
        - with no existing row an inactive input is refused (ERR_CREATE_MARKED); otherwise a
          new unique id is assigned and the state is PENDING for an acceptor row (no
          addresses) or ESTABLISHING for a dialer row, unless PENDING/ESTABLISHING was given;
        - a row written with ``deleted_at`` holds DELETING unless it is TERMINATED;
        - an inactive row never keeps its secrets; modify_index is the write's index.
        ACTIVE and FAILING are read views and are refused (ValueError), as is DELETING without
        ``deleted_at``.
        """
        if not isinstance(p, Peering):
            raise TypeError(f"peering_write takes a Peering, not {type(p).__name__}")
        if p.state in (PeeringState.ACTIVE, PeeringState.FAILING):
            raise ValueError(f"{p.state.name} is computed on read and cannot be stored")
        if p.state is PeeringState.DELETING and p.deleted_at is None:
            raise ValueError("a peering in state DELETING needs deleted_at")
        with self._write() as tx:
            existing = self._peering_by_name(tx, p.partition, p.name)
            if existing is not None:
                if not existing.is_active():
                    raise StoreError(ERR_WRITE_MARKED)
                peering_id = existing.id
                create_index = existing.create_index
                state = existing.state if p.state is PeeringState.UNDEFINED else p.state
            else:
                if not p.is_active():
                    raise StoreError(ERR_CREATE_MARKED)
                peering_id = self._new_peering_id(tx)
                create_index = tx.index
                if p.state in (PeeringState.PENDING, PeeringState.ESTABLISHING):
                    state = p.state
                elif p.should_dial():
                    state = PeeringState.ESTABLISHING
                else:
                    state = PeeringState.PENDING
            if p.deleted_at is not None and state is not PeeringState.TERMINATED:
                state = PeeringState.DELETING
            row = replace(
                p,
                id=peering_id,
                state=state,
                create_index=create_index,
                modify_index=tx.index,
            )
            if not row.is_active():
                row = replace(row, establishment_secret=None, stream_secret=None)
            tx.put(row)
        return row

    def peering_mark_deleted(self, name: str, partition: str, now: float) -> Peering | None:
        """Mark a peering for deletion (the delete RPC's write); return the marked row.

        The row keeps id, name, partition and create_index, gets ``deleted_at=now`` and state
        DELETING, and loses every other field. Works on an active or a TERMINATED row (the
        behaviour fixed by #14364); a missing or already-marked row is a no-op (returns None).
        """
        check_name(name, "name")
        _check_partition(partition)
        deleted_at = check_timestamp(now, "now")
        with self._write() as tx:
            existing = self._peering_by_name(tx, partition, name)
            if existing is None or existing.deleted_at is not None:
                return None
            row = Peering(
                id=existing.id,
                name=existing.name,
                partition=existing.partition,
                deleted_at=deleted_at,
                state=PeeringState.DELETING,
                create_index=existing.create_index,
                modify_index=tx.index,
            )
            tx.put(row)
        return row

    def peering_delete(self, name: str, partition: str = DEFAULT_PARTITION) -> bool:
        """Remove an inactive peering row; return whether a row was removed.

        Missing: no-op. Active: ERR_DELETE_UNMARKED.
        """
        check_name(name, "name")
        _check_partition(partition)
        with self._write() as tx:
            existing = self._peering_by_name(tx, partition, name)
            if existing is None:
                return False
            if existing.is_active():
                raise StoreError(ERR_DELETE_UNMARKED)
            tx.delete(existing)
        return True

    def peering_terminate_by_id(self, peering_id: str) -> Peering | None:
        """Set state TERMINATED on the row with that id (no check of its current state).

        Everything else is kept, ``deleted_at`` included, except the secrets, which an inactive
        row never keeps. A missing id is a no-op (returns None).
        """
        check_name(peering_id, "peering_id")
        with self._write() as tx:
            existing = tx.get(Peering, (peering_id,))
            if existing is None:
                return None
            row = replace(
                existing,
                state=PeeringState.TERMINATED,
                establishment_secret=None,
                stream_secret=None,
                modify_index=tx.index,
            )
            tx.put(row)
        return row

    # ---- peerings: reads -------------------------------------------------------------------

    def peering_read(self, name: str, partition: str = DEFAULT_PARTITION) -> Peering | None:
        """The peering with that name (case-insensitive) in that partition, active or not."""
        check_name(name, "name")
        _check_partition(partition)
        with self._read() as tx:
            return self._peering_by_name(tx, partition, name)

    def peering_read_by_id(self, peering_id: str) -> Peering | None:
        check_name(peering_id, "peering_id")
        with self._read() as tx:
            return tx.get(Peering, (peering_id,))

    def peering_list(self, partition: str | None = None) -> list[Peering]:
        """Every peering (inactive ones included), of one partition or of all; sorted by name."""
        if partition is not None:
            _check_partition(partition)
        with self._read() as tx:
            rows = tx.scan(Peering)
        return sorted(
            (p for p in rows if partition is None or p.partition == partition),
            key=_by_peering_name,
        )

    def peering_list_deleted(self) -> list[Peering]:
        """Every inactive peering (marked or TERMINATED) across all partitions."""
        with self._read() as tx:
            rows = tx.scan(Peering)
        return sorted((p for p in rows if not p.is_active()), key=_by_peering_name)

    # ---- trust bundles ---------------------------------------------------------------------

    def trust_bundle_write(self, b: TrustBundle) -> TrustBundle:
        """Upsert the bundle imported from peer ``b.peer_name``; needs an active peering."""
        if not isinstance(b, TrustBundle):
            raise TypeError(f"trust_bundle_write takes a TrustBundle, not {type(b).__name__}")
        with self._write() as tx:
            self._require_active(tx, b.peer_name, b.partition)
            existing = tx.get(TrustBundle, key_of(b))
            create_index = existing.create_index if existing is not None else tx.index
            row = replace(b, create_index=create_index, modify_index=tx.index)
            tx.put(row)
        return row

    def trust_bundle_delete(self, peer_name: str, partition: str = DEFAULT_PARTITION) -> bool:
        """Delete a peer's bundle; return whether there was one (absent: no-op)."""
        check_name(peer_name, "peer_name")
        _check_partition(partition)
        with self._write() as tx:
            existing = tx.get(TrustBundle, (partition, peer_name))
            if existing is None:
                return False
            tx.delete(existing)
        return True

    def trust_bundle_read(
        self, peer_name: str, partition: str = DEFAULT_PARTITION
    ) -> TrustBundle | None:
        check_name(peer_name, "peer_name")
        _check_partition(partition)
        with self._read() as tx:
            return tx.get(TrustBundle, (partition, peer_name))

    def trust_bundle_list(self, partition: str | None = None) -> list[TrustBundle]:
        """All bundles (of one partition or of all), sorted by (partition, peer_name)."""
        if partition is not None:
            _check_partition(partition)
        with self._read() as tx:
            rows = tx.scan(TrustBundle, () if partition is None else (partition,))
        return sorted(rows, key=key_of)

    # ---- local catalog ---------------------------------------------------------------------

    def register_service(self, node: Node, service: Service, checks: Iterable[Check] = ()) -> None:
        """Upsert a local node, one service on it and the given checks (others are kept)."""
        check_list = _check_records(checks, Check, "checks")
        if not isinstance(node, Node):
            raise TypeError(f"node must be a Node, not {type(node).__name__}")
        if not isinstance(service, Service):
            raise TypeError(f"service must be a Service, not {type(service).__name__}")
        records: tuple[Node | Service | Check, ...] = (node, service, *check_list)
        for record in records:
            if record.peer_name != "":
                raise ValueError(
                    "register_service writes local data (peer_name ''); imported data goes "
                    "through import_service_nodes"
                )
        _check_instance(node, service, check_list)
        with self._write() as tx:
            tx.put(node)
            tx.put(service)
            for check in check_list:
                tx.put(check)

    def deregister_service(
        self, service_id: str, *, node: str | None = None, partition: str = DEFAULT_PARTITION
    ) -> bool:
        """Remove a local service instance (on ``node``, or on every node) and its checks.

        The node stays. Returns whether anything was removed.
        """
        check_name(service_id, "service_id")
        if node is not None:
            check_name(node, "node")
        _check_partition(partition)
        prefix: Key = ("", partition) if node is None else ("", partition, node)
        with self._write() as tx:
            found = [s for s in tx.scan(Service, prefix) if s.id == service_id]
            for service in found:
                self._delete_instance(tx, service)
        return bool(found)

    def local_service_instances(
        self, service_name: str, *, partition: str = DEFAULT_PARTITION
    ) -> list[CheckServiceNode]:
        """Local instances of a service with node and checks, sorted by (node, service id)."""
        check_name(service_name, "service_name")
        return self.local_instances_by_service((service_name,), partition=partition).get(
            service_name, [])

    def local_instances_by_service(
        self, service_names: Iterable[str], *, partition: str = DEFAULT_PARTITION
    ) -> dict[str, list[CheckServiceNode]]:
        """Local instances of each named service (with node and checks, sorted by (node,
        service id)); services without instances are left out. One pass over the local catalog
        however many services are asked for, so a publish of N exported services costs one scan,
        not N."""
        wanted = set(service_names)
        for name in wanted:
            check_name(name, "service_name")
        _check_partition(partition)
        out: dict[str, list[CheckServiceNode]] = {}
        with self._read() as tx:
            services = [s for s in tx.scan(Service, ("", partition)) if s.name in wanted]
            checks_by_node: dict[str, list[Check]] = {}
            nodes: dict[str, Node] | None = None
            if len(services) > _BULK_READ_FROM:
                # many instances: one scan of the local nodes and one of the local checks
                # instead of a read per node and a scan per node (issue 10: a stream's publish
                # of K exported services made 2K reads)
                nodes = {n.name: n for n in tx.scan(Node, ("", partition))}
                for check in tx.scan(Check, ("", partition)):
                    checks_by_node.setdefault(check.node, []).append(check)
            for service in sorted(services, key=key_of):
                node = (tx.get(Node, ("", partition, service.node)) if nodes is None
                        else nodes.get(service.node))
                if node is None:
                    continue
                if service.node not in checks_by_node:
                    checks_by_node[service.node] = ([] if nodes is not None else
                                                    tx.scan(Check, ("", partition, service.node)))
                checks = [c for c in checks_by_node[service.node]
                          if c.service_id in ("", service.id)]
                out.setdefault(service.name, []).append(
                    CheckServiceNode(
                        node=node, service=service, checks=tuple(sorted(checks, key=key_of))
                    )
                )
        return out

    # ---- imported catalog ------------------------------------------------------------------

    def import_service_nodes(
        self,
        peer_name: str,
        partition: str,
        service_name: str,
        nodes: Sequence[ImportedInstance],
    ) -> None:
        """The importer's upsert of one exported service from ``peer_name``.

        ``nodes`` is the full current list of (node, service instance, checks) for that service.
        Every record is stamped with ``peer_name`` and ``partition``. Instances of the service
        that are no longer listed are removed with their checks; a node left with no service is
        removed. For each listed node, its node checks and the checks of the listed instances
        are replaced by the ones given. Needs an active peering (ERR_IMPORT_INACTIVE).
        """
        check_name(peer_name, "peer_name")
        _check_partition(partition)
        check_name(service_name, "service_name")
        merged = _merge_import(peer_name, partition, service_name, nodes)
        with self._write() as tx:
            self._require_active(tx, peer_name, partition)
            self._replace_service(tx, peer_name, partition, service_name, merged)

    def import_delete_service(self, peer_name: str, partition: str, service_name: str) -> bool:
        """Remove every imported instance of a service from that peer; always allowed."""
        check_name(peer_name, "peer_name")
        _check_partition(partition)
        check_name(service_name, "service_name")
        with self._write() as tx:
            removed = self._replace_service(tx, peer_name, partition, service_name, {})
        return removed

    def import_batch(
        self, peer_name: str, partition: str, ops: Sequence[ImportOp]
    ) -> list[Exception | None]:
        """Apply a stream end's received resources from ``peer_name`` in ONE transaction.

        Each op is one of ``ImportService(name, nodes)`` (as ``import_service_nodes``, or as
        ``import_delete_service`` when ``nodes`` is empty), ``ImportServiceList(keep)`` (delete
        every imported service not in ``keep``) or ``ImportBundle(bundle)`` (as
        ``trust_bundle_write``). The result has one entry per op, in order: None when it was
        applied, or the StoreError/ValueError/TypeError the single call would have raised, in
        which case that op wrote nothing (its checks come before its writes) and the others
        are applied all the same. A StoreFailure (the backend failed) rolls the whole batch
        back and propagates. One commit, one index, one wake-up for the whole batch.
        """
        check_name(peer_name, "peer_name")
        _check_partition(partition)
        results: list[Exception | None] = []
        # the peer's services the batch can touch: all of them if it holds the service list,
        # else only those it names (read without decoding the others: issue 10)
        named = {op.name for op in ops if isinstance(op, ImportService)
                 and isinstance(op.name, str)}
        listed = any(isinstance(op, ImportServiceList) for op in ops)
        names = None if listed else named
        with self._write() as tx:
            # reads and writes go through a write-behind view: the rows the batch can touch
            # are read with one query per table, and the writes are made at the end with a
            # few multi-row statements (each SQLite statement hands the GIL to the gRPC
            # thread and back: issue 10)
            batch = _BatchTxn(tx.raw)
            tx.raw = batch
            cache = _PeerServices(tx, peer_name, partition, names)
            nodes = _named_nodes(ops) | cache.nodes()
            if nodes:
                prefixes = [(peer_name, partition, name) for name in sorted(nodes)]
                batch.preload_tables(("nodes", "services", "checks"), prefixes)
            for op in ops:
                try:
                    self._apply_import(tx, peer_name, partition, op, cache)
                except (StoreError, ValueError, TypeError) as exc:
                    results.append(exc)
                else:
                    results.append(None)
            batch.flush()
        return results

    def _apply_import(self, tx: _Tx, peer_name: str, partition: str, op: ImportOp,
                      cache: _PeerServices) -> None:
        """One op of ``import_batch``: every check first, then the writes."""
        if isinstance(op, ImportService):
            check_name(op.name, "service_name")
            if not op.nodes:
                self._replace_service(tx, peer_name, partition, op.name, {}, cache)
                return
            merged = _merge_import(peer_name, partition, op.name, op.nodes)
            self._require_active_once(tx, peer_name, partition, cache)
            self._replace_service(tx, peer_name, partition, op.name, merged, cache)
        elif isinstance(op, ImportServiceList):
            keep = frozenset(check_str_tuple(op.keep, "keep"))
            for name in sorted(cache.names() - keep):
                self._replace_service(tx, peer_name, partition, name, {}, cache)
        elif isinstance(op, ImportBundle):
            b = op.bundle
            if not isinstance(b, TrustBundle):
                raise TypeError(f"ImportBundle takes a TrustBundle, not {type(b).__name__}")
            if (b.peer_name, b.partition) != (peer_name, partition):
                raise ValueError("the bundle is not from this batch's peer and partition")
            self._require_active_once(tx, peer_name, partition, cache)
            existing = tx.get(TrustBundle, key_of(b))
            create_index = existing.create_index if existing is not None else tx.index
            tx.put(replace(b, create_index=create_index, modify_index=tx.index))
        else:
            raise TypeError(f"unknown import op {type(op).__name__}")

    def delete_imported_nodes(
        self, peer_name: str, partition: str, node_names: Iterable[str]
    ) -> int:
        """One batch (one transaction) deleting imported nodes with their services and checks.

        Always allowed; names that are not there are skipped. Returns how many nodes were
        removed.
        """
        check_name(peer_name, "peer_name")
        _check_partition(partition)
        names = check_str_tuple(node_names, "node_names")
        removed = 0
        with self._write() as tx:
            for name in dict.fromkeys(names):
                if self._delete_node(tx, peer_name, partition, name):
                    removed += 1
        return removed

    def imported_node_dump(self, peer_name: str, partition: str) -> list[NodeInfo]:
        """Every node imported from that peer with its services and checks, sorted by name."""
        check_name(peer_name, "peer_name")
        _check_partition(partition)
        prefix: Key = (peer_name, partition)
        with self._read() as tx:
            nodes = tx.scan(Node, prefix)
            services = tx.scan(Service, prefix)
            checks = tx.scan(Check, prefix)
        # group once by node (a per-node filter over all services would be quadratic)
        by_node_services: dict[str, list[Service]] = {}
        for service in services:
            by_node_services.setdefault(service.node, []).append(service)
        by_node_checks: dict[str, list[Check]] = {}
        for check in checks:
            by_node_checks.setdefault(check.node, []).append(check)
        out: list[NodeInfo] = []
        for node in sorted(nodes, key=key_of):
            out.append(
                NodeInfo(
                    node=node,
                    services=tuple(sorted(by_node_services.get(node.name, ()), key=key_of)),
                    checks=tuple(sorted(by_node_checks.get(node.name, ()), key=key_of)),
                )
            )
        return out

    def imported_service_names(self, peer_name: str, partition: str) -> list[str]:
        """The sorted names of the services imported from that peer."""
        check_name(peer_name, "peer_name")
        _check_partition(partition)
        with self._read() as tx:
            services = tx.scan(Service, (peer_name, partition))
        return sorted({s.name for s in services})

    # ---- exports ---------------------------------------------------------------------------

    def export_service(
        self, service: str, peer_name: str, *, partition: str = DEFAULT_PARTITION
    ) -> None:
        """Export a local service to a peer (by peering name). The peering need not exist yet."""
        check_name(service, "service")
        check_name(peer_name, "peer_name")
        _check_partition(partition)
        with self._write() as tx:
            entry = tx.get(ExportEntry, (partition, service))
            peers = () if entry is None else entry.peers
            if peer_name in peers:
                return
            tx.put(ExportEntry(service=service, partition=partition, peers=(*peers, peer_name)))

    def unexport_service(
        self, service: str, peer_name: str, *, partition: str = DEFAULT_PARTITION
    ) -> None:
        """Stop exporting a service to a peer; not exported: no-op."""
        check_name(service, "service")
        check_name(peer_name, "peer_name")
        _check_partition(partition)
        with self._write() as tx:
            entry = tx.get(ExportEntry, (partition, service))
            if entry is None or peer_name not in entry.peers:
                return
            rest = tuple(p for p in entry.peers if p != peer_name)
            if rest:
                tx.put(replace(entry, peers=rest))
            else:
                tx.delete(entry)

    def export_entries(self, partition: str | None = None) -> list[ExportEntry]:
        """The export configuration as written, sorted by (partition, service)."""
        if partition is not None:
            _check_partition(partition)
        with self._read() as tx:
            rows = tx.scan(ExportEntry, () if partition is None else (partition,))
        return sorted(rows, key=key_of)

    def exported_services_for_peer(
        self, peer_name: str, *, partition: str = DEFAULT_PARTITION
    ) -> list[str]:
        """Sorted names of the services exported to that peer.

        Like upstream (which resolves the peering first), the answer is empty unless the
        peering exists and is active; exports written before the peering existed count once it
        does.
        """
        check_name(peer_name, "peer_name")
        _check_partition(partition)
        with self._read() as tx:
            peering = self._peering_by_name(tx, partition, peer_name)
            if peering is None or not peering.is_active():
                return []
            wanted = peering.name.lower()
            entries = tx.scan(ExportEntry, (partition,))
        return sorted(e.service for e in entries if any(p.lower() == wanted for p in e.peers))

    def peerings_for_service(
        self, service: str, *, partition: str = DEFAULT_PARTITION
    ) -> list[Peering]:
        """The active peerings a service is exported to, sorted by name; inactive are skipped."""
        check_name(service, "service")
        _check_partition(partition)
        with self._read() as tx:
            entry = tx.get(ExportEntry, (partition, service))
            if entry is None:
                return []
            found: dict[str, Peering] = {}
            for peer_name in entry.peers:
                peering = self._peering_by_name(tx, partition, peer_name)
                if peering is not None and peering.is_active():
                    found[peering.id] = peering
        return sorted(found.values(), key=_by_peering_name)

    # ---- whole-store view ------------------------------------------------------------------

    def dump(self) -> StoreDump:
        """A full, sorted snapshot of every table and index (for tests and debugging)."""
        with self._read() as tx:
            return StoreDump(
                index=self._index,
                table_indexes=tuple(sorted(self._table_indexes.items())),
                peerings=tuple(sorted(tx.scan(Peering), key=key_of)),
                trust_bundles=tuple(sorted(tx.scan(TrustBundle), key=key_of)),
                nodes=tuple(sorted(tx.scan(Node), key=key_of)),
                services=tuple(sorted(tx.scan(Service), key=key_of)),
                checks=tuple(sorted(tx.scan(Check), key=key_of)),
                exports=tuple(sorted(tx.scan(ExportEntry), key=key_of)),
            )

    async def dump_paged(self, page_rows: int = DUMP_PAGE_ROWS) -> StoreDump:
        """``dump()`` for large admin reads (ReadCatalog): with a backend that has a
        ``snapshot_reader`` (SQLite), one read transaction on a connection of its own, read
        and decoded ``page_rows`` rows at a time with a trio checkpoint between pages, so the
        event loop (streams, RPCs, writes) keeps running while a large store is read; else
        ``dump()`` at once. The indexes come from the snapshot itself (its ``meta`` rows). Not
        a worker thread: the pages stay on the trio thread, so virtual time (MockClock) and
        the store's single-thread rule are unaffected."""
        self._enter()
        reader = self._backend.snapshot_reader()
        if reader is None:
            await trio.lowlevel.checkpoint()
            return self.dump()
        tables: dict[type[Row], list[Row]] = {}
        with reader() as raw:
            for cls in (IndexEntry, Peering, TrustBundle, Node, Service, Check, ExportEntry):
                rows: list[Row] = []
                for page in raw.scan_pages(_TABLE_OF[cls], page_rows):
                    for row in page:
                        if not isinstance(row, cls):
                            raise TypeError(f"backend returned {type(row).__name__} from "
                                            f"{_TABLE_OF[cls]}")
                    rows.extend(page)
                    await trio.lowlevel.checkpoint()
                tables[cls] = sorted(rows, key=key_of)
        indexes = dict.fromkeys(sorted(WATCH_TABLES), 0)
        index = 0
        for entry in tables[IndexEntry]:
            assert isinstance(entry, IndexEntry)
            if entry.name == _STORE_INDEX:
                index = entry.index
            elif entry.name in WATCH_TABLES:
                indexes[entry.name] = entry.index
        return StoreDump(
            index=index, table_indexes=tuple(sorted(indexes.items())),
            peerings=tuple(tables[Peering]),  # type: ignore[arg-type]
            trust_bundles=tuple(tables[TrustBundle]),  # type: ignore[arg-type]
            nodes=tuple(tables[Node]),  # type: ignore[arg-type]
            services=tuple(tables[Service]),  # type: ignore[arg-type]
            checks=tuple(tables[Check]),  # type: ignore[arg-type]
            exports=tuple(tables[ExportEntry]),  # type: ignore[arg-type]
        )

    def local_services(self) -> list[Service]:
        """Every local service instance (peer_name ""), in all partitions, sorted by key: a
        scan of the local rows only, whatever was imported."""
        with self._read() as tx:
            return sorted(tx.scan(Service, ("",)), key=key_of)


    # ---- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _peering_by_name(tx: _Tx, partition: str, name: str) -> Peering | None:
        lowered = name.lower()
        for p in tx.scan(Peering):
            if p.partition == partition and p.name.lower() == lowered:
                return p
        return None

    def _new_peering_id(self, tx: _Tx) -> str:
        while True:
            candidate = self._id_factory()
            check_name(candidate, "generated peering id")
            if tx.get(Peering, (candidate,)) is None:
                return candidate

    def _require_active(self, tx: _Tx, peer_name: str, partition: str) -> None:
        peering = self._peering_by_name(tx, partition, peer_name)
        refused = peering is None or not peering.is_active()
        if "import-when-inactive" in self.mutants:  # mutant: refused only when there is no row
            refused = peering is None
        if "import-guard-inverted" in self.mutants:  # mutant: refused only for an active row
            refused = peering is not None and peering.is_active()
        if refused:
            raise StoreError(ERR_IMPORT_INACTIVE)

    def _require_active_once(self, tx: _Tx, peer_name: str, partition: str,
                             cache: _PeerServices) -> None:
        """``_require_active`` for an op of ``import_batch``: the peering is looked up once per
        batch (no op of a batch writes peerings, so every op would find the same answer; the
        lookup scans every peering and was a tenth of an import's time, issue 10)."""
        if cache.refused is None:
            # and across batches while no peering write has committed since (the peerings
            # index has not moved: a rolled-back write changed nothing): a stream imports
            # batch after batch for one peering, and the scan was a statement per batch
            key = (peer_name, partition, self._table_indexes[PEERINGS], self.mutants)
            if self._import_guard is not None and self._import_guard[0] == key:
                cache.refused = self._import_guard[1]
            else:
                try:
                    self._require_active(tx, peer_name, partition)
                except StoreError:
                    cache.refused = True
                else:
                    cache.refused = False
                self._import_guard = (key, cache.refused)
        if cache.refused:
            raise StoreError(ERR_IMPORT_INACTIVE)

    @staticmethod
    def _delete_instance(tx: _Tx, service: Service) -> None:
        """Delete a service instance and the checks bound to it."""
        prefix: Key = (service.peer_name, service.partition, service.node)
        for check in tx.scan(Check, prefix):
            if check.service_id == service.id:
                tx.delete(check)
        tx.delete(service)

    @staticmethod
    def _delete_node(tx: _Tx, peer_name: str, partition: str, name: str) -> bool:
        """Delete a node with all its services and checks; return whether the node existed."""
        prefix: Key = (peer_name, partition, name)
        for service in tx.scan(Service, prefix):
            tx.delete(service)
        for check in tx.scan(Check, prefix):
            tx.delete(check)
        node = tx.get(Node, prefix)
        if node is None:
            return False
        tx.delete(node)
        return True

    def _replace_service(
        self,
        tx: _Tx,
        peer_name: str,
        partition: str,
        service_name: str,
        merged: Mapping[str, _ImportedNode],
        cache: _PeerServices | None = None,
    ) -> bool:
        """Make the imported instances of one service exactly ``merged``; report removals.
        ``cache`` (a batch's one scan of the peer's services) replaces the scan per call."""
        prefix: Key = (peer_name, partition)
        if cache is None:
            cache = _PeerServices(tx, peer_name, partition)
        wanted = {(n, s.id) for n, entry in merged.items() for s in entry.services}
        removed = False
        emptied: set[str] = set()
        for service in cache.of(service_name):
            if (service.node, service.id) not in wanted:
                self._delete_instance(tx, service)
                cache.remove(service)
                emptied.add(service.node)
                removed = True
        for name, entry in merged.items():
            tx.put(entry.node)
            owned = {"", *(s.id for s in entry.services)}
            for check in tx.scan(Check, (*prefix, name)):
                if check.service_id in owned and check.check_id not in entry.checks:
                    tx.delete(check)
            for service in entry.services:
                tx.put(service)
                cache.put(service)
            for check in entry.checks.values():
                tx.put(check)
        for name in sorted(emptied - merged.keys()):
            if not tx.scan(Service, (*prefix, name)):
                self._delete_node(tx, peer_name, partition, name)
        return removed


# --------------------------------------------------------------------------------------------
# Input validation helpers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportService:
    """``import_batch`` op: the full current instance list of one exported service (empty: the
    service is gone)."""

    name: str
    nodes: Sequence[ImportedInstance]


@dataclass(frozen=True)
class ImportServiceList:
    """``import_batch`` op: the exporter's list of services; every other import is deleted."""

    keep: Sequence[str]


@dataclass(frozen=True)
class ImportBundle:
    """``import_batch`` op: the peer's trust bundle."""

    bundle: TrustBundle


ImportOp = ImportService | ImportServiceList | ImportBundle


class _PeerServices:
    """The imported service rows of one peer, read with one scan and kept up to date by the
    transaction's own writes, so that a batch of imports scans the peer's services once, not
    once per service."""

    def __init__(self, tx: _Tx, peer_name: str, partition: str,
                 names: Collection[str] | None = None) -> None:
        """All the peer's services, or (``names``) only those of these names: the others
        are then never asked for (``of``) and never listed (``names``)."""
        prefix: Key = (peer_name, partition)
        rows = (tx.scan(Service, prefix) if names is None
                else tx.scan_matching(Service, prefix, "name", names))
        self._by_key: dict[tuple[str, str], Service] = {(s.node, s.id): s for s in rows}
        self._by_name: dict[str, set[tuple[str, str]]] = {}
        #: whether the peering refuses imports (None: not looked up yet in this batch)
        self.refused: bool | None = None
        for key, service in self._by_key.items():
            self._by_name.setdefault(service.name, set()).add(key)

    def of(self, name: str) -> list[Service]:
        return [self._by_key[k] for k in sorted(self._by_name.get(name, ()))]

    def names(self) -> set[str]:
        return {name for name, keys in self._by_name.items() if keys}

    def nodes(self) -> set[str]:
        """The nodes of the services read (where a batch may delete instances)."""
        return {node for node, _id in self._by_key}

    def put(self, service: Service) -> None:
        self.remove(service)
        key = (service.node, service.id)
        self._by_key[key] = service
        self._by_name.setdefault(service.name, set()).add(key)

    def remove(self, service: Service) -> None:
        key = (service.node, service.id)
        old = self._by_key.pop(key, None)
        if old is not None:
            self._by_name[old.name].discard(key)


def _named_nodes(ops: Sequence[ImportOp]) -> set[str]:
    """The node names a batch's ops list (read ahead only: each op is validated when it is
    applied; ``nodes`` that are not a list or tuple are not iterated here, as a one-shot
    iterable would then be empty when the op is applied)."""
    out: set[str] = set()
    for op in ops:
        if isinstance(op, ImportService) and isinstance(op.nodes, list | tuple):
            for item in op.nodes:
                if (isinstance(item, tuple) and len(item) == 3 and isinstance(item[0], Node)
                        and isinstance(item[0].name, str)):
                    out.add(item[0].name)
    return out


class _BatchTxn(BackendTxn):
    """A write-behind view of a write transaction, for ``import_batch`` (issue 10).

    It answers reads from the rows it knows (read ahead with ``preload``, read once, or
    written in this view) and keeps writes pending until ``flush``, which writes each table's
    pending rows with ``put_many``/``delete_many``. A put of a row equal to the one it knows
    is stored already is not written again (the store still counts it as a write: the index
    moves as before). Pending writes of a table are flushed before any read of that table it
    must ask the backend, so every read sees them; every write of the transaction must go
    through this view. Rolling back the transaction drops everything, pending writes included.
    """

    def __init__(self, raw: BackendTxn) -> None:
        self.raw = raw
        #: per table, key -> the row as of this view (None: known to be absent)
        self._known: dict[str, dict[Key, Row | None]] = {}
        #: per table, prefix -> the keys of every present row under it (all are known)
        self._covered: dict[str, dict[Key, set[Key]]] = {}
        #: per table, the lengths of the prefixes in ``_covered`` (``_note`` looks up only
        #: the key's prefixes of these lengths, not all of them: issue 10)
        self._covered_lengths: dict[str, set[int]] = {}
        #: per table, key -> the row to write (None: to delete), not yet in the backend
        self._pending: dict[str, dict[Key, Row | None]] = {}

    def preload(self, table: str, prefixes: Collection[Key]) -> None:
        """Read every row under each of ``prefixes`` (none a prefix of another) in one query;
        later scans of those prefixes and gets of keys under them need no backend read."""
        self.preload_tables((table,), prefixes)

    def preload_tables(self, tables: Sequence[str], prefixes: Collection[Key]) -> None:
        """``preload`` of each of ``tables`` with the same prefixes, in one query."""
        fresh = {table: [p for p in prefixes if p not in self._covered.get(table, {})]
                 for table in tables}
        wanted = [table for table in tables if fresh[table]]
        if not wanted:
            return
        for table in wanted:
            self._flush_table(table)
        if all(fresh[table] == fresh[wanted[0]] for table in wanted):
            found = self.raw.scan_prefixes_of(wanted, fresh[wanted[0]])
        else:
            found = {table: self.raw.scan_prefixes(table, fresh[table]) for table in wanted}
        for table in wanted:
            covered = self._covered.setdefault(table, {})
            for prefix in fresh[table]:
                covered[prefix] = set()
                self._covered_lengths.setdefault(table, set()).add(len(prefix))
            for row in found[table]:
                self._note(table, key_of(row), row)

    def get(self, table: str, key: Key) -> Row | None:
        known = self._known.setdefault(table, {})
        if key in known:
            return known[key]
        covered = self._covered.get(table)
        if covered and any(key[:i] in covered for i in self._covered_lengths[table]
                           if i <= len(key)):
            return None
        # an unknown key has no pending write: the backend's answer is current
        row = self.raw.get(table, key)
        known[key] = row
        return row

    def put(self, table: str, key: Key, row: Row) -> None:
        known = self._known.setdefault(table, {})
        if key in known and known[key] == row:
            return
        self._pending.setdefault(table, {})[key] = row
        self._note(table, key, row)

    def delete(self, table: str, key: Key) -> bool:
        if self.get(table, key) is None:
            return False
        self._pending.setdefault(table, {})[key] = None
        self._note(table, key, None)
        return True

    def scan(self, table: str, prefix: Key = ()) -> list[Row]:
        covered = self._covered.get(table, {})
        if prefix in covered:
            known = self._known.get(table, {})
            return [row for key in covered[prefix] if (row := known[key]) is not None]
        self._flush_table(table)
        rows = self.raw.scan(table, prefix)
        self._covered.setdefault(table, {})[prefix] = set()
        self._covered_lengths.setdefault(table, set()).add(len(prefix))
        for row in rows:
            self._note(table, key_of(row), row)
        return rows

    def scan_matching(self, table: str, prefix: Key, field: str,
                      values: Collection[str]) -> list[Row]:
        self._flush_table(table)
        rows = self.raw.scan_matching(table, prefix, field, values)
        for row in rows:
            self._note(table, key_of(row), row)
        return rows

    def scan_pages(self, table: str, rows: int) -> Iterator[list[Row]]:
        self._flush_table(table)
        yield from self.raw.scan_pages(table, rows)

    def scan_prefixes(self, table: str, prefixes: Collection[Key]) -> list[Row]:
        self._flush_table(table)
        rows = self.raw.scan_prefixes(table, prefixes)
        for row in rows:
            self._note(table, key_of(row), row)
        return rows

    def flush(self) -> None:
        """Write every pending row to the backend."""
        for table in sorted(self._pending):
            self._flush_table(table)

    def _flush_table(self, table: str) -> None:
        pending = self._pending.pop(table, None)
        if pending:
            self.raw.delete_many(table, [k for k, row in pending.items() if row is None])
            self.raw.put_many(table, [(k, row) for k, row in pending.items() if row is not None])

    def _note(self, table: str, key: Key, row: Row | None) -> None:
        """Record ``row`` as the current row under ``key`` (None: absent)."""
        self._known.setdefault(table, {})[key] = row
        covered = self._covered.get(table)
        if covered:
            for i in self._covered_lengths[table]:
                keys = covered.get(key[:i]) if i <= len(key) else None
                if keys is not None:
                    if row is None:
                        keys.discard(key)
                    else:
                        keys.add(key)


@dataclass(frozen=True)
class _ImportedNode:
    node: Node
    services: tuple[Service, ...]
    checks: Mapping[str, Check]


def _check_watch_table(table: object) -> str:
    if not isinstance(table, str):
        raise TypeError(f"table must be a str, not {type(table).__name__}")
    if table not in _WAITABLE:
        raise ValueError(
            f"unknown table {table!r}; watch tables: {', '.join(sorted(_WAITABLE))}"
        )
    return table


def _check_records(items: object, cls: type[R], what: str) -> tuple[R, ...]:
    if isinstance(items, str | bytes) or not isinstance(items, Iterable):
        raise TypeError(f"{what} must be a sequence of {cls.__name__}")
    out = tuple(items)
    for item in out:
        if not isinstance(item, cls):
            raise TypeError(f"each of {what} must be a {cls.__name__}, not {type(item).__name__}")
    return out


def _check_instance(node: Node, service: Service, checks: Sequence[Check]) -> None:
    """Check that a service and its checks belong to the node and that check ids are unique."""
    if service.node != node.name or service.partition != node.partition:
        raise ValueError(
            f"service {service.id!r} is on node {service.node!r} in {service.partition!r}, "
            f"not on node {node.name!r} in {node.partition!r}"
        )
    seen: set[str] = set()
    for check in checks:
        if check.node != node.name or check.partition != node.partition:
            raise ValueError(f"check {check.check_id!r} is not on node {node.name!r}")
        if check.service_id not in ("", service.id):
            raise ValueError(
                f"check {check.check_id!r} belongs to service {check.service_id!r}, "
                f"not to {service.id!r}"
            )
        if check.check_id in seen:
            raise ValueError(f"duplicate check id {check.check_id!r}")
        seen.add(check.check_id)


S = TypeVar("S", Node, Service, Check)


def _stamped(record: S, peer_name: str, partition: str) -> S:
    """``record`` with this peer name and partition. One the stream built is stamped already:
    it is kept as it is (``replace`` would rebuild and re-validate an equal record, which was
    an eighth of an import batch's time, issue 10)."""
    if record.peer_name == peer_name and record.partition == partition:
        return record
    return replace(record, peer_name=peer_name, partition=partition)


def _merge_import(
    peer_name: str, partition: str, service_name: str, nodes: object
) -> dict[str, _ImportedNode]:
    """Validate an import list, stamp peer/partition on it and group it per node."""
    if isinstance(nodes, str | bytes) or not isinstance(nodes, Iterable):
        raise TypeError("nodes must be a sequence of (Node, Service, checks) tuples")
    merged: dict[str, _ImportedNode] = {}
    for item in tuple(nodes):
        if not isinstance(item, tuple) or len(item) != 3:
            raise TypeError(f"each import entry must be a (Node, Service, checks) tuple: {item!r}")
        node, service, raw_checks = item
        if not isinstance(node, Node):
            raise TypeError(f"import entry node must be a Node, not {type(node).__name__}")
        if not isinstance(service, Service):
            raise TypeError(f"import entry service must be a Service, not {type(service).__name__}")
        checks = _check_records(raw_checks, Check, "import entry checks")
        if service.name != service_name:
            raise ValueError(f"import of {service_name!r} contains service {service.name!r}")
        node = _stamped(node, peer_name, partition)
        service = _stamped(service, peer_name, partition)
        checks = tuple(_stamped(c, peer_name, partition) for c in checks)
        _check_instance(node, service, checks)
        previous = merged.get(node.name)
        if previous is None:
            merged[node.name] = _ImportedNode(node, (service,), {c.check_id: c for c in checks})
            continue
        if previous.node != node:
            raise ValueError(f"conflicting records for imported node {node.name!r}")
        if any(s.id == service.id for s in previous.services):
            raise ValueError(f"duplicate service instance {service.id!r} on node {node.name!r}")
        combined = dict(previous.checks)
        for check in checks:
            if combined.get(check.check_id, check) != check:
                raise ValueError(f"conflicting check {check.check_id!r} on node {node.name!r}")
            combined[check.check_id] = check
        merged[node.name] = _ImportedNode(node, (*previous.services, service), combined)
    return merged
