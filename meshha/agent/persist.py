"""When the agent cannot write to its disk: an operating error, said once, never a crash.

A full, read-only or failing disk under the agent's data directory (the Raft journal,
the ledger) must not take the agent down: a dead agent is silent, and a silent host is
fenced. So the agent keeps answering probes and its control socket, and:

- journal (the Raft member cannot persist): it stops voting and acknowledging, which is
  what a voter that cannot make its log durable must do (the Raft member freezes and
  retries by itself, meshha.raft.pysyncobj_log, and catches up from the leader when a
  write succeeds again; if the member stops altogether, the agent stays up without it
  and says so). Its peers keep hearing its probes, so no verdict is reached about it.
- ledger (SQLite): committed entries wait in the sink's bounded backlog and are written,
  in order, when space is back (meshha.ledger.sink). Raft is unaffected.

Each problem is logged once when it starts (what, path, errno, consequence) and once
when it ends, shown by `meshctl status` (`persist`), and alerted straight from this
agent through the segment's alert sinks: an agent that cannot persist cannot commit an
alert intent either, and its own trouble is its own to report.

A quiet segment writes nothing, so a disk that fills up (or is remounted read-only)
while nothing is committed would go unnoticed until the next entry. So the disk is also
checked on a clock, whatever is committed:
- journal: the journal itself proves every `PROBE_EVERY_S` (5 s) that its directory
  takes a new block (meshha.raft.journal), in the Raft member's tick thread, so a failed
  check freezes the member at once (it stops voting) and sets `persist_error`, which the
  poll below reports;
- ledger (`checks`): every `CHECK_EVERY_S` a thread of this watch (one at a time) writes
  and fdatasyncs `PROBE_B` bytes to a fresh file beside the ledger and removes it
  (`probe_dir`); a check that fails is the ledger's problem (path, errno), one that hangs
  longer than `CHECK_TIMEOUT_S` too (a hung disk), until a check succeeds again.
So a full or read-only disk is logged, shown and alerted within CHECK_EVERY_S (ledger)
or PROBE_EVERY_S + 1 s (journal, pysyncobj's one-second timer) plus `POLL_S`, and the
host stops voting within the latter, even when nothing is committed.

`problem_of` turns an exception into a `Problem` (or None if it is not a disk error);
`PersistWatch.check` is pure (the state and the problems in, the changes out); `run` is
the task that polls the sources every `POLL_S` and carries the changes out.
"""

from __future__ import annotations

import errno as errnos
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import trio

from meshha.errors import AlertError, MeshhaError
from meshha.raft.journal import write_probe
from meshha.recovery.ports import Alert, AlertPort

log = structlog.get_logger("meshha.persist")

POLL_S = 0.5
CHECK_EVERY_S = 5.0  # the ledger's directory is checked this often (module doc)
CHECK_TIMEOUT_S = 5.0  # a check that takes longer is a hung disk
DISK_ERRNOS = frozenset(
    {errnos.ENOSPC, errnos.EDQUOT, errnos.EROFS, errnos.EIO, errnos.EACCES, errnos.EPERM}
)
# LedgerError / JournalError kinds -> the errno they stand for when none is attached.
_KIND_ERRNO = {"disk_full": errnos.ENOSPC, "read_only": errnos.EROFS, "io": errnos.EIO}
CONSEQUENCE = {
    "journal": "not voting and not acknowledging Raft entries until it can write again; "
    "probes and the control socket still answer, so this host is not judged for it",
    "ledger": "committed entries are kept in memory and written in order once it can "
    "write again; Raft and probes are unaffected",
}


@dataclass(frozen=True)
class Problem:
    what: str  # "journal" | "ledger"
    path: str
    errno: int | None
    error: str

    @property
    def errno_name(self) -> str:
        return errnos.errorcode.get(self.errno, str(self.errno)) if self.errno else "no errno"

    def describe(self) -> str:
        return (
            f"cannot write the {self.what} at {self.path} "
            f"({self.errno_name}: {os.strerror(self.errno) if self.errno else self.error}): "
            f"{CONSEQUENCE[self.what]}"
        )


def problem_of(what: str, err: BaseException, default_path: str) -> Problem | None:
    """The disk problem `err` is, or None when it is something else."""
    code = getattr(err, "errno", None)
    if not isinstance(code, int):
        code = _KIND_ERRNO.get(getattr(err, "kind", ""))
    if code not in DISK_ERRNOS:
        return None
    path = getattr(err, "path", None) or getattr(err, "filename", None)
    if path is None and isinstance(err, MeshhaError):
        path = err.where or None
    return Problem(what, str(path or default_path), code, str(err))


def probe_dir(what: str, path: Path) -> Problem | None:
    """Blocking: can the directory of `path` take a new block now? Writes, fdatasyncs
    and removes a fresh `PROBE_B`-byte file beside it. None, or the problem (any OSError:
    a directory that vanished cannot be written either)."""
    probe = path.with_name(f".{path.name}.persist-check")
    try:
        write_probe(probe)
    except OSError as err:
        return Problem(what, str(path), err.errno, f"test write beside it: {err.strerror}")
    return None


@dataclass(frozen=True)
class Change:
    problem: Problem
    started: bool  # False: it is over


class PersistWatch:
    """The agent's current disk problems, one per `what` (see the module doc)."""

    def __init__(self, segment: str, me: str, alerts: AlertPort | None = None) -> None:
        self.segment, self.me, self.alerts = segment, me, alerts
        self.problems: dict[str, Problem] = {}
        self.checked: dict[str, Problem] = {}  # what the periodic checks found (`checks`)
        self._changed = trio.Event()
        self.crashed: dict[str, Problem] = {}  # a part that stopped for good on a disk error
        self.alerts_sent = 0
        self.alert_errors = 0

    def check(self, now_problems: dict[str, Problem | None]) -> list[Change]:
        """Pure: update from the sources' current problems; the starts and ends."""
        out: list[Change] = []
        for what, p in now_problems.items():
            p = p or self.crashed.get(what)
            old = self.problems.get(what)
            if p is not None and (old is None or (old.errno, old.path) != (p.errno, p.path)):
                self.problems[what] = p
                out.append(Change(p, True))
            elif p is None and old is not None:
                del self.problems[what]
                out.append(Change(old, False))
        return out

    async def wait_change(self) -> None:
        """Return at the next start or end of a problem (the caller bounds the wait)."""
        await self._changed.wait()

    def report(self) -> dict[str, Any]:
        return {
            "ok": not self.problems,
            "voting": "journal" not in self.problems,
            "problems": [
                {
                    "what": p.what,
                    "path": p.path,
                    "errno": p.errno_name,
                    "error": p.error,
                    "consequence": CONSEQUENCE[p.what],
                }
                for p in self.problems.values()
            ],
        }

    async def run(
        self,
        sources: dict[str, Callable[[], Problem | None]],
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
        *,
        checks: dict[str, Path] | None = None,
        check_every_s: float = CHECK_EVERY_S,
    ) -> None:
        """Poll `sources` (what -> its current problem) and log and alert each change;
        check the directory of each of `checks` (what -> a file) every `check_every_s`."""
        send, recv = trio.open_memory_channel[Change](16)
        whats = list(dict.fromkeys([*sources, *(checks or {})]))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._alerter, recv)
            if checks:
                nursery.start_soon(self._checker, checks, check_every_s)
            task_status.started()
            while True:
                now = {w: (sources[w]() if w in sources else None) for w in whats}
                now = {w: p or self.checked.get(w) for w, p in now.items()}
                changes = self.check(now)
                if changes:
                    self._changed.set()
                    self._changed = trio.Event()
                for change in changes:
                    self._log(change)
                    try:
                        send.send_nowait(change)
                    except trio.WouldBlock:  # alerts are slower than changes: log only
                        self.alert_errors += 1
                await trio.sleep(POLL_S)

    async def _checker(self, checks: dict[str, Path], every_s: float) -> None:
        """The periodic disk checks (module doc), one thread at a time, each bounded."""
        limiter = trio.CapacityLimiter(1)
        while True:
            for what, path in checks.items():
                found: Problem | None = Problem(
                    what,
                    str(path),
                    None,
                    f"a test write and fdatasync beside it did not finish within "
                    f"{CHECK_TIMEOUT_S:g} s (a hung disk)",
                )
                with trio.move_on_after(CHECK_TIMEOUT_S):
                    found = await trio.to_thread.run_sync(
                        probe_dir, what, path, limiter=limiter, abandon_on_cancel=True
                    )
                if found is None:
                    self.checked.pop(what, None)
                else:
                    self.checked[what] = found
            await trio.sleep(every_s)

    def _log(self, c: Change) -> None:
        p = c.problem
        if c.started:
            log.error(
                "persist_failed",
                what=p.what,
                path=p.path,
                errno=p.errno_name,
                error=p.error,
                consequence=CONSEQUENCE[p.what],
                voting=p.what != "journal",
            )
        else:
            log.warning("persist_recovered", what=p.what, path=p.path)

    async def _alerter(self, recv: trio.MemoryReceiveChannel[Change]) -> None:
        async for c in recv:
            if self.alerts is None:
                continue
            p = c.problem
            subject = (
                f"{self.me} cannot write its {p.what} ({p.errno_name})"
                if c.started
                else f"{self.me} can write its {p.what} again"
            )
            alert = Alert(
                segment=self.segment,
                severity="critical" if c.started else "info",
                subject=subject,
                body=p.describe() if c.started else f"{p.path}: writes succeed again.",
                host=self.me,
                key=f"persist:{self.me}:{p.what}:{p.errno_name}:{'on' if c.started else 'off'}",
                facts=(("path", p.path), ("errno", p.errno_name)),
            )
            try:
                await self.alerts.send(alert)
                self.alerts_sent += 1
            except AlertError as err:
                self.alert_errors += 1
                log.warning("persist_alert_not_delivered", error=str(err))
