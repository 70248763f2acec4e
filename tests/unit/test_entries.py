"""Log entries: every builder round-trips through msgpack, and `check` describes what is
wrong with an entry from outside (control socket, old journal) without ever raising."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshha.config.model import Segment
from meshha.config.synthetic import synthetic_segment
from meshha.raft import entries as E
from meshha.raft.intent_key import STEPS
from meshha.raft.state import SegmentState

TS = 1_800_000_000.25


def every_builder() -> dict[str, E.Entry]:
    """One entry of each kind, with every optional field set to something non-default."""
    return {
        "observation": E.observation(
            ts=TS, by="host1", host="host2", network="storage", reachable=False, since=TS - 1
        ),
        "verdict": E.verdict(
            ts=TS,
            by="host1",
            host="host2",
            verdict="failed",
            networks=["admin", "storage"],
            reason="lost on every network",
            evidence=[["host1", "admin", TS - 2], ["host3", "storage", TS - 1.5]],
        ),
        "maintenance": E.maintenance(
            ts=TS, by="host1", host="host3", on=True, reason="kernel update", operator="ops"
        ),
        "intent": E.intent(
            ts=TS,
            by="host1",
            intent_id="evacuate:host2:e1:vm-a:a1",
            action="evacuate",
            host="host2",
            reason="host2 fenced",
            vm="vm-a",
            target="host5",
            order=3,
            params={"severity": "critical", "n": 2},
        ),
        "result": E.result(
            ts=TS,
            by="host1",
            intent_id="fence:host2:e1:a1",
            outcome="failed",
            detail="no route to BMC",
            error_kind="unreachable",
            data={"tried": ["10.9.0.2"], "attempts": 1},
        ),
        "fenced": E.fenced(
            ts=TS,
            by="host1",
            host="host2",
            method="self_fence_deadline",
            reason="deadline passed",
            evidence={"last_heard": TS - 20, "deadline": TS - 9.5},
        ),
        "vm_failure": E.vm_failure(
            ts=TS, by="host3", host="host3", vm="vm-b", event="crashed", detail="qemu died"
        ),
        "process_failure": E.process_failure(
            ts=TS,
            by="host3",
            host="host3",
            process="nova-compute",
            outcome="restart_failed",
            detail="exit 1",
        ),
        "brake": E.brake(
            ts=TS, by="host1", on=True, hosts=["host4", "host2", "host3"], reason="3 of 5"
        ),
        "reserve": E.reserve(ts=TS, by="host1", host="host4", role="reserved", reason="replace"),
        "isolation": E.isolation(ts=TS, by="host2", host="host2", on=True, reason="lost majority"),
        "capacity": E.capacity(
            ts=TS, by="host1", survives=False, k=1, reason="does not fit", lost_hosts=["host2"]
        ),
        "reconcile": E.reconcile(
            ts=TS,
            by="host2",
            host="host2",
            episode=1,
            booted_at=TS - 60,
            destroyed=["vm-a"],
            kept=[],
            ok=True,
            detail="destroyed 1",
        ),
    }


BUILT = every_builder()


def test_there_is_a_builder_for_every_kind() -> None:
    assert set(BUILT) == set(E.REQUIRED)
    for kind, e in BUILT.items():
        assert e["kind"] == kind


@pytest.mark.parametrize("kind", sorted(BUILT))
def test_builder_round_trips_through_pack(kind: str) -> None:
    e = BUILT[kind]
    data = E.pack(e)
    assert isinstance(data, bytes)
    assert E.unpack(data) == e
    assert E.check(E.unpack(data)) == []


@pytest.mark.parametrize("kind", sorted(BUILT))
def test_builder_output_is_valid_and_versioned(kind: str) -> None:
    e = BUILT[kind]
    assert E.check(e) == []
    assert e["v"] == E.SCHEMA_VERSION
    assert isinstance(e["ts"], float) and e["by"]
    for f in E.REQUIRED[kind]:
        assert f in e


def test_builders_normalise_types() -> None:
    e = E.observation(ts=5, by="h1", host="h2", network="admin", reachable=0, since=3)  # type: ignore[arg-type]
    assert isinstance(e["ts"], float) and isinstance(e["since"], float)
    assert e["reachable"] is False
    assert E.brake(ts=1, by="h", on=1, hosts=["b", "a"], reason="")["hosts"] == ["a", "b"]  # type: ignore[arg-type]
    # Optional intent fields are always present, so a replica never guesses a default.
    i = E.intent(ts=1, by="h", intent_id="x:a1", action="alert", host="", reason="r")
    assert (i["vm"], i["target"], i["order"], i["params"]) == (None, None, 0, {})
    r = E.result(ts=1, by="h", intent_id="x:a1", outcome="ok", detail="")
    assert (r["error_kind"], r["data"]) == (None, {})


def test_builders_refuse_unknown_actions_and_outcomes() -> None:
    with pytest.raises(AssertionError):
        E.intent(ts=1, by="h", intent_id="x", action="reboot_everything", host="h", reason="")  # type: ignore[arg-type]
    with pytest.raises(AssertionError):
        E.result(ts=1, by="h", intent_id="x", outcome="maybe", detail="")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", sorted(BUILT))
def test_check_names_each_missing_field(kind: str) -> None:
    for f in E.REQUIRED[kind]:
        e = dict(BUILT[kind])
        del e[f]
        assert E.check(e) == [f"{f}: missing for {kind}"]
    for f in ("v", "kind", "ts", "by"):
        e = dict(BUILT[kind])
        del e[f]
        problems = E.check(e)
        assert any(p.startswith(f"{f}: missing") for p in problems), problems


def test_check_names_an_unknown_kind_and_a_newer_schema() -> None:
    e = dict(BUILT["observation"], kind="teleport")
    assert E.check(e) == ["kind: unknown 'teleport'"]
    e = dict(BUILT["observation"], v=E.SCHEMA_VERSION + 1)
    problems = E.check(e)
    assert len(problems) == 1 and "newer" in problems[0]


def test_check_reports_wrong_types_of_the_envelope() -> None:
    e = dict(BUILT["maintenance"], ts="yesterday", by=7)
    problems = E.check(e)
    assert "ts: missing or not a float" in problems
    assert "by: missing or not a str" in problems


@pytest.mark.parametrize("garbage", [None, 3, "entry", b"\x00", [1, 2], 1.5, True])
def test_check_on_a_non_map(garbage: Any) -> None:
    problems = E.check(garbage)
    assert len(problems) == 1 and "not a map" in problems[0]


# -- garbage never raises ----------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=12)
    | st.binary(max_size=12)
)
msgpackable = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=8,
)
field_names = st.sampled_from(
    sorted({f for fs in E.REQUIRED.values() for f in fs} | {"kind", "ts", "by", "x"})
)
kinds = st.sampled_from(sorted(E.REQUIRED)) | msgpackable
# An entry-shaped map whose envelope is well-typed except, perhaps, its fields.
entry_like = st.fixed_dictionaries(
    {"v": st.just(E.SCHEMA_VERSION) | st.integers(), "kind": kinds},
    optional={"ts": msgpackable, "by": msgpackable},
).flatmap(
    lambda base: st.dictionaries(field_names, msgpackable, max_size=6).map(
        lambda extra: {**extra, **base}
    )
)


# Top-level maps without a `v` (a non-numeric `v` is the known bug below).
garbage_maps = st.dictionaries(
    st.text(max_size=6).filter(lambda k: k != "v") | field_names, msgpackable, max_size=6
)


@settings(max_examples=60, deadline=None)
@given(msgpackable.filter(lambda x: not isinstance(x, dict)) | garbage_maps | entry_like)
def test_check_never_raises_on_garbage(value: Any) -> None:
    problems = E.check(value)
    assert isinstance(problems, list) and all(isinstance(p, str) for p in problems)
    if not isinstance(value, dict):
        assert problems


@settings(max_examples=50, deadline=None)
@given(entry_like)
def test_check_accepts_exactly_complete_known_entries(value: dict[str, Any]) -> None:
    problems = E.check(value)
    kind = value["kind"]
    complete = (
        isinstance(kind, str)
        and kind in E.REQUIRED
        and all(f in value for f in E.REQUIRED[kind])
        and isinstance(value.get("ts"), float)
        and isinstance(value.get("by"), str)
        and value["v"] <= E.SCHEMA_VERSION
    )
    assert (problems == []) == complete, problems


@pytest.mark.parametrize("v", ["1", None, [1], {"a": 1}, b"1"])
def test_check_reports_a_non_numeric_schema_version(v: Any) -> None:
    e = dict(BUILT["observation"], v=v)
    assert E.check(e) == ["v: missing or not a int"]


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.just("v"), msgpackable, min_size=1) | entry_like)
def test_check_never_raises_whatever_v_is(value: dict[str, Any]) -> None:
    E.check(value)


@settings(max_examples=50, deadline=None)
@given(msgpackable)
def test_pack_unpack_is_identity_on_msgpackable_maps(value: Any) -> None:
    e = {"v": 1, "kind": "x", "ts": 1.0, "by": "h", "payload": value}
    back = E.unpack(E.pack(e))
    # NaN != NaN: compare through a second packing, byte for byte.
    assert E.pack(back) == E.pack(e)


# -- an old ledger still replays -----------------------------------------------------------

# Committed logs of the data-driven decide scenarios (tests/unit/scenarios), recorded by
# the schema-1 code before the state was typed (dict records, intent ids built by hand),
# with a summary of the state they built. Replaying them into today's state machine must
# build the same state: intent ids, statuses, fences, inventories, the brake.
LEDGERS = Path(__file__).parent / "ledgers" / "schema-v1.msgpack"


def summary(s: SegmentState) -> dict[str, Any]:
    """The schema-1 capture's view of a state, computed from today's records."""
    return {
        "index": s.index,
        "verdicts": {h: [v.kind, list(v.networks)] for h, v in sorted(s.verdicts.items())},
        "episode": dict(sorted(s.episode.items())),
        "intents": {
            k: [i.status, i.action, i.host, i.vm, i.target, i.episode]
            for k, i in sorted(s.intents.items())
        },
        "fenced": {h: [f.method, f.episode] for h, f in sorted(s.fenced.items())},
        "maintenance": sorted(s.maintenance),
        "inventory": {
            h: [x.episode, x.purpose, [v.id for v in x.servers]]
            for h, x in sorted(s.inventory.items())
        },
        "brake": [s.brake.on, list(s.brake.hosts), s.brake_count],
        "roles": dict(sorted(s.roles.items())),
        "vm_failures": {vm: len(t) for vm, t in sorted(s.vm_failures.items())},
        "process_failures": sorted(
            f"{h}/{p}:{r.outcome}" for (h, p), r in s.process_failures.items()
        ),
    }


OLD = E.unpack(LEDGERS.read_bytes())


def segment_of(words: list[str]) -> Segment:
    """The segment a capture names (`segment hosts=N [voters=N] [reserved=a,b] ...`):
    the state machine reads only its hosts, voters and roles."""
    o = dict(w.split("=", 1) for w in words[1:])
    return synthetic_segment(
        int(o["hosts"]),
        voters=int(o["voters"]) if "voters" in o else None,
        reserved=tuple(o["reserved"].split(",")) if "reserved" in o else None,
    )


@pytest.mark.parametrize("name", sorted(OLD))
def test_a_schema_1_ledger_replays_into_the_same_state(name: str) -> None:
    old = OLD[name]
    assert old["entries"] and all(e["v"] == 1 and E.check(e) == [] for e in old["entries"])
    s = SegmentState(segment_of(old["segment"]))
    for e in old["entries"]:
        s.apply(E.unpack(E.pack(e)), s.index + 1)
    assert summary(s) == old["summary"]
    # Every intent id of the old ledger reads back as a key, and formats to itself.
    for iid, i in s.intents.items():
        assert i.key is not None and i.key.format() == iid, iid


def test_the_old_ledgers_cover_every_kind_of_step() -> None:
    ids = {iid for old in OLD.values() for iid in old["summary"]["intents"]}
    prefixes = {
        ":".join(i.split(":")[:2]) if i.startswith("alert:") else i.split(":")[0] for i in ids
    }
    # hold, release, drain came after every kept ledger (reserve kept empty, maintenance);
    # power_check too (a BMC's lie, decide/return_.py).
    new_steps = {"alert", "hard_reboot", "hold", "release", "drain", "power_check"}
    assert set(STEPS) - new_steps <= prefixes
    assert {"alert:brake", "alert:recovered", "alert:process", "alert:fence-wait"} <= prefixes
