"""Swarm testing: 200 random fault schedules (segment size, fault mix and timing drawn
from the seed), each a faulty phase then a healed phase that must converge, with the
safety invariants checked. A failure names its seed; runs go through `replay.run`, so
`meshctl sim --random 1 --seed SEED` replays it exactly and prints its timeline."""

from __future__ import annotations

import pytest

from meshha.sim import replay
from meshha.sim.swarm import swarm_run

CHUNK = 20
RUNS = 200


@pytest.mark.slow
@pytest.mark.parametrize("start", range(0, RUNS, CHUNK))
def test_random_schedules(start: int) -> None:
    bad = []
    for seed in range(start, start + CHUNK):
        run = replay.run(swarm_run, seed, seed=seed)
        if not run.ok:
            bad.append(
                f"seed {seed} ({run.hosts} hosts): {run.failure} {run.violations}\n  faults: {run.faults}"
            )
    assert not bad, "\n".join(bad)
