"""The returning host's own reconcile (agent/reconcile.py), against the simulator's fake
cloud: what Nova places elsewhere is destroyed, what it places here is kept, a failure
is reported, never raised; and when the agent must report again."""

from __future__ import annotations

import trio

from meshha.agent.reconcile import proc_boot_time, reconcile_once, wanted
from meshha.config.synthetic import synthetic_segment
from meshha.raft import entries as E
from meshha.raft.state import SegmentState
from meshha.recovery.ports import Flavor
from meshha.sim.fakes import FakeCloud, FakeHypervisor, FakeNova

SMALL = Flavor("m1.small", 1, 2048, 20)


def cloud_with_a_ghost() -> FakeCloud:
    """host2 came back still running vm-a (evacuated to host3 meanwhile) and vm-b (its own)."""
    c = FakeCloud(clock=lambda: 100.0)
    for h in ("host2", "host3"):
        c.add_host(h)
    c.boot("vm-a", "host2", SMALL)
    c.boot("vm-b", "host2", SMALL)
    c.servers["vm-a"].host = "host3"
    c.running["vm-a"].add("host3")
    return c


def test_domains_nova_places_elsewhere_are_destroyed_the_rest_kept() -> None:
    c = cloud_with_a_ghost()

    async def main() -> dict:
        hv = FakeHypervisor(c, "host2", wall_offset=1000.0)
        return await reconcile_once("host2", 1, hv, FakeNova(c), lambda: 1200.0)

    e = trio.run(main)
    assert E.check(e) == []
    assert (e["ok"], e["destroyed"], e["kept"]) == (True, ["vm-a"], ["vm-b"])
    assert e["booted_at"] == 1000.0
    assert c.vms_on("host2") == ["vm-b"] and c.running["vm-a"] == {"host3"}
    assert c.violations == []


def test_an_unreachable_nova_is_a_failed_report_and_nothing_is_destroyed() -> None:
    c = cloud_with_a_ghost()
    c.nova_up = False

    async def main() -> dict:
        return await reconcile_once(
            "host2", 1, FakeHypervisor(c, "host2"), FakeNova(c), lambda: 1200.0
        )

    e = trio.run(main)
    assert not e["ok"] and "unreachable" in e["detail"] and e["destroyed"] == []
    assert c.vms_on("host2") == ["vm-a", "vm-b"]  # nothing destroyed on a guess


def test_without_nova_access_it_cannot_tell_and_says_so() -> None:
    c = cloud_with_a_ghost()

    async def main() -> dict:
        return await reconcile_once("host2", 1, FakeHypervisor(c, "host2"), None, lambda: 1.0)

    e = trio.run(main)
    assert not e["ok"] and "no Nova access" in e["detail"]


def test_wanted_while_fenced_until_a_clean_report_newer_than_every_move() -> None:
    seg = synthetic_segment()
    s = SegmentState(seg)
    assert wanted(s, "host2") is None
    for o in ("host1", "host3", "host4", "host5"):
        s.apply(
            E.verdict(
                ts=10, by=o, host="host2", verdict="failed", networks=[], reason="", evidence=[]
            )
        )
    s.apply(E.fenced(ts=11, by="host1", host="host2", method="bmc", reason="", evidence={}))
    assert wanted(s, "host2") == 1

    def rep(ts: float, ok: bool = True) -> None:
        s.apply(
            E.reconcile(
                ts=ts,
                by="host2",
                host="host2",
                episode=1,
                booted_at=12,
                destroyed=[],
                kept=[],
                ok=ok,
                detail="",
            )
        )

    rep(13, ok=False)
    assert wanted(s, "host2") == 1
    rep(14)
    assert wanted(s, "host2") is None
    s.apply(
        E.intent(
            ts=14,
            by="host1",
            intent_id="evacuate:host2:e1:vm-a:a1",
            action="evacuate",
            host="host2",
            vm="vm-a",
            target="host5",
            reason="",
        )
    )
    s.apply(
        E.result(ts=15, by="host1", intent_id="evacuate:host2:e1:vm-a:a1", outcome="ok", detail="")
    )
    assert wanted(s, "host2") == 1  # a move finished after the report: report again
    rep(16)
    assert wanted(s, "host2") is None


def test_proc_boot_time(tmp_path) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "stat"
    p.write_text("cpu  1 2 3\nbtime 1700000000\nprocesses 5\n")
    assert proc_boot_time(str(p)) == 1700000000.0
    assert proc_boot_time(str(tmp_path / "missing")) is None


def test_the_boot_time_is_reported_in_segment_time() -> None:
    """A host whose wall clock is ten minutes behind reads its boot time (btime) on that
    clock; reported as read, a real reboot after the fence looks like a BMC's lie
    (decide/return_.py). The agent reports it in segment time (found by the simulator's
    clock-step scenario)."""
    c = cloud_with_a_ghost()

    async def main() -> dict:
        hv = FakeHypervisor(c, "host2", wall_offset=1000.0 - 600.0)  # its clock: 600 s behind
        return await reconcile_once(
            "host2", 1, hv, FakeNova(c), lambda: 1200.0, to_segment=lambda t: t + 600.0
        )

    assert trio.run(main)["booted_at"] == 1000.0


def test_the_transport_puts_a_wall_clock_time_in_segment_time() -> None:
    """UdpTransport.wall_to_segment: this host's clock is 600 s behind its four peers'."""
    from meshha.agent.udp import UdpTransport

    seg = synthetic_segment(5)
    wall, mono = 1_800_000_000.0 - 600.0, 50.0
    t = UdpTransport(seg, "host1", b"k" * 32, now=lambda: wall + mono, mono=lambda: mono)
    assert not t.clock_judged()
    for k, peer in enumerate(("host2", "host3", "host4", "host5")):
        sent = 40.0 + k
        t.clock.sample(peer, sent, sent + 0.002, 1_800_000_000.0 + sent + 0.001)
    assert t.clock_judged()
    btime = wall + 10.0  # booted at monotonic 10, as read on its own clock
    assert abs(t.wall_to_segment(btime) - (1_800_000_000.0 + 10.0)) < 1e-3
