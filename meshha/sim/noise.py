"""The noise invariant: one fault costs the operator and the log a bounded amount,
checked on the committed log at the end of every simulator run (world.check_invariants).

- A process outage (host, process, outage start) yields at most 2 reports (could not be
  restarted; running again), at most `intent_max_attempts` disable intents and 1 alert.
- Alerts: at most ALERTS_PER_FAULT per injected fault, plus ALERTS_BASE.
- Verdicts: at most VERDICTS_PER_WINDOW changes of one host's verdict in any
  WINDOW_S (a flapping link is damped: recovery/damping.py).
A fault is one entry of `Sim.faults` (a whole `flap` is one fault).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from meshha.config.model import Segment
from meshha.raft.entries import Entry
from meshha.raft.intent_key import IntentKey

ALERTS_PER_FAULT = 3
ALERTS_BASE = 3
WINDOW_S = 60.0
VERDICTS_PER_WINDOW = 24


def noise_problems(
    segment: Segment, log: Sequence[Entry], times: Sequence[float], faults: int
) -> list[str]:
    problems: list[str] = []
    reports: dict[tuple[str, str, float], int] = defaultdict(int)
    per_outage: dict[tuple[str, str, int], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    alerts = 0
    verdicts: dict[str, list[float]] = defaultdict(list)
    for t, e in zip(times, log, strict=True):
        kind = e["kind"]
        if kind == "process_failure" and "since" in e:
            reports[(e["host"], e["process"], e["since"])] += 1
        elif kind == "verdict":
            verdicts[e["host"]].append(t)
        elif kind == "intent":
            alerts += e["action"] == "alert"
            k = IntentKey.parse_or_none(e["intent"])
            if k is not None and k.process and k.failure_ms is not None:
                what = "alert" if k.step == "alert" else k.step
                per_outage[(k.host, k.process, k.failure_ms)][what] += 1
    for (h, p, since), n in sorted(reports.items()):
        if n > 2:
            problems.append(f"noise: {n} reports for one outage of {p} on {h} (since {since})")
    limit = segment.recovery.intent_max_attempts
    for (h, p, f), counts in sorted(per_outage.items()):
        if counts["disable"] > limit or counts["alert"] > 1:
            problems.append(f"noise: one outage of {p} on {h} ({f}) gave {dict(counts)}")
    if alerts > ALERTS_PER_FAULT * faults + ALERTS_BASE:
        problems.append(f"noise: {alerts} alerts for {faults} faults")
    for h, ts in sorted(verdicts.items()):
        j = 0
        for i, t in enumerate(ts):
            while ts[j] < t - WINDOW_S:
                j += 1
            if i - j + 1 > VERDICTS_PER_WINDOW:
                problems.append(f"noise: {i - j + 1} verdicts for {h} within {WINDOW_S:g}s")
                break
    return problems
