"""The agent's ledger sink and reader: SQLite off the trio loop.

SQLite calls block (a 50k-row export held an agent's loop for 0.7 s, longer than the
lan-fast suspect window), so every ledger call runs in a trio worker thread under the
ledger's own `CapacityLimiter` (`LEDGER_THREADS`, separate from pysyncobj's and
libvirt's threads), and the results come back to trio.

`LedgerSink.append` (called by the node for each committed entry, in log order) only
queues the entry; `run` (a task in the agent's nursery) writes what is queued in one
transaction per batch. A failed write keeps the batch (nothing is half written) and
reports the error once, with the path; the next batch retries, in order, after a
backoff. The Raft journal still holds every committed entry, so even a backlog overflow
loses nothing for good: the agent refuses to go on (it raises) rather than drop history
silently, and a restart replays the journal into the ledger (appends are idempotent on
the Raft index). On shutdown the queue is flushed, shielded and bounded in time.

`LedgerReader` runs the control socket's reads (events, export pages, counts, report
input) the same way, a page at a time, so writes interleave with a long export.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import structlog
import trio

from meshha.errors import MeshhaError
from meshha.ledger.report import Report, ReportBuilder
from meshha.ledger.store import EXPORT_PAGE, Ledger, LedgerError

log = structlog.get_logger("meshha.ledger")
MAX_BACKLOG = 100_000
MAX_BATCH = 2000
LEDGER_THREADS = 2  # one writer and one reader at a time (the Ledger's lock serialises calls)
RETRY_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)
SHUTDOWN_FLUSH_S = 5.0
REPORT_MAX_OPEN_INTENTS = 100_000  # intents without a result kept while reading up to `since`


class LedgerBacklogFull(MeshhaError):
    kind = "ledger_backlog_full"


def limiter() -> trio.CapacityLimiter:
    return trio.CapacityLimiter(LEDGER_THREADS)


class LedgerSink:
    def __init__(
        self,
        ledger: Ledger,
        limiter: trio.CapacityLimiter,
        max_backlog: int = MAX_BACKLOG,
        on_entry: Callable[[int, dict[str, Any]], None] | None = None,
    ) -> None:
        self.ledger = ledger
        self.limiter = limiter
        self.max_backlog = max_backlog
        self.on_entry = on_entry  # e.g. the metrics, fed in log order
        self.backlog: deque[tuple[int, dict[str, Any]]] = deque()
        self.last_error: str = ""
        self.written = 0
        self._wake = trio.Event()
        self.error: LedgerError | None = None  # the current write failure, typed (or None)

    def append(self, index: int, entry: dict[str, Any]) -> None:
        """Queue a committed entry (never blocks). Raises LedgerBacklogFull past the bound."""
        if len(self.backlog) >= self.max_backlog:
            raise LedgerBacklogFull(
                f"{len(self.backlog)} committed entries not written: {self.last_error}",
                where=str(self.ledger.path),
            )
        self.backlog.append((index, entry))
        if self.on_entry is not None:
            self.on_entry(index, entry)
        self._wake.set()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        failures = 0
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                while self.backlog:
                    if await self.flush():
                        failures = 0
                        continue
                    await trio.sleep(RETRY_BACKOFF_S[min(failures, len(RETRY_BACKOFF_S) - 1)])
                    failures += 1
        finally:
            with trio.move_on_after(SHUTDOWN_FLUSH_S) as scope:
                scope.shield = True
                while self.backlog and await self.flush():
                    pass

    async def flush(self) -> bool:
        """Write one batch from the head of the queue in a worker thread. True if it
        landed (or there was nothing), False if it failed (kept for a retry)."""
        if not self.backlog:
            return True
        batch = [self.backlog[i] for i in range(min(len(self.backlog), MAX_BATCH))]
        try:
            await trio.to_thread.run_sync(self.ledger.append_many, batch, limiter=self.limiter)
        except LedgerError as err:
            same = self.error is not None and self.error.kind == err.kind
            self.error = err
            if not same:  # once per kind of failure, not once per entry that waits
                log.error(
                    "ledger_write_failed",
                    kind=err.kind,
                    path=str(self.ledger.path),
                    error=str(err),
                    backlog=len(self.backlog),
                )
                self.last_error = str(err)
            return False
        for _ in batch:
            self.backlog.popleft()
        self.written += len(batch)
        self.error = None
        if self.last_error:
            log.info("ledger_write_recovered", path=str(self.ledger.path))
            self.last_error = ""
        return True


class LedgerReader:
    """The control socket's reads, each in a worker thread under the ledger's limiter."""

    def __init__(self, ledger: Ledger, limiter: trio.CapacityLimiter) -> None:
        self.ledger = ledger
        self.limiter = limiter

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    async def query(self, **filters: Any) -> list[dict[str, Any]]:
        return await self._run(lambda: self.ledger.query(**filters))  # type: ignore[no-any-return]

    async def page(self, after: int, limit: int, **filters: Any) -> list[dict[str, Any]]:
        return await self._run(lambda: self.ledger.page(after, limit, **filters))  # type: ignore[no-any-return]

    async def count(self, **filters: Any) -> int:
        return await self._run(lambda: self.ledger.count_where(**filters))  # type: ignore[no-any-return]

    async def report(self, since: float, until: float, nk: dict[str, Any] | None) -> Report:
        """The SLA report over [since, until): every entry before `until` streamed through
        the pure builder, a page per worker-thread call. Before `since` the builder keeps
        only what is still open (compacted each page), so memory follows the range, not
        the ledger's age."""
        builder = ReportBuilder()

        def step(after: int) -> tuple[int, bool]:
            page = self.ledger.entries_page(after, EXPORT_PAGE)
            for idx, entry in page:
                if float(entry.get("ts", 0.0)) >= until:
                    return idx, True
                builder.feed(entry)
            if page and float(page[-1][1].get("ts", 0.0)) < since:
                builder.compact(REPORT_MAX_OPEN_INTENTS)  # what ended before the range
            return (page[-1][0] if page else after), len(page) < EXPORT_PAGE

        after, done = 0, False
        while not done:
            after, done = await self._run(step, after)
        return builder.report(since, until, nk)
