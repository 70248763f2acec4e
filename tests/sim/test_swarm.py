"""Swarm testing: 200 random fault schedules (segment size, fault mix and timing drawn
from the seed), each a faulty phase then a healed phase that must converge, with the
safety invariants checked. A failure names its seed; reproduce it with
`meshctl sim --random 1 --seed SEED`."""

from __future__ import annotations

import pytest

from meshha.sim.swarm import swarm_run

CHUNK = 20
RUNS = 200


@pytest.mark.slow
@pytest.mark.parametrize("start", range(0, RUNS, CHUNK))
async def test_random_schedules(start: int, autojump_clock) -> None:  # type: ignore[no-untyped-def]
    bad = []
    for seed in range(start, start + CHUNK):
        run = await swarm_run(seed)
        if not run.ok:
            bad.append(
                f"seed {seed} ({run.hosts} hosts): {run.failure} {run.violations}\n  faults: {run.faults}"
            )
    assert not bad, "\n".join(bad)
