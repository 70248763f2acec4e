"""Data-driven `decide` scenarios (tests/unit/scenarios/*.txt): small text files of steps
run against the pure decision core with the fake executor of test_decide.py. Unlike the
simulator's scenarios (meshha/sim/scenarios) there is no network, no Raft and no agent:
each step is a committed fact, and `run` is the leader calling `decide` every 0.1 s.

The language, one step per line (`#` starts a comment; the first says what it proves):

    segment hosts=6 reserved=host5,host6 [voters=N] [brake=0.3] [nets=admin:alert,...]
    servers HOST VM[:PRIORITY[:noha][:big]] ...      what an inventory of HOST lists
    answer ACTION ok|failed|none                     the executor's answer (none: no result)
    maintenance HOST on|off
    lose HOST [on NET,NET] [by HOST,HOST]            default: every network, every other voter
    regain HOST [on NET,NET] [by HOST,HOST]
    vm-failure HOST VM [on_vm_failure=ACTION]
    process-failure HOST PROCESS
    run SECONDSs
    expect verdict HOST KIND [NET,NET]
    expect evacuations HOST VM>TARGET ...            in the order proposed
    expect actions HOST ACTION ...                   every intent for HOST, in order (alerts too)
    expect count PATTERN N                           intents whose id matches the glob
    expect fenced HOST METHOD | expect unfenced HOST
    expect brake on|off
    expect role HOST ROLE
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

import pytest

from meshha.config.model import Recovery
from meshha.config.synthetic import DEFAULT_NETWORKS, synthetic_segment
from meshha.raft import entries as E
from meshha.raft.state import Intent
from tests.unit.test_decide import Answer, Leader, server

SCENARIOS = Path(__file__).parent / "scenarios"
BIG = (64, 4096, 40)


@dataclass
class Step:
    line: int
    words: list[str]


def parse(text: str) -> tuple[str, list[Step]]:
    lines = text.splitlines()
    description = ""
    steps: list[Step] = []
    for n, raw in enumerate(lines, 1):
        if raw.startswith("#") and not steps and not description:
            description = raw.lstrip("# ").strip()
        words = shlex.split(raw, comments=True)
        if words:
            steps.append(Step(n, words))
    return description, steps


def options(words: list[str]) -> dict[str, str]:
    return dict(w.split("=", 1) for w in words)


def listed(words: list[str], key: str) -> tuple[str, ...] | None:
    """`on a,b` / `by a,b` from the tail of a step."""
    if key in words:
        return tuple(words[words.index(key) + 1].split(","))
    return None


def build(step: Step) -> Leader:
    o = options(step.words[1:])
    nets = dict(DEFAULT_NETWORKS)
    if "nets" in o:
        nets = dict(x.split(":") for x in o["nets"].split(","))
    spec = synthetic_segment(
        hosts=int(o.get("hosts", 5)),
        voters=int(o["voters"]) if "voters" in o else None,
        reserved=tuple(o["reserved"].split(",")) if "reserved" in o else None,
        networks=nets,
        brake_fraction=float(o.get("brake", 0.5)),
        recovery=Recovery(process_restart_failure=o.get("process", "disable")),  # type: ignore[arg-type]
    )
    return Leader(spec)


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


def expect(L: Leader, words: list[str]) -> None:
    what, args = words[0], words[1:]
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
        assert f.method == args[1], f
    elif what == "unfenced":
        assert not L.state.is_fenced(args[0]), L.state.fenced.get(args[0])
    elif what == "brake":
        assert L.state.brake.on == (args[0] == "on"), L.state.brake
    elif what == "role":
        assert L.state.roles[args[0]] == args[1], L.state.roles
    else:
        raise AssertionError(f"unknown expectation {what!r}")


def run_scenario(text: str) -> Leader:
    _, steps = parse(text)
    assert steps and steps[0].words[0] == "segment", "a scenario starts with `segment`"
    L = build(steps[0])
    for step in steps[1:]:
        w = step.words
        try:
            if w[0] == "servers":
                L.servers[w[1]] = [vm_spec(x) for x in w[2:]]  # type: ignore[misc]
                for f in L.facts:
                    if f["host"] == w[1]:
                        f["running_vms"] = len(w) - 2
            elif w[0] == "answer":
                L.answers[w[1]] = answer_of(w[2])  # type: ignore[assignment]
            elif w[0] == "maintenance":
                L.commit(
                    E.maintenance(ts=L.now, by=L.me, host=w[1], on=w[2] == "on", reason="scenario")
                )
            elif w[0] in ("lose", "regain"):
                L.observe(w[1], listed(w, "on"), listed(w, "by"), reachable=w[0] == "regain")
            elif w[0] == "vm-failure":
                e = E.vm_failure(
                    ts=L.now, by=w[1], host=w[1], vm=w[2], event="crashed", detail="scenario"
                )
                e.update(options(w[3:]))
                L.commit(e)
            elif w[0] == "process-failure":
                L.commit(
                    E.process_failure(
                        ts=L.now,
                        by=w[1],
                        host=w[1],
                        process=w[2],
                        outcome="restart_failed",
                        detail="scenario",
                    )
                )
            elif w[0] == "run":
                L.run(float(w[1].rstrip("s")))
            elif w[0] == "expect":
                expect(L, w[1:])
            else:
                raise AssertionError(f"unknown step {w[0]!r}")
        except AssertionError as err:
            raise AssertionError(f"line {step.line}: {' '.join(w)}: {err}") from None
    return L


NAMES = sorted(p.name for p in SCENARIOS.glob("*.txt"))


def test_there_are_scenarios() -> None:
    assert len(NAMES) >= 4


@pytest.mark.parametrize("name", NAMES)
def test_scenario(name: str) -> None:
    text = (SCENARIOS / name).read_text(encoding="utf-8")
    description, _ = parse(text)
    assert description.startswith("Proves:"), f"{name}: the first comment says what it proves"
    run_scenario(text)


def test_a_broken_expectation_names_its_line() -> None:
    text = (
        "# Proves: nothing.\nsegment hosts=3 reserved=host3\nrun 1s\nexpect verdict host2 failed\n"
    )
    with pytest.raises(
        AssertionError, match="line 4: expect verdict host2 failed: host2 is healthy"
    ):
        run_scenario(text)
