"""A few nemesis runs on the real lab (meshha.lab.nemesis): seeded fault schedules, each
followed by the safety checks (no VM in two places, no evacuation before a confirmed
fence, nothing done by a minority, identical ledgers, every HA VM running, no healthy host
fenced). A failure names the seed and the schedule: replay it with
`meshha-lab nemesis --runs 1 --seed SEED`. The benchmark runs 20; CI runs these.
"""

from __future__ import annotations

import pytest

from meshha.lab.cloud import Cloud, LabSpec
from meshha.lab.nemesis import nemesis

pytestmark = [
    pytest.mark.integration,
    pytest.mark.lab,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
LAB_SPEC = LabSpec(hosts=5, reserved=1, vms=8)
CI_SEED = 1
CI_RUNS = 3


def test_nemesis_runs_violate_nothing(cloud: Cloud) -> None:
    reports = nemesis(cloud, CI_RUNS, CI_SEED, print)
    bad = {r.seed: (r.describe(), r.violations) for r in reports if r.violations}
    assert not bad, bad
    assert all(r.samples > 10 for r in reports)
