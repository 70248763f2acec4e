"""The node's ledger sink: writes committed entries to the SQLite ledger and never loses
one when the disk is full or the file unwritable.

A failed write keeps the entry in a bounded backlog (in memory) and reports the error
once, with the path; the next append, or `flush()`, retries in order. The Raft journal
still holds every committed entry, so even a backlog overflow loses nothing for good: the
agent refuses to go on (it raises) rather than drop history silently, and a restart
replays the journal into the ledger (appends are idempotent on the Raft index).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import structlog

from meshha.errors import MeshhaError
from meshha.ledger.store import Ledger, LedgerError

log = structlog.get_logger("meshha.ledger")
MAX_BACKLOG = 100_000


class LedgerBacklogFull(MeshhaError):
    kind = "ledger_backlog_full"


class LedgerSink:
    def __init__(self, ledger: Ledger, max_backlog: int = MAX_BACKLOG) -> None:
        self.ledger = ledger
        self.max_backlog = max_backlog
        self.backlog: deque[tuple[int, dict[str, Any]]] = deque()
        self.last_error: str = ""

    def append(self, index: int, entry: dict[str, Any]) -> None:
        self.backlog.append((index, entry))
        self.flush()

    def flush(self) -> bool:
        if not self.backlog:
            return True
        try:
            self.ledger.append_many(list(self.backlog))
        except LedgerError as err:
            if str(err) != self.last_error:
                log.error(
                    "ledger_write_failed",
                    path=str(self.ledger.path),
                    error=str(err),
                    backlog=len(self.backlog),
                )
                self.last_error = str(err)
            if len(self.backlog) > self.max_backlog:
                raise LedgerBacklogFull(
                    f"{len(self.backlog)} committed entries not written: {err}",
                    where=str(self.ledger.path),
                ) from err
            return False
        if self.last_error:
            log.info("ledger_write_recovered", path=str(self.ledger.path))
            self.last_error = ""
        self.backlog.clear()
        return True
