"""The nemesis benchmark: N seeded fault schedules on the real lab (meshha.lab.nemesis),
with every kind drawn (the lab built with LabSpec(agent_clock=True, data_fs_mb=32)).

    python bench/lab_nemesis.py --runs 20 --seed 1 [--prefix mhbn --subnet 10.223]

Writes bench/results/lab_nemesis.json: per run its seed, schedule, seconds, samples and
violations; and the totals. Replay a run with `meshha-lab nemesis --runs 1 --seed SEED`
on such a lab.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from meshha.lab.cloud import PROFILE_WATCHDOG_S, Cloud, LabSpec
from meshha.lab.nemesis import nemesis

OUT = Path(__file__).parent / "results" / "lab_nemesis.json"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--prefix", default="mhbn")
    p.add_argument("--subnet", default="10.223")
    p.add_argument("--state", type=Path, default=Path("/run/mhbn-nemesis"))
    p.add_argument("--logs", type=Path, help="Where to save the lab's logs at the end.")
    p.add_argument("--profile", choices=sorted(PROFILE_WATCHDOG_S), default=LabSpec.profile)
    a = p.parse_args()
    cloud = Cloud(a.state)
    cloud.down(say=lambda _: None)
    spec = LabSpec(
        vms=8,
        prefix=a.prefix,
        subnet=a.subnet,
        agent_clock=True,
        data_fs_mb=32,
        profile=a.profile,
        watchdog_s=PROFILE_WATCHDOG_S[a.profile],
    )
    t0 = time.monotonic()
    reports = []
    try:
        cloud.up(spec, say=print)
        reports = nemesis(cloud, a.runs, a.seed, print)
    finally:
        if a.logs is not None and cloud.exists:
            cloud.save_logs(a.logs)  # every host's logs and ledger, to read the run
            print(f"logs and ledgers saved in {a.logs}")
        cloud.down(say=print)
    runs = [
        {
            "seed": r.seed,
            "schedule": [asdict(f) for f in r.schedule],
            "seconds": r.seconds,
            "samples": r.samples,
            "violations": r.violations,
        }
        for r in reports
    ]
    result = {
        "runs": len(reports),
        "seed": a.seed,
        "profile": a.profile,
        "with_violations": sum(1 for r in reports if r.violations),
        "violations": sum(len(r.violations) for r in reports),
        "wall_s": round(time.monotonic() - t0, 1),
        "per_run": runs,
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "per_run"}))


if __name__ == "__main__":
    main()
