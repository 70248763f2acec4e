"""Step and retry bookkeeping shared by every decider, and the context they share.

A recovery step is an `IntentKey` without an attempt; each proposal of it is an attempt
(`key.at(n)`). `Context.step` proposes attempt 1, or the next one once a failed attempt
is due for a retry (bounded count, exponential backoff), and nothing while one is
pending or once one succeeded. `Context.once` does the same for an alert, which is
never retried. Every decider gets one `Context`: the segment, the committed state, the
time of this round and the proposing leader.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from meshha.config.model import Segment
from meshha.raft import entries as E
from meshha.raft.entries import Action, Entry
from meshha.raft.intent_key import IntentKey
from meshha.raft.records import Intent
from meshha.raft.state import SegmentState

Severity = Literal["warning", "critical"]


@dataclass(frozen=True, slots=True)
class Context:
    """One round of `decide`: what it reads, and when and by whom it proposes."""

    segment: Segment
    state: SegmentState
    now: float
    me: str

    # -- reading the attempts at a step ----------------------------------------------

    def latest(self, step: IntentKey) -> Intent | None:
        return self.state.latest(step)

    def attempts(self, step: IntentKey) -> int:
        return len(self.state.attempts_of(step))

    def retry_due(self, last: Intent, n: int) -> bool:
        """A failed attempt is retried with exponential backoff, up to intent_max_attempts.
        An abandoned one (the brake, maintenance or a race stopped it) is proposed again as
        soon as `decide` reaches it again, i.e. once the circumstances allow: bounded too."""
        r = self.segment.recovery
        if last.status == "abandoned":
            return n < 2 * r.intent_max_attempts
        if last.status != "failed" or n >= r.intent_max_attempts:
            return False
        return self.now >= (last.done_ts or 0.0) + r.intent_retry_backoff_s * 2.0 ** (n - 1)

    def final(self, last: Intent | None, n: int) -> bool:
        """No further attempt will ever be proposed for this step."""
        if last is None or last.status == "pending":
            return False
        if last.status == "ok":
            return True
        limit = self.segment.recovery.intent_max_attempts * (2 if last.status == "abandoned" else 1)
        return n >= limit

    # -- proposing ---------------------------------------------------------------------

    def step(
        self,
        key: IntentKey,
        action: Action,
        host: str,
        *,
        reason: str,
        vm: str | None = None,
        target: str | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> list[Entry]:
        """Attempt 1 of step `key`, or the next attempt once a failed one is due for a
        retry. Nothing while one is pending or once one succeeded."""
        last = self.latest(key)
        n = self.attempts(key)
        if last is not None and (last.status in ("pending", "ok") or not self.retry_due(last, n)):
            return []
        return [
            E.intent(
                ts=self.now,
                by=self.me,
                intent_id=key.at(n + 1).format(),
                action=action,
                host=host,
                vm=vm,
                target=target,
                reason=reason if n == 0 else f"{reason} (attempt {n + 1})",
                params=dict(params) if params is not None else None,
            )
        ]

    def alert(
        self, key: IntentKey, host: str | None, severity: Severity, subject: str, body: str
    ) -> Entry:
        """The alert `key` (its one attempt), to be sent once committed."""
        return E.intent(
            ts=self.now,
            by=self.me,
            intent_id=key.at(1).format(),
            action="alert",
            host=host or "",
            reason=subject,
            params={"severity": severity, "subject": subject, "body": body},
        )

    def once(
        self, key: IntentKey, host: str | None, severity: Severity, subject: str, body: str
    ) -> list[Entry]:
        """The alert `key`, unless it was proposed before."""
        if self.latest(key) is not None:
            return []
        return [self.alert(key, host, severity, subject, body)]
