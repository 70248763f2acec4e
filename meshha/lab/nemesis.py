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
    bmc-lie        a host cut off from all the others while its BMC lies: a power-off
                   through it changes nothing and is read back "off" (chassis.py `lies`);
                   the host keeps running. The read-back is the proof: its VMs are
                   evacuated; when it is heard again it must be handled as a lie (kept out
                   of service, a `bmc-lied` alert); the nemesis then vouches for it as an
                   operator would (maintenance on, off) and it must return to service
    bmc-hang       a host powered off while its BMC hangs (SIGSTOP: sessions are accepted
                   by the kernel, never answered), continued at heal
    flap           a host's admin link down and up every `period_s` (2 s) for the duration
    loss           loss and delay on every frame from or to one host (the lab's user-space
                   switch, meshha.lab.netns `impair(hosts=...)`)
    clock          one host's agent's wall clock stepped by `offset_s` (libfaketime, the
                   lab built with LabSpec(agent_clock=True)), set back at heal
    disk-full      one host's data filesystem (its Raft journal and ledger: a tmpfs of its
                   own, LabSpec(data_fs_mb=...)) filled with a file, removed at heal

applies them, keeps them for the drawn duration while listing every lab QEMU on every host
about 5 times a second, heals everything (power on, thaw, heal, BMCs alive and honest,
links up, clocks right, disks emptied), waits for the lab to converge (powering on again,
once the segment is quiet, any host found powered off, whenever its watchdog fired) and
checks:

1. no VM ever ran in two places (every sample);
2. no evacuation before a confirmed fence of its source host (ledger order; a lying BMC's
   read-back counts as the confirmation, that is what it claims);
3. nothing done by a minority: every action proposed during a partition came from the
   majority side;
4. every ledger complete and identical (all hosts, after heal);
5. every HA VM running somewhere at the end: ACTIVE in Nova, its QEMU on Nova's host only;
6. no healthy host fenced: only hosts the schedule faulted were fenced, and none again
   once it was repaired and powered on; a host with a wrong clock, a full disk, a flapping
   admin link or a lossy link is healthy (never fenced, never powered off);
7. a lie is handled as one: a host fenced through a lying BMC that was heard again is
   named in a `bmc-lied` alert (committed and delivered), reconciled, and not put back
   in service before the operator vouches.

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

from meshha.agent.control import ControlError, call
from meshha.lab.cloud import Cloud, LabTimeout, Say, wait_until
from meshha.lab.netns import Lab, run
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
    "bmc-lie",
    "bmc-hang",
    "flap",
    "loss",
    "clock",
    "disk-full",
)
# Faults that leave their host healthy: it must never be fenced nor lose power.
HEALTHY_KINDS = frozenset({"agent-kill", "flap", "loss", "clock", "disk-full"})
# Faults made with nft on the lab's bridges, which the user-space switch of `loss` bypasses.
BRIDGE_KINDS = frozenset({"partition", "asym-partition", "bmc-lie"})
FLAP_PERIOD_S = 2.0
TRAFFIC_EVERY_S = 1.0  # while a disk is full: one entry committed this often
LIE_ALERT_S = 90.0  # from the heal: the returning host is heard, the lie alert committed


@dataclass
class Fault:
    kind: str
    hosts: list[str]
    at_s: float  # after the run's start
    duration_s: float
    params: dict[str, float] = field(default_factory=dict)


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
    healthy: set[str] = field(default_factory=set)  # hosts only HEALTHY_KINDS touched
    lied: dict[str, int | None] = field(default_factory=dict)  # host -> its init pid then
    powered_back: list[str] = field(default_factory=list)  # powered on again in converge
    vouched_at: float = 0.0  # when the nemesis vouched for a host whose BMC lied

    def describe(self) -> str:
        return json.dumps([asdict(f) for f in self.schedule])


def available_kinds(cloud: Cloud) -> tuple[str, ...]:
    """The kinds this lab can make: `clock` and `disk-full` need the lab built for them."""
    out = list(KINDS)
    if not (cloud.host_dir(cloud.hosts[0]) / "clock").exists():
        out.remove("clock")
    if not cloud.desc.get("tmpfs"):
        out.remove("disk-full")
    return tuple(out)


def draw(cloud: Cloud, seed: int, kinds: tuple[str, ...] | None = None) -> list[Fault]:
    """The schedule of seed `seed`: the same for the same lab shape and kinds."""
    rng = random.Random(seed)
    kinds = kinds or available_kinds(cloud)
    hosts = cloud.hosts
    faults: list[Fault] = []
    for k in range(rng.choice((1, 1, 2))):
        kind = rng.choice(kinds)
        drawn = {f.kind for f in faults}
        if (kind == "loss" and drawn & BRIDGE_KINDS) or (kind in BRIDGE_KINDS and "loss" in drawn):
            kind = rng.choice([x for x in kinds if x != "loss" and x not in BRIDGE_KINDS])
        at = 0.0 if k == 0 else round(rng.uniform(0, 8), 1)
        duration = round(rng.uniform(6, 20), 1)
        taken = {h for f in faults for h in f.hosts}
        free = [h for h in cloud.computes if h not in taken] or cloud.computes
        params: dict[str, float] = {}
        if kind == "partition":
            n = rng.choice((1, 2))
            group = sorted(rng.sample(hosts, n))
        elif kind == "leader-power":
            group = []  # resolved when applied
        else:
            group = [rng.choice(free)]
        if kind == "flap":
            params = {"period_s": FLAP_PERIOD_S}
        elif kind == "loss":
            params = {
                "loss_pct": rng.choice((5.0, 10.0, 20.0)),
                "delay_ms": rng.choice((0.0, 20.0, 50.0)),
                "jitter_ms": rng.choice((0.0, 20.0, 50.0)),
            }
        elif kind == "clock":
            params = {"offset_s": rng.choice((-1, 1)) * rng.choice((30.0, 120.0, 600.0))}
        faults.append(Fault(kind, group, at, duration, params))
    return faults


class Nemesis:
    def __init__(self, cloud: Cloud, say: Say) -> None:
        self.cloud = cloud
        self.say = say
        self.flapping: dict[str, tuple[float, float, bool]] = {}  # host -> start, period, up
        self.impaired: Lab | None = None  # the lab object holding the loss switch
        self.clocked: set[str] = set()
        self.filled: set[str] = set()
        self.lying: set[str] = set()
        self.tried_power: dict[str, float] = {}
        self.last_traffic = 0.0

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
            if c.init_pid(h) is not None:  # a host powered off has no agent to kill
                c.kill_process(h, "meshha-agent")
        elif f.kind == "bmc-dead":
            c.power_off(h)
            c.bmc_dead(h)
        elif f.kind == "storage-cut":
            c.cut_net(h, "storage")
        elif f.kind == "bmc-lie":
            rep.lied[h] = c.host_pids(h).get("init")
            c.bmc_lie(h, True)
            self.lying.add(h)
            rest = [x for x in c.hosts if x != h]
            c.partition([[h], rest])
            rep.partitions.append((time.time(), 0.0, rest))
        elif f.kind == "bmc-hang":
            c.power_off(h)
            c.bmc_hang(h)
        elif f.kind == "flap":
            self.flapping[h] = (time.time(), f.params["period_s"], True)
            self.tick()
        elif f.kind == "loss":
            self.impaired = c.net
            self.impaired.impair(
                loss_pct=f.params["loss_pct"],
                delay_ms=f.params["delay_ms"],
                jitter_ms=f.params["jitter_ms"],
                seed=rep.seed,
                userspace=True,  # a host's links only (netem would impair one direction)
                hosts=[h],
            )
        elif f.kind == "clock":
            c.set_clock(h, f.params["offset_s"])
            self.clocked.add(h)
        elif f.kind == "disk-full":
            c.fill_disk(h, True)
            self.filled.add(h)
        if f.kind in HEALTHY_KINDS:
            rep.healthy.update(f.hosts)
        else:
            rep.faulted.update(f.hosts)  # a partition's hosts are its minority
        extra = f" {f.params}" if f.params else ""
        self.say(
            f"  +{time.time() - t0:5.1f}s  {f.kind} {','.join(f.hosts)}{extra} for {f.duration_s}s"
        )

    def tick(self) -> None:
        """Move the flapping links: down for a period, up for a period, and so on; while
        a disk is full, keep the segment committing (`traffic`)."""
        if self.filled and time.time() - self.last_traffic >= TRAFFIC_EVERY_S:
            self.last_traffic = time.time()
            self.traffic()
        for h, (start, period, up) in list(self.flapping.items()):
            want_up = int((time.time() - start) / period) % 2 == 1
            if want_up != up and self.cloud.powered_on(h):
                if want_up:
                    self.cloud.restore_net(h, "admin")
                else:
                    self.cloud.cut_net(h, "admin")
                self.flapping[h] = (start, period, want_up)

    def traffic(self) -> None:
        """One harmless entry committed through the leader, so that a host whose disk is
        full has something to write (a segment at rest writes nothing): the operator's
        brake release, sent only while the brake is off (it then changes nothing)."""
        c = self.cloud
        leader = c.leader()
        st = c.try_status(leader, 1.0) if leader else None
        if leader is None or st is None or st["brake"]["on"]:
            return
        with contextlib.suppress(ControlError, OSError):
            call(c.control_path(leader), {"op": "brake_release", "operator": "nemesis"}, 2.0)

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

    def undo(self) -> None:
        """Every fault that needs more than a power-on undone: the loss switch stopped,
        links steady, clocks right, disks emptied, BMCs honest. Safe to call twice."""
        c = self.cloud
        if self.impaired is not None:
            self.impaired.clear_impairment()
            self.impaired = None
        self.flapping.clear()
        for h in self.clocked:
            c.set_clock(h, 0.0)
        for h in self.filled:
            c.fill_disk(h, False)
        self.clocked, self.filled = set(), set()

    def honest_bmcs(self) -> None:
        """The lying BMCs tell the truth again: after the heal, once the segment is quiet
        (a fence in flight when the partition heals still gets the lie, and the host is
        heard again while its BMC still lies, as it would be)."""
        for h in self.lying:
            self.cloud.bmc_lie(h, False)
        self.lying = set()

    def heal_all(self, rep: RunReport, before: int) -> None:
        """Network healed, hosts thawed, BMCs back, links up; then, once the segment has
        finished what it started (every action since the run began has its result), the
        powered-off hosts are powered on: a repaired host comes back after its recovery,
        not in the middle of it (Nova refuses to force a host up while evacuations from
        it are unfinished, see the report). A host powered off later (its watchdog fired
        after the heal) is powered on by `power_back`, from every wait of `converge`."""
        c = self.cloud
        self.undo()
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
            return self.quiet(before)

        with contextlib.suppress(LabTimeout):
            wait_until(quiet, 120, "every action since the run began has a result", poll_s=0.5)
        self.honest_bmcs()
        for h in c.hosts:
            if not c.powered_on(h):
                self.tried_power[h] = time.time()
                c.power_on(h)
        rep.healed_at = time.time()

    def quiet(self, before: int) -> bool:
        """Every action committed after ledger index `before` has its result, and every
        host fenced since and still off has its recovery reported (`alert:recovered:<host>`, committed
        once each of its evacuations is final): a chain has moments with nothing pending
        between two steps (a fence's result, then its disable), and a host powered on in
        one boots its nova-compute before the evacuations from it, which Nova then
        refuses to force up for good (their migration records stay `done`)."""
        c = self.cloud
        reader = next((h for h in c.hosts if c.try_status(h, 1.0)), None)
        if reader is None:
            return False
        rows = [e for i, e in c.ledger(reader) if i > before]
        done = {e["intent"] for e in rows if e["kind"] == "result"}
        if not all(e["intent"] in done for e in rows if e["kind"] == "intent"):
            return False
        ok = {e["intent"] for e in rows if e["kind"] == "result" and e["outcome"] == "ok"}
        fenced = {
            e["host"]
            for e in rows
            if e["kind"] == "intent" and e["action"] == "fence" and e["intent"] in ok
        }
        fenced = {h for h in fenced if not c.powered_on(h)}  # the ones to be powered on
        reported = {
            e["host"]
            for e in rows
            if e["kind"] == "intent" and str(e["intent"]).startswith("alert:recovered:")
        }
        return fenced <= reported

    def power_back(self, rep: RunReport, before: int) -> None:
        """Power on a host found powered off after the heal (its watchdog fired late),
        once the segment is quiet; at most every 15 s per host. A healthy host (one only
        HEALTHY_KINDS touched) must never lose power: that is a violation."""
        c = self.cloud
        off = [h for h in c.hosts if not c.powered_on(h)]
        if not off:
            return
        for h in off:
            if h in rep.healthy and h not in rep.faulted:
                msg = f"healthy host {h} lost power (its watchdog fired)"
                if not any(v.startswith(msg) for v in rep.violations):
                    rep.violations.append(f"{msg}; its agent said: {self.last_words(h)}")
        due = [h for h in off if time.time() - self.tried_power.get(h, 0.0) > 15.0]
        if not due or not self.quiet(before):
            return
        for h in due:
            self.say(f"  {h} is powered off (its watchdog?): powered on again")
            self.tried_power[h] = time.time()
            rep.powered_back.append(h)
            c.power_on(h)

    def last_words(self, h: str, n: int = 12) -> str:
        """The last `n` lines of `h`'s agent log about its watchdog, its isolation and its
        stalls (what a CI failure must show, the lab being gone when it is read)."""
        path = self.cloud.host_dir(h) / "logs" / "meshha-agent.log"
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError as err:
            return f"(no log: {err})"
        keys = ("watchdog", "isolat", "self_fence", "stall", "quorum", "leader")
        picked = [line[:300] for line in lines if any(k in line for k in keys)]
        return " | ".join(picked[-n:]) or "(nothing about its watchdog, isolation or stalls)"

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
            self.tick()
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
        try:
            for f in pending:
                self.hold(rep, t0 + f.at_s)
                self.apply(f, rep, t0)
            self.hold(rep, end)
        except BaseException:
            self.honest_bmcs()
            raise
        finally:
            self.undo()  # never leave the loss switch running, whatever happened
        self.heal_all(rep, before)
        self.say(f"  +{time.time() - t0:5.1f}s  healed; waiting for the lab to converge")
        try:
            self.converge(rep, before)
        except LabTimeout as e:
            rep.violations.append(f"did not converge: {e}")
        self.check_ledgers(rep, t0)
        rep.seconds = round(time.time() - t0, 1)
        return rep

    def converge(self, rep: RunReport, before: int) -> None:
        c = self.cloud

        def step(cond: Callable[[], Any]) -> Callable[[], Any]:
            def f() -> Any:
                self.sample(rep)
                self.power_back(rep, before)
                return cond()

            return f

        wait_until(step(lambda: c.leader(c.hosts)), 180, "every agent up, one leader", poll_s=0.3)
        for h in sorted(rep.lied):
            self.vouch_after_lie(rep, h, before, step)
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

    def lie_fenced(self, rep: RunReport, h: str, before: int) -> bool:
        """Whether `h` was fenced (ok) since ledger index `before` while it kept running:
        the same init as before the fault, or its chassis really powered off (its own
        watchdog, once it was cut off) more than a second after the BMC's "off". Either
        way its BMC's read-back was a lie."""
        c = self.cloud
        rows = [e for i, e in c.ledger(c.leader() or c.hosts[0]) if i > before]
        fences = {
            e["intent"]
            for e in rows
            if e["kind"] == "intent" and e["action"] == "fence" and e["host"] == h
        }
        oks = [
            e["ts"]
            for e in rows
            if e["kind"] == "result" and e["intent"] in fences and e["outcome"] == "ok"
        ]
        if not oks:
            return False
        if c.host_pids(h).get("init") == rep.lied[h]:
            return True
        return self.chassis_off(h, since=min(oks) + 1.0) is not None

    def chassis_off(self, h: str, since: float) -> float | None:
        """The first `set power 0` `h`'s chassis served after `since` (wall clock), from
        its chassis log. After a fence confirmed through a lying BMC (whose own call
        came before that confirmation) only its watchdog sends one."""
        log = self.cloud.state / "bmc" / h / "chassis.log"
        try:
            lines = log.read_text().splitlines()
        except OSError:
            return None
        times = [
            float(w[0])
            for w in (line.split() for line in lines)
            if w[1:4] == ["set", "power", "0"] and float(w[0]) >= since
        ]
        return min(times) if times else None

    def vouch_after_lie(
        self, rep: RunReport, h: str, before: int, step: Callable[[Callable[[], Any]], Any]
    ) -> None:
        """A host fenced through a lying BMC and heard again: the segment must commit a
        `bmc-lied` alert naming it and keep it out of service; then the nemesis vouches
        for it as an operator would (maintenance on, then off), which returns it."""
        c = self.cloud

        def lie_alert() -> dict[str, Any] | None:
            rows = [e for i, e in c.ledger(c.leader() or c.hosts[0]) if i > before]
            return next(
                (
                    e
                    for e in rows
                    if e["kind"] == "intent" and str(e["intent"]).startswith(f"alert:bmc-lied:{h}:")
                ),
                None,
            )

        if not self.lie_fenced(rep, h, before):
            # No fence the nemesis can tell went through the lie. Its watchdog may still
            # have powered it off within a second of the BMC's "off" (then whether that
            # "off" was a lie is a matter of the alive mark's second): the segment may
            # name a lie, and an operator who gets that alert vouches. Either the alert
            # or the host back in service ends the wait.
            def settled() -> Any:
                svc = self.service(h)
                return lie_alert() or (svc is not None and _in_service(svc))

            with contextlib.suppress(LabTimeout):
                wait_until(step(settled), LIE_ALERT_S, f"{h} back, or a lie named", poll_s=0.5)
            if lie_alert() is None:
                self.say(f"  {h}: its BMC lied but no fence went through it (nothing to vouch for)")
                return
            self.say(f"  {h}: a lie named where the nemesis saw a power-off at the fence")
        try:
            wait_until(step(lie_alert), LIE_ALERT_S, f"the bmc-lied alert about {h}", poll_s=0.5)
        except LabTimeout as e:
            rep.violations.append(f"{h} fenced through a lying BMC, heard again: {e}")
            return
        svc = self.service(h)
        if svc is not None and svc.status == "enabled" and not svc.is_forced_down:
            rep.violations.append(f"{h} back in service after a BMC lie before an operator vouched")
        # What the alert asks of an operator: check the host, then vouch for it. Its
        # nova-compute never restarted, so Nova still holds the evacuations from it as
        # `done` and refuses to force it up: restart it first (its start-up cleans them).
        self.say(
            f"  {h}: the lie was named (bmc-lied alert); restart its nova-compute, "
            "then vouch: maintenance on, off"
        )
        c.kill_process(h, "nova-compute")
        for on in (True, False):
            leader = wait_until(step(lambda: c.leader(c.hosts)), 60, "a leader", poll_s=0.3)
            req = {"op": "maintenance", "host": h, "on": on, "reason": "nemesis: operator vouches"}
            call(c.control_path(leader), req, 10.0)
        rep.vouched_at = time.time()

    def service(self, h: str) -> Any:
        conn = self.cloud.connect()
        return next(
            (s for s in conn.compute.services() if s.binary == "nova-compute" and s.host == h), None
        )

    def check_lies(self, rep: RunReport, rows: list[dict[str, Any]]) -> None:
        """After a lie: the returning host reconciled, and was enabled only after the vouch."""
        for h in sorted(rep.lied):
            if not any(
                e["kind"] == "intent" and str(e["intent"]).startswith(f"alert:bmc-lied:{h}:")
                for e in rows
            ):
                continue  # no fence went through the lie (see vouch_after_lie)
            if not any(e["kind"] == "reconcile" and e["host"] == h for e in rows):
                rep.violations.append(f"{h} came back after a BMC lie and was not reconciled")
            early = [
                e["intent"]
                for e in rows
                if e["kind"] == "intent"
                and e["action"] == "enable"
                and e["host"] == h
                and e["ts"] < rep.vouched_at - 1.0
            ]
            if early:
                rep.violations.append(f"{h} enabled after a BMC lie before the vouch: {early}")
            if not any(h in json.dumps(a) and "BMC" in json.dumps(a) for a in self.cloud.alerts()):
                rep.violations.append(f"no alert delivered about {h}'s lying BMC")

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

        def same() -> tuple[list[dict[str, Any]]] | None:
            rows = c.agreed_ledger(c.hosts)  # a run may commit nothing: () is an answer
            return ([e for e in rows if e["ts"] >= t0],) if rows else None

        try:
            (rows,) = wait_until(same, 60, "every ledger identical", poll_s=0.5)
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
        self.check_lies(rep, rows)
        fenced: set[str] = set()
        fence_intents: dict[str, str] = {}
        enable_intents: dict[str, str] = {}
        for e in rows:
            if e["kind"] == "intent" and e["action"] == "fence":
                fence_intents[e["intent"]] = e["host"]
                if e["host"] not in rep.faulted:
                    rep.violations.append(
                        f"healthy host {e['host']} fenced: {e['intent']}; its agent said: "
                        f"{self.last_words(e['host'])}"
                    )
                elif rep.healed_at and e["ts"] > rep.healed_at + 1.0:
                    rep.violations.append(
                        f"{e['host']} fenced again after it was repaired: {e['intent']} "
                        f"({e['ts'] - rep.healed_at:.1f}s after the heal)"
                    )
            if e["kind"] == "intent" and e["action"] == "enable_compute":
                enable_intents[e["intent"]] = e["host"]
            if e["kind"] == "result" and e["intent"] in fence_intents and e["outcome"] == "ok":
                fenced.add(fence_intents[e["intent"]])
            if e["kind"] == "fenced":
                fenced.add(e["host"])
            # fenced until it is back in service (meshha.raft.state: enable_compute ok),
            # not when it is heard again: its episode's evacuations go on meanwhile
            if e["kind"] == "result" and e["intent"] in enable_intents and e["outcome"] == "ok":
                fenced.discard(enable_intents[e["intent"]])
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
