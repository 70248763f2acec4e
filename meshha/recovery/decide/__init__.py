"""Recovery decisions: from committed state to the entries the leader proposes.

Pure: `decide(segment, state, now, me)` returns entries (verdict changes, intents, fence
proofs, brake changes) and does nothing itself. The leader proposes them; once committed,
the executor carries out the intents and commits their results; the next call of
`decide` sees those results and takes the next step. So every step is logged before it
is acted on, and a new leader resumes from the state alone: intent ids are keys
(`meshha.raft.intent_key`: action, host, failure episode, VM, attempt) and re-proposing
one is a no-op.

By failure kind, one module each, all sharing one `Context` (segment, state, now, me):
  host      verdict changes, the mass-failure brake, the fence ─▶ disable ─▶ inventory
            chain, the self-fence proof, per-network on_loss
  evacuate  placing a fenced host's VMs, retries, the report, replacing used reserve
  process   nova-compute / libvirtd that could not be restarted
  vm        VM crashes on live hosts
  isolation VMs a host destroyed when it isolated itself, restarted if it was not fenced
  stranded  HA VMs a fence stopped and no evacuation moved (no room): restarted on their
            host once it is back in service
  steps     the step/retry bookkeeping (attempts, backoff, alerts sent once)
  reserve   reserved hosts disabled in Nova until chosen as a target; the N+k alert
  maintenance  emptying a host in maintenance by live migration, and enabling it after
  check     the decision invariants, checked on every batch `decide` returns
Safety checks here (planning) and again in SegmentState.apply (commit):
  never evacuate from a host that is not fenced; nothing touches a host in maintenance;
  nothing is fenced while the mass-failure brake holds, nor a voter still heard when
  fencing it would leave fewer than a majority of voters up.
"""

from __future__ import annotations

from collections.abc import Iterable

from meshha.config.model import Segment
from meshha.raft.entries import Entry
from meshha.raft.intent_key import alert
from meshha.raft.records import Intent
from meshha.raft.state import SegmentState
from meshha.recovery.damping import FLAP_WINDOW_S, hold_verdict, is_flapping, recent
from meshha.recovery.decide.check import Audit, check_decisions, decision_problems
from meshha.recovery.decide.host import (
    brake,
    failing,
    host_recovery,
    keep_quorum,
    needs_fence,
    verdict_entry,
)
from meshha.recovery.decide.isolation import isolation_recovery
from meshha.recovery.decide.maintenance import maintenance_steps
from meshha.recovery.decide.reserve import capacity_alert, reserve_holds
from meshha.recovery.decide.steps import Context
from meshha.recovery.decide.stranded import stranded_restarts
from meshha.recovery.decide.vm import vm_recovery
from meshha.recovery.verdicts import compute

__all__ = [
    "Audit",
    "Context",
    "check_decisions",
    "decide",
    "decision_problems",
    "failing",
    "needs_fence",
    "pending_intents",
]


def decide(segment: Segment, state: SegmentState, now: float, me: str) -> list[Entry]:
    ctx = Context(segment, state, now, me)
    out: list[Entry] = []
    computed = compute(segment, state, now)
    for host, v in computed.items():
        if not v.same_as(state.verdicts[host]) and not hold_verdict(segment, state, host, v, now):
            out.append(verdict_entry(ctx, host, v))
        out += flapping_alert(ctx, host)
    braking = brake(ctx, computed)
    out += braking
    engaging = any(e["kind"] == "brake" and e["on"] for e in braking)
    hosts: list[Entry] = []
    for host in segment.host_names:
        if state.in_maintenance(host):
            continue
        steps = host_recovery(ctx, host)
        if engaging:  # the brake being proposed holds every fence in the same batch
            steps = [e for e in steps if not _is_fence(e)]
        hosts += steps
    out += keep_quorum(ctx, computed, hosts)  # never fence the segment out of its majority
    out += vm_recovery(ctx)
    out += reserve_holds(ctx)
    out += maintenance_steps(ctx)
    out += capacity_alert(ctx)
    out += isolation_recovery(ctx)
    out += stranded_restarts(ctx)
    out = _one_release_each(out)
    check_decisions(state, out)
    return out


def _one_release_each(out: list[Entry]) -> list[Entry]:
    """Two hosts evacuated in the same round may choose the same reserved target: it is
    released once (the first proposal stands)."""
    seen: set[str] = set()
    kept = []
    for e in out:
        if e["kind"] == "intent" and e["action"] == "reserve_release":
            if e["intent"] in seen:
                continue
            seen.add(e["intent"])
        kept.append(e)
    return kept


def flapping_alert(ctx: Context, host: str) -> list[Entry]:
    """One alert for a flapping host per failure episode (recovery/damping.py)."""
    state = ctx.state
    v = state.verdicts[host]
    if v.kind not in ("suspect", "degraded") or not is_flapping(state, host, ctx.now):
        return []
    if host in state.fenced:
        return []  # a fenced host on its way back (failed, then suspect, degraded): not flapping
    ep = state.episode[host]
    before = ctx.latest(alert("flapping", host=host, episode=ep - 1)) if ep > 0 else None
    if before is not None and before.created_ts > ctx.now - FLAP_WINDOW_S:
        return []  # the same flapping, now in a new episode: said already
    n = recent(state.verdict_changes.get(host), ctx.now)
    return ctx.once(
        alert("flapping", host=host, episode=ep),
        host,
        "warning",
        f"{host} is flapping ({v.kind} {','.join(v.networks)})".replace(" )", ")"),
        f"its verdict changed {n} times within the last minute; recoveries are held until "
        f"it has been stable for a while. Last: {v.reason}",
    )


def _is_fence(e: Entry) -> bool:
    return e["kind"] in ("intent", "fenced") and e.get("action", "fence") == "fence"


def pending_intents(state: SegmentState) -> Iterable[Intent]:
    """What the executor should be doing now, in commit order."""
    return sorted(
        (i for i in state.intents.values() if not i.done), key=lambda i: (i.created_index, i.order)
    )
