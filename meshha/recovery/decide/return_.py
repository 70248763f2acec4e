"""A fenced host that comes back: safe before it is in service again, and never a lie
believed.

A fenced host (BMC "off", or its self-fence deadline) that is heard again is not back in
service because its peers hear it: only its own agent's `reconcile` report, committed,
is evidence. The agent (meshha/agent/reconcile.py) reports once it has destroyed every
domain whose Nova instance now lives on another host, with the time its host booted.
Then, per fence episode of host H:

  report missing ──▶ wait (an alert once it is overdue: H is up, not reconciled)
  report newer than every move of H's VMs in the episode, ok, H rebooted after
  the fence (or the proof was its self-fence deadline)
      ──▶ enable nova-compute (retried with backoff; an alert once it keeps failing)
  H booted before the BMC said "off", or was up after it (its agent's mark of when it
  was last up: agent/alive.py) ──▶ the BMC lied: a critical alert naming H and
      its BMC, H stays disabled, its power state is read again. Only an operator puts
      it back (maintenance on, then off: they vouch for it). The window holds and
      drains H like any other (decide/maintenance.py); once it ends, H returns through
      this same enable, whose reason names the lie and the window, and the window's
      own `maint_release` is not sent as well (nothing left to undo).

`return_report` is the rule both the decider and `check_decisions` use.
"""

from __future__ import annotations

from meshha.raft.entries import Entry
from meshha.raft.intent_key import alert, host_step
from meshha.raft.records import Fence, Intent, Reconcile
from meshha.raft.state import SegmentState
from meshha.recovery.decide.steps import Context

# What moves a host's VMs away in a failure episode: a report must be newer than all.
# A maintenance window's own steps are not among them (`episode_moves`): its listing
# moves nothing, and its drain is a live migration, which leaves no domain behind.
MOVES = ("disable_compute", "inventory", "evacuate", "live_migrate")
# How long a host may be heard again without its agent reporting, before an alert.
REPORT_OVERDUE_S = 60.0


def episode_moves(state: SegmentState, host: str, episode: int) -> list[Intent]:
    """The intents of `host`'s failure episode that move (or list to move) its VMs away:
    a reconcile report must be newer than every one. Not a maintenance window's listing
    (an operator may hold a fenced host in maintenance to vouch for it: see `_lie`)."""
    return [
        i
        for i in state.intents_for(host, episode)
        if i.action in MOVES and i.params.get("purpose") != "drain"
    ]


def return_report(state: SegmentState, host: str) -> Reconcile | None:
    """The host's reconcile report that answers its current fence, or None: it must be
    for the fence's episode, newer than the fence and than every move of its VMs in
    that episode, with none still pending."""
    fence = state.fenced.get(host)
    rep = state.reconciled.get(host)
    if fence is None or rep is None or rep.episode != fence.episode or rep.ts < fence.ts:
        return None
    moves = episode_moves(state, host, fence.episode)
    if any(not i.done for i in moves):
        return None
    if any((i.done_ts or 0.0) > rep.ts for i in moves):
        return None
    return rep


def lied(state: SegmentState, fence: Fence, rep: Reconcile) -> bool:
    """The BMC confirmed "off", yet (beyond the clock skew bound) the host booted before
    that, so it never went down, or it was still up after it (`alive_until`, its agent's
    mark of when it was last up before this boot: agent/alive.py), so something else
    took it down later, such as its own watchdog once it was cut off."""
    if fence.method != "bmc":
        return False
    skew = state.timings.max_clock_skew_s
    if rep.booted_at is not None and rep.booted_at + skew < fence.ts:
        return True
    return rep.alive_until is not None and rep.alive_until - skew > fence.ts


def may_enable(state: SegmentState, host: str) -> bool:
    """The invariant: enable_compute only after a committed, clean reconcile report for
    the episode, and never on a BMC's lie an operator has not vouched for."""
    fence = state.fenced.get(host)
    rep = return_report(state, host)
    if fence is None or rep is None or not rep.ok:
        return False
    return not lied(state, fence, rep) or (host, fence.episode) in state.vouched


def returning(ctx: Context, host: str) -> list[Entry]:
    """A fenced host whose verdict is healthy again."""
    state = ctx.state
    fence = state.fenced[host]
    ep = fence.episode
    rep = return_report(state, host)
    if rep is None or (not rep.ok and not lied(state, fence, rep)):
        # Missing or failed (the agent retries with backoff; it says why in the report).
        if ctx.now < state.verdict_since[host] + REPORT_OVERDUE_S:
            return []
        why = "its agent has not reported" if rep is None else f"its agent reports: {rep.detail}"
        return ctx.once(
            alert("unreconciled", host=host, episode=ep),
            host,
            "warning",
            f"{host} is back but has not reconciled: it stays disabled in Nova",
            f"{host} has been heard again since {state.verdict_since[host]:.3f} after a fence "
            f"({fence.method}: {fence.detail}), but {why}. Nothing shows yet that it holds "
            "no evacuated VM. Check its meshha agent.",
        )
    if lied(state, fence, rep) and (host, ep) not in state.vouched:
        return _lie(ctx, host, ep, fence, rep)
    if not rep.ok:
        return []  # vouched for, but its last reconcile failed: the agent retries
    enable = host_step("enable", host, ep)
    reason = (
        f"{host} is back after a fence and reconciled "
        f"(destroyed {len(rep.destroyed)}, kept {len(rep.kept)})"
    )
    if lied(state, fence, rep):
        reason += (
            f"; its BMC said off but it kept running, and an operator vouched for it "
            f"({_vouch(state, host)})"
        )
    out = ctx.step(enable, "enable_compute", host, reason=reason)
    last = ctx.latest(enable)
    n = ctx.attempts(enable)
    if not out and last is not None and last.status != "ok" and ctx.final(last, n):
        out += ctx.once(
            alert("enable-failed", host=host, episode=ep),
            host,
            "critical",
            f"cannot re-enable nova-compute on {host}",
            f"{n} attempts failed; last: {last.error_kind}: {last.detail}. "
            f"{host} is reconciled but stays out of service.",
        )
    return out


def _vouch(state: SegmentState, host: str) -> str:
    """The maintenance window that vouched for `host`, as the ledger should name it."""
    w = state.maintenance.get(host) or state.maintenance_ended.get(host)
    if w is None:
        return "maintenance window"
    who = f" by {w.operator}" if w.operator else ""
    return f"maintenance window from {w.since:.3f}{who}: {w.reason}"


def _lie(ctx: Context, host: str, ep: int, fence: Fence, rep: Reconcile) -> list[Entry]:
    h = ctx.segment.host(host)
    bmc = f"{h.bmc.address}:{h.bmc.port}" if h.bmc is not None else "no BMC configured"
    booted = "unknown" if rep.booted_at is None else f"{rep.booted_at:.3f}"
    up = "" if rep.alive_until is None else f", was up until {rep.alive_until:.3f},"
    out = ctx.once(
        alert("bmc-lied", host=host, episode=ep),
        host,
        "critical",
        f"BMC of {host} ({bmc}) reported power off, but {host} kept running",
        f"The fence at {fence.ts:.3f} was confirmed by the BMC ({fence.detail}), yet {host} "
        f"booted at {booted}{up} and its agent reports again. Its VMs were evacuated on that "
        f"proof; its agent destroyed {len(rep.destroyed)} domain(s) Nova places elsewhere "
        f"({', '.join(rep.destroyed) or 'none'}). {host} stays disabled in Nova: check it "
        "and its BMC, then `meshctl maintenance on` and `off` to return it to service.",
    )
    # "Stays disabled" holds only if it was disabled: a host heard again before its
    # fence chain reached the disable (the lab's nemesis, seed 268) is disabled now.
    out += ctx.step(
        host_step("disable", host, ep),
        "disable_compute",
        host,
        reason=f"the BMC of {host} lied: force-down and disable its nova-compute service "
        "until an operator vouches for it",
    )
    out += ctx.step(
        host_step("power_check", host, ep),
        "power_check",
        host,
        reason=f"the BMC of {host} ({bmc}) said off, but {host} is heard: read its power again",
    )
    return out
