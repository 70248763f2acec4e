"""HA VMs a fence stopped and no evacuation moved: started again once their host is back.

A fence (the BMC's power-off, or the self-fence deadline) stops every VM of its host. The
episode's evacuation moves the HA ones the reserve can take; the rest (`unplaced`: an
alert says which and why) and any whose evacuation failed for good stay on the fenced
host in Nova, stopped. When that host comes back (reconciled, nova-compute enabled:
return_.py) nothing started them: they stayed down until an operator noticed, as they do
with Masakari. vSphere HA restarts them once capacity allows; so does this.

Once the host is back in service (`isolation.ready`: healthy, enabled, not isolated, not
in maintenance, no failed process, no fence pending) and no evacuation of the episode is
pending, each HA server of the episode's inventory that no evacuation moved and that the
host's reconcile report did not find running (`kept`) is restarted on it through Nova
(restart_vm: stop, start), like a crashed VM; one attempt chain per VM and episode (its
key carries the inventory's time). VMs the host destroyed when it isolated itself are
isolation.py's (the same restart, keyed on the self-fence): not counted twice.
"""

from __future__ import annotations

from meshha.raft.entries import Entry
from meshha.raft.intent_key import vm_failure
from meshha.recovery.decide.isolation import ready
from meshha.recovery.decide.steps import Context


def stranded_restarts(ctx: Context) -> list[Entry]:
    state = ctx.state
    out: list[Entry] = []
    for host, inv in sorted(state.inventory.items()):
        ep = inv.episode
        if (
            inv.purpose != "evacuate"
            or ep != state.episode[host]
            or (host, ep) not in state.ever_fenced
            or not ready(ctx, host)
        ):
            continue
        intents = state.intents_for(host, ep)
        if any(i.action == "evacuate" and not i.done for i in intents):
            continue
        moved = {i.vm for i in intents if i.action == "evacuate" and i.status == "ok"}
        rep = state.reconciled.get(host)
        kept = set(rep.kept) if rep is not None and rep.episode == ep else set()
        sf = state.self_fences.get(host)
        destroyed = set(sf.vms) if sf is not None and sf.episode <= ep else set()
        for s in inv.servers:
            if not s.ha or s.id in moved or s.id in kept or s.id in destroyed:
                continue
            out += ctx.step(
                vm_failure("restart_vm", s.id, inv.ts),
                "restart_vm",
                host,
                vm=s.id,
                reason=f"{host} is back in service and {s.id} ({s.priority}) was stopped by "
                "its fence and not evacuated: restart it on its host",
            )
    return out
