"""Data-driven `decide` scenarios (tests/unit/scenarios/*.txt): small text files of steps
run against the pure decision core with the fake executor of test_decide.py. Unlike the
simulator's scenarios (meshha/sim/scenarios) there is no network, no Raft and no agent:
each step is a committed fact, and `tick` is the leader calling `decide` every 0.1 s.

The language is the simulator's (meshha/sim/script.py: one verb table, one parser); this
runner supports the verbs in `VERBS` below (`segment`, `servers`, `answer`,
`maintenance`, `lose`, `regain`, `vm-failure`, `process-failure`, `tick` and the
expectations `verdict`, `evacuations`, `actions`, `count`, `fenced`, `unfenced`,
`brake`, `role`). A step it does not support fails at parse time with its line.
"""

from __future__ import annotations

from collections.abc import Callable
from fnmatch import fnmatch
from pathlib import Path

import pytest

from meshha.config.synthetic import synthetic_segment
from meshha.raft import entries as E
from meshha.raft.state import Intent
from meshha.sim import script
from meshha.sim.script import Step
from tests.unit.test_decide import Answer, Leader, server

SCENARIOS = Path(__file__).parent / "scenarios"
BIG = (64, 4096, 40)


Handler = Callable[[Leader, Step], None]


def build(step: Step) -> Leader:
    try:
        options = script.segment_options(step.args, sim=False)
    except script.ScriptError as err:
        raise AssertionError(err) from None
    return Leader(synthetic_segment(**options))


def vm_spec(word: str) -> dict[str, object]:
    name, *tags = word.split(":")
    priority = next((t for t in tags if t in ("high", "medium", "low")), "medium")
    return server(
        name, priority, ha="noha" not in tags, size=BIG if "big" in tags else (2, 4096, 40)
    )


def answer_of(outcome: str) -> object:
    def answer(i: Intent) -> Answer:
        if outcome == "none":
            return None
        if outcome == "failed":
            return ("failed", {"error_kind": "unreachable", "detail": "scripted failure"})
        return ("ok", {})

    return answer


def servers(L: Leader, s: Step) -> None:
    L.servers[s.args[0]] = [vm_spec(x) for x in s.args[1:]]  # type: ignore[misc]
    for f in L.facts:
        if f["host"] == s.args[0]:
            f["running_vms"] = len(s.args) - 1


def answer(L: Leader, s: Step) -> None:
    L.answers[s.args[0]] = answer_of(s.args[1])  # type: ignore[assignment]


def maintenance(L: Leader, s: Step) -> None:
    on, host = s.args[0] == "on", s.args[1]
    L.commit(E.maintenance(ts=L.now, by=L.me, host=host, on=on, reason="scenario"))


def observe(L: Leader, s: Step) -> None:
    L.observe(
        s.args[0],
        script.tail_list(s.args, "on"),
        script.tail_list(s.args, "by"),
        reachable=s.verb == "regain",
    )


def vm_failure(L: Leader, s: Step) -> None:
    host, vm = s.args[0], s.args[1]
    e = E.vm_failure(ts=L.now, by=host, host=host, vm=vm, event="crashed", detail="scenario")
    e.update(dict(w.split("=", 1) for w in s.args[2:]))
    L.commit(e)


def process_failure(L: Leader, s: Step) -> None:
    host, process = s.args[0], s.args[1]
    L.commit(
        E.process_failure(
            ts=L.now,
            by=host,
            host=host,
            process=process,
            outcome="restart_failed",
            detail="scenario",
        )
    )


def tick(L: Leader, s: Step) -> None:
    L.run(script.seconds(s.args[0]))


def expect(L: Leader, s: Step) -> None:
    what, args = s.verb.split()[1], s.args
    assert s.within is None, "the decide tests do not wait: tick, then expect"
    if what == "verdict":
        v = L.state.verdicts[args[0]]
        assert v.kind == args[1], f"{args[0]} is {v.kind} ({v.reason})"
        if len(args) > 2:
            assert v.networks == tuple(args[2].split(",")), v.networks
    elif what == "evacuations":
        got = [f"{e['vm']}>{e['target']}" for e in L.intents(f"evacuate:{args[0]}:")]
        assert got == args[1:], got
    elif what == "actions":
        got = [e["action"] for e in L.intents() if e["host"] == args[0]]
        assert got == args[1:], got
    elif what == "count":
        got = [e["intent"] for e in L.intents() if fnmatch(e["intent"], args[0])]
        assert len(got) == int(args[1]), got
    elif what == "fenced":
        f = L.state.fenced.get(args[0])
        assert L.state.is_fenced(args[0]) and f is not None, f"{args[0]} is not fenced"
        methods = script.tail_list(args, "by")
        assert methods is None or f.method in methods, f
    elif what == "unfenced":
        assert not L.state.is_fenced(args[0]), L.state.fenced.get(args[0])
    elif what == "brake":
        assert L.state.brake.on == (args[0] == "on"), L.state.brake
    elif what == "role":
        assert L.state.roles[args[0]] == args[1], L.state.roles
    else:
        raise AssertionError(f"unknown expectation {what!r}")


VERBS: dict[str, script.Verb[Handler]] = script.table(
    {
        "segment": lambda L, s: None,  # read by run_scenario
        "servers": servers,
        "answer": answer,
        "maintenance": maintenance,
        "lose": observe,
        "regain": observe,
        "vm-failure": vm_failure,
        "process-failure": process_failure,
        "tick": tick,
        **{
            f"expect {what}": expect
            for what in (
                "verdict",
                "evacuations",
                "actions",
                "count",
                "fenced",
                "unfenced",
                "brake",
                "role",
            )
        },
    }
)


def parse(text: str, name: str = "<text>") -> script.Script:
    return script.parse(text, name, VERBS)


def run_scenario(text: str, name: str = "<text>") -> Leader:
    sc = parse(text, name)
    steps = sc.steps
    assert steps and steps[0].verb == "segment", "a scenario starts with `segment`"
    L = build(steps[0])
    for step in steps[1:]:
        try:
            VERBS[step.verb].run(L, step)
        except AssertionError as err:
            raise AssertionError(f"line {step.line}: {step.text}: {err}") from None
    return L


NAMES = sorted(p.name for p in SCENARIOS.glob("*.txt"))


def test_there_are_scenarios() -> None:
    assert len(NAMES) >= 4


@pytest.mark.parametrize("name", NAMES)
def test_scenario(name: str) -> None:
    text = (SCENARIOS / name).read_text(encoding="utf-8")
    sc = parse(text, name)
    assert sc.description.startswith("Proves:"), f"{name}: the first comment says what it proves"
    run_scenario(text, name)


def test_a_broken_expectation_names_its_line() -> None:
    text = (
        "# Proves: nothing.\nsegment hosts=3 reserved=host3\ntick 1s\nexpect verdict host2 failed\n"
    )
    with pytest.raises(
        AssertionError, match="line 4: expect verdict host2 failed: host2 is healthy"
    ):
        run_scenario(text)
