"""Recovery decisions, driven the way the leader drives them: `decide` proposes entries,
they are applied to the state with increasing indices, a fake executor commits results
for the pending intents, and time moves on. No trio, no network: the decision core alone.
"""

from __future__ import annotations

import copy
import dataclasses
import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from meshha.config.model import Policy, Recovery, Segment
from meshha.config.synthetic import synthetic_segment
from meshha.errors import InvariantViolation
from meshha.raft import entries as E
from meshha.raft.entries import Entry
from meshha.raft.intent_key import IntentKey
from meshha.raft.state import MAINTENANCE_ACTIONS, MAX_FINISHED_INTENTS, Intent, SegmentState
from meshha.recovery.decide import (
    Audit,
    check_decisions,
    decide,
    decision_problems,
    pending_intents,
)
from meshha.recovery.verdicts import last_heard, self_fence_due

T0 = 1000.0
DT = 0.1

# What the fake executor answers for an intent: (outcome, result kwargs), or None to leave
# it pending (a BMC that does not answer, a slow Nova).
Answer = tuple[str, dict[str, Any]] | None


def server(
    vm: str, priority: str = "medium", ha: bool = True, size: tuple[int, int, int] = (2, 4096, 40)
) -> dict[str, Any]:
    return {
        "id": vm,
        "vcpus": size[0],
        "ram_mb": size[1],
        "disk_gb": size[2],
        "priority": priority,
        "ha": ha,
    }


class Leader:
    """One leader and its committed state, with a fake executor and a clock."""

    def __init__(
        self,
        seg: Segment | None = None,
        *,
        servers: dict[str, list[dict[str, Any]]] | None = None,
        free: dict[str, tuple[int, int, int]] | None = None,
        me: str = "host1",
        keep_reserve_empty: bool = False,
    ) -> None:
        self.seg = seg or synthetic_segment()
        if not keep_reserve_empty:  # most tests here are about other steps: leave holds out
            rec = dataclasses.replace(self.seg.recovery, reserve_disable=False)
            self.seg = dataclasses.replace(self.seg, recovery=rec)
        self.state = SegmentState(self.seg)
        self.now = T0
        self.me = me
        self.log: list[Entry] = []
        self.proposed: list[tuple[float, Entry]] = []
        self.servers = servers or {}
        sizes = free or {}
        self.facts = [
            {
                "host": h.name,
                "vcpus_free": sizes.get(h.name, (16, 32768, 500))[0],
                "ram_mb_free": sizes.get(h.name, (16, 32768, 500))[1],
                "disk_gb_free": sizes.get(h.name, (16, 32768, 500))[2],
                "running_vms": 0 if h.role == "reserved" else len(self.servers.get(h.name, [])),
            }
            for h in self.seg.hosts
        ]
        self.answers: dict[str, Callable[[Intent], Answer]] = {}

    # -- the log -----------------------------------------------------------------------

    def commit(self, *entries: Entry) -> None:
        for e in entries:
            self.state.apply(e, self.state.index + 1)
            self.log.append(e)

    def decide(self) -> list[Entry]:
        return decide(self.seg, self.state, self.now, self.me)

    def step(self) -> list[Entry]:
        out = self.decide()
        check_proposal(self.state, out)
        self.proposed += [(self.now, e) for e in out]
        self.commit(*out)
        return out

    # -- the world ---------------------------------------------------------------------

    def observe(
        self,
        host: str,
        nets: tuple[str, ...] | None = None,
        by: tuple[str, ...] | None = None,
        reachable: bool = False,
    ) -> None:
        nets = nets or self.seg.network_names
        by = by or tuple(v for v in self.seg.voters if v != host)
        self.commit(
            *[
                E.observation(
                    ts=self.now, by=o, host=host, network=n, reachable=reachable, since=self.now
                )
                for o in by
                for n in nets
            ]
        )

    def result(self, iid: str, outcome: E.Outcome = "ok", **kw: Any) -> None:
        kw.setdefault("detail", outcome)
        self.commit(E.result(ts=self.now, by=self.me, intent_id=iid, outcome=outcome, **kw))

    def execute(self) -> None:
        for i in pending_intents(self.state):
            answer = self.answers.get(i.action, lambda i: ("ok", {}))(i)
            if answer is None:
                continue
            outcome, kw = answer
            if i.action == "inventory" and outcome == "ok":
                kw = {"data": self.inventory(i.host), **kw}
            self.result(i.id, outcome, **kw)

    def inventory(self, host: str) -> dict[str, Any]:
        return {"ts": self.now, "servers": self.servers.get(host, []), "facts": self.facts}

    def run(self, seconds: float, dt: float = DT) -> list[Entry]:
        out: list[Entry] = []
        end = self.now + seconds
        while self.now < end - 1e-9:
            out += self.step()
            self.execute()
            self.now = round(self.now + dt, 6)
        return out

    # -- reading -----------------------------------------------------------------------

    def intents(self, prefix: str = "") -> list[Entry]:
        return [
            e for _, e in self.proposed if e["kind"] == "intent" and e["intent"].startswith(prefix)
        ]

    def first(self, prefix: str) -> float | None:
        return next(
            (
                t
                for t, e in self.proposed
                if e["kind"] == "intent" and e["intent"].startswith(prefix)
            ),
            None,
        )

    def entries(self, kind: str) -> list[tuple[float, Entry]]:
        return [(t, e) for t, e in self.proposed if e["kind"] == kind]


def check_proposal(state: SegmentState, out: list[Entry]) -> None:
    """Safety of one `decide` output against the state it was computed from."""
    ids = [e["intent"] for e in out if e["kind"] == "intent"]
    assert len(ids) == len(set(ids)), f"duplicate intents in one proposal: {ids}"
    for e in out:
        if e["kind"] != "intent":
            continue
        assert e["intent"] not in state.intents, f"re-proposed {e['intent']}"
        if e["host"] and e["action"] not in MAINTENANCE_ACTIONS:
            assert not state.in_maintenance(e["host"]), e
        if e["target"]:
            assert not state.in_maintenance(e["target"]), e
        if e["action"] == "fence":
            assert not state.brake.on, f"fence while the brake holds: {e}"
        if e["action"] == "evacuate":
            assert state.is_fenced(e["host"]), f"evacuate from unfenced host: {e}"
            assert e["target"] != e["host"]
            assert state.roles[e["target"]] == "reserved", e
            assert state.verdicts[e["target"]].kind == "healthy", e


def alerts(leader: Leader) -> list[Entry]:
    return [e for e in leader.intents() if e["action"] == "alert"]


# -- the host-failure chain --------------------------------------------------------------


def test_a_failed_host_is_fenced_disabled_inventoried_and_evacuated_by_priority() -> None:
    spec = synthetic_segment(hosts=6, reserved=("host5", "host6"))
    servers = {
        "host2": [
            server("vm-low", "low"),
            server("vm-high", "high"),
            server("vm-med", "medium"),
            server("vm-noha", "high", ha=False),
        ]
    }
    L = Leader(spec, servers=servers)
    L.commit(E.maintenance(ts=T0, by="host1", host="host6", on=True, reason="disk swap"))
    L.observe("host2")
    L.run(5)

    chain = [e["action"] for e in L.intents() if e["host"] == "host2" and e["action"] != "alert"]
    assert chain[:3] == ["fence", "disable_compute", "inventory"]
    evac = L.intents("evacuate:")
    assert [e["vm"] for e in evac] == ["vm-high", "vm-med", "vm-low"]
    assert [e["order"] for e in evac] == [0, 1, 2]
    # Reserved capacity only: not host6 (maintenance), not host2, never a compute host.
    assert {e["target"] for e in evac} == {"host5"}
    assert all(e["intent"].endswith(":a1") for e in evac)
    # The fence result came before the first evacuation was proposed.
    fence_ok = next(
        k for k, e in enumerate(L.log) if e["kind"] == "result" and e["intent"].startswith("fence:")
    )
    first_evac = next(k for k, e in enumerate(L.log) if e in evac)
    assert fence_ok < first_evac and L.log[fence_ok]["outcome"] == "ok"
    # The disable really forces the service down (the default), and the end is reported.
    assert L.state.intents["disable:host2:e1:a1"].status == "ok"
    done = [e for e in alerts(L) if e["intent"] == "alert:recovered:host2:e1:a1"]
    assert len(done) == 1 and done[0]["params"]["severity"] == "warning"
    assert "evacuated 3 VMs" in done[0]["params"]["body"]
    assert "not HA, left alone: 1" in done[0]["params"]["body"]


def test_the_chain_waits_for_each_step() -> None:
    L = Leader(servers={"host2": [server("vm-a")]})
    L.answers["fence"] = lambda i: None  # the BMC never answers
    L.observe("host2")
    L.run(30)
    assert [e["action"] for e in L.intents() if e["host"] == "host2"] == ["fence", "alert"]
    # A fence still running after the self-fence deadline is alerted, and nothing moves.
    (stuck,) = [e for e in alerts(L) if e["host"] == "host2"]
    assert stuck["params"]["subject"] == "cannot fence host2 through its BMC"
    assert not L.state.is_fenced("host2")
    # Only its result lets the chain go on.
    L.result("fence:host2:e1:a1")
    L.answers.pop("fence")
    L.run(2)
    actions = [e["action"] for e in L.intents() if e["host"] == "host2" and e["action"] != "alert"]
    assert actions[:4] == ["fence", "disable_compute", "inventory", "evacuate"]


def test_fences_wait_for_the_settle_time_after_the_verdict() -> None:
    L = Leader()
    L.observe("host2")
    L.run(3)
    ((t_verdict, _),) = [(t, e) for t, e in L.entries("verdict") if e["verdict"] == "failed"]
    t_fence = L.first("fence:host2")
    assert t_fence is not None
    assert t_fence >= t_verdict + L.seg.timings.suspect_after_s
    assert t_fence < t_verdict + L.seg.timings.suspect_after_s + 2 * DT


def test_used_reserve_is_replaced_by_an_empty_compute_host() -> None:
    servers = {"host1": [server("vm-c")], "host2": [server("vm-a")], "host3": [server("vm-b")]}
    L = Leader(servers=servers)  # host4 is the compute host that runs nothing
    L.observe("host2")
    L.run(5)
    roles = {e["host"]: e["role"] for _, e in L.entries("reserve")}
    assert roles == {"host4": "reserved", "host5": "compute"}
    assert L.state.roles["host4"] == "reserved" and L.state.roles["host5"] == "compute"
    n = len(L.proposed)
    L.run(3)
    assert len(L.proposed) == n  # stable: nothing more to do while host2 stays down


def test_unplaced_vms_raise_one_alert_and_the_rest_are_evacuated() -> None:
    big = (64, 4096, 40)
    servers = {"host2": [server("vm-a"), server("vm-big1", size=big), server("vm-big2", size=big)]}
    L = Leader(servers=servers)
    L.observe("host2")
    L.run(10)
    assert [e["vm"] for e in L.intents("evacuate:")] == ["vm-a"]
    unplaced = [e for e in alerts(L) if e["intent"].startswith("alert:unplaced:")]
    assert len(unplaced) == 1
    assert unplaced[0]["params"]["severity"] == "critical"
    assert "vm-big1" in unplaced[0]["params"]["body"] and "vm-big2" in unplaced[0]["params"]["body"]


def test_a_failed_evacuation_is_retried_with_backoff_up_to_the_limit() -> None:
    L = Leader(servers={"host2": [server("vm-a")]})
    L.answers["evacuate"] = lambda i: ("failed", {"error_kind": "conflict"})
    L.observe("host2")
    L.run(60)
    attempts = [e["intent"] for e in L.intents("evacuate:")]
    n = L.seg.recovery.intent_max_attempts
    assert attempts == [f"evacuate:host2:e1:vm-a:a{k}" for k in range(1, n + 1)]
    times = [L.first(a) for a in attempts]
    backoff = L.seg.recovery.intent_retry_backoff_s
    for k in range(1, n):
        assert times[k] - times[k - 1] >= backoff * 2 ** (k - 1)  # type: ignore[operator]
    final = [e for e in alerts(L) if e["intent"].startswith("alert:recovered:")]
    assert len(final) == 1 and final[0]["params"]["severity"] == "critical"


def test_the_final_report_waits_for_evacuation_retries() -> None:
    L = Leader(servers={"host2": [server("vm-a"), server("vm-b")]})
    L.answers["evacuate"] = lambda i: (
        ("failed", {"error_kind": "conflict"}) if i.id.endswith("vm-a:a1") else ("ok", {})
    )
    L.observe("host2")
    L.run(20)
    assert L.state.intents["evacuate:host2:e1:vm-a:a2"].status == "ok"
    final = [e for e in alerts(L) if e["intent"].startswith("alert:recovered:")]
    assert len(final) == 1
    assert final[0]["params"]["severity"] == "warning", final[0]["params"]["body"]
    assert L.first("alert:recovered:") > L.first("evacuate:host2:e1:vm-a:a2")  # type: ignore[operator]


def test_a_host_back_after_a_fence_gets_its_compute_service_enabled() -> None:
    L = Leader(servers={"host2": [server("vm-a")]})
    L.observe("host2")
    L.run(5)
    assert L.state.is_fenced("host2")
    L.observe("host2", reachable=True)  # powered on by someone, agent rejoined
    L.run(2)
    assert L.intents("enable:") == []  # heard is not enough: its agent must report
    L.commit(
        E.reconcile(
            ts=L.now,
            by="host2",
            host="host2",
            episode=1,
            booted_at=L.now - 1,
            destroyed=[],
            kept=[],
            ok=True,
            detail="",
        )
    )
    L.run(2)
    assert [e["intent"] for e in L.intents("enable:")] == ["enable:host2:e1:a1"]
    assert not L.state.is_fenced("host2") and L.state.verdicts["host2"].kind == "healthy"
    n = len(L.proposed)
    L.run(2)
    assert len(L.proposed) == n


def _report(L: Leader, host: str, booted_at: float | None, kept: tuple[str, ...] = ()) -> None:
    L.commit(
        E.reconcile(
            ts=L.now,
            by=host,
            host=host,
            episode=L.state.episode[host],
            booted_at=booted_at,
            destroyed=[],
            kept=list(kept),
            ok=True,
            detail="",
        )
    )


def _back_before_its_evacuation(servers: list[dict[str, Any]]) -> Leader:
    """host2 fenced by its BMC and heard again at once (powered on right after the
    fence), before its own self-fence was due: nothing has been evacuated yet."""
    L = Leader(servers={"host2": servers})
    L.observe("host2")
    L.run(2)
    assert L.state.is_fenced("host2") and L.intents("evacuate:") == []
    L.observe("host2", reachable=True)
    L.run(0.5)
    assert L.state.verdicts["host2"].kind == "healthy"
    return L


def test_a_host_back_before_its_evacuation_has_its_stopped_vms_evacuated_then_enabled() -> None:
    """Its VMs stopped with the fence; enabled at once, the host would hold them dead
    for good. Its agent's report that it booted after the fence (a real power-off, not
    a lie) lets the chain go on; the VM it runs again (kept) stays; the enable waits
    until the evacuations are done."""
    L = _back_before_its_evacuation([server("vm-a"), server("vm-b", "high"), server("vm-c")])
    L.run(3)
    assert L.intents("evacuate:") == [] and L.intents("enable:") == []  # no report: nothing
    _report(L, "host2", booted_at=L.state.fenced["host2"].ts + 1, kept=("vm-c",))
    L.answers["evacuate"] = lambda i: None  # in flight
    L.run(2)
    assert sorted(e["vm"] for e in L.intents("evacuate:")) == ["vm-a", "vm-b"]
    assert L.intents("enable:") == []  # not under evacuations in flight
    del L.answers["evacuate"]
    L.run(2)
    assert L.intents("enable:") == []  # the report predates the moves: a new one first
    _report(L, "host2", booted_at=L.state.fenced["host2"].ts + 1, kept=("vm-c",))
    L.run(2)
    assert [e["intent"] for e in L.intents("enable:")] == ["enable:host2:e1:a1"]
    assert any(e["intent"].startswith("alert:recovered:host2") for e in L.intents("alert:"))


def test_a_host_back_before_its_evacuation_whose_bmc_lied_keeps_its_vms() -> None:
    """Booted before the BMC's "off": it never went down, its VMs run; nothing moves."""
    L = _back_before_its_evacuation([server("vm-a")])
    _report(L, "host2", booted_at=L.state.fenced["host2"].ts - 600)
    L.run(5)
    assert L.intents("evacuate:") == [] and L.intents("enable:") == []
    assert any(e["intent"].startswith("alert:bmc-lied:host2") for e in L.intents("alert:"))


def test_nothing_is_done_for_a_host_in_maintenance() -> None:
    L = Leader(servers={"host2": [server("vm-a")]})
    L.commit(E.maintenance(ts=T0, by="host1", host="host2", on=True, reason="bios"))
    L.observe("host2")
    L.commit(E.vm_failure(ts=T0, by="host2", host="host2", vm="vm-a", event="crashed", detail=""))
    L.run(30)
    # Only maintenance's own steps (disable it, list it, move its VMs off): no recovery.
    assert {e["action"] for e in L.intents()} <= {"maint_hold", "inventory", "drain"}
    assert not [e for e in L.intents() if e["action"] in ("fence", "restart_vm", "evacuate")]
    assert L.state.verdicts["host2"].kind == "maintenance"


def test_finished_intent_eviction_does_not_restart_a_finished_chain() -> None:
    L = Leader(servers={"host2": [server("vm-a")]})
    L.observe("host2")
    L.run(5)
    done = {e["intent"] for e in L.intents()}
    assert "evacuate:host2:e1:vm-a:a1" in done
    for k in range(MAX_FINISHED_INTENTS):  # unrelated work, e.g. months of VM alerts
        iid = f"alert:other:{k}:a1"
        L.commit(E.intent(ts=L.now, by="host1", intent_id=iid, action="alert", host="", reason="x"))
        L.result(iid)
    again = [e["intent"] for e in L.decide() if e["kind"] == "intent"]
    assert not set(again) & done, again


# -- fencing through the BMC, and the self-fence deadline ----------------------------------


def bmc_down(i: Intent) -> Answer:
    return ("failed", {"error_kind": "unreachable", "detail": "no route to BMC"})


def test_bmc_failure_retries_alerts_then_proves_the_self_fence_deadline() -> None:
    L = Leader(servers={"host2": [server("vm-a")]})
    L.answers["fence"] = bmc_down
    L.observe("host2")
    heard = L.now
    t = L.seg.timings
    deadline = heard + t.self_fence_deadline_s + t.max_clock_skew_s
    L.run(deadline - L.now + 2)

    # Retries with exponential backoff from the last failure, bounded.
    fences = [e["intent"] for e in L.intents("fence:host2:")]
    assert fences[0] == "fence:host2:e1:a1" and len(fences) >= 3
    assert len(fences) <= L.seg.recovery.intent_max_attempts
    backoff = L.seg.recovery.intent_retry_backoff_s
    for k in range(1, len(fences)):
        prev = L.state.intents[fences[k - 1]]
        assert L.first(fences[k]) >= prev.done_ts + backoff * 2 ** (k - 1)  # type: ignore[operator]
    # One alert, saying when the deadline passes.
    wait = [e for e in alerts(L) if e["intent"].startswith("alert:fence-wait:host2")]
    assert len(wait) == 1 and f"{deadline:.3f}" in wait[0]["params"]["body"]
    # The proof: only once the deadline has passed, and it lets the chain go on.
    ((t_fenced, fenced),) = L.entries("fenced")
    assert fenced["method"] == "self_fence_deadline"
    assert last_heard(L.state, "host2") == heard
    assert deadline <= t_fenced < deadline + DT + 1e-6
    assert fenced["evidence"]["deadline"] == deadline
    assert L.state.fenced["host2"].method == "self_fence_deadline"
    (evac,) = L.intents("evacuate:")
    assert L.first("evacuate:") > t_fenced  # type: ignore[operator]
    assert "self_fence_deadline" in evac["reason"]


def test_no_self_fence_proof_while_a_fence_attempt_is_outstanding() -> None:
    L = Leader()
    calls: list[str] = []

    def first_fails_then_hangs(i: Intent) -> Answer:
        calls.append(i.id)
        return bmc_down(i) if i.id.endswith(":a1") else None

    L.answers["fence"] = first_fails_then_hangs
    L.observe("host2")
    L.run(30)
    assert L.entries("fenced") == []
    assert L.state.intents["fence:host2:e1:a2"].status == "pending"


def test_no_self_fence_proof_when_the_policy_forbids_it() -> None:
    L = Leader(synthetic_segment(recovery=Recovery(allow_self_fence_proof=False)))
    L.answers["fence"] = bmc_down
    L.observe("host2")
    L.run(40)
    assert L.entries("fenced") == [] and L.intents("evacuate:") == []
    manual = [e for e in alerts(L) if e["intent"].startswith("alert:fence-failed:host2")]
    assert len(manual) == 1 and "manual action" in manual[0]["params"]["subject"]


def test_no_self_fence_proof_for_a_host_degraded_on_a_fencing_network() -> None:
    L = Leader(servers={"host2": [server("vm-a")]})
    L.answers["fence"] = bmc_down
    L.observe("host2", nets=("storage",))  # still reachable on admin and tenant
    L.run(60)
    assert L.state.verdicts["host2"].kind == "degraded"
    assert L.intents("fence:host2:e1:a1")  # storage loss fences...
    assert L.entries("fenced") == []  # ...but the deadline proves nothing: it runs its VMs
    assert L.intents("evacuate:") == []
    assert any(e["intent"].startswith("alert:fence-failed:host2") for e in alerts(L))


def test_no_self_fence_proof_for_a_process_failure() -> None:
    spec = synthetic_segment(recovery=Recovery(process_restart_failure="fence_evacuate"))
    L = Leader(spec, servers={"host3": [server("vm-a")]})
    L.answers["fence"] = bmc_down
    L.observe("host3", nets=("admin",), by=("host1", "host2"))  # something to date it by
    L.commit(
        E.process_failure(
            ts=L.now,
            by="host3",
            host="host3",
            process="libvirtd",
            outcome="restart_failed",
            detail="x",
        )
    )
    L.run(60)
    assert L.state.verdicts["host3"].networks == ("process:libvirtd",)
    assert L.intents("fence:host3:e1:a1")
    assert L.entries("fenced") == [] and L.intents("evacuate:") == []


# -- the mass-failure brake --------------------------------------------------------------


def test_the_brake_holds_fences_when_too_many_fail_and_releases_when_they_return() -> None:
    L = Leader(synthetic_segment(hosts=7, brake_fraction=0.3))  # limit 2.1 hosts
    down = ("host2", "host3", "host4")
    up = tuple(h for h in L.seg.voters if h not in down)
    for h in down:
        L.observe(h, by=up)
    L.run(20)
    ((_, on),) = L.entries("brake")
    assert on["on"] and on["hosts"] == list(down)
    assert L.state.brake_count == 1
    assert [e["intent"] for e in alerts(L)] == ["alert:brake:1:a1"]
    assert all(L.state.verdicts[h].kind == "failed" for h in down)
    assert L.intents("fence:") == []
    # Two come back: within the limit again, and nothing half-way: the brake lets go and
    # the one still down is fenced as usual.
    for h in ("host3", "host4"):
        L.observe(h, by=up, reachable=True)
    L.run(3)
    off = [e for _, e in L.entries("brake") if not e["on"]]
    assert len(off) == 1 and not L.state.brake.on
    assert [e["intent"] for e in L.intents("fence:")] == ["fence:host2:e1:a1"]


def test_the_brake_trips_on_more_than_the_fraction_not_on_it() -> None:
    at_limit = Leader(synthetic_segment(hosts=5, brake_fraction=0.4))  # limit 2.0
    for h in ("host2", "host3"):
        at_limit.observe(h, by=("host1", "host4", "host5"))
    at_limit.run(3)
    assert at_limit.entries("brake") == []
    assert {e["host"] for e in at_limit.intents("fence:")} == {"host2", "host3"}

    over = Leader(synthetic_segment(hosts=5, brake_fraction=0.4))
    for h in ("host2", "host3", "host4"):
        over.observe(h, by=("host1", "host5"))  # suspects count: too few left for `failed`
    over.run(3)
    assert [e["on"] for _, e in over.entries("brake")] == [True]
    assert over.intents("fence:") == []


def test_the_brake_holds_a_fence_for_a_host_it_did_not_count() -> None:
    L = Leader(synthetic_segment(hosts=9, voters=9, brake_fraction=0.3))  # limit 2.7
    up = ("host1", "host6", "host7", "host8", "host9")
    for h in ("host2", "host3", "host4"):
        L.observe(h, by=up)
    L.run(2)
    assert L.state.brake.on
    L.observe("host5", by=up)
    L.run(5)
    assert L.state.verdicts["host5"].kind == "failed"
    assert L.intents("fence:") == []


def test_hosts_failed_before_a_release_do_not_trip_the_brake_again() -> None:
    L = Leader(synthetic_segment(hosts=7, brake_fraction=0.3))
    up = ("host1", "host5", "host6", "host7")
    for h in ("host2", "host3", "host4"):
        L.observe(h, by=up)
    L.run(2)
    for h in ("host3", "host4"):
        L.observe(h, by=up, reachable=True)
    L.run(3)
    assert not L.state.brake.on
    L.observe("host6", by=("host1", "host5", "host7", "host3"))
    L.run(3)
    assert [e["on"] for _, e in L.entries("brake")] == [True, False]
    assert {e["host"] for e in L.intents("fence:")} == {"host2", "host6"}


def test_a_voter_still_heard_is_not_fenced_when_that_costs_the_quorum() -> None:
    """Six voters; two die and a third loses its storage network (seen by the three
    others: degraded, not suspect). Within the brake's limit (3 of 6), so the two dead
    ones are fenced; the degraded one is not: with it fenced, three of six voters would
    be left, no majority, and nothing more could commit (no evacuation) while the rest
    isolate themselves. A critical alert says why. (With five voters the verdict rule
    already keeps it suspect: too few observers are left to call it degraded.)"""
    L = Leader(synthetic_segment(hosts=6), servers={"host3": [server("vm-a")]}, me="host4")
    for h in ("host1", "host2"):
        L.observe(h, by=("host4", "host5", "host6"))
    L.observe("host3", nets=("storage",), by=("host4", "host5", "host6"))
    L.run(5)
    assert L.state.verdicts["host3"].kind == "degraded" and not L.state.brake.on
    assert {e["host"] for e in L.intents("fence:")} == {"host1", "host2"}
    held = [e for e in alerts(L) if e["intent"].startswith("alert:fence-quorum:host3")]
    assert len(held) == 1 and held[0]["params"]["severity"] == "critical"
    assert "3 of 6 voters" in held[0]["params"]["body"]
    assert not L.state.is_fenced("host3") and L.intents("evacuate:host3") == []
    # One degraded voter alone is fenced as before: five of six stay up.
    one = Leader(synthetic_segment(hosts=6))
    one.observe("host3", nets=("storage",))
    one.run(5)
    assert [e["host"] for e in one.intents("fence:")] == ["host3"]


def test_no_fence_in_the_batch_that_engages_the_brake() -> None:
    spec = synthetic_segment(hosts=7, brake_fraction=0.3)
    L = Leader(spec)
    L.observe("host2")
    # Up to the call in which host2's fence falls due (the verdict has settled).
    while not any(e["kind"] == "intent" and e["action"] == "fence" for e in L.decide()):
        L.run(DT)
    assert L.state.verdicts["host2"].kind == "failed" and not L.state.brake.on
    for h in ("host3", "host4"):  # two more go silent just then
        L.observe(h, by=("host1", "host5", "host6", "host7"))
    out = L.decide()
    assert any(e["kind"] == "brake" and e["on"] for e in out)
    assert [e["intent"] for e in out if e["kind"] == "intent" and e["action"] == "fence"] == []


# -- degraded hosts, per network on_loss ---------------------------------------------------


def test_degraded_on_admin_alerts_only() -> None:
    L = Leader(servers={"host2": [server("vm-a")]})
    L.observe("host2", nets=("admin",))
    L.run(10)
    assert L.state.verdicts["host2"].kind == "degraded"
    assert [(e["action"], e["intent"]) for e in L.intents()] == [
        ("alert", "alert:degraded:host2:e1:a1")
    ]
    assert L.intents()[0]["params"]["severity"] == "warning"


def test_degraded_on_tenant_live_migrates_ha_vms_and_does_not_fence() -> None:
    servers = {"host2": [server("vm-a"), server("vm-b"), server("vm-noha", ha=False)]}
    L = Leader(servers=servers)
    L.observe("host2", nets=("tenant",))
    L.run(10)
    actions = [e["action"] for e in L.intents()]
    assert "fence" not in actions and "evacuate" not in actions
    assert actions[:2] == ["alert", "inventory"]
    moves = L.intents("live_migrate:")
    assert sorted(e["vm"] for e in moves) == ["vm-a", "vm-b"]
    assert all(e["host"] == "host2" for e in moves)
    assert L.entries("fenced") == []


def test_evacuation_uses_an_inventory_taken_after_the_fence() -> None:
    L = Leader(servers={"host2": [server("vm-a"), server("vm-b")]})
    L.observe("host2", nets=("tenant",))
    L.run(3)
    assert len(L.intents("live_migrate:")) == 2
    L.servers["host2"] = [server("vm-c")]  # what Nova lists on host2 from now on
    # host2 dies; its losses on admin and storage reach the log together, already old
    # (as after a leader change), so the verdict goes straight from degraded to failed.
    since = L.now - 1.0
    L.commit(
        *[
            E.observation(ts=L.now, by=o, host="host2", network=n, reachable=False, since=since)
            for o in ("host1", "host3", "host4", "host5")
            for n in ("admin", "storage")
        ]
    )
    L.run(5)
    assert L.state.verdicts["host2"].kind == "failed"
    assert [e["vm"] for e in L.intents("evacuate:")] == ["vm-c"]


def test_degraded_on_storage_fences_and_evacuates() -> None:
    L = Leader(servers={"host2": [server("vm-a")]})
    L.observe("host2", nets=("storage",))
    L.run(10)
    assert L.state.verdicts["host2"].networks == ("storage",)
    chain = [e["action"] for e in L.intents() if e["action"] != "alert"]
    assert chain == ["fence", "disable_compute", "inventory", "evacuate"]


def test_degraded_on_an_ignored_network_does_nothing() -> None:
    L = Leader(synthetic_segment(networks={"admin": "alert", "backup": "ignore"}))
    L.observe("host2", nets=("backup",))
    L.run(5)
    assert L.state.verdicts["host2"].kind == "degraded"
    assert L.intents() == []


# -- VM failures -------------------------------------------------------------------------


def vm_failure(L: Leader, vm: str = "vm-a", host: str = "host3", **extra: Any) -> None:
    e = E.vm_failure(ts=L.now, by=host, host=host, vm=vm, event="crashed", detail="qemu died")
    e.update(extra)
    L.commit(e)


def test_a_crashed_vm_is_restarted_then_restarted_elsewhere_past_the_limit() -> None:
    L = Leader(synthetic_segment(policy=Policy(vm_restart_limit=3, vm_restart_window_s=600)))
    for _ in range(2):
        vm_failure(L)
        L.run(1)
    assert [e["action"] for e in L.intents()] == ["restart_vm", "restart_vm"]
    assert all(e["host"] == "host3" and e["vm"] == "vm-a" for e in L.intents())
    vm_failure(L)  # the third inside the window
    L.run(1)
    assert [e["action"] for e in L.intents()] == ["restart_vm", "restart_vm", "migrate_vm"]


def test_failures_outside_the_window_do_not_count() -> None:
    L = Leader(synthetic_segment(policy=Policy(vm_restart_limit=2, vm_restart_window_s=60)))
    vm_failure(L)
    L.run(1)
    L.now += 120
    vm_failure(L)
    L.run(1)
    assert [e["action"] for e in L.intents()] == ["restart_vm", "restart_vm"]


@pytest.mark.parametrize(
    ("extra", "actions"),
    [
        ({"on_vm_failure": "hard_reboot"}, ["hard_reboot"]),
        ({"on_vm_failure": "alert"}, ["alert"]),
        ({"on_vm_failure": "restart_elsewhere"}, ["migrate_vm"]),
        ({"on_vm_failure": "ignore"}, []),
        ({"ha": False}, []),
    ],
)
def test_vm_failure_follows_the_vms_policy(extra: dict[str, Any], actions: list[str]) -> None:
    L = Leader()
    vm_failure(L, **extra)
    L.run(2)
    assert [e["action"] for e in L.intents()] == actions


def test_a_failed_restart_moves_the_vm_elsewhere() -> None:
    L = Leader()
    L.answers["restart_vm"] = lambda i: ("failed", {"error_kind": "failed"})
    vm_failure(L)
    L.run(1)
    assert [e["action"] for e in L.intents()] == ["restart_vm", "migrate_vm"]


def test_no_restart_after_the_vm_was_moved_elsewhere() -> None:
    L = Leader()
    L.answers["restart_vm"] = lambda i: ("failed", {"error_kind": "failed"})
    vm_failure(L)
    L.run(30)
    assert [e["action"] for e in L.intents()] == ["restart_vm", "migrate_vm"]


def test_no_vm_recovery_on_a_failed_host() -> None:
    L = Leader()
    L.observe("host3")
    L.run(1)
    assert L.state.verdicts["host3"].kind == "failed"
    vm_failure(L)
    L.run(1)
    assert [e for e in L.intents() if e["vm"] == "vm-a"] == []


def test_no_vm_restart_on_a_host_that_is_about_to_be_fenced() -> None:
    """A VM crash reported by a host degraded on a fencing network: the fence and the
    evacuation take it, never a restart in place racing the power-off (swarm seed 52)."""
    L = Leader(servers={"host3": [server("vm-a")]})
    L.observe("host3", nets=("storage",))
    L.run(1)
    assert L.state.verdicts["host3"].kind == "degraded"
    vm_failure(L)
    L.run(10)
    assert [e["action"] for e in L.intents() if e.get("vm") == "vm-a"] == ["evacuate"]


# -- process failures --------------------------------------------------------------------


def test_a_process_that_cannot_be_restarted_disables_the_service_and_alerts_once() -> None:
    L = Leader()
    L.commit(
        E.process_failure(
            ts=L.now,
            by="host3",
            host="host3",
            process="nova-compute",
            outcome="restart_failed",
            detail="exit 1",
        )
    )
    L.run(5)
    (disable,) = L.intents("disable:")
    assert disable["host"] == "host3" and disable["params"] == {"force_down": False}
    (alert,) = alerts(L)
    assert alert["params"]["severity"] == "critical" and "exit 1" in alert["params"]["body"]
    assert L.intents("fence:") == []


# -- determinism and idempotence ---------------------------------------------------------


def mid_chain_leader() -> Leader:
    """A leader whose next decision is host2's evacuations (fenced, listed, and its
    self-fence due: `self_fence_due`)."""
    L = Leader(servers={"host2": [server("vm-a"), server("vm-b", "high")]})
    L.observe("host2")
    for _ in range(200):
        if any(e.get("action") == "evacuate" for e in L.decide()):
            return L
        L.run(0.05)
    raise AssertionError("no evacuation planned within 10 s")


def test_an_isolated_host_is_evacuated_only_once_its_own_self_fence_is_due() -> None:
    """The BMC's "off" is its word: a lying BMC of a host that runs on would have its VMs
    run twice until the host isolates itself. So the evacuation of a host lost on
    every network waits for that too (last heard + isolation_after_s + a probe interval
    + the skew bound), while the fence, the disable and the listing go ahead."""
    L = Leader(servers={"host2": [server("vm-a"), server("vm-b", "high")]})
    L.observe("host2")
    L.run(10)
    first = {
        a: min(t for t, e in L.proposed if e["kind"] == "intent" and e["action"] == a)
        for a in ("fence", "inventory", "evacuate")
    }
    due = self_fence_due(L.state, "host2")
    assert due is not None
    heard = last_heard(L.state, "host2")
    assert heard is not None
    t = L.seg.timings
    assert due == heard + t.isolation_after_s + t.probe_interval_s + t.max_clock_skew_s
    assert first["fence"] < first["inventory"] < due <= first["evacuate"] < due + 0.5
    # and the invariant check refuses an evacuation planned before it
    early = {**L.intents("evacuate:host2")[0], "ts": due - 0.1}
    assert "self-fence is due" in "; ".join(decision_problems(L.state, [early]))


def test_decide_is_a_function_of_its_inputs() -> None:
    L = mid_chain_leader()
    twin = copy.deepcopy(L.state)
    before = copy.deepcopy(L.state.__dict__)
    a = decide(L.seg, L.state, L.now, L.me)
    b = decide(L.seg, twin, L.now, L.me)
    assert a == b and decide(L.seg, L.state, L.now, L.me) == a
    assert L.state.__dict__ == before  # it only reads the state


def test_decide_again_after_applying_its_output_proposes_nothing_new() -> None:
    L = Leader(servers={"host2": [server("vm-a")]})
    L.observe("host2")
    for _ in range(40):
        out = L.step()
        again = L.decide()
        ids = {e["intent"] for e in out if e["kind"] == "intent"}
        assert not ids & {e["intent"] for e in again if e["kind"] == "intent"}
        assert not [e for e in again if e["kind"] in ("verdict", "brake")]
        L.execute()
        L.now = round(L.now + DT, 6)


def test_a_new_leader_resumes_from_the_state_alone() -> None:
    L = mid_chain_leader()
    old = L.state.copy()
    mine = decide(L.seg, old, L.now, "host1")
    theirs = decide(L.seg, old, L.now, "host3")
    strip = lambda es: [{k: v for k, v in e.items() if k != "by"} for e in es]
    assert strip(mine) == strip(theirs)


# -- the decision invariants (recovery/decide/check.py) -----------------------------------


def chain_leader() -> Leader:
    """A whole recovery chain with a retry at every kind of step: the BMC fails once,
    one evacuation fails once, the reserve is replaced, the host comes back."""
    L = Leader(
        synthetic_segment(hosts=6, reserved=("host5", "host6")),
        servers={"host2": [server("vm-a", "high"), server("vm-b"), server("vm-c", ha=False)]},
    )
    L.answers["fence"] = lambda i: (
        ("failed", {"error_kind": "unreachable"}) if i.id.endswith(":a1") else ("ok", {})
    )
    L.answers["evacuate"] = lambda i: (
        ("failed", {"error_kind": "conflict"}) if i.id.endswith("vm-b:a1") else ("ok", {})
    )
    L.observe("host2")
    L.run(60)
    L.observe("host2", reachable=True)
    L.run(2)
    L.commit(  # its agent reconciled (agent/reconcile.py)
        E.reconcile(
            ts=L.now,
            by="host2",
            host="host2",
            episode=1,
            booted_at=L.now - 1,
            destroyed=[],
            kept=[],
            ok=True,
            detail="",
        )
    )
    L.run(8)
    return L


def test_every_prefix_of_a_recovery_chain_replays_into_a_fresh_state() -> None:
    """Cut the committed log anywhere, replay the cut into a fresh state: `decide` there
    (which checks its own output) proposes nothing the chain did not, and the chain's
    committed log keeps the invariants entry by entry."""
    L = chain_leader()
    actions = [e["action"] for e in L.intents() if e["action"] != "alert"]
    assert actions.count("fence") == 2 and actions.count("evacuate") == 3, actions
    assert "enable_compute" in actions and L.entries("reserve")
    proposed = {e["intent"] for e in L.intents()}
    audit = Audit(L.seg)
    for k in range(len(L.log) + 1):
        fresh = SegmentState(L.seg)
        for e in L.log[:k]:
            fresh.apply(e, fresh.index + 1)
        now = L.log[k]["ts"] if k < len(L.log) else L.now
        out = decide(L.seg, fresh, now, L.me)
        new = {e["intent"] for e in out if e["kind"] == "intent"} - proposed
        assert not new, f"after {k} entries: {sorted(new)}"
        if k < len(L.log):
            assert audit.commit(L.log[k]) == [], (k, L.log[k])


def broken(kind: str) -> tuple[SegmentState, list[Entry]]:
    """A state mid-chain (host2 failed, being recovered) and one batch that breaks the
    invariant `kind`."""
    L = mid_chain_leader()
    st, now = L.state.copy(), L.now

    def intent(iid: str, action: Any, host: str, **kw: Any) -> Entry:
        return E.intent(ts=now, by="h", intent_id=iid, action=action, host=host, reason="r", **kw)

    def fail(host: str) -> str:
        """Commit a failed verdict for `host`; the fence key of its new episode."""
        v = E.verdict(
            ts=now, by="h", host=host, verdict="failed", networks=[], reason="r", evidence=[]
        )
        st.apply(v)
        return f"fence:{host}:e{st.episode[host]}"

    restart = intent("restart_vm:vm-x:1:a1", "restart_vm", "host3", vm="vm-x")
    if kind == "maintenance":
        st.apply(E.maintenance(ts=now, by="op", host="host3", on=True, reason="r"))
        return st, [restart]
    if kind == "brake":
        st.apply(E.brake(ts=now, by="h", on=True, hosts=["host3"], reason="r"))
        return st, [intent(f"{fail('host3')}:a1", "fence", "host3")]
    if kind == "engaging":
        on = E.brake(ts=now, by="h", on=True, hosts=["host3"], reason="r")
        return st, [on, intent(f"{fail('host3')}:a1", "fence", "host3")]
    if kind == "unfenced":
        iid = f"evacuate:host3:e{st.episode['host3'] + 1}:vm-x:a1"
        fail("host3")
        return st, [intent(iid, "evacuate", "host3", vm="vm-x", target="host5")]
    if kind == "restart-while-fencing":
        return st, [intent(f"{fail('host3')}:a1", "fence", "host3"), restart]
    if kind == "pending":
        st.apply(restart)
        return st, [intent("restart_vm:vm-x:1:a2", "restart_vm", "host3", vm="vm-x")]
    if kind == "repeat":
        done = next(i for i in st.intents.values() if i.done)
        return st, [intent(done.id, done.action, done.host)]
    if kind == "alert-retry":
        return st, [intent("alert:vm:vm-x:1:a2", "alert", "host3")]
    if kind == "skipped-attempt":
        return st, [intent("restart_vm:vm-x:1:a2", "restart_vm", "host3", vm="vm-x")]
    if kind == "no-key":
        return st, [intent("reboot:host3", "fence", "host3")]
    if kind == "twice":
        return st, [restart, dict(restart)]
    if kind == "healthy-fence":
        return st, [intent(f"fence:host3:e{st.episode['host3']}:a1", "fence", "host3")]
    if kind == "proof-without-bmc":
        fail("host3")
        m = "self_fence_deadline"
        return st, [E.fenced(ts=now, by="h", host="host3", method=m, reason="r", evidence={})]
    raise AssertionError(kind)


BROKEN = {
    "maintenance": "host3 is in maintenance",
    "brake": "fence while the brake holds",
    "engaging": "fence in the batch that engages the brake",
    "unfenced": "evacuation from host3, not fenced",
    "pending": "is still pending",
    "restart-while-fencing": "restart_vm on host3, fenced in the same batch",
    "repeat": "already committed",
    "alert-retry": "an alert is sent once",
    "skipped-attempt": "attempt 2 after 0",
    "no-key": "not an intent key",
    "twice": "proposed twice in one batch",
    "healthy-fence": "fence of host3, which is healthy",
    "proof-without-bmc": "self-fence proof without a failed BMC fence",
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_check_decisions_catches_each_broken_invariant(kind: str) -> None:
    st, batch = broken(kind)
    assert BROKEN[kind] in "; ".join(decision_problems(st, batch))
    with pytest.raises(InvariantViolation, match=BROKEN[kind]):
        check_decisions(st, batch)


def test_what_decide_returns_passes_its_own_check() -> None:
    L = mid_chain_leader()
    out = L.decide()
    assert out and decision_problems(L.state, out) == []
    assert IntentKey.parse(out[0]["intent"]).attempt == 1


def test_the_audit_excuses_a_race_the_state_machine_resolves() -> None:
    """A fence planned before maintenance began, committed after it: abandoned, safe."""
    L = Leader()
    audit = Audit(L.seg)
    L.observe("host2")
    L.run(3)
    for e in L.log:
        assert audit.commit(e) == []

    def fence(host: str, iid: str) -> Entry:
        return E.intent(ts=L.now, by="h", intent_id=iid, action="fence", host=host, reason="r")

    iid = "fence:host3:e1:a1"
    late = fence("host3", iid)
    assert audit.commit(E.maintenance(ts=L.now, by="op", host="host3", on=True, reason="r")) == []
    assert audit.commit(late) == []
    assert audit.state.intents[iid].status == "abandoned"
    assert audit.commit(dict(late)) == []  # a re-proposal: a no-op
    brake_on = E.brake(ts=L.now, by="host1", on=True, hosts=["host4"], reason="r")
    assert audit.commit(brake_on) == []
    fence4 = fence("host4", "fence:host4:e0:a1")
    assert audit.commit(fence4) == ["fence:host4:e0:a1: fence while the brake holds"]


# -- a random segment life: safety at every step -----------------------------------------

PROP_SPEC = synthetic_segment(hosts=5)
PROP_SEG = PROP_SPEC
PROP_SERVERS = {
    h: [server(f"{h}-vm1", "high"), server(f"{h}-vm2", "low")]
    for h in PROP_SEG.host_names
    if PROP_SEG.host(h).role == "compute"
}
hosts_s = st.sampled_from(PROP_SEG.host_names)
nets_s = st.lists(st.sampled_from(PROP_SEG.network_names), min_size=1, max_size=3, unique=True)
voters_s = st.lists(st.sampled_from(PROP_SEG.voters), min_size=1, max_size=4, unique=True)
event_s = st.one_of(
    st.tuples(st.just("crash"), hosts_s),
    st.tuples(st.just("revive"), hosts_s),
    st.tuples(st.just("lose"), hosts_s, nets_s, voters_s),
    st.tuples(st.just("regain"), hosts_s, nets_s, voters_s),
    st.tuples(st.just("maintenance"), hosts_s, st.booleans()),
    st.tuples(st.just("vm_failure"), hosts_s),
    st.tuples(st.just("process_failure"), hosts_s),
)
gap_s = st.sampled_from([0.0, 0.4, 1.0, 3.0, 12.0])


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(event_s, gap_s), min_size=1, max_size=8),
    st.randoms(use_true_random=False),
)
def test_random_segment_life_stays_safe_and_idempotent(
    events: list[tuple[Any, float]], rnd: random.Random
) -> None:
    """Faults at random moments, executor answers at random (ok, failed, no answer); every
    step's proposal is checked by `check_proposal`, and must be deterministic."""
    L = Leader(PROP_SPEC, servers=PROP_SERVERS)

    def flaky(i: Intent) -> Answer:
        x = rnd.random()
        if x < 0.15:
            return None
        if x < 0.35:
            return ("failed", {"error_kind": "unreachable"})
        return ("ok", {})

    for action in ("fence", "evacuate", "restart_vm", "inventory", "disable_compute"):
        L.answers[action] = flaky
    for ev, gap in [*events, (("end",), 15.0)]:
        kind = ev[0]
        if kind in ("crash", "revive"):
            L.observe(ev[1], reachable=kind == "revive")
        elif kind in ("lose", "regain"):
            _, host, nets, by = ev
            by = tuple(o for o in by if o != host)
            if by:
                L.observe(host, tuple(nets), by, reachable=kind == "regain")
        elif kind == "maintenance":
            L.commit(E.maintenance(ts=L.now, by="host1", host=ev[1], on=ev[2], reason="r"))
        elif kind == "vm_failure":
            vm_failure(L, vm=f"{ev[1]}-vm1", host=ev[1])
        elif kind == "process_failure":
            L.commit(
                E.process_failure(
                    ts=L.now,
                    by=ev[1],
                    host=ev[1],
                    process="libvirtd",
                    outcome="restart_failed",
                    detail="",
                )
            )
        twin = L.state.copy()
        assert decide(L.seg, twin, L.now, L.me) == L.decide()
        L.run(gap, dt=0.2)  # check_proposal runs on every step

    event(f"evacuations: {len(L.intents('evacuate:')) > 0}")
    event(f"brake: {L.state.brake_count > 0}")
    event(f"fenced: {any(L.state.fenced)}")
    # The committed log keeps the decision invariants, entry by entry.
    audit = Audit(L.seg)
    assert [p for e in L.log for p in audit.commit(e)] == []
    # The log rebuilds the state it made.
    replayed = SegmentState(L.seg)
    for k, e in enumerate(L.log):
        replayed.apply(e, k + 1)
    assert {k: i.status for k, i in replayed.intents.items()} == {
        k: i.status for k, i in L.state.intents.items()
    }
    assert replayed.verdicts == L.state.verdicts and replayed.fenced == L.state.fenced
    assert replayed.roles == L.state.roles and replayed.brake == L.state.brake


def test_segment_default_recovery_is_what_these_tests_assume() -> None:
    r = synthetic_segment().recovery
    assert r == Recovery()
    assert r.intent_max_attempts == 5 and r.intent_retry_backoff_s == 2.0


# -- a fence that cannot complete is always alerted; damping of a flapping host --------


def test_a_hung_bmc_is_alerted_even_when_the_deadline_proof_is_due() -> None:
    """The BMC accepts the session and answers nothing: the attempt fails only after its
    own timeout, when the self-fence deadline has long passed. The fence is still
    alerted (before: straight to the proof, no alert), before anything is evacuated."""
    L = Leader(servers={"host2": [server("vm-a")]})
    L.answers["fence"] = lambda i: None
    L.observe("host2")
    L.run(40)  # the attempt hangs for 40 s
    stuck = [e for e in alerts(L) if e["intent"] == "alert:fence-wait:host2:e1:a1"]
    assert len(stuck) == 1 and "has not completed" in stuck[0]["params"]["body"]
    assert L.first("alert:fence-wait:host2") < L.now - 20  # type: ignore[operator]
    L.result("fence:host2:e1:a1", "failed", error_kind="timeout", detail="BMC silent")
    L.answers["fence"] = bmc_down
    L.run(5)
    assert L.state.fenced["host2"].method == "self_fence_deadline"
    assert len([e for e in alerts(L) if "fence-wait:host2" in e["intent"]]) == 1


def test_a_fence_that_fails_after_the_deadline_is_alerted_with_the_proof() -> None:
    L = Leader(servers={"host2": [server("vm-a")]})
    L.answers["fence"] = lambda i: None
    L.observe("host2")
    L.run(2)
    L.now += 60  # the leader was away; the failure arrives after the deadline
    L.result("fence:host2:e1:a1", "failed", error_kind="auth", detail="wrong credentials")
    out = L.step()
    kinds = [(e["kind"], e.get("action")) for e in out]
    assert ("fenced", None) in kinds
    (al,) = [e for e in alerts(L) if e["intent"] == "alert:fence-wait:host2:e1:a1"]
    assert al["params"]["subject"] == "cannot fence host2 through its BMC"
    assert "wrong credentials" in al["params"]["body"]


def flap(L: Leader, host: str, net: str, cycles: int, period: float = 2.0) -> None:
    others = tuple(v for v in L.seg.voters if v != host)
    for _ in range(cycles):
        L.observe(host, nets=(net,), by=others)
        L.run(period)
        L.observe(host, nets=(net,), by=others, reachable=True)
        L.run(period)


def test_a_flapping_host_is_alerted_once_and_its_verdict_damped() -> None:
    L = Leader()
    flap(L, "host1", "admin", cycles=15)  # a minute of a link flapping every 2 s
    verdicts = [e for _, e in L.entries("verdict") if e["host"] == "host1"]
    host_alerts = [e for e in alerts(L) if e["host"] == "host1"]
    flapping = [e for e in host_alerts if e["intent"].startswith("alert:flapping:host1")]
    assert len(flapping) == 1 and "flapping" in flapping[0]["params"]["subject"]
    assert len(host_alerts) <= 2  # at most the first "lost admin" before it was clear
    assert len(verdicts) <= 8, [v["verdict"] for v in verdicts]
    assert L.intents("fence:") == []
    # Hysteresis: once the link stays up, the host is healthy again after the hold.
    L.run(15)
    assert L.state.verdicts["host1"].kind == "healthy"


def test_damping_never_holds_a_host_that_gets_worse() -> None:
    L = Leader()
    flap(L, "host2", "admin", cycles=4)
    assert L.state.verdicts["host2"].kind in ("suspect", "degraded")
    L.observe("host2")  # now lost on every network: dead
    L.run(3)
    assert L.state.verdicts["host2"].kind == "failed"
    assert L.intents("fence:host2:")
