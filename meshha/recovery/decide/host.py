"""Host failures: the fence ─▶ disable ─▶ inventory ─▶ evacuate chain, the self-fence
proof when the BMC cannot fence, per-network `on_loss` for a degraded host, and
re-enabling a host that is back.

The chain, per failure episode of host H:
  fence H (BMC, confirmed off) ─ or, if the BMC cannot do it, the self-fence deadline
  ─▶ force-down + disable nova-compute ─▶ inventory (servers, policy, capacity)
  ─▶ evacuate each HA VM onto reserved capacity, by priority (decide/evacuate.py).
Nothing here fences while the mass-failure brake holds: more than
`brake.max_failed_fraction` of the segment failing inside `brake.window_s` is more likely
our network than their hosts, so the brake holds all fencing, alerts, and lets a human
decide. Suspects count, so it trips before the first of many hosts is fenced (their
losses are detected a few probes apart).
"""

from __future__ import annotations

from collections.abc import Mapping

from meshha.config.model import Segment, self_fence_provable
from meshha.raft import entries as E
from meshha.raft.entries import Entry
from meshha.raft.intent_key import alert, host_step, inventory, vm_move
from meshha.raft.records import Intent, Inventory, Verdict
from meshha.recovery.damping import is_flapping
from meshha.recovery.decide.evacuate import evacuations, evacuations_owed
from meshha.recovery.decide.process import process_recovery
from meshha.recovery.decide.return_ import lied, returning
from meshha.recovery.decide.steps import Context
from meshha.recovery.verdicts import isolated_failure, last_heard, self_fence_due

# -- verdicts and the brake --------------------------------------------------------------


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


def keep_quorum(ctx: Context, computed: Mapping[str, Verdict], out: list[Entry]) -> list[Entry]:
    """Drop from `out` every fence that would leave the segment without a majority of
    its voters, and alert once about each. A voter still heard (degraded on a fencing
    network: storage lost, admin fine) is part of the quorum that commits everything;
    fencing it when too few others are up (the brake released over three of five
    failing, two lost and one degraded) would stop the segment: no evacuation could
    commit, and the rest would isolate themselves and kill their VMs. Lost voters and
    hosts already fenced (or being fenced) count as down."""
    state = ctx.state
    voters = ctx.segment.voters
    majority = len(voters) // 2 + 1
    fencing = {i.host for i in state.intents.values() if i.action == "fence" and not i.done}
    up = {
        h
        for h in voters
        if computed[h].kind not in ("failed", "suspect", "unknown")
        and not state.is_fenced(h)
        and h not in fencing
    }
    kept: list[Entry] = []
    for e in out:
        h = e.get("host", "")
        if not (_is_fence_intent(e) and h in up):
            kept.append(e)
            continue
        if len(up) - 1 >= majority:
            up.discard(h)
            kept.append(e)
            continue
        v = computed[h]
        kept += ctx.once(
            alert("fence-quorum", host=h, episode=state.episode[h]),
            h,
            "critical",
            f"not fencing {h}: the segment would lose its quorum",
            f"{h} is {v.kind} ({v.reason}) but still votes; fencing it would leave "
            f"{len(up) - 1} of {len(voters)} voters up, fewer than a majority ({majority}). "
            "Its VMs are not evacuated: restore its networks, or bring other hosts back.",
        )
    return kept


def _is_fence_intent(e: Entry) -> bool:
    return bool(e["kind"] == "intent" and e["action"] == "fence")


# -- the host chain ----------------------------------------------------------------------


def host_recovery(ctx: Context, host: str) -> list[Entry]:
    state = ctx.state
    v = state.verdicts[host]
    ep = state.episode[host]
    if needs_fence(ctx.segment, v):
        return fence_chain(ctx, host, ep)
    if v.kind == "degraded":
        return degraded(ctx, host, v, ep)
    if v.kind == "healthy" and host in state.fenced:
        # It is heard again: back in service only on its agent's own report (return_.py),
        # and only once the VMs its fence stopped are recovered.
        chain = rebooted(ctx, host)
        return returning(ctx, host) if chain is None else chain
    return process_recovery(ctx, host)


def rebooted(ctx: Context, host: str) -> list[Entry] | None:
    """A fenced host heard again before its chain finished (powered on right after the
    fence, or heard before its own self-fence was due): its VMs stopped with the fence,
    and nothing else would ever recover the HA ones the chain had not moved yet. Once
    its agent's report for the episode shows it really went down (clean, and not a BMC's
    lie: it booted after the fence), the chain goes on: disable, inventory, evacuate.
    A VM the report names as running there (kept: its domain runs and Nova places it
    there) is left where it is. Without such a report nothing moves.

    Returns the chain's steps ([] while it waits, for a target's release say), or None
    when the chain does not apply or has nothing left to do: then, and only then, the
    host may be re-enabled (`returning`). Re-enabled with an evacuation still to come,
    the host would be unfenced under it."""
    state = ctx.state
    fence = state.fenced[host]
    if not state.is_fenced(host):
        return None
    rep = state.reconciled.get(host)
    if rep is None or rep.episode != fence.episode or rep.ts < fence.ts or not rep.ok:
        return None
    if fence.method == "bmc" and (rep.booted_at is None or lied(state, fence, rep)):
        return None
    if ctx.latest(host_step("enable", host, fence.episode)) is not None:
        return None  # the chain ended and the enable is under way: no new moves under it
    keep = frozenset(rep.kept)
    out = fence_chain(ctx, host, fence.episode, keep)
    if out:
        return out
    inv = state.inventory.get(host)
    if inv is None or inv.episode != fence.episode or inv.purpose != "evacuate":
        return None  # no inventory: its pending steps hold the enable (return_.py MOVES)
    return [] if evacuations_owed(ctx, host, fence.episode, inv, keep) else None


def fence_chain(
    ctx: Context, host: str, ep: int, keep: frozenset[str] = frozenset()
) -> list[Entry]:
    state = ctx.state
    if not state.is_fenced(host):
        if state.brake.on:
            return []  # the brake holds every new fence, not only those it counted
        settle = ctx.segment.brake.settle_s
        if settle is None:
            settle = ctx.segment.timings.suspect_after_s
        if ctx.now < state.verdict_since[host] + settle:
            return []  # let hosts failing together show up before the first is fenced
        return fence(ctx, host, ep)
    disable = host_step("disable", host, ep)
    out = ctx.step(
        disable,
        "disable_compute",
        host,
        reason=f"{host} is fenced: force-down and disable its nova-compute service",
    )
    last = ctx.latest(disable)
    if out or last is None or last.status != "ok":
        return out
    # An inventory of its own, taken after the fence: one taken earlier in the episode
    # (to live-migrate off a degraded host) is stale by now.
    reason = f"list the servers of {host} and the reserved capacity"
    out, inv = take_inventory(ctx, host, ep, "evacuate", reason)
    if inv is None:
        return out
    due = self_fence_due(ctx.state, host)
    if due is not None and ctx.now < due:
        return out  # the decider runs again; the inventory is taken meanwhile
    return evacuations(ctx, host, ep, inv, keep)


def fence(ctx: Context, host: str, ep: int) -> list[Entry]:
    """Fence through the BMC; if it cannot, wait for the self-fence deadline, or ask a
    human when that proof is not allowed or does not apply."""
    step = host_step("fence", host, ep)
    v = ctx.state.verdicts[host]
    out = ctx.step(step, "fence", host, reason=f"{v.kind}: {v.reason}")
    if out:
        return out
    last = ctx.latest(step)
    if last is not None and last.status == "pending":
        return fence_stuck(ctx, host, ep, last)
    if last is None or last.status != "failed":
        return []
    # The BMC could not do it. A host that lost the majority kills its own VMs within
    # the self-fence deadline; once that has provably passed, that is a fence too.
    heard = last_heard(ctx.state, host)
    # Only a host lost on every network has isolated itself; one that is merely
    # degraded, or failed for a process, still reaches the majority and runs its VMs.
    if self_fence_provable(ctx.segment, host) and heard is not None and isolated_failure(v):
        return self_fence_proof(ctx, host, ep, last, heard)
    return ctx.once(
        alert("fence-failed", host=host, episode=ep),
        host,
        "critical",
        f"cannot fence {host}: manual action needed",
        f"{last.error_kind}: {last.detail}. Its VMs are not evacuated until it is fenced.",
    )


def self_fence_proof(ctx: Context, host: str, ep: int, last: Intent, heard: float) -> list[Entry]:
    """The host's self-fence deadline has passed since it was last heard: that proves it
    fenced. Until then, alert that evacuation waits for it."""
    t = ctx.segment.timings
    deadline = heard + t.self_fence_deadline_s + t.max_clock_skew_s
    # A fence that cannot complete is always alerted, also when the deadline proof is
    # already due (a hung BMC fails the attempt only after its own long timeout).
    out = ctx.once(
        alert("fence-wait", host=host, episode=ep),
        host,
        "critical",
        f"cannot fence {host} through its BMC",
        f"{last.error_kind}: {last.detail}. No evacuation until the self-fence "
        f"deadline passes at {deadline:.3f}.",
    )
    if ctx.now >= deadline:
        return [
            *out,
            E.fenced(
                ts=ctx.now,
                by=ctx.me,
                host=host,
                method="self_fence_deadline",
                reason=(
                    f"BMC fence failed ({last.error_kind}: {last.detail}); last heard at "
                    f"{heard:.3f}, self-fence deadline {t.self_fence_deadline_s:g}s + skew "
                    f"{t.max_clock_skew_s:g}s passed at {deadline:.3f}"
                ),
                evidence={"last_heard": heard, "deadline": deadline, "fence_intent": last.id},
            ),
        ]
    return out


def fence_stuck(ctx: Context, host: str, ep: int, last: Intent) -> list[Entry]:
    """A fence still running after the self-fence deadline is not completing (a BMC
    that accepted the session and does not answer): alert now, not when it gives up."""
    stuck_s = ctx.now - last.created_ts
    if stuck_s < ctx.segment.timings.self_fence_deadline_s:
        return []
    return ctx.once(
        alert("fence-wait", host=host, episode=ep),
        host,
        "critical",
        f"cannot fence {host} through its BMC",
        f"the fence ({last.id}) has not completed after {stuck_s:.0f}s: the BMC does "
        "not answer. No evacuation until it is fenced.",
    )


def take_inventory(
    ctx: Context, host: str, ep: int, purpose: str, reason: str
) -> tuple[list[Entry], Inventory | None]:
    """The inventory step for `purpose` in episode `ep`, or, once it is taken, the
    inventory it took."""
    out = ctx.step(
        inventory(host, ep, purpose), "inventory", host, reason=reason, params={"purpose": purpose}
    )
    inv = ctx.state.inventory.get(host)
    if out or inv is None or inv.episode != ep or inv.purpose != purpose:
        return out, None
    return out, inv


def degraded(ctx: Context, host: str, v: Verdict, ep: int) -> list[Entry]:
    """A host lost on some networks: each network's `on_loss` says what to do (alert,
    live-migrate its VMs away; fencing is `needs_fence`'s business)."""
    out: list[Entry] = []
    actions = {ctx.segment.network(n).on_loss for n in v.networks}
    nets = ",".join(v.networks)
    # A flapping host's "flapping" alert says it (recovery/damping.py), also in the
    # episode after it, when the flapping has just stopped.
    flapping = is_flapping(ctx.state, host, ctx.now) or any(
        ctx.latest(alert("flapping", host=host, episode=e)) is not None
        for e in (ep, ep - 1)
        if e > 0
    )
    if ("alert" in actions or "live_migrate" in actions) and not flapping:
        out += ctx.once(
            alert("degraded", host=host, episode=ep),
            host,
            "warning",
            f"{host} lost {nets}",
            v.reason,
        )
    if "live_migrate" not in actions:
        return out
    reason = f"{host} lost {nets}: list its servers to live-migrate them"
    listing, inv = take_inventory(ctx, host, ep, "live_migrate", reason)
    out += listing
    if inv is None:
        return out
    for s in inv.servers:
        if s.ha:
            out += ctx.step(
                vm_move("live_migrate", host, ep, s.id),
                "live_migrate",
                host,
                vm=s.id,
                reason=f"{host} lost {nets} (on_loss=live_migrate)",
            )
    return out
