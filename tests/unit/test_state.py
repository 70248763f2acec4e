"""The replicated segment state machine: deterministic replay, a functional `apply` that
leaves its input alone, idempotent intents, maintenance, and the evacuation invariant
checked again at commit."""

from __future__ import annotations

from typing import Any, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshha.config.synthetic import synthetic_segment
from meshha.errors import InvariantViolation
from meshha.raft import entries as E
from meshha.raft import state as S
from meshha.raft.intent_key import IntentKey
from meshha.raft.records import HostFacts, Inventory, Server
from meshha.raft.state import MAX_FINISHED_INTENTS, MAX_VM_FAILURES, SegmentState, apply

SEG = synthetic_segment(hosts=5)
HOSTS = SEG.host_names
NETS = SEG.network_names
T0 = 1000.0


def fresh() -> SegmentState:
    return SegmentState(SEG)


def run(state: SegmentState, *entries: E.Entry) -> SegmentState:
    for e in entries:
        state.apply(e, state.index + 1)
    return state


def dump(s: SegmentState) -> dict[str, Any]:
    """Everything a replica's behaviour depends on, in a comparable form."""
    return {
        "index": s.index,
        "last_ts": s.last_ts,
        "verdicts": {h: (v.kind, v.networks, v.reason, v.evidence) for h, v in s.verdicts.items()},
        "verdict_since": dict(s.verdict_since),
        "episode": dict(s.episode),
        "lost": sorted(s.lost.items()),
        "changed_at": dict(s.changed_at),
        "intents": {
            k: (i.action, i.host, i.vm, i.target, i.status, i.episode, i.created_index, i.detail)
            for k, i in sorted(s.intents.items())
        },
        "finished": list(s.finished),
        "fenced": dict(sorted(s.fenced.items())),
        "ever_fenced": sorted(s.ever_fenced),
        "maintenance": dict(sorted(s.maintenance.items())),
        "roles": dict(s.roles),
        "brake": s.brake,
        "attempts": dict(sorted((str(k), v) for k, v in s.attempts.items())),
        "brake_count": s.brake_count,
        "inventory": dict(sorted(s.inventory.items())),
        "vm_failures": dict(sorted(s.vm_failures.items())),
        "process_failures": dict(sorted(s.process_failures.items())),
        "isolated": dict(sorted(s.isolated.items())),
        "kinds_seen": dict(sorted(s.kinds_seen.items())),
    }


# -- small entry makers ------------------------------------------------------------------


def obs(by: str, host: str, net: str, reachable: bool = False, ts: float = T0) -> E.Entry:
    return E.observation(ts=ts, by=by, host=host, network=net, reachable=reachable, since=ts)


def verdict(host: str, kind: E.VerdictKind, nets: tuple[str, ...] = (), ts: float = T0) -> E.Entry:
    return E.verdict(
        ts=ts, by="host1", host=host, verdict=kind, networks=list(nets), reason=kind, evidence=[]
    )


def intent(iid: str, action: E.Action, host: str, ts: float = T0, **kw: Any) -> E.Entry:
    return E.intent(ts=ts, by="host1", intent_id=iid, action=action, host=host, reason="r", **kw)


def result(iid: str, outcome: E.Outcome = "ok", ts: float = T0, **kw: Any) -> E.Entry:
    return E.result(ts=ts, by="host1", intent_id=iid, outcome=outcome, detail=outcome, **kw)


def maint(host: str, on: bool, ts: float = T0) -> E.Entry:
    return E.maintenance(ts=ts, by="host1", host=host, on=on, reason="ops")


def fenced_host(host: str = "host2") -> SegmentState:
    """host2 failed (episode 1) and fenced by its BMC."""
    return run(
        fresh(),
        verdict(host, "failed", NETS),
        intent(f"fence:{host}:e1:a1", "fence", host),
        result(f"fence:{host}:e1:a1"),
    )


# -- the one mutator ---------------------------------------------------------------------


def test_fresh_state_is_all_healthy_with_configured_roles() -> None:
    s = fresh()
    assert {v.kind for v in s.verdicts.values()} == {"healthy"}
    assert s.roles == {h.name: h.role for h in SEG.hosts}
    assert s.roles["host5"] == "reserved"
    assert not s.brake.on and s.index == 0


def test_index_and_clock_come_from_the_log_only() -> None:
    s = fresh()
    s.apply(obs("host1", "host2", "admin", ts=50.0), 7)
    assert (s.index, s.last_ts) == (7, 50.0)
    s.apply(obs("host1", "host3", "admin", ts=40.0))  # an older proposer clock
    assert (s.index, s.last_ts) == (8, 50.0)


def test_an_unknown_kind_is_counted_and_otherwise_ignored() -> None:
    s = fresh()
    before = dump(s)
    s.apply({"v": 2, "kind": "from_the_future", "ts": 1.0, "by": "host9"}, 1)
    after = dump(s)
    assert after["kinds_seen"] == {"from_the_future": 1}
    for key in ("verdicts", "lost", "intents", "fenced", "roles", "brake"):
        assert after[key] == before[key]


def test_observations_record_the_first_since_and_when_the_picture_changed() -> None:
    s = run(fresh(), obs("host1", "host2", "storage", ts=10.0))
    assert s.lost_by("host2", "storage") == {"host1": 10.0}
    assert s.changed_at["host2"] == 10.0
    run(s, obs("host1", "host2", "storage", ts=12.0))  # a repeat keeps the first since
    assert s.lost_by("host2", "storage") == {"host1": 10.0}
    assert s.changed_at["host2"] == 10.0
    run(s, obs("host1", "host2", "storage", reachable=True, ts=13.0))
    assert s.lost_by("host2", "storage") == {}
    assert s.changed_at["host2"] == 13.0
    run(s, obs("host1", "host2", "storage", reachable=True, ts=14.0))  # already reachable
    assert s.changed_at["host2"] == 13.0


def test_episodes_count_failures_not_verdict_changes() -> None:
    s = run(fresh(), verdict("host2", "suspect"), verdict("host2", "degraded", ("storage",)))
    assert s.episode["host2"] == 1
    run(s, verdict("host2", "failed", NETS))  # degraded -> failed: the same episode
    assert s.episode["host2"] == 1
    run(s, verdict("host2", "healthy"), verdict("host2", "failed", NETS))
    assert s.episode["host2"] == 2
    run(s, verdict("host2", "maintenance"), verdict("host2", "failed", NETS))
    assert s.episode["host2"] == 3


def test_a_suspect_verdict_inside_a_failure_does_not_open_a_new_episode() -> None:
    """Seen in the lab (storage cut): fenced while degraded on storage, the powered-off
    host is suspect (lost everywhere, not yet by a majority), then degraded on storage
    again from its older loss. Still episode 1, still fenced: no second fence."""
    s = fenced_host()
    run(s, verdict("host2", "suspect"), verdict("host2", "degraded", ("storage",)))
    assert s.episode["host2"] == 1 and s.is_fenced("host2")
    run(s, verdict("host2", "suspect"), verdict("host2", "failed", NETS))
    assert s.episode["host2"] == 1 and s.is_fenced("host2")


def test_a_failed_host_loses_its_own_stale_observations() -> None:
    s = run(fresh(), obs("host2", "host3", "admin"), obs("host1", "host2", "admin"))
    run(s, verdict("host2", "failed", NETS))
    assert ("host2", "host3", "admin") not in s.lost
    assert ("host1", "host2", "admin") in s.lost


def back_in_service(host: str, ep: int = 1) -> tuple[E.Entry, ...]:
    """A fenced host heard again and re-enabled: in service, its episode over."""
    iid = f"enable:{host}:e{ep}:a1"
    return verdict(host, "healthy"), intent(iid, "enable_compute", host), result(iid)


def test_fence_result_fences_for_the_current_episode_only() -> None:
    s = fenced_host()
    assert s.is_fenced("host2")
    assert s.fenced["host2"].method == "bmc"
    assert ("host2", 1) in s.ever_fenced
    run(s, *back_in_service("host2"), verdict("host2", "failed", NETS))
    assert s.episode["host2"] == 2 and not s.is_fenced("host2")


def test_a_fenced_host_out_of_service_stays_in_its_episode() -> None:
    """Its power-off seen as failed, a boot with its storage link still cut: the same
    episode, still fenced, so it is neither fenced again nor its VMs moved again (the
    lab's storage-cut test: it was powered off again on its way back)."""
    s = fenced_host()
    run(s, verdict("host2", "suspect"), verdict("host2", "failed", NETS))
    run(s, verdict("host2", "suspect"), verdict("host2", "degraded", ("storage",)))
    run(s, verdict("host2", "healthy"), verdict("host2", "failed", NETS))
    assert s.episode["host2"] == 1 and s.is_fenced("host2")


def test_failed_fence_result_does_not_fence() -> None:
    s = run(
        fresh(),
        verdict("host2", "failed", NETS),
        intent("fence:host2:e1:a1", "fence", "host2"),
        result("fence:host2:e1:a1", "failed", error_kind="unreachable"),
    )
    assert not s.is_fenced("host2")
    assert s.intents["fence:host2:e1:a1"].error_kind == "unreachable"


def test_a_fenced_entry_is_a_fence_too() -> None:
    s = run(
        fresh(),
        verdict("host2", "failed", NETS),
        E.fenced(
            ts=T0, by="host1", host="host2", method="self_fence_deadline", reason="r", evidence={}
        ),
    )
    assert s.is_fenced("host2") and s.fenced["host2"].method == "self_fence_deadline"


def test_enable_compute_ok_unfences() -> None:
    s = run(fenced_host(), intent("enable:host2:e1:a1", "enable_compute", "host2"))
    assert s.is_fenced("host2")
    run(s, result("enable:host2:e1:a1"))
    assert not s.is_fenced("host2") and "host2" not in s.fenced


def test_inventory_result_is_kept_with_its_episode() -> None:
    server = {"id": "vm-a", "vcpus": 2, "ram_mb": 4096, "disk_gb": 40, "name": "a"}
    facts = {"host": "host5", "vcpus_free": 8, "ram_mb_free": 1024, "disk_gb_free": 99}
    data = {"ts": T0, "servers": [server], "facts": [facts]}
    s = run(
        fenced_host(),
        intent("inventory:host2:e1:a1", "inventory", "host2"),
        result("inventory:host2:e1:a1", data=data),
    )
    assert s.inventory["host2"] == Inventory(
        episode=1,
        purpose="",
        ts=T0,
        servers=(Server("vm-a", 2, 4096, 40, ha=True, priority="medium"),),
        facts=(HostFacts("host5", 8, 1024, 99, running_vms=0),),
    )


def test_brake_counts_engagements_not_entries() -> None:
    def brake(on: bool) -> E.Entry:
        return E.brake(ts=T0, by="host1", on=on, hosts=["host2"] if on else [], reason="r")

    s = run(fresh(), brake(True), brake(True))
    assert s.brake_count == 1 and s.brake.on and s.brake.hosts == ("host2",)
    run(s, brake(False), brake(True))
    assert s.brake_count == 2


def test_reserve_and_isolation_entries() -> None:
    s = run(
        fresh(),
        E.reserve(ts=T0, by="host1", host="host3", role="reserved", reason="r"),
        E.reserve(ts=T0, by="host1", host="host5", role="compute", reason="r"),
        E.isolation(ts=T0, by="host2", host="host2", on=True, reason="r"),
    )
    assert s.roles["host3"] == "reserved" and s.roles["host5"] == "compute"
    assert s.isolated == {"host2": True}


def test_vm_failure_times_are_bounded_per_vm() -> None:
    s = fresh()
    for k in range(MAX_VM_FAILURES + 7):
        run(s, E.vm_failure(ts=T0 + k, by="host2", host="host2", vm="vm-a", event="c", detail=""))
    assert len(s.vm_failures["vm-a"]) == MAX_VM_FAILURES
    assert s.vm_failures["vm-a"][-1] == T0 + MAX_VM_FAILURES + 6
    assert s.vm_last_failure["vm-a"].ts == T0 + MAX_VM_FAILURES + 6


# -- intents -----------------------------------------------------------------------------


def test_a_reproposed_intent_is_a_no_op() -> None:
    s = run(fresh(), intent("alert:x:a1", "alert", "host3", params={"severity": "warning"}))
    before = dump(s)
    # A new leader proposes the same id again, even with different details.
    s.apply(intent("alert:x:a1", "alert", "host4", ts=T0 + 5), s.index + 1)
    after = dump(s)
    assert after["intents"] == before["intents"]
    assert s.intents["alert:x:a1"].host == "host3"
    run(s, result("alert:x:a1"))
    run(s, intent("alert:x:a1", "alert", "host3"))
    assert s.intents["alert:x:a1"].status == "ok"


def test_intent_belongs_to_the_hosts_current_episode() -> None:
    s = run(
        fresh(), verdict("host2", "failed", NETS), intent("fence:host2:e1:a1", "fence", "host2")
    )
    assert s.intents["fence:host2:e1:a1"].episode == 1
    assert [i.id for i in s.intents_for("host2")] == ["fence:host2:e1:a1"]
    assert s.intents_for("host2", episode=0) == []


def test_a_result_for_an_unknown_intent_is_ignored() -> None:
    s = fresh()
    before = dump(s)
    s.apply(result("never:proposed:a1"), 1)
    after = dump(s)
    before.update(index=1, last_ts=T0, kinds_seen={"result": 1})
    assert after == before


def test_a_late_result_overrides_an_abandonment() -> None:
    s = run(fresh(), intent("restart_vm:vm-a:1:a1", "restart_vm", "host3", vm="vm-a"))
    run(s, maint("host3", True))
    assert s.intents["restart_vm:vm-a:1:a1"].status == "abandoned"
    run(s, result("restart_vm:vm-a:1:a1", "ok"))
    assert s.intents["restart_vm:vm-a:1:a1"].status == "ok"
    assert list(s.finished).count("restart_vm:vm-a:1:a1") == 1


# -- maintenance -------------------------------------------------------------------------


def test_maintenance_abandons_pending_intents_touching_the_host() -> None:
    s = fenced_host("host2")
    run(
        s,
        intent("restart_vm:vm-c:1:a1", "restart_vm", "host3", vm="vm-c"),
        intent("evacuate:host2:e1:vm-a:a1", "evacuate", "host2", vm="vm-a", target="host3"),
        intent("evacuate:host2:e1:vm-b:a1", "evacuate", "host2", vm="vm-b", target="host5"),
        intent("evacuate:host2:e1:vm-d:a1", "evacuate", "host2", vm="vm-d", target="host3"),
        result("evacuate:host2:e1:vm-d:a1", "ok"),
        intent("enable:host3:e0:a1", "enable_compute", "host3"),
        intent("alert:x:host4:a1", "alert", "host4"),
    )
    run(s, maint("host3", True))
    status = {k: i.status for k, i in s.intents.items()}
    assert status["restart_vm:vm-c:1:a1"] == "abandoned"  # on the host
    assert status["evacuate:host2:e1:vm-a:a1"] == "abandoned"  # onto the host
    assert s.intents["evacuate:host2:e1:vm-a:a1"].detail == "host entered maintenance"
    assert status["evacuate:host2:e1:vm-b:a1"] == "pending"  # elsewhere
    assert status["evacuate:host2:e1:vm-d:a1"] == "ok"  # already done: history stands
    assert status["enable:host3:e0:a1"] == "pending"  # not a recovery action
    assert status["alert:x:host4:a1"] == "pending"
    assert s.in_maintenance("host3") and s.maintenance["host3"].reason == "ops"


def test_intents_committed_during_maintenance_are_abandoned() -> None:
    s = run(fenced_host("host2"), maint("host3", True), maint("host5", True))
    run(
        s,
        intent("restart_vm:vm-c:1:a1", "restart_vm", "host3", vm="vm-c"),
        intent("evacuate:host2:e1:vm-a:a1", "evacuate", "host2", vm="vm-a", target="host5"),
    )
    assert s.intents["restart_vm:vm-c:1:a1"].status == "abandoned"
    assert s.intents["evacuate:host2:e1:vm-a:a1"].status == "abandoned"
    assert "target in maintenance" in s.intents["evacuate:host2:e1:vm-a:a1"].detail
    run(s, maint("host3", False), intent("restart_vm:vm-c:2:a1", "restart_vm", "host3", vm="vm-c"))
    assert s.intents["restart_vm:vm-c:2:a1"].status == "pending"
    assert not s.in_maintenance("host3")


def test_the_end_of_maintenance_stops_the_drain() -> None:
    """Drains pending when the window ends are abandoned, and one proposed before the end
    but committed after it is abandoned at commit (swarm seed 90: it ran after `off`)."""
    s = run(fresh(), maint("host3", True))
    run(s, intent("drain:host3:vm-c:1:a1", "drain", "host3", vm="vm-c", target="host4"))
    assert s.intents["drain:host3:vm-c:1:a1"].status == "pending"
    run(s, maint("host3", False))
    assert s.intents["drain:host3:vm-c:1:a1"].status == "abandoned"
    assert s.intents["drain:host3:vm-c:1:a1"].detail == "maintenance ended"
    run(s, intent("drain:host3:vm-d:1:a1", "drain", "host3", vm="vm-d", target="host4"))
    assert s.intents["drain:host3:vm-d:1:a1"].status == "abandoned"
    assert s.intents["drain:host3:vm-d:1:a1"].detail == "host no longer in maintenance"


# -- the evacuation invariant, checked at commit -----------------------------------------


def test_evacuate_from_a_never_fenced_host_is_an_invariant_violation() -> None:
    s = run(fresh(), verdict("host2", "failed", NETS))
    with pytest.raises(InvariantViolation, match="never fenced"):
        run(s, intent("evacuate:host2:e1:vm-a:a1", "evacuate", "host2", vm="vm-a", target="host5"))


def test_evacuate_from_a_fenced_host_is_pending() -> None:
    s = run(
        fenced_host(),
        intent("evacuate:host2:e1:vm-a:a1", "evacuate", "host2", vm="vm-a", target="host5"),
    )
    assert s.intents["evacuate:host2:e1:vm-a:a1"].status == "pending"


def test_evacuate_after_the_host_was_unfenced_is_abandoned_not_raised() -> None:
    s = run(
        fenced_host(),
        intent("enable:host2:e1:a1", "enable_compute", "host2"),
        result("enable:host2:e1:a1"),
        intent("evacuate:host2:e1:vm-a:a1", "evacuate", "host2", vm="vm-a", target="host5"),
    )
    i = s.intents["evacuate:host2:e1:vm-a:a1"]
    assert i.status == "abandoned" and "no longer fenced" in i.detail


def test_a_fence_in_an_earlier_episode_does_not_cover_the_next() -> None:
    s = run(fenced_host(), *back_in_service("host2"), verdict("host2", "failed", NETS))
    with pytest.raises(InvariantViolation):
        run(s, intent("evacuate:host2:e2:vm-a:a1", "evacuate", "host2", vm="vm-a", target="host5"))


# -- bounds ------------------------------------------------------------------------------


def test_finished_intent_memory_is_bounded_and_keeps_pending_ones() -> None:
    s = run(fresh(), intent("restart_vm:keep:1:a1", "restart_vm", "host3", vm="keep"))
    extra = 50
    for k in range(MAX_FINISHED_INTENTS + extra):
        run(s, intent(f"alert:n{k}:a1", "alert", "host4"), result(f"alert:n{k}:a1"))
    assert len(s.finished) == MAX_FINISHED_INTENTS
    assert len(s.intents) == MAX_FINISHED_INTENTS + 1
    assert s.intents["restart_vm:keep:1:a1"].status == "pending"
    assert "alert:n0:a1" not in s.intents  # the oldest finished went first
    assert f"alert:n{MAX_FINISHED_INTENTS + extra - 1}:a1" in s.intents


def test_finished_bound_is_read_at_apply_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(S, "MAX_FINISHED_INTENTS", 3)
    s = fresh()
    for k in range(10):
        run(s, intent(f"alert:n{k}:a1", "alert", "host4"), result(f"alert:n{k}:a1"))
    assert sorted(s.intents) == ["alert:n7:a1", "alert:n8:a1", "alert:n9:a1"]


def test_eviction_keeps_what_decide_can_still_reach_by_its_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With room for none: the steps of a VM's latest failure, of a process failure still
    on record and of a host's current episode stay; earlier ones go."""
    monkeypatch.setattr(S, "MAX_FINISHED_INTENTS", 0)
    vm_fail = lambda ts: E.vm_failure(
        ts=ts, by="host3", host="host3", vm="vm-a", event="crashed", detail=""
    )
    proc_fail = E.process_failure(
        ts=T0 + 0.5,
        by="host4",
        host="host4",
        process="libvirtd",
        outcome="restart_failed",
        detail="",
    )
    done = lambda iid, action, host, **kw: (intent(iid, action, host, **kw), result(iid))
    s = run(
        fresh(), vm_fail(T0), *done("restart_vm:vm-a:1000000:a1", "restart_vm", "host3", vm="vm-a")
    )
    assert "restart_vm:vm-a:1000000:a1" in s.intents  # the VM's latest failure
    run(s, vm_fail(T0 + 1), *done("alert:vm:vm-a:1001000:a1", "alert", "host3"))
    assert sorted(s.intents) == ["alert:vm:vm-a:1001000:a1"]  # the earlier one went
    run(s, proc_fail, *done("disable:host4:libvirtd:1000500:a1", "disable_compute", "host4"))
    run(s, *done("alert:process:host4:libvirtd:999000:a1", "alert", "host4"))  # not on record
    assert "disable:host4:libvirtd:1000500:a1" in s.intents
    assert "alert:process:host4:libvirtd:999000:a1" not in s.intents
    run(s, verdict("host2", "failed", NETS), *done("fence:host2:e1:a1", "fence", "host2"))
    assert "fence:host2:e1:a1" in s.intents
    run(s, *back_in_service("host2"), verdict("host2", "failed", NETS))  # episode 2
    run(s, *done("alert:recovered:host5:e0:a1", "alert", "host5"))  # evicts what it can
    assert "fence:host2:e1:a1" not in s.intents
    assert set(s.attempts) == {s.intents[i].key.base for i in s.intents}  # type: ignore[union-attr]


# -- replay and the functional form ------------------------------------------------------

host_s = st.sampled_from(HOSTS)
net_s = st.sampled_from(NETS)
ts_s = st.floats(min_value=0, max_value=100, allow_nan=False).map(lambda x: T0 + round(x, 2))
iid_s = st.sampled_from(
    [f"{a}:{h}:e1:a1" for a in ("fence", "disable", "alert") for h in ("host2", "host3")]
    + ["evacuate:host2:e1:vm-a:a1", "evacuate:host3:e1:vm-b:a1", "enable:host2:e1:a1"]
)
ACTION_OF: dict[str, E.Action] = {"fence": "fence", "disable": "disable_compute", "alert": "alert"}
ACTION_OF |= {"evacuate": "evacuate", "enable": "enable_compute"}


@st.composite
def an_entry(draw: st.DrawFn) -> E.Entry:
    ts = draw(ts_s)
    kind = draw(
        st.sampled_from(
            ["observation"] * 4
            + ["verdict"] * 2
            + ["intent"] * 3
            + ["result"] * 3
            + ["maintenance", "fenced", "vm_failure", "process_failure", "brake", "reserve"]
            + ["isolation"]
        )
    )
    h = draw(host_s)
    if kind == "observation":
        return E.observation(
            ts=ts,
            by=draw(host_s),
            host=h,
            network=draw(net_s),
            reachable=draw(st.booleans()),
            since=ts - 1,
        )
    if kind == "verdict":
        k: E.VerdictKind = draw(st.sampled_from(get_args(E.VerdictKind)))
        nets = {"degraded": ("storage",), "failed": NETS}.get(k, ())
        return verdict(h, k, nets, ts=ts)
    if kind == "intent":
        iid = draw(iid_s)
        action = ACTION_OF[iid.split(":")[0]]
        host = iid.split(":")[1]
        target = draw(st.sampled_from(["host4", "host5"])) if action == "evacuate" else None
        vm = iid.split(":")[3] if action == "evacuate" else None
        return intent(iid, action, host, ts=ts, target=target, vm=vm)
    if kind == "result":
        return result(draw(iid_s), draw(st.sampled_from(E.OUTCOMES)), ts=ts)
    if kind == "maintenance":
        return maint(h, draw(st.booleans()), ts=ts)
    if kind == "fenced":
        return E.fenced(ts=ts, by="host1", host=h, method="bmc", reason="r", evidence={})
    if kind == "vm_failure":
        return E.vm_failure(
            ts=ts, by=h, host=h, vm=draw(st.sampled_from(["vm-a", "vm-b"])), event="c", detail=""
        )
    if kind == "process_failure":
        return E.process_failure(
            ts=ts, by=h, host=h, process="libvirtd", outcome="restart_failed", detail=""
        )
    if kind == "brake":
        return E.brake(ts=ts, by="host1", on=draw(st.booleans()), hosts=[h], reason="r")
    if kind == "reserve":
        role = draw(st.sampled_from(["compute", "reserved"]))
        return E.reserve(ts=ts, by="host1", host=h, role=role, reason="r")
    return E.isolation(ts=ts, by=h, host=h, on=draw(st.booleans()), reason="r")


def replay(log: list[E.Entry]) -> tuple[dict[str, Any], int | None]:
    """Apply `log` to a fresh state; stop at an invariant violation (a replica crashes)."""
    s = fresh()
    for k, e in enumerate(log):
        try:
            s.apply(e, k + 1)
        except InvariantViolation:
            return dump(s), k
    return dump(s), None


@settings(max_examples=150, deadline=None)
@given(st.lists(an_entry(), max_size=40))
def test_replaying_the_same_log_gives_the_same_state(log: list[E.Entry]) -> None:
    first = replay(log)
    # Through the wire and back, as a journal replay would see it.
    second = replay([E.unpack(E.pack(e)) for e in log])
    assert first == second


@settings(max_examples=100, deadline=None)
@given(st.lists(an_entry(), max_size=25), an_entry())
def test_functional_apply_leaves_its_input_untouched(log: list[E.Entry], e: E.Entry) -> None:
    s = fresh()
    for k, x in enumerate(log):
        try:
            s.apply(x, k + 1)
        except InvariantViolation:
            return
    before = dump(s)
    try:
        new = apply(s, e, s.index + 1)
    except InvariantViolation:
        assert dump(s) == before
        return
    assert dump(s) == before
    assert new is not s
    s.apply(e, s.index + 1)  # the in-place form agrees with the functional one
    assert dump(new) == dump(s)


def test_functional_apply_does_not_share_mutable_parts() -> None:
    s = fenced_host()
    new = apply(s, intent("inventory:host2:e1:a1", "inventory", "host2"))
    del new.intents["fence:host2:e1:a1"]
    new.attempts[IntentKey.parse("fence:host2:e1")].clear()
    new.lost[("host1", "host3", "admin")] = 1.0
    assert s.intents["fence:host2:e1:a1"].status == "ok"
    assert s.latest(IntentKey.parse("fence:host2:e1")) is s.intents["fence:host2:e1:a1"]
    assert ("host1", "host3", "admin") not in s.lost
