"""VM failures: a VM that crashed or was killed on a live host.

Each VM's latest failure gets the action its HA policy names (`on_vm_failure`, else the
segment's default): restart it in place, hard-reboot it, restart it elsewhere, alert,
or ignore. A VM that keeps failing (`vm_restart_limit` failures within
`vm_restart_window_s`), or whose restart in place failed, is restarted elsewhere
instead. Nothing is done for a VM whose host is to be fenced (failed, or degraded on a fencing
network) or fenced and not yet back in service (the host chain evacuates it; a VM must
not start on a host being powered off, nor on one that returns) or in maintenance.
"""

from __future__ import annotations

from typing import Literal

from meshha.raft.entries import Entry
from meshha.raft.intent_key import alert, ms, vm_failure
from meshha.raft.records import VmFailure
from meshha.recovery.decide.host import needs_fence
from meshha.recovery.decide.steps import Context

VmStep = Literal["restart_vm", "hard_reboot", "migrate_vm"]


def vm_recovery(ctx: Context) -> list[Entry]:
    out: list[Entry] = []
    for vm, times in sorted(ctx.state.vm_failures.items()):
        info = ctx.state.vm_last_failure.get(vm)
        if info is None or ctx.state.in_maintenance(info.host):
            continue
        if needs_fence(ctx.segment, ctx.state.verdicts[info.host]) or info.host in ctx.state.fenced:
            continue  # the host chain fences and evacuates it; a fenced host starts nothing
        out += _one_vm(ctx, vm, times, info)
    return out


def _one_vm(ctx: Context, vm: str, times: list[float], info: VmFailure) -> list[Entry]:
    pol = ctx.segment.policy
    host, last = info.host, times[-1]
    action = info.on_vm_failure or pol.default_on_vm_failure
    if not info.ha or action == "ignore":
        return []
    recent = [t for t in times if t > last - pol.vm_restart_window_s]
    if action == "restart" and len(recent) >= pol.vm_restart_limit:
        action = "restart_elsewhere"
    first = ctx.latest(vm_failure("restart_vm", vm, last))
    if action == "restart" and first is not None and first.status == "failed":
        action = "restart_elsewhere"  # the same host could not: elsewhere, not again here
    ev = info.event
    steps: dict[str, tuple[VmStep, str]] = {
        "restart": ("restart_vm", f"{ev}: restart on {host} ({len(recent)} failures in window)"),
        "hard_reboot": ("hard_reboot", f"{ev}: hard reboot"),
        "restart_elsewhere": (
            "migrate_vm",
            f"{ev}: {len(recent)} failures in {pol.vm_restart_window_s:g}s "
            "or restart failed: restart elsewhere",
        ),
    }
    if action in steps:
        kind, reason = steps[action]
        return ctx.step(vm_failure(kind, vm, last), kind, host, vm=vm, reason=reason)
    if action == "alert":
        return ctx.once(
            alert("vm", vm=vm, failure_ms=ms(last)),
            host,
            "warning",
            f"VM {vm} on {host}: {ev}",
            info.detail,
        )
    return []
