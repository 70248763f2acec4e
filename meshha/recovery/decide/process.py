"""Process failures: nova-compute or libvirtd that the host's agent could not restart.

With `recovery.process_restart_failure = disable` the host's nova-compute service is
disabled (no new VMs land there; the running ones are left alone) and an operator is
alerted. With `fence_evacuate` the verdict itself says failed (recovery/verdicts.py) and
the host chain takes over. The same process failing on more hosts at once than the
brake allows is a common cause (a bad package, a dead message bus), not a host problem:
nothing is disabled, one alert goes out.
"""

from __future__ import annotations

from meshha.raft.entries import Entry
from meshha.raft.intent_key import alert, ms, process_disable
from meshha.raft.state import SegmentState
from meshha.recovery.decide.steps import Context


def process_failed(state: SegmentState, host: str) -> tuple[str, float] | None:
    """(process, since) of the first process `host` could not restart, if any."""
    for (h, proc), rec in sorted(state.process_failures.items()):
        if h == host and rec.outcome == "restart_failed":
            return proc, rec.began
    return None


def process_recovery(ctx: Context, host: str) -> list[Entry]:
    segment, state = ctx.segment, ctx.state
    pf = process_failed(state, host)
    if pf is None or segment.recovery.process_restart_failure != "disable":
        return []
    proc, ts = pf
    failing = sorted(h for h in segment.host_names if process_failed(state, h) is not None)
    limit = segment.brake.max_failed_fraction * len(segment.hosts)
    if len(failing) > limit:
        if host != failing[0]:
            return []  # one alert for them all, raised on behalf of the first
        return _process_brake(ctx, failing)
    out = ctx.step(
        process_disable(host, proc, ts),
        "disable_compute",
        host,
        params={"force_down": False},
        reason=f"{proc} could not be restarted: no new VMs on {host}",
    )
    out += ctx.once(
        alert("process", host=host, process=proc, failure_ms=ms(ts)),
        host,
        "critical",
        f"{proc} on {host} could not be restarted",
        f"nova-compute service on {host} disabled; {state.process_failures[(host, proc)].detail}",
    )
    return out


def _process_brake(ctx: Context, failing: list[str]) -> list[Entry]:
    """The brake's rule, applied to processes: disabling them all would leave nowhere to
    evacuate to."""
    segment, state = ctx.segment, ctx.state
    latest = max(ms(rec.began) for (h, _), rec in state.process_failures.items() if h in failing)
    return ctx.once(
        alert("process-brake", count=len(failing), failure_ms=latest),
        None,
        "critical",
        f"processes failing on {len(failing)} of {len(segment.hosts)} hosts at once: "
        "nothing disabled",
        f"{', '.join(failing)}; limit {segment.brake.max_failed_fraction:.0%} (brake)",
    )
