"""User-story cases end to end on the real lab that an operator drives or that move VMs
between live hosts: maintenance on/off through `meshctl` (11), a tenant network cut that
live-migrates (7), a VM that keeps crashing restarted on another host (1), and, last since
it leaves a host fenced, the HA policy in an evacuation (13: HA-off VMs left alone,
priorities respected in evacuation order).

One lab for the module (5 hosts, host5 reserved, 10 real QEMU VMs; `vm_plan` gives the
first compute hosts a high, a lower and an unprotected VM each). Each test asserts the
outcome in Nova, in libvirt (every lab QEMU on every host, sampled throughout: no VM is
ever in two places) and in the ledger of every surviving host; all but the last leave
every host powered, enabled and healed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from meshha.lab.cloud import Cloud, LabSpec, Vm, planned_priority, wait_until
from tests.lab.test_host_failure import (
    Sampler,
    action_names,
    intents,
    results,
    wait_ledgers_equal,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.lab,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
LAB_SPEC = LabSpec(hosts=5, reserved=1, vms=10)
MESHCTL = str(Path(sys.executable).parent / "meshctl")
PRIORITY_RANK = {"high": 0, "medium": 1, "low": 2}


def meshctl(cloud: Cloud, host: str, *args: str, timeout_s: float = 60.0) -> str:
    """`meshctl ARGS` run on lab host `host` (as `meshha-lab exec HOST meshctl ...` does),
    against that host's agent at the default socket path."""
    p = subprocess.run(
        cloud.exec_argv(host, [MESHCTL, *args]), capture_output=True, text=True, timeout=timeout_s
    )
    assert p.returncode == 0, f"meshctl {' '.join(args)} on {host}: {p.stdout}{p.stderr}"
    return p.stdout


def nova_actions(conn: Any, vm: str, t0: float) -> list[tuple[str, float]]:
    """(action, start time) of the instance actions Nova recorded for `vm` since `t0`
    (oldest first; Nova's times are UTC, to the microsecond)."""
    out = []
    for a in conn.compute.server_actions(vm):
        start = datetime.fromisoformat(a.start_time.rstrip("Z")).replace(tzinfo=UTC)
        if start.timestamp() >= t0 - 1.0:
            out.append((a.action, start.timestamp()))
    return sorted(out, key=lambda x: x[1])


def policy_mix(cloud: Cloud, vms: list[Vm], host: str) -> tuple[int, int]:
    """(distinct priorities among its HA VMs, its HA-off VMs): what the HA-policy case
    needs on its victim. The other cases take the hosts with the least of it."""
    prio = {
        v["id"]: planned_priority(v["flavor"], v.get("metadata", {})) for v in cloud.desc["vms"]
    }
    here = [v for v in vms if v.host == host]
    return len({prio[v.id] for v in here if v.ha}), len([v for v in here if not v.ha])


def victim_fit(cloud: Cloud, vms: list[Vm], host: str) -> tuple[int, tuple[int, int]]:
    """How well `host` serves the HA-policy case: 3 when it has two priorities among its
    HA VMs and an HA-off VM (then by how much of each)."""
    m = policy_mix(cloud, vms, host)
    return min(m[0], 2) + min(m[1], 1), m


def spare(cloud: Cloud, vms: list[Vm], leader: str, moving: set[str]) -> int:
    """How well the best HA-policy victim left (a compute host other than the leader's)
    serves once the VMs `moving` have left: the other cases disturb what it needs least."""
    left = [v for v in vms if v.id not in moving]
    return max(victim_fit(cloud, left, h)[0] for h in cloud.computes if h != leader)


def since(rows: list[dict[str, Any]], t0: float) -> list[dict[str, Any]]:
    return [e for e in rows if e["ts"] >= t0]


def services(cloud: Cloud) -> dict[str, Any]:
    conn = cloud.connect()
    return {s.host: s for s in conn.compute.services() if s.binary == "nova-compute"}


def settled(vms: list[Vm], ids: set[str]) -> bool:
    return all(v.status == "ACTIVE" and v.task_state is None for v in vms if v.id in ids)


def holds(sampler: Sampler, cond: Any, for_s: float, what: str) -> None:
    """`cond()` stays true for `for_s` seconds, checked with every QEMU sample (a negative
    outcome needs a window: the window is what the same fault takes to act on a host in
    service)."""
    end = time.monotonic() + for_s

    def step() -> bool | None:
        sampler.check()
        assert cond(), what
        return True if time.monotonic() >= end else None

    wait_until(step, for_s + 30, what, poll_s=0.5)


def test_maintenance_drains_ignores_faults_and_returns(cloud: Cloud) -> None:
    """`meshctl maintenance on HOST` (run on that host): disabled in Nova, every VM
    live-migrated onto another compute host (never the reserve), nothing on it in
    libvirt; a storage cut there (on_loss fence_evacuate) is then ignored: no fence, no
    alert, no recovery; `maintenance off`: enabled in Nova, healthy in every ledger."""
    sampler = Sampler(cloud)
    conn = cloud.connect()
    leader = cloud.leader() or ""
    vms0 = cloud.vms()
    host = max(
        (h for h in cloud.computes if h != leader and any(v.host == h for v in vms0)),
        key=lambda h: (
            spare(cloud, vms0, leader, {v.id for v in vms0 if v.host == h}),
            [-x for x in policy_mix(cloud, vms0, h)],
        ),
    )
    others = [h for h in cloud.hosts if h != host]
    doms0 = sampler.check()
    on_host = {v.id: v for v in vms0 if v.host == host}
    assert on_host, f"no VM on {host}"
    t0 = time.time()
    out = meshctl(
        cloud,
        host,
        "maintenance",
        "on",
        host,
        "--reason",
        "lab case 11",
        "--timeout",
        "150",
        timeout_s=180,
    )
    assert f"{host} is empty" in out, out
    took_s = time.time() - t0

    # Nova: disabled with meshha's reason; every VM ACTIVE on another compute host.
    svc = services(cloud)[host]
    assert svc.status == "disabled" and "maintenance" in (svc.disabled_reason or ""), svc
    servers = {v.id: v for v in cloud.vms()}
    for vm in on_host:
        s = servers[vm]
        assert s.host in cloud.computes and s.host != host, (s.name, s.host)
        assert (s.status, s.task_state) == ("ACTIVE", None), s
        assert [a for a, _ in nova_actions(conn, vm, t0)] == ["live-migration"], s.name
    # libvirt: each runs once, where Nova says; nothing runs on the host; the rest as before.
    doms = sampler.check()
    for vm in on_host:
        assert doms.get(vm) == [servers[vm].host], (servers[vm].name, doms.get(vm))
    assert not [vm for vm, hs in doms.items() if host in hs]
    for vm, hs in doms0.items():
        if vm not in on_host:
            assert doms.get(vm) == hs, (vm, doms.get(vm), hs)
    # Every ledger: the window, the hold, one drain per VM (ok, never onto the reserve).
    rows = since(wait_ledgers_equal(cloud, cloud.hosts), t0)
    done = results(rows)
    (m,) = [e for e in rows if e["kind"] == "maintenance" and e["host"] == host]
    assert m["on"] and m["reason"] == "lab case 11", m
    drains = intents(rows, "drain", host)
    assert {e["vm"] for e in drains} == set(on_host), drains
    ok = [e["vm"] for e in drains if done[e["intent"]]["outcome"] == "ok"]
    assert sorted(ok) == sorted(on_host), drains  # once each (a timed-out try is retried)
    assert {e["target"] for e in drains} <= set(cloud.computes) - {host}
    assert [done[e["intent"]]["outcome"] for e in intents(rows, "maint_hold", host)] == ["ok"]

    # In maintenance the host is ignored: its storage network (fence_evacuate) is cut, the
    # others see it (observations committed), and for a while nothing is done about it.
    t1 = time.time()
    alerts_at_cut = len(cloud.alerts())
    cloud.cut_net(host, "storage")
    try:

        def seen() -> list[dict[str, Any]] | None:
            sampler.check()
            rows = since(cloud.agreed_ledger(others) or [], t1)
            lost = {
                e["by"]
                for e in rows
                if e["kind"] == "observation"
                and e["host"] == host
                and e["network"] == "storage"
                and not e["reachable"]
            }
            return rows if len(lost) >= 2 else None

        sampler.until(seen, 60, f"{host}'s storage loss observed in the ledgers")

        def ignored() -> bool:
            rows = since(cloud.agreed_ledger(others) or [], t1)
            return not [e for e in rows if e["kind"] in ("intent", "fenced", "brake")]

        # The same cut fences a host in service within a few seconds (brake settle 3 s).
        holds(sampler, ignored, 12, f"nothing done about {host} in maintenance")
        assert cloud.powered_on(host)
        late = cloud.alerts()[alerts_at_cut:]
        assert not [a for a in late if a["alert"].get("host") == host], late
    finally:
        cloud.restore_net(host, "storage")
    t2 = time.time()
    alerts_before = len(cloud.alerts())

    out = meshctl(cloud, host, "maintenance", "off", host)
    assert "maintenance off" in out, out

    def in_service() -> bool:
        sampler.check()
        s = services(cloud)[host]
        return s.status == "enabled" and not s.is_forced_down and s.state == "up"

    sampler.until(in_service, 60, f"{host} enabled in Nova again")

    def healthy() -> list[dict[str, Any]] | None:
        rows = since(cloud.agreed_ledger(cloud.hosts) or [], t2)
        v = [e for e in rows if e["kind"] == "verdict" and e["host"] == host]
        rel = intents(rows, "maint_release", host)
        done = results(rows)
        ok = rel and all(done.get(e["intent"], {}).get("outcome") == "ok" for e in rel)
        return rows if ok and (not v or v[-1]["verdict"] == "healthy") else None

    rows = sampler.until(healthy, 60, f"{host} released and healthy in every ledger")
    assert not [
        e for e in rows if e["kind"] == "fenced" or e.get("action") in ("fence", "evacuate")
    ]
    st = cloud.try_status(host) or {}
    row = next(h for h in st.get("hosts", []) if h["name"] == host)
    assert not row["maintenance"] and row["verdict"] == "healthy", row
    assert len(cloud.alerts()) == alerts_before
    print(f"maintenance on {host}: {len(on_host)} VMs live-migrated off in {took_s:.1f}s")


def test_tenant_network_cut_live_migrates(cloud: Cloud) -> None:
    """Tenant network (on_loss = live_migrate) of one host cut: degraded on tenant, an
    alert, its HA VMs live-migrated off (once each), its unprotected VMs left; the host is
    never fenced; healthy once restored."""
    sampler = Sampler(cloud)
    conn = cloud.connect()
    leader = cloud.leader() or ""
    doms0 = sampler.check()
    vms0 = cloud.vms()
    host = max(
        (
            h
            for h in cloud.computes
            if h != leader and any(v.ha and v.host == h and doms0.get(v.id) for v in vms0)
        ),
        key=lambda h: (
            spare(cloud, vms0, leader, {v.id for v in vms0 if v.host == h and v.ha}),
            [-x for x in policy_mix(cloud, vms0, h)],
        ),
    )
    ha = [v for v in vms0 if v.host == host and v.ha and doms0.get(v.id)]
    left = [v for v in vms0 if v.host == host and not v.ha and doms0.get(v.id)]
    t0 = time.time()
    cloud.cut_net(host, "tenant")
    try:

        def moved() -> bool:
            servers = {s.id: s for s in cloud.vms()}
            doms = sampler.check()
            return all(
                servers[v.id].host != host
                and (servers[v.id].status, servers[v.id].task_state) == ("ACTIVE", None)
                and doms.get(v.id) == [servers[v.id].host]
                for v in ha
            )

        sampler.until(moved, 120, f"HA VMs of {host} live-migrated off")
        took_s = time.time() - t0
        assert cloud.powered_on(host)
        servers = {s.id: s for s in cloud.vms()}
        for v in ha:
            acts = [a for a, _ in nova_actions(conn, v.id, t0)]
            assert acts == ["live-migration"], (v.name, acts)
        doms = sampler.check()
        for v in left:  # HA off: left where it runs
            assert servers[v.id].host == host and doms.get(v.id) == [host], v.name

        def recorded() -> list[dict[str, Any]] | None:
            rows = since(cloud.agreed_ledger(cloud.hosts) or [], t0)
            mig = intents(rows, "live_migrate", host)
            done = results(rows)
            return rows if len(mig) >= len(ha) and all(e["intent"] in done for e in mig) else None

        rows = wait_until(recorded, 30, "every live migration's result in every ledger")
        done = results(rows)
        verdicts = [
            (e["verdict"], e["networks"])
            for e in rows
            if e["kind"] == "verdict" and e["host"] == host
        ]
        assert ("degraded", ["tenant"]) in verdicts, verdicts  # after a moment's suspect
        assert not [v for v in verdicts if v[0] == "failed"], verdicts
        mig = intents(rows, "live_migrate", host)
        assert sorted(e["vm"] for e in mig) == sorted(v.id for v in ha)
        assert all(done[e["intent"]]["outcome"] == "ok" for e in mig)
        assert not [e for e in rows if e["kind"] == "fenced" or e.get("action") == "fence"]
        sent = intents(rows, "alert", host)
        assert sent and all(done.get(e["intent"], {}).get("outcome") == "ok" for e in sent)
    finally:
        cloud.restore_net(host, "tenant")

    def healthy_again() -> list[dict[str, Any]] | None:
        sampler.check()
        rows = since(cloud.agreed_ledger(cloud.hosts) or [], t0)
        v = [e for e in rows if e["kind"] == "verdict" and e["host"] == host]
        return rows if v and v[-1]["verdict"] == "healthy" else None

    sampler.until(healthy_again, 60, f"{host} healthy again in every ledger")
    print(f"tenant cut on {host} -> {len(ha)} HA VMs live-migrated off in {took_s:.1f}s")


def test_vm_crashing_again_is_restarted_on_another_host(cloud: Cloud) -> None:
    """A VM killed `vm_restart_limit` (3) times within the window: restarted on its host
    twice (Nova stop + start), then restarted on another host (cold migration), once."""
    sampler = Sampler(cloud)
    conn = cloud.connect()
    doms0 = sampler.check()
    vms0 = cloud.vms()
    leader = cloud.leader() or ""
    vm = max(
        (v for v in vms0 if v.ha and v.host in cloud.computes and doms0.get(v.id) == [v.host]),
        key=lambda v: (
            spare(cloud, vms0, leader, {v.id}),
            [-x for x in policy_mix(cloud, vms0, v.host or "")],
        ),
    )
    host = vm.host
    assert host is not None
    t0 = time.time()
    times = []
    for crash in range(1, 4):
        _, t = cloud.crash_vm(host, vm.id)
        sampler.until(lambda: vm.id not in cloud.domains() or None, 10, f"{vm.name}'s QEMU gone")
        if crash == 3:
            break

        def again() -> bool:
            s = next(s for s in cloud.vms() if s.id == vm.id)
            return (s.host, s.status, s.task_state) == (
                host,
                "ACTIVE",
                None,
            ) and sampler.check().get(vm.id) == [host]

        sampler.until(again, 60, f"{vm.name} running again on {host} after crash {crash}")
        times.append(time.time() - t)

    def elsewhere() -> str | None:
        s = next(s for s in cloud.vms() if s.id == vm.id)
        doms = sampler.check()
        if s.host != host and (s.status, s.task_state) == ("ACTIVE", None):
            return s.host if doms.get(vm.id) == [s.host] else None
        return None

    target = sampler.until(elsewhere, 120, f"{vm.name} running on another host")
    elsewhere_s = time.time() - t

    def recorded() -> list[dict[str, Any]] | None:
        rows = since(wait_ledgers_equal(cloud, cloud.hosts), t0)
        mig = [e for e in rows if e["kind"] == "intent" and e["action"] == "migrate_vm"]
        return rows if mig and mig[0]["intent"] in results(rows) else None

    rows = wait_until(recorded, 30, "the migration's result in every ledger")
    done = results(rows)
    failures = [e for e in rows if e["kind"] == "vm_failure" and e["vm"] == vm.id]
    assert len(failures) == 3 and all(e["host"] == host for e in failures), failures
    acts = [e for e in rows if e["kind"] == "intent" and e.get("vm") == vm.id]
    assert [e["action"] for e in acts] == ["restart_vm", "restart_vm", "migrate_vm"], acts
    assert all(done[e["intent"]]["outcome"] == "ok" for e in acts)
    assert done[acts[-1]["intent"]]["data"]["host"] == target
    nova = [a for a, _ in nova_actions(conn, vm.id, t0)]
    assert nova.count("migrate") == 1 and nova.count("start") == 2, nova
    assert not [e for e in rows if e["kind"] == "fenced" or e.get("action") == "fence"]
    print(
        f"{vm.name} crashed 3 times: running again on {host} in "
        f"{', '.join(f'{x:.1f}s' for x in times)}, then on {target} in {elsewhere_s:.1f}s"
    )


def test_ha_policy_ha_off_left_and_priorities_ordered(cloud: Cloud) -> None:
    """A host with a high, a lower-priority and an unprotected VM powered off: its HA
    VMs are evacuated highest priority first (the ledger's evacuate intents, the
    executor's order and Nova's evacuate requests), its HA-off VMs are left alone (in
    Nova on the dead host, no evacuation, no QEMU anywhere). Last in the module: the host
    stays fenced (bringing it back is the returning-host reconcile's business)."""
    sampler = Sampler(cloud)
    conn = cloud.connect()
    leader = cloud.leader() or ""
    reserved = cloud.reserved[0]
    prio = {
        v["id"]: planned_priority(v["flavor"], v.get("metadata", {})) for v in cloud.desc["vms"]
    }
    doms0 = sampler.check()
    vms0 = [v for v in cloud.vms() if doms0.get(v.id) == [v.host]]

    victim = max(
        (h for h in cloud.computes if h != leader), key=lambda h: victim_fit(cloud, vms0, h)
    )
    ha = [v for v in vms0 if v.host == victim and v.ha]
    off = [v for v in vms0 if v.host == victim and not v.ha]
    mix = policy_mix(cloud, vms0, victim)
    assert mix[0] >= 2 and off, (victim, [(v.name, prio[v.id], v.ha) for v in ha + off])
    live = [h for h in cloud.hosts if h != victim]

    t0 = cloud.power_off(victim)

    sampler.until_moved(ha, victim, 120, onto=reserved)
    took_s = time.time() - t0

    def complete() -> list[dict[str, Any]] | None:
        rows = since(wait_ledgers_equal(cloud, live), t0)
        evac = intents(rows, "evacuate", victim)
        done = results(rows)
        return rows if len(evac) >= len(ha) and all(e["intent"] in done for e in evac) else None

    rows = wait_until(complete, 30, "every evacuation's result in every live ledger")
    done = results(rows)
    evac = intents(rows, "evacuate", victim)  # in ledger (index) order
    assert sorted(e["vm"] for e in evac) == sorted(v.id for v in ha)
    assert all(done[e["intent"]]["outcome"] == "ok" for e in evac)
    ranks = [PRIORITY_RANK[prio[e["vm"]]] for e in sorted(evac, key=lambda e: e["order"])]
    assert ranks == sorted(ranks), [(e["vm"], prio[e["vm"]], e["order"]) for e in evac]
    assert [e["order"] for e in evac] == sorted(e["order"] for e in evac)
    # Nova: each evacuated once, and never a lower priority admitted before a higher one.
    # The executor admits evacuations in rank order as slots free up; two admitted in the
    # same wave reach Nova in whichever order their threads run (tens of ms apart), so
    # the order is checked between waves (seconds apart here), not within one.
    started = {}
    for v in ha:
        acts = nova_actions(conn, v.id, t0)
        assert [a for a, _ in acts] == ["evacuate"], (v.name, acts)
        started[v.id] = acts[0][1]
    wave_s = 0.5
    for hi in ha:
        for lo in ha:
            if PRIORITY_RANK[prio[hi.id]] < PRIORITY_RANK[prio[lo.id]]:
                assert started[hi.id] <= started[lo.id] + wave_s, (hi.name, lo.name, started)
    servers = {s.id: s for s in cloud.vms()}
    doms = sampler.check()
    for v in off:
        assert servers[v.id].host == victim, (v.name, servers[v.id].host)
        assert "evacuate" not in action_names(cloud, conn, v.id), v.name
        assert v.id not in doms, (v.name, doms.get(v.id))
        assert not [e for e in rows if e.get("vm") == v.id and e["kind"] == "intent"], v.name
    for v in ha:
        assert doms.get(v.id) == [reserved], (v.name, doms.get(v.id))
    print(
        f"power-off {victim}: {len(ha)} HA VMs evacuated by priority "
        f"({', '.join(prio[e['vm']] for e in sorted(evac, key=lambda e: e['order']))}) in "
        f"{took_s:.1f}s; {len(off)} HA-off VMs left"
    )
