"""Keeping the reserve empty in Nova, and the N+k alert.

A reserved host is disabled in Nova (`reserve_hold`, a disabled_reason naming meshha) so
the scheduler places no new server there and the capacity is still free when a host
fails. When an evacuation chooses it as a target it is enabled first (`reserve_release`,
once per reserve term) and the evacuation names it explicitly; once `replace_reserve`
(decide/evacuate.py) promotes a compute host to reserved, that host is held in turn.
A hold is keyed by the reserve term (when the host became reserved) or, if later, by
when something else enabled it again (a host back after a fence), so it is redone then.

N+k: the leader measures it on every change of the segment (meshha.agent.capacity) and
commits a `capacity` entry; a shortfall alerts once per episode (the episode ends when a
measurement says the segment survives again).
"""

from __future__ import annotations

from meshha.raft.entries import Entry
from meshha.raft.intent_key import IntentKey, alert, host_window
from meshha.raft.records import Intent
from meshha.raft.state import SegmentState
from meshha.recovery.decide.steps import Context


def reserve_term(state: SegmentState, host: str) -> float:
    return state.role_since.get(host, 0.0)


def released(state: SegmentState, host: str) -> Intent | None:
    """The release of `host` in its current reserve term, if one was proposed."""
    return state.latest(host_window("release", host, "reserve", reserve_term(state, host)))


def held(state: SegmentState, host: str) -> bool:
    """`host` is disabled in Nova as reserve now (a hold succeeded, nothing enabled it since)."""
    if state.roles.get(host) != "reserved":
        return False
    r = released(state, host)
    if r is not None and r.status == "ok":
        return False
    last = state.latest(hold_key(state, host))
    return last is not None and last.status == "ok"


def hold_key_since(state: SegmentState, host: str) -> float:
    return max(reserve_term(state, host), state.enabled_at.get(host, 0.0))


def hold_key(state: SegmentState, host: str) -> IntentKey:
    return host_window("hold", host, "reserve", hold_key_since(state, host))


def reserve_holds(ctx: Context) -> list[Entry]:
    """Hold every reserved host that is not (or no longer) disabled in Nova."""
    state = ctx.state
    if not ctx.segment.recovery.reserve_disable:
        return []
    out: list[Entry] = []
    for host in ctx.segment.host_names:
        if state.roles.get(host) != "reserved" or state.in_maintenance(host):
            continue
        if released(state, host) is not None:
            continue  # chosen as a target in this term: it stays enabled until replaced
        if state.is_fenced(host):
            continue  # the host chain has it forced down and disabled
        out += ctx.step(
            hold_key(state, host),
            "reserve_hold",
            host,
            reason=f"{host} is reserved: disable it in Nova so the scheduler leaves it empty",
            params={"why": "reserve"},
        )
    return out


def releases_first(ctx: Context, source: str, ep: int, targets: set[str]) -> list[Entry] | None:
    """Before evacuating onto reserved `targets`: enable the ones still held. None once
    every target is enabled (evacuations may go), else the release steps to wait for."""
    state = ctx.state
    if not ctx.segment.recovery.reserve_disable:
        return None
    out: list[Entry] = []
    waiting = False
    for t in sorted(targets):
        if state.roles.get(t) != "reserved":
            continue
        r = released(state, t)
        if r is not None and r.status == "ok":
            continue
        waiting = True
        hold = state.latest(hold_key(state, t))
        if hold is not None and hold.status == "pending":
            continue  # let the hold finish first, or it would disable the target after
        out += ctx.step(
            host_window("release", t, "reserve", reserve_term(state, t)),
            "reserve_release",
            t,
            reason=f"chosen as evacuation target for {source} (episode {ep}): enable it in Nova",
            params={"why": "reserve", "for": source, "episode": ep},
        )
    return out if waiting else None


def capacity_alert(ctx: Context) -> list[Entry]:
    state = ctx.state
    cap = state.capacity
    if cap is None or cap.survives:
        return []
    return ctx.once(
        alert("capacity", count=state.capacity_shortfalls),
        None,
        "critical",
        f"segment {ctx.segment.name} could not survive losing its {cap.k} largest hosts",
        cap.reason,
    )
