"""A fenced host that comes back (decide/return_.py): enabled only on its own agent's
committed reconcile report, a BMC's lie alerted and kept out of service, the enable
retried and alerted, nothing restarted in place on a fenced host."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from meshha.errors import InvariantViolation
from meshha.raft import entries as E
from meshha.raft.intent_key import IntentKey
from meshha.recovery.decide import check_decisions
from meshha.recovery.decide.return_ import REPORT_OVERDUE_S, may_enable, return_report
from tests.unit.test_decide import T0, Leader, alerts, server, vm_failure


def fenced_and_back(**kw: Any) -> Leader:
    L = Leader(servers={"host2": [server("vm-a")]}, **kw)
    L.observe("host2")
    L.run(5)
    assert L.state.is_fenced("host2")
    assert [e["intent"] for e in L.intents("evacuate:")] == ["evacuate:host2:e1:vm-a:a1"]
    L.observe("host2", reachable=True)
    L.run(1)
    assert L.state.verdicts["host2"].kind == "healthy"
    return L


def report(
    L: Leader,
    *,
    booted_at: float | None,
    ok: bool = True,
    by: str = "host2",
    alive_until: float | None = None,
    kept: tuple[str, ...] = (),
) -> None:
    L.commit(
        E.reconcile(
            ts=L.now,
            by=by,
            host="host2",
            episode=1,
            booted_at=booted_at,
            destroyed=["vm-a"],
            kept=list(kept),
            ok=ok,
            detail="" if ok else "nova-api: connection refused",
            alive_until=alive_until,
        )
    )


def fence_ts(L: Leader) -> float:
    return L.state.fenced["host2"].ts


def test_heard_again_is_not_enough_to_be_enabled() -> None:
    L = fenced_and_back()
    L.run(REPORT_OVERDUE_S - 2)
    assert L.intents("enable:") == []
    assert L.intents("alert:unreconciled") == []
    L.run(3)
    assert [e["intent"] for e in L.intents("alert:unreconciled")] == [
        "alert:unreconciled:host2:e1:a1"
    ]
    assert L.intents("enable:") == []


def test_a_clean_report_after_a_reboot_enables_it() -> None:
    L = fenced_and_back()
    report(L, booted_at=fence_ts(L) + 30)
    L.run(1)
    assert [e["intent"] for e in L.intents("enable:")] == ["enable:host2:e1:a1"]
    assert "host2" not in L.state.fenced


def test_a_report_from_another_host_or_an_old_episode_does_not_count() -> None:
    L = fenced_and_back()
    report(L, booted_at=fence_ts(L) + 30, by="host3")  # only its own agent may say so
    L.commit(
        E.reconcile(
            ts=L.now,
            by="host2",
            host="host2",
            episode=0,
            booted_at=L.now,
            destroyed=[],
            kept=[],
            ok=True,
            detail="",
        )
    )
    L.run(2)
    assert L.intents("enable:") == []


def test_a_report_older_than_a_move_of_its_vms_does_not_count() -> None:
    L = Leader(servers={"host2": [server("vm-a")]})
    L.answers["evacuate"] = lambda i: None  # the evacuation is still running
    L.observe("host2")
    L.run(5)
    L.observe("host2", reachable=True)
    report(L, booted_at=fence_ts(L) + 1)
    L.run(2)
    assert return_report(L.state, "host2") is None  # a move is pending
    assert L.intents("enable:") == []
    (evac,) = [i for i in L.state.intents.values() if i.action == "evacuate"]
    L.now += 1
    L.result(evac.id)
    L.run(2)
    assert L.intents("enable:") == []  # the report predates the move: it must report again
    report(L, booted_at=fence_ts(L) + 1)
    L.run(1)
    assert [e["intent"] for e in L.intents("enable:")] == ["enable:host2:e1:a1"]


def test_a_failed_report_waits_for_the_next_one() -> None:
    L = fenced_and_back()
    report(L, booted_at=fence_ts(L) + 30, ok=False)
    L.run(5)
    assert L.intents("enable:") == []
    report(L, booted_at=fence_ts(L) + 30)
    L.run(1)
    assert len(L.intents("enable:")) == 1


def test_up_after_the_bmc_said_off_is_a_lie_even_after_a_reboot() -> None:
    """Cut off behind a lying BMC, the host kept running after its "off", then its own
    watchdog reset it: it booted after the fence, but its agent's mark of when it was
    last up (agent/alive.py) is later than the BMC's "off"."""
    L = fenced_and_back()
    off = fence_ts(L)
    report(L, booted_at=off + 30, alive_until=off + 5)
    L.run(5)
    assert L.intents("enable:") == []
    (lie,) = [a for a in alerts(L) if "bmc-lied" in a["intent"]]
    assert f"was up until {off + 5:.3f}" in lie["params"]["body"]
    assert "host2" in L.state.fenced


def test_last_up_before_the_bmc_said_off_is_no_lie() -> None:
    L = fenced_and_back()
    off = fence_ts(L)
    skew = L.seg.timings.max_clock_skew_s
    report(L, booted_at=off + 30, alive_until=off + skew / 2)  # within the skew bound
    L.run(1)
    assert [e["intent"] for e in L.intents("enable:")] == ["enable:host2:e1:a1"]
    assert not [a for a in alerts(L) if "bmc-lied" in a["intent"]]


def test_a_bmc_that_lied_is_alerted_the_host_kept_out_and_its_power_read_again() -> None:
    L = fenced_and_back()
    report(L, booted_at=T0 - 3600)  # booted an hour before the BMC said "off"
    L.run(5)
    assert L.intents("enable:") == []
    (lie,) = [a for a in alerts(L) if "bmc-lied" in a["intent"]]
    assert lie["params"]["severity"] == "critical"
    assert "BMC of host2" in lie["params"]["subject"]
    assert [e["intent"] for e in L.intents("power_check:")] == ["power_check:host2:e1:a1"]
    assert "host2" in L.state.fenced
    # An operator checks it and vouches for it: maintenance on, then off.
    L.commit(E.maintenance(ts=L.now, by="op", host="host2", on=True, reason="checked BMC"))
    L.run(1)
    L.commit(E.maintenance(ts=L.now, by="op", host="host2", on=False, reason="done"))
    L.run(1)
    assert [e["intent"] for e in L.intents("enable:")] == ["enable:host2:e1:a1"]
    assert len([a for a in alerts(L) if "bmc-lied" in a["intent"]]) == 1
    # Back through the reconciled enable, which says why in the ledger; the window's own
    # listing after the report moved nothing, and its release is not sent as well.
    (enable,) = L.intents("enable:")
    assert "BMC said off but it kept running" in enable["reason"]
    assert "operator vouched" in enable["reason"] and "checked BMC" in enable["reason"]
    assert "host2" not in L.state.fenced
    L.run(5)
    assert L.intents("release:host2:maintenance") == []
    assert len(L.intents("enable:")) == 1


def test_a_fenced_host_held_in_maintenance_returns_without_a_second_enable() -> None:
    """Not a lie: a window while it is fenced does not ask for a new report, and its end
    leaves the enable to the reconciled return (one enabling intent in the ledger)."""
    L = fenced_and_back()
    report(L, booted_at=fence_ts(L) + 30)
    L.commit(E.maintenance(ts=L.now, by="op", host="host2", on=True, reason="firmware"))
    L.run(3)
    assert L.intents("enable:") == []  # nothing touches it in the window
    assert len(L.intents("hold:host2:maintenance")) == 1
    L.commit(E.maintenance(ts=L.now, by="op", host="host2", on=False, reason="done"))
    L.run(5)
    enabling = [e for e in L.intents() if e["action"] in ("enable_compute", "maint_release")]
    assert [e["intent"] for e in enabling] == ["enable:host2:e1:a1"]
    assert "vouched" not in enabling[0]["reason"]


def test_a_self_fenced_host_needs_no_reboot() -> None:
    """Booted before the fence is a lie only when the BMC said off: a host fenced by its
    self-fence deadline destroyed its VMs without rebooting."""
    L = fenced_and_back()
    f = L.state.fenced["host2"]
    L.state.fenced["host2"] = type(f)("self_fence_deadline", f.detail, f.ts, f.episode)
    report(L, booted_at=T0 - 3600)
    L.run(1)
    assert len(L.intents("enable:")) == 1


def test_a_failing_enable_is_retried_with_backoff_then_alerted() -> None:
    L = fenced_and_back()
    L.answers["enable_compute"] = lambda i: ("failed", {"error_kind": "refused"})
    report(L, booted_at=fence_ts(L) + 30)
    L.run(120)
    times = [
        t for t, e in L.proposed if e["kind"] == "intent" and e["intent"].startswith("enable:")
    ]
    assert len(times) == L.seg.recovery.intent_max_attempts
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps == sorted(gaps) and gaps[-1] > gaps[0]  # backoff
    assert [e["intent"] for e in L.intents("alert:enable-failed")] == [
        "alert:enable-failed:host2:e1:a1"
    ]


def test_check_decisions_refuses_an_enable_without_a_report() -> None:
    L = fenced_and_back()
    assert not may_enable(L.state, "host2")
    enable = E.intent(
        ts=L.now,
        by="host1",
        intent_id=IntentKey("enable", host="host2", episode=1).at(1).format(),
        action="enable_compute",
        host="host2",
        reason="hand-made",
    )
    with pytest.raises(InvariantViolation, match="reconcile report"):
        check_decisions(L.state, [enable])


def test_no_vm_restart_on_a_fenced_host_and_the_fence_abandons_a_planned_one() -> None:
    L = Leader(servers={"host3": [server("vm-a")]})
    L.answers["restart_vm"] = lambda i: None  # Nova is slow: the restart stays pending
    vm_failure(L)
    L.run(0.5)
    (restart,) = L.intents("restart_vm:")
    L.observe("host3")
    L.run(5)
    assert L.state.is_fenced("host3")
    assert L.state.intents[restart["intent"]].status == "abandoned"
    L.observe("host3", reachable=True)  # back, but not reconciled: still fenced
    L.run(5)
    assert [e["action"] for e in L.intents() if e.get("vm") == "vm-a"] == [
        "restart_vm",
        "evacuate",
    ]


def test_a_report_that_keeps_failing_is_alerted_not_enabled() -> None:
    L = fenced_and_back()
    report(L, booted_at=fence_ts(L) + 30, ok=False)
    L.run(REPORT_OVERDUE_S + 1)
    assert L.intents("enable:") == []
    (a,) = L.intents("alert:unreconciled")
    assert "nova-api: connection refused" in a["params"]["body"]
