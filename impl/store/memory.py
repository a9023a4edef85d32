"""The in-memory backend: dicts of immutable rows, with an undo log so a failed transaction leaves
no trace. ``MemoryStore()`` is a ``StateStore`` over it.

Each table also keeps its keys in sorted order, so a prefix scan (all services of one node, all
nodes of one peer) is a binary search plus the matching rows, not a pass over the whole table:
deleting 10,000 imported nodes scans twice per node, which was quadratic without it.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

from .base import TABLES, Backend, BackendTxn, Key, Row, StateStore

_Table = dict[Key, Row]


def _table(tables: dict[str, _Table], name: str) -> _Table:
    try:
        return tables[name]
    except KeyError:
        raise ValueError(f"unknown table {name!r}") from None


class _MemoryTxn(BackendTxn):
    """Writes go straight into the tables; every overwritten or removed row is logged first."""

    def __init__(self, tables: dict[str, _Table], keys: dict[str, list[Key]], *,
                 write: bool) -> None:
        self._tables = tables
        self._keys = keys  # per table, every key in sorted order
        self._write = write
        self._undo: list[tuple[str, Key, Row | None]] = []

    def get(self, table: str, key: Key) -> Row | None:
        return _table(self._tables, table).get(key)

    def put(self, table: str, key: Key, row: Row) -> None:
        self._check_write()
        rows = _table(self._tables, table)
        old = rows.get(key)
        self._undo.append((table, key, old))
        if old is None:
            bisect.insort(self._keys[table], key)
        rows[key] = row

    def delete(self, table: str, key: Key) -> bool:
        self._check_write()
        rows = _table(self._tables, table)
        if key not in rows:
            return False
        self._undo.append((table, key, rows.pop(key)))
        self._drop_key(table, key)
        return True

    def scan(self, table: str, prefix: Key = ()) -> list[Row]:
        rows = _table(self._tables, table)
        if not prefix:
            return list(rows.values())
        keys = self._keys[table]
        n = len(prefix)
        out = []
        for i in range(bisect.bisect_left(keys, prefix), len(keys)):
            key = keys[i]
            if key[:n] != prefix:
                break
            out.append(rows[key])
        return out

    def rollback(self) -> None:
        for table, key, old in reversed(self._undo):
            rows = self._tables[table]
            if old is None:
                if rows.pop(key, None) is not None:
                    self._drop_key(table, key)
            else:
                if key not in rows:
                    bisect.insort(self._keys[table], key)
                rows[key] = old
        self._undo.clear()

    def _drop_key(self, table: str, key: Key) -> None:
        keys = self._keys[table]
        del keys[bisect.bisect_left(keys, key)]

    def _check_write(self) -> None:
        if not self._write:
            raise RuntimeError("write inside a read-only transaction")

    # the transaction is its own context manager (no generator per transaction: the store runs
    # one per operation, reads included): it commits by doing nothing, rolls back on any error
    def __enter__(self) -> _MemoryTxn:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        if exc_type is not None:
            self.rollback()


class MemoryBackend(Backend):
    """Rows kept in per-table dicts for the life of the process."""

    def __init__(self) -> None:
        self._tables: dict[str, _Table] = {name: {} for name in TABLES}
        self._keys: dict[str, list[Key]] = {name: [] for name in TABLES}
        self._closed = False

    def transaction(self, *, write: bool) -> _MemoryTxn:
        if self._closed:
            raise RuntimeError("the memory backend is closed")
        return _MemoryTxn(self._tables, self._keys, write=write)

    def close(self) -> None:
        self._closed = True


class MemoryStore(StateStore):
    """A ``StateStore`` held in memory; it starts empty and is lost when dropped."""

    def __init__(self, *, id_factory: Callable[[], str] | None = None) -> None:
        super().__init__(MemoryBackend(), id_factory=id_factory)
