"""Verdicts: the condition of every host, computed from committed observations.

Pure: every replica computes the same verdicts from the same state and `now`. Only the
leader of a Raft majority commits them (so a minority never produces a verdict), and
recovery acts on committed verdicts only.

The rule, per host H, with observers = the segment's voters other than H and
need = a majority of the observers:
- maintenance: the operator said so; nothing else is looked at.
- failed: on EVERY network H has an address on, at least `need` observers have held H
  lost for `fail_after_s` or longer.
- degraded(N, …): the same holds for some networks only (those are N, …), and what the
  log says about H has not changed for `suspect_after_s`: a dead host's networks are
  lost a few probes apart (and may be committed in a burst after a leader change), and
  a host coming back comes back network by network. Neither may look "degraded on
  storage" for that moment (that would fence a host that is coming back, or start a
  live migration off a dead one).
- suspect: someone has lost H somewhere, not (yet) enough for the above.
- healthy: nobody has lost it.
A host whose nova-compute/libvirtd could not be restarted is failed too when the segment's
`recovery.process_restart_failure` is `fence_evacuate`.
Observers that are themselves failed or isolated do not count: what they say is stale.
An observer that a majority has lost on network N is *discredited* on N: a host with a
broken storage NIC loses every peer on storage, and must not make them all suspects
(Lifeguard's lesson: a degraded member's accusations are worth little). And "suspect"
takes two credible accusers (one where only one could exist), so one observer's hiccup
neither alarms the operator nor counts toward the mass-failure brake.
"""

from __future__ import annotations

import math

from meshha.config.model import Segment, majority
from meshha.raft.records import Verdict
from meshha.raft.state import SegmentState


def observers_of(segment: Segment, state: SegmentState, host: str) -> tuple[str, ...]:
    return tuple(
        v
        for v in segment.voters
        if v != host and state.verdicts[v].kind != "failed" and not state.isolated.get(v, False)
    )


def discredited(segment: Segment, state: SegmentState, observer: str, network: str) -> bool:
    """A majority of the other voters have lost `observer` on `network`."""
    others = [v for v in segment.voters if v != observer]
    if not others:
        return False
    accusers = [o for o in state.lost_by(observer, network) if o in others]
    return len(accusers) >= majority(len(others))


def credible_losses(
    segment: Segment, state: SegmentState, host: str, network: str
) -> dict[str, float]:
    counted = set(observers_of(segment, state, host))
    return {
        o: s
        for o, s in state.lost_by(host, network).items()
        if o in counted and not discredited(segment, state, o, network)
    }


def host_verdict(segment: Segment, state: SegmentState, host: str, now: float) -> Verdict:
    if state.in_maintenance(host):
        m = state.maintenance[host]
        return Verdict("maintenance", (), f"operator maintenance: {m.reason}")
    if segment.recovery.process_restart_failure == "fence_evacuate":
        for (h, proc), rec in sorted(state.process_failures.items()):
            if h == host and rec.outcome == "restart_failed":
                return Verdict(
                    "failed",
                    (f"process:{proc}",),
                    f"{proc} could not be restarted ({rec.detail}); "
                    "policy process_restart_failure=fence_evacuate",
                )
    voters_but_host = [v for v in segment.voters if v != host]
    need = majority(len(voters_but_host))
    fail_after = segment.timings.fail_after_s
    nets = segment.host(host).networks
    confirmed: dict[str, list[tuple[str, float]]] = {}
    accusers: set[str] = set()
    for net in nets:
        lost = credible_losses(segment, state, host, net)
        accusers |= set(lost)
        confirmed[net] = sorted((o, s) for o, s in lost.items() if s + fail_after <= now)
    down = tuple(n for n in nets if len(confirmed[n]) >= need)
    evidence = tuple((o, n, s) for n in down for o, s in confirmed[n])
    if (
        down
        and len(down) < len(nets)
        and state.changed_at.get(host, 0.0) + segment.timings.suspect_after_s > now
    ):
        down = ()  # the picture is still moving: suspect until it settles
    if down and len(down) == len(nets):
        who = sorted({o for o, _, _ in evidence})
        return Verdict(
            "failed",
            down,
            f"lost on every network ({', '.join(nets)}) by {len(who)} of "
            f"{len(voters_but_host)} voters ({', '.join(who)}), need {need}",
            evidence,
        )
    if down:
        return Verdict(
            "degraded",
            down,
            f"lost on {', '.join(down)} by at least {need} of {len(voters_but_host)} voters, "
            f"reachable on {', '.join(n for n in nets if n not in down)}",
            evidence,
        )
    if len(accusers) >= min(2, need):
        partial = tuple(
            (o, n, s)
            for n in nets
            for o, s in sorted(credible_losses(segment, state, host, n).items())
        )
        names = ", ".join(sorted(accusers))
        return Verdict(
            "suspect",
            (),
            f"lost by {len(accusers)} peers ({names}), not yet by a majority",
            partial,
        )
    return Verdict("healthy", (), "no peer has lost it")


def compute(segment: Segment, state: SegmentState, now: float) -> dict[str, Verdict]:
    return {h: host_verdict(segment, state, h, now) for h in segment.host_names}


def last_heard(state: SegmentState, host: str) -> float | None:
    """The latest time any observer still had `host`: the newest `since` of its losses.
    A host isolated from the majority started its own self-fence clock no later."""
    sinces = [s for (_, t, _), s in state.lost.items() if t == host]
    return max(sinces) if sinces else None


def isolated_failure(v: Verdict) -> bool:
    """Failed on every network (not for a process): the host lost the majority too, and
    a running agent on it isolates itself and destroys its VMs (agent/node.py)."""
    return v.kind == "failed" and not any(n.startswith("process:") for n in v.networks)


def self_fence_due(state: SegmentState, host: str) -> float | None:
    """When `host`, failed on every network, has destroyed its own VMs if its agent still
    runs: the last time an observer heard it, plus `isolation_after_s`, one probe
    interval (the isolation check's poll) and `max_clock_skew_s`. None when that does
    not apply. Evacuation waits for it even after a BMC confirmed "off": the
    confirmation is the BMC's word, and a BMC that lies (the host runs on) would
    otherwise have its VMs run in two places until the host is heard again (the lab's
    nemesis, seed 268). It cost the lab's lan-safe runs about 1.5 s before the first
    evacuation (detection and the fence take nearly as long)."""
    if not isolated_failure(state.verdicts[host]):
        return None
    heard = last_heard(state, host)
    if heard is None:
        # Failed, yet no observer holds a loss of it: every one has just heard it again
        # and its verdict follows in the next batch. Not due: a host heard again may be
        # one whose BMC lied, with its VMs running (decide/host.py `rebooted` takes
        # over once it is healthy and has reported).
        return math.inf
    t = state.timings
    return heard + t.isolation_after_s + t.probe_interval_s + t.max_clock_skew_s
