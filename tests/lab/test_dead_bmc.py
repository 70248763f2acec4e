"""A host and its BMC dead together (user-story case 9, issue 8's deadline-proof test) on
the real lab: evacuation only after the self-fence deadline, never before.

The lab declares a watchdog on every host, as the shipped example does (meshha.lab.watchdog:
a timer outside the host that powers it off through its chassis when the agent stops
feeding it; the example's 6 s) and the hypervisor (qemu:///system, the host's own
libvirtd), so the majority may take "the self-fence deadline has passed" as a fence when
the BMC is dead.
Each test kills the host's ipmi_sim and then:

- cuts the host off on every network: its own agent, isolated, destroys its QEMUs
  (isolation_after_s) and stops feeding its watchdog, which powers it off before the
  majority's deadline (last heard + self_fence_deadline_s + max_clock_skew_s);
- or freezes every process of the host (a hang): its agent stops feeding, the watchdog
  powers it off.

Throughout, every QEMU on every host is sampled (no VM ever in two places); the ledgers
say the BMC fence failed, the host was fenced by the deadline proof, and no evacuation
came before it. Then the BMC is revived, the host powered on, and it is back in service
without running an evacuated VM.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from meshha.lab.cloud import Cloud, LabSpec, Vm, wait_until
from tests.lab.test_host_failure import (
    Sampler,
    action_names,
    back_in_service,
    intents,
    results,
    wait_ledgers_equal,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.lab,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
LAB_SPEC = LabSpec(hosts=5, reserved=1, vms=8)


def watchdog_fired(cloud: Cloud, host: str, since: float) -> float | None:
    """When the host's chassis was last told `set power 0` after `since` (its BMC is dead:
    only its watchdog can have done it), or None."""
    log = cloud.state / "bmc" / host / "chassis.log"
    times = [
        float(w[0])
        for w in (line.split() for line in log.read_text().splitlines())
        if w[1:4] == ["set", "power", "0"] and float(w[0]) >= since
    ]
    return max(times) if times else None


def pick_victim(cloud: Cloud, sampler: Sampler) -> tuple[str, list[Vm]]:
    leader = cloud.leader() or ""
    doms = sampler.check()
    vms = cloud.vms()
    for h in cloud.computes:
        ha = [v for v in vms if v.host == h and v.ha and doms.get(v.id) == [h]]
        if h != leader and ha:
            return h, ha
    raise AssertionError(f"no compute host (not the leader) runs an HA VM: {doms}")


def dead_together(cloud: Cloud, how: str) -> None:
    sampler = Sampler(cloud)
    conn = cloud.connect()
    victim, ha = pick_victim(cloud, sampler)
    others = [h for h in cloud.hosts if h != victim]
    cloud.bmc_dead(victim)
    gone_at: list[float] = []
    t0 = time.time()
    if how == "isolated":
        cloud.partition([[victim], others])
    else:
        cloud.hang(victim)
    try:

        def destroyed() -> bool:
            doms = sampler.check()
            return not any(victim in hs for hs in doms.values())

        sampler.until(destroyed, 60, f"no QEMU left on {victim}")
        gone_at.append(time.time())
        sampler.until_moved(ha, victim, 150)
        took_s = time.time() - t0
    finally:
        cloud.heal()
        cloud.resume(victim)
        cloud.bmc_alive(victim)
    fired = watchdog_fired(cloud, victim, t0)
    assert fired is not None, f"{victim}'s watchdog never powered it off"
    assert not cloud.powered_on(victim)

    def complete() -> list[dict[str, Any]] | None:
        rows = [e for e in wait_ledgers_equal(cloud, others) if e["ts"] >= t0 - 5]
        evac = intents(rows, "evacuate", victim)
        done = results(rows)
        return rows if len(evac) >= len(ha) and all(e["intent"] in done for e in evac) else None

    rows = wait_until(complete, 30, "every evacuation's result in every live ledger")
    done = results(rows)
    fences = intents(rows, "fence", victim)  # tried, and retried: the BMC is dead
    assert fences and all(
        done[e["intent"]]["outcome"] != "ok" for e in fences if e["intent"] in done
    )
    (proof,) = [e for e in rows if e["kind"] == "fenced" and e["host"] == victim]
    assert proof["method"] == "self_fence_deadline", proof
    deadline = proof["evidence"]["deadline"]
    assert proof["ts"] >= deadline
    evac = intents(rows, "evacuate", victim)
    assert sorted(e["vm"] for e in evac) == sorted(v.id for v in ha)
    first_evac = min(e["ts"] for e in evac)
    # Never before the deadline; the host had destroyed its VMs and was powered off by
    # its own watchdog before it.
    assert first_evac >= proof["ts"] >= deadline
    assert gone_at[0] < first_evac, (gone_at, first_evac)
    assert fired < deadline, (fired, deadline)
    if how == "isolated":  # its own agent destroyed them, before its watchdog fired
        assert gone_at[0] < fired, (gone_at, fired)
    for v in ha:
        assert action_names(cloud, conn, v.id).count("evacuate") == 1, v.name
    print(
        f"{how} with a dead BMC: QEMUs gone after {gone_at[0] - t0:.1f}s, watchdog fired "
        f"after {fired - t0:.1f}s, deadline after {deadline - t0:.1f}s, fenced (proof) "
        f"after {proof['ts'] - t0:.1f}s, first evacuation "
        f"after {first_evac - t0:.1f}s, {len(ha)} HA VMs ACTIVE after {took_s:.1f}s; "
        f"{sampler.samples} samples, no VM in two places"
    )
    back_in_service(cloud, sampler, [victim], t0)
    doms = sampler.check()
    assert not [v.name for v in ha if victim in doms.get(v.id, [])]


def test_isolated_host_with_dead_bmc_self_fences_before_the_deadline(cloud: Cloud) -> None:
    dead_together(cloud, "isolated")


def test_hung_host_with_dead_bmc_reset_by_its_watchdog(cloud: Cloud) -> None:
    dead_together(cloud, "hung")
