"""What the lab shows a person: `meshha-lab status`, and the demo's guided tour.

The tour injects one real fault at a time and prints a live timeline read from a
surviving agent's ledger (the committed event history, the same on every host): who
noticed what, the verdict and its reason, the fence and how it was confirmed, each VM's
move and its result, with times since the fault. Where a VM's QEMU really runs is read
from the hosts' process tables (Cloud.domains), not from Nova.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from meshha.lab.cloud import Cloud, LabSpec, LabTimeout, Say, wait_until

POLL_S = 0.25


def print_status(cloud: Cloud, say: Say) -> None:
    leader = cloud.leader([h for h in cloud.hosts if cloud.powered_on(h)])
    doms = cloud.domains()
    view = None
    for h in cloud.hosts:
        view = cloud.try_status(h)
        if view is not None and view.get("has_quorum"):
            break
    verdicts = {x["name"]: x for x in (view or {}).get("hosts", [])}
    say(f"leader: {leader or '(none agreed)'}")
    say(f"{'host':8} {'role':9} {'power':6} {'agent':6} {'qemu':>4}  verdict")
    for h in cloud.hosts:
        role = "reserved" if h in cloud.reserved else "compute"
        power = "on" if cloud.powered_on(h) else "off"
        agent = "up" if cloud.try_status(h, 1.0) is not None else "-"
        v = verdicts.get(h, {})
        verdict = v.get("verdict", "?")
        if v.get("networks"):
            verdict += "[" + ",".join(v["networks"]) + "]"
        n = sum(1 for hosts in doms.values() if h in hosts)
        say(f"{h:8} {role:9} {power:6} {agent:6} {n:>4}  {verdict}")
    say("")
    say(f"{'vm':6} {'ha':3} {'nova host':10} {'status':8} {'qemu runs on':14} id")
    for vm in cloud.vms():
        runs = ",".join(doms.get(vm.id, [])) or "-"
        say(
            f"{vm.name:6} {'yes' if vm.ha else 'no':3} {vm.host or '-':10} {vm.status:8} "
            f"{runs:14} {vm.id}"
        )


# -- the timeline --------------------------------------------------------------------------


@dataclass
class Timeline:
    """Prints a lab's committed events as they arrive, relative to a fault's time."""

    cloud: Cloud
    say: Say
    t0: float
    about: set[str]  # hosts whose observations are worth a line
    seen: int = 0  # the highest ledger index printed
    noticed: set[tuple[str, str]] = field(default_factory=set)
    rows: list[dict[str, Any]] = field(default_factory=list)

    def names(self) -> dict[str, str]:
        return {v["id"]: v["name"] for v in self.cloud.desc["vms"]}

    def reader(self) -> str | None:
        """A host whose ledger to read: a running one, the leader's preferred."""
        for h in self.cloud.hosts:
            if h not in self.about and self.cloud.try_status(h, 1.0) is not None:
                return h
        return None

    def poll(self) -> list[dict[str, Any]]:
        host = self.reader()
        if host is None:
            return []
        new = [(i, e) for i, e in self.cloud.ledger(host) if i > self.seen]
        for i, e in new:
            self.seen = i
            self.rows.append(e)
            line = self.line(e)
            if line:
                self.say(f"  {e['ts'] - self.t0:+7.2f}s  {line}")
        return [e for _, e in new]

    def note(self, what: str, at: float | None = None) -> None:
        self.say(f"  {(at or time.time()) - self.t0:+7.2f}s  {what}")

    def line(self, e: dict[str, Any]) -> str | None:
        kind = e["kind"]
        names = self.names()
        vm = names.get(e.get("vm") or "", e.get("vm") or "")
        if kind == "observation":
            if e["host"] not in self.about or e["reachable"]:
                return None
            key = (e["by"], e["host"])
            if key in self.noticed:
                return None
            self.noticed.add(key)
            return f"noticed   {e['by']} lost {e['host']} on {e['network']}"
        if kind == "verdict":
            return f"verdict   {e['host']} {e['verdict'].upper()}: {e['reason']}"
        if kind == "intent":
            target = f" -> {e['target']}" if e.get("target") else ""
            subject = vm or e["host"]
            if e["action"] == "alert":
                return f"alert     {e['params'].get('subject', e['reason'])}"
            return f"decided   {e['action']} {subject}{target} (leader {e['by']}): {e['reason']}"
        if kind == "result":
            detail = e["detail"]
            for vid, name in names.items():
                detail = detail.replace(vid, name)
            return f"result    {e['outcome']}: {detail}"
        if kind == "fenced":
            return f"fenced    {e['host']} by {e['method']}: {e['reason']}"
        if kind == "vm_failure":
            return f"vm fault  {vm} on {e['host']}: {e['event']} ({e['detail']}), seen by {e['by']}'s libvirt"
        if kind == "process_failure":
            return f"process   {e['process']} on {e['host']}: {e['outcome']} ({e['detail']})"
        if kind in ("brake", "isolation", "maintenance", "reserve"):
            return f"{kind:9} {e.get('host', '')} {e.get('reason', '')}"
        return None

    def until(self, cond: Callable[[], Any], timeout_s: float, what: str) -> Any:
        def step() -> Any:
            self.poll()
            return cond()

        got = wait_until(step, timeout_s, what, poll_s=POLL_S)
        self.poll()
        return got


# -- the scenarios -------------------------------------------------------------------------


@dataclass
class Outcome:
    name: str
    times: dict[str, float]  # milestone -> seconds after the fault
    detail: str
    ok: bool = True


def last_index(cloud: Cloud) -> int:
    """The highest ledger index any host holds now (what a new timeline starts after)."""
    return max((i for h in cloud.hosts for i, _ in cloud.ledger(h)), default=0)


def _first(rows: list[dict[str, Any]], pred: Callable[[dict[str, Any]], bool]) -> float | None:
    return next((e["ts"] for e in rows if pred(e)), None)


def power_off_host(cloud: Cloud, host: str, say: Say, *, timeout_s: float = 180.0) -> Outcome:
    """Power `host` off through its BMC; wait until every HA VM it ran is ACTIVE on
    another host with its QEMU running there (and only there)."""
    before = {v.id: v for v in cloud.vms() if v.host == host}
    ha = [i for i, v in before.items() if v.ha]
    non_ha = [i for i, v in before.items() if not v.ha]
    names = {i: v.name for i, v in before.items()}
    say(
        f"{host} runs {len(before)} VMs: {len(ha)} HA ({', '.join(names[i] for i in ha)}), "
        f"{len(non_ha)} not ({', '.join(names[i] for i in non_ha) or '-'})"
    )
    tl = Timeline(cloud, say, time.time(), {host})
    tl.seen = last_index(cloud)
    t0 = cloud.power_off(host)
    tl.t0 = t0
    tl.note(f"FAULT     {host} powered off through its BMC (ipmitool chassis power off)", t0)
    active_at: dict[str, float] = {}

    def all_moved() -> bool:
        doms = cloud.domains()
        vms = {v.id: v for v in cloud.vms()}
        for i in ha:
            v = vms[i]
            if i in active_at:
                continue
            moved = v.host != host and v.status == "ACTIVE" and v.task_state is None
            if moved and doms.get(i) == [v.host]:
                active_at[i] = time.time()
                tl.note(f"running   {names[i]} ACTIVE on {v.host}, its QEMU runs there")
        return len(active_at) == len(ha)

    tl.until(all_moved, timeout_s, f"HA VMs of {host} ACTIVE elsewhere")

    def results_committed() -> bool:
        done = {e["intent"] for e in tl.rows if e["kind"] == "result"}
        return all(any(i in d for d in done) for i in ha)

    tl.until(results_committed, 30, "every evacuation's result committed")
    why = {}
    for e in tl.rows:
        if e["kind"] == "result" and e["intent"].startswith(f"inventory:{host}:"):
            for srv in e.get("data", {}).get("servers", []):
                why[srv["id"]] = dict(srv.get("decided_by", [])).get("ha", "?")
    for i in non_ha:
        tl.note(f"left      {names[i]} not HA ({why.get(i, '?')}): stays on {host}, off with it")
    rows = tl.rows
    times = {
        "failed": _first(
            rows,
            lambda e: e["kind"] == "verdict" and e["host"] == host and e["verdict"] == "failed",
        ),
        "fenced": _first(
            rows,
            lambda e: (
                e["kind"] == "result"
                and e["intent"].startswith(f"fence:{host}:")
                and e["outcome"] == "ok"
            ),
        ),
        "first VM ACTIVE": min(active_at.values(), default=None),
        "all VMs ACTIVE": max(active_at.values(), default=None),
    }
    left = [names[i] for i in non_ha if cloud.domains().get(i) is None]
    detail = (
        f"{len(ha)} HA VMs moved to {', '.join(sorted({v.host or '?' for v in cloud.vms() if v.id in ha}))}; "
        f"{len(non_ha)} non-HA left on {host} ({', '.join(left) or '-'})"
    )
    return Outcome(
        f"power off {host}",
        {k: round(v - t0, 2) for k, v in times.items() if v is not None},
        detail,
    )


def crash_vm(cloud: Cloud, host: str, say: Say, *, timeout_s: float = 60.0) -> Outcome:
    vm = cloud.pick_vm(host)
    tl = Timeline(cloud, say, time.time(), set())
    tl.seen = last_index(cloud)
    _, t0 = cloud.crash_vm(host, vm.id)
    tl.t0 = t0
    tl.note(f"FAULT     QEMU of {vm.name} on {host} killed (kill -9)", t0)

    def running_again() -> float | None:
        if cloud.domains().get(vm.id) == [host] and _first(
            tl.rows, lambda e: e["kind"] == "vm_failure" and e["vm"] == vm.id
        ):
            return time.time()
        return None

    at = tl.until(running_again, timeout_s, f"{vm.name} running again on {host}")
    tl.note(f"running   {vm.name}'s QEMU runs again on {host}", at)
    tl.until(
        lambda: _first(tl.rows, lambda e: e["kind"] == "result" and vm.id in e["intent"]),
        30,
        "the restart's result committed",
    )
    rows = tl.rows
    times = {
        "noticed": _first(rows, lambda e: e["kind"] == "vm_failure" and e["vm"] == vm.id),
        "restart decided": _first(rows, lambda e: e["kind"] == "intent" and e.get("vm") == vm.id),
        "running again": at,
    }
    return Outcome(
        f"crash {vm.name}",
        {k: round(v - t0, 2) for k, v in times.items() if v is not None},
        f"{vm.name} restarted on {host}",
    )


def power_on_host(cloud: Cloud, host: str, say: Say, *, timeout_s: float = 90.0) -> Outcome:
    tl = Timeline(cloud, say, time.time(), set())
    tl.seen = last_index(cloud)
    t0 = cloud.power_on(host)
    tl.t0 = t0
    tl.note(f"REPAIR    {host} powered on through its BMC", t0)
    tl.until(
        lambda: _first(
            tl.rows,
            lambda e: (
                e["kind"] == "result"
                and e["intent"].startswith(f"enable:{host}:")
                and e["outcome"] == "ok"
            ),
        ),
        timeout_s,
        f"{host} back in service",
    )
    rows = tl.rows
    times = {
        "healthy": _first(
            rows,
            lambda e: e["kind"] == "verdict" and e["host"] == host and e["verdict"] == "healthy",
        ),
        "enabled": _first(
            rows, lambda e: e["kind"] == "result" and e["intent"].startswith(f"enable:{host}:")
        ),
    }
    stray = [h for hosts in cloud.domains().values() for h in hosts if h == host]
    return Outcome(
        f"power on {host}",
        {k: round(v - t0, 2) for k, v in times.items() if v is not None},
        f"{host} healthy and enabled; {len(stray)} QEMU running on it",
    )


# -- the demo ------------------------------------------------------------------------------


def summary(outcomes: list[Outcome], say: Say) -> None:
    say("")
    say("summary (seconds after each fault)")
    say(f"  {'scenario':18} {'milestones':60} outcome")
    for o in outcomes:
        ms = ", ".join(f"{k} {v:.1f}" for k, v in o.times.items())
        say(f"  {o.name:18} {ms:60} {'OK ' if o.ok else 'FAIL '}{o.detail}")


def run_demo(cloud: Cloud, spec: LabSpec, say: Say, *, keep: bool = False) -> bool:
    if cloud.exists:
        say(f"a lab is already up in {cloud.state}: taking it down first")
        cloud.down(say)
    say(f"== 1. up: {spec.hosts} hosts ({spec.reserved} reserved), {spec.vms} VMs ==")
    outcomes: list[Outcome] = []
    ok = True
    try:
        times = cloud.up(spec, say)
        say(f"lab up in {times['total']:.1f}s")
        say("")
        print_status(cloud, say)
        vms = cloud.vms()

        def interest(h: str) -> tuple[bool, int]:  # a host with HA and non-HA VMs first
            mine = [v for v in vms if v.host == h]
            return any(not v.ha for v in mine), sum(v.ha for v in mine)

        victim = max(cloud.computes, key=interest)
        say("")
        say(f"== 2. a host loses power: {victim} ==")
        outcomes.append(power_off_host(cloud, victim, say))
        crash_host = next(h for h in cloud.computes if h != victim)
        say("")
        say(f"== 3. a VM crashes on {crash_host} ==")
        outcomes.append(crash_vm(cloud, crash_host, say))
        say("")
        say(f"== 4. {victim} is repaired and powered on ==")
        outcomes.append(power_on_host(cloud, victim, say))
        say("")
        print_status(cloud, say)
    except (LabTimeout, AssertionError) as e:
        ok = False
        say(f"FAILED: {e}")
    finally:
        summary(outcomes, say)
        if not keep:
            say("")
            say("== down ==")
            cloud.down(say)
    return ok and all(o.ok for o in outcomes)
