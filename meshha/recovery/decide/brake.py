"""Verdict changes and the mass-failure brake.

More than `brake.max_failed_fraction` of the segment failing inside `brake.window_s` is
more likely our network than their hosts: the brake holds all fencing, alerts, and lets
a human decide. Suspects count, so it trips before the first of many hosts is fenced
(their losses are detected a few probes apart).
"""

from __future__ import annotations

from collections.abc import Mapping

from meshha.config.model import Segment
from meshha.raft import entries as E
from meshha.raft.entries import Entry
from meshha.raft.intent_key import alert
from meshha.raft.records import Verdict
from meshha.recovery.decide.steps import Context


def verdict_entry(ctx: Context, host: str, v: Verdict) -> Entry:
    return E.verdict(
        ts=ctx.now,
        by=ctx.me,
        host=host,
        verdict=v.kind,
        networks=list(v.networks),
        reason=v.reason,
        evidence=[list(x) for x in v.evidence],
    )


def needs_fence(segment: Segment, v: Verdict) -> bool:
    """A failed host is fenced; so is one degraded on a network whose on_loss says so."""
    if v.kind == "failed":
        return True
    return v.kind == "degraded" and any(
        segment.network(n).on_loss == "fence_evacuate" for n in v.networks
    )


def failing(segment: Segment, v: Verdict) -> bool:
    """Counts toward the brake: suspected, failed, or degraded on a fencing network."""
    return v.kind == "suspect" or needs_fence(segment, v)


def brake(ctx: Context, computed: Mapping[str, Verdict]) -> list[Entry]:
    """Once on, the brake holds while more than the limit are still failing; it releases
    itself when enough are back and none of the braked hosts is still half-way
    (suspect), so a host coming back is not fenced (the ones that stay failed are then
    fenced as usual), and `meshctl brake release` releases it by hand (hosts failing
    since before the release do not count toward tripping it again)."""
    segment, state, now = ctx.segment, ctx.state, ctx.now
    b = segment.brake
    limit = b.max_failed_fraction * len(segment.hosts)
    now_failing = sorted(
        h for h, v in computed.items() if failing(segment, v) and not state.in_maintenance(h)
    )
    if state.brake.on:
        still = [h for h in now_failing if not state.is_fenced(h)]
        moving = [h for h in state.brake.hosts if computed[h].kind == "suspect"]
        if len(still) <= limit and not moving:
            reason = f"{len(still)} hosts failing now, within the limit of {limit:g}"
            return [E.brake(ts=now, by=ctx.me, on=False, hosts=[], reason=reason)]
        return []
    floor = max(now - b.window_s, state.brake.since)
    recent = [
        h
        for h in now_failing
        if not failing(segment, state.verdicts[h]) or state.verdict_since[h] >= floor
    ]
    if len(recent) <= limit:
        return []
    reason = (
        f"{len(recent)} of {len(segment.hosts)} hosts failing within {b.window_s:g}s "
        f"(limit {b.max_failed_fraction:.0%}): likely a network fault, fencing held"
    )
    return [
        E.brake(ts=now, by=ctx.me, on=True, hosts=recent, reason=reason),
        ctx.alert(
            alert("brake", count=state.brake_count + 1),
            None,
            "critical",
            "mass-failure brake engaged",
            reason,
        ),
    ]
