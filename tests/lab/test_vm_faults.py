"""User-story case 2 end to end on the real lab: a VM hangs, and is handled per policy.

The VMs of this case are booted through Nova with the lab's disk flavor
(`Cloud.disk_flavor`): each boots from its own disk on the lab's shared storage (an NBD
export, meshha.lab.nbd_fault) and has a watchdog, `hw:watchdog_action = pause`, the flavor
extra spec Nova's libvirt driver turns into a watchdog device. As under Nova's libvirt
driver, the disk has no error_policy: QEMU's default pauses the guest when a write fails
with ENOSPC (the storage is full).

- Block I/O error: the storage fails one write of the VM (a transient ENOSPC): QEMU pauses
  the guest (BLOCK_IO_ERROR, SUSPENDED/IOERROR); the VM's own policy
  (`meshha:on_vm_failure = hard_reboot` in its metadata) applies: Nova hard-reboots it
  on its host, where it runs again, in a new QEMU, and keeps running.
- Guest watchdog: the guest arms its watchdog and stops kicking it; it fires (WATCHDOG
  pause, SUSPENDED/WATCHDOG); the default policy (restart) applies: Nova stops and starts
  it on its host, where it runs again.

Asserted in Nova (host, status, instance actions), in libvirt (every lab QEMU on every
host, sampled throughout; the domain's state on its host) and in the ledger of every host
(`meshctl events --json` on each). Its own lab (4 hosts, host4 reserved, 3 plain VMs plus
the two of this case).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from meshha.lab.cloud import DISK_FLAVOR, Cloud, LabSpec, Vm, wait_until
from tests.lab.test_host_failure import Sampler, results
from tests.lab.test_operations import holds, nova_actions
from tests.lab.test_process_faults import operator_ledgers

pytestmark = [
    pytest.mark.integration,
    pytest.mark.lab,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
LAB_SPEC = LabSpec(hosts=4, reserved=1, vms=3)


@pytest.fixture(scope="module")
def disk_vms(cloud: Cloud) -> dict[str, Vm]:
    """Two VMs with a disk and a watchdog on one compute host (not the leader's)."""
    leader = cloud.leader() or ""
    host = next(h for h in cloud.computes if h != leader)
    cloud.disk_flavor()
    io = cloud.boot_vm("vm-io", host, DISK_FLAVOR, {"meshha:on_vm_failure": "hard_reboot"})
    wd = cloud.boot_vm("vm-wd", host, DISK_FLAVOR)
    for v in (io, wd):
        wait_until(
            lambda v=v: cloud.domain_state(host, v.id) == "running (booted)" or None,
            60,
            f"{v.name} running on {host}",
        )
    return {"io": io, "wd": wd}


def vm_failures(rows: list[dict[str, Any]], vm: str) -> list[dict[str, Any]]:
    return [e for e in rows if e["kind"] == "vm_failure" and e["vm"] == vm]


def recovered(
    cloud: Cloud, sampler: Sampler, v: Vm, pid0: int | None, t0: float, event: str
) -> tuple[float, float]:
    """Wait until `v`'s failure (`event`) is in the ledger and `v` runs again on its host
    in a new QEMU, ACTIVE in Nova. (detected, running again) seconds after `t0`: the
    moment the fault took effect in the guest (its failed write, its read of the mailbox:
    the storage's .hit mark; a guest takes seconds to boot under nested KVM)."""
    host = v.host
    assert host is not None
    switch = "fault" if event == "io_error" else "mailbox"

    def detected() -> float | None:
        sampler.check()
        rows = [e for e in cloud.agreed_ledger(cloud.hosts) or [] if e["ts"] >= t0 - 1]
        got = [e for e in vm_failures(rows, v.id) if e["event"] == event]
        return got[0]["ts"] if got else None

    t_detected = sampler.until(detected, 60, f"{v.name}'s {event} in every ledger")

    def running() -> float | None:
        s = next(s for s in cloud.vms() if s.id == v.id)
        doms = sampler.check()
        if (s.host, s.status, s.task_state) != (host, "ACTIVE", None) or doms.get(v.id) != [host]:
            return None
        pid = cloud.qemu_pid(host, v.id)
        ok = (
            pid is not None and pid != pid0 and cloud.domain_state(host, v.id).startswith("running")
        )
        return time.time() if ok else None

    t_running = sampler.until(running, 90, f"{v.name} running again on {host}")
    t_hit = cloud.storage_hit(v.id, switch)
    assert t_hit is not None and t0 <= t_hit <= t_detected, (t0, t_hit, t_detected)
    return t_detected - t_hit, t_running - t_hit


def keeps_running(cloud: Cloud, sampler: Sampler, v: Vm) -> None:
    """The guest, which writes its disk every 20 ms, stays running: the storage is fine
    again and nothing is done to it any more."""
    host = v.host
    assert host is not None
    pid = cloud.qemu_pid(host, v.id)
    holds(
        sampler,
        lambda: (
            cloud.domain_state(host, v.id).startswith("running")
            and cloud.qemu_pid(host, v.id) == pid
        ),
        3,
        f"{v.name} keeps running on {host}",
    )


def test_block_io_error_pauses_vm_and_its_policy_hard_reboots_it(
    cloud: Cloud, disk_vms: dict[str, Vm]
) -> None:
    sampler = Sampler(cloud)
    v = disk_vms["io"]
    host = v.host
    assert host is not None
    pid0 = cloud.qemu_pid(host, v.id)
    assert pid0 and cloud.domain_state(host, v.id).startswith("running")

    _, t0 = cloud.io_error(host, v.id)
    detected_s, running_s = recovered(cloud, sampler, v, pid0, t0, "io_error")
    hit = cloud.storage_hit(v.id, "fault") or t0
    keeps_running(cloud, sampler, v)
    assert not (cloud.state / "storage" / f"{v.id}.fault").exists()  # it failed a write

    def complete() -> list[dict[str, Any]] | None:
        rows = operator_ledgers(cloud, cloud.hosts, t0 - 1)
        acts = [e for e in rows if e["kind"] == "intent" and e.get("vm") == v.id]
        return rows if acts and all(e["intent"] in results(rows) for e in acts) else None

    rows = wait_until(complete, 30, "the hard reboot's result in every ledger", poll_s=0.5)
    done = results(rows)
    fails = vm_failures(rows, v.id)
    assert [e["event"] for e in fails] == ["io_error"], fails
    assert fails[0]["host"] == host and fails[0]["by"] == host, fails
    acts = [e for e in rows if e["kind"] == "intent" and e.get("vm") == v.id]
    assert [e["action"] for e in acts] == ["hard_reboot"], acts  # its own policy
    assert done[acts[0]["intent"]]["outcome"] == "ok", done[acts[0]["intent"]]
    assert not [e for e in rows if e["kind"] in ("fenced", "verdict") and e["host"] == host]
    assert [a for a, _ in nova_actions(cloud.connect(), v.id, t0)] == ["reboot"]
    doms = sampler.check()
    assert doms.get(v.id) == [host] and doms.get(disk_vms["wd"].id) == [host], doms
    print(
        f"I/O error of {v.name} on {host} (from its failed write): detected {detected_s:.2f}s, "
        f"hard reboot decided {acts[0]['ts'] - hit:.2f}s, done in Nova "
        f"{done[acts[0]['intent']]['ts'] - hit:.2f}s, running again {running_s:.2f}s; "
        f"{sampler.samples} samples, no VM in two places"
    )


def test_guest_watchdog_fires_and_the_default_policy_restarts_vm(
    cloud: Cloud, disk_vms: dict[str, Vm]
) -> None:
    sampler = Sampler(cloud)
    v = disk_vms["wd"]
    host = v.host
    assert host is not None
    pid0 = cloud.qemu_pid(host, v.id)
    assert pid0 and cloud.domain_state(host, v.id).startswith("running")

    _, t0 = cloud.guest_watchdog(host, v.id)
    detected_s, running_s = recovered(cloud, sampler, v, pid0, t0, "watchdog")
    hit = cloud.storage_hit(v.id, "mailbox") or t0
    keeps_running(cloud, sampler, v)

    def complete() -> list[dict[str, Any]] | None:
        rows = operator_ledgers(cloud, cloud.hosts, t0 - 1)
        acts = [e for e in rows if e["kind"] == "intent" and e.get("vm") == v.id]
        return rows if acts and all(e["intent"] in results(rows) for e in acts) else None

    rows = wait_until(complete, 30, "the restart's result in every ledger", poll_s=0.5)
    done = results(rows)
    fails = vm_failures(rows, v.id)
    assert [e["event"] for e in fails] == ["watchdog"], fails
    assert "WATCHDOG" in fails[0]["detail"] and fails[0]["host"] == host, fails
    acts = [e for e in rows if e["kind"] == "intent" and e.get("vm") == v.id]
    assert [e["action"] for e in acts] == ["restart_vm"], acts  # the segment's default
    assert done[acts[0]["intent"]]["outcome"] == "ok", done[acts[0]["intent"]]
    assert not [e for e in rows if e["kind"] in ("fenced", "verdict") and e["host"] == host]
    assert [a for a, _ in nova_actions(cloud.connect(), v.id, t0)] == ["stop", "start"]
    print(
        f"guest watchdog of {v.name} on {host} (from the guest arming it): fired and detected "
        f"{detected_s:.2f}s (the ib700 fires 2 s after arming), restart decided "
        f"{acts[0]['ts'] - hit:.2f}s, done in Nova {done[acts[0]['intent']]['ts'] - hit:.2f}s, "
        f"running again {running_s:.2f}s"
    )
