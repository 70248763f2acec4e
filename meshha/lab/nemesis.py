"""A Jepsen-style nemesis on the real lab: seeded fault schedules, then the safety checks.

    meshha-lab nemesis --runs 5 --seed 7

Each run draws a schedule from `seed + run` (so a failing run is replayed alone with
`--runs 1 --seed <printed seed>`): one or two faults among

    power-off      a host powered off through its BMC, on again at heal
    hang           every process of a host frozen (links up, silent), thawed at heal
    partition      the hosts split into a minority of 1-2 and a majority, healed at heal
    asym-partition one host cut off on one direction only (nft drops frames *from* it)
    agent-kill     kill -9 of a host's agent (its init restarts it a second later)
    leader-power   the current leader powered off
    bmc-dead       a host powered off while its BMC is dead (self-fence deadline path)
    storage-cut    a host's storage link down, up again at heal

applies them, keeps them for the drawn duration while listing every lab QEMU on every host
about 5 times a second, heals everything (power on, thaw, heal, BMCs alive, links up),
waits for the lab to converge and checks:

1. no VM ever ran in two places (every sample);
2. no evacuation before a confirmed fence of its source host (ledger order);
3. nothing done by a minority: every action proposed during a partition came from the
   majority side;
4. every ledger complete and identical (all hosts, after heal);
5. every HA VM running somewhere at the end: ACTIVE in Nova, its QEMU on Nova's host only;
6. no healthy host fenced: only hosts the schedule faulted were fenced, and none again
   once it was repaired and powered on.

A violation prints the seed and the schedule. The fault durations are the schedule's
(a fault lasts that long while sampling); every other wait is for a condition with a
deadline.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from meshha.lab.cloud import Cloud, LabTimeout, Say, wait_until
from meshha.lab.netns import run
from meshha.recovery.executor import RESERVE_REASON

KINDS = (
    "power-off",
    "hang",
    "partition",
    "asym-partition",
    "agent-kill",
    "leader-power",
    "bmc-dead",
    "storage-cut",
)


@dataclass
class Fault:
    kind: str
    hosts: list[str]
    at_s: float  # after the run's start
    duration_s: float


@dataclass
class RunReport:
    seed: int
    schedule: list[Fault]
    violations: list[str] = field(default_factory=list)
    samples: int = 0
    seconds: float = 0.0
    faulted: set[str] = field(default_factory=set)
    partitions: list[tuple[float, float, list[str]]] = field(default_factory=list)
    healed_at: float = 0.0  # every faulted host powered on again

    def describe(self) -> str:
        return json.dumps([asdict(f) for f in self.schedule])


def draw(cloud: Cloud, seed: int) -> list[Fault]:
    rng = random.Random(seed)
    hosts = cloud.hosts
    faults = []
    for k in range(rng.choice((1, 1, 2))):
        kind = rng.choice(KINDS)
        at = 0.0 if k == 0 else round(rng.uniform(0, 8), 1)
        duration = round(rng.uniform(6, 20), 1)
        if kind == "partition":
            n = rng.choice((1, 2))
            group = sorted(rng.sample(hosts, n))
        elif kind == "leader-power":
            group = []  # resolved when applied
        else:
            group = [rng.choice(cloud.computes)]
        faults.append(Fault(kind, group, at, duration))
    return faults


class Nemesis:
    def __init__(self, cloud: Cloud, say: Say) -> None:
        self.cloud = cloud
        self.say = say

    # -- applying and healing --------------------------------------------------------------

    def apply(self, f: Fault, rep: RunReport, t0: float) -> None:
        c = self.cloud
        if f.kind == "leader-power":
            leader = c.leader() or c.computes[0]
            f.hosts = [leader]
        h = f.hosts[0] if f.hosts else ""
        if f.kind in ("power-off", "leader-power"):
            c.power_off(h)
        elif f.kind == "hang":
            c.hang(h)
        elif f.kind == "partition":
            rest = [x for x in c.hosts if x not in f.hosts]
            c.partition([f.hosts, rest])
            rep.partitions.append((time.time(), 0.0, rest))
        elif f.kind == "asym-partition":
            self.one_way(h)
            rep.partitions.append((time.time(), 0.0, [x for x in c.hosts if x != h]))
        elif f.kind == "agent-kill":
            c.kill_process(h, "meshha-agent")
        elif f.kind == "bmc-dead":
            c.power_off(h)
            c.bmc_dead(h)
        elif f.kind == "storage-cut":
            c.cut_net(h, "storage")
        if f.kind != "agent-kill":
            rep.faulted.update(f.hosts)  # a partition's hosts are its minority
        self.say(f"  +{time.time() - t0:5.1f}s  {f.kind} {','.join(f.hosts)} for {f.duration_s}s")

    def one_way(self, host: str) -> None:
        """Frames from `host` are dropped at the switch; frames to it pass."""
        net = self.cloud.net
        ports = ", ".join(net.veth(host, n) for n in net.networks)
        script = (
            f"table bridge {net.table} {{\n  chain forward {{\n"
            "    type filter hook forward priority 0; policy accept;\n"
            f"    iifname {{ {ports} }} drop\n  }}\n}}\n"
        )
        run(["nft", "delete", "table", "bridge", net.table], check=False)
        run(["nft", "-f", "-"], input=script.encode())

    def heal_all(self, rep: RunReport, before: int) -> None:
        """Network healed, hosts thawed, BMCs back, links up; then, once the segment has
        finished what it started (every action since the run began has its result), the
        powered-off hosts are powered on: a repaired host comes back after its recovery,
        not in the middle of it (Nova refuses to force a host up while evacuations from
        it are unfinished, see the report)."""
        c = self.cloud
        c.heal()
        rep.partitions = [(a, b or time.time(), m) for a, b, m in rep.partitions]
        for h in c.hosts:
            c.resume(h)
            if c.powered_on(h):  # a powered-off host's links come up when it boots
                for n in c.net.networks:
                    c.restore_net(h, n)
            c.bmc_alive(h)

        def quiet() -> bool:
            self.sample(rep)
            reader = next((h for h in c.hosts if c.try_status(h, 1.0)), None)
            if reader is None:
                return False
            rows = [e for i, e in c.ledger(reader) if i > before]
            done = {e["intent"] for e in rows if e["kind"] == "result"}
            return all(e["intent"] in done for e in rows if e["kind"] == "intent")

        with contextlib.suppress(LabTimeout):
            wait_until(quiet, 120, "every action since the run began has a result", poll_s=0.5)
        for h in c.hosts:
            if not c.powered_on(h):
                c.power_on(h)
        rep.healed_at = time.time()

    # -- one run ---------------------------------------------------------------------------

    def sample(self, rep: RunReport) -> None:
        doms = self.cloud.domains()
        rep.samples += 1
        for vm, hosts in doms.items():
            if len(hosts) > 1:
                rep.violations.append(f"VM {vm} running on {hosts} at {time.time():.2f}")

    def hold(self, rep: RunReport, until: float) -> None:
        """Keep the faults on until `until` (the schedule's duration), sampling."""

        def over() -> bool:
            self.sample(rep)
            return time.time() >= until

        wait_until(over, max(until - time.time(), 0) + 30, "the fault's duration", poll_s=0.2)

    def run(self, seed: int) -> RunReport:
        c = self.cloud
        schedule = draw(c, seed)
        rep = RunReport(seed, schedule)
        before = max((i for i, _ in c.ledger(c.leader() or c.hosts[0])), default=0)
        t0 = time.time()
        self.say(f"run seed={seed}: {rep.describe()}")
        pending = sorted(schedule, key=lambda f: f.at_s)
        end = t0 + max(f.at_s + f.duration_s for f in schedule)
        for f in pending:
            self.hold(rep, t0 + f.at_s)
            self.apply(f, rep, t0)
        self.hold(rep, end)
        self.heal_all(rep, before)
        self.say(f"  +{time.time() - t0:5.1f}s  healed; waiting for the lab to converge")
        try:
            self.converge(rep)
        except LabTimeout as e:
            rep.violations.append(f"did not converge: {e}")
        self.check_ledgers(rep, t0)
        rep.seconds = round(time.time() - t0, 1)
        return rep

    def converge(self, rep: RunReport) -> None:
        c = self.cloud

        def step(cond: Callable[[], Any]) -> Callable[[], Any]:
            def f() -> Any:
                self.sample(rep)
                return cond()

            return f

        wait_until(step(lambda: c.leader(c.hosts)), 180, "every agent up, one leader", poll_s=0.3)
        conn = c.connect()

        def in_service() -> bool:
            svcs = [s for s in conn.compute.services() if s.binary == "nova-compute"]
            return all(_in_service(s) for s in svcs)

        try:
            wait_until(step(in_service), 120, "every nova-compute enabled", poll_s=0.5)
        except LabTimeout as e:
            rep.violations.append(f"did not converge: {e}")
            self.repair(rep)

        def ha_running() -> bool:
            doms = c.domains()
            for v in c.vms():
                if v.ha and not (
                    v.status == "ACTIVE" and v.task_state is None and doms.get(v.id) == [v.host]
                ):
                    return False
            return True

        with contextlib.suppress(LabTimeout):
            wait_until(
                step(ha_running), 180, "every HA VM ACTIVE, its QEMU on its host", poll_s=0.5
            )
        doms = c.domains()
        for v in c.vms():
            if v.ha and not (v.status == "ACTIVE" and doms.get(v.id) == [v.host]):
                rep.violations.append(
                    f"HA VM {v.name} not running: nova {v.status} on {v.host}, qemu on {doms.get(v.id)}"
                )

    def repair(self, rep: RunReport) -> None:
        """What an operator does for a host left disabled, so the next run starts clean:
        restart its nova-compute (its start-up cleans up evacuated instances), then force
        it up and enable it in Nova."""
        from openstack.exceptions import SDKException

        c = self.cloud
        conn = c.connect()
        stuck = [
            s for s in conn.compute.services() if s.binary == "nova-compute" and not _in_service(s)
        ]
        for s in stuck:
            self.say(f"  repair: restart nova-compute on {s.host}, force it up, enable it")
            c.kill_process(s.host, "nova-compute")

        def fixed() -> bool:
            for s in stuck:
                with contextlib.suppress(SDKException):  # retried until the deadline
                    conn.compute.update_service_forced_down(s, s.host, s.binary, False)
                    conn.compute.enable_service(s, s.host, s.binary)
            fresh = {x.id: x for x in conn.compute.services()}
            return all(
                fresh[s.id].status == "enabled" and not fresh[s.id].is_forced_down for s in stuck
            )

        try:
            wait_until(fixed, 120, "stuck nova-computes repaired", poll_s=2.0)
        except LabTimeout as e:
            rep.violations.append(f"repair failed: {e}")

    def check_ledgers(self, rep: RunReport, t0: float) -> None:
        c = self.cloud

        def same() -> list[dict[str, Any]] | None:
            rows = c.agreed_ledger(c.hosts)
            return [e for e in rows if e["ts"] >= t0] if rows else None

        try:
            rows = wait_until(same, 60, "every ledger identical", poll_s=0.5)
        except LabTimeout:
            books = {h: dict(c.ledger(h)) for h in c.hosts}
            last = {h: max(b, default=0) for h, b in books.items()}
            upto = min(last.values())
            ref = books[c.hosts[0]]
            differ = {
                h: min((i for i in b if i <= upto and b.get(i) != ref.get(i)), default=None)
                for h, b in books.items()
            }
            rep.violations.append(
                f"ledgers differ after heal: last index {last}, first index differing from "
                f"{c.hosts[0]}'s {differ}"
            )
            return
        fenced: set[str] = set()
        fence_intents = {}
        for e in rows:
            if e["kind"] == "intent" and e["action"] == "fence":
                fence_intents[e["intent"]] = e["host"]
                if e["host"] not in rep.faulted:
                    rep.violations.append(f"healthy host {e['host']} fenced: {e['intent']}")
                elif rep.healed_at and e["ts"] > rep.healed_at + 1.0:
                    rep.violations.append(
                        f"{e['host']} fenced again after it was repaired: {e['intent']} "
                        f"({e['ts'] - rep.healed_at:.1f}s after the heal)"
                    )
            if e["kind"] == "result" and e["intent"] in fence_intents and e["outcome"] == "ok":
                fenced.add(fence_intents[e["intent"]])
            if e["kind"] == "fenced":
                fenced.add(e["host"])
            if e["kind"] == "verdict" and e["verdict"] == "healthy":
                fenced.discard(e["host"])
            if e["kind"] == "intent" and e["action"] == "evacuate" and e["host"] not in fenced:
                rep.violations.append(f"evacuation before a confirmed fence: {e['intent']}")
            if e["kind"] == "intent":
                for start, stop, majority in rep.partitions:
                    if start <= e["ts"] <= stop and e["by"] not in majority:
                        rep.violations.append(f"minority host {e['by']} acted: {e['intent']}")


def _in_service(svc: Any) -> bool:
    """Enabled and up in Nova, or the reserve meshha keeps disabled on purpose."""
    if svc.is_forced_down:
        return False
    return bool(svc.status == "enabled" or svc.disabled_reason == RESERVE_REASON)


def nemesis(cloud: Cloud, runs: int, seed: int, say: Say) -> list[RunReport]:
    n = Nemesis(cloud, say)
    reports = []
    for r in range(runs):
        rep = n.run(seed + r)
        reports.append(rep)
        if rep.violations:
            say(f"  VIOLATIONS (seed {rep.seed}, schedule {rep.describe()}):")
            for v in rep.violations:
                say(f"    {v}")
        else:
            say(f"  ok: {rep.samples} samples, {rep.seconds}s")
    bad = [r for r in reports if r.violations]
    say(f"nemesis: {runs} runs from seed {seed}, {len(bad)} with violations")
    return reports
