"""The reserve kept empty in Nova, the N+k alert, and maintenance that empties the host:
decide/reserve.py and decide/maintenance.py driven as the leader drives them (the
`Leader` of test_decide: decide, commit, fake executor, clock)."""

from __future__ import annotations

import dataclasses

import pytest

from meshha.config.synthetic import synthetic_segment
from meshha.errors import InvariantViolation
from meshha.raft import entries as E
from meshha.raft.state import SegmentState
from meshha.recovery.decide import check_decisions
from meshha.recovery.decide.maintenance import progress
from meshha.recovery.decide.reserve import held
from meshha.recovery.decide.steps import Context
from tests.unit.test_decide import T0, Leader, server


def leader(**kw: object) -> Leader:
    return Leader(keep_reserve_empty=True, **kw)  # type: ignore[arg-type]


def actions(L: Leader, prefix: str = "") -> list[tuple[str, str]]:
    return [(e["action"], e["intent"]) for e in L.intents(prefix)]


# -- the reserve ------------------------------------------------------------------------


def test_reserved_hosts_are_disabled_in_nova_once() -> None:
    L = leader()
    L.run(3)
    assert actions(L) == [("reserve_hold", "hold:host5:reserve:0:a1")]
    assert held(L.state, "host5") and not held(L.state, "host1")


def test_a_failed_hold_is_retried_with_backoff() -> None:
    L = leader()
    L.answers["reserve_hold"] = lambda i: (
        ("failed", {"error_kind": "unreachable"}) if i.id.endswith("a1") else ("ok", {})
    )
    L.run(10)
    assert [i for _, i in actions(L)] == ["hold:host5:reserve:0:a1", "hold:host5:reserve:0:a2"]
    assert held(L.state, "host5")


def test_the_reserve_is_enabled_only_as_a_target_then_replaced_and_the_new_one_held() -> None:
    L = leader(servers={"host2": [server("vm-a"), server("vm-b", "high")]})
    L.run(1)
    L.observe("host2")
    L.run(8)
    ids = [i for _, i in actions(L)]
    release = ids.index("release:host5:reserve:0:a1")
    first_evac = next(n for n, i in enumerate(ids) if i.startswith("evacuate:"))
    assert ids.index("hold:host5:reserve:0:a1") < release < first_evac
    release_e = next(e for e in L.intents("release:host5"))
    assert release_e["params"] == {"why": "reserve", "for": "host2", "episode": 1}
    assert {e["target"] for e in L.intents("evacuate:")} == {"host5"}
    # host5 took VMs: a compute host becomes reserve and is held in its turn; host5 is
    # a compute host now and not held again.
    roles = [(e["host"], e["role"]) for _, e in L.entries("reserve")]
    new = next(h for h, r in roles if r == "reserved")
    assert ("host5", "compute") in roles
    since = L.state.role_since[new]
    assert f"hold:{new}:reserve:{int(since * 1000)}:a1" in ids
    assert held(L.state, new) and not held(L.state, "host5")
    assert not [i for i in ids if i.startswith("hold:host5") and i != "hold:host5:reserve:0:a1"]


def test_evacuation_waits_while_the_release_fails() -> None:
    L = leader(servers={"host2": [server("vm-a")]})
    L.answers["reserve_release"] = lambda i: None  # Nova does not answer
    L.run(1)
    L.observe("host2")
    L.run(8)
    assert L.intents("release:host5")
    assert not L.intents("evacuate:")


def test_check_refuses_enabling_the_reserve_except_as_a_chosen_target() -> None:
    L = leader()
    L.run(1)
    st = L.state

    def release(**params: object) -> E.Entry:
        return E.intent(
            ts=T0,
            by="host1",
            intent_id="release:host5:reserve:0:a1",
            action="reserve_release",
            host="host5",
            reason="x",
            params=dict(params),
        )

    with pytest.raises(InvariantViolation, match="not a reserved host chosen as a target"):
        check_decisions(st, [release(why="reserve", **{"for": "host2", "episode": 1})])
    with pytest.raises(InvariantViolation, match="would enable reserved host5"):
        check_decisions(
            st,
            [
                E.intent(
                    ts=T0,
                    by="host1",
                    intent_id="release:host5:maintenance:1000000:a1",
                    action="maint_release",
                    host="host5",
                    reason="x",
                )
            ],
        )


def test_check_refuses_evacuating_onto_a_reserve_still_disabled() -> None:
    L = leader(servers={"host2": [server("vm-a")]})
    L.run(1)
    L.observe("host2")
    L.answers["reserve_release"] = lambda i: None
    L.run(6)
    assert L.state.is_fenced("host2") and held(L.state, "host5")
    evac = E.intent(
        ts=L.now,
        by="host1",
        intent_id="evacuate:host2:e1:vm-a:a1",
        action="evacuate",
        host="host2",
        vm="vm-a",
        target="host5",
        reason="x",
    )
    with pytest.raises(InvariantViolation, match="still disabled in Nova"):
        check_decisions(L.state, [evac])


def test_reserve_disable_off_proposes_no_hold_and_no_release() -> None:
    L = Leader(servers={"host2": [server("vm-a")]})  # reserve_disable = False
    L.run(1)
    L.observe("host2")
    L.run(8)
    assert not L.intents("hold:") and not L.intents("release:")
    assert L.intents("evacuate:")


# -- N+k --------------------------------------------------------------------------------


def capacity(L: Leader, survives: bool) -> None:
    L.commit(
        E.capacity(ts=L.now, by="host1", survives=survives, k=1, reason="r", lost_hosts=["host2"])
    )


def test_a_shortfall_alerts_once_per_episode() -> None:
    L = leader()
    capacity(L, True)
    L.run(1)
    assert not L.intents("alert:capacity")
    capacity(L, False)
    L.run(1)
    capacity(L, False)  # measured again, still short: same episode
    L.run(1)
    assert [e["intent"] for e in L.intents("alert:capacity")] == ["alert:capacity:1:a1"]
    capacity(L, True)
    capacity(L, False)
    L.run(1)
    assert [e["intent"] for e in L.intents("alert:capacity")] == [
        "alert:capacity:1:a1",
        "alert:capacity:2:a1",
    ]


# -- maintenance ------------------------------------------------------------------------


def maint(L: Leader, host: str, on: bool) -> None:
    L.commit(E.maintenance(ts=L.now, by="cli", host=host, on=on, reason="bios"))


def test_maintenance_disables_then_moves_every_vm_onto_compute_hosts() -> None:
    vms = [server("vm-a"), server("vm-b", "high"), server("vm-c", ha=False)]
    L = leader(servers={"host2": vms})
    L.run(1)
    maint(L, "host2", True)
    since = int(L.now * 1000)
    L.run(3)
    ids = [i for _, i in actions(L) if "host2" in i]
    assert ids[:2] == [f"hold:host2:maintenance:{since}:a1", f"inventory:host2:drain:{since}:a1"]
    drains = L.intents("drain:")
    assert sorted(e["vm"] for e in drains) == ["vm-a", "vm-b", "vm-c"]  # HA or not: all
    targets = {e["target"] for e in drains}
    assert targets and targets <= {"host1", "host3", "host4"}  # not the reserve
    p = progress(Context(L.seg, L.state, L.now, "host1"), "host2")
    assert p is not None and p.stage == "done" and len(p.moved) == 3 and not p.failed
    assert not L.intents("alert:drain")
    assert not L.intents("fence:") and not L.intents("evacuate:")


def test_what_cannot_move_is_reported_once() -> None:
    big = server("vm-big", size=(8, 30000, 40))
    L = leader(
        servers={"host2": [server("vm-a"), big]},
        free={"host1": (4, 8192, 100), "host3": (4, 8192, 100), "host4": (4, 8192, 100)},
    )
    L.answers["drain"] = lambda i: ("failed", {"error_kind": "failed"}) if i.vm == "vm-a" else None
    L.run(1)
    maint(L, "host2", True)
    L.run(200, dt=1.0)
    p = progress(Context(L.seg, L.state, L.now, "host1"), "host2")
    assert p is not None and p.stage == "done"
    assert [v for v, _ in p.unplaced] == ["vm-big"] and [v for v, _ in p.failed] == ["vm-a"]
    assert len(L.intents("drain:host2:vm-a")) == L.seg.recovery.intent_max_attempts
    al = L.intents("alert:drain")
    assert len(al) == 1 and "2 of 2 VMs could not be moved" in al[0]["reason"]
    assert "vm-big" in al[0]["params"]["body"] and "vm-a" in al[0]["params"]["body"]


def test_the_reserve_takes_a_drain_only_when_allowed_and_needed() -> None:
    seg = synthetic_segment()
    seg = dataclasses.replace(
        seg, recovery=dataclasses.replace(seg.recovery, maintenance_may_use_reserve=True)
    )
    tight = {"host1": (0, 0, 0), "host3": (0, 0, 0), "host4": (0, 0, 0)}
    L = leader(seg=seg, servers={"host2": [server("vm-a")]}, free=tight)
    L.run(1)
    maint(L, "host2", True)
    L.run(3)
    ids = [i for _, i in actions(L)]
    assert ids.index("release:host5:reserve:0:a1") < ids.index(
        next(i for i in ids if i.startswith("drain:"))
    )
    assert [e["target"] for e in L.intents("drain:")] == ["host5"]


def test_maintenance_off_brings_the_host_back_but_the_reserve_stays_disabled() -> None:
    L = leader(servers={"host2": [server("vm-a")]})
    L.run(1)
    maint(L, "host2", True)
    maint(L, "host5", True)
    since = int(L.now * 1000)
    L.run(2)
    maint(L, "host2", False)
    maint(L, "host5", False)
    L.run(2)
    assert [i for _, i in actions(L, "release:")] == [f"release:host2:maintenance:{since}:a1"]
    assert L.state.enabled_at["host2"] > 0
    L.run(2)
    assert len(L.intents("release:")) == 1


def test_with_the_reserve_not_held_maintenance_off_enables_the_reserve_again() -> None:
    """reserve_disable = false: the reserve is an ordinary enabled host in Nova, so the
    end of its window enables it again, and neither the check nor the state refuses that
    (found by the random segment life test)."""
    L = Leader(servers={"host2": [server("vm-a")]})  # reserve_disable = False
    L.run(1)
    maint(L, "host5", True)
    since = int(L.now * 1000)
    L.run(2)
    maint(L, "host5", False)
    L.run(2)
    iid = f"release:host5:maintenance:{since}:a1"
    assert [i for _, i in actions(L, "release:")] == [iid]
    assert L.state.intents[iid].status == "ok"


def test_a_host_in_maintenance_is_not_a_target_and_its_window_is_kept() -> None:
    L = leader(servers={"host2": [server("vm-a")]})
    L.run(1)
    maint(L, "host3", True)
    maint(L, "host2", True)
    L.run(3)
    assert "host3" not in {e["target"] for e in L.intents("drain:")}
    first = L.state.maintenance["host2"].since
    L.now += 5
    maint(L, "host2", True)  # said twice: the same window goes on
    assert L.state.maintenance["host2"].since == first


def test_state_replays_to_the_same_reserve_and_maintenance_picture() -> None:
    L = leader(servers={"host2": [server("vm-a")]})
    L.run(1)
    maint(L, "host2", True)
    L.run(3)
    maint(L, "host2", False)
    L.run(2)
    again = SegmentState(L.seg)
    for n, e in enumerate(L.log, 1):
        again.apply(e, n)
    assert again.enabled_at == L.state.enabled_at
    assert again.maintenance_ended == L.state.maintenance_ended
    assert again.role_since == L.state.role_since


def test_two_hosts_failing_together_release_the_shared_reserve_once() -> None:
    L = leader(servers={"host2": [server("vm-a")], "host3": [server("vm-b")]})
    L.run(1)
    L.observe("host2")
    L.observe("host3")
    L.run(8)
    assert [e["intent"] for e in L.intents("release:")] == ["release:host5:reserve:0:a1"]
    assert {e["target"] for e in L.intents("evacuate:")} == {"host5"}
