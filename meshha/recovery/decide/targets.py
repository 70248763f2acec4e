"""Where moved VMs may go: the hosts of one role with their free capacity (pure).

Evacuations (onto the reserve) and maintenance drains (onto compute hosts, then the
reserve) fit VMs into the same picture: what the host inventory said was free, minus
what moves committed since, or still running, are taking. Both kinds of move count
against every target, so a drain onto the reserve and an evacuation onto it never
overcommit it between them.
"""

from __future__ import annotations

from meshha.raft.records import Intent, Inventory, Server
from meshha.raft.state import SegmentState
from meshha.recovery import placement
from meshha.recovery.decide.process import process_failed

MOVES = ("drain", "evacuate")


def free_targets(
    state: SegmentState, host: str, inv: Inventory, *, role: str
) -> list[placement.Target]:
    """Hosts of `role` other than `host` that may take VMs now (healthy, not in
    maintenance, not fenced, nova-compute running), with their free capacity."""
    demand: dict[str, Server] = {s.id: s for x in state.inventory.values() for s in x.servers}
    out = []
    for f in inv.facts:
        name = f.host
        if (
            name == host
            or state.roles.get(name) != role
            or state.in_maintenance(name)
            or state.verdicts[name].kind != "healthy"
            or state.is_fenced(name)
            or process_failed(state, name) is not None  # its nova-compute is not running
        ):
            continue
        taking = [d for i in state.intents.values() if (d := _taking(i, name, demand, inv))]
        out.append(
            placement.Target(
                name,
                f.vcpus_free - sum(d.vcpus for d in taking),
                f.ram_mb_free - sum(d.ram_mb for d in taking),
                f.disk_gb_free - sum(d.disk_gb for d in taking),
            )
        )
    return out


def _taking(i: Intent, target: str, demand: dict[str, Server], inv: Inventory) -> Server | None:
    """The server a move onto `target` is taking that the inventory's free capacity does
    not show: still running, or done after the inventory was taken."""
    if i.action not in MOVES or i.target != target or i.vm is None:
        return None
    if i.status == "pending" or (i.status == "ok" and (i.done_ts or 0) >= inv.ts):
        return demand.get(i.vm)
    return None
