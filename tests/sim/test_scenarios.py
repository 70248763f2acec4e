"""Every scenario file, run in simulated time with the real decision core.

Each scenario states what it proves in its first comment; `run_scenario` executes its
steps (faults and expectations), then always heals the segment and requires it to
converge, and checks the safety invariants (no VM in two places, no evacuation before
a fence, only a majority acts, maintenance untouched, every ledger complete).

Runs go through `replay.run`, as `meshctl sim` does, so a failing seed replays exactly
from the command line. For `GOLDEN_SEED` the timeline must also match the one kept below
the steps in the file, byte for byte. After a deliberate behaviour change, regenerate
them (`meshctl sim --rewrite --scenario NAME`, or all of them with
`MESHHA_REWRITE=1 pytest tests/sim/test_scenarios.py`) and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from meshha.cli import main
from meshha.sim import replay
from meshha.sim.scenario import (
    GOLDEN_SEED,
    Outcome,
    Scenario,
    load,
    parse,
    rewrite,
    run_scenario,
    scenario_files,
    trace,
    trace_diff,
)

SLOW = {"lossy-network-hour"}
NAMES = sorted(scenario_files())
REWRITE = os.environ.get("MESHHA_REWRITE") == "1"


def _report(out: Outcome) -> str:
    tail = "\n".join(str(r) for r in out.timeline if r["type"] != "observation")[-4000:]
    return f"seed {out.seed}: {out.failure} {out.violations}\n{tail}"


def _run(sc: Scenario, seed: int) -> Outcome:
    return replay.run(run_scenario, sc, seed, seed=seed)


def _check(sc: Scenario, seed: int) -> None:
    out = _run(sc, seed)
    assert out.ok, _report(out)
    if seed == GOLDEN_SEED:
        if REWRITE:
            rewrite(sc, out)
        diff = trace_diff(sc, out)
        assert not diff, (
            f"{sc.name}: the timeline differs from the one below its steps "
            f"(if the change is meant, `meshctl sim --rewrite --scenario {sc.name}`):\n{diff}"
        )


@pytest.mark.parametrize("name", [n for n in NAMES if n not in SLOW])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_scenario(name: str, seed: int) -> None:
    _check(load(name), seed)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW))
def test_slow_scenario(name: str) -> None:
    _check(load(name), GOLDEN_SEED)


def test_every_scenario_says_what_it_proves_and_keeps_its_timeline() -> None:
    for name in NAMES:
        sc = load(name)
        assert "Proves:" in sc.description, f"{name}: the first comment must say what it proves"
        assert sc.steps, name
        assert sc.script is not None and sc.script.expected, f"{name}: no timeline below `----`"


def test_detection_figure_is_seconds_not_minutes() -> None:
    out = _run(load("host-power-off"), 7)
    assert out.ok, _report(out)
    # The scenario records power-off -> failed verdict; Masakari's hostmonitor polls every 60 s.
    assert 0 < out.figures["detect_host2_s"] < 3.0


def test_a_broken_expectation_fails_and_names_the_seed() -> None:
    sc = parse(
        "# Proves: the runner catches an unmet expectation.\n"
        "segment hosts=3 reserved=host3 vms=1\nwait-leader\n"
        "expect verdict host1 failed within 2s\n",
        "broken",
    )
    out = _run(sc, 5)
    assert not out.ok
    assert "seed 5" in out.failure and "broken:4" in out.failure


def test_a_changed_timeline_fails_and_rewrite_puts_it_back(tmp_path: Path) -> None:
    """The trace check can fail, shows the difference, and `meshctl sim --rewrite`
    regenerates the trace below the steps, keeping the file's opening comment and steps."""
    original = scenario_files()["vm-crash"].read_text(encoding="utf-8")
    head, mark, kept = original.partition("\n----")
    path = tmp_path / "vm-crash.txt"
    path.write_text(head + mark + kept.replace("restart", "RESTART"), encoding="utf-8")
    sc = load(str(path))
    out = _run(sc, GOLDEN_SEED)
    assert out.ok, _report(out)
    diff = trace_diff(sc, out)
    assert "-" in diff and "+" in diff and "RESTART" in diff, diff

    res = CliRunner().invoke(main, ["sim", "--scenario", str(path), "--rewrite"])
    assert res.exit_code == 0, res.output
    rewritten = path.read_text(encoding="utf-8")
    assert rewritten == original  # same steps, same comment, same trace: replay is exact
    assert rewritten.startswith(head) and load(str(path)).script.expected == trace(out)  # type: ignore[union-attr]

    res = CliRunner().invoke(main, ["sim", "--scenario", str(path), "--rewrite", "--seed", "2"])
    assert res.exit_code != 0 and "seed 1" in res.output
