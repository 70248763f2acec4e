"""A few nemesis runs on the real lab (meshha.lab.nemesis): seeded fault schedules, each
followed by the safety checks (no VM in two places, no evacuation before a confirmed
fence, nothing done by a minority, identical ledgers, every HA VM running, no healthy host
fenced or powered off, a BMC's lie handled as one). A failure names the seed and the
schedule: replay it with `meshha-lab nemesis --runs 1 --seed SEED` on a lab built with
LabSpec(agent_clock=True, data_fs_mb=32) (the seed draws among every kind only there).
The benchmark runs 20; CI runs these.

The seeds cover five of the six fault kinds added last:
- 268 (a test of its own): host4 cut off from everyone while its BMC lies (fenced on the
  lie, reset by its own watchdog, heard again, named in a bmc-lied alert, vouched for,
  back in service), host3's
  data disk full. It found a VM running on host4 and host5 at once for about 4 s (2 of
  3 CI runs, and every time after 839 and 28 ran on the same lab): host4's isolation
  check waited about twice isolation_after_s, so the majority evacuated on the lie
  before host4 destroyed its VMs. Fixed in agent/node.py (contact counted from the last
  majority of probe answers) and decide/host.py (`self_fence_due`); sim scenario
  bmc-lies-isolation-after;
- 839: host3's agent's clock 30 s behind, host1's admin link flapping every 2 s;
- 28: 5% loss and up to 50 ms jitter on host2's links.
bmc-hang (e.g. seed 214: loss on host3 and host1 powered off with its BMC hung, fenced by
the self-fence deadline) is left to the benchmark's runs: its recovery waits out the
30 s deadline.

- agent-kill (a test of its own, seeds 13 and 20): a kill -9 of a host's agent, which
  its init starts again a second later. It used to fence the healthy host whenever the
  restart took longer than detection (seed 13; seed 20 under heavy load with lan-safe;
  every time with lan-fast, whose detection is faster than a restart): a refused knock
  counted as no answer. A refusal is now a live kernel (meshha.probes.liveness), held
  for the stall grace; sim scenario agent-killed.
"""

from __future__ import annotations

import time

import pytest

from meshha.lab.cloud import Cloud, LabSpec
from meshha.lab.nemesis import nemesis

pytestmark = [
    pytest.mark.integration,
    pytest.mark.lab,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]
LAB_SPEC = LabSpec(hosts=5, reserved=1, vms=8, agent_clock=True, data_fs_mb=32)
CI_SEEDS = (839, 28)
LIE_SEED = 268
AGENT_KILL_SEEDS = (13, 20)  # host2's agent killed; host1's while host2's admin link flaps


def test_nemesis_runs_violate_nothing(cloud: Cloud) -> None:
    t0 = time.monotonic()
    reports = [r for seed in CI_SEEDS for r in nemesis(cloud, 1, seed, print)]
    bad = {r.seed: (r.describe(), r.violations) for r in reports if r.violations}
    assert not bad, bad
    assert all(r.samples > 10 for r in reports)
    kinds = {f.kind for r in reports for f in r.schedule}
    assert {"clock", "flap", "loss"} <= kinds, kinds
    print(f"nemesis: {len(reports)} runs in {time.monotonic() - t0:.0f}s")


def test_a_lying_bmc_runs_no_vm_twice(cloud: Cloud) -> None:
    """With lan-fast and the example's 6 s watchdog, host4, cut off for 10.5 s, destroys
    its VMs at isolation (2 s) and is reset by its own watchdog about 5 s after the BMC's
    false "off": it boots after the fence, and only its agent's mark of when it was last
    up (agent/alive.py) shows the lie. The nemesis vouched for it only after the segment
    named the lie (a `bmc-lied` alert) and kept it out of service."""
    (report,) = nemesis(cloud, 1, LIE_SEED, print)
    assert {"bmc-lie", "disk-full"} <= {f.kind for f in report.schedule}
    assert not report.violations, (report.describe(), report.violations)
    assert report.samples > 10
    assert report.vouched_at > 0, "the lie was not named, or no fence went through the BMC"


def test_an_agent_killed_and_restarted_by_its_init_fences_nothing(cloud: Cloud) -> None:
    reports = [r for seed in AGENT_KILL_SEEDS for r in nemesis(cloud, 1, seed, print)]
    for r in reports:
        assert "agent-kill" in {f.kind for f in r.schedule}
        assert not r.violations, (r.describe(), r.violations)
        assert r.samples > 10
