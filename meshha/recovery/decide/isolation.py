"""VMs a host destroyed when it isolated itself, and that nobody evacuated.

A host cut off from a majority on every network destroys its VMs after
`isolation_after_s` (the self-fence, agent/node.py), so that the majority may evacuate
them. A partition that heals after that but before the majority committed `failed` and
fenced the host leaves those VMs down: Nova still shows them ACTIVE on their host, no
QEMU runs them, and no evacuation is coming. The host's `isolation` entry (committed
once it is back in contact) lists them; once the host is back, healthy and no longer
isolated, and the majority did not fence it in any episode since (a fence means its VMs
are the evacuation's business), each destroyed HA VM is restarted on its host through
Nova (stop, start), like a crashed VM (decide/vm.py). A fence still pending waits.
"""

from __future__ import annotations

from meshha.raft.entries import Entry
from meshha.raft.intent_key import vm_failure
from meshha.raft.records import SelfFence
from meshha.recovery.decide.process import process_failed
from meshha.recovery.decide.steps import Context


def isolation_recovery(ctx: Context) -> list[Entry]:
    out: list[Entry] = []
    for host, sf in sorted(ctx.state.self_fences.items()):
        if ready(ctx, host, sf):
            out += _restarts(ctx, host, sf)
    return out


def ready(ctx: Context, host: str, sf: SelfFence) -> bool:
    """The host is back, and the majority did not (and is not about to) fence it."""
    state = ctx.state
    if (
        state.isolated.get(host, False)
        or state.in_maintenance(host)
        or state.verdicts[host].kind != "healthy"
        or process_failed(state, host) is not None
    ):
        return False
    episodes = range(sf.episode, state.episode[host] + 1)
    if any((host, ep) in state.ever_fenced for ep in episodes):
        return False  # fenced: its HA VMs were (or are being) evacuated
    return not any(i.action == "fence" and not i.done for i in state.intents_for(host))


def _restarts(ctx: Context, host: str, sf: SelfFence) -> list[Entry]:
    default_ha = ctx.segment.policy.default_ha
    out: list[Entry] = []
    for vm in sf.vms:
        if not sf.ha.get(vm, default_ha):
            continue
        out += ctx.step(
            vm_failure("restart_vm", vm, sf.ts),
            "restart_vm",
            host,
            vm=vm,
            reason=(
                f"{host} destroyed {vm} when it isolated itself and was not fenced: "
                "restart it on its host"
            ),
        )
    return out
