"""Scenarios as data: small text files of steps, run against a simulated segment.

    # what this scenario proves (the first comment block is its description)
    segment hosts=5 reserved=host5 vms=2 profile=lan-fast
    wait-leader
    tick 3s
    power-off host2
    expect verdict host2 failed within 5s
    expect evacuated host2 within 30s

Every run ends with a healed phase (all faults cleared, machines powered on) that must
converge, and then the safety invariants are checked. A failing run names its seed.
Steps: see STEPS below; `leader` may stand for the current leader's host name.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import trio

from meshha.config.model import Policy, Recovery
from meshha.sim.world import EPOCH, Sim, SimSpec, SimTimeout

SCENARIO_DIR = "scenarios"


class ScenarioError(Exception):
    """The scenario file itself is wrong (not the system under test)."""


@dataclass
class Step:
    line: int
    words: list[str]


@dataclass
class Scenario:
    name: str
    description: str
    spec: SimSpec
    steps: list[Step]
    heal: bool = True


@dataclass
class Outcome:
    scenario: str
    seed: int
    ok: bool
    failure: str = ""
    violations: list[str] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)


def _seconds(word: str) -> float:
    w = word.strip()
    for suffix, mult in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if w.endswith(suffix) and w[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(w[: -len(suffix)]) * mult
    raise ScenarioError(f"not a duration: {word!r} (use 500ms, 3s, 2m, 1h)")


def _percent(word: str) -> float:
    if not word.endswith("%"):
        raise ScenarioError(f"not a percentage: {word!r}")
    return float(word[:-1]) / 100.0


def parse(text: str, name: str = "<text>") -> Scenario:
    desc: list[str] = []
    steps: list[Step] = []
    spec = SimSpec()
    heal = True
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("#"):
            if not steps and spec == SimSpec():
                desc.append(line.lstrip("# ").rstrip())
            continue
        if not line:
            continue
        words = shlex.split(line)
        if words[0] == "segment":
            spec = _segment(words[1:], name, no)
        elif words[0] == "no-heal":
            heal = False
        else:
            if words[0] not in STEPS:
                raise ScenarioError(f"{name}:{no}: unknown step {words[0]!r}")
            steps.append(Step(no, words))
    return Scenario(name, " ".join(d for d in desc if d), spec, steps, heal)


def _segment(words: list[str], name: str, no: int) -> SimSpec:
    spec = SimSpec()
    rec: dict[str, Any] = {}
    pol: dict[str, Any] = {}
    for w in words:
        key, _, val = w.partition("=")
        if key == "hosts":
            spec.hosts = int(val)
        elif key == "voters":
            spec.voters = int(val)
        elif key == "reserved":
            spec.reserved = tuple(v for v in val.split(",") if v)
        elif key == "vms":
            spec.vms_per_host = int(val)
        elif key == "flavor":
            spec.flavor = val
        elif key == "profile":
            spec.profile = val
        elif key == "brake":
            spec.brake_fraction = float(val)
        elif key == "brake-window":
            spec.brake_window_s = _seconds(val)
        elif key == "watchdog":
            spec.watchdog = val == "true"
        elif key == "fanout":
            spec.fanout = int(val)
        elif key == "host-size":
            v, r, d = (int(x) for x in val.split(","))
            spec.host_size = (v, r, d)
        elif key == "networks":
            spec.networks = dict(p.split(":") for p in val.split(","))
        elif key in (
            "process_restart_failure",
            "allow_self_fence_proof",
            "max_parallel_evacuations",
        ):
            rec[key] = {"true": True, "false": False}.get(val, int(val) if val.isdigit() else val)
        elif key in ("default_ha", "vm_restart_limit"):
            pol[key] = {"true": True, "false": False}.get(val, int(val) if val.isdigit() else val)
        elif key.startswith("timing."):
            spec.timings[key[7:]] = float(val)
        else:
            raise ScenarioError(f"{name}:{no}: unknown segment setting {key!r}")
    spec.recovery = replace(Recovery(), **rec)
    spec.policy = replace(Policy(), **pol)
    return spec


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

    def hosts(self, word: str) -> set[str]:
        return {self.host(h) for h in word.split(",") if h}

    async def run(self, sim: Sim) -> None:
        for step in self.sc.steps:
            try:
                await STEPS[step.words[0]](self, step.words[1:])
            except SimTimeout as err:
                raise SimTimeout(
                    f"{self.sc.name}:{step.line}: {' '.join(step.words)}: {err}"
                ) from None
            except (IndexError, ValueError) as err:
                raise ScenarioError(f"{self.sc.name}:{step.line}: malformed step: {err}") from None
        if self.sc.heal:
            sim.heal()
            await sim.converge()


def _within(args: list[str], default: float = 10.0) -> tuple[list[str], float]:
    if len(args) >= 2 and args[-2] == "within":
        return args[:-2], _seconds(args[-1])
    return args, default


async def _tick(r: Runner, a: list[str]) -> None:
    await trio.sleep(_seconds(a[0]))


async def _wait_leader(r: Runner, a: list[str]) -> None:
    await r.sim.wait_for(
        lambda: r.sim.raft.leader is not None, _seconds(a[0]) if a else 10.0, "a leader"
    )
    r.last_leader = r.sim.raft.leader


async def _power_off(r: Runner, a: list[str]) -> None:
    r.last_leader = r.sim.raft.leader
    for h in r.hosts(a[0]):
        r.marks.setdefault(f"off:{h}", trio.current_time())
        r.sim.power_off(h)


async def _power_on(r: Runner, a: list[str]) -> None:
    for h in r.hosts(a[0]):
        r.sim.power_on(h)


async def _hang(r: Runner, a: list[str]) -> None:
    r.last_leader = r.sim.raft.leader
    for h in r.hosts(a[0]):
        r.marks.setdefault(f"off:{h}", trio.current_time())
        r.sim.hang(h)


async def _nic(r: Runner, a: list[str], up: bool) -> None:
    for h in r.hosts(a[0]):
        for net in a[1].split(","):
            r.sim.nic(h, net, up)


async def _bmc(r: Runner, a: list[str], alive: bool) -> None:
    for h in r.hosts(a[0]):
        r.sim.bmc(h, alive)


async def _partition(r: Runner, a: list[str]) -> None:
    groups = [r.hosts(g.strip()) for g in " ".join(a).split("|")]
    r.sim.partition(groups)


async def _heal(r: Runner, a: list[str]) -> None:
    r.sim.heal()


async def _loss(r: Runner, a: list[str]) -> None:
    q = r.sim.net.quality
    q.loss = _percent(a[0])
    it = iter(a[1:])
    for k in it:
        v = next(it)
        if k == "jitter":
            q.jitter_s = _seconds(v)
        elif k == "delay":
            q.delay_s = _seconds(v)
        elif k == "dup":
            q.duplicate = _percent(v)
    r.sim.fault(f"loss {a[0]} {' '.join(a[1:])}")


async def _maintenance(r: Runner, a: list[str]) -> None:
    await r.sim.maintenance(r.host(a[1]), a[0] == "on")


async def _crash_vm(r: Runner, a: list[str]) -> None:
    r.sim.fault(f"crash-vm {a[0]}")
    r.sim.cloud.crash_vm(a[0])


async def _process_dead(r: Runner, a: list[str]) -> None:
    h, name = r.host(a[0]), a[1]
    m = r.sim.cloud.machines[h]
    m.processes[name] = False
    if "restart-fails" in a:
        m.restart_fails.add(name)
    r.sim.fault(f"process-dead {h} {name} {' '.join(a[2:])}")


async def _nova(r: Runner, a: list[str]) -> None:
    r.sim.cloud.nova_up = a[0] == "up"
    r.sim.fault(f"nova {a[0]}")


def _verdict_is(r: Runner, host: str, kind: str, nets: list[str]) -> bool:
    st = r.sim.live_state()
    if st is None:
        return False
    v = st.verdicts[host]
    return v.kind == kind and all(n in v.networks for n in nets)


def _evacuated(r: Runner, host: str) -> bool:
    cloud = r.sim.cloud
    vms = [s for s in cloud.servers.values() if s.id.startswith(f"{host}-")]
    if not vms:  # nothing to evacuate: true only for a host that never had any
        return r.sim.segment.host(host).role == "reserved"
    return all(
        s.host != host and s.status == "ACTIVE" and cloud.running.get(s.id) == {s.host} for s in vms
    )


def _actions_on(r: Runner, host: str, kinds: tuple[str, ...]) -> list[Any]:
    return [a for a in r.sim.cloud.actions if a.host == host and a.action in kinds]


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


async def _expect(r: Runner, a: list[str]) -> None:
    args, within = _within(a)
    what = args[0]
    sim = r.sim
    cond: Callable[[], bool]
    if what == "verdict":
        host, kind, nets = r.host(args[1]), args[2], args[3:]
        cond = lambda: _verdict_is(r, host, kind, nets)
        if kind == "failed" and f"off:{host}" in r.marks:
            await sim.wait_for(cond, within, f"verdict {host} {kind}")
            r.sim_figure(f"detect_{host}_s", trio.current_time() - r.marks[f"off:{host}"])
            return
    elif what == "fenced":
        host = r.host(args[1])
        method = args[3] if len(args) > 3 and args[2] == "by" else None
        cond = lambda: (
            (st := sim.live_state()) is not None
            and host in st.fenced
            and (method is None or st.fenced[host].method == method)
        )
    elif what == "evacuated":
        host = r.host(args[1])
        cond = lambda: _evacuated(r, host)
    elif what == "live-migrated":
        host = r.host(args[1])
        cond = lambda: (
            bool(_actions_on(r, host, ("live_migrate",)))
            and all(
                s.host != host for s in sim.cloud.servers.values() if s.id.startswith(f"{host}-")
            )
        )
    elif what == "alert":
        text = args[1]
        cond = lambda: any(text in a.subject or text in a.body for a in sim.cloud.alerts)
    elif what == "leader-changed":
        before = r.last_leader
        cond = lambda: sim.raft.leader is not None and sim.raft.leader != before
    elif what == "vm-running":
        vm = args[1]
        cond = lambda: bool(sim.cloud.running.get(vm)) and sim.cloud.servers[vm].status == "ACTIVE"
    elif what == "vm-on":
        vm, host = args[1], r.host(args[2])
        cond = lambda: sim.cloud.servers[vm].host == host and sim.cloud.running.get(vm) == {host}
    elif what == "self-fenced":
        host = r.host(args[1])
        cond = lambda: bool(_actions_on(r, host, ("self_fence",)))
    elif what == "service-disabled":
        host = r.host(args[1])
        cond = lambda: bool(sim.cloud.services[host]["disabled"])
    elif what == "brake":
        cond = lambda: (st := sim.live_state()) is not None and st.brake.on
    elif what in (
        "no-action",
        "no-fence",
        "no-evacuation",
        "no-alert",
        "no-verdict",
        "no-commit-from",
    ):
        await _expect_none(r, what, args[1:], within)
        return
    else:
        raise ScenarioError(f"unknown expectation {what!r}")
    await sim.wait_for(cond, within, " ".join(args))


async def _expect_none(r: Runner, what: str, args: list[str], during: float) -> None:
    """Hold for `during` simulated seconds and fail the moment the thing happens."""
    sim = r.sim
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
        if what in ("no-action", "no-fence", "no-evacuation"):
            hosts = r.hosts(args[0]) if args else set(sim.cloud.machines)
            kinds = {"no-action": RECOVERY, "no-fence": ("fence",), "no-evacuation": ("evacuate",)}[
                what
            ]
            for act in sim.cloud.actions[start_actions:]:
                if act.host in hosts and act.action in kinds:
                    return f"{act.action} on {act.host} by {act.actor} at t={act.t:.3f}"
            return None
        if what == "no-verdict":
            kinds = set(args[0].split(",")) if args else {"failed", "degraded"}
            for e in sim.raft.log[start_log:]:
                if e["kind"] == "verdict" and e["verdict"] in kinds:
                    return f"verdict {e['host']} {e['verdict']}: {e['reason']}"
            return None
        side = r.hosts(args[0])
        for e in sim.raft.log[start_log:]:
            if e["by"] in side:
                return f"{e['kind']} committed from {e['by']}"
        return None

    end = trio.current_time() + during
    while trio.current_time() < end:
        bad = happened()
        if bad:
            raise SimTimeout(f"expected {what} {' '.join(args)}, but: {bad}")
        await trio.sleep(0.05)


STEPS: dict[str, Callable[[Runner, list[str]], Any]] = {
    "tick": _tick,
    "run": _tick,
    "wait-leader": _wait_leader,
    "power-off": _power_off,
    "power-on": _power_on,
    "hang": _hang,
    "nic-down": lambda r, a: _nic(r, a, False),
    "nic-up": lambda r, a: _nic(r, a, True),
    "bmc-dead": lambda r, a: _bmc(r, a, False),
    "bmc-alive": lambda r, a: _bmc(r, a, True),
    "partition": _partition,
    "heal": _heal,
    "loss": _loss,
    "maintenance": _maintenance,
    "crash-vm": _crash_vm,
    "process-dead": _process_dead,
    "nova": _nova,
    "expect": _expect,
}


# -- files and the timeline ------------------------------------------------------------


def scenario_files() -> dict[str, Path]:
    root = resources.files("meshha.sim") / SCENARIO_DIR
    return {Path(str(p)).stem: Path(str(p)) for p in root.iterdir() if str(p).endswith(".txt")}


def load(name_or_path: str) -> Scenario:
    files = scenario_files()
    path = files.get(name_or_path) or Path(name_or_path)
    if not path.exists():
        raise ScenarioError(f"no scenario {name_or_path!r}; known: {', '.join(sorted(files))}")
    return parse(path.read_text(), path.stem)


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
        ):
            if k in e and e[k] not in (None, "", [], {}):
                row[k] = e[k]
        if "since" in e:
            row["since"] = round(e["since"] - EPOCH, 3)
        rows.append(row)
    rows.sort(key=lambda r: (r["t"], r["type"] != "fault"))
    return rows


async def run_scenario(sc: Scenario, seed: int) -> Outcome:
    sim = Sim(sc.spec, seed)
    runner = Runner(sc, sim)
    failure = ""
    try:
        await sim.run(runner.run)
    except* SimTimeout as group:
        failure = "; ".join(str(e) for e in group.exceptions)
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
