"""The decision invariants, as one pure pass over a batch of entries (in the spirit of
patroni's `quorum.py` `check_invariants`).

`check_decisions(state, entries)` runs at the end of every `decide`, on what it is about
to return, against the state it decided from; a violation raises InvariantViolation (a
bug: crash rather than fence or evacuate wrongly). The invariants:

  1. every intent is a step's next attempt: its id parses as an `IntentKey`, is not
     committed already, and no attempt at the same step is pending (at most one
     pending attempt per step); an alert is never retried;
  2. nothing touches a host in maintenance, as its host or as its target;
  3. nothing is fenced (intent or self-fence proof) while the brake holds, nor in the
     batch that engages it;
  4. no evacuation from a host not proven fenced in its current failure episode, nor,
     when it failed on every network, before its own self-fence is due (a BMC's "off"
     may be a lie: decide/host.py `self_fence_due`), and only onto a healthy reserved
     host other than itself;
  5. only a failed or degraded host is fenced; only a fenced host that is healthy
     again is re-enabled, and only after a committed reconcile report from its own
     agent for that fence episode (newer than every move of its VMs, clean, and not
     a BMC's lie no operator vouched for: decide/return_.py); nothing is restarted in
     place on a fenced host, nor on one fenced in the same batch; a self-fence proof
     follows a failed BMC fence;
  6. the reserve is never enabled in Nova except as a chosen target: a reserved host is
     released only for a fenced host's evacuation (or a maintenance drain), never by
     the end of a maintenance window (where the reserve is held: `reserve_disable`), and nothing is evacuated onto a reserved host
     that is still disabled; a drain only moves VMs off a host in maintenance (one
     that commits after the window ended is abandoned, as are the drains still
     pending when it ends).

`Audit` checks the same invariants a second time, on the committed log, one entry at a
time against the state it commits onto (the simulator runs it after every step). There,
what the state machine resolves is no violation: a re-proposed id is a no-op, and an
intent that lost a race (to maintenance, or to an un-fence) is recorded as abandoned.
Invariants that only hold against the planner's own view (5, and the target's health)
are checked at planning time only.
"""

from __future__ import annotations

from collections.abc import Sequence

from meshha.config.model import Segment
from meshha.errors import InvariantViolation
from meshha.raft.entries import Entry
from meshha.raft.intent_key import VM_FAILURE_STEPS, IntentKey
from meshha.raft.state import MAINTENANCE_ACTIONS, SegmentState
from meshha.recovery.decide.reserve import held
from meshha.recovery.decide.return_ import may_enable
from meshha.recovery.verdicts import self_fence_due


def check_decisions(state: SegmentState, entries: Sequence[Entry]) -> None:
    """Raise InvariantViolation if `entries`, decided from `state`, break an invariant."""
    problems = decision_problems(state, entries)
    if problems:
        raise InvariantViolation("; ".join(problems))


def decision_problems(
    state: SegmentState, entries: Sequence[Entry], *, committed: bool = False
) -> list[str]:
    """What `entries` break, read against `state` (planning) or, with `committed`, each
    against the state it commits onto (the caller applies them one by one)."""
    problems: list[str] = []
    engaging = any(e["kind"] == "brake" and e["on"] for e in entries)
    fencing = {e["host"] for e in entries if _is_fence(e)}
    seen: set[str] = set()
    for e in entries:
        if e["kind"] == "intent":
            iid = e["intent"]
            if iid in seen:
                problems.append(f"{iid}: proposed twice in one batch")
            seen.add(iid)
            problems += _intent_problems(state, e, committed=committed)
        elif e["kind"] == "fenced":
            problems += _proof_problems(state, e, committed=committed)
        if e["kind"] == "intent" and e["action"] in VM_FAILURE_STEPS and e["host"] in fencing:
            problems.append(f"{_name(e)}: {e['action']} on {e['host']}, fenced in the same batch")
        if engaging and _is_fence(e):
            problems.append(f"{_name(e)}: fence in the batch that engages the brake")
    return problems


def _is_fence(e: Entry) -> bool:
    return bool(e["kind"] == "fenced" or (e["kind"] == "intent" and e["action"] == "fence"))


def _name(e: Entry) -> str:
    return str(e["intent"]) if e["kind"] == "intent" else f"fenced {e['host']}"


def _intent_problems(state: SegmentState, e: Entry, *, committed: bool) -> list[str]:
    iid, action, host, target = e["intent"], e["action"], e["host"], e.get("target")
    out = _attempt_problems(state, iid)
    for h in (host, target):
        if h and state.in_maintenance(h) and not (h == host and action in MAINTENANCE_ACTIONS):
            out.append(f"{iid}: {h} is in maintenance")
    out += _reserve_problems(state, e)
    if action == "fence" and state.brake.on:
        out.append(f"{iid}: fence while the brake holds")
    if action == "evacuate":
        if not state.is_fenced(host):
            out.append(
                f"{iid}: evacuation from {host}, not fenced in episode {state.episode[host]}"
            )
        if not target or target == host:
            out.append(f"{iid}: evacuation onto {target!r}")
    if committed:
        return out
    healthy_reserve = target and (
        state.roles.get(target) == "reserved" and state.verdicts[target].kind == "healthy"
    )
    if action == "evacuate" and target and target != host and not healthy_reserve:
        out.append(f"{iid}: evacuation onto {target}, not a healthy reserved host")
    if action == "evacuate":
        due = self_fence_due(state, host)
        if due is not None and e["ts"] < due:
            out.append(f"{iid}: evacuation before {host}'s own self-fence is due ({due:.3f})")
    if action == "fence" and state.verdicts[host].kind not in ("failed", "degraded"):
        out.append(f"{iid}: fence of {host}, which is {state.verdicts[host].kind}")
    if action == "enable_compute" and (
        host not in state.fenced or state.verdicts[host].kind != "healthy"
    ):
        out.append(f"{iid}: re-enabling {host}, not a fenced host that is healthy again")
    if action == "enable_compute" and not may_enable(state, host):
        out.append(f"{iid}: re-enabling {host} without its committed reconcile report")
    if action in VM_FAILURE_STEPS and host in state.fenced:
        out.append(f"{iid}: {action} on {host}, fenced and not back in service")
    return out


def _reserve_problems(state: SegmentState, e: Entry) -> list[str]:
    iid, action, host, target = e["intent"], e["action"], e["host"], e.get("target")
    out = []
    reserved = state.roles.get(host) == "reserved"
    if action == "reserve_release":
        params = e.get("params") or {}
        source = str(params.get("for", ""))
        ep = params.get("episode")
        chosen = source in state.episode and (
            (state.is_fenced(source) and ep == state.episode[source])
            or state.in_maintenance(source)
        )
        if not reserved or not chosen:
            out.append(f"{iid}: enabling {host}, not a reserved host chosen as a target")
    if action == "maint_release" and reserved and state.reserve_disable:
        out.append(f"{iid}: the end of maintenance would enable reserved {host}")
    if action == "reserve_hold" and not reserved:
        out.append(f"{iid}: holding {host}, which is not reserved")
    if action == "drain":
        if not state.in_maintenance(host):
            out.append(f"{iid}: draining {host}, which is not in maintenance")
        if not target or target == host:
            out.append(f"{iid}: drain onto {target!r}")
    if action in ("evacuate", "drain") and target and _still_held(state, target):
        out.append(f"{iid}: onto {target}, a reserved host still disabled in Nova")
    return out


def _still_held(state: SegmentState, host: str) -> bool:
    return held(state, host)


def _attempt_problems(state: SegmentState, iid: str) -> list[str]:
    if iid in state.intents:
        return [f"{iid}: already committed"]
    key = IntentKey.parse_or_none(iid)
    if key is None or key.attempt is None:
        return [f"{iid}: not an intent key with an attempt"]
    attempts = state.attempts_of(key.base)
    out = []
    if key.attempt != len(attempts) + 1:
        out.append(f"{iid}: attempt {key.attempt} after {len(attempts)}")
    if any(not i.done for i in attempts):
        out.append(f"{iid}: an attempt at {key.base} is still pending")
    if key.step == "alert" and key.attempt != 1:
        out.append(f"{iid}: an alert is sent once")
    return out


def _proof_problems(state: SegmentState, e: Entry, *, committed: bool) -> list[str]:
    host = e["host"]
    out = []
    if state.brake.on:
        out.append(f"fenced {host}: self-fence proof while the brake holds")
    if state.in_maintenance(host):
        out.append(f"fenced {host}: {host} is in maintenance")
    if committed:
        return out
    if state.is_fenced(host):
        out.append(f"fenced {host}: already fenced in episode {state.episode[host]}")
    fence = state.latest(IntentKey("fence", host=host, episode=state.episode[host]))
    if e["method"] == "self_fence_deadline" and (fence is None or fence.status != "failed"):
        out.append(f"fenced {host}: self-fence proof without a failed BMC fence")
    return out


class Audit:
    """The invariants on a committed log: feed it every committed entry, in order."""

    def __init__(self, segment: Segment) -> None:
        self.state = SegmentState(segment)

    def commit(self, entry: Entry) -> list[str]:
        """The entry's violations against the state it commits onto; then apply it."""
        state = self.state
        replayed = entry["kind"] == "intent" and entry["intent"] in state.intents
        problems = [] if replayed else decision_problems(state, [entry], committed=True)
        try:
            state.apply(entry)
        except InvariantViolation as err:
            return [*problems, str(err)]
        if entry["kind"] == "intent" and not replayed:
            i = state.intents.get(entry["intent"])
            if i is not None and i.status == "abandoned" and i.done_ts == entry["ts"]:
                return []  # a race the state machine resolved when it committed
        return problems
