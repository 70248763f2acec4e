"""Verdicts from committed observations: majorities on every network for `failed`, some
networks (once settled) for `degraded`, two credible accusers for `suspect`, and whose
word counts (discredited, failed and isolated observers do not)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshha.config.model import Recovery, Segment, majority
from meshha.raft import entries as E
from meshha.raft.state import SegmentState
from meshha.recovery.verdicts import (
    compute,
    credible_losses,
    discredited,
    host_verdict,
    last_heard,
    observers_of,
)
from meshha.sim.world import SimSpec, build_segment

SEG = build_segment(SimSpec(hosts=5))  # five voters; admin, storage, tenant
NETS = SEG.network_names
T0 = 1000.0
FAIL = SEG.timings.fail_after_s  # 0.3 s (lan-fast)
SETTLE = SEG.timings.suspect_after_s  # 0.6 s


def state_with(losses: Sequence[tuple[object, ...]], seg: Segment = SEG) -> SegmentState:
    """(observer, target, network[, since]) losses, committed at their `since`."""
    s = SegmentState(seg)
    for loss in losses:
        by, host, net = (str(x) for x in loss[:3])
        since = float(loss[3]) if len(loss) > 3 else T0  # type: ignore[arg-type]
        s.apply(
            E.observation(ts=since, by=by, host=host, network=net, reachable=False, since=since),
            s.index + 1,
        )
    return s


def all_nets(
    observers: list[str], host: str, since: float = T0
) -> list[tuple[str, str, str, float]]:
    return [(o, host, n, since) for o in observers for n in NETS]


def kind(s: SegmentState, host: str, now: float, seg: Segment = SEG) -> str:
    return host_verdict(seg, s, host, now).kind


# -- failed ------------------------------------------------------------------------------


def test_nobody_lost_it_is_healthy() -> None:
    v = host_verdict(SEG, SegmentState(SEG), "host2", T0)
    assert (v.kind, v.networks, v.evidence) == ("healthy", (), ())


def test_failed_needs_a_majority_of_the_other_voters_on_every_network() -> None:
    assert majority(4) == 3
    two = state_with(all_nets(["host1", "host3"], "host2"))
    assert kind(two, "host2", T0 + 100) == "suspect"
    three = state_with(all_nets(["host1", "host3", "host4"], "host2"))
    v = host_verdict(SEG, three, "host2", T0 + 100)
    assert v.kind == "failed" and v.networks == NETS
    assert "need 3" in v.reason and "3 of 4 voters" in v.reason
    assert sorted(v.evidence) == sorted(
        (o, n, T0) for o in ("host1", "host3", "host4") for n in NETS
    )


def test_failed_waits_until_the_losses_are_held_for_fail_after() -> None:
    s = state_with(all_nets(["host1", "host3", "host4"], "host2"))
    assert kind(s, "host2", T0) == "suspect"
    assert kind(s, "host2", T0 + FAIL - 0.01) == "suspect"
    assert kind(s, "host2", T0 + FAIL) == "failed"


def test_each_observer_is_counted_from_its_own_since() -> None:
    late = T0 + 5
    s = state_with(all_nets(["host1", "host3"], "host2") + all_nets(["host4"], "host2", late))
    assert kind(s, "host2", T0 + 1) == "suspect"
    assert kind(s, "host2", late + FAIL) == "failed"


def test_a_majority_on_some_networks_only_is_not_failed() -> None:
    s = state_with(
        [(o, "host2", n) for o in ("host1", "host3", "host4") for n in ("admin", "storage")]
        + [("host1", "host2", "tenant"), ("host3", "host2", "tenant")]
    )
    v = host_verdict(SEG, s, "host2", T0 + 100)
    assert v.kind == "degraded" and v.networks == ("admin", "storage")


def test_a_failed_verdict_does_not_wait_for_settling() -> None:
    s = state_with(all_nets(["host1", "host3", "host4"], "host2"))
    assert s.changed_at["host2"] + SETTLE > T0 + FAIL
    assert kind(s, "host2", T0 + FAIL) == "failed"


# -- degraded ----------------------------------------------------------------------------


def test_degraded_waits_for_the_picture_to_settle() -> None:
    s = state_with([(o, "host2", "storage") for o in ("host1", "host3", "host4")])
    assert s.changed_at["host2"] == T0
    assert kind(s, "host2", T0 + FAIL) == "suspect"
    assert kind(s, "host2", T0 + SETTLE - 0.01) == "suspect"
    v = host_verdict(SEG, s, "host2", T0 + SETTLE)
    assert v.kind == "degraded" and v.networks == ("storage",)
    assert "reachable on admin, tenant" in v.reason
    assert {o for o, _, _ in v.evidence} == {"host1", "host3", "host4"}


def test_any_change_about_the_host_unsettles_a_degraded_verdict() -> None:
    s = state_with([(o, "host2", "storage") for o in ("host1", "host3", "host4")])
    assert kind(s, "host2", T0 + 10) == "degraded"
    later = T0 + 10
    s.apply(
        E.observation(
            ts=later, by="host5", host="host2", network="admin", reachable=False, since=later
        ),
        s.index + 1,
    )
    assert kind(s, "host2", later + 0.1) == "suspect"  # is it dying network by network?
    assert kind(s, "host2", later + SETTLE) == "degraded"


# -- suspect -----------------------------------------------------------------------------


def test_one_accuser_is_not_a_suspicion() -> None:
    s = state_with(all_nets(["host1"], "host2"))
    assert kind(s, "host2", T0 + 100) == "healthy"


def test_two_credible_accusers_make_a_suspect_with_evidence() -> None:
    s = state_with([("host1", "host2", "admin"), ("host3", "host2", "tenant")])
    v = host_verdict(SEG, s, "host2", T0 + 100)
    assert v.kind == "suspect" and v.networks == ()
    assert "host1, host3" in v.reason
    assert sorted(v.evidence) == [("host1", "admin", T0), ("host3", "tenant", T0)]


def test_one_accuser_suffices_where_only_one_could_exist() -> None:
    seg = build_segment(SimSpec(hosts=2))
    s = state_with([("host1", "host2", "admin")], seg)
    assert kind(s, "host2", T0, seg) == "suspect"
    s = state_with(all_nets(["host1"], "host2"), seg)
    assert kind(s, "host2", T0 + FAIL, seg) == "failed"


def test_non_voters_accusations_do_not_count() -> None:
    seg = build_segment(SimSpec(hosts=7, voters=5))
    assert seg.voters == ("host1", "host2", "host3", "host4", "host5")
    s = state_with(all_nets(["host6", "host7"], "host2"), seg)
    assert kind(s, "host2", T0 + 100, seg) == "healthy"
    # A non-voter is judged by the voters.
    s = state_with(all_nets(["host1", "host2", "host3"], "host6"), seg)
    assert kind(s, "host6", T0 + 100, seg) == "failed"


# -- whose word counts -------------------------------------------------------------------


def broken_storage_nic(*hosts: str) -> list[tuple[str, str, str]]:
    """Each of `hosts` loses everyone on storage, and everyone loses it."""
    out = []
    for b in hosts:
        for h in SEG.host_names:
            if h != b:
                out += [(b, h, "storage"), (h, b, "storage")]
    return out


def test_a_host_with_a_broken_nic_does_not_make_everyone_suspect() -> None:
    s = state_with(broken_storage_nic("host3", "host4"))
    assert discredited(SEG, s, "host3", "storage")
    assert not discredited(SEG, s, "host1", "storage")
    now = T0 + 100
    verdicts = compute(SEG, s, now)
    assert {h: v.kind for h, v in verdicts.items()} == {
        "host1": "healthy",
        "host2": "healthy",
        "host3": "degraded",
        "host4": "degraded",
        "host5": "healthy",
    }
    assert verdicts["host3"].networks == ("storage",)
    # Without the discredit, host3 and host4 would be two accusers of host1.
    assert set(s.lost_by("host1", "storage")) == {"host3", "host4"}
    assert credible_losses(SEG, s, "host1", "storage") == {}


def test_discredit_is_per_network() -> None:
    s = state_with(
        [*broken_storage_nic("host3"), ("host3", "host2", "admin"), ("host4", "host2", "admin")]
    )
    assert discredited(SEG, s, "host3", "storage")
    assert not discredited(SEG, s, "host3", "admin")
    assert set(credible_losses(SEG, s, "host2", "admin")) == {"host3", "host4"}
    assert kind(s, "host2", T0 + 100) == "suspect"


def test_failed_observers_do_not_count() -> None:
    s = SegmentState(SEG)
    s.apply(
        E.verdict(
            ts=T0,
            by="host1",
            host="host4",
            verdict="failed",
            networks=list(NETS),
            reason="",
            evidence=[],
        ),
        1,
    )
    for o, n in [(o, n) for o in ("host1", "host3", "host4") for n in NETS]:
        s.apply(
            E.observation(ts=T0, by=o, host="host2", network=n, reachable=False, since=T0),
            s.index + 1,
        )
    assert "host4" not in observers_of(SEG, s, "host2")
    v = host_verdict(SEG, s, "host2", T0 + 100)
    assert v.kind == "suspect"  # the bar stays a majority of all voters: 3


def test_isolated_observers_do_not_count() -> None:
    s = state_with(all_nets(["host1", "host3", "host4"], "host2"))
    assert kind(s, "host2", T0 + 100) == "failed"
    s.apply(E.isolation(ts=T0, by="host4", host="host4", on=True, reason="r"), s.index + 1)
    assert kind(s, "host2", T0 + 100) == "suspect"
    s.apply(E.isolation(ts=T0, by="host4", host="host4", on=False, reason="r"), s.index + 1)
    assert kind(s, "host2", T0 + 100) == "failed"


def test_only_voters_can_discredit_an_observer() -> None:
    seg = build_segment(SimSpec(hosts=5, voters=3))  # voters host1-3, non-voters host4-5
    s = state_with(
        [
            ("host4", "host2", "storage"),
            ("host5", "host2", "storage"),
            ("host1", "host3", "storage"),
            ("host2", "host3", "storage"),
        ],
        seg,
    )
    assert not discredited(seg, s, "host2", "storage")
    # host1 and host2 (the two other voters) have lost host3 on storage: degraded.
    assert kind(s, "host3", T0 + 100, seg) == "degraded"


# -- maintenance and processes -----------------------------------------------------------


def test_maintenance_wins_over_everything() -> None:
    s = state_with(all_nets(["host1", "host3", "host4", "host5"], "host2"))
    s.apply(
        E.process_failure(
            ts=T0, by="host2", host="host2", process="libvirtd", outcome="restart_failed", detail=""
        ),
        s.index + 1,
    )
    s.apply(E.maintenance(ts=T0, by="host1", host="host2", on=True, reason="bios"), s.index + 1)
    fe = replace(SEG, recovery=Recovery(process_restart_failure="fence_evacuate"))
    for seg in (SEG, fe):
        v = host_verdict(seg, s, "host2", T0 + 100)
        assert v.kind == "maintenance" and "bios" in v.reason


@pytest.mark.parametrize(
    ("policy", "outcome", "expected"),
    [
        ("fence_evacuate", "restart_failed", "failed"),
        ("disable", "restart_failed", "healthy"),
        ("fence_evacuate", "restarted", "healthy"),
    ],
)
def test_a_process_that_cannot_be_restarted(policy: str, outcome: str, expected: str) -> None:
    seg = replace(SEG, recovery=Recovery(process_restart_failure=policy))  # type: ignore[arg-type]
    s = SegmentState(seg)
    s.apply(
        E.process_failure(
            ts=T0,
            by="host3",
            host="host3",
            process="nova-compute",
            outcome=outcome,
            detail="exit 1",
        ),
        1,
    )
    v = host_verdict(seg, s, "host3", T0)
    assert v.kind == expected
    if expected == "failed":
        assert v.networks == ("process:nova-compute",)
        assert "exit 1" in v.reason and "fence_evacuate" in v.reason
    assert kind(s, "host2", T0, seg) == "healthy"


# -- last heard --------------------------------------------------------------------------


def test_last_heard_is_the_newest_since() -> None:
    assert last_heard(SegmentState(SEG), "host2") is None
    s = state_with(
        [
            ("host1", "host2", "admin", T0),
            ("host3", "host2", "storage", T0 + 2.5),
            ("host1", "host3", "admin", T0 + 9),
        ]
    )
    assert last_heard(s, "host2") == T0 + 2.5


# -- properties --------------------------------------------------------------------------

loss = st.tuples(
    st.sampled_from(SEG.host_names),
    st.sampled_from(SEG.host_names),
    st.sampled_from(NETS),
    st.sampled_from([T0, T0 + 0.1, T0 + 0.5, T0 + 2]),
).filter(lambda x: x[0] != x[1])


@settings(max_examples=150, deadline=None)
@given(
    st.lists(loss, max_size=30, unique_by=lambda x: x[:3]),
    st.sampled_from([0.0, 0.35, 1.0, 3.0]),
    st.randoms(),
)
def test_verdicts_depend_on_the_losses_not_their_order(
    losses: list[tuple[str, str, str, float]], dt: float, rnd: random.Random
) -> None:
    # Committed in one batch (the same ts), in any order: the same verdicts.
    flat = [(o, h, n, s) for o, h, n, s in losses]
    a = SegmentState(SEG)
    b = SegmentState(SEG)
    shuffled = list(flat)
    rnd.shuffle(shuffled)
    for st_, batch in ((a, flat), (b, shuffled)):
        for o, h, n, s in batch:
            st_.apply(
                E.observation(ts=T0 + 2, by=o, host=h, network=n, reachable=False, since=s),
                st_.index + 1,
            )
    now = T0 + 2 + dt
    va, vb = compute(SEG, a, now), compute(SEG, b, now)
    assert va == vb
    need = majority(len(SEG.voters) - 1)
    for h, v in va.items():
        if v.kind in ("failed", "degraded"):
            # Every network named rests on `need` credible observers held long enough.
            for n in v.networks:
                held = {o for o, net, s in v.evidence if net == n and s + FAIL <= now}
                assert len(held) >= need, (h, v)
                assert held <= set(credible_losses(SEG, a, h, n))
        if v.kind == "failed":
            assert v.networks == NETS
        if v.kind == "healthy":
            assert len({o for n in NETS for o in credible_losses(SEG, a, h, n)}) < 2
