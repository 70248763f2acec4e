"""Evacuating a fenced host: place its HA VMs on reserved capacity by priority, retry
the ones that failed, report once all are final, and replace the reserve they used.

Safety: planning evacuations from a host that is not fenced is a bug (invariant 1; the
state machine checks it again when the intent commits).
"""

from __future__ import annotations

from meshha.errors import InvariantViolation
from meshha.raft import entries as E
from meshha.raft.entries import Entry
from meshha.raft.intent_key import alert, vm_move
from meshha.raft.records import Inventory
from meshha.recovery import placement
from meshha.recovery.decide.reserve import releases_first
from meshha.recovery.decide.steps import Context
from meshha.recovery.decide.targets import free_targets


def evacuations(
    ctx: Context, host: str, ep: int, inv: Inventory, keep: frozenset[str] = frozenset()
) -> list[Entry]:
    """Evacuate the HA servers of the inventory, except those in `keep` (running on the
    host again by its own agent's report: decide/host.py `rebooted`)."""
    state = ctx.state
    if not state.is_fenced(host):  # planning-time check of invariant 1
        raise InvariantViolation(f"planning evacuations from unfenced {host}")
    todo, attempts = evacuation_todo(ctx, host, ep, inv, keep)
    if not todo:
        return after_evacuations(ctx, host, ep, inv)
    plan = placement.plan(todo, free_targets(state, host, inv, role="reserved"))
    # A reserved target is disabled in Nova: enable it before evacuating onto it.
    waiting = releases_first(ctx, host, ep, {p.target for p in plan.placements})
    if waiting is not None:
        return waiting
    fence = state.fenced[host]
    out = [
        E.intent(
            ts=ctx.now,
            by=ctx.me,
            intent_id=vm_move("evacuate", host, ep, p.vm).at(attempts[p.vm]).format(),
            action="evacuate",
            host=host,
            vm=p.vm,
            target=p.target,
            order=order,
            reason=f"{host} fenced ({fence.method}); {p.priority} priority VM to reserved {p.target}",
        )
        for order, p in enumerate(plan.placements)
    ]
    if plan.unplaced:
        out += ctx.once(
            alert("unplaced", host=host, episode=ep),
            host,
            "critical",
            f"{len(plan.unplaced)} VMs of {host} do not fit the reserved capacity",
            "; ".join(f"{u.vm} ({u.priority}): {u.reason}" for u in plan.unplaced),
        )
    return out


def evacuation_todo(
    ctx: Context, host: str, ep: int, inv: Inventory, keep: frozenset[str] = frozenset()
) -> tuple[list[placement.VmDemand], dict[str, int]]:
    """The HA servers to evacuate now (never tried, or a failed try due again), and the
    attempt number each would be."""
    todo: list[placement.VmDemand] = []
    attempts: dict[str, int] = {}
    for s in inv.servers:
        if not s.ha or s.id in keep:
            continue
        step = vm_move("evacuate", host, ep, s.id)
        latest, n = ctx.latest(step), ctx.attempts(step)
        if latest is not None and latest.status in ("pending", "ok"):
            continue
        if latest is not None and not ctx.retry_due(latest, n):
            continue
        attempts[s.id] = n + 1
        todo.append(placement.VmDemand(s.id, s.vcpus, s.ram_mb, s.disk_gb, s.priority))
    return todo, attempts


def evacuations_owed(
    ctx: Context, host: str, ep: int, inv: Inventory, keep: frozenset[str] = frozenset()
) -> bool:
    """Evacuations of the episode still to come: one in flight, or one due that fits
    the reserved capacity (waiting, say, for its target's release)."""
    if any(i.action == "evacuate" and not i.done for i in ctx.state.intents_for(host, ep)):
        return True
    todo, _ = evacuation_todo(ctx, host, ep, inv, keep)
    if not todo:
        return False
    return bool(
        placement.plan(todo, free_targets(ctx.state, host, inv, role="reserved")).placements
    )


def after_evacuations(ctx: Context, host: str, ep: int, inv: Inventory) -> list[Entry]:
    """Once every evacuation is final: one report, and reserve to replace what was used."""
    state = ctx.state
    evac = [i for i in state.intents_for(host, ep) if i.action == "evacuate"]
    if any(not i.done for i in evac):
        return []
    ok = sorted({i.vm for i in evac if i.vm and i.status == "ok"})
    for vm in sorted({i.vm for i in evac if i.vm} - set(ok)):
        step = vm_move("evacuate", host, ep, vm)
        last, n = ctx.latest(step), ctx.attempts(step)
        if (last is not None and ctx.retry_due(last, n)) or not ctx.final(last, n):
            return []  # a retry is still to come: the report waits for it
    failed = sorted({i.vm for i in evac if i.vm and i.status != "ok"} - set(ok))
    non_ha = [s.id for s in inv.servers if not s.ha]
    out = ctx.once(
        alert("recovered", host=host, episode=ep),
        host,
        "warning" if not failed else "critical",
        f"{host} failed and was recovered" if not failed else f"{host} failed: recovery incomplete",
        f"fenced by {state.fenced[host].method}; evacuated {len(ok)} VMs; "
        f"failed {len(failed)} {failed}; not HA, left alone: {len(non_ha)}",
    )
    used = {i.target for i in evac if i.status == "ok" and i.target}
    return out + replace_reserve(ctx, used, inv)


def replace_reserve(ctx: Context, used: set[str], inv: Inventory) -> list[Entry]:
    """Reserved hosts that took evacuated VMs become compute hosts once empty compute
    hosts replace them as reserve (as many as the segment's configuration reserves)."""
    if not used:
        return []
    state = ctx.state

    def healthy(name: str) -> bool:
        return not state.in_maintenance(name) and state.verdicts[name].kind == "healthy"

    wanted = sum(1 for h in ctx.segment.hosts if h.role == "reserved")
    reserve_after = [
        placement.Target(t.host, t.vcpus_free, t.ram_mb_free, t.disk_gb_free)
        for t in inv.facts
        if state.roles.get(t.host) == "reserved" and t.host not in used and healthy(t.host)
    ]
    candidates = []
    for f in inv.facts:
        if f.host in used or state.roles.get(f.host) != "compute":
            continue
        ok = healthy(f.host) and not state.is_fenced(f.host)
        candidates.append(
            placement.Candidate(
                f.host,
                placement.Target(f.host, f.vcpus_free, f.ram_mb_free, f.disk_gb_free),
                f.running_vms,
                ok and f.running_vms == 0,
                "" if ok else "not a healthy compute host",
            )
        )
    out = [
        E.reserve(
            ts=ctx.now,
            by=ctx.me,
            host=name,
            role="reserved",
            reason=f"replaces used reserved capacity on {', '.join(sorted(used))}",
        )
        for name in placement.replacement(reserve_after, wanted, candidates)
    ]
    if not out:
        return []
    return out + [
        E.reserve(
            ts=ctx.now,
            by=ctx.me,
            host=name,
            role="compute",
            reason="reserved host took evacuated VMs and is now a compute host",
        )
        for name in sorted(used)
        if state.roles.get(name) == "reserved"
    ]
