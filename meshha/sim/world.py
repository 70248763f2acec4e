"""A whole segment in one process: N real `Node`s over the in-memory network, the Raft
stand-in and the fake cloud, under whatever trio clock runs it (tests and `meshctl sim`
use trio's MockClock with autojump, so simulated minutes cost milliseconds).

The simulator owns the ground truth and checks the safety invariants of DESIGN.md while
the run goes (a guard called before every action) and at its end:
  1. no VM runs in two places (FakeCloud records it the moment it would happen);
  2. no evacuation while the VM still runs on its source (i.e. before a real fence);
  3. only the leader of a majority acts;
  4. nothing acts on a host in maintenance, nor targets one;
  5. every live host's ledger holds every committed entry, in order;
  6. the decision invariants (recovery/decide/check.py) hold on every committed entry;
  7. one fault costs a bounded number of alerts, verdicts and process reports (noise.py).
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from meshha.agent.node import Node, NodePorts
from meshha.agent.persist import PersistWatch
from meshha.config.model import Policy, Recovery, Segment
from meshha.config.synthetic import DEFAULT_NETWORKS, synthetic_segment
from meshha.raft import entries as E
from meshha.raft.entries import Entry
from meshha.raft.state import HOST_ACTIONS, Intent
from meshha.recovery.decide import Audit
from meshha.recovery.executor import Drivers
from meshha.recovery.ports import Flavor
from meshha.sim import host_faults
from meshha.sim.fakes import FakeAlerts, FakeBmc, FakeCloud, FakeNova, FakeProcesses
from meshha.sim.network import SimNetwork
from meshha.sim.noise import noise_problems
from meshha.sim.raft_standin import SimLog, SimRaft
from meshha.sim.watchdog import FakeWatchdog

EPOCH = 1_800_000_000.0  # simulated wall clock = EPOCH + trio time
FLAVORS = {
    "m1.small": Flavor("m1.small", 1, 2048, 20),
    "m1.medium": Flavor("m1.medium", 2, 4096, 40),
    "m1.large": Flavor("m1.large", 4, 8192, 80),
}


class SimTimeout(AssertionError):
    pass


@dataclass
class SimSpec:
    hosts: int = 5
    voters: int | None = None  # default: every host up to 7, else 5
    reserved: tuple[str, ...] | None = None  # default: the last host
    networks: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_NETWORKS))
    profile: str = "lan-fast"
    timings: dict[str, float] = field(default_factory=dict)
    vms_per_host: int = 2
    flavor: str = "m1.medium"
    host_size: tuple[int, int, int] = (16, 32768, 500)
    brake_fraction: float = 0.5
    brake_window_s: float = 30.0
    fanout: int = 1
    policy: Policy = field(default_factory=Policy)
    recovery: Recovery = field(default_factory=Recovery)
    # Does every host's config declare a watchdog? Its agent then feeds a FakeWatchdog,
    # which powers the machine off when not fed (hung, or isolated past its deadline), and
    # only then may the majority use the self-fence deadline as a proof. As the config:
    # no watchdog unless declared.
    watchdog: bool = False
    # Does each host keep its own wall clock, the agents committing measured segment time
    # (meshha.sim.host_faults)? Needed for `clock-step`; off, all share the true time.
    clocks: bool = False
    # Does each agent watch its disk (meshha.agent.persist)? Needed for `disk-full`; off,
    # the watch is not run (an extra task would reorder the scenario timelines).
    disks: bool = False


def build_segment(spec: SimSpec) -> Segment:
    return synthetic_segment(
        spec.hosts,
        voters=spec.voters,
        reserved=spec.reserved,
        networks=spec.networks,
        profile=spec.profile,
        timings=spec.timings,
        host_size=spec.host_size,
        brake_fraction=spec.brake_fraction,
        brake_window_s=spec.brake_window_s,
        policy=spec.policy,
        recovery=spec.recovery,
        watchdog=spec.watchdog,
    )


class MemoryLedger:
    """A host's ledger in the simulator: kept across that host's restarts, like SQLite."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, Entry]] = []

    def append(self, index: int, entry: Entry) -> None:
        if not self.rows or index > self.rows[-1][0]:
            self.rows.append((index, entry))


class Sim:
    def __init__(self, spec: SimSpec, seed: int) -> None:
        self.spec = spec
        self.seed = seed
        self.rng = random.Random(seed)
        self.segment = build_segment(spec)
        self.cloud = FakeCloud(clock=self.clock)
        nets = self.segment.network_names
        for h in self.segment.hosts:
            vcpus, ram, disk = spec.host_size
            self.cloud.add_host(h.name, nets, vcpus=vcpus, ram_mb=ram, disk_gb=disk)
        # What each host's config declares; a watchdog outlives its agent, like hardware.
        self.watchdogs = {
            h.name: FakeWatchdog(self.clock, h.name) for h in self.segment.hosts if h.watchdog
        }
        self.net = SimNetwork(self.cloud, nets, random.Random(f"net:{seed}"))
        self.raft = SimRaft(
            self.segment,
            self.net,
            random.Random(f"raft:{seed}"),
            network="admin" if "admin" in nets else nets[0],
        )
        self.nodes: dict[str, Node] = {}
        self.scopes: dict[str, trio.CancelScope] = {}
        self.ledgers: dict[str, MemoryLedger] = {h: MemoryLedger() for h in self.segment.host_names}
        self.violations: list[str] = []
        self.audit = Audit(self.segment)  # the decision invariants, on the committed log
        self.faults: list[tuple[float, str]] = []
        self.boots: dict[str, int] = {}
        self.host_faults = host_faults.HostFaults(EPOCH, clocks=spec.clocks, disks=spec.disks)
        self._nursery: trio.Nursery | None = None
        for h in self.segment.hosts:
            if h.role == "compute":
                for k in range(spec.vms_per_host):
                    self.cloud.boot(f"{h.name}-vm{k + 1}", h.name, FLAVORS[spec.flavor])

    # -- time --------------------------------------------------------------------------

    def clock(self) -> float:
        return trio.current_time()

    def wall(self) -> float:
        return EPOCH + trio.current_time()

    # -- running -----------------------------------------------------------------------

    async def run(self, body: Callable[[Sim], Awaitable[Any]]) -> Any:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.net.run)
            await nursery.start(self.raft.run)
            for h in self.segment.host_names:
                self._start_node(h)
            nursery.start_soon(self._lifecycle)
            try:
                return await body(self)
            finally:
                nursery.cancel_scope.cancel()

    def _start_node(self, host: str) -> None:
        assert self._nursery is not None
        self.boots[host] = self.boots.get(host, 0) + 1
        drivers = Drivers(
            fence=FakeBmc(self.cloud, actor=host),
            nova=FakeNova(self.cloud, actor=host),
            alerts=FakeAlerts(self.cloud, actor=host),
        )
        hf = self.host_faults
        transport = host_faults.SimProbeTransport(
            self.net,
            self.segment,
            host,
            lambda: hf.wall(host),
            lambda peer: peer in self.scopes or peer in hf.stalled,
            random.Random(f"knock:{self.seed}:{host}:{self.boots[host]}"),
        )
        hf.transports[host] = transport
        ports = NodePorts(
            log=SimLog(self.raft, host),
            transport=transport,
            ledger=hf.ledger(self.ledgers[host], host),
            now=transport.segment_now if hf.clocks else self.wall,
            clock=transport if hf.clocks else None,
            kernel=transport,
            drivers=drivers,
            hypervisor=host_faults.SimHypervisor(self.cloud, host, lambda: hf.wall(host))
            if self.segment.host(host).hypervisor_uri
            else None,
            vm_events=self.cloud.events_for(host),
            processes=FakeProcesses(self.cloud, host),
            guard=self._guard(host),
            watchdog=self.watchdogs.get(host),
        )
        node = Node(
            self.segment,
            host,
            ports,
            seed=self.seed * 1000 + self.boots[host],
            fanout=self.spec.fanout,
        )
        self.nodes[host] = node
        transport.deliver = node.on_datagram
        self.net.receivers[host] = transport.receive
        hf.persist[host] = PersistWatch(self.segment.name, host, drivers.alerts)
        self._run_node(host)

    def _run_node(self, host: str, contact: float | None = None) -> None:
        """Run the agent of `host` in a scope of its own; `contact`: it resumes after a
        stall, its last contact with a majority as it was (meshha.sim.host_faults)."""
        assert self._nursery is not None
        node, scope = self.nodes[host], trio.CancelScope()
        self.scopes[host] = scope
        sources = self.host_faults.persist_sources(self, host)

        watch = self.host_faults.disks  # its PersistWatch, in runs that fill disks

        async def _run() -> None:
            with scope:
                if not watch and contact is None:
                    await node.run()
                    return
                async with trio.open_nursery() as nursery:
                    if watch:
                        nursery.start_soon(self.host_faults.persist[host].run, sources)
                    await nursery.start(node.run)
                    if contact is not None:
                        node._last_contact = contact

        self._nursery.start_soon(_run)

    def resume_node(self, host: str) -> None:
        self._run_node(host, contact=self.nodes[host]._last_contact)

    def stop_node(self, host: str) -> None:
        self.scopes.pop(host).cancel()
        self.nodes[host].alive = False
        self.net.receivers.pop(host, None)

    async def _lifecycle(self) -> None:
        """Machines that stop stop their agent; machines that come back boot it again."""
        while True:
            for h, m in self.cloud.machines.items():
                wd = self.watchdogs.get(h)
                if wd is not None and not m.powered:
                    wd.armed = False  # power loss stops the timer too
                elif wd is not None and wd.due():
                    # Configured to power off, not reboot: a rebooted host would
                    # come back without its VMs, and nothing restarts them yet.
                    self.fault(f"watchdog powers off {h}")
                    wd.fire()
                    self.cloud.power_off(h)
                if h in self.host_faults.stalled or h in self.host_faults.killed:
                    continue  # resumed (restarted) below, or forgotten if the machine died
                if m.alive and h not in self.scopes:
                    self._start_node(h)
                elif not m.alive and h in self.scopes:
                    self.stop_node(h)
            host_faults.resume_due(self)
            host_faults.restart_due(self)
            self._audit()
            await trio.sleep(0.02)

    def _audit(self) -> None:
        for e in self.raft.log[self.audit.state.index :]:
            self.violations += self.audit.commit(e)

    def _guard(self, actor: str) -> Callable[[str, Intent], None]:
        def check(action: str, intent: Intent) -> None:
            t = trio.current_time()
            if not self.raft.leading(actor):
                self.violations.append(
                    f"t={t:.3f}: {actor} did {action} ({intent.id}) without leading a majority"
                )
            if (
                action == "evacuate"
                and intent.vm
                and intent.host in self.cloud.running.get(intent.vm, set())
            ):
                self.violations.append(
                    f"t={t:.3f}: evacuating {intent.vm} while it still runs on {intent.host}"
                )
            truth = self.live_state()
            if truth is not None:
                for h in (intent.host, intent.target):
                    if h == intent.host and action not in HOST_ACTIONS:
                        continue  # maintenance's own steps (decide/maintenance.py)
                    if h and h in truth.maintenance:
                        self.violations.append(
                            f"t={t:.3f}: {action} ({intent.id}) touches {h} in maintenance"
                        )

        return check

    def live_state(self) -> Any:
        """The state of the most up-to-date running node (the committed truth)."""
        best = None
        for h, n in self.nodes.items():
            if h in self.scopes and (best is None or n.state.index > best.index):
                best = n.state
        return best

    # -- faults (each is recorded in the timeline) --------------------------------------

    def fault(self, what: str) -> None:
        self.faults.append((trio.current_time(), what))

    def power_off(self, host: str) -> None:
        self.fault(f"power-off {host}")
        self.cloud.power_off(host)

    def power_on(self, host: str) -> None:
        self.fault(f"power-on {host}")
        self.cloud.power_on(host)

    def hang(self, host: str) -> None:
        self.fault(f"hang {host}")
        self.cloud.machines[host].hung = True

    def unhang(self, host: str) -> None:
        self.fault(f"unhang {host}")
        self.cloud.machines[host].hung = False

    def nic(self, host: str, network: str, up: bool) -> None:
        self.fault(f"nic-{'up' if up else 'down'} {host} {network}")
        self.cloud.machines[host].nics[network] = up

    def bmc(self, host: str, alive: bool) -> None:
        self.fault(f"bmc-{'alive' if alive else 'dead'} {host}")
        self.cloud.machines[host].bmc_alive = alive

    def restart_agents(self, hosts: list[str]) -> None:
        self.fault(f"restart-agents {','.join(hosts)}")
        for h in hosts:
            if h in self.scopes:
                self.stop_node(h)
                self._start_node(h)

    def bmc_hang(self, host: str, hung: bool = True) -> None:
        self.fault(f"bmc-{'hang' if hung else 'unhang'} {host}")
        self.cloud.machines[host].bmc_hung = hung

    def partition(self, groups: list[set[str]], networks: tuple[str, ...] | None = None) -> None:
        self.fault("partition " + " | ".join(",".join(sorted(g)) for g in groups))
        self.net.partition(groups, networks)

    def heal(self) -> None:
        self.fault("heal")
        self.net.heal()
        self.net.quality.loss = self.net.quality.jitter_s = 0.0
        self.cloud.nova_up = True
        for h, m in self.cloud.machines.items():
            if not m.alive:
                self.cloud.power_on(h)
            m.bmc_alive, m.bmc_lies, m.bmc_hung = True, False, False
            m.nics = {n: True for n in m.nics}
            m.restart_fails.clear()
        host_faults.heal(self)

    def leader(self) -> str | None:
        return self.raft.leader

    async def propose(self, entry: Entry, timeout_s: float = 5.0) -> int:
        """As an operator would through meshctl: through any member in the quorum,
        retrying (like an operator would) until `timeout_s`."""
        with trio.move_on_after(timeout_s):
            while True:
                for h in sorted(self.scopes):
                    if self.raft.in_quorum(h):
                        return await self.raft.propose(h, entry, timeout_s=timeout_s)
                await trio.sleep(0.1)
        raise SimTimeout(f"no member in a quorum took the operator's command within {timeout_s:g}s")

    async def maintenance(self, host: str, on: bool, reason: str = "scenario") -> None:
        self.fault(f"maintenance {'on' if on else 'off'} {host}")
        await self.propose(
            E.maintenance(
                ts=self.wall(), by="operator", host=host, on=on, reason=reason, operator="sim"
            )
        )

    async def wait_for(self, cond: Callable[[], bool], timeout_s: float, what: str) -> float:
        start = trio.current_time()
        with trio.move_on_after(timeout_s):
            while not cond():  # noqa: ASYNC110 - a condition over many objects, polled in simulated time
                await trio.sleep(0.01)
            return trio.current_time() - start
        raise SimTimeout(f"not within {timeout_s:g}s: {what} (seed {self.seed})")

    # -- reading the committed history ---------------------------------------------------

    def committed(self, kind: str | None = None, **match: Any) -> list[tuple[float, Entry]]:
        out = []
        for t, e in zip(self.raft.commit_times, self.raft.log, strict=True):
            if (kind is None or e["kind"] == kind) and all(e.get(k) == v for k, v in match.items()):
                out.append((t, e))
        return out

    def check_invariants(self, *, converged: bool) -> list[str]:
        self._audit()
        problems = list(self.cloud.violations) + list(self.violations)
        problems += noise_problems(
            self.segment, self.raft.log, self.raft.commit_times, len(self.faults)
        )
        if converged:
            n = len(self.raft.log)
            for h in sorted(self.scopes):
                rows = self.ledgers[h].rows
                if [i for i, _ in rows] != list(range(1, n + 1)):
                    problems.append(f"ledger of {h} has {len(rows)} of {n} committed entries")
                elif any(
                    a is not b and a != b for (_, a), b in zip(rows, self.raft.log, strict=True)
                ):
                    problems.append(f"ledger of {h} differs from the committed log")
        return problems

    async def converge(self, timeout_s: float = 120.0) -> None:
        """After a heal: every machine up, one leader, every host healthy, nothing pending,
        every ledger complete."""

        def blocker() -> str:
            st = self.live_state()
            if (
                self.raft.leader is None
                or st is None
                or len(self.scopes) != len(self.cloud.machines)
            ):
                return "no leader, or not every agent running"
            if st.index < len(self.raft.log):
                return "state behind the log"
            pending = [i.id for i in st.intents.values() if not i.done]
            if pending:
                return f"pending intents {pending[:5]}"
            bad = {
                h: f"{v.kind}: {v.reason}"
                for h, v in st.verdicts.items()
                if v.kind not in ("healthy", "maintenance")
            }
            if bad:
                return f"verdicts {bad}"
            if st.fenced:
                return f"still fenced {sorted(st.fenced)}"
            short = [h for h in self.scopes if len(self.ledgers[h].rows) != len(self.raft.log)]
            return f"ledgers behind on {short}" if short else ""

        async def operator_repairs() -> None:
            """A host fenced after the heal (it was still failed) is powered on again."""
            while True:
                await trio.sleep(5.0)
                for h, m in self.cloud.machines.items():
                    if not m.alive:
                        self.power_on(h)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(operator_repairs)
            try:
                await self.wait_for(
                    lambda: not blocker(), timeout_s, "the healed segment converges"
                )
            except SimTimeout as err:
                raise SimTimeout(f"{err}: {blocker()}") from None
            finally:
                nursery.cancel_scope.cancel()
