"""Damping for a flapping link: one fault, a bounded number of entries, verdicts and
alerts, however fast it flaps.

A link that goes down and up every 2 s is one fault. Undamped, each flap costs every
observer two observations, the host three verdicts (suspect, degraded, healthy), a new
failure episode and its alert: 15 alerts, 45 verdicts and 315 entries for one minute of
flapping (bench/supervision_noise.py). Two dampers, both pure, time as input:

- The observer (`ObservationDamper`, in each agent): once a (target, network) pair has
  been reported lost `FLAP_LOSSES` times within `FLAP_WINDOW_S`, its "reachable again"
  is reported only after it has stayed reachable for `HOLD_S`. Only while the target is
  still reachable on another network from here: a host that flaps on every network is
  not held (holding would make it look dead and get it fenced).
- The leader (`hold_verdict`, in `decide`): once a host's verdict has changed
  `FLAP_CHANGES` times within `FLAP_WINDOW_S`, it is flapping; a change to a milder
  verdict (degraded -> suspect -> healthy) waits until the host's picture has not moved
  for `HOLD_S` (hysteresis on recovery). A change to a worse verdict is never held
  (detection speed is untouched), nor is one away from a verdict that fences (a fence
  must not be carried by a held verdict), nor any change to or from maintenance. A
  flapping host gets one "flapping" alert per failure episode, and as its episode no
  longer ends while it flaps, its per-episode alerts are not repeated either.
"""

from __future__ import annotations

from collections import deque

from meshha.config.model import Segment
from meshha.raft.records import Verdict
from meshha.raft.state import SegmentState

FLAP_WINDOW_S = 60.0
FLAP_CHANGES = 4  # verdict changes of a host within the window: flapping
FLAP_LOSSES = 2  # losses of one (target, network) seen by one observer within the window
HOLD_S = 10.0
MAX_KEPT = 16  # change times kept per key (bounded)

SEVERITY = {"healthy": 0, "suspect": 1, "degraded": 2, "failed": 3}


def recent(times: deque[float] | list[float] | None, now: float) -> int:
    return sum(1 for t in (times or ()) if t > now - FLAP_WINDOW_S)


def is_flapping(state: SegmentState, host: str, now: float) -> bool:
    return recent(state.verdict_changes.get(host), now) >= FLAP_CHANGES


def hold_verdict(
    segment: Segment, state: SegmentState, host: str, new: Verdict, now: float
) -> bool:
    """True: do not propose `new` for `host` yet (see the module doc)."""
    from meshha.recovery.decide.host import needs_fence

    old = state.verdicts[host]
    if old.kind not in ("suspect", "degraded") or new.kind not in SEVERITY:
        return False
    if needs_fence(segment, old) or not is_flapping(state, host, now):
        return False
    milder = SEVERITY[new.kind] < SEVERITY[old.kind] or (
        new.kind == old.kind and set(new.networks) < set(old.networks)
    )
    return milder and now - state.changed_at.get(host, 0.0) < HOLD_S


class ObservationDamper:
    """One observer's memory of the losses it reported (bounded per key)."""

    def __init__(self) -> None:
        self._losses: dict[tuple[str, str], deque[float]] = {}

    def lost(self, target: str, network: str, since: float) -> None:
        """A loss of `target` on `network` since `since` (the same loss seen again is
        not counted twice)."""
        times = self._losses.setdefault((target, network), deque(maxlen=MAX_KEPT))
        if not times or times[-1] != since:
            times.append(since)

    def hold_regain(
        self, target: str, network: str, reachable_since: float, other_up: bool, now: float
    ) -> bool:
        """True: report `target` reachable on `network` later, not now."""
        if not other_up or recent(self._losses.get((target, network)), now) < FLAP_LOSSES:
            return False
        return now - reachable_since < HOLD_S
