"""Evacuation planning, N+k and reserve replacement."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshha.config.model import PRIORITIES
from meshha.recovery.placement import (
    Candidate,
    HostLoad,
    Placement,
    Plan,
    Target,
    Unplaced,
    VmDemand,
    execution_order,
    fits,
    n_plus_k,
    plan,
    replacement,
    target_of,
    used_targets,
)
from meshha.recovery.ports import HostFacts


def vm(
    name: str, ram_mb: int = 1024, vcpus: int = 1, disk_gb: int = 10, priority: str = "medium"
) -> VmDemand:
    return VmDemand(name, vcpus, ram_mb, disk_gb, priority)  # type: ignore[arg-type]


def tgt(host: str, ram_mb: int = 16384, vcpus: int = 16, disk_gb: int = 500) -> Target:
    return Target(host, vcpus, ram_mb, disk_gb)


# -- order -------------------------------------------------------------------------------


def test_priority_then_size_then_id() -> None:
    vms = [
        vm("low-big", 8192, priority="low"),
        vm("med-b", 2048),
        vm("med-a", 2048),
        vm("high-small", 512, priority="high"),
        vm("med-cpu", 2048, vcpus=4),
        vm("med-big", 4096),
        vm("med-disk", 2048, disk_gb=80),
    ]
    got = plan(vms, [tgt("r1", 65536, 64, 5000)])
    assert [p.vm for p in got.placements] == [
        "high-small",
        "med-big",
        "med-cpu",
        "med-disk",
        "med-a",
        "med-b",
        "low-big",
    ]
    assert [p.priority for p in got.placements][:2] == ["high", "medium"]
    assert [d.vm for d in execution_order(vms)] == [p.vm for p in got.placements]


def test_high_priority_gets_the_scarce_capacity() -> None:
    got = plan(
        [vm("low", 4096, priority="low"), vm("high", 4096, priority="high")], [tgt("r1", 4096)]
    )
    assert got.placements == (Placement("high", "r1", "high"),)
    assert [u.vm for u in got.unplaced] == ["low"]


# -- best fit ------------------------------------------------------------------------------


def test_best_fit_picks_the_tightest_target() -> None:
    got = plan([vm("a", 3072)], [tgt("big", 16384), tgt("snug", 4096), tgt("small", 2048)])
    assert got.placements == (Placement("a", "snug", "medium"),)
    assert {t.host: t.ram_mb_free for t in got.remaining} == {
        "big": 16384,
        "snug": 1024,
        "small": 2048,
    }


def test_best_fit_keeps_the_big_hole_for_the_big_vm() -> None:
    # First-fit onto "a" (alphabetical) would leave no home for the 8 GB VM.
    got = plan([vm("big", 8192), vm("small", 2048)], [tgt("a", 8192), tgt("b", 2048)])
    assert {p.vm: p.target for p in got.placements} == {"big": "a", "small": "b"}
    assert got.unplaced == ()


def test_best_fit_ties_go_by_host_name() -> None:
    got = plan([vm("x", 1024)], [tgt("r2", 4096), tgt("r1", 4096)])
    assert got.placements[0].target == "r1"


def test_slack_breaks_ties_on_vcpus_after_ram() -> None:
    got = plan([vm("x", 1024, vcpus=2)], [tgt("r1", 4096, vcpus=8), tgt("r2", 4096, vcpus=4)])
    assert got.placements[0].target == "r2"


def test_remaining_accounts_for_every_placement() -> None:
    got = plan([vm("a", 1024, 2, 10), vm("b", 2048, 1, 20)], [tgt("r1", 8192, 8, 100)])
    assert got.remaining == (Target("r1", 5, 5120, 70),)
    assert used_targets(got) == frozenset({"r1"})


def test_empty_inputs() -> None:
    assert plan([], []) == Plan((), (), ())
    assert plan([], [tgt("r1")]).remaining == (tgt("r1"),)


def test_negative_free_fits_nothing() -> None:
    got = plan([vm("a", 0, 0, 0)], [Target("r1", -1, 1024, 10)])
    assert got.placements == () and "vCPUs" in got.unplaced[0].reason


def test_zero_sized_vm_fits_an_exactly_full_host() -> None:
    assert plan([vm("a", 0, 0, 0)], [Target("r1", 0, 0, 0)]).placements[0].target == "r1"


def test_duplicate_inputs_are_programmer_errors() -> None:
    with pytest.raises(AssertionError):
        plan([vm("a"), vm("a")], [tgt("r1")])
    with pytest.raises(AssertionError):
        plan([vm("a")], [tgt("r1"), tgt("r1")])


# -- unplaced reasons ------------------------------------------------------------------------


def test_unplaced_names_the_short_ram() -> None:
    got = plan([vm("a", 8192, priority="high")], [tgt("host3", 2048), tgt("host4", 4096)])
    assert got.unplaced == (
        Unplaced(
            "a", "high", "needs 8192 MB RAM, largest free on reserved hosts is 4096 MB (host4)"
        ),
    )


def test_unplaced_names_every_short_resource() -> None:
    got = plan([vm("a", 8192, vcpus=32, disk_gb=40)], [tgt("r1", 4096, vcpus=16, disk_gb=100)])
    assert got.unplaced[0].reason == (
        "needs 32 vCPUs, largest free on reserved hosts is 16 vCPUs (r1); "
        "needs 8192 MB RAM, largest free on reserved hosts is 4096 MB (r1)"
    )


def test_unplaced_disk() -> None:
    got = plan([vm("a", 1024, disk_gb=80)], [tgt("r1", disk_gb=40)])
    assert (
        got.unplaced[0].reason == "needs 80 GB disk, largest free on reserved hosts is 40 GB (r1)"
    )


def test_unplaced_when_resources_are_split_across_hosts() -> None:
    got = plan([vm("a", 4096, vcpus=4)], [tgt("r1", 8192, vcpus=2), tgt("r2", 2048, vcpus=8)])
    assert got.unplaced[0].reason == (
        "needs 4 vCPUs, 4096 MB RAM and 10 GB disk on one host; no reserved host has all of "
        "it free: r1 lacks vCPUs, r2 lacks RAM"
    )


def test_unplaced_without_any_target() -> None:
    got = plan([vm("a")], [])
    assert got.unplaced == (Unplaced("a", "medium", "no reserved host is available to take it"),)


def test_an_unplaced_vm_takes_nothing_and_smaller_ones_still_fit() -> None:
    got = plan([vm("big", 8192), vm("small", 1024)], [tgt("r1", 4096)])
    assert [u.vm for u in got.unplaced] == ["big"]
    assert got.placements == (Placement("small", "r1", "medium"),)


def test_target_of_host_facts() -> None:
    facts = HostFacts("h1", vcpus_free=4, ram_mb_free=2048, disk_gb_free=30, aggregates=("x",))
    assert target_of(facts) == Target("h1", 4, 2048, 30)


# -- N+k -------------------------------------------------------------------------------------


def load(host: str, *vms: VmDemand) -> HostLoad:
    return HostLoad(host, vms)


def test_n_plus_k_survives_when_the_largest_hosts_fit() -> None:
    loads = [
        load("c1", vm("a", 4096), vm("b", 2048)),
        load("c2", vm("c", 8192)),
        load("c3", vm("d", 1024)),
    ]
    rep = n_plus_k(loads, [tgt("r1", 8192), tgt("r2", 8192)], 2)
    assert rep.survives and rep.k == 2
    assert rep.lost_hosts == ("c2", "c1")
    assert rep.unplaced == ()
    assert "all fit on the reserve" in rep.reason and "c2, c1" in rep.reason


def test_n_plus_k_fails_and_says_what_does_not_fit() -> None:
    loads = [load("c1", vm("a", 8192, priority="high")), load("c2", vm("b", 1024))]
    rep = n_plus_k(loads, [tgt("r1", 4096)], 1)
    assert not rep.survives
    assert rep.lost_hosts == ("c1",)
    assert rep.unplaced == (
        Unplaced("a", "high", "needs 8192 MB RAM, largest free on reserved hosts is 4096 MB (r1)"),
    )
    assert "1 would not fit" in rep.reason and "needs 8192 MB RAM" in rep.reason


def test_n_plus_k_largest_is_ram_then_vcpus_then_name() -> None:
    loads = [
        load("c3", vm("a", 4096, vcpus=2)),
        load("c1", vm("b", 4096, vcpus=1)),
        load("c2", vm("c", 4096, vcpus=2)),
    ]
    assert n_plus_k(loads, [tgt("r1", 65536)], 3).lost_hosts == ("c2", "c3", "c1")


def test_n_plus_k_k_larger_than_the_segment_loses_everything() -> None:
    loads = [load("c1", vm("a")), load("c2", vm("b"))]
    rep = n_plus_k(loads, [tgt("r1")], 5)
    assert rep.survives and rep.lost_hosts == ("c1", "c2")
    assert "only 2 hosts to lose" in rep.reason


def test_n_plus_k_a_lost_reserve_host_is_no_reserve() -> None:
    loads = [load("r1", vm("a", 4096)), load("c1", vm("b", 1024))]
    rep = n_plus_k(loads, [tgt("r1", 8192)], 1)
    assert rep.lost_hosts == ("r1",) and not rep.survives


def test_n_plus_k_zero_survives_even_without_reserve() -> None:
    rep = n_plus_k([load("c1", vm("a", 99999))], [], 0)
    assert rep.survives and rep.lost_hosts == () and rep.unplaced == ()


# -- replacement ---------------------------------------------------------------------------


def cand(host: str, running: int = 0, ram_mb: int = 16384, eligible: bool = True) -> Candidate:
    return Candidate(host, tgt(host, ram_mb), running, eligible, "" if eligible else "maintenance")


def test_replacement_promotes_only_what_is_missing() -> None:
    reserve = [tgt("r1"), tgt("r2"), tgt("r3")]
    cands = [cand("c1"), cand("c2"), cand("c3")]
    assert replacement(reserve, 3, cands, used={"r1"}) == ("c1",)
    assert replacement(reserve, 3, cands, used={"r1", "r2"}) == ("c1", "c2")
    assert replacement(reserve, 3, cands) == ()
    assert replacement(reserve, 2, cands, used={"r1"}) == ()


def test_replacement_accepts_used_hosts_already_left_out() -> None:
    # The caller may drop used reserved hosts itself instead of passing `used`.
    assert replacement([tgt("r2")], 2, [cand("c1"), cand("c2")]) == ("c1",)


def test_replacement_prefers_idle_then_large_then_name() -> None:
    cands = [
        cand("c-busy", running=3, ram_mb=65536),
        cand("c-small", ram_mb=8192),
        cand("c-b", ram_mb=32768),
        cand("c-a", ram_mb=32768),
    ]
    assert replacement([], 4, cands) == ("c-a", "c-b", "c-small", "c-busy")
    assert replacement([], 1, list(reversed(cands))) == ("c-a",)


def test_replacement_skips_ineligible_and_reserved_candidates() -> None:
    cands = [cand("c1", eligible=False), cand("r2"), cand("r1"), cand("c2")]
    assert replacement([tgt("r2")], 3, cands, used={"r1"}) == ("c2",)


def test_replacement_returns_fewer_when_the_pool_runs_dry() -> None:
    assert replacement([], 3, [cand("c1")]) == ("c1",)
    assert replacement([], 0, [cand("c1")]) == ()


def test_plan_then_replacement_end_to_end() -> None:
    reserve = [tgt("r1", 8192), tgt("r2", 8192)]
    p = plan([vm("a", 6144), vm("b", 4096)], reserve)
    used = used_targets(p)
    assert used == {"r1", "r2"}
    assert replacement(p.remaining, 2, [cand("c1"), cand("c2", running=1)], used=used) == (
        "c1",
        "c2",
    )


# -- properties ------------------------------------------------------------------------------

_vms = st.lists(
    st.builds(
        VmDemand,
        vm=st.text("abcdef", min_size=1, max_size=4),
        vcpus=st.integers(0, 16),
        ram_mb=st.sampled_from([0, 512, 1024, 2048, 4096, 8192, 16384]),
        disk_gb=st.integers(0, 200),
        priority=st.sampled_from(PRIORITIES),
    ),
    max_size=25,
    unique_by=lambda d: d.vm,
)
_targets = st.lists(
    st.builds(
        Target,
        host=st.text("rstu", min_size=1, max_size=3),
        vcpus_free=st.integers(-2, 48),
        ram_mb_free=st.integers(-1024, 65536),
        disk_gb_free=st.integers(-10, 1000),
    ),
    max_size=6,
    unique_by=lambda t: t.host,
)


@given(vms=_vms, targets=_targets, data=st.data())
def test_plan_is_permutation_invariant(vms, targets, data) -> None:  # type: ignore[no-untyped-def]
    shuffled_vms = data.draw(st.permutations(vms))
    shuffled_targets = data.draw(st.permutations(targets))
    assert plan(shuffled_vms, shuffled_targets) == plan(vms, targets)


@given(vms=_vms, targets=_targets)
def test_plan_never_over_commits_and_conserves_vms(vms, targets) -> None:  # type: ignore[no-untyped-def]
    p = plan(vms, targets)
    ids = [x.vm for x in p.placements] + [u.vm for u in p.unplaced]
    assert sorted(ids) == sorted(d.vm for d in vms)
    by_vm = {d.vm: d for d in vms}
    left = {t.host: t for t in p.remaining}
    assert set(left) == {t.host for t in targets}
    for t in targets:
        got = [by_vm[x.vm] for x in p.placements if x.target == t.host]
        assert sum(d.vcpus for d in got) <= max(t.vcpus_free, 0)
        assert sum(d.ram_mb for d in got) <= max(t.ram_mb_free, 0)
        assert sum(d.disk_gb for d in got) <= max(t.disk_gb_free, 0)
        r = left[t.host]
        assert (r.vcpus_free, r.ram_mb_free, r.disk_gb_free) == (
            t.vcpus_free - sum(d.vcpus for d in got),
            t.ram_mb_free - sum(d.ram_mb for d in got),
            t.disk_gb_free - sum(d.disk_gb for d in got),
        )
    # Execution order is by priority, and an unplaced VM fits nowhere even now.
    ranks = [PRIORITIES.index(x.priority) for x in p.placements]
    assert ranks == sorted(ranks)
    for u in p.unplaced:
        assert not any(fits(by_vm[u.vm], r) for r in p.remaining)
        assert u.reason


@given(vms=_vms, targets=_targets, k=st.integers(0, 4), data=st.data())
def test_n_plus_k_properties(vms, targets, k, data) -> None:  # type: ignore[no-untyped-def]
    hosts = data.draw(
        st.lists(st.sampled_from(["c1", "c2", "c3", "c4"]), min_size=len(vms), max_size=len(vms))
    )
    loads = [
        HostLoad(h, tuple(d for d, at in zip(vms, hosts, strict=True) if at == h))
        for h in sorted(set(hosts))
    ]
    rep = n_plus_k(loads, targets, k)
    assert rep.survives == (not rep.unplaced)
    assert len(rep.lost_hosts) == min(k, len(loads))
    assert n_plus_k(loads, targets, 0).survives
    assert n_plus_k(list(reversed(loads)), list(reversed(targets)), k) == rep


@given(
    wanted=st.integers(0, 5),
    reserve=_targets,
    used=st.sets(st.text("rstu", min_size=1, max_size=3), max_size=3),
    cands=st.lists(
        st.builds(
            Candidate,
            host=st.text("cdr", min_size=1, max_size=3),
            capacity_free=st.builds(
                Target, st.just("x"), st.integers(0, 8), st.integers(0, 9000), st.integers(0, 9)
            ),
            running_vms=st.integers(0, 3),
            eligible=st.booleans(),
        ),
        max_size=8,
        unique_by=lambda c: c.host,
    ),
)
def test_replacement_never_promotes_more_than_needed(wanted, reserve, used, cands) -> None:  # type: ignore[no-untyped-def]
    got = replacement(reserve, wanted, cands, used=used)
    still_free = {t.host for t in reserve} - used
    assert len(got) <= max(0, wanted - len(still_free))
    assert len(set(got)) == len(got)
    eligible = {c.host for c in cands if c.eligible}
    assert set(got) <= eligible - still_free - used
    assert replacement(reserve, wanted, list(reversed(cands)), used=used) == got
