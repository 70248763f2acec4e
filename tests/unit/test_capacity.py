"""N+k through the Nova port (meshctl capacity / report): the servers of every compute host
and the reserve's free capacity, from the in-memory cloud; and results that name the host,
VM and action they are about (so `meshctl events --host/--vm` keeps outcomes)."""

from __future__ import annotations

import trio

from meshha.agent.capacity import nk_status
from meshha.config.synthetic import synthetic_segment
from meshha.raft import entries as E
from meshha.raft.state import SegmentState
from meshha.recovery.executor import Drivers, Executor
from meshha.recovery.ports import Flavor
from meshha.sim.fakes import FakeAlerts, FakeBmc, FakeCloud, FakeNova

BIG = Flavor("big", 8, 16384, 40)
SMALL = Flavor("small", 1, 2048, 10)


def cloud() -> FakeCloud:
    c = FakeCloud(clock=lambda: 0.0)
    for h in ("host1", "host2", "host3", "host4"):
        c.add_host(h, ("admin",))  # 16 vCPUs, 32 GB each
    return c


async def test_survives_when_the_largest_host_fits_the_reserve() -> None:
    seg = synthetic_segment(4)  # host4 reserved, reserve_k 1
    c = cloud()
    c.boot("a", "host1", BIG)
    c.boot("b", "host1", SMALL)
    c.boot("c", "host2", SMALL)
    nk = await nk_status(seg, SegmentState(seg), FakeNova(c))
    assert nk["survives"] and nk["k"] == 1 and nk["lost_hosts"] == ["host1"]
    assert nk["ha_vms"] == 3 and nk["compute_hosts"] == 3
    assert nk["reserve"] == [
        {"host": "host4", "vcpus_free": 16, "ram_mb_free": 32768, "disk_gb_free": 500}
    ]


async def test_fails_and_names_what_does_not_fit_when_the_reserve_is_busy() -> None:
    seg = synthetic_segment(4)
    c = cloud()
    for i in range(2):
        c.boot(f"h1-{i}", "host1", BIG)
        c.boot(f"r-{i}", "host4", BIG)  # the reserve is full already
    nk = await nk_status(seg, SegmentState(seg), FakeNova(c))
    assert not nk["survives"]
    assert {u["vm"] for u in nk["unplaced"]} == {"h1-0", "h1-1"}
    assert "would not fit" in nk["reason"]
    k2 = await nk_status(seg, SegmentState(seg), FakeNova(c), k=0)
    assert k2["survives"]


async def test_unknown_without_nova_or_when_nova_is_down() -> None:
    seg = synthetic_segment(4)
    assert "no Nova" in (await nk_status(seg, SegmentState(seg), None))["error"]
    c = cloud()
    c.nova_up = False
    assert "unreachable" in (await nk_status(seg, SegmentState(seg), FakeNova(c)))["error"]


async def test_nova_lost_between_the_facts_and_the_servers_is_unknown_not_a_crash() -> None:
    """Swarm seed 151: Nova went down after `host_facts` answered; the error of a
    `list_servers` inside the lookups' nursery came out as an ExceptionGroup, which
    `except MeshhaError` missed, and took the measuring leader's agent down."""
    seg = synthetic_segment(4)
    c = cloud()
    c.boot("a", "host1", SMALL)

    class NovaGoesDown(FakeNova):
        async def host_facts(self, hosts):  # type: ignore[no-untyped-def]
            facts = await super().host_facts(hosts)
            self.cloud.nova_up = False
            return facts

    nk = await nk_status(seg, SegmentState(seg), NovaGoesDown(c))
    assert "connection refused" in nk["error"] and nk["k"] == 1


async def test_a_reserve_host_in_maintenance_does_not_count() -> None:
    seg = synthetic_segment(4)
    c = cloud()
    c.boot("a", "host1", SMALL)
    st = SegmentState(seg)
    st.apply(E.maintenance(ts=1.0, by="host1", host="host4", on=True, reason="bios"))
    nk = await nk_status(seg, st, FakeNova(c))
    assert not nk["survives"] and nk["reserve"] == []


async def test_results_name_their_host_vm_and_action() -> None:
    seg = synthetic_segment(4)
    c = cloud()
    c.boot("vm-1", "host1", SMALL)
    st = SegmentState(seg)
    st.apply(
        E.intent(
            ts=1.0,
            by="host1",
            intent_id="restart_vm:vm-1:1000:a1",
            action="restart_vm",
            host="host1",
            vm="vm-1",
            reason="crashed",
        )
    )
    ex = Executor(seg, Drivers(FakeBmc(c), FakeNova(c), FakeAlerts(c)), "host2")
    res = await ex.execute(st.intents["restart_vm:vm-1:1000:a1"], st, lambda: 2.0)
    assert (res["host"], res["vm"], res["action"], res["outcome"]) == (
        "host1",
        "vm-1",
        "restart_vm",
        "ok",
    )
    c.nova_up = False
    with trio.fail_after(5):
        res = await ex.execute(st.intents["restart_vm:vm-1:1000:a1"], st, lambda: 3.0)
    assert (res["vm"], res["outcome"], res["error_kind"]) == ("vm-1", "failed", "unreachable")
    assert not E.check(res)
