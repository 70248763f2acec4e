"""The event history: every committed log entry as one SQLite row, keyed by Raft index.

Every host keeps its own ledger, fed in log order from the committed entries. Appends are
idempotent on the Raft index (INSERT OR IGNORE on the primary key), so replaying the log
after a restart, or delivering an entry twice, changes nothing; an index that comes back
with a *different* entry means the ledger belongs to another log (for example the raft
data dir was wiped), and is refused with `LedgerError(kind="conflict")`.

A write either lands whole or not at all (one transaction per append or batch). When it
cannot land (disk full, read-only file or filesystem, I/O error) the store raises
`LedgerError` naming the path, and the caller keeps the entry to retry: nothing is half
written, and `last_index()` tells where to resume.

The file is in WAL mode, so `meshctl events` can read while the agent writes. One
`Ledger` may be used from several threads (trio's worker threads): calls are serialised
by a lock, and the connection is opened with `check_same_thread=False`.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

from sqlite_utils import Database

from meshha.errors import MeshhaError
from meshha.ledger.export import EXPORT_FORMATS, export_head, export_tail, format_page

TABLE = "events"
COLUMNS: dict[str, type] = {
    "idx": int,
    "ts": float,
    "kind": str,
    "by_host": str,
    "host": str,
    "network": str,
    "vm": str,
    "action": str,
    "outcome": str,
    "intent": str,
    "reason": str,
    "evidence": str,  # JSON text
    "entry": str,  # the whole entry, JSON text
}
# Entry keys copied into their own column (column name -> entry key).
_PROMOTED = {
    "kind": "kind",
    "by_host": "by",
    "host": "host",
    "network": "network",
    "vm": "vm",
    "action": "action",
    "outcome": "outcome",
    "intent": "intent",
    "reason": "reason",
}
DEFAULT_QUERY_LIMIT = 1000
MAX_QUERY_LIMIT = 100_000
EXPORT_PAGE = 2000
BUSY_TIMEOUT_S = 5.0

# sqlite3 primary result codes (the low byte of the extended code).
_SQLITE_KINDS = {
    5: "busy",  # SQLITE_BUSY
    6: "busy",  # SQLITE_LOCKED
    8: "read_only",  # SQLITE_READONLY
    10: "io",  # SQLITE_IOERR
    11: "corrupt",  # SQLITE_CORRUPT
    13: "disk_full",  # SQLITE_FULL
    14: "cant_open",  # SQLITE_CANTOPEN
    26: "corrupt",  # SQLITE_NOTADB
}


class LedgerError(MeshhaError):
    """kind: disk_full | read_only | io | busy | corrupt | cant_open | conflict | error.

    `where` is the ledger's path. The entry that failed was not written; retry it.
    """

    kind = "ledger"


def _error(path: Path, exc: sqlite3.Error, doing: str) -> LedgerError:
    code = getattr(exc, "sqlite_errorcode", None)
    kind = _SQLITE_KINDS.get(code & 0xFF, "error") if isinstance(code, int) else "error"
    return LedgerError(f"{doing}: {exc}", kind=kind, where=str(path))


def _jsonable(value: Any) -> Any:
    """msgpack may hand us bytes (values or map keys); JSON has none: base64 them."""
    if isinstance(value, bytes | bytearray | memoryview):
        return "b64:" + base64.b64encode(bytes(value)).decode()
    if isinstance(value, dict):
        return {
            (k if isinstance(k, str) else str(_jsonable(k))): _jsonable(v) for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _dumps(value: Any) -> str:
    return json.dumps(_jsonable(value), sort_keys=True, separators=(",", ":"))


def _row(index: int, entry: dict[str, Any]) -> dict[str, Any]:
    assert isinstance(index, int) and index >= 0, index
    assert isinstance(entry, dict), type(entry)
    row: dict[str, Any] = {"idx": index}
    ts = entry.get("ts")
    row["ts"] = float(ts) if isinstance(ts, int | float) and not isinstance(ts, bool) else None
    for column, key in _PROMOTED.items():
        value = entry.get(key)
        row[column] = None if value is None else str(_jsonable(value))
    row["evidence"] = _dumps(entry["evidence"]) if "evidence" in entry else None
    row["entry"] = _dumps(entry)
    return row


def _where(
    host: str | None,
    since: float | None,
    until: float | None,
    kind: str | None,
    vm: str | None,
    after_idx: int | None,
) -> tuple[str, list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    if after_idx is not None:
        where.append("idx > ?")
        args.append(after_idx)
    for column, value in (("host", host), ("kind", kind), ("vm", vm)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if since is not None:
        where.append("ts >= ?")
        args.append(float(since))
    if until is not None:
        where.append("ts < ?")
        args.append(float(until))
    return " AND ".join(where), args


def _decoded(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for column in ("evidence", "entry"):
        if out.get(column) is not None:
            out[column] = json.loads(out[column])
    return out


class Ledger:
    """One host's event history in the SQLite file at `path` (created if missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
        except sqlite3.Error as e:
            raise _error(self.path, e, "open") from e
        self._db = Database(conn)
        try:
            self._db.enable_wal()
            self._table = self._db.table(TABLE)
            if not self._table.exists():
                with self._db.atomic():
                    self._table.create(COLUMNS, pk="idx", not_null={"entry"})
                    for column in ("ts", "host", "kind", "vm"):
                        self._table.create_index([column], if_not_exists=True)
        except sqlite3.Error as e:
            conn.close()
            raise _error(self.path, e, "open") from e

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- writing ---------------------------------------------------------------------

    def append(self, index: int, entry: dict[str, Any]) -> bool:
        """Store `entry` at Raft `index`. True if new, False if it was already there."""
        return self.append_many([(index, entry)]) == 1

    def append_many(self, items: Iterable[tuple[int, dict[str, Any]]]) -> int:
        """Store a batch in one transaction (all or nothing). Returns how many were new."""
        rows = [_row(index, entry) for index, entry in items]
        if not rows:
            return 0
        with self._lock:
            try:
                with self._db.atomic():
                    before = self._db.conn.total_changes
                    self._table.insert_all(rows, ignore=True)
                    inserted = self._db.conn.total_changes - before
                    if inserted != len(rows):
                        self._check_duplicates(rows)
            except sqlite3.Error as e:
                raise _error(self.path, e, f"append idx {rows[0]['idx']}..{rows[-1]['idx']}") from e
        return inserted

    def _check_duplicates(self, rows: list[dict[str, Any]]) -> None:
        """A known index must carry the same entry; raising rolls the batch back."""
        by_idx = {r["idx"]: r["entry"] for r in rows}
        marks = ",".join("?" * len(by_idx))
        stored = self._db.execute(
            f"SELECT idx, entry FROM {TABLE} WHERE idx IN ({marks})", list(by_idx)
        ).fetchall()
        for idx, entry in stored:
            if entry != by_idx[idx]:
                raise LedgerError(
                    f"index {idx} is already stored with a different entry: this ledger "
                    "belongs to another log",
                    kind="conflict",
                    where=str(self.path),
                )

    # ---- reading ---------------------------------------------------------------------

    def last_index(self) -> int:
        """The highest Raft index stored, 0 if none: resume delivery after it."""
        with self._lock:
            try:
                (value,) = self._db.execute(f"SELECT max(idx) FROM {TABLE}").fetchone()
            except sqlite3.Error as e:
                raise _error(self.path, e, "last_index") from e
        return int(value or 0)

    def count(self) -> int:
        with self._lock:
            return self._table.count

    def query(
        self,
        *,
        host: str | None = None,
        since: float | None = None,
        until: float | None = None,
        kind: str | None = None,
        vm: str | None = None,
        limit: int = DEFAULT_QUERY_LIMIT,
        newest_first: bool = False,
    ) -> list[dict[str, Any]]:
        """Rows matching every given filter (`since` <= ts < `until`), by Raft index.

        Oldest first by default; `newest_first` returns the latest `limit` rows, latest
        first (what `meshctl events` shows). `evidence` and `entry` come back decoded.
        """
        limit = max(0, min(int(limit), MAX_QUERY_LIMIT))
        rows = self._rows(host, since, until, kind, vm, limit, newest_first)
        return [_decoded(r) for r in rows]

    def _rows(
        self,
        host: str | None,
        since: float | None,
        until: float | None,
        kind: str | None,
        vm: str | None,
        limit: int | None,
        newest_first: bool,
        after_idx: int | None = None,
    ) -> list[dict[str, Any]]:
        where, args = _where(host, since, until, kind, vm, after_idx)
        with self._lock:
            try:
                return list(
                    self._table.rows_where(
                        where or None,
                        args,
                        order_by="idx DESC" if newest_first else "idx",
                        limit=limit,
                    )
                )
            except sqlite3.Error as e:
                raise _error(self.path, e, "query") from e

    def export(
        self,
        fmt: str,
        out: TextIO,
        *,
        host: str | None = None,
        since: float | None = None,
        until: float | None = None,
        kind: str | None = None,
        vm: str | None = None,
    ) -> int:
        """Write the matching rows to `out`, oldest first. Returns the number of rows.

        csv: one header line, then one line per row; `evidence` and `entry` are JSON text,
        missing values are empty. json: one JSON array of row objects (with `evidence` and
        `entry` decoded), one row per line. Both carry `ts_iso` (UTC, ISO 8601) beside the
        epoch `ts`. Written a page at a time (`page`, `format_page`).
        """
        if fmt not in EXPORT_FORMATS:
            raise ValueError(f"export format must be csv or json, not {fmt!r}")
        n = 0
        out.write(export_head(fmt))
        for rows in self._pages(host, since, until, kind, vm):
            out.write(format_page(fmt, rows, first=n == 0))
            n += len(rows)
        out.write(export_tail(fmt, n))
        return n

    def page(
        self,
        after: int = 0,
        limit: int = EXPORT_PAGE,
        *,
        host: str | None = None,
        since: float | None = None,
        until: float | None = None,
        kind: str | None = None,
        vm: str | None = None,
    ) -> list[dict[str, Any]]:
        """Up to `limit` matching rows with idx > `after`, oldest first, as stored
        (`evidence`, `entry` JSON text): one page of an export."""
        limit = max(1, min(int(limit), MAX_QUERY_LIMIT))
        return self._rows(host, since, until, kind, vm, limit, False, after)

    def count_where(
        self,
        *,
        host: str | None = None,
        since: float | None = None,
        until: float | None = None,
        kind: str | None = None,
        vm: str | None = None,
    ) -> int:
        where, args = _where(host, since, until, kind, vm, None)
        with self._lock:
            try:
                (n,) = self._db.execute(
                    f"SELECT count(*) FROM {TABLE}" + (f" WHERE {where}" if where else ""), args
                ).fetchone()
            except sqlite3.Error as e:
                raise _error(self.path, e, "count") from e
        return int(n)

    def entries(self, after: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
        """Every stored entry after Raft index `after`, in index order, paged. The agent
        rebuilds its state from this at start, so it needs no Raft log older than the
        ledger (pysyncobj compacts its journal)."""
        while page := self.entries_page(after, EXPORT_PAGE):
            yield from page
            after = page[-1][0]

    def entries_page(self, after: int, limit: int) -> list[tuple[int, dict[str, Any]]]:
        """Up to `limit` stored entries after Raft index `after`, in index order."""
        with self._lock:
            try:
                rows = self._db.execute(
                    f"SELECT idx, entry FROM {TABLE} WHERE idx > ? ORDER BY idx LIMIT ?",
                    [after, limit],
                ).fetchall()
            except sqlite3.Error as e:
                raise _error(self.path, e, "read") from e
        return [(idx, json.loads(entry)) for idx, entry in rows]

    def _pages(
        self,
        host: str | None,
        since: float | None,
        until: float | None,
        kind: str | None,
        vm: str | None,
    ) -> Iterator[list[dict[str, Any]]]:
        """The matching rows in pages of EXPORT_PAGE, so an export holds neither the lock
        nor the whole ledger in memory for long."""
        after = None
        while page := self._rows(host, since, until, kind, vm, EXPORT_PAGE, False, after):
            yield page
            after = page[-1]["idx"]
