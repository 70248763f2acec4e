"""Scenarios as data: small text files of steps, run against a simulated segment.

    # what this scenario proves (the first comment block is its description)
    segment hosts=5 reserved=host5 vms=2 profile=lan-fast
    wait-leader
    tick 3s
    power-off host2
    expect verdict host2 failed within 5s
    expect evacuated host2 within 30s

The language (verbs, arguments, `segment` settings) is `meshha.sim.script`, shared with
the decide data tests; `STEPS` below is the part the simulator runs. Every run ends with a
healed phase (all faults cleared, machines powered on) that must converge, and then the
safety invariants are checked. A failing run names its seed.

Below the steps, after a `----` line, each file keeps its expected timeline for
`GOLDEN_SEED` (observations left out): tests/sim/test_scenarios.py compares it byte for
byte, `meshctl sim --scenario NAME --rewrite` regenerates it after a deliberate change
(review the diff: it is the behaviour change).
"""

from __future__ import annotations

import difflib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import trio

from meshha.sim import host_faults, report, script
from meshha.sim.fakes import LIBVIRT_DAEMONS
from meshha.sim.script import ScriptError, Step, percent, seconds
from meshha.sim.world import EPOCH, FLAVORS, Sim, SimSpec, SimTimeout

SCENARIO_DIR = "scenarios"
GOLDEN_SEED = 1

ScenarioError = ScriptError


@dataclass
class Scenario:
    name: str
    description: str
    spec: SimSpec
    steps: list[Step]
    heal: bool = True
    script: script.Script | None = None
    path: Path | None = None  # the file it was loaded from


@dataclass
class Outcome:
    scenario: str
    seed: int
    ok: bool
    failure: str = ""
    violations: list[str] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)


def parse(text: str, name: str = "<text>") -> Scenario:
    sc = script.parse(text, name, STEPS)
    spec, heal, steps = SimSpec(), True, []
    for step in sc.steps:
        if step.verb == "segment":
            try:
                spec = SimSpec(**script.segment_options(step.args))
            except ScriptError as err:
                raise ScriptError(f"{name}:{step.line}: {err}") from None
        elif step.verb == "no-heal":
            heal = False
        else:
            steps.append(step)
    # A host-local fault needs the run to model what it touches (meshha.sim.host_faults).
    verbs = {s.verb for s in steps}
    spec = replace(spec, clocks="clock-step" in verbs, disks="disk-full" in verbs)
    return Scenario(name, sc.description, spec, steps, heal, sc)


# -- running ---------------------------------------------------------------------------


class Runner:
    def __init__(self, sc: Scenario, sim: Sim) -> None:
        self.sc, self.sim = sc, sim
        self.marks: dict[str, float] = {}
        self.last_leader: str | None = None

    def host(self, word: str) -> str:
        if word == "old-leader":
            if self.last_leader is None:
                raise ScenarioError(f"{self.sc.name}: 'old-leader' before any leader was noted")
            return self.last_leader
        if word == "leader":
            leader = self.sim.raft.leader
            if leader is None:
                raise SimTimeout("step names the leader but there is none")
            return leader
        if word not in self.sim.cloud.machines:
            raise ScenarioError(f"{self.sc.name}: no host {word!r}")
        return word

    def sim_figure(self, key: str, value: float) -> None:
        self.marks[f"figure:{key}"] = value

    def hosts(self, word: str) -> list[str]:
        """In the order written (a set's order would follow PYTHONHASHSEED)."""
        return list(dict.fromkeys(self.host(h) for h in script.names(word)))

    async def run(self, sim: Sim) -> None:
        for step in self.sc.steps:
            try:
                await STEPS[step.verb].run(self, step)
            except SimTimeout as err:
                raise SimTimeout(f"{self.sc.name}:{step.line}: {step.text}: {err}") from None
            except (IndexError, ValueError) as err:
                raise ScenarioError(f"{self.sc.name}:{step.line}: malformed step: {err}") from None
        if self.sc.heal:
            sim.heal()
            await sim.converge()


Handler = Callable[[Runner, Step], Awaitable[None]]


async def _nothing(r: Runner, s: Step) -> None:
    """`segment` and `no-heal` are read by `parse`."""


async def _tick(r: Runner, s: Step) -> None:
    await trio.sleep(seconds(s.args[0]))


async def _wait_leader(r: Runner, s: Step) -> None:
    within = seconds(s.args[0]) if s.args else 10.0
    await r.sim.wait_for(lambda: r.sim.raft.leader is not None, within, "a leader")
    r.last_leader = r.sim.raft.leader


async def _power_off(r: Runner, s: Step) -> None:
    r.last_leader = r.sim.raft.leader
    for h in r.hosts(s.args[0]):
        r.marks.setdefault(f"off:{h}", trio.current_time())
        r.sim.power_off(h)


async def _power_on(r: Runner, s: Step) -> None:
    for h in r.hosts(s.args[0]):
        r.sim.power_on(h)


async def _hang(r: Runner, s: Step) -> None:
    r.last_leader = r.sim.raft.leader
    for h in r.hosts(s.args[0]):
        r.marks.setdefault(f"off:{h}", trio.current_time())
        r.sim.hang(h)


def _nic(up: bool) -> Handler:
    async def nic(r: Runner, s: Step) -> None:
        for h in r.hosts(s.args[0]):
            for net in script.names(s.args[1]):
                r.sim.nic(h, net, up)

    return nic


def _bmc(alive: bool) -> Handler:
    async def bmc(r: Runner, s: Step) -> None:
        for h in r.hosts(s.args[0]):
            r.sim.bmc(h, alive)

    return bmc


async def _bmc_lies(r: Runner, s: Step) -> None:
    for h in r.hosts(s.args[0]):
        r.sim.fault(f"bmc-lies {h}")
        r.sim.cloud.machines[h].bmc_lies = True


async def _restart_agents(r: Runner, s: Step) -> None:
    r.last_leader = r.sim.raft.leader
    r.sim.restart_agents(r.hosts(s.args[0]) if s.args else sorted(r.sim.cloud.machines))


async def _bmc_hang(r: Runner, s: Step) -> None:
    for h in r.hosts(s.args[0]):
        r.sim.bmc_hang(h)


async def _flap(r: Runner, s: Step) -> None:
    """`flap HOST NET every 2s for 60s`: the NIC goes down and up, `every` apart, for
    `for`, and ends up."""
    h, net = r.host(s.args[0]), s.args[1]
    opts = dict(zip(s.args[2::2], s.args[3::2], strict=True))
    every, total = seconds(opts["every"]), seconds(opts["for"])
    r.sim.fault(f"flap {h} {net} every {every:g}s for {total:g}s")
    await flap(r.sim, h, net, every, total)


async def flap(sim: Sim, host: str, net: str, every_s: float, for_s: float) -> None:
    """One fault (recorded by the caller): the NIC toggles, then ends up."""
    nics = sim.cloud.machines[host].nics
    end, up = trio.current_time() + for_s, False
    while trio.current_time() < end:
        nics[net] = up
        up = not up
        await trio.sleep(every_s)
    nics[net] = True


async def _clock_step(r: Runner, s: Step) -> None:
    for h in r.hosts(s.args[0]):
        host_faults.clock_step(r.sim, h, script.signed_seconds(s.args[1]))


def _disk(full: bool) -> Handler:
    async def disk(r: Runner, s: Step) -> None:
        for h in r.hosts(s.args[0]):
            host_faults.disk(r.sim, h, full)

    return disk


async def _stall(r: Runner, s: Step) -> None:
    r.last_leader = r.sim.raft.leader
    for h in r.hosts(s.args[0]):
        host_faults.stall(r.sim, h, seconds(s.args[1]))


async def _kill_agent(r: Runner, s: Step) -> None:
    r.last_leader = r.sim.raft.leader
    for h in r.hosts(s.args[0]):
        host_faults.kill_agent(r.sim, h, seconds(s.args[1]))


async def _partition(r: Runner, s: Step) -> None:
    groups = [set(r.hosts(g.strip())) for g in " ".join(s.args).split("|")]
    r.sim.partition(groups)


async def _heal(r: Runner, s: Step) -> None:
    r.sim.heal()


async def _loss(r: Runner, s: Step) -> None:
    q = r.sim.net.quality
    q.loss = percent(s.args[0])
    it = iter(s.args[1:])
    for k in it:
        v = next(it)
        if k == "jitter":
            q.jitter_s = seconds(v)
        elif k == "delay":
            q.delay_s = seconds(v)
        elif k == "dup":
            q.duplicate = percent(v)
        else:
            raise ScenarioError(f"loss: unknown setting {k!r}")
    r.sim.fault(f"loss {' '.join(s.args)}")


async def _maintenance(r: Runner, s: Step) -> None:
    await r.sim.maintenance(r.host(s.args[1]), s.args[0] == "on")


async def _crash_vm(r: Runner, s: Step) -> None:
    r.sim.fault(f"crash-vm {s.args[0]}")
    r.sim.cloud.crash_vm(s.args[0])


async def _process_dead(r: Runner, s: Step) -> None:
    h, name = r.host(s.args[0]), s.args[1]
    m = r.sim.cloud.machines[h]
    m.processes[name] = False
    if "restart-fails" in s.args:
        m.restart_fails.add(name)
    if name in LIBVIRT_DAEMONS:
        r.sim.cloud.hypervisor_connection(h, up=False)
    r.sim.fault(f"process-dead {h} {name} {' '.join(s.args[2:])}")


async def _nova(r: Runner, s: Step) -> None:
    r.sim.cloud.nova_up = s.args[0] == "up"
    r.sim.fault(f"nova {s.args[0]}")


async def _boot(r: Runner, s: Step) -> None:
    flavor = FLAVORS[s.args[1] if len(s.args) > 1 else "m1.small"]
    server = r.sim.cloud.schedule(s.args[0], flavor)
    r.sim.fault(f"boot {s.args[0]} -> {server.host}")


# -- expectations: a condition to wait for (`within`, default 10 s) ---------------------

Condition = Callable[[Runner, list[str]], Callable[[], bool]]


def _verdict(r: Runner, a: list[str]) -> Callable[[], bool]:
    host, kind = r.host(a[0]), a[1]
    nets = tuple(script.names(a[2])) if len(a) > 2 else None

    def holds() -> bool:
        st = r.sim.live_state()
        if st is None:
            return False
        v = st.verdicts[host]
        return bool(v.kind == kind and (nets is None or tuple(v.networks) == nets))

    return holds


def _fenced(r: Runner, a: list[str]) -> Callable[[], bool]:
    host = r.host(a[0])
    method = script.tail_list(a, "by")
    return lambda: (
        (st := r.sim.live_state()) is not None
        and host in st.fenced
        and (method is None or st.fenced[host].method in method)
    )


def _evacuated(r: Runner, a: list[str]) -> Callable[[], bool]:
    host = r.host(a[0])
    cloud = r.sim.cloud

    def holds() -> bool:
        vms = [s for s in cloud.servers.values() if s.id.startswith(f"{host}-")]
        if not vms:  # nothing to evacuate: true only for a host that never had any
            return r.sim.segment.host(host).role == "reserved"
        return all(
            s.host != host and s.status == "ACTIVE" and cloud.running.get(s.id) == {s.host}
            for s in vms
        )

    return holds


def _actions_on(r: Runner, host: str, kinds: tuple[str, ...]) -> list[Any]:
    return [a for a in r.sim.cloud.actions if a.host == host and a.action in kinds]


def _live_migrated(r: Runner, a: list[str]) -> Callable[[], bool]:
    host = r.host(a[0])
    return lambda: (
        bool(_actions_on(r, host, ("live_migrate",)))
        and all(s.host != host for s in r.sim.cloud.servers.values() if s.id.startswith(f"{host}-"))
    )


def _alert(r: Runner, a: list[str]) -> Callable[[], bool]:
    return lambda: any(a[0] in al.subject or a[0] in al.body for al in r.sim.cloud.alerts)


def _leader_changed(r: Runner, a: list[str]) -> Callable[[], bool]:
    before = r.last_leader
    return lambda: r.sim.raft.leader is not None and r.sim.raft.leader != before


def _vm_running(r: Runner, a: list[str]) -> Callable[[], bool]:
    cloud, vm = r.sim.cloud, a[0]
    return lambda: bool(cloud.running.get(vm)) and cloud.servers[vm].status == "ACTIVE"


def _vm_on(r: Runner, a: list[str]) -> Callable[[], bool]:
    cloud, vm, host = r.sim.cloud, a[0], r.host(a[1])
    return lambda: cloud.servers[vm].host == host and cloud.running.get(vm) == {host}


def _self_fenced(r: Runner, a: list[str]) -> Callable[[], bool]:
    host = r.host(a[0])
    return lambda: bool(_actions_on(r, host, ("self_fence",)))


def _service_disabled(r: Runner, a: list[str]) -> Callable[[], bool]:
    host = r.host(a[0])
    return lambda: bool(r.sim.cloud.services[host]["disabled"])


def _service_enabled(r: Runner, a: list[str]) -> Callable[[], bool]:
    host = r.host(a[0])
    return lambda: not r.sim.cloud.services[host]["disabled"]


def _vms_on(r: Runner, a: list[str]) -> Callable[[], bool]:
    host, n = r.host(a[0]), int(a[1])
    cloud = r.sim.cloud
    return lambda: sum(1 for s in cloud.servers.values() if s.host == host) == n


def _reconciled(r: Runner, a: list[str]) -> Callable[[], bool]:
    host = r.host(a[0])
    return lambda: any(
        e["kind"] == "reconcile" and e["host"] == host and e["ok"] for e in r.sim.raft.log
    )


def _brake(r: Runner, a: list[str]) -> Callable[[], bool]:
    on = a[0] == "on"
    return lambda: (st := r.sim.live_state()) is not None and bool(st.brake.on) == on


def _expect(cond: Condition) -> Handler:
    async def expect(r: Runner, s: Step) -> None:
        holds = cond(r, s.args)
        within = 10.0 if s.within is None else s.within
        what = " ".join(s.args)
        if s.verb == "expect verdict" and s.args[1] == "failed":
            host = r.host(s.args[0])
            await r.sim.wait_for(holds, within, f"verdict {what}")
            if f"off:{host}" in r.marks:
                r.sim_figure(f"detect_{host}_s", trio.current_time() - r.marks[f"off:{host}"])
            return
        await r.sim.wait_for(holds, within, f"{s.verb.split()[1]} {what}")

    return expect


RECOVERY = (
    "fence",
    "force_down",
    "disable",
    "evacuate",
    "live_migrate",
    "cold_migrate",
    "start",
    "stop",
    "hard_reboot",
)
ACTION_KINDS = {
    "no-action": RECOVERY,
    "no-fence": ("fence",),
    "no-evacuation": ("evacuate",),
}


async def _expect_none(r: Runner, s: Step) -> None:
    """Hold for `within` (default 10 s) and fail the moment the thing happens."""
    sim, what, args = r.sim, s.verb.split()[1], s.args
    start_actions, start_log, start_alerts = (
        len(sim.cloud.actions),
        len(sim.raft.log),
        len(sim.cloud.alerts),
    )

    def happened() -> str | None:
        if what == "no-alert":
            for al in sim.cloud.alerts[start_alerts:]:
                if args[0] in al.subject or args[0] in al.body:
                    return f"alert {al.subject!r}"
            return None
        if what in ACTION_KINDS:
            hosts = r.hosts(args[0]) if args else list(sim.cloud.machines)
            for act in sim.cloud.actions[start_actions:]:
                if act.host in hosts and act.action in ACTION_KINDS[what]:
                    return f"{act.action} on {act.host} by {act.actor} at t={act.t:.3f}"
            return None
        if what == "no-verdict":
            verdicts = script.names(args[0]) if args else ["failed", "degraded"]
            for e in sim.raft.log[start_log:]:
                if e["kind"] == "verdict" and e["verdict"] in verdicts:
                    return f"verdict {e['host']} {e['verdict']}: {e['reason']}"
            return None
        side = r.hosts(args[0])
        for e in sim.raft.log[start_log:]:
            if e["by"] in side:
                return f"{e['kind']} committed from {e['by']}"
        return None

    end = trio.current_time() + (10.0 if s.within is None else s.within)
    while trio.current_time() < end:
        bad = happened()
        if bad:
            raise SimTimeout(f"expected {what} {' '.join(args)}, but: {bad}")
        await trio.sleep(0.05)


STEPS: dict[str, script.Verb[Handler]] = script.table(
    {
        "segment": _nothing,
        "no-heal": _nothing,
        "tick": _tick,
        "wait-leader": _wait_leader,
        "power-off": _power_off,
        "power-on": _power_on,
        "hang": _hang,
        "nic-down": _nic(False),
        "nic-up": _nic(True),
        "bmc-dead": _bmc(False),
        "bmc-alive": _bmc(True),
        "bmc-lies": _bmc_lies,
        "restart-agents": _restart_agents,
        "bmc-hang": _bmc_hang,
        "flap": _flap,
        "clock-step": _clock_step,
        "disk-full": _disk(True),
        "disk-ok": _disk(False),
        "stall": _stall,
        "kill-agent": _kill_agent,
        "partition": _partition,
        "heal": _heal,
        "loss": _loss,
        "maintenance": _maintenance,
        "crash-vm": _crash_vm,
        "process-dead": _process_dead,
        "nova": _nova,
        "boot": _boot,
        "expect verdict": _expect(_verdict),
        "expect fenced": _expect(_fenced),
        "expect evacuated": _expect(_evacuated),
        "expect live-migrated": _expect(_live_migrated),
        "expect alert": _expect(_alert),
        "expect leader-changed": _expect(_leader_changed),
        "expect vm-running": _expect(_vm_running),
        "expect vm-on": _expect(_vm_on),
        "expect self-fenced": _expect(_self_fenced),
        "expect service-disabled": _expect(_service_disabled),
        "expect service-enabled": _expect(_service_enabled),
        "expect reconciled": _expect(_reconciled),
        "expect brake": _expect(_brake),
        "expect vms-on": _expect(_vms_on),
        "expect no-action": _expect_none,
        "expect no-fence": _expect_none,
        "expect no-evacuation": _expect_none,
        "expect no-alert": _expect_none,
        "expect no-verdict": _expect_none,
        "expect no-commit-from": _expect_none,
    }
)


# -- files and the timeline ------------------------------------------------------------


def scenario_files() -> dict[str, Path]:
    root = resources.files("meshha.sim") / SCENARIO_DIR
    return {Path(str(p)).stem: Path(str(p)) for p in root.iterdir() if str(p).endswith(".txt")}


def load(name_or_path: str) -> Scenario:
    files = scenario_files()
    path = files.get(name_or_path) or Path(name_or_path)
    if not path.exists():
        raise ScenarioError(f"no scenario {name_or_path!r}; known: {', '.join(sorted(files))}")
    sc = parse(path.read_text(encoding="utf-8"), path.stem)
    sc.path = path
    return sc


# -- the expected timeline below the steps ------------------------------------------------


def trace(out: Outcome) -> list[str]:
    """What a scenario file keeps below `----`: the readable timeline without the
    observations (the noisiest part), then the summary line."""
    s = report.summary(out.timeline, out.violations, out.failure, out.seed)
    return [*report.lines(out.timeline, observations=False), report.summary_line(s)]


def trace_header(sc: Scenario) -> str:
    return f"seed {GOLDEN_SEED}, observations left out; regenerate: meshctl sim --rewrite --scenario {sc.name}"


def trace_diff(sc: Scenario, out: Outcome) -> str:
    """'' when the run matches the trace kept in the file, else a unified diff."""
    expected = sc.script.expected if sc.script else None
    if expected is None:
        return f"{sc.name}: no expected timeline below the steps (a `----` line)"
    got = trace(out)
    if got == expected:
        return ""
    return "\n".join(difflib.unified_diff(expected, got, "expected", "this run", n=2, lineterm=""))


def rewrite(sc: Scenario, out: Outcome) -> Path:
    """Write this run's trace below the steps of the scenario's file."""
    if sc.path is None or sc.script is None:
        raise ScenarioError(f"{sc.name}: not loaded from a file")
    if out.seed != GOLDEN_SEED or not out.ok:
        raise ScenarioError(
            f"{sc.name}: the expected timeline is that of a passing run with seed {GOLDEN_SEED}"
        )
    sc.path.write_text(script.with_expected(sc.script, trace_header(sc), trace(out)), "utf-8")
    return sc.path


def timeline(sim: Sim) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [
        {"t": round(t, 3), "type": "fault", "what": w} for t, w in sim.faults
    ]
    for t, e in zip(sim.raft.commit_times, sim.raft.log, strict=True):
        row: dict[str, Any] = {"t": round(t, 3), "type": e["kind"], "by": e["by"]}
        for k in (
            "host",
            "network",
            "reachable",
            "verdict",
            "networks",
            "intent",
            "action",
            "vm",
            "target",
            "outcome",
            "reason",
            "detail",
            "method",
            "on",
            "hosts",
            "role",
            "event",
            "process",
            "survives",
            "k",
        ):
            if k in e and e[k] not in (None, "", [], {}):
                row[k] = e[k]
        if "since" in e:
            row["since"] = round(e["since"] - EPOCH, 3)
        if e["kind"] == "reconcile":
            booted = e.get("booted_at")
            row.update(ok=e["ok"], destroyed=e["destroyed"], episode=e["episode"])
            row["booted_at"] = None if booted is None else round(booted - EPOCH, 3)
        rows.append(row)
    rows.sort(key=lambda r: (r["t"], r["type"] != "fault"))
    return rows


def _leaves(group: BaseExceptionGroup[SimTimeout]) -> list[BaseException]:
    """The exceptions of a group, out of the nested groups trio's nurseries make."""
    out: list[BaseException] = []
    for e in group.exceptions:
        out += _leaves(e) if isinstance(e, BaseExceptionGroup) else [e]
    return out


async def run_scenario(sc: Scenario, seed: int) -> Outcome:
    sim = Sim(sc.spec, seed)
    runner = Runner(sc, sim)
    failure = ""
    try:
        await sim.run(runner.run)
    except* SimTimeout as group:
        failure = "; ".join(str(e) for e in _leaves(group))
    violations = sim.check_invariants(converged=sc.heal and not failure)
    figures = {k[7:]: v for k, v in runner.marks.items() if k.startswith("figure:")}
    return Outcome(
        sc.name,
        seed,
        ok=not failure and not violations,
        failure=failure,
        violations=violations,
        timeline=timeline(sim),
        figures=figures,
    )
