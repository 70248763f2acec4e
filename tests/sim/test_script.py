"""The one scenario language (meshha/sim/script.py): what the parser accepts and how it
says what is wrong, before anything runs."""

from __future__ import annotations

import pytest

from meshha.sim import script
from meshha.sim.scenario import STEPS
from meshha.sim.script import ScriptError, Step
from tests.unit.test_decide_data import VERBS as DECIDE_VERBS

TEXT = """\
# A host loses power. Proves: it is fenced.
# (two comment lines, one description)
segment hosts=5 reserved=host5
# a comment between steps is not part of the description
power-off host2   # a trailing comment
expect verdict host2 failed within 5s
expect fenced host2 by bmc

---- seed 1
    3.000s  FAULT     power-off host2
OK
"""


def test_a_script_parses_into_steps_a_description_and_a_trace() -> None:
    sc = script.parse(TEXT, "t", STEPS)
    assert (
        sc.description
        == "A host loses power. Proves: it is fenced. (two comment lines, one description)"
    )
    assert sc.steps == [
        Step(3, "segment", ["hosts=5", "reserved=host5"]),
        Step(5, "power-off", ["host2"]),
        Step(6, "expect verdict", ["host2", "failed"], 5.0),
        Step(7, "expect fenced", ["host2", "by", "bmc"]),
    ]
    assert sc.expected == ["    3.000s  FAULT     power-off host2", "OK"]
    assert sc.steps[2].text == "expect verdict host2 failed within 5s"


def test_the_trace_is_rewritten_below_the_steps_and_nothing_else_changes() -> None:
    sc = script.parse(TEXT, "t", STEPS)
    new = script.with_expected(sc, "seed 1", ["a", "b"])
    assert new == TEXT.split("\n\n----")[0] + "\n\n---- seed 1\na\nb\n"
    assert script.parse(new, "t", STEPS).expected == ["a", "b"]
    fresh = script.parse(TEXT.split("\n\n----")[0], "t", STEPS)
    assert fresh.expected is None
    assert script.with_expected(fresh, "seed 1", ["a"]) == new.replace("a\nb\n", "a\n")


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("powr-off host2", "t:2: unknown step 'powr-off'"),
        ("expect verdikt host2 failed", "t:2: unknown step 'expect verdikt'"),
        ("power-off", "t:2: too few arguments; usage: power-off HOSTS"),
        ("expect vm-on vm1", "usage: expect vm-on VM HOST"),
        ("tick 3s within 5s", "only an expectation takes `within`"),
        ("expect evacuated host2 within 5", "not a duration: '5'"),
        ("lose host2", "t:2: 'lose' means nothing to this runner"),
        ('partition "host1', "t:2: No closing quotation"),
    ],
)
def test_a_wrong_step_is_refused_with_its_line(line: str, error: str) -> None:
    with pytest.raises(ScriptError, match=error.replace("(", r"\(")):
        script.parse(f"# Proves: nothing.\n{line}\n", "t", STEPS)


def test_each_runner_supports_its_part_of_one_language() -> None:
    """One verb table: the simulator's and the decide tests' verbs are all in it, with one
    meaning each; the verbs both use are the segment, time, maintenance and the shared
    expectations."""
    both = set(STEPS) & set(DECIDE_VERBS)
    assert both == {
        "segment",
        "tick",
        "maintenance",
        "expect verdict",
        "expect fenced",
        "expect brake",
    }
    for verbs in (STEPS, DECIDE_VERBS):
        assert all(v.usage.startswith(name) for name, v in verbs.items())
    with pytest.raises(ScriptError, match="'power-off' means nothing to this runner"):
        script.parse("segment hosts=3\npower-off host1\n", "d", DECIDE_VERBS)


def test_segment_settings_are_shared_and_checked() -> None:
    o = script.segment_options(
        [
            "hosts=6",
            "reserved=host5,host6",
            "networks=admin:alert,storage:fence_evacuate",
            "process_restart_failure=fence_evacuate",
            "timing.fail_after_s=2",
            "vms=3",
        ]
    )
    assert o["hosts"] == 6 and o["reserved"] == ("host5", "host6") and o["vms_per_host"] == 3
    assert o["networks"] == {"admin": "alert", "storage": "fence_evacuate"}
    assert o["recovery"].process_restart_failure == "fence_evacuate"
    assert o["timings"] == {"fail_after_s": 2.0}
    with pytest.raises(ScriptError, match="unknown segment setting 'host=5'"):
        script.segment_options(["host=5"])
    with pytest.raises(ScriptError, match="'vms' means something only to the simulator"):
        script.segment_options(["vms=2"], sim=False)
    with pytest.raises(ScriptError, match="segment setting 'hosts=five'"):
        script.segment_options(["hosts=five"])


@pytest.mark.parametrize(
    ("word", "s"), [("500ms", 0.5), ("3s", 3.0), ("1.5m", 90.0), ("1h", 3600.0)]
)
def test_durations(word: str, s: float) -> None:
    assert script.seconds(word) == s
