"""decide/stranded.py: the HA VMs a fence stopped and no evacuation moved (the reserve had
no room) are restarted on their host once it is back in service; nothing else is."""

from __future__ import annotations

from tests.unit.test_decide import Leader, server
from tests.unit.test_decide_return import report

BIG = (8, 16384, 100)  # does not fit the reserve's free room below


def fenced_back_and_enabled(kept: list[str] | None = None) -> Leader:
    L = Leader(
        servers={
            "host2": [
                server("vm-a"),
                server("vm-big", size=BIG),
                server("vm-scratch", ha=False, size=BIG),
            ]
        },
        free={"host5": (4, 8192, 100)},
    )
    L.observe("host2")
    L.run(5)
    assert L.state.is_fenced("host2")
    assert [e["vm"] for e in L.intents("evacuate:")] == ["vm-a"]
    assert [e["intent"] for e in L.intents("alert:unplaced")] == ["alert:unplaced:host2:e1:a1"]
    assert stranded(L) == []  # still fenced: nothing starts on it
    L.observe("host2", reachable=True)
    L.run(1)
    report(L, booted_at=L.now - 1, kept=tuple(kept or ()))
    L.run(1)
    assert [e["intent"] for e in L.intents("enable:")] == ["enable:host2:e1:a1"]
    return L


def stranded(L: Leader) -> list[tuple[str, str]]:
    return [(e["vm"], e["host"]) for e in L.intents("restart_vm:")]


def test_an_unplaced_ha_vm_is_restarted_on_its_host_once_it_is_back_in_service() -> None:
    L = fenced_back_and_enabled()
    L.run(2)
    assert stranded(L) == [("vm-big", "host2")]  # not vm-a (moved), not vm-scratch (no HA)
    restart = L.intents("restart_vm:")[0]
    assert "stopped by its fence and not evacuated" in restart["reason"]
    L.run(30)
    assert len(L.intents("restart_vm:")) == 1  # once


def test_a_vm_its_host_reports_running_is_left_alone() -> None:
    L = fenced_back_and_enabled(kept=["vm-big"])
    L.run(5)
    assert stranded(L) == []
