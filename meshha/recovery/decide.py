"""Recovery decisions: from committed state to the entries the leader proposes.

Pure: `decide(segment, state, now, me)` returns entries (verdict changes, intents, fence
proofs, brake changes) and does nothing itself. The leader proposes them; once committed,
the executor carries out the intents and commits their results; the next call of
`decide` sees those results and takes the next step. So every step is logged before it
is acted on, and a new leader resumes from the state alone: intent ids are keys
(action, host, failure episode, VM, attempt) and re-proposing one is a no-op.

The host-failure chain, per failure episode of host H:
  fence H (BMC, confirmed off) ─ or, if the BMC cannot do it, the self-fence deadline
  ─▶ force-down + disable nova-compute ─▶ inventory (servers, policy, capacity)
  ─▶ evacuate each HA VM onto reserved capacity, by priority ─▶ replace used reserve.
Safety checks here (planning) and again in SegmentState.apply (commit):
  never evacuate from a host that is not fenced; nothing touches a host in maintenance;
  nothing is fenced while the mass-failure brake holds.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from meshha.config.model import Segment
from meshha.errors import InvariantViolation
from meshha.raft import entries as E
from meshha.raft.entries import Entry
from meshha.raft.state import Intent, SegmentState, Verdict
from meshha.recovery import placement
from meshha.recovery.verdicts import compute, last_heard

FENCE_KINDS = ("failed",)


def decide(segment: Segment, state: SegmentState, now: float, me: str) -> list[Entry]:
    out: list[Entry] = []
    computed = compute(segment, state, now)
    for host, v in computed.items():
        if not v.same_as(state.verdicts[host]):
            out.append(_verdict_entry(now, me, host, v))
    brake = _brake(segment, state, computed, now, me)
    out += brake
    engaging = any(e["kind"] == "brake" and e["on"] for e in brake)
    for host in segment.host_names:
        if state.in_maintenance(host):
            continue
        steps = _host_recovery(segment, state, host, now, me)
        if engaging:  # the brake being proposed holds every fence in the same batch
            steps = [
                e
                for e in steps
                if not (e["kind"] in ("intent", "fenced") and e.get("action", "fence") == "fence")
            ]
        out += steps
    out += _vm_recovery(segment, state, now, me)
    return out


# -- verdicts and the brake ------------------------------------------------------------


def _verdict_entry(now: float, me: str, host: str, v: Verdict) -> Entry:
    return E.verdict(
        ts=now,
        by=me,
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


def _brake(
    segment: Segment, state: SegmentState, computed: dict[str, Verdict], now: float, me: str
) -> list[Entry]:
    """More than `max_failed_fraction` of the segment failing inside `window_s` is more
    likely our network than their hosts: hold all fencing, alert, let a human decide.

    Suspects count, so the brake trips before the first of many hosts is fenced (their
    losses are detected a few probes apart). Once on, it holds while more than the limit
    are still failing; it releases itself when enough are back and none of the braked
    hosts is still half-way (suspect), so a host coming back is not fenced (the ones
    that stay failed are then fenced as usual), and `meshctl brake release` releases it by hand (hosts failing
    since before the release do not count toward tripping it again)."""
    b = segment.brake
    limit = b.max_failed_fraction * len(segment.hosts)
    now_failing = sorted(
        h for h, v in computed.items() if failing(segment, v) and not state.in_maintenance(h)
    )
    if state.brake["on"]:
        still = [h for h in now_failing if not state.is_fenced(h)]
        moving = [h for h in state.brake["hosts"] if computed[h].kind == "suspect"]
        if len(still) <= limit and not moving:
            return [
                E.brake(
                    ts=now,
                    by=me,
                    on=False,
                    hosts=[],
                    reason=f"{len(still)} hosts failing now, within the limit of {limit:g}",
                )
            ]
        return []
    floor = max(now - b.window_s, state.brake["since"])
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
        E.brake(ts=now, by=me, on=True, hosts=recent, reason=reason),
        _alert(
            now,
            me,
            f"alert:brake:{state.brake_count + 1}:a1",
            None,
            "critical",
            "mass-failure brake engaged",
            reason,
        ),
    ]


# -- host failures ---------------------------------------------------------------------


def _host_recovery(
    segment: Segment, state: SegmentState, host: str, now: float, me: str
) -> list[Entry]:
    v = state.verdicts[host]
    ep = state.episode[host]
    if needs_fence(segment, v):
        return _fence_chain(segment, state, host, ep, now, me)
    if v.kind == "degraded":
        return _degraded(segment, state, host, v, ep, now, me)
    if v.kind == "healthy" and state.fenced.get(host) is not None:
        # It is back (powered on by someone, agent rejoined): re-enable nova-compute.
        return _step(
            segment,
            state,
            f"enable:{host}:e{state.fenced[host]['episode']}",
            now,
            me,
            "enable_compute",
            host,
            reason="host is back and healthy after a fence",
        )
    out: list[Entry] = []
    pf = _process_failed(state, host)
    if pf is not None and segment.recovery.process_restart_failure == "disable":
        proc, ts = pf
        failing = sorted(h for h in segment.host_names if _process_failed(state, h) is not None)
        limit = segment.brake.max_failed_fraction * len(segment.hosts)
        if len(failing) > limit:
            if host != failing[0]:
                return []  # one alert for them all, raised on behalf of the first
            # The same process failing on most hosts at once is a common cause (a bad
            # package, a dead message bus), not a host problem: disabling them all would
            # leave nowhere to evacuate to. The brake's rule, applied to processes.
            return _once(
                state,
                f"alert:process-brake:{len(failing)}:"
                f"{max(int(state.process_failures[(h, p)]['ts'] * 1000) for (h, p) in state.process_failures if h in failing)}",
                now,
                me,
                None,
                "critical",
                f"processes failing on {len(failing)} of {len(segment.hosts)} hosts at once: nothing disabled",
                f"{', '.join(failing)}; limit {segment.brake.max_failed_fraction:.0%} (brake)",
            )
        out += _step(
            segment,
            state,
            f"disable:{host}:{proc}:{int(ts * 1000)}",
            now,
            me,
            "disable_compute",
            host,
            params={"force_down": False},
            reason=f"{proc} could not be restarted: no new VMs on {host}",
        )
        out += _once(
            state,
            f"alert:process:{host}:{proc}:{int(ts * 1000)}",
            now,
            me,
            host,
            "critical",
            f"{proc} on {host} could not be restarted",
            f"nova-compute service on {host} disabled; {state.process_failures[(host, proc)]['detail']}",
        )
    return out


def _process_failed(state: SegmentState, host: str) -> tuple[str, float] | None:
    for (h, proc), rec in sorted(state.process_failures.items()):
        if h == host and rec["outcome"] == "restart_failed":
            return proc, rec["ts"]
    return None


def _fence_chain(
    segment: Segment, state: SegmentState, host: str, ep: int, now: float, me: str
) -> list[Entry]:
    if not state.is_fenced(host):
        if state.brake["on"]:
            return []  # the brake holds every new fence, not only those it counted
        settle = segment.brake.settle_s
        if settle is None:
            settle = segment.timings.suspect_after_s
        if now < state.verdict_since[host] + settle:
            return []  # let hosts failing together show up before the first is fenced
        return _fence(segment, state, host, ep, now, me)
    out = _step(
        segment,
        state,
        f"disable:{host}:e{ep}",
        now,
        me,
        "disable_compute",
        host,
        reason=f"{host} is fenced: force-down and disable its nova-compute service",
    )
    if out or _latest(state, f"disable:{host}:e{ep}").status != "ok":
        return out
    # An inventory of its own, taken after the fence: one taken earlier in the episode
    # (to live-migrate off a degraded host) is stale by now.
    out = _step(
        segment,
        state,
        f"inventory:{host}:e{ep}:evacuate",
        now,
        me,
        "inventory",
        host,
        reason=f"list the servers of {host} and the reserved capacity",
        params={"purpose": "evacuate"},
    )
    inv = state.inventory.get(host)
    if out or inv is None or inv["episode"] != ep or inv.get("purpose") != "evacuate":
        return out
    return _evacuations(segment, state, host, ep, inv, now, me)


def _fence(
    segment: Segment, state: SegmentState, host: str, ep: int, now: float, me: str
) -> list[Entry]:
    base = f"fence:{host}:e{ep}"
    v = state.verdicts[host]
    out = _step(segment, state, base, now, me, "fence", host, reason=f"{v.kind}: {v.reason}")
    if out:
        return out
    last = _latest(state, base)
    if last is None or last.status != "failed":
        return []
    # The BMC could not do it. A host that lost the majority kills its own VMs within
    # the self-fence deadline; once that has provably passed, that is a fence too.
    heard = last_heard(state, host)
    t = segment.timings
    # Only a host lost on every network has isolated itself; one that is merely
    # degraded, or failed for a process, still reaches the majority and runs its VMs.
    isolated = v.kind == "failed" and not any(n.startswith("process:") for n in v.networks)
    if segment.recovery.allow_self_fence_proof and heard is not None and isolated:
        deadline = heard + t.self_fence_deadline_s + t.max_clock_skew_s
        if now >= deadline:
            return [
                E.fenced(
                    ts=now,
                    by=me,
                    host=host,
                    method="self_fence_deadline",
                    reason=(
                        f"BMC fence failed ({last.error_kind}: {last.detail}); last heard at "
                        f"{heard:.3f}, self-fence deadline {t.self_fence_deadline_s:g}s + skew "
                        f"{t.max_clock_skew_s:g}s passed at {deadline:.3f}"
                    ),
                    evidence={"last_heard": heard, "deadline": deadline, "fence_intent": last.id},
                )
            ]
        return _once(
            state,
            f"alert:fence-wait:{host}:e{ep}",
            now,
            me,
            host,
            "critical",
            f"cannot fence {host} through its BMC",
            f"{last.error_kind}: {last.detail}. No evacuation until the self-fence "
            f"deadline passes at {deadline:.3f}.",
        )
    return _once(
        state,
        f"alert:fence-failed:{host}:e{ep}",
        now,
        me,
        host,
        "critical",
        f"cannot fence {host}: manual action needed",
        f"{last.error_kind}: {last.detail}. Its VMs are not evacuated until it is fenced.",
    )


def _evacuations(
    segment: Segment,
    state: SegmentState,
    host: str,
    ep: int,
    inv: dict[str, Any],
    now: float,
    me: str,
) -> list[Entry]:
    if not state.is_fenced(host):  # planning-time check of invariant 1
        raise InvariantViolation(f"planning evacuations from unfenced {host}")
    out: list[Entry] = []
    todo: list[placement.VmDemand] = []
    attempts: dict[str, int] = {}
    for s in inv.get("servers", []):
        if not s.get("ha", True):
            continue
        base = f"evacuate:{host}:e{ep}:{s['id']}"
        latest = _latest(state, base)
        n = _attempts(state, base)
        if latest is not None and latest.status in ("pending", "ok"):
            continue
        if latest is not None and not _retry_due(segment, latest, n, now):
            continue
        attempts[s["id"]] = n + 1
        todo.append(
            placement.VmDemand(
                s["id"], s["vcpus"], s["ram_mb"], s["disk_gb"], s.get("priority", "medium")
            )
        )
    if not todo:
        return _after_evacuations(segment, state, host, ep, inv, now, me)
    plan = placement.plan(todo, _free_targets(segment, state, host, inv))
    for order, p in enumerate(plan.placements):
        out.append(
            E.intent(
                ts=now,
                by=me,
                intent_id=f"evacuate:{host}:e{ep}:{p.vm}:a{attempts[p.vm]}",
                action="evacuate",
                host=host,
                vm=p.vm,
                target=p.target,
                order=order,
                reason=f"{host} fenced ({state.fenced[host]['method']}); {p.priority} priority VM to reserved {p.target}",
            )
        )
    if plan.unplaced:
        body = "; ".join(f"{u.vm} ({u.priority}): {u.reason}" for u in plan.unplaced)
        out += _once(
            state,
            f"alert:unplaced:{host}:e{ep}",
            now,
            me,
            host,
            "critical",
            f"{len(plan.unplaced)} VMs of {host} do not fit the reserved capacity",
            body,
        )
    return out


def _free_targets(
    segment: Segment, state: SegmentState, host: str, inv: dict[str, Any]
) -> list[placement.Target]:
    """Reserved hosts that may take VMs now, with what inventory said is free minus what
    evacuations committed since (or still running) are taking."""
    demand = {s["id"]: s for x in state.inventory.values() for s in x.get("servers", [])}
    targets = []
    for t in inv.get("facts", []):
        name = t["host"]
        if (
            name == host
            or state.roles.get(name) != "reserved"
            or state.in_maintenance(name)
            or state.verdicts[name].kind != "healthy"
            or state.is_fenced(name)
            or _process_failed(state, name) is not None  # its nova-compute is not running
        ):
            continue
        used_v = used_r = used_d = 0
        for i in state.intents.values():
            if (
                i.action == "evacuate"
                and i.target == name
                and i.vm in demand
                and (
                    i.status == "pending"
                    or (i.status == "ok" and (i.done_ts or 0) >= inv.get("ts", 0))
                )
            ):
                d = demand[i.vm]
                used_v, used_r, used_d = (
                    used_v + d["vcpus"],
                    used_r + d["ram_mb"],
                    used_d + d["disk_gb"],
                )
        targets.append(
            placement.Target(
                name,
                t["vcpus_free"] - used_v,
                t["ram_mb_free"] - used_r,
                t["disk_gb_free"] - used_d,
            )
        )
    return targets


def _after_evacuations(
    segment: Segment,
    state: SegmentState,
    host: str,
    ep: int,
    inv: dict[str, Any],
    now: float,
    me: str,
) -> list[Entry]:
    evac = [i for i in state.intents_for(host, ep) if i.action == "evacuate"]
    if any(not i.done for i in evac):
        return []
    for vm in sorted({i.vm for i in evac if i.vm} - {i.vm for i in evac if i.status == "ok"}):
        base = f"evacuate:{host}:e{ep}:{vm}"
        last, n = _latest(state, base), _attempts(state, base)
        if (last is not None and _retry_due(segment, last, n, now)) or not _final(segment, last, n):
            return []  # a retry is still to come: the report waits for it
    ok = sorted({i.vm for i in evac if i.status == "ok"})
    failed = sorted({i.vm for i in evac if i.status != "ok"} - set(ok))
    non_ha = [s["id"] for s in inv.get("servers", []) if not s.get("ha", True)]
    out = _once(
        state,
        f"alert:recovered:{host}:e{ep}",
        now,
        me,
        host,
        "warning" if not failed else "critical",
        f"{host} failed and was recovered" if not failed else f"{host} failed: recovery incomplete",
        f"fenced by {state.fenced[host]['method']}; evacuated {len(ok)} VMs; "
        f"failed {len(failed)} {failed}; not HA, left alone: {len(non_ha)}",
    )
    out += _replace_reserve(
        segment, state, {i.target for i in evac if i.status == "ok" and i.target}, inv, now, me
    )
    return out


def _replace_reserve(
    segment: Segment, state: SegmentState, used: set[str], inv: dict[str, Any], now: float, me: str
) -> list[Entry]:
    if not used:
        return []
    wanted = sum(1 for h in segment.hosts if h.role == "reserved")
    reserve_after = [
        placement.Target(t["host"], t["vcpus_free"], t["ram_mb_free"], t["disk_gb_free"])
        for t in inv.get("facts", [])
        if state.roles.get(t["host"]) == "reserved"
        and t["host"] not in used
        and not state.in_maintenance(t["host"])
        and state.verdicts[t["host"]].kind == "healthy"
    ]
    candidates = []
    for f in inv.get("facts", []):
        name = f["host"]
        if name in used or state.roles.get(name) != "compute":
            continue
        ok = (
            state.roles.get(name) == "compute"
            and not state.in_maintenance(name)
            and state.verdicts[name].kind == "healthy"
            and not state.is_fenced(name)
        )
        candidates.append(
            placement.Candidate(
                name,
                placement.Target(name, f["vcpus_free"], f["ram_mb_free"], f["disk_gb_free"]),
                f.get("running_vms", 0),
                ok and f.get("running_vms", 0) == 0,
                "" if ok else "not a healthy compute host",
            )
        )
    out: list[Entry] = []
    for name in placement.replacement(reserve_after, wanted, candidates):
        out.append(
            E.reserve(
                ts=now,
                by=me,
                host=name,
                role="reserved",
                reason=f"replaces used reserved capacity on {', '.join(sorted(used))}",
            )
        )
    for name in sorted(used):
        if state.roles.get(name) == "reserved" and out:
            out.append(
                E.reserve(
                    ts=now,
                    by=me,
                    host=name,
                    role="compute",
                    reason="reserved host took evacuated VMs and is now a compute host",
                )
            )
    return out


def _degraded(
    segment: Segment, state: SegmentState, host: str, v: Verdict, ep: int, now: float, me: str
) -> list[Entry]:
    out: list[Entry] = []
    actions = {segment.network(n).on_loss for n in v.networks}
    nets = ",".join(v.networks)
    if "alert" in actions or "live_migrate" in actions:
        out += _once(
            state,
            f"alert:degraded:{host}:e{ep}",
            now,
            me,
            host,
            "warning",
            f"{host} lost {nets}",
            v.reason,
        )
    if "live_migrate" in actions:
        listing = _step(
            segment,
            state,
            f"inventory:{host}:e{ep}:live_migrate",
            now,
            me,
            "inventory",
            host,
            reason=f"{host} lost {nets}: list its servers to live-migrate them",
            params={"purpose": "live_migrate"},
        )
        out += listing
        inv = state.inventory.get(host)
        if (
            not listing
            and inv is not None
            and inv["episode"] == ep
            and inv.get("purpose") == "live_migrate"
        ):
            for s in inv.get("servers", []):
                if s.get("ha", True):
                    out += _step(
                        segment,
                        state,
                        f"live_migrate:{host}:e{ep}:{s['id']}",
                        now,
                        me,
                        "live_migrate",
                        host,
                        vm=s["id"],
                        reason=f"{host} lost {nets} (on_loss=live_migrate)",
                    )
    return out


# -- VM failures -----------------------------------------------------------------------


def _vm_recovery(segment: Segment, state: SegmentState, now: float, me: str) -> list[Entry]:
    out: list[Entry] = []
    pol = segment.policy
    for vm, times in sorted(state.vm_failures.items()):
        last = times[-1]
        info = state.vm_last_failure.get(vm, {})
        host = info.get("host")
        if host is None or state.in_maintenance(host) or state.verdicts[host].kind in ("failed",):
            continue
        action = info.get("on_vm_failure") or pol.default_on_vm_failure
        if not info.get("ha", pol.default_ha) or action == "ignore":
            continue
        key = f"{vm}:{int(last * 1000)}"
        recent = [t for t in times if t > last - pol.vm_restart_window_s]
        if action == "restart" and len(recent) >= pol.vm_restart_limit:
            action = "restart_elsewhere"
        first = _latest(state, f"restart_vm:{key}")
        if action == "restart" and first is not None and first.status == "failed":
            action = "restart_elsewhere"  # the same host could not: elsewhere, not again here
        ev = info.get("event")
        steps = {
            "restart": (
                "restart_vm",
                f"{ev}: restart on {host} ({len(recent)} failures in window)",
            ),
            "hard_reboot": ("hard_reboot", f"{ev}: hard reboot"),
            "restart_elsewhere": (
                "migrate_vm",
                f"{ev}: {len(recent)} failures in {pol.vm_restart_window_s:g}s "
                "or restart failed: restart elsewhere",
            ),
        }
        if action in steps:
            kind, reason = steps[action]
            out += _step(segment, state, f"{kind}:{key}", now, me, kind, host, vm=vm, reason=reason)
        if action == "alert":
            out += _once(
                state,
                f"alert:vm:{key}",
                now,
                me,
                host,
                "warning",
                f"VM {vm} on {host}: {info.get('event')}",
                info.get("detail", ""),
            )
    return out


# -- intent bookkeeping ----------------------------------------------------------------


def _attempt_ids(state: SegmentState, base: str) -> list[Intent]:
    return sorted(
        (i for i in state.intents.values() if i.id == base or i.id.startswith(base + ":a")),
        key=lambda i: i.created_index,
    )


def _latest(state: SegmentState, base: str) -> Intent | None:
    ids = _attempt_ids(state, base)
    return ids[-1] if ids else None


def _attempts(state: SegmentState, base: str) -> int:
    return len(_attempt_ids(state, base))


def _retry_due(segment: Segment, last: Intent, n: int, now: float) -> bool:
    """A failed attempt is retried with exponential backoff, up to intent_max_attempts.
    An abandoned one (the brake, maintenance or a race stopped it) is proposed again as
    soon as `decide` reaches it again, i.e. once the circumstances allow: bounded too."""
    r = segment.recovery
    if last.status == "abandoned":
        return n < 2 * r.intent_max_attempts
    if last.status != "failed" or n >= r.intent_max_attempts:
        return False
    return now >= (last.done_ts or 0.0) + r.intent_retry_backoff_s * 2 ** (n - 1)


def _final(segment: Segment, last: Intent | None, n: int) -> bool:
    """No further attempt will ever be proposed for this step."""
    if last is None or last.status == "pending":
        return False
    if last.status == "ok":
        return True
    limit = segment.recovery.intent_max_attempts * (2 if last.status == "abandoned" else 1)
    return n >= limit


def _step(
    segment: Segment,
    state: SegmentState,
    base: str,
    now: float,
    me: str,
    action: str,
    host: str,
    *,
    reason: str,
    vm: str | None = None,
    target: str | None = None,
    params: dict[str, Any] | None = None,
) -> list[Entry]:
    """Propose attempt 1 of `base`, or the next attempt once a failed one is due for a
    retry (bounded count, exponential backoff). Nothing while one is pending."""
    last = _latest(state, base)
    n = _attempts(state, base)
    if last is not None and (
        last.status in ("pending", "ok") or not _retry_due(segment, last, n, now)
    ):
        return []
    return [
        E.intent(
            ts=now,
            by=me,
            intent_id=f"{base}:a{n + 1}",
            action=action,
            host=host,
            vm=vm,
            target=target,
            reason=reason if n == 0 else f"{reason} (attempt {n + 1})",
            params=params,
        )
    ]


def _alert(
    now: float, me: str, intent_id: str, host: str | None, severity: str, subject: str, body: str
) -> Entry:
    return E.intent(
        ts=now,
        by=me,
        intent_id=intent_id,
        action="alert",
        host=host or "",
        reason=subject,
        params={"severity": severity, "subject": subject, "body": body},
    )


def _once(
    state: SegmentState,
    intent_id: str,
    now: float,
    me: str,
    host: str | None,
    severity: str,
    subject: str,
    body: str,
) -> list[Entry]:
    if _latest(state, intent_id) is not None:
        return []
    return [_alert(now, me, intent_id + ":a1", host, severity, subject, body)]


def pending_intents(state: SegmentState) -> Iterable[Intent]:
    """What the executor should be doing now, in commit order."""
    return sorted(
        (i for i in state.intents.values() if not i.done), key=lambda i: (i.created_index, i.order)
    )
