"""User-story case 10 end to end on the real lab: the leader's own host is powered off in
the middle of an evacuation; the new leader finishes it, and every VM is evacuated
exactly once (counted in Nova's instance actions and in the ledgers).

A compute host is powered off through its BMC; as soon as the first evacuation of its
VMs is committed (read from a follower's ledger), the leader's host is powered off too.
The new leader (elected among the three left) finishes the first host's evacuations,
fences the old leader's host and evacuates its VMs as well. Sampled throughout: no VM
ever runs in two places.

Its own lab (5 hosts, host5 reserved, 10 real QEMU VMs): the test leaves two hosts fenced
and off (bringing them back is the returning-host reconcile's business).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from meshha.lab.cloud import Cloud, LabSpec, wait_until
from tests.lab.test_host_failure import Sampler, intents, results
from tests.lab.test_operations import nova_actions, since

pytestmark = [
    pytest.mark.integration,
    pytest.mark.lab,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
LAB_SPEC = LabSpec(hosts=5, reserved=1, vms=10)


def leader_on_a_compute(cloud: Cloud, sampler: Sampler) -> str:
    """The leader, moved onto a compute host with HA VMs if it is not on one: its agent is
    killed (kill -9; the host's init restarts it within a second) and the segment elects
    another, until the leader sits where the test needs it."""
    for _ in range(6):
        leader = wait_until(cloud.leader, 60, "a leader every host agrees on", poll_s=0.5)
        if leader in cloud.computes and any(v.ha and v.host == leader for v in cloud.vms()):
            return leader
        cloud.kill_process(leader, "meshha-agent")

        def moved(old: str = leader) -> str | None:
            sampler.check()
            now = cloud.leader()
            return now if now not in (None, old) else None

        sampler.until(moved, 60, f"a leader other than {leader}")
    raise AssertionError("the leader never landed on a compute host with HA VMs")


def test_leader_host_powered_off_mid_evacuation_new_leader_finishes(cloud: Cloud) -> None:
    sampler = Sampler(cloud)
    conn = cloud.connect()
    reserved = cloud.reserved[0]
    leader = leader_on_a_compute(cloud, sampler)
    doms0 = sampler.check()
    vms0 = cloud.vms()

    def ha_on(h: str) -> list[Any]:
        return [v for v in vms0 if v.host == h and v.ha and doms0.get(v.id) == [h]]

    victim = max((h for h in cloud.computes if h != leader), key=lambda h: len(ha_on(h)))
    moved = ha_on(victim) + ha_on(leader)
    survivors = [h for h in cloud.hosts if h not in (victim, leader)]
    watcher = reserved  # a follower's ledger, read while the segment commits

    t0 = cloud.power_off(victim)

    def evacuating() -> list[dict[str, Any]] | None:
        sampler.check()
        rows = since([e for _, e in cloud.ledger(watcher)], t0)
        return intents(rows, "evacuate", victim) or None

    started = sampler.until(evacuating, 120, f"the first evacuation off {victim} committed")
    t_leader = cloud.power_off(leader)
    rows = since([e for _, e in cloud.ledger(watcher)], t0)
    done_then = results(rows)
    unfinished = [e for e in intents(rows, "evacuate", victim) if e["intent"] not in done_then]
    assert {e["by"] for e in started} == {leader}, started
    assert unfinished, "the evacuation was over before the leader's host went down"

    def new_leader() -> str | None:
        sampler.check()
        now = cloud.leader(survivors)
        return now if now not in (None, leader) else None

    successor = sampler.until(new_leader, 60, "a new leader among the survivors")

    def all_moved() -> bool:
        servers = {s.id: s for s in cloud.vms()}
        doms = sampler.check()
        return all(
            servers[v.id].host == reserved
            and (servers[v.id].status, servers[v.id].task_state) == ("ACTIVE", None)
            and doms.get(v.id) == [reserved]
            for v in moved
        )

    sampler.until(all_moved, 240, f"the HA VMs of {victim} and {leader} ACTIVE on {reserved}")
    took_s = time.time() - t0

    # Nova: every VM evacuated exactly once, by one request.
    for v in moved:
        assert [a for a, _ in nova_actions(conn, v.id, t0)] == ["evacuate"], v.name

    # Every surviving ledger: identical; each VM has exactly one evacuation that succeeded;
    # both hosts fenced (the old leader's by the new one).
    def complete() -> list[dict[str, Any]] | None:
        rows = since(cloud.agreed_ledger(survivors) or [], t0)
        done = results(rows)
        ok = [
            e["vm"]
            for h in (victim, leader)
            for e in intents(rows, "evacuate", h)
            if done.get(e["intent"], {}).get("outcome") == "ok"
        ]
        return rows if sorted(ok) == sorted(v.id for v in moved) else None

    rows = wait_until(complete, 60, "one successful evacuation per VM in every survivor's ledger")
    done = results(rows)
    for h in (victim, leader):
        fences = intents(rows, "fence", h)
        assert [done[e["intent"]]["outcome"] for e in fences][-1:] == ["ok"], fences
    (lf,) = [e for e in intents(rows, "fence", leader) if done[e["intent"]]["outcome"] == "ok"]
    assert lf["by"] == successor or lf["by"] in survivors, lf
    leftover = [
        e["intent"]
        for h in (victim, leader)
        for e in intents(rows, "evacuate", h)
        if e["intent"] not in done
    ]
    assert not leftover, leftover  # nothing left pending: finished or safely closed
    doms = sampler.check()
    assert not [vm for vm, hs in doms.items() if victim in hs or leader in hs]
    print(
        f"{victim} off; {leader} (leader) off {t_leader - t0:.1f}s later with "
        f"{len(unfinished)} evacuations unfinished; {successor} finished: {len(moved)} HA VMs "
        f"ACTIVE on {reserved} {took_s:.1f}s after the first power-off; "
        f"{sampler.samples} samples, no VM in two places"
    )
