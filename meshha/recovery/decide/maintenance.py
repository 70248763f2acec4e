"""Maintenance that empties the host: `meshctl maintenance on HOST` ─▶ disable it in Nova
(`maint_hold`) ─▶ list its servers (`inventory`, purpose drain) ─▶ live-migrate each one
(`drain`) onto a compute host of the segment with room, keeping the reserve (a reserved
host only when `recovery.maintenance_may_use_reserve` and nothing else fits, enabled
first as for an evacuation) ─▶ one alert naming what could not move.
`maintenance off` ─▶ enable it in Nova again (`maint_release`), unless it is reserved
(the reserve stays disabled: decide/reserve.py), or fenced (it returns through its own
reconciled `enable_compute`, decide/return_.py, which then leaves nothing to release).

Every step is keyed by the maintenance window (when it began), so a second window
drains again and a new leader resumes the current one. The host itself is otherwise
ignored while in maintenance (decide/__init__.py skips it; the state machine and the
executor refuse anything but these steps on it).
"""

from __future__ import annotations

from dataclasses import dataclass

from meshha.raft import entries as E
from meshha.raft.entries import Entry
from meshha.raft.intent_key import IntentKey, alert, drain, host_window
from meshha.raft.records import Inventory, Server
from meshha.raft.state import SegmentState
from meshha.recovery import placement
from meshha.recovery.decide.reserve import held, releases_first
from meshha.recovery.decide.steps import Context
from meshha.recovery.decide.targets import free_targets


@dataclass(frozen=True)
class DrainProgress:
    """Where emptying a host in maintenance stands (for the control op and meshctl)."""

    host: str
    since: float
    stage: str  # disabling | listing | moving | done
    total: int = 0
    moved: tuple[str, ...] = ()
    moving: tuple[str, ...] = ()
    failed: tuple[tuple[str, str], ...] = ()  # (vm, why)
    unplaced: tuple[tuple[str, str], ...] = ()  # (vm, why)

    def as_dict(self) -> dict[str, object]:
        return {
            "host": self.host,
            "stage": self.stage,
            "total": self.total,
            "moved": list(self.moved),
            "moving": list(self.moving),
            "could_not_move": [{"vm": v, "why": w} for v, w in self.failed + self.unplaced],
        }


def maintenance_steps(ctx: Context) -> list[Entry]:
    out: list[Entry] = []
    for host in ctx.segment.host_names:
        if ctx.state.in_maintenance(host):
            out += drain_host(ctx, host)
        else:
            out += back_in_service(ctx, host)
    return out


def drain_host(ctx: Context, host: str) -> list[Entry]:
    state = ctx.state
    since = state.maintenance[host].since
    hold = host_window("hold", host, "maintenance", since)
    out = ctx.step(
        hold,
        "maint_hold",
        host,
        reason=f"{host} in maintenance: disable it in Nova, then move its VMs off",
        params={"why": "maintenance"},
    )
    last = ctx.latest(hold)
    if out or last is None or last.status != "ok":
        return out
    listing = host_window("inventory", host, "drain", since)
    out = ctx.step(
        listing,
        "inventory",
        host,
        reason=f"list the servers of {host} to live-migrate them off",
        params={"purpose": "drain"},
    )
    inv = _inventory(state, host, listing)
    if out or inv is None:
        return out
    todo: list[placement.VmDemand] = []
    attempts: dict[str, int] = {}
    for s in inv.servers:
        step = drain(host, s.id, since)
        latest, n = ctx.latest(step), ctx.attempts(step)
        if latest is not None and (
            latest.status in ("pending", "ok") or not ctx.retry_due(latest, n)
        ):
            continue
        attempts[s.id] = n + 1
        todo.append(placement.VmDemand(s.id, s.vcpus, s.ram_mb, s.disk_gb, s.priority))
    if not todo:
        return _report(ctx, host, since, inv)
    plan = placement.plan(todo, drain_targets(state, host, inv, reserve=False))
    placements = list(plan.placements)
    if plan.unplaced and ctx.segment.recovery.maintenance_may_use_reserve:
        rest = [d for d in todo if d.vm in {u.vm for u in plan.unplaced}]
        extra = placement.plan(rest, drain_targets(state, host, inv, reserve=True))
        placements += extra.placements
        waiting = releases_first(ctx, host, 0, {p.target for p in extra.placements})
        if waiting is not None:
            return waiting
    if not placements:  # nothing fits anywhere now: say so once everything else is final
        return _report(ctx, host, since, inv)
    return [
        E.intent(
            ts=ctx.now,
            by=ctx.me,
            intent_id=drain(host, p.vm, since).at(attempts[p.vm]).format(),
            action="drain",
            host=host,
            vm=p.vm,
            target=p.target,
            order=order,
            reason=f"{host} in maintenance: live-migrate {p.vm} to {p.target}",
        )
        for order, p in enumerate(placements)
    ]


def _inventory(state: SegmentState, host: str, listing: IntentKey) -> Inventory | None:
    last = state.latest(listing)
    inv = state.inventory.get(host)
    if last is None or last.status != "ok" or inv is None or inv.purpose != "drain":
        return None
    return inv


def drain_targets(
    state: SegmentState, host: str, inv: Inventory, *, reserve: bool
) -> list[placement.Target]:
    """Compute hosts (or, with `reserve`, reserved ones) that may take VMs off `host`."""
    return free_targets(state, host, inv, role="reserved" if reserve else "compute")


def progress(ctx: Context, host: str) -> DrainProgress | None:
    """How far emptying `host` got in its current (or last) maintenance window."""
    state = ctx.state
    window = state.maintenance.get(host) or state.maintenance_ended.get(host)
    if window is None:
        return None
    since = window.since
    hold = ctx.latest(host_window("hold", host, "maintenance", since))
    if hold is None or hold.status != "ok":
        return DrainProgress(host, since, "disabling")
    inv = _inventory(state, host, host_window("inventory", host, "drain", since))
    if inv is None:
        return DrainProgress(host, since, "listing")
    moved, moving, failed, unplaced = [], [], [], []
    # A VM with no drain yet is about to get one if it fits somewhere now (the leader
    # proposes it on its next round), else it could not be placed.
    fresh = [s for s in inv.servers if ctx.latest(drain(host, s.id, since)) is None]
    fits = _placeable(ctx, host, inv, fresh)
    for s in inv.servers:
        step = drain(host, s.id, since)
        last, n = ctx.latest(step), ctx.attempts(step)
        if last is None:
            if s.id in fits:
                moving.append(s.id)
            else:
                unplaced.append((s.id, "no compute host of the segment has room for it"))
        elif last.status == "ok":
            moved.append(s.id)
        elif last.status == "pending" or not ctx.final(last, n):
            moving.append(s.id)
        else:
            failed.append((s.id, f"{last.error_kind or last.status}: {last.detail}"))
    stage = "moving" if moving else "done"
    return DrainProgress(
        host,
        since,
        stage,
        len(inv.servers),
        tuple(moved),
        tuple(moving),
        tuple(failed),
        tuple(unplaced),
    )


def _placeable(ctx: Context, host: str, inv: Inventory, servers: list[Server]) -> set[str]:
    if not servers:
        return set()
    demand = [placement.VmDemand(s.id, s.vcpus, s.ram_mb, s.disk_gb, s.priority) for s in servers]
    placed = {
        p.vm
        for p in placement.plan(
            demand, drain_targets(ctx.state, host, inv, reserve=False)
        ).placements
    }
    rest = [d for d in demand if d.vm not in placed]
    if rest and ctx.segment.recovery.maintenance_may_use_reserve:
        targets = drain_targets(ctx.state, host, inv, reserve=True)
        placed |= {p.vm for p in placement.plan(rest, targets).placements}
    return placed


def _report(ctx: Context, host: str, since: float, inv: Inventory) -> list[Entry]:
    """Once every VM is moved or will not be: one alert naming what could not move."""
    p = progress(ctx, host)
    if p is None or p.stage != "done" or not (p.failed or p.unplaced):
        return []
    lost = p.failed + p.unplaced
    return ctx.once(  # about the host, but not an action on it (it is in maintenance)
        alert("drain", host=host, failure_ms=int(since * 1000)),
        None,
        "warning",
        f"{host} in maintenance: {len(lost)} of {p.total} VMs could not be moved off",
        "; ".join(f"{v}: {w}" for v, w in lost),
    )


def back_in_service(ctx: Context, host: str) -> list[Entry]:
    """Maintenance over: enable the host in Nova again (a reserved one stays held)."""
    state = ctx.state
    window = state.maintenance_ended.get(host)
    if window is None or state.verdicts[host].kind != "healthy" or state.is_fenced(host):
        return []
    hold = ctx.latest(host_window("hold", host, "maintenance", window.since))
    if hold is None or hold.status != "ok":
        return []  # never disabled for it: nothing to undo
    if state.enabled_at.get(host, -1.0) >= (hold.done_ts or 0.0):
        return []  # enabled since (a fenced host's return, decide/return_.py): undone
    if state.roles.get(host) == "reserved" and ctx.segment.recovery.reserve_disable:
        return []  # the reserve stays disabled (decide/reserve.py)
    if held(state, host):
        return []
    return ctx.step(
        host_window("release", host, "maintenance", window.since),
        "maint_release",
        host,
        reason=f"{host} out of maintenance: enable it in Nova again",
        params={"why": "maintenance"},
    )
