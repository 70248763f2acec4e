"""Telling a stalled agent from a dead host, and noticing this agent's own stalls (pure).

Silence of a peer's agent alone cannot tell, within a second, a dead host from an agent
that stopped for a moment (memory pressure, a blocking call, SIGSTOP, a starved CPU). A
second signal can: the peer's *kernel*. Beside the UDP probes every agent listens on TCP
at its probe port on each network, and only accepts and closes what arrives; while the
agent is stopped its kernel still completes the TCP handshake (the connection waits in
the listen backlog), and a dead, powered-off or hung host, or one whose link on that
network is down, completes none. A refused connection (RST) means the kernel is up but
no agent listens: the agent exited (a crash, kill -9, an OOM kill) and its init is
starting it again (the unit's Restart=always, RestartSec=1), or it was stopped. That is
evidence of a live kernel too, and is held the same way: an agent that crashed and came
back within the grace costs its host nothing (under lan-fast, a restart takes longer
than detection: counted as no answer, every crash would have fenced a healthy host, as
the lab nemesis's `agent-kill` showed). One that does not come back is reported lost at
the end of the grace, as a stall that lasts; on a host with a watchdog the killed
agent's armed watchdog resets it first (a killed process closes the device without the
magic character).

So, per observed peer and network (`KernelLiveness`):

- the observer "knocks" (a TCP connect, `knock_timeout_s`) on every peer it is missing,
  one knock at a time per peer and network;
- a peer the prober holds lost whose kernel answered a knock (completed the handshake,
  or refused it) *sent after its agent went silent* (after the first miss), within
  `window_s`, is *stalled*, not lost (a knock that merely timed out does not erase that: the observer
  may be the slow one; an answer from before the silence proves nothing about a host
  that died since): the observer does not report the loss (and so no
  verdict comes of it) until `stall_grace_s` after the first miss. Past the grace it is
  reported with its real `since` (the first miss), and the verdict follows at once;
- a peer whose kernel does not answer is reported lost exactly as before: the knock is
  sent at the first miss, so it adds nothing to the time to detect a dead host.

`stall_grace_s` is the longest stall a profile rides through (config.model
TIMING_PROFILES). The host's watchdog is the authority on an agent stalled longer: the
agent pets it from its event loop, so a stall longer than the watchdog's timeout resets
the host (then its kernel stops answering). Hence, per profile: the longest stall to ride
< watchdog timeout <= stall_grace_s < self_fence_deadline_s.

This agent's own stalls (`StallMeter`) are measured from the lateness of a periodic loop
on the monotonic clock: a loop that should wake every `interval_s` and wakes `gap`
seconds late stood still for that long. After a stall the agent (meshha.agent.node):
- shifts its prober's pending deadlines by the gap (the silence it "saw" was its own:
  Lifeguard's lesson that a slow observer's accusations are worth little, applied at the
  source, so a slow observer never reports a loss it did not observe);
- re-checks contact with the majority before it takes itself for isolated (its own
  stall is not the majority's silence), unless the stall was so long that the majority
  may already count on its self-fence;
- reports the stall, with its length and how many came in the last `window_s`, as a
  committed event (repeated short stalls are reported as such, never as failures):
  `StallMeter.report` says when: the first stall peers could notice, then only a much
  longer one (1.5 x) until a window passes without a report, and, once
  `REPEATED_STALLS` noticeable stalls fell in one window, one "repeated" report per
  window (count, longest, total), so stops of 1 s every 3 s are one entry a minute
  that says so, not silence and not an entry per stop.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

KNOCK_ANSWERED, KNOCK_REFUSED, KNOCK_SILENT = "answered", "refused", "silent"
REPEATED_STALLS = 3  # noticeable stalls within one window: reported as repeated


class KernelLiveness:
    """What the knocks on each (peer, network) say about a silent peer."""

    def __init__(self, *, stall_grace_s: float, window_s: float) -> None:
        assert stall_grace_s >= 0 and window_s > 0
        self.stall_grace_s = stall_grace_s
        self.window_s = window_s
        self._answered: dict[tuple[str, str], tuple[float, float]] = {}  # (sent, done)

    def record(self, peer: str, network: str, sent: float, at: float, outcome: str) -> None:
        """A knock sent at `sent`, finished at `at`. `outcome`: KNOCK_ANSWERED (handshake
        done), KNOCK_REFUSED (RST: no agent listens) or KNOCK_SILENT (no answer in time)."""
        if outcome in (KNOCK_ANSWERED, KNOCK_REFUSED):
            self._answered[(peer, network)] = (sent, at)

    def answers(self, peer: str, network: str, now: float, since: float = -math.inf) -> bool:
        """The peer's kernel answered (completed or refused) a knock on `network` sent at
        or after `since`, within `window_s`."""
        got = self._answered.get((peer, network))
        if got is None:
            return False
        sent, at = got
        return sent >= since and now - at <= self.window_s

    def stalled(self, peer: str, network: str, since: float, now: float) -> bool:
        """Silent since `since` but its kernel answers, and the grace is not over."""
        return now - since < self.stall_grace_s and self.answers(peer, network, now, since)


@dataclass(frozen=True)
class Stall:
    start: float
    duration_s: float


class StallMeter:
    """This agent's own stalls, from the lateness of a loop that wakes every `interval_s`.

    `tick(now)` once per wake-up; it returns the stall (the part of the gap beyond
    `interval_s`) when that exceeds `threshold_s`, else None. The last `max_kept` stalls
    within `window_s` are kept for `recent`.
    """

    def __init__(
        self, interval_s: float, threshold_s: float, *, window_s: float = 60.0, max_kept: int = 64
    ) -> None:
        assert interval_s > 0 and threshold_s > 0
        self.interval_s, self.threshold_s, self.window_s = interval_s, threshold_s, window_s
        self._prev: float | None = None
        self._stalls: deque[Stall] = deque(maxlen=max_kept)
        self.total = 0
        self._reported = (-math.inf, 0.0)  # (when, how long) of the last single report
        self._repeat_reported = -math.inf

    def tick(self, now: float) -> Stall | None:
        prev, self._prev = self._prev, now
        if prev is None:
            return None
        gap = now - prev - self.interval_s
        if gap <= self.threshold_s:
            return None
        stall = Stall(prev + self.interval_s, gap)
        self._stalls.append(stall)
        self.total += 1
        return stall

    def recent(self, now: float) -> list[Stall]:
        return [s for s in self._stalls if now - s.start <= self.window_s]

    def report(self, stall: Stall, now: float, noticeable_s: float) -> str | None:
        """Whether to commit `stall` (module doc): "single", "repeated" or None."""
        if stall.duration_s < noticeable_s:
            return None
        last_t, last_gap = self._reported
        if now - last_t >= self.window_s or stall.duration_s > 1.5 * last_gap:
            self._reported = (now, stall.duration_s)
            return "single"
        seen = [s for s in self.recent(now) if s.duration_s >= noticeable_s]
        if len(seen) >= REPEATED_STALLS and now - self._repeat_reported >= self.window_s:
            self._repeat_reported = now
            return "repeated"
        return None
