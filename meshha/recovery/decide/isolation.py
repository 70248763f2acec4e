"""VMs a host destroyed when it isolated itself, and that nobody evacuated.

A host cut off from a majority on every network destroys its VMs after
`isolation_after_s` (the self-fence, agent/node.py), so that the majority may evacuate
them. A partition that heals after that but before the majority committed `failed` and
fenced the host leaves those VMs down: Nova still shows them ACTIVE on their host, no
QEMU runs them, and no evacuation is coming. The host's `isolation` entry (committed
once it is back in contact) lists them; once the host is back, healthy, no longer
isolated and in service (not fenced: a fenced host returns through return_.py first),
each destroyed HA VM that was not evacuated in an episode since is restarted on its host
through Nova (stop, start), like a crashed VM (decide/vm.py). A fence still pending
waits. The fenced case matters when a host is heard again before its evacuation was
planned (a BMC that lied, the partition healed while Nova was slow): the chain stops at
its return, and without this its destroyed VMs stayed down for good (the lab's nemesis
found it; scenario bmc-lies-heard-before-evacuation).
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
        if ready(ctx, host):
            out += _restarts(ctx, host, sf)
    return out


def ready(ctx: Context, host: str) -> bool:
    """The host is back and in service, and the majority is not about to fence it."""
    state = ctx.state
    if (
        state.isolated.get(host, False)
        or state.in_maintenance(host)
        or state.verdicts[host].kind != "healthy"
        or process_failed(state, host) is not None
        or host in state.fenced  # back in service only through return_.py
    ):
        return False
    return not any(i.action == "fence" and not i.done for i in state.intents_for(host))


def evacuated(ctx: Context, host: str, sf: SelfFence) -> set[str]:
    """The VMs moved off `host` by an evacuation of an episode since the self-fence."""
    state = ctx.state
    return {
        i.vm
        for ep in range(sf.episode, state.episode[host] + 1)
        for i in state.intents_for(host, ep)
        if i.action == "evacuate" and i.status == "ok" and i.vm
    }


def _restarts(ctx: Context, host: str, sf: SelfFence) -> list[Entry]:
    default_ha = ctx.segment.policy.default_ha
    moved = evacuated(ctx, host, sf)
    episodes = range(sf.episode, ctx.state.episode[host] + 1)
    fenced = any((host, ep) in ctx.state.ever_fenced for ep in episodes)
    why = "nobody evacuated it" if fenced else "was not fenced"
    out: list[Entry] = []
    for vm in sf.vms:
        if not sf.ha.get(vm, default_ha) or vm in moved:
            continue
        out += ctx.step(
            vm_failure("restart_vm", vm, sf.ts),
            "restart_vm",
            host,
            vm=vm,
            reason=f"{host} destroyed {vm} when it isolated itself and {why}: restart it on its host",
        )
    return out
