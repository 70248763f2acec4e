"""Swarm testing: a segment and a fault schedule drawn from one seed.

Each run draws a segment size, which fault kinds are enabled and how often (swarm
testing: different runs stress different mixes), then runs a faulty phase, a healed
phase that must converge, and checks the invariants. The seed reproduces the run:
`meshctl sim --random 1 --seed S`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

import trio

from meshha.sim import host_faults
from meshha.sim.scenario import flap, timeline
from meshha.sim.world import Sim, SimSpec, SimTimeout

FAULT_KINDS = (
    "power-off",
    "hang",
    "nic-down",
    "bmc-dead",
    "partition",
    "loss",
    "maintenance",
    "nova-down",
    "crash-vm",
    "process-dead",
    "power-on",
    "heal-links",
    "flap",
    "bmc-hang",
)
# Faults inside a host (meshha.sim.host_faults), drawn from a PRNG of their own: a seed's
# schedule of the kinds above is the same whether or not these are drawn too.
HOST_FAULT_KINDS = ("clock-step", "disk-full", "stall", "kill-agent")
CLOCK_STEPS_S = (-600.0, -300.0, -5.0, -1.0, -0.3, 0.3, 1.0, 5.0, 300.0, 600.0)
STALLS_S = (0.3, 1.0, 2.0, 5.0, 10.0, 30.0)
# A killed agent's init starts it again after RestartSec=1 plus the start (about 2 s in
# the lab); longer: a start that fails, or waits for something.
RESTARTS_S = (1.5, 2.5, 4.0, 10.0, 60.0)


@dataclass
class SwarmRun:
    seed: int
    hosts: int
    faults: list[str] = field(default_factory=list)
    failure: str = ""
    violations: list[str] = field(default_factory=list)
    committed: int = 0
    timeline: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failure and not self.violations


def draw_spec(rng: random.Random) -> SimSpec:
    hosts = rng.choice((3, 4, 5, 5, 6, 7))
    voters = hosts if hosts <= 5 else rng.choice((3, 5, hosts))
    return SimSpec(
        hosts=hosts,
        voters=voters,
        vms_per_host=rng.choice((1, 2, 3)),
        profile=rng.choice(("lan-fast", "lan-fast", "lan-safe")),
        # Half the segments declare a watchdog on every host (the deadline proof is then
        # allowed), half declare none (a host whose BMC is dead waits for an operator).
        watchdog=rng.random() < 0.5,
    )


async def _faulty_phase(sim: Sim, rng: random.Random, duration_s: float, run: SwarmRun) -> None:
    enabled = [k for k in FAULT_KINDS if rng.random() < 0.6] or ["power-off"]
    mean_gap = rng.uniform(2.0, 10.0)
    hosts = list(sim.segment.host_names)
    end = trio.current_time() + duration_s
    async with trio.open_nursery() as nursery:  # flapping links run beside the schedule
        await _schedule(sim, rng, enabled, mean_gap, hosts, end, nursery)


async def _schedule(
    sim: Sim,
    rng: random.Random,
    enabled: list[str],
    mean_gap: float,
    hosts: list[str],
    end: float,
    nursery: trio.Nursery,
) -> None:
    while True:
        gap = rng.expovariate(1.0 / mean_gap)
        if trio.current_time() + gap >= end:
            await trio.sleep(max(0.0, end - trio.current_time()))
            return
        await trio.sleep(gap)
        kind = rng.choice(enabled)
        h = rng.choice(hosts)
        if kind == "power-off":
            sim.power_off(h)
        elif kind == "power-on":
            sim.power_on(h)
        elif kind == "hang":
            sim.hang(h)
        elif kind == "nic-down":
            sim.nic(h, rng.choice(sim.segment.network_names), False)
        elif kind == "bmc-dead":
            sim.bmc(h, False)
        elif kind == "partition":
            rng.shuffle(hosts)
            cut = rng.randint(1, len(hosts) - 1)
            sim.partition([set(hosts[:cut]), set(hosts[cut:])])
        elif kind == "loss":
            sim.net.quality.loss = rng.choice((0.01, 0.05, 0.1, 0.2))
            sim.net.quality.jitter_s = rng.choice((0.0, 0.01, 0.05))
            sim.net.quality.duplicate = rng.choice((0.0, 0.01))
            sim.fault(
                f"loss {sim.net.quality.loss:.0%} jitter {sim.net.quality.jitter_s * 1000:.0f}ms"
            )
        elif kind == "maintenance":
            try:
                await sim.maintenance(h, rng.random() < 0.6)
            except SimTimeout:
                pass  # no quorum to take the command: an operator would retry
            except Exception as err:
                if "quorum" not in str(err):
                    raise
        elif kind == "nova-down":
            sim.cloud.nova_up = not sim.cloud.nova_up
            sim.fault(f"nova {'up' if sim.cloud.nova_up else 'down'}")
        elif kind == "crash-vm":
            vms = sorted(v for v, where in sim.cloud.running.items() if where)
            if vms:
                vm = rng.choice(vms)
                if sim.cloud.servers[vm].host in sim.cloud.running[vm]:
                    sim.fault(f"crash-vm {vm}")
                    sim.cloud.crash_vm(vm)
        elif kind == "process-dead":
            m = sim.cloud.machines[h]
            m.processes["nova-compute"] = False
            if rng.random() < 0.5:
                m.restart_fails.add("nova-compute")
            sim.fault(f"process-dead {h} nova-compute")
        elif kind == "flap":
            net = rng.choice(sim.segment.network_names)
            every = rng.choice((1.0, 2.0, 3.0))
            for_s = min(rng.uniform(10.0, 60.0), max(0.0, end - trio.current_time()))
            sim.fault(f"flap {h} {net} every {every:g}s for {for_s:.0f}s")
            nursery.start_soon(flap, sim, h, net, every, for_s)
        elif kind == "bmc-hang":
            sim.bmc_hang(h)
        elif kind == "heal-links":
            sim.net.heal()
            sim.fault("heal-links")


async def _host_fault_phase(
    sim: Sim, rng: random.Random, kinds: list[str], duration_s: float
) -> None:
    """Clock steps, full disks, agent stalls and kills, at their own pace."""
    mean_gap = rng.uniform(3.0, 15.0)
    hosts = list(sim.segment.host_names)
    hf = sim.host_faults
    end = trio.current_time() + duration_s
    while True:
        gap = rng.expovariate(1.0 / mean_gap)
        if trio.current_time() + gap >= end:
            await trio.sleep(max(0.0, end - trio.current_time()))
            return
        await trio.sleep(gap)
        kind = rng.choice(kinds)
        h = rng.choice(hosts)
        if kind == "clock-step":
            off = hf.offsets.get(h, 0.0)
            step = -off if off and rng.random() < 0.3 else rng.choice(CLOCK_STEPS_S)
            if _clocks_stay_in_bound(sim, h, off + step):
                host_faults.clock_step(sim, h, step)
        elif kind == "disk-full":
            host_faults.disk(sim, h, h not in hf.disk_full)
        elif kind == "stall":
            host_faults.stall(sim, h, rng.choice(STALLS_S))
        elif kind == "kill-agent":
            host_faults.kill_agent(sim, h, rng.choice(RESTARTS_S))


def _clocks_stay_in_bound(sim: Sim, host: str, offset: float) -> bool:
    """Segment time, and the deadline proofs read in it, are documented to hold while
    more than half of the clocks a host hears are good (within max_clock_skew_s:
    meshha.probes.clock); beyond that they are not (keep NTP on the hosts), and the swarm
    does not go there. Hosts die and are cut off at random here, so the bound kept is
    the one that survives that: at most one wrong clock at a time, in a segment of four
    or more (any quorum then hears at least two good clocks besides it)."""
    skew = sim.segment.timings.max_clock_skew_s
    offsets = {**sim.host_faults.offsets, host: offset}
    bad = sum(1 for h in sim.segment.host_names if abs(offsets.get(h, 0.0)) > skew)
    return bad == 0 or (bad == 1 and len(sim.segment.host_names) >= 4)


async def swarm_run(seed: int, *, faulty_s: float = 60.0) -> SwarmRun:
    rng = random.Random(seed)
    spec = draw_spec(rng)
    hrng = random.Random(f"host-faults:{seed}")
    host_kinds = [k for k in HOST_FAULT_KINDS if hrng.random() < 0.5]
    spec = replace(spec, clocks="clock-step" in host_kinds, disks="disk-full" in host_kinds)
    sim = Sim(spec, seed)
    run = SwarmRun(seed, spec.hosts)

    async def body(sim: Sim) -> None:
        await sim.wait_for(lambda: sim.raft.leader is not None, 10, "a first leader")
        await trio.sleep(2.0)
        if host_kinds:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_host_fault_phase, sim, hrng, host_kinds, faulty_s)
                await _faulty_phase(sim, rng, faulty_s, run)
        else:
            await _faulty_phase(sim, rng, faulty_s, run)
        sim.heal()
        await sim.wait_for(lambda: sim.raft.leader is not None, 30, "a leader after healing")
        for h in sim.segment.host_names:  # maintenance ends with the faults
            if (st := sim.live_state()) is not None and h in st.maintenance:
                await sim.maintenance(h, False)
        await sim.converge(180.0)

    try:
        await sim.run(body)
    except* SimTimeout as group:
        run.failure = "; ".join(str(e) for e in _leaves(group))
    except* Exception as group:  # noqa: BLE001  a crash is a finding: counted with its seed
        crashes = [f"crash: {type(e).__name__}: {e}" for e in _leaves(group)]
        sim.violations += crashes
    run.violations = sim.check_invariants(converged=not run.failure)
    run.faults = [f"t={t:.2f} {w}" for t, w in sim.faults]
    run.committed = len(sim.raft.log)
    run.timeline = timeline(sim)
    return run


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    """The exceptions in `group`, nested groups flattened (a timeout inside `converge`'s
    own nursery arrives as a group in a group)."""
    out: list[BaseException] = []
    for e in group.exceptions:
        out += _leaves(e) if isinstance(e, BaseExceptionGroup) else [e]
    return out
