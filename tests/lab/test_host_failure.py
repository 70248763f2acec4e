"""User-story cases end to end on the real lab (5 hosts, host5 reserved, 10 real QEMU VMs).

Each test injects a real fault (a BMC power-off through ipmitool, a kill -9 of a QEMU, a
switch-level partition) and asserts the outcome three ways: in Nova (server host, status,
instance actions, the compute service), in libvirt (the QEMU processes that really run,
on every host, sampled throughout the test: no VM is ever in two places) and in the
ledger of every surviving host (identical, with the verdict, the fence and every action
and its result). Each test puts the lab back as it found it (hosts on, network healed).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import pytest

from meshha.lab.cloud import Cloud, LabSpec, Vm, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.lab,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
LAB_SPEC = LabSpec(hosts=5, reserved=1, vms=10)
T = TypeVar("T")


class Sampler:
    """Lists every lab QEMU on every host at each poll; fails on a VM in two places."""

    def __init__(self, cloud: Cloud) -> None:
        self.cloud = cloud
        self.samples = 0

    def check(self) -> dict[str, list[str]]:
        doms = self.cloud.domains()
        twice = {vm: hosts for vm, hosts in doms.items() if len(hosts) > 1}
        assert not twice, f"VMs running in two places: {twice}"
        self.samples += 1
        return doms

    def until(self, cond: Callable[[], T | None], timeout_s: float, what: str) -> T:
        def step() -> T | None:
            self.check()
            return cond()

        return wait_until(step, timeout_s, what, poll_s=0.2)

    def until_moved(
        self, vms: Iterable[Vm], away_from: str, timeout_s: float, *, onto: str | None = None
    ) -> None:
        """Until every VM of `vms` is ACTIVE with no task in Nova on a host other than
        `away_from` (on `onto`, if given), and its QEMU runs there and only there."""
        vms = list(vms)

        def moved() -> bool:
            doms = self.check()
            servers = {s.id: s for s in self.cloud.vms()}
            return all(
                (host := servers[v.id].host) != away_from
                and (onto is None or host == onto)
                and (servers[v.id].status, servers[v.id].task_state) == ("ACTIVE", None)
                and doms.get(v.id) == [host]
                for v in vms
            )

        where = f"on {onto}" if onto else "elsewhere"
        wait_until(moved, timeout_s, f"{len(vms)} VMs of {away_from} ACTIVE {where}", poll_s=0.2)


def entries(cloud: Cloud, host: str) -> list[dict[str, Any]]:
    return [e for _, e in cloud.ledger(host)]


def wait_ledgers_equal(
    cloud: Cloud, hosts: list[str], timeout_s: float = 30.0
) -> list[dict[str, Any]]:
    """The ledgers of `hosts` agree (Cloud.agreed_ledger): their common entries."""
    return wait_until(
        lambda: cloud.agreed_ledger(hosts), timeout_s, f"ledgers of {hosts} agree", poll_s=0.3
    )


def results(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["intent"]: e for e in rows if e["kind"] == "result"}


def intents(rows: list[dict[str, Any]], action: str, host: str) -> list[dict[str, Any]]:
    return [
        e for e in rows if e["kind"] == "intent" and e["action"] == action and e["host"] == host
    ]


def action_names(cloud: Cloud, conn: Any, vm: str) -> list[str]:
    return [a.action for a in conn.compute.server_actions(vm)]


def back_in_service(cloud: Cloud, sampler: Sampler, hosts: list[str], since: float) -> None:
    """Power `hosts` on again and wait until each is healthy and enabled in Nova; then
    check the way back in every ledger: each fenced host's own agent reported a clean
    reconcile, with its own boot time (after the fence: the lab host's /proc/stat btime),
    before the `enable_compute` that succeeded; and no returning host runs a VM Nova
    places elsewhere."""
    for h in hosts:
        if not cloud.powered_on(h):
            cloud.power_on(h)
    try:
        cloud.wait_agents(cloud.hosts, timeout_s=90)
    except AssertionError:
        for h in hosts:
            dump_host(cloud, h)
        raise
    conn = cloud.connect()

    def enabled() -> bool:
        doms = sampler.check()
        servers = {s.id: s for s in cloud.vms()}
        strays = [
            vm
            for vm, hs in doms.items()
            for h in hs
            if h in hosts
            and vm in servers
            and servers[vm].host != h
            and servers[vm].task_state is None
        ]
        assert not strays, f"a returning host runs a VM Nova places elsewhere: {strays}"
        svcs = {s.host: s for s in conn.compute.services() if s.binary == "nova-compute"}
        return all(svcs[h].status == "enabled" and not svcs[h].is_forced_down for h in hosts)

    sampler.until(enabled, 90, f"{hosts} enabled in Nova again")

    def reported() -> list[dict[str, Any]] | None:
        rows = [e for e in wait_ledgers_equal(cloud, cloud.hosts) if e["ts"] >= since]
        done = results(rows)
        fenced = {e["host"] for e in rows if e["kind"] == "intent" and e["action"] == "fence"}
        enables = [e for e in rows if e["kind"] == "intent" and e["action"] == "enable_compute"]
        ok = all(
            any(
                e["host"] == h and done.get(e["intent"], {}).get("outcome") == "ok" for e in enables
            )
            for h in fenced & set(hosts)
        )
        return rows if ok else None

    rows = wait_until(reported, 30, "each fenced host's enable_compute result in every ledger")
    done = results(rows)
    for h in hosts:
        fences = [
            e
            for e in rows
            if e["kind"] == "intent"
            and e["action"] == "fence"
            and e["host"] == h
            and done.get(e["intent"], {}).get("outcome") == "ok"
        ]
        if not fences:
            continue  # never fenced (healed in time): nothing to reconcile
        fenced_at = done[fences[-1]["intent"]]["ts"]
        reports = [e for e in rows if e["kind"] == "reconcile" and e["host"] == h and e["ok"]]
        assert reports, f"{h}: enabled without a clean reconcile report"
        assert reports[-1]["by"] == h
        if done[fences[-1]["intent"]]["data"].get("method") == "bmc":
            assert reports[-1]["booted_at"] > fenced_at - 1, (h, reports[-1], fenced_at)
        (enable,) = [
            e
            for e in rows
            if e["kind"] == "intent"
            and e["action"] == "enable_compute"
            and e["host"] == h
            and done[e["intent"]]["outcome"] == "ok"
        ][-1:]
        assert enable["ts"] >= reports[-1]["ts"], (enable, reports[-1])


def dump_host(cloud: Cloud, host: str, lines: int = 25) -> None:
    """The end of a host's logs (init, agent, BMC chassis, watchdog), for a failure's report."""
    d = cloud.host_dir(host) / "logs"
    b = cloud.state / "bmc" / host
    for path in (d / "init.log", d / "meshha-agent.log", b / "chassis.log", b / "watchdog.log"):
        try:
            tail = path.read_text(errors="replace").splitlines()[-lines:]
        except OSError as err:
            tail = [f"({err})"]
        print(f"--- {path}", *tail, sep="\n  ")


def by_host(vms: list[Vm]) -> dict[str, list[Vm]]:
    out: dict[str, list[Vm]] = {}
    for v in vms:
        out.setdefault(v.host or "-", []).append(v)
    return out


def test_host_power_off_fenced_and_ha_vms_active_on_reserved(cloud: Cloud) -> None:
    sampler = Sampler(cloud)
    conn = cloud.connect()
    vms = cloud.vms()
    groups = by_host(vms)
    victim = next(h for h in cloud.computes if any(not v.ha for v in groups.get(h, [])))
    reserved = cloud.reserved[0]
    ha = [v for v in groups[victim] if v.ha]
    non_ha = [v for v in groups[victim] if not v.ha]
    assert ha and non_ha, groups
    live = [h for h in cloud.hosts if h != victim]
    elsewhere = {v.id: v.host for v in vms if v.host != victim}

    t0 = cloud.power_off(victim)

    sampler.until_moved(ha, victim, 120, onto=reserved)
    took_s = time.time() - t0

    # Nova: evacuated once each, the non-HA VMs left, the service forced down + disabled.
    for v in ha:
        assert action_names(cloud, conn, v.id).count("evacuate") == 1
    servers = {s.id: s for s in cloud.vms()}
    for v in non_ha:
        assert servers[v.id].host == victim
        assert "evacuate" not in action_names(cloud, conn, v.id)
    svc = next(
        s for s in conn.compute.services() if s.host == victim and s.binary == "nova-compute"
    )
    assert svc.is_forced_down and svc.status == "disabled", svc

    # libvirt on every host: the HA VMs run on the reserved host only, nothing runs on the
    # powered-off host, every other VM where it was.
    doms = sampler.check()
    for v in ha:
        assert doms.get(v.id) == [reserved], (v.name, doms.get(v.id))
    for v in non_ha:
        assert v.id not in doms
    assert not [vm for vm, hosts in doms.items() if victim in hosts]
    for vm, host in elsewhere.items():
        assert doms.get(vm) == [host], (vm, doms.get(vm))

    # The BMC: the victim is off, nobody else was fenced.
    assert not cloud.powered_on(victim)
    assert "off" in cloud.ipmitool(victim, "chassis", "power", "status")
    assert all(cloud.powered_on(h) for h in live)

    # Every surviving ledger: identical, the verdict, the fence, every evacuation and result.
    def complete() -> list[dict[str, Any]] | None:
        rows = wait_ledgers_equal(cloud, live)
        evac = intents(rows, "evacuate", victim)
        done = results(rows)
        return rows if len(evac) >= len(ha) and all(e["intent"] in done for e in evac) else None

    rows = wait_until(complete, 30, "every evacuation's result in every live ledger")
    done = results(rows)
    assert any(
        e["kind"] == "verdict" and e["host"] == victim and e["verdict"] == "failed" for e in rows
    )
    (fence,) = intents(rows, "fence", victim)
    assert done[fence["intent"]]["outcome"] == "ok"
    assert done[fence["intent"]]["data"]["method"] == "bmc"
    evac = intents(rows, "evacuate", victim)
    assert sorted(e["vm"] for e in evac) == sorted(v.id for v in ha)
    assert {e["target"] for e in evac} == {reserved}
    assert all(done[e["intent"]]["outcome"] == "ok" for e in evac)
    fence_ok = done[fence["intent"]]["ts"]
    assert min(e["ts"] for e in evac) >= fence_ok  # no evacuation before a confirmed fence
    reserve_steps = ("reserve_hold", "reserve_release")  # the reserve kept empty in Nova
    assert {
        e["host"]
        for e in rows
        if e["kind"] == "intent" and e["ts"] >= t0 and e["action"] not in reserve_steps
    } <= {victim}
    print(f"power-off -> all {len(ha)} HA VMs ACTIVE on {reserved}: {took_s:.1f}s")

    back_in_service(cloud, sampler, [victim], t0)
    assert not [vm for vm, hosts in sampler.check().items() if victim in hosts]


def test_vm_crash_restarted_on_the_same_host(cloud: Cloud) -> None:
    sampler = Sampler(cloud)
    host = cloud.computes[-1]
    vm, t0 = cloud.crash_vm(host)
    sampler.until(lambda: vm.id not in cloud.domains() or None, 10, f"{vm.name}'s QEMU gone")

    def running_again() -> bool:
        return sampler.check().get(vm.id) == [host]

    sampler.until(running_again, 60, f"{vm.name}'s QEMU running again on {host}")
    took_s = time.time() - t0

    def active() -> bool:  # Nova says so a moment after the QEMU runs (power_on returns)
        server = next(s for s in cloud.vms() if s.id == vm.id)
        return (server.host, server.status, server.task_state) == (host, "ACTIVE", None)

    sampler.until(active, 30, f"{vm.name} ACTIVE on {host} in Nova")
    assert sampler.check().get(vm.id) == [host]

    def restarted() -> list[dict[str, Any]] | None:
        rows = wait_ledgers_equal(cloud, cloud.hosts)
        restart = [
            e for e in rows if e["kind"] == "intent" and e.get("vm") == vm.id and e["ts"] >= t0
        ]
        return rows if restart and restart[0]["intent"] in results(rows) else None

    rows = wait_until(restarted, 30, "the restart and its result in every ledger")
    (failure,) = [
        e for e in rows if e["kind"] == "vm_failure" and e["vm"] == vm.id and e["ts"] >= t0
    ]
    assert failure["host"] == host and failure["event"] == "crashed"
    (restart,) = [
        e for e in rows if e["kind"] == "intent" and e.get("vm") == vm.id and e["ts"] >= t0
    ]
    assert restart["action"] == "restart_vm"
    assert results(rows)[restart["intent"]]["outcome"] == "ok"
    print(f"VM crash -> running again: {took_s:.1f}s")


def test_partition_2_3_only_the_majority_acts(cloud: Cloud) -> None:
    sampler = Sampler(cloud)
    minority, majority = cloud.hosts[:2], cloud.hosts[2:]
    before = {h: max((i for i, _ in cloud.ledger(h)), default=0) for h in minority}
    vms = cloud.vms()
    ha_minority = [v for v in vms if v.host in minority and v.ha]
    t0 = time.time()
    cloud.partition([minority, majority])
    try:

        def moved() -> bool:
            servers = {s.id: s for s in cloud.vms()}
            return all(
                servers[v.id].host in majority
                and servers[v.id].status == "ACTIVE"
                and servers[v.id].task_state is None
                for v in ha_minority
            )

        def fenced() -> bool:
            rows = cloud.agreed_ledger(majority) or []
            done = results([e for e in rows if e["ts"] >= t0])
            return all(
                any(
                    e["intent"] in done and done[e["intent"]]["outcome"] == "ok"
                    for e in intents(rows, "fence", h)
                    if e["ts"] >= t0
                )
                for h in minority
            )

        sampler.until(fenced, 120, "the majority fenced both minority hosts")
        sampler.until(moved, 180, "the minority's HA VMs ACTIVE on the majority")
        doms = sampler.check()
        for v in ha_minority:
            (where,) = doms[v.id]
            assert where in majority
        rows = wait_ledgers_equal(cloud, majority)
        new = [e for e in rows if e["ts"] >= t0]
        done = results(rows)
        for h in minority:
            (fence,) = intents(new, "fence", h)
            assert done[fence["intent"]]["outcome"] == "ok", done[fence["intent"]]
        # Nothing is done by the minority: every intent since the partition was proposed
        # by a majority host, and the minority's ledgers gained no action while cut off.
        assert {e["by"] for e in new if e["kind"] == "intent"} <= set(majority)
        assert not {e["host"] for e in new if e["kind"] == "intent"} & set(majority)
        for h in minority:
            late = [e for i, e in cloud.ledger(h) if i > before[h] and e["kind"] == "intent"]
            assert all(e["by"] in majority for e in late), late
        assert all(cloud.powered_on(h) for h in majority)
    finally:
        cloud.heal()
    back_in_service(cloud, sampler, minority, t0)
    print(f"{sampler.samples} samples of every host's QEMUs, no VM in two places")


def test_host_hung_fenced_and_never_runs_an_evacuated_vm(cloud: Cloud) -> None:
    """Case 6: every process of a host frozen (SIGSTOP: links up, the kernel answers,
    nothing else does). Its watchdog (not fed) or its BMC powers it off; the majority
    fences it through the BMC, evacuates its HA VMs once each and leaves the rest; resumed
    and powered on again, it reconciles, is enabled, and never runs an evacuated VM."""
    sampler = Sampler(cloud)
    conn = cloud.connect()
    leader = cloud.leader() or ""
    doms0 = sampler.check()
    vms0 = cloud.vms()
    victim = next(
        h
        for h in cloud.computes
        if h != leader and any(v.ha and v.host == h and doms0.get(v.id) == [h] for v in vms0)
    )
    ha = [v for v in vms0 if v.host == victim and v.ha]
    non_ha = [v for v in vms0 if v.host == victim and not v.ha]
    others = [h for h in cloud.hosts if h != victim]
    t0 = cloud.hang(victim)
    try:
        sampler.until_moved(ha, victim, 150)
        took_s = time.time() - t0
    finally:
        cloud.resume(victim)  # a no-op once it is powered off
    assert not cloud.powered_on(victim)
    for v in ha:
        assert action_names(cloud, conn, v.id).count("evacuate") == 1, v.name
    servers = {s.id: s for s in cloud.vms()}
    for v in non_ha:
        assert servers[v.id].host == victim and "evacuate" not in action_names(cloud, conn, v.id)

    def complete() -> list[dict[str, Any]] | None:
        rows = [e for e in wait_ledgers_equal(cloud, others) if e["ts"] >= t0]
        evac = intents(rows, "evacuate", victim)
        done = results(rows)
        return rows if len(evac) >= len(ha) and all(e["intent"] in done for e in evac) else None

    rows = wait_until(complete, 30, "every evacuation's result in every live ledger")
    done = results(rows)
    (fence,) = intents(rows, "fence", victim)
    assert done[fence["intent"]]["outcome"] == "ok"
    assert done[fence["intent"]]["data"]["method"] == "bmc"
    evac = intents(rows, "evacuate", victim)
    assert sorted(e["vm"] for e in evac) == sorted(v.id for v in ha)
    assert min(e["ts"] for e in evac) >= done[fence["intent"]]["ts"]
    assert not [
        e for e in rows if e["kind"] == "intent" and e["action"] == "fence" and e["host"] != victim
    ]
    print(f"hang -> {len(ha)} HA VMs ACTIVE elsewhere: {took_s:.1f}s")

    back_in_service(cloud, sampler, [victim], t0)
    doms = sampler.check()
    assert not [v.name for v in ha if victim in doms.get(v.id, [])]


def test_host_powered_on_right_after_its_fence_gets_its_vms_back_then_returns(
    cloud: Cloud,
) -> None:
    """Someone powers the host on again the moment its BMC confirmed "off" (the nemesis's
    seed 17): its VMs stopped with the fence and must still be evacuated, although the
    host is heard again before the chain finished; and its nova-compute, started before
    those evacuations finished, leaves Nova's records of them `done`, so Nova refuses to
    force it up until the agent restarts it. Then it is back in service, and no VM ran
    twice."""
    sampler = Sampler(cloud)
    conn = cloud.connect()
    groups = by_host(cloud.vms())
    victim = max(
        (h for h in cloud.computes if h not in cloud.reserved),
        key=lambda h: sum(v.ha for v in groups.get(h, [])),
    )
    ha = [v for v in groups.get(victim, []) if v.ha]
    assert ha, groups
    live = [h for h in cloud.hosts if h != victim]

    t0 = cloud.power_off(victim)

    def fenced() -> bool:
        rows = entries(cloud, live[0])
        done = results(rows)
        return any(
            e["kind"] == "intent"
            and e["action"] == "fence"
            and e["host"] == victim
            and e["ts"] >= t0
            and done.get(e["intent"], {}).get("outcome") == "ok"
            for e in rows
        )

    sampler.until(fenced, 60, f"{victim}'s fence confirmed")
    cloud.power_on(victim)
    t_on = time.time()

    sampler.until_moved(ha, victim, 240)
    for v in ha:
        assert action_names(cloud, conn, v.id).count("evacuate") == 1, v.name
    back_in_service(cloud, sampler, [victim], t0)
    rows = [e for e in wait_ledgers_equal(cloud, cloud.hosts) if e["ts"] >= t0]
    evac = intents(rows, "evacuate", victim)
    assert sorted({e["vm"] for e in evac}) == sorted(v.id for v in ha)
    reports = [e for e in rows if e["kind"] == "reconcile" and e["host"] == victim]
    assert reports and reports[-1]["ok"]
    print(
        f"powered on {t_on - t0:.1f}s after power-off; first report "
        f"{reports[0]['ts'] - t0:.1f}s; evacuations {len(evac)}; "
        f"enable attempts {len(intents(rows, 'enable_compute', victim))}"
    )
