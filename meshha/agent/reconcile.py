"""A fenced host's agent, on its return: no evacuated VM runs here, and it says so.

Nova's own nova-compute does part of this when it starts (`ComputeManager.
_destroy_evacuated_instances`, nova/compute/manager.py): it destroys the local guests of
instances with an *evacuation* migration record from this host in status accepted,
pre-migrating or done. It does nothing when nova-compute was never restarted (a host
that hung, or whose BMC lied, comes back with the same process), nor for an instance
moved another way (meshha's restart elsewhere is a cold migration; an evacuation whose
record went to `error` and was retried; one still rebuilding), nor before nova-compute
starts. So the agent does the rest, whatever nova-compute did or will do:

  for every active domain here: ask Nova where its instance lives; if another host, or
  an evacuation of it is in flight (task_state rebuilding*), destroy the domain.

Then it commits a `reconcile` entry (what it destroyed, what it kept because Nova places
it here, what it could not check, and when this host booted, in segment time: the boot
time is read on this host's own wall clock, which may be minutes off, and the leader
compares it with the fence's committed time), and when this host was last up
before that boot (`alive_until`, agent/alive.py): the positive evidence
`decide/return_.py` needs before nova-compute is enabled again. It reconciles while its
host is fenced and the report is missing, failed (retried with backoff), or older than
a move of its VMs the majority finished since.

One more thing stands between a reconciled host and service: Nova will not force a
nova-compute up while evacuation records from its host are `done` (services API,
`_check_for_evacuations`), and only a nova-compute that starts moves them to `completed`.
A host powered on before its evacuations finished (or one that never went down) has a
nova-compute older than those records, and the leader's enable would be refused until an
operator restarted it. So before reporting, the agent restarts its nova-compute once
whenever an evacuation of its VMs finished after that process started
(`nova_compute_stale`), through the supervisor's restart command.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog
import trio

from meshha.errors import MeshhaError
from meshha.raft import entries as E
from meshha.raft.entries import Entry
from meshha.raft.state import SegmentState
from meshha.recovery.decide.return_ import episode_moves
from meshha.recovery.ports import HypervisorPort, NovaPort

if TYPE_CHECKING:
    from meshha.agent.node import Node

log = structlog.get_logger("meshha.reconcile")

RETRY_BASE_S = 2.0
RETRY_MAX_S = 60.0
MAX_DOMAINS = 4096  # bound on domains looked at in one pass
EVACUATING = ("rebuilding", "rebuild_block_device_mapping", "rebuild_spawning")


def wanted(state: SegmentState, me: str) -> int | None:
    """The fence episode this host must (again) report on, or None."""
    fence = state.fenced.get(me)
    if fence is None:
        return None
    rep = state.reconciled.get(me)
    if rep is None or rep.episode != fence.episode or rep.ts < fence.ts or not rep.ok:
        return fence.episode
    moved = [i.done_ts or 0.0 for i in episode_moves(state, me, fence.episode) if i.done]
    return fence.episode if any(t > rep.ts for t in moved) else None


NOVA_COMPUTE = "nova-compute"


def nova_compute_stale(state: SegmentState, me: str, episode: int, started: float) -> float | None:
    """The finish time of the latest evacuation of this host's VMs in `episode` that
    finished after its nova-compute started (segment time), or None: such an evacuation
    left a `done` record only a new nova-compute start clears. None while a move of the
    episode is still pending: one restart once they are all done, not one per VM."""
    if any(not i.done for i in episode_moves(state, me, episode)):
        return None
    finished = [
        i.done_ts
        for i in state.intents_for(me, episode)
        if i.action == "evacuate" and i.done_ts is not None and i.done_ts > started
    ]
    return max(finished) if finished else None


def proc_boot_time(path: str = "/proc/stat") -> float | None:
    """The kernel's boot time (btime, seconds since the epoch), None if unreadable."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


async def boot_time(hv: HypervisorPort | None) -> float | None:
    """The host's boot time: the hypervisor port's own, if it has one (the simulator's
    and the lab's hosts are not this kernel), else /proc/stat's."""
    own = getattr(hv, "booted_at", None)
    if own is not None:
        return float(await own())
    return await trio.to_thread.run_sync(proc_boot_time)


async def reconcile_once(
    me: str,
    episode: int,
    hv: HypervisorPort,
    nova: NovaPort | None,
    now: Callable[[], float],
    to_segment: Callable[[float], float] = lambda t: t,
    alive_until: float | None = None,
) -> Entry:
    """One pass; never raises an operating error: a failure is in the report.
    `to_segment` turns a time read on this host's wall clock (its boot time) into
    segment time (meshha.probes.clock), the time `now` gives and the log holds."""
    destroyed: list[str] = []
    kept: list[str] = []
    problems: list[str] = []
    booted = None
    try:
        booted = await boot_time(hv)
        booted = None if booted is None else to_segment(booted)
        running = (await hv.running_vms())[:MAX_DOMAINS]
    except MeshhaError as err:
        running = []
        problems.append(f"listing domains: {err.kind}: {err}")
    if nova is None and running:
        problems.append("no Nova access configured: cannot tell where instances live")
        running = []
    for vm in running:
        assert nova is not None
        try:
            server = await nova.get_server(vm)
        except MeshhaError as err:
            if err.kind == "not_found":
                kept.append(vm)  # not Nova's (or deleted): Nova's own reaper's business
                continue
            problems.append(f"{vm}: {err.kind}: {err}")
            continue
        if server.host == me and (server.task_state or "") not in EVACUATING:
            kept.append(vm)
            continue
        try:
            await hv.destroy(vm)
            destroyed.append(vm)
            where = server.host if server.host != me else f"{me}, evacuating"
            log.warning("reconcile_destroyed", vm=vm, nova_host=where)
        except MeshhaError as err:
            problems.append(f"destroy {vm}: {err.kind}: {err}")
    ok = not problems
    detail = (
        f"destroyed {len(destroyed)} domain(s) Nova places elsewhere, kept {len(kept)}"
        if ok
        else "; ".join(problems)[:1000]
    )
    return E.reconcile(
        ts=now(),
        by=me,
        host=me,
        episode=episode,
        booted_at=booted,
        destroyed=sorted(destroyed),
        kept=sorted(kept),
        ok=ok,
        detail=detail,
        alive_until=alive_until,
    )


async def reconcile_loop(node: Node) -> None:
    """While this host is fenced, reconcile and report (see the module docstring). An
    agent without a hypervisor port reports once that it cannot: that is no evidence,
    and the leader alerts instead of enabling."""
    hv = node.p.hypervisor
    clock = node.p.clock
    to_segment = clock.wall_to_segment if clock is not None else (lambda t: t)
    backoff = RETRY_BASE_S
    next_try = -math.inf
    sent: tuple[float, float] | None = None  # (entry ts, trio time) of the last report
    restarted_for: float | None = None  # the evacuation finish nova-compute was restarted for
    interval = node.segment.timings.probe_interval_s
    while True:
        await trio.sleep(interval)
        ep = wanted(node.state, node.me)
        if ep is None:
            backoff, sent = RETRY_BASE_S, None
            continue
        t = trio.current_time()
        if t < next_try or not node.p.log.has_quorum:
            continue
        if clock is not None and not clock.clock_judged():
            continue  # its boot time could not be put in segment time yet
        alive = node.p.alive
        if alive is not None and not alive.started:
            continue  # what an earlier boot left is not read yet (alive.py)
        rep = node.state.reconciled.get(node.me)
        if sent is not None and (rep is None or rep.ts < sent[0]) and t < sent[1] + RETRY_MAX_S:
            continue  # the last report is still on its way to the log
        drivers: Any = node.p.drivers
        if hv is None:  # nothing to look with: say so once per episode, no evidence
            if sent is not None:
                continue
            booted = await boot_time(None)
            entry = E.reconcile(
                ts=node.p.now(),
                by=node.me,
                host=node.me,
                episode=ep,
                booted_at=None if booted is None else to_segment(booted),
                destroyed=[],
                kept=[],
                ok=False,
                detail="no hypervisor access (--libvirt-uri): cannot check for evacuated VMs",
            )
        else:
            nova = drivers.nova if drivers is not None else None
            restarted_for = await _refresh_nova_compute(node, ep, restarted_for)
            entry = await reconcile_once(
                node.me,
                ep,
                hv,
                nova,
                node.p.now,
                to_segment,
                alive_until=alive.previous if alive is not None else None,
            )
        node.propose(entry, ("reconcile", ep, entry["ts"]))
        sent = (entry["ts"], t)
        log.info("reconciled", episode=ep, ok=entry["ok"], detail=entry["detail"])
        if entry["ok"]:
            backoff, next_try = RETRY_BASE_S, t + RETRY_BASE_S
        else:
            next_try = t + backoff
            backoff = min(RETRY_MAX_S, backoff * 2)


async def _refresh_nova_compute(node: Node, episode: int, done: float | None) -> float | None:
    """Restart this host's supervised nova-compute if an evacuation of its VMs finished
    after it started (module docstring); once per such finish. Returns the finish time
    restarted for. A failed restart is logged: the leader's enable is then refused and
    it alerts (decide/return_.py)."""
    procs = node.p.processes
    if procs is None or NOVA_COMPUTE not in node.supervised_names:
        return done
    age = procs.age_s(NOVA_COMPUTE)
    if not math.isfinite(age):
        return done  # not running: the supervisor's business
    finished = nova_compute_stale(node.state, node.me, episode, node.p.now() - age)
    if finished is None or (done is not None and finished <= done):
        return done
    log.warning(
        "nova_compute_restart",
        reason="an evacuation from this host finished after nova-compute started: "
        "Nova refuses to force it up until it starts again",
        episode=episode,
    )
    try:
        await procs.restart(NOVA_COMPUTE)
    except MeshhaError as err:
        log.error("nova_compute_restart_failed", error=str(err), kind=err.kind)
    return finished
