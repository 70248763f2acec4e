"""HA policy resolution: finest level wins per field, operator over user, safe conflicts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshha.config.model import POLICY_LEVELS, PRIORITIES, VM_FAILURE_ACTIONS, Policy, PolicyRule
from meshha.recovery.policy import FIELDS, VmContext, VmPolicy, resolve
from meshha.recovery.ports import Flavor, Server


def server(
    *,
    id: str = "vm-1",
    project: str = "proj-a",
    flavor: str = "m1.small",
    extra_specs: tuple[tuple[str, str], ...] = (),
    metadata: tuple[tuple[str, str], ...] = (),
    az: str | None = "az1",
    host: str | None = "host1",
) -> Server:
    return Server(
        id=id,
        name=f"name-{id}",
        host=host,
        status="ACTIVE",
        task_state=None,
        project_id=project,
        flavor=Flavor(flavor, 2, 2048, 20, extra_specs),
        metadata=metadata,
        availability_zone=az,
    )


def ctx(srv: Server | None = None, **kw: object) -> VmContext:
    base: dict[str, object] = {"region": "RegionOne", "cell": "cell1", "aggregates": ("agg-a",)}
    base.update(kw)
    return VmContext(srv or server(), **base)  # type: ignore[arg-type]


def pol(*rules: PolicyRule, **kw: object) -> Policy:
    return Policy(rules=rules, **kw)  # type: ignore[arg-type]


# -- defaults and levels -----------------------------------------------------------------


def test_defaults_when_nothing_speaks() -> None:
    got = resolve(pol(default_ha=False, default_priority="low"), ctx())
    assert (got.ha, got.priority, got.on_vm_failure) == (False, "low", "restart")
    assert got.decided_by == (
        ("ha", "default"),
        ("priority", "default"),
        ("on_vm_failure", "default"),
    )


@pytest.mark.parametrize(
    ("level", "match"),
    [
        ("region", "RegionOne"),
        ("cell", "cell1"),
        ("availability_zone", "az1"),
        ("aggregate", "agg-a"),
        ("project", "proj-a"),
        ("flavor", "m1.small"),
        ("vm", "vm-1"),
    ],
)
def test_rule_matches_by_name_at_each_level(level: str, match: str) -> None:
    got = resolve(pol(PolicyRule(level, match, ha=False)), ctx())  # type: ignore[arg-type]
    assert got.ha is False
    assert got.why("ha") == f"{level}:{match}"


def test_rule_for_another_name_does_not_match() -> None:
    rules = [
        PolicyRule("region", "RegionTwo", ha=False),
        PolicyRule("cell", "cell9", ha=False),
        PolicyRule("availability_zone", "az2", ha=False),
        PolicyRule("aggregate", "agg-z", ha=False),
        PolicyRule("project", "proj-b", ha=False),
        PolicyRule("flavor", "m1.large", ha=False),
        PolicyRule("vm", "vm-2", ha=False),
    ]
    got = resolve(pol(*rules), ctx())
    assert got.ha is True and got.why("ha") == "default"


def test_finer_level_overrides_coarser() -> None:
    # The user story's example: the AZ requires HA, a flavor configured without it wins.
    rules = (
        PolicyRule("availability_zone", "az1", ha=True),
        PolicyRule("flavor", "m1.small", ha=False),
        PolicyRule("region", "RegionOne", ha=True),
    )
    got = resolve(pol(*rules, default_ha=True), ctx())
    assert got.ha is False and got.why("ha") == "flavor:m1.small"
    # Rule order in the config does not matter.
    assert resolve(pol(*reversed(rules)), ctx()) == got


def test_each_field_is_decided_independently() -> None:
    rules = (
        PolicyRule("flavor", "m1.small", ha=True),
        PolicyRule("project", "proj-a", priority="high"),
        PolicyRule("region", "RegionOne", on_vm_failure="hard_reboot", ha=False),
    )
    got = resolve(pol(*rules, default_ha=False), ctx())
    assert (got.ha, got.priority, got.on_vm_failure) == (True, "high", "hard_reboot")
    assert dict(got.decided_by) == {
        "ha": "flavor:m1.small",
        "priority": "project:proj-a",
        "on_vm_failure": "region:RegionOne",
    }


def test_az_falls_back_to_the_servers_zone() -> None:
    rule = PolicyRule("availability_zone", "az-srv", priority="low")
    assert resolve(pol(rule), ctx(server(az="az-srv"))).priority == "low"
    # An explicit context zone takes precedence over the server's.
    assert (
        resolve(pol(rule), ctx(server(az="az-srv"), availability_zone="az-x")).priority == "medium"
    )


def test_missing_names_match_nothing() -> None:
    rules = (PolicyRule("region", "RegionOne", ha=False), PolicyRule("cell", "cell1", ha=False))
    got = resolve(pol(*rules), VmContext(server(az=None)))
    assert got.ha is True


def test_never_per_compute_host() -> None:
    rules = (PolicyRule("vm", "host1", ha=False),)  # a host name used as a match finds nothing
    a = resolve(pol(*rules), ctx(server(host="host1")))
    b = resolve(pol(*rules), ctx(server(host="host2")))
    assert a == b and a.ha is True
    with pytest.raises(AssertionError):
        resolve(pol(PolicyRule("host", "host1", ha=False)), ctx())  # type: ignore[arg-type]


# -- user sources: flavor extra_specs and server metadata ---------------------------------


def test_flavor_extra_specs_speak_at_flavor_level() -> None:
    srv = server(extra_specs=(("meshha:ha", "false"), ("meshha:priority", "high")))
    got = resolve(pol(PolicyRule("project", "proj-a", ha=True, priority="low")), ctx(srv))
    assert (got.ha, got.priority) == (False, "high")
    assert got.why("ha") == "flavor:m1.small extra_specs meshha:ha=false"


def test_server_metadata_speaks_at_vm_level() -> None:
    srv = server(
        extra_specs=(("meshha:on_vm_failure", "alert"),),
        metadata=(("meshha:on_vm_failure", "restart_elsewhere"),),
    )
    got = resolve(pol(), ctx(srv))
    assert got.on_vm_failure == "restart_elsewhere"
    assert got.why("on_vm_failure") == "vm:vm-1 metadata meshha:on_vm_failure=restart_elsewhere"


@pytest.mark.parametrize(
    ("raw", "want"), [("True", True), ("true", True), ("FALSE", False), (" False ", False)]
)
def test_masakari_ha_enabled_is_honoured_case_insensitively(raw: str, want: bool) -> None:
    got = resolve(pol(default_ha=not want), ctx(server(metadata=(("HA_Enabled", raw),))))
    assert got.ha is want
    assert got.why("ha").startswith("vm:vm-1 metadata HA_Enabled=")


def test_meshha_key_beats_legacy_ha_enabled() -> None:
    srv = server(metadata=(("HA_Enabled", "True"), ("meshha:ha", "false")))
    got = resolve(pol(), ctx(srv))
    assert got.ha is False
    assert (
        got.why("ha")
        == "vm:vm-1 metadata meshha:ha=false (overrides vm:vm-1 metadata HA_Enabled=True)"
    )


def test_operator_rule_beats_user_metadata_at_the_same_level() -> None:
    srv = server(metadata=(("meshha:ha", "false"), ("meshha:priority", "high")))
    got = resolve(pol(PolicyRule("vm", "vm-1", ha=True)), ctx(srv))
    assert got.ha is True
    assert got.why("ha") == "vm:vm-1 (overrides vm:vm-1 metadata meshha:ha=false)"
    assert got.priority == "high"  # the rule says nothing about priority: metadata decides


def test_operator_rule_beats_flavor_extra_specs_at_the_same_level() -> None:
    srv = server(extra_specs=(("meshha:priority", "high"),))
    got = resolve(pol(PolicyRule("flavor", "m1.small", priority="low")), ctx(srv))
    assert got.priority == "low"


def test_user_metadata_still_beats_coarser_operator_rules() -> None:
    srv = server(metadata=(("meshha:ha", "false"),))
    got = resolve(pol(PolicyRule("project", "proj-a", ha=True)), ctx(srv))
    assert got.ha is False


@pytest.mark.parametrize(
    ("key", "raw", "field"),
    [
        ("meshha:priority", "urgent", "priority"),
        ("meshha:ha", "yes please", "ha"),
        ("HA_Enabled", "", "ha"),
        ("meshha:on_vm_failure", "pray", "on_vm_failure"),
    ],
)
def test_garbage_metadata_is_ignored_and_recorded(key: str, raw: str, field: str) -> None:
    rule = PolicyRule("project", "proj-a", ha=False, priority="low", on_vm_failure="alert")
    got = resolve(pol(rule), ctx(server(metadata=((key, raw),))))
    assert got.why(field) == "project:proj-a"
    assert got.ignored == (
        (field, f"ignored: vm:vm-1 metadata {key}={raw!r} ({_expected(field)})"),
    )


def _expected(field: str) -> str:
    return {
        "ha": "expected true or false",
        "priority": "expected one of high, medium, low",
        "on_vm_failure": "expected one of restart, hard_reboot, restart_elsewhere, alert, ignore",
    }[field]


def test_garbage_next_to_a_good_value_keeps_the_good_one() -> None:
    srv = server(
        extra_specs=(("meshha:priority", "HIGH"),),
        metadata=(("meshha:priority", "urgent"), ("meshha:ha", "maybe"), ("other", "x")),
    )
    got = resolve(pol(), ctx(srv))
    assert got.priority == "high"  # from the flavor, parsed leniently
    assert [f for f, _ in got.ignored] == ["ha", "priority"]
    assert got.decided_by[:3] == (
        ("ha", "default"),
        ("priority", "flavor:m1.small extra_specs meshha:priority=HIGH"),
        ("on_vm_failure", "default"),
    )


def test_unknown_keys_are_not_ours() -> None:
    got = resolve(pol(), ctx(server(metadata=(("meshha:colour", "blue"), ("ha_enabled", "x")))))
    assert got.ignored == ()


# -- conflicts at one level ----------------------------------------------------------------


def test_aggregate_conflict_prefers_ha_on() -> None:
    rules = (PolicyRule("aggregate", "agg-a", ha=False), PolicyRule("aggregate", "agg-b", ha=True))
    got = resolve(pol(*rules, default_ha=False), ctx(aggregates=("agg-a", "agg-b")))
    assert got.ha is True
    assert (
        got.why("ha")
        == "aggregate:agg-b (conflict: beats aggregate:agg-a ha=False; HA on beats off)"
    )


def test_aggregate_conflict_prefers_higher_priority() -> None:
    rules = (
        PolicyRule("aggregate", "agg-c", priority="low"),
        PolicyRule("aggregate", "agg-a", priority="high"),
        PolicyRule("aggregate", "agg-b", priority="medium"),
    )
    for order in (rules, tuple(reversed(rules))):
        got = resolve(pol(*order), ctx(aggregates=("agg-c", "agg-b", "agg-a")))
        assert got.priority == "high"
        assert got.why("priority").startswith("aggregate:agg-a (conflict: beats ")
        assert "agg-b priority=medium" in got.why("priority")
        assert "agg-c priority=low" in got.why("priority")


def test_aggregate_conflict_prefers_the_more_recovering_action() -> None:
    rules = (
        PolicyRule("aggregate", "agg-a", on_vm_failure="ignore"),
        PolicyRule("aggregate", "agg-b", on_vm_failure="hard_reboot"),
    )
    got = resolve(pol(*rules), ctx(aggregates=("agg-a", "agg-b")))
    assert got.on_vm_failure == "hard_reboot"


def test_agreeing_aggregates_report_no_conflict() -> None:
    rules = (PolicyRule("aggregate", "agg-b", ha=False), PolicyRule("aggregate", "agg-a", ha=False))
    got = resolve(pol(*rules), ctx(aggregates=("agg-a", "agg-b")))
    assert got.ha is False and got.why("ha") == "aggregate:agg-a"


def test_only_aggregates_the_vm_is_in_count() -> None:
    rules = (PolicyRule("aggregate", "agg-a", ha=False), PolicyRule("aggregate", "agg-z", ha=True))
    got = resolve(pol(*rules, default_ha=True), ctx(aggregates=("agg-a",)))
    assert got.ha is False


# -- properties ---------------------------------------------------------------------------

_text = st.text(max_size=12)
_keys = st.sampled_from(["meshha:ha", "meshha:priority", "meshha:on_vm_failure", "HA_Enabled", "x"])
_pairs = st.lists(
    st.tuples(_keys, _text | st.sampled_from(["true", "False", "high", "alert"])), max_size=6
)
_rules = st.lists(
    st.builds(
        PolicyRule,
        level=st.sampled_from(POLICY_LEVELS),
        match=st.sampled_from(
            ["RegionOne", "cell1", "az1", "agg-a", "agg-b", "proj-a", "m1.small", "vm-1", "n"]
        ),
        ha=st.none() | st.booleans(),
        priority=st.none() | st.sampled_from(PRIORITIES),
        on_vm_failure=st.none() | st.sampled_from(VM_FAILURE_ACTIONS),
    ),
    max_size=8,
)


@given(rules=_rules, meta=_pairs, specs=_pairs)
def test_resolve_never_crashes_and_always_explains(rules, meta, specs) -> None:  # type: ignore[no-untyped-def]
    srv = server(metadata=tuple(meta), extra_specs=tuple(specs))
    got = resolve(pol(*rules), ctx(srv, aggregates=("agg-a", "agg-b")))
    assert isinstance(got, VmPolicy)
    assert got.priority in PRIORITIES and got.on_vm_failure in VM_FAILURE_ACTIONS
    assert tuple(f for f, _ in got.decided_by[:3]) == FIELDS
    assert all(reason.startswith("ignored: ") for _, reason in got.ignored)
    # Permutation-invariant in rules, metadata and aggregates.
    again = resolve(
        pol(*reversed(rules)),
        ctx(
            server(metadata=tuple(reversed(meta)), extra_specs=tuple(specs)),
            aggregates=("agg-b", "agg-a"),
        ),
    )
    assert again == got
