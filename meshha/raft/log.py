"""The log port: what the agent needs from a replicated log, and nothing more.

The agent proposes entries (plain dicts, see `meshha.raft.entries`) and reads the
committed ones back in order; everything it does follows from what it reads. The daemon
plugs in `meshha.raft.pysyncobj_log.PysyncobjLog`; the simulator plugs in its in-memory
stand-in. Both keep these promises:

- `propose` returns the Raft index the entry was committed at, or raises
  `LogError` with `kind`:
  - ``no_quorum``: no leader this member can reach holds a majority; nothing was sent,
    the entry will not appear (safe to retry later);
  - ``not_leader``: the leader changed while the entry was in flight and the new one
    dropped it (it will not appear);
  - ``timeout``: no answer within `timeout_s`. The outcome is unknown: the entry may
    still commit later. Proposers make entries idempotent (intent ids) for this;
  - ``too_large``: the packed entry is over the log's size bound.
- `committed_from(i)` yields `(index, entry)` for every committed entry after index `i`,
  in log order, forever (it waits for new ones). Indexes increase but are not dense
  (Raft's own no-op entries take indexes too). Each reader has its own cursor, so the
  state machine and the ledger can read independently. After a restart the log
  re-delivers from its start (or from what its snapshot retains); readers skip what they
  already have (the ledger dedups by index). A log that keeps only a bounded tail raises
  `LogError(kind="truncated")` to a reader whose cursor is older than that tail, rather
  than skip entries silently.
- `leader`, `term`, `is_leader`: this member's current view; may be stale by a heartbeat.
  `leader` is None unless this member heard from it within the quorum window.
- `has_quorum`: for the leader, a majority of voters answered it within the quorum window
  *and* it has committed an entry of its own term (so every entry committed by earlier
  leaders is applied here: Raft's precondition for deciding from local state). For
  others: a leader is known and was heard from within the window.
- `commit_index`: the index of the last committed entry handed to readers; a reader that
  has reached it is caught up with this member.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol, runtime_checkable

from meshha.errors import LogError

Entry = dict[str, Any]

LOG_ERROR_KINDS = ("no_quorum", "not_leader", "timeout", "too_large")  # from propose

__all__ = ["LOG_ERROR_KINDS", "Entry", "LogError", "LogPort"]


@runtime_checkable
class LogPort(Protocol):
    async def propose(self, entry: Entry, *, timeout_s: float) -> int: ...

    def committed_from(self, index: int) -> AsyncIterator[tuple[int, Entry]]: ...

    @property
    def leader(self) -> str | None: ...

    @property
    def term(self) -> int: ...

    @property
    def is_leader(self) -> bool: ...

    @property
    def has_quorum(self) -> bool: ...

    @property
    def commit_index(self) -> int: ...
