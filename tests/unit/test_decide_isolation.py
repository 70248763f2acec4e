"""decide/isolation.py: the VMs a host destroyed when it isolated itself are restarted on
it once it is back, unless the majority fenced it meanwhile (pure: state in, entries out)."""

from __future__ import annotations

from meshha.config.synthetic import synthetic_segment
from meshha.raft import entries as E
from meshha.raft.state import SegmentState
from meshha.recovery.decide import decide
from meshha.recovery.decide.isolation import isolation_recovery
from meshha.recovery.decide.steps import Context

T0 = 1000.0
SEG = synthetic_segment(5, reserved=("host5",))
VMS = [{"vm": "a", "ha": True}, {"vm": "b", "ha": False}, {"vm": "c"}]


def state_with(*entries: E.Entry) -> SegmentState:
    s = SegmentState(SEG)
    for e in entries:
        s.apply(e)
    return s


def isolated(on: bool, ts: float, vms: list[dict[str, object]] | None = VMS) -> E.Entry:
    return E.isolation(ts=ts, by="host1", host="host1", on=on, reason="x", vms=vms)


def verdict(kind: E.VerdictKind, ts: float) -> E.Entry:
    nets = ["admin", "storage", "tenant"] if kind == "failed" else []
    return E.verdict(
        ts=ts, by="host3", host="host1", verdict=kind, networks=nets, reason="r", evidence=[]
    )


def restarts(s: SegmentState) -> list[tuple[str, str]]:
    out = isolation_recovery(Context(SEG, s, T0 + 10, "host3"))
    return [(e["action"], e["vm"]) for e in out]


def test_back_and_not_fenced_restarts_each_ha_vm_on_its_host() -> None:
    s = state_with(isolated(False, T0))
    assert restarts(s) == [("restart_vm", "a"), ("restart_vm", "c")]  # c: default HA
    out = decide(SEG, s, T0 + 10, "host3")
    assert {e["host"] for e in out if e.get("action") == "restart_vm"} == {"host1"}


def test_still_isolated_or_not_healthy_waits() -> None:
    assert restarts(state_with(isolated(True, T0))) == []
    assert restarts(state_with(isolated(False, T0), verdict("suspect", T0 + 1))) == []


def test_failed_but_never_fenced_restarts_once_healthy() -> None:
    s = state_with(verdict("failed", T0 - 2), isolated(False, T0))
    assert restarts(s) == []
    s.apply(verdict("healthy", T0 + 1))
    assert [vm for _, vm in restarts(s)] == ["a", "c"]


def test_fenced_by_the_majority_nothing_more() -> None:
    fenced = E.fenced(ts=T0 - 1, by="host3", host="host1", method="bmc", reason="r", evidence={})
    s = state_with(
        verdict("failed", T0 - 2), fenced, isolated(False, T0), verdict("healthy", T0 + 1)
    )
    assert restarts(s) == []


def test_a_restart_is_proposed_once() -> None:
    s = state_with(isolated(False, T0))
    for e in isolation_recovery(Context(SEG, s, T0 + 10, "host3")):
        s.apply(e)
    assert restarts(s) == []


def test_an_isolation_without_vms_restarts_nothing() -> None:
    assert restarts(state_with(isolated(False, T0, vms=None))) == []
