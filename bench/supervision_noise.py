"""Noise per fault, in simulated time: what one outage or one flapping minute costs the
operator (alerts) and the log (entries, verdicts, intents).

    python bench/supervision_noise.py [--label before|after]

Three faults on a 5-host lan-fast segment (seed 1, the real decision core):
  nova-compute    nova-compute on host2 dies and cannot be restarted, for 5 minutes
  admin-flapping  host1's admin link goes down and up every 2 s for a minute (+8 s)
  hung-bmc        host2 hangs and its BMC accepts the session but never answers (90 s)
Writes bench/results/supervision_noise-<label>.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from meshha.sim import replay
from meshha.sim.scenario import Outcome, parse, run_scenario

FAULTS = {
    "nova-compute": """segment hosts=5 reserved=host5 vms=2
wait-leader
tick 3s
process-dead host2 nova-compute restart-fails
tick 300s
no-heal
""",
    "admin-flapping": """segment hosts=5 reserved=host5 vms=2
wait-leader
tick 3s
flap host1 admin every 2s for 60s
tick 8s
no-heal
""",
    "hung-bmc": """segment hosts=5 reserved=host5 vms=2 watchdog=true
wait-leader
tick 3s
bmc-hang host2
hang host2
tick 90s
no-heal
""",
}


def count(out: Outcome) -> dict[str, Any]:
    rows = [r for r in out.timeline if r["type"] != "fault" and r["t"] >= 3.0]
    intents = [r for r in rows if r["type"] == "intent"]
    alerts = [r for r in intents if r.get("action") == "alert"]
    return {
        "entries": len(rows),
        "verdicts": sum(r["type"] == "verdict" for r in rows),
        "observations": sum(r["type"] == "observation" for r in rows),
        "process_failures": sum(r["type"] == "process_failure" for r in rows),
        "intents": len(intents),
        "disable_intents": sum(r.get("action") == "disable_compute" for r in intents),
        "alerts": len(alerts),
        "alert_subjects": sorted({r.get("reason", "") for r in alerts}),
        "cannot_fence_alerts": sum("cannot fence" in r.get("reason", "") for r in alerts),
        "evacuations": sum(r.get("action") == "evacuate" for r in intents),
        "ok": out.ok,
        "problems": out.violations[:5],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--label", default="after")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    result = {}
    for name, text in FAULTS.items():
        out = replay.run(run_scenario, parse(text, name), a.seed, seed=a.seed)
        result[name] = count(out)
        print(name, json.dumps(result[name]))
    dest = Path(__file__).parent / "results" / f"supervision_noise-{a.label}.json"
    dest.parent.mkdir(exist_ok=True)
    dest.write_text(json.dumps({"seed": a.seed, "faults": result}, indent=2) + "\n")


if __name__ == "__main__":
    main()
