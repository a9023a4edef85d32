"""The durable backend: one SQLite file (WAL mode) under a data dir; ``SqliteStore(data_dir)``.

Layout: one table per store table, ``(k TEXT PRIMARY KEY, v TEXT NOT NULL)``, where ``k`` is the
row key as a compact JSON array and ``v`` the record as a JSON object, plus one index, of the
services by name (``services_by_name``, built on open if missing). The schema is created on
open; ``PRAGMA user_version`` holds the schema version. Every store operation is one SQLite
transaction (``BEGIN IMMEDIATE`` for writes), rolled back on any error, so reopening the file
restores exactly the committed state, the index counters included (they live in ``meta``).

Calls are synchronous on purpose: each is a handful of small statements on a local file, and
``synchronous=NORMAL`` in WAL mode does not fsync on commit, so they are short enough to run on
the trio thread. Durability across an OS crash is therefore "up to the last checkpoint"; across a
process crash every committed transaction survives.

Open one ``SqliteStore`` per file at a time: the store caches the index counters it loaded on open.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import fields
from pathlib import Path
from typing import Any

from peerkit.model.vocabulary import PeeringState

from .base import TABLES, Backend, BackendTxn, Key, Row, StateStore, StoreFailure
from .records import FrozenMeta, Peering

#: The database file inside the data dir.
DB_FILENAME = "peerkit-state.sqlite"
#: The lock file inside the data dir (held with flock while a store is open).
LOCK_FILENAME = "peerkit.lock"
SCHEMA_VERSION = 1
#: Rows per multi-row statement of ``put_many``/``delete_many`` (2 parameters a row, well
#: under SQLite's oldest limit of 999 parameters a statement).
_CHUNK_ROWS = 400
#: Prefixes per statement of ``scan_prefixes`` (3 parameters each).
_CHUNK_PREFIXES = 300
#: The index of the services by name (see ``SqliteBackend._setup``).
_NAME_INDEX = "services_by_name"
#: ``scan_prefixes_of``'s statement per tuple of tables.
_PREFIX_JOIN: dict[tuple[str, ...], str] = {}
#: The fields of each table's records (what ``scan_matching`` may filter on).
_FIELDS = {table: frozenset(f.name for f in fields(cls)) for table, cls in TABLES.items()}


# --------------------------------------------------------------------------------------------
# Codec
# --------------------------------------------------------------------------------------------


# One encoder each, made once: ``json.dumps`` with non-default arguments builds a new
# JSONEncoder per call, which was a visible share of an import batch's time (issue 10). The
# output is the same as ``json.dumps`` with these arguments (tuples encode as arrays).
_KEY_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_ROW_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
#: A str as JSON, as the encoders above write it (ensure_ascii=False)
_encode_str: Callable[[str], str] = json.encoder.encode_basestring
#: The C scanner behind ``json.loads`` (issue 10): ``json.loads`` wraps it in three Python
#: calls and two whitespace regex matches, a measurable part of decoding a stored row.
#: (``scan_once`` is set by ``JSONDecoder.__init__``; typeshed does not declare it)
_scan_json: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
#: Each record class's field names (``dataclasses.fields`` is slow to call per row).
_FIELD_NAMES: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls)) for cls in TABLES.values()}
#: Each record class's (field name, its JSON key and colon), in the sorted order of the keys.
_LABELS: dict[type, tuple[tuple[str, str], ...]] = {
    cls: tuple((name, _encode_str(name) + ":") for name in sorted(names))
    for cls, names in _FIELD_NAMES.items()}


def encode_key(key: Key) -> str:
    # keys are tuples of str: joining the C string encoder's output gives the encoder's
    # exact text at a third of the cost (a batch encodes thousands of keys, issue 10)
    try:
        return "[" + ",".join(map(_encode_str, key)) + "]"
    except TypeError:  # not all str: the general encoder
        return _KEY_ENCODER.encode(list(key))


def _prefix_range(prefix: Key) -> tuple[str, str]:
    """The half-open text range holding exactly the longer keys that start with ``prefix``.

    Every such key encodes as ``[c1,...,cn,`` followed by more; the bound replaces the final
    ``,`` by the next character, ``-``. (A key equal to the prefix is matched separately.)
    """
    low = encode_key(prefix)[:-1] + ","  # "[c1,...,cn]" less its "]": one encode, not n
    return low, low[:-1] + "-"


def _str_prefix_range(prefix: Key) -> tuple[str, str]:
    """The half-open text range holding exactly the keys that start with ``prefix`` (itself
    included), for a prefix whose parts are all str: such a key's text starts with the
    prefix's text less its "]" (a JSON string closes with an unescaped quote), so the bound
    replaces that last quote by the next character, "#"."""
    low = encode_key(prefix)[:-1]
    return low, low[:-1] + "#"


def _plain(value: object) -> Any:
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return value  # the common case first: no isinstance against the Mapping ABC
    if isinstance(value, PeeringState):
        return int(value)
    if isinstance(value, FrozenMeta):
        return value.to_dict()
    if isinstance(value, tuple):
        return list(value)
    return value


def encode_row(row: Row) -> str:
    labels = _LABELS.get(type(row))
    if labels is not None and (flat := _encode_flat(row, labels)) is not None:
        return flat
    names = _FIELD_NAMES.get(type(row))
    if names is None:
        names = tuple(f.name for f in fields(row))
    return _ROW_ENCODER.encode({name: _plain(getattr(row, name)) for name in names})


def _encode_flat(row: Row, labels: tuple[tuple[str, str], ...]) -> str | None:
    """``_ROW_ENCODER``'s exact text for a row whose fields are all str, int, bool, None or
    tuples of str (nodes, services, checks: what an import writes), written directly at half
    the cost (issue 10); None for any other row."""
    parts: list[str] = []
    for name, label in labels:
        value = getattr(row, name)
        kind = type(value)
        if kind is str:
            text = _encode_str(value)
        elif kind is int:
            text = int.__repr__(value)
        elif kind is bool:
            text = "true" if value else "false"
        elif value is None:
            text = "null"
        elif kind is tuple and all(type(item) is str for item in value):
            text = "[" + ",".join(map(_encode_str, value)) + "]"
        else:
            return None
        parts.append(label + text)
    return "{" + ",".join(parts) + "}"


#: Each table's field names as a set, to compare with a decoded row's keys.
_FIELD_SETS: dict[str, frozenset[str]] = {
    table: frozenset(_FIELD_NAMES[cls]) for table, cls in TABLES.items()}


def _loads(text: str) -> Any:
    """``json.loads(text)``, the same value or error: a text that is exactly one JSON value
    (what encode_row writes) goes straight through the C scanner; anything else (leading or
    trailing whitespace or data, a BOM, bytes, a malformed row) is left to ``json.loads``."""
    try:
        value, end = _scan_json(text, 0)
    except Exception:
        return json.loads(text)
    return value if end == len(text) else json.loads(text)


def decode_row(table: str, text: str) -> Row:
    cls = TABLES[table]
    data: dict[str, Any] = _loads(text)
    if cls is Peering:
        data["state"] = PeeringState(data["state"])
    if type(data) is dict and data.keys() == _FIELD_SETS[table]:
        # every field given (what encode_row writes): what ``cls(**data)`` builds, without
        # the frozen __init__'s per-field setattr (a quarter of decoding a catalog row; a
        # stream's start decodes four rows per exported service, issue 10); __post_init__
        # validates and normalises as ever, so a bad row still raises
        row: Row = cls.__new__(cls)
        row.__dict__.update(data)
        row.__post_init__()
        return row
    return cls(**data)


def _decode_stored(table: str, text: str) -> Row:
    """A stored row, or StoreFailure if it does not decode (a corrupt or foreign row)."""
    try:
        return decode_row(table, text)
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise StoreFailure(f"a row of table {table!r} does not decode: {exc}") from None


# --------------------------------------------------------------------------------------------
# Backend
# --------------------------------------------------------------------------------------------


def _check_table(table: str) -> str:
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}")
    return table


class _SqliteTxn(BackendTxn):
    def __init__(self, conn: sqlite3.Connection, *, write: bool) -> None:
        self._conn = conn
        self._write = write

    def get(self, table: str, key: Key) -> Row | None:
        cur = self._conn.execute(
            f"SELECT v FROM {_check_table(table)} WHERE k = ?", (encode_key(key),)
        )
        found = cur.fetchone()
        return None if found is None else _decode_stored(table, found[0])

    def put(self, table: str, key: Key, row: Row) -> None:
        self._check_write()
        self._conn.execute(
            f"INSERT OR REPLACE INTO {_check_table(table)} (k, v) VALUES (?, ?)",
            (encode_key(key), encode_row(row)),
        )

    def put_many(self, table: str, rows: Sequence[tuple[Key, Row]]) -> None:
        # one multi-row statement per chunk, not one per row: a statement's step releases
        # the GIL, and getting it back behind the gRPC thread is most of its cost (issue 10)
        self._check_write()
        _check_table(table)
        for start in range(0, len(rows), _CHUNK_ROWS):
            chunk = rows[start:start + _CHUNK_ROWS]
            params: list[str] = []
            for key, row in chunk:
                params += (encode_key(key), encode_row(row))
            self._conn.execute(
                f"INSERT OR REPLACE INTO {table} (k, v) VALUES "
                + ",".join(["(?,?)"] * len(chunk)),
                params,
            )

    def delete_many(self, table: str, keys: Sequence[Key]) -> None:
        self._check_write()
        _check_table(table)
        for start in range(0, len(keys), _CHUNK_ROWS):
            chunk = [encode_key(key) for key in keys[start:start + _CHUNK_ROWS]]
            self._conn.execute(
                f"DELETE FROM {table} WHERE k IN ({','.join('?' * len(chunk))})", chunk)

    def delete(self, table: str, key: Key) -> bool:
        self._check_write()
        cur = self._conn.execute(
            f"DELETE FROM {_check_table(table)} WHERE k = ?", (encode_key(key),)
        )
        return cur.rowcount > 0

    def scan(self, table: str, prefix: Key = ()) -> list[Row]:
        _check_table(table)
        if prefix:
            low, high = _prefix_range(prefix)
            cur = self._conn.execute(
                f"SELECT v FROM {table} WHERE (k >= ? AND k < ?) OR k = ?",
                (low, high, encode_key(prefix)),
            )
        else:
            cur = self._conn.execute(f"SELECT v FROM {table}")
        return [_decode_stored(table, text) for (text,) in cur.fetchall()]

    def scan_matching(self, table: str, prefix: Key, field: str,
                      values: Collection[str]) -> list[Row]:
        _check_table(table)
        if field not in _FIELDS.get(table, ()):
            raise ValueError(f"unknown field {field!r} of table {table!r}")
        wanted = sorted(values)
        if not wanted:
            return []
        if prefix and all(type(c) is str for c in prefix + tuple(wanted)):
            # one key range (_str_prefix_range) and the values as one JSON parameter: a
            # statement of constant text, prepared once, which SQLite answers from the
            # services_by_name index (the form below is prepared anew for each number of
            # values, and an import batch makes one per batch, issue 10)
            cur = self._conn.execute(
                f"SELECT v FROM {table} WHERE k >= ?1 AND k < ?2 "
                f"AND json_extract(v, '$.{field}') IN (SELECT value FROM json_each(?3))",
                (*_str_prefix_range(prefix), _KEY_ENCODER.encode(wanted)),
            )
            return [_decode_stored(table, text) for (text,) in cur.fetchall()]
        low, high = _prefix_range(prefix) if prefix else ("", "\U0010ffff")
        marks = ",".join("?" * len(wanted))
        cur = self._conn.execute(
            f"SELECT v FROM {table} WHERE ((k >= ? AND k < ?) OR k = ?) "
            f"AND json_extract(v, '$.{field}') IN ({marks})",
            (low, high, encode_key(prefix), *wanted),
        )
        return [_decode_stored(table, text) for (text,) in cur.fetchall()]

    def scan_prefixes(self, table: str, prefixes: Collection[Key]) -> list[Row]:
        # one statement of key ranges per chunk (SQLite searches each range in the primary
        # key: no full scan, no JSON decoding of the rows it does not return)
        _check_table(table)
        wanted = list(prefixes)
        out: list[Row] = []
        for start in range(0, len(wanted), _CHUNK_PREFIXES):
            params: list[str] = []
            for prefix in wanted[start:start + _CHUNK_PREFIXES]:
                low, high = _prefix_range(prefix)
                params += (low, high, encode_key(prefix))
            terms = " OR ".join(["(k >= ? AND k < ?) OR k = ?"] * (len(params) // 3))
            cur = self._conn.execute(f"SELECT v FROM {table} WHERE {terms}", params)
            out += [_decode_stored(table, text) for (text,) in cur.fetchall()]
        return out

    def scan_prefixes_of(self, tables: Sequence[str],
                         prefixes: Collection[Key]) -> dict[str, list[Row]]:
        # One statement for all the tables (UNION ALL) whose text does not depend on the
        # number of prefixes, so SQLite prepares it once: the prefixes' key ranges go in as
        # one JSON parameter, joined to each table's primary key (a range search per prefix).
        # The OR-of-ranges form of scan_prefixes is prepared anew for each batch size and its
        # planning grows with the terms: reading an import batch's rows this way costs a
        # third to a half as much (about 0.25 ms against 0.7-1.3 ms for 40 prefixes of 1,000
        # rows a table, issue 10). Each prefix of str is one key range (_str_prefix_range).
        names = [_check_table(table) for table in tables]
        wanted = list(dict.fromkeys(prefixes))
        if not all(prefix and all(type(c) is str for c in prefix) for prefix in wanted):
            return super().scan_prefixes_of(tables, wanted)
        bounds = [list(_str_prefix_range(prefix)) for prefix in wanted]
        sql = _PREFIX_JOIN.get(tuple(names))
        if sql is None:
            sql = ("WITH p(lo, hi) AS (SELECT json_extract(value, '$[0]'), "
                   "json_extract(value, '$[1]') FROM json_each(?1)) "
                   + " UNION ALL ".join(f"SELECT {n}, {table}.v FROM p JOIN {table} "
                                        f"ON {table}.k >= p.lo AND {table}.k < p.hi"
                                        for n, table in enumerate(names)))
            _PREFIX_JOIN[tuple(names)] = sql
        out: dict[str, list[Row]] = {table: [] for table in names}
        for n, text in self._conn.execute(sql, (_KEY_ENCODER.encode(bounds),)).fetchall():
            table = names[n]
            out[table].append(_decode_stored(table, text))
        return out

    def scan_pages(self, table: str, rows: int) -> Iterator[list[Row]]:
        cur = self._conn.execute(f"SELECT v FROM {_check_table(table)}")
        while page := cur.fetchmany(max(1, rows)):
            yield [_decode_stored(table, text) for (text,) in page]

    def _check_write(self) -> None:
        if not self._write:
            raise RuntimeError("write inside a read-only transaction")


class StoreOpenError(RuntimeError):
    """The data dir or database cannot be used (another process holds it, it is not peerkit's,
    or it is from a newer peerkit); the message says which, for the operator."""


class SqliteBackend(Backend):
    """Rows in one SQLite database file, WAL mode, one transaction per store operation."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        # isolation_level=None: no implicit transactions; this class issues BEGIN/COMMIT itself.
        self._conn: sqlite3.Connection | None = sqlite3.connect(self.path, isolation_level=None)
        try:
            self._setup(self._conn)
        except BaseException:
            self._conn.close()
            self._conn = None
            raise

    def _setup(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreOpenError(
                f"{self.path}: the database has schema version {version}; this peerkit knows "
                f"{SCHEMA_VERSION}"
            )
        self._check_foreign(conn, version)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreOpenError(f"could not switch the database to WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            for table in TABLES:
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {table} "
                    "(k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID"
                )
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            # the services by name: an import batch looks up the peer's services of the names
            # it holds (``scan_matching``); without the index that reads and parses every
            # service of the peer, once per batch (a sixth of the trio thread's time in a
            # 1,000-service replication, issue 10). An index is no change of layout: a file
            # with or without it opens in any peerkit of this schema version. A services row
            # that is not JSON (a damaged or foreign file) makes the index fail to build: the
            # store then opens without it, slower, and the row fails when it is read.
            try:
                conn.execute("SAVEPOINT name_index")
                conn.execute(f"CREATE INDEX IF NOT EXISTS {_NAME_INDEX} "
                             "ON services (json_extract(v, '$.name'))")
                conn.execute("RELEASE name_index")
            except sqlite3.Error:
                conn.execute("ROLLBACK TO name_index")
                conn.execute("RELEASE name_index")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _check_foreign(self, conn: sqlite3.Connection, version: int) -> None:
        """Refuse a database that peerkit did not create: tables but no schema version, or a
        table of peerkit's name with another layout, or rows that do not decode (only the
        small ``peerings`` and ``meta`` tables are read in full)."""
        tables = {name for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}
        if version == 0 and tables:
            raise StoreOpenError(
                f"{self.path} is not a peerkit database: it holds tables "
                f"({', '.join(sorted(tables)[:5])}) but no peerkit schema version"
            )
        for table in sorted(tables & set(TABLES)):
            columns = [(name, str(kind).upper(), pk)
                       for (_cid, name, kind, _notnull, _default, pk)
                       in conn.execute(f"PRAGMA table_info({table})")]
            if columns != [("k", "TEXT", 1), ("v", "TEXT", 0)]:
                raise StoreOpenError(
                    f"{self.path} is not a peerkit database: table {table!r} has columns "
                    f"{[c[0] for c in columns]}, not peerkit's (k, v)"
                )
        for table in sorted(tables & {"peerings", "meta"}):
            for key, text in conn.execute(f"SELECT k, v FROM {table}"):
                try:
                    decode_row(table, text)
                except (ValueError, TypeError, KeyError, RecursionError) as exc:
                    raise StoreOpenError(
                        f"{self.path}: a row of table {table!r} (key {str(key)[:60]}) is not "
                        f"a peerkit record: {exc}"
                    ) from None

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[BackendTxn]:
        conn = self._conn
        if conn is None:
            raise RuntimeError("the sqlite backend is closed")
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield _SqliteTxn(conn, write=write)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            # I/O error, disk full, locked, corrupt file: the operation changed nothing
            raise StoreFailure(f"the SQLite database failed: {exc}") from exc

    def snapshot_reader(self) -> Callable[[], AbstractContextManager[BackendTxn]] | None:
        if self._conn is None:
            return None
        path = self.path

        @contextmanager
        def read() -> Iterator[BackendTxn]:
            # a connection of its own: WAL lets it read a consistent snapshot while the
            # store's connection goes on writing
            try:
                conn = sqlite3.connect(path, isolation_level=None)
            except sqlite3.Error as exc:
                raise StoreFailure(f"the SQLite database failed: {exc}") from exc
            try:
                conn.execute("BEGIN")
                yield _SqliteTxn(conn, write=False)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreFailure(f"the SQLite database failed: {exc}") from exc
            finally:
                conn.close()

        return read

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class SqliteStore(StateStore):
    """A durable ``StateStore`` in ``<data_dir>/peerkit-state.sqlite``; the dir is created.

    The data dir is locked while the store is open (``fcntl.flock`` on ``<data_dir>/peerkit.lock``,
    released by ``close()`` or when the process ends): a second open, in this process or
    another, raises StoreOpenError naming the holder's pid, so two servers can never both lead
    on one database."""

    def __init__(
        self, data_dir: str | os.PathLike[str], *, id_factory: Callable[[], str] | None = None
    ) -> None:
        directory = Path(data_dir)
        if str(data_dir) == "":
            raise StoreOpenError("the data dir must not be empty")
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / DB_FILENAME
        self._lock_fd: int | None = _lock_data_dir(directory)
        try:
            super().__init__(SqliteBackend(self.path), id_factory=id_factory)
        except BaseException:
            self._unlock()
            raise

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._unlock()

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock


def _lock_data_dir(directory: Path) -> int:
    """Take the data dir's lock (exclusive, non-blocking); return the descriptor holding it."""
    path = directory / LOCK_FILENAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise StoreOpenError(
            f"the data dir {str(directory)!r} is in use by another peerkit process "
            f"(pid {holder}); only one server may use a data dir at a time"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
