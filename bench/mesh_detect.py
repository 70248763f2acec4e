"""Detection with real agents: a host dies -> the leader commits `failed`. Wall-clock seconds.

Five meshha-agent processes, each in its own network namespace with admin, storage and
tenant links (meshha.lab.netns), lan-fast timings, dry run. Three phases:

1. clean:  `--runs` times (default 20), a follower host "dies" (agent SIGKILLed and
   every link down at once) -> the time until the leader's status shows it `failed`
   (polled every 10 ms; `decided_s` is the verdict entry's own timestamp, before the
   commit). Victims rotate over the followers; each is restarted and the segment is
   healthy again before the next run.
2. lossy:  the same with every frame to a host lost with `--loss-pct` (10 %) and delayed
   by `--delay-ms` + uniform(0, `--jitter-ms`) (0 + 0..50 ms: netem's
   `loss 10% delay 25ms 25ms`; in user space when the kernel has no netem, see
   meshha.lab.netns). False verdicts (failed/degraded for a host that was not killed)
   are counted too.
3. soak:   nothing is killed for `--soak-s` seconds (default 600) under the same loss and
   jitter: every failed/degraded verdict committed is a false one.

Writes bench/results/mesh_detect.json (the durations and run counts used are in it) and
prints a table against the peers and meshha's targets. Needs root.

    python bench/mesh_detect.py [--quick] [--runs N] [--soak-s S] [--loss-pct L] [--jitter-ms J]

--quick: 5 runs per phase and a 30 s soak (under 3 minutes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from meshha.config.model import TIMING_PROFILES
from meshha.lab import netns
from meshha.lab.mesh import Mesh, MeshTimeout

RESULTS = Path(__file__).resolve().parent / "results"
HOSTS = tuple(f"host{i}" for i in range(1, 6))
NETWORKS = ("admin", "storage", "tenant")
PROFILE = "lan-fast"
FALSE_KINDS = ("failed", "degraded")
DETECT_DEADLINE_S = 30.0
HEAL_DEADLINE_S = 90.0
POLL_S = 0.01
TARGETS = {"p50_s": 1.5, "p99_s": 3.0, "false_verdicts": 0}
PEERS = {
    "vSphere HA": "declares a host failed after 15-18 s",
    "Masakari hostmonitor": "polls every 60 s (detection up to 60 s, then its own grace)",
}


def pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile (p99 of 20 samples is the largest)."""
    xs = sorted(xs)
    return xs[max(0, math.ceil(p / 100 * len(xs)) - 1)]


def figures(xs: list[float]) -> dict[str, float | None]:
    if not xs:
        return {"p50_s": None, "p99_s": None, "min_s": None, "max_s": None, "mean_s": None}
    return {
        "p50_s": round(pct(xs, 50), 3),
        "p99_s": round(pct(xs, 99), 3),
        "min_s": round(min(xs), 3),
        "max_s": round(max(xs), 3),
        "mean_s": round(statistics.fmean(xs), 3),
    }


def all_healthy(mesh: Mesh) -> bool:
    if mesh.leader(HOSTS) is None:
        return False
    for h in HOSTS:
        st = mesh.try_status(h)
        if st is None or any(x["verdict"] != "healthy" for x in st["hosts"]):
            return False
    return True


def false_verdicts(mesh: Mesh, host: str, after_idx: int, victim: str | None) -> list[Any]:
    return [
        {"idx": i, "host": e["host"], "verdict": e["verdict"], "networks": e["networks"]}
        for i, e in mesh.ledger(host)
        if i > after_idx
        and e["kind"] == "verdict"
        and e["verdict"] in FALSE_KINDS
        and e["host"] != victim
    ]


def one_kill(mesh: Mesh, victim: str) -> dict[str, Any]:
    lab = mesh.lab
    assert lab is not None and (lab.hub is None or lab.hub_running()), "the impairment hub died"
    mesh.wait_until(lambda: all_healthy(mesh), HEAL_DEADLINE_S, "healthy before a kill")
    leader = mesh.wait_leader(HEAL_DEADLINE_S)
    if leader == victim:
        victim = next(h for h in HOSTS if h != leader)
    mark = max((i for i, _ in mesh.ledger(leader)), default=0)
    t_kill = mesh.kill(victim)
    seen: float | None = None
    while time.time() - t_kill < DETECT_DEADLINE_S:
        if mesh.verdict(leader, victim) == "failed":
            seen = time.time()
            break
        time.sleep(POLL_S)  # noqa: TID251  poll period of a synchronous bench loop with a deadline
    book = mesh.ledger(leader)
    decided = next(
        (
            e["ts"]
            for i, e in book
            if i > mark
            and e["kind"] == "verdict"
            and e["host"] == victim
            and e["verdict"] == "failed"
        ),
        None,
    )
    wrong = false_verdicts(mesh, leader, mark, victim)
    mesh.restart(victim)
    return {
        "victim": victim,
        "leader": leader,
        "detect_s": None if seen is None else round(seen - t_kill, 3),
        "decided_s": None if decided is None else round(decided - t_kill, 3),
        "false_verdicts": wrong,
    }


def kills(mesh: Mesh, runs: int, phase: str) -> dict[str, Any]:
    samples = []
    for n in range(runs):
        victim = HOSTS[n % len(HOSTS)]
        r = one_kill(mesh, victim)
        samples.append(r)
        print(
            f"  {phase} run {n + 1}/{runs}: {r['victim']} failed after {r['detect_s']} s "
            f"(decided {r['decided_s']} s), false verdicts {len(r['false_verdicts'])}",
            flush=True,
        )
    detect = [s["detect_s"] for s in samples if s["detect_s"] is not None]
    return {
        "runs": runs,
        "missed": sum(1 for s in samples if s["detect_s"] is None),
        "detect": figures(detect),
        "decided": figures([s["decided_s"] for s in samples if s["decided_s"] is not None]),
        "false_verdicts": sum(len(s["false_verdicts"]) for s in samples),
        "samples": samples,
    }


def soak(mesh: Mesh, seconds: float) -> dict[str, Any]:
    mesh.wait_until(lambda: all_healthy(mesh), HEAL_DEADLINE_S, "healthy before the soak")
    leader = mesh.wait_leader(HEAL_DEADLINE_S)
    mark = max((i for i, _ in mesh.ledger(leader)), default=0)
    t0 = time.monotonic()
    end = t0 + seconds
    while time.monotonic() < end:  # idle: only keep an eye on the agents being alive
        assert all(mesh.running(h) for h in HOSTS), "an agent died during the soak"
        time.sleep(min(1.0, max(end - time.monotonic(), 0)))  # noqa: TID251  an idle soak: nothing to wait for
    duration = time.monotonic() - t0
    book = mesh.ledger(mesh.wait_leader(HEAL_DEADLINE_S))
    new = [(i, e) for i, e in book if i > mark]
    kinds: dict[str, int] = {}
    for _, e in new:
        k = e["kind"] if e["kind"] != "verdict" else f"verdict:{e['verdict']}"
        kinds[k] = kinds.get(k, 0) + 1
    return {
        "duration_s": round(duration, 1),
        "false_verdicts": false_verdicts(mesh, leader, mark, None),
        "entries": len(new),
        "entries_by_kind": kinds,
    }


def table(res: dict[str, Any]) -> str:
    def row(name: str, d: dict[str, Any], false: str) -> str:
        f = d["detect"]
        p50 = "-" if f["p50_s"] is None else f"{f['p50_s']:.2f} s"
        p99 = "-" if f["p99_s"] is None else f"{f['p99_s']:.2f} s"
        return f"{name:<34}{p50:>11}{p99:>11}   {false}"

    imp = res["impairment"]
    lossy_name = f"meshha, {imp['loss_pct']:g}% loss, 0-{imp['jitter_ms']:g} ms"
    soak = res["soak"]
    lines = [
        f"{'host dies -> failed committed':<34}{'p50':>11}{'p99':>11}   false verdicts",
        row(f"meshha, clean ({res['clean']['runs']} runs)", res["clean"], "-"),
        row(
            f"{lossy_name} ({res['lossy']['runs']} runs)",
            res["lossy"],
            f"{res['lossy']['false_verdicts']} in the runs, "
            f"{len(soak['false_verdicts'])} in a {soak['duration_s']:g} s idle soak",
        ),
        f"{'meshha target':<34}{'<= 1.50 s':>11}{'<= 3.00 s':>11}   0",
        f"{'vSphere HA':<34}{'15-18 s':>11}{'':>11}   (declares failed)",
        f"{'Masakari hostmonitor':<34}{'<= 60 s':>11}{'':>11}   (polls every 60 s)",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="5 runs per phase, 30 s soak")
    ap.add_argument("--runs", type=int, default=None, help="kills per phase (default 20)")
    ap.add_argument("--soak-s", type=float, default=None, help="idle soak (default 600)")
    ap.add_argument("--loss-pct", type=float, default=10.0)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--jitter-ms", type=float, default=50.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "mesh_detect.json")
    a = ap.parse_args()
    runs = a.runs or (5 if a.quick else 20)
    soak_s = a.soak_s if a.soak_s is not None else (30.0 if a.quick else 600.0)
    why = netns.available()
    if why is not None:
        print(f"mesh_detect: cannot run: {why}", file=sys.stderr)
        return 2
    lab = netns.Lab(HOSTS, NETWORKS, prefix="mhb")
    work = Path(tempfile.mkdtemp(prefix="mesh-detect-"))
    started = time.time()
    mesh: Mesh | None = None
    try:
        lab.setup()
        mesh = Mesh(work, HOSTS, lab=lab, reserved=["host5"], profile=PROFILE)
        mesh.start(timeout_s=60)
        print(f"clean network, {runs} runs", flush=True)
        clean = kills(mesh, runs, "clean")
        how = lab.impair(
            loss_pct=a.loss_pct, delay_ms=a.delay_ms, jitter_ms=a.jitter_ms, seed=a.seed
        )
        print(f"{a.loss_pct:g}% loss, {a.delay_ms:g}+0..{a.jitter_ms:g} ms ({how}), {runs} runs")
        lossy = kills(mesh, runs, "lossy")
        print(f"idle soak, {soak_s:g} s", flush=True)
        soaked = soak(mesh, soak_s)
    except MeshTimeout as e:
        print(f"mesh_detect: {e}", file=sys.stderr)
        return 1
    finally:
        if mesh is not None:
            mesh.close()
        lab.teardown()
        shutil.rmtree(work, ignore_errors=True)
    res = {
        "bench": "mesh_detect",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_s": round(time.time() - started, 1),
        "quick": a.quick,
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
        "hosts": len(HOSTS),
        "networks": list(NETWORKS),
        "profile": PROFILE,
        "timings": TIMING_PROFILES[PROFILE],
        "what": "SIGKILL of a follower's agent + all its links down -> the leader's status "
        "shows it failed (detect_s, polled every 10 ms); decided_s: the verdict entry's ts",
        "impairment": {
            "loss_pct": a.loss_pct,
            "delay_ms": a.delay_ms,
            "jitter_ms": a.jitter_ms,
            "jitter": "uniform 0..jitter_ms added to delay_ms, per frame delivered to a host",
            "how": how,
        },
        "clean": clean,
        "lossy": lossy,
        "soak": soaked,
        "targets": TARGETS,
        "peers": PEERS,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    print()
    print(table(res))
    print(f"\nwritten: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
