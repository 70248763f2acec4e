"""The SLA report over a ledger with known outages: the numbers are checked, not the format.

The ledger (built with the real entry builders, times from T0 = 10 000 s):
- vm-a crashes at +100 s, is restarted ok at +130 s           → a 30 s VM outage;
- vm-b crashes at +200 s, the restart fails at +210 s, a second
  attempt succeeds at +260 s                                    → 60 s, one failed attempt;
- host2 is declared failed at +1000 s, fenced at +1004 s (intent +1001 s), its inventory
  lists vm-c, vm-d (HA) and vm-x (not HA); vm-c is evacuated at +1030 s, vm-d at +1090 s
                                                                → 30 s and 90 s host outages,
                                                                  host MTTR 90 s;
- host3 loses storage (degraded) at +2000 s, healthy at +2100 s, no evacuation
                                                                → a 100 s network incident;
- nova-compute on host1 goes down at +3000 s and is restarted at +3010 s; libvirtd on
  host1 is restarted in place at +3500 s                        → one 10 s process repair,
                                                                  one in place;
- host4 is in maintenance +4000 s … +4600 s; the brake holds host2,host3 +5000 … +5300 s;
- vm-e crashes at +9000 s and is still down at the end (+10 000 s) → ongoing.
"""

from __future__ import annotations

import json

import pytest

from meshha.ledger import render
from meshha.ledger.report import ReportBuilder, build_report
from meshha.raft import entries as E

T0 = 10_000.0


def t(s: float) -> float:
    return T0 + s


def intent(at: float, iid: str, action: str, host: str, vm: str | None = None, **params):
    return E.intent(
        ts=t(at),
        by="host1",
        intent_id=iid,
        action=action,
        host=host,
        vm=vm,
        reason="test",
        params=params,
    )


def result(at: float, iid: str, outcome: str = "ok", data=None, detail: str = "done"):
    return E.result(
        ts=t(at),
        by="host1",
        intent_id=iid,
        outcome=outcome,
        detail=detail,
        error_kind=None if outcome == "ok" else "unreachable",
        data=data,
    )


def verdict(at: float, host: str, kind: str, nets=()):
    return E.verdict(
        ts=t(at), by="host1", host=host, verdict=kind, networks=list(nets), reason="r", evidence=[]
    )


LEDGER = [
    E.vm_failure(ts=t(100), by="host1", host="host1", vm="vm-a", event="crashed", detail="qemu"),
    intent(101, "restart_vm:vm-a:1:a1", "restart_vm", "host1", "vm-a"),
    result(130, "restart_vm:vm-a:1:a1"),
    E.vm_failure(ts=t(200), by="host1", host="host1", vm="vm-b", event="crashed", detail="qemu"),
    intent(201, "restart_vm:vm-b:1:a1", "restart_vm", "host1", "vm-b"),
    result(210, "restart_vm:vm-b:1:a1", "failed", detail="nova unreachable"),
    intent(215, "restart_vm:vm-b:1:a2", "restart_vm", "host1", "vm-b"),
    result(260, "restart_vm:vm-b:1:a2"),
    verdict(1000, "host2", "failed", ["admin", "storage"]),
    intent(1001, "fence:host2:e1:a1", "fence", "host2"),
    result(1004, "fence:host2:e1:a1", data={"method": "bmc", "attempts": 1}),
    intent(1005, "inventory:host2:e1:evacuate:a1", "inventory", "host2", purpose="evacuate"),
    result(
        1006,
        "inventory:host2:e1:evacuate:a1",
        data={
            "servers": [
                {"id": "vm-c", "ha": True},
                {"id": "vm-d", "ha": True},
                {"id": "vm-x", "ha": False},
            ]
        },
    ),
    intent(1007, "evacuate:host2:e1:vm-c:a1", "evacuate", "host2", "vm-c"),
    intent(1007, "evacuate:host2:e1:vm-d:a1", "evacuate", "host2", "vm-d"),
    result(1030, "evacuate:host2:e1:vm-c:a1"),
    result(1090, "evacuate:host2:e1:vm-d:a1"),
    verdict(2000, "host3", "degraded", ["storage"]),
    verdict(2100, "host3", "healthy"),
    E.process_failure(
        ts=t(3000), by="host1", host="host1", process="nova-compute", outcome="down", detail=""
    ),
    E.process_failure(
        ts=t(3010), by="host1", host="host1", process="nova-compute", outcome="restarted", detail=""
    ),
    E.process_failure(
        ts=t(3500), by="host1", host="host1", process="libvirtd", outcome="restarted", detail=""
    ),
    E.maintenance(ts=t(4000), by="host1", host="host4", on=True, reason="bios", operator="ops"),
    E.maintenance(ts=t(4600), by="host1", host="host4", on=False, reason="done"),
    E.brake(ts=t(5000), by="host1", on=True, hosts=["host2", "host3"], reason="2 of 5 hosts"),
    intent(5001, "fence:host3:e2:a1", "fence", "host3"),
    E.brake(ts=t(5300), by="host1", on=False, hosts=[], reason="released by operator ops"),
    E.vm_failure(ts=t(9000), by="host1", host="host1", vm="vm-e", event="crashed", detail="qemu"),
]


@pytest.fixture(scope="module")
def rep():
    return build_report(LEDGER, t(0), t(10_000), nk={"k": 1, "survives": True, "reason": "fits"})


def test_per_vm_outages_downtime_and_availability(rep) -> None:
    lines = {v.vm: v for v in rep.vms}
    assert {vm: v.downtime_s for vm, v in lines.items()} == {
        "vm-a": 30.0,
        "vm-b": 60.0,
        "vm-c": 30.0,
        "vm-d": 90.0,
        "vm-e": 1000.0,
    }
    assert lines["vm-a"].availability == pytest.approx(1 - 30 / 10_000)
    assert lines["vm-e"].availability == pytest.approx(0.9)
    assert lines["vm-e"].ongoing and not lines["vm-d"].ongoing
    assert lines["vm-c"].host == "host2"
    assert rep.non_ha_vms == 1  # vm-x: counted, not tracked
    assert rep.downtime_s == pytest.approx(1210.0)


def test_mttr_per_failure_class(rep) -> None:
    c = {x.cls: x for x in rep.classes}
    assert (c["vm"].incidents, c["vm"].repaired, c["vm"].ongoing) == (3, 2, 1)
    assert c["vm"].mttr_s == pytest.approx(45.0)  # (30 + 60) / 2
    assert c["vm"].max_s == pytest.approx(60.0)
    assert (c["host"].incidents, c["host"].mttr_s) == (1, pytest.approx(90.0))
    assert (c["network"].incidents, c["network"].mttr_s) == (1, pytest.approx(100.0))
    assert (c["process"].incidents, c["process"].in_place) == (2, 1)
    assert c["process"].mttr_s == pytest.approx(10.0)  # the in-place one has no repair time


def test_per_host_fences_windows_and_failed_recoveries(rep) -> None:
    assert rep.host_failures["host1"] == {
        "vm": 3,
        "process": 2,
        "host": 0,
        "network": 0,
        "fences": 0,
    }
    assert rep.host_failures["host2"]["host"] == 1 and rep.host_failures["host2"]["fences"] == 1
    assert rep.host_failures["host3"]["network"] == 1
    (fence,) = rep.fences
    assert (fence.host, fence.method, fence.took_s, fence.since_detection_s) == (
        "host2",
        "bmc",
        pytest.approx(3.0),
        pytest.approx(4.0),
    )
    (m,) = rep.maintenance
    assert (m.host, m.end - m.start, m.reason, m.who) == ("host4", 600.0, "bios", "ops")
    (b,) = rep.brakes
    assert (b.host, b.end - b.start) == ("host2,host3", 300.0)
    outcomes = [(a.intent, a.outcome) for a in rep.failed]
    assert outcomes == [
        ("restart_vm:vm-b:1:a1", "failed"),
        ("fence:host3:e2:a1", "pending"),  # held by the brake: never got a result
    ]


def test_range_clips_and_earlier_entries_set_the_scene() -> None:
    # From +1050 s: vm-c was already back, vm-d was down from before the range.
    rep = build_report(LEDGER, t(1050), t(1100))
    assert {v.vm: v.downtime_s for v in rep.vms} == {"vm-d": 40.0}
    assert rep.vms[0].availability == pytest.approx(0.2)
    assert [c.incidents for c in rep.classes] == [0, 0, 0, 0]  # started before the range
    # Maintenance that started before the range and is still on at its end.
    rep = build_report(LEDGER[:-5], t(4100), t(4200))
    assert [(w.host, w.end) for w in rep.maintenance] == [("host4", None)]


def test_entries_after_until_are_not_read() -> None:
    rep = build_report(LEDGER, t(0), t(150))
    assert [v.vm for v in rep.vms] == ["vm-a"] and rep.entries == 3


def test_builder_is_incremental() -> None:
    b = ReportBuilder()
    for e in LEDGER[:3]:
        b.feed(e)
    assert b.report(t(0), t(200)).vms[0].downtime_s == 30.0


def test_renderers_carry_the_numbers(rep) -> None:
    text = render.text(rep, "seg1")
    assert "vm-e" in text and "99.700%" in text and "MTTR" in text and "1m 30s" in text
    data = json.loads(render.to_json(rep, "seg1"))
    assert data["vms"][0]["vm"] == "vm-a" and data["classes"][0]["mttr_s"] == 45.0
    assert data["since_iso"].endswith("Z")
    page = render.html(rep, "seg1")
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "vm-d" in page
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_tables_stay_aligned_with_long_cells_and_ages_read_well() -> None:
    out = render.table(
        ("host", "verdict", "since", "admin"),
        [
            ("host1", "healthy", render.duration(4.25), "ok"),
            ("compute-0042", "degraded(storage,tenant,admin)", render.duration(3725), "LOST"),
        ],
    ).splitlines()
    for col in ("verdict", "since", "admin"):
        at = out[0].index(col)
        assert all(line[at - 2 : at] == "  " and line[at] != " " for line in out), col
    assert [render.duration(s) for s in (0.4, 65, 7200, 90061)] == [
        "0.4 s",
        "1m 05s",
        "2h 00m",
        "1d 01h",
    ]


def test_reading_before_the_range_stays_bounded_and_gives_the_same_numbers() -> None:
    # Feed everything up to +3000 s with a compaction after every entry (as the agent's
    # reader does page by page before `since`), then the rest: same report from +3000 s.
    b = ReportBuilder()
    for e in LEDGER:
        if e["ts"] >= t(10_000):
            break
        b.feed(e)
        if e["ts"] < t(3000):
            b.compact(100)
    assert len(b.outages) <= len(LEDGER) and all(
        o.end is None for o in b.outages if o.start < t(3000)
    )
    got, want = b.report(t(3000), t(10_000)), build_report(LEDGER, t(3000), t(10_000))
    assert (got.vms, got.classes, got.maintenance, got.brakes, got.failed) == (
        want.vms,
        want.classes,
        want.maintenance,
        want.brakes,
        want.failed,
    )
