"""Stalls a live agent rides through, and how fast a dead host is still found. Wall clock.

Five meshha-agent processes, each in its own network namespace with admin, storage and
tenant links (meshha.lab.netns, prefix "mhf"), dry run, at the unit's CPU priority
(`nice -n -10`, config/meshha-agent.service), one run per timing profile. A stall is a
SIGSTOP of a follower's agent: the process stands still, its host's kernel does not.
Phases, per profile:

1. ride:     the follower stopped for each of `--stalls` seconds, then continued; the
             worst verdict committed about it meanwhile (and until it is healthy again).
             `longest_ridden_s`: the longest stop with no failed/degraded verdict and no
             fence intent (suspect is allowed: that is what a stall is).
2. repeated: stopped 1 s every 3 s, and 2 s every 5 s, for `--repeat-s`: verdicts,
             fence intents, and the stall entries the agent committed about itself.
3. slow observers: every agent stopped 0.5 s in turn, round-robin, for `--repeat-s`
             (at any moment one is stopped: all are slow), and all five stopped together
             for 1 s every 4 s: every failed/degraded verdict is a false one.
4. saturated: 12 busy loops at normal priority on the 2 cores, and a 5 s stop meanwhile.
5. dead host: `--kills` times a follower dies (agent SIGKILLed, every link down): the
             time until the leader shows it `failed` (p50/p99), knocks and all.
6. restart:  `--restarts` times a follower's agent is SIGKILLed on a live host (links
             up) and started again 1 s later, as systemd does (Restart=always,
             RestartSec=1): how long it was gone (kill to answering), and every verdict
             and fence intent committed about it (a healthy host: there must be none).

Writes bench/results/stall_ride.json and prints a table. Needs root.

    python bench/stall_ride.py [--quick] [--profiles lan-fast,lan-safe]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
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
BAD = ("failed", "degraded")
POLL_S = 0.05


class UnitMesh(Mesh):
    """Agents at the unit's CPU priority (Nice=-10)."""

    def agent_argv(self, host: str) -> list[str]:
        return ["nice", "-n", "-10", *super().agent_argv(host)]


def pause(s: float) -> None:
    time.sleep(s)  # noqa: TID251  # a bench drives faults on a wall-clock schedule


def healthy(mesh: Mesh) -> bool:
    for h in mesh.running_hosts():
        st = mesh.try_status(h)
        if (
            st is None
            or not st["has_quorum"]
            or any(x["verdict"] != "healthy" for x in st["hosts"])
        ):
            return False
    return True


def settle(mesh: Mesh) -> str:
    mesh.wait_until(lambda: healthy(mesh), 60, "segment healthy")
    leader = mesh.wait_leader(30)
    return leader


def committed(mesh: Mesh, watch: str, since: float, host: str | None = None) -> dict[str, Any]:
    """Verdicts, fence intents and stall reports committed from wall time `since` on."""
    out: dict[str, Any] = {"verdicts": {}, "fences": 0, "stalls": 0}
    for _, e in mesh.ledger(watch):
        if e["ts"] < since or (host is not None and e.get("host") != host):
            continue
        if e["kind"] == "verdict" and e["verdict"] != "healthy":
            out["verdicts"][e["verdict"]] = out["verdicts"].get(e["verdict"], 0) + 1
        elif e["kind"] == "intent" and e["action"] == "fence":
            out["fences"] += 1
        elif e["kind"] == "process_failure" and e.get("outcome") == "stalled":
            out["stalls"] += 1
    return out


def stop(mesh: Mesh, hosts: list[str], seconds: float) -> None:
    for h in hosts:
        mesh.procs[h].send_signal(signal.SIGSTOP)
    try:
        pause(seconds)
    finally:
        for h in hosts:
            mesh.procs[h].send_signal(signal.SIGCONT)


def ride(mesh: Mesh, stalls: list[float]) -> dict[str, Any]:
    rows = []
    for d in stalls:
        leader = settle(mesh)
        victim, watch = [h for h in HOSTS if h != leader][:2]
        t0 = time.time()
        stop(mesh, [victim], d)
        with contextlib.suppress(MeshTimeout):  # counted below from the ledger
            mesh.wait_until(lambda: healthy(mesh), 60, "healthy after the stall")
        got = committed(mesh, watch, t0, victim)
        ridden = not any(v in got["verdicts"] for v in BAD) and got["fences"] == 0
        rows.append({"stall_s": d, "ridden": ridden, **got})
        print(f"  stop {d:g} s: {'ridden' if ridden else 'NOT ridden'} {got}", flush=True)
    ok = [r["stall_s"] for r in rows if r["ridden"]]
    first_bad = min((r["stall_s"] for r in rows if not r["ridden"]), default=math.inf)
    return {
        "runs": rows,
        "longest_ridden_s": max((s for s in ok if s < first_bad), default=0.0),
    }


def repeated(mesh: Mesh, stop_s: float, every_s: float, total_s: float) -> dict[str, Any]:
    leader = settle(mesh)
    victim, watch = [h for h in HOSTS if h != leader][:2]
    t0 = time.time()
    end = time.monotonic() + total_s
    n = 0
    while time.monotonic() < end:
        stop(mesh, [victim], stop_s)
        n += 1
        pause(max(every_s - stop_s, 0.0))
    mesh.wait_until(lambda: healthy(mesh), 60, "healthy after repeated stalls")
    got = committed(mesh, watch, t0, victim)
    print(f"  {stop_s:g} s every {every_s:g} s x{n}: {got}", flush=True)
    return {"stop_s": stop_s, "every_s": every_s, "stops": n, **got}


def slow_observers(mesh: Mesh, total_s: float) -> dict[str, Any]:
    settle(mesh)
    t0 = time.time()
    end = time.monotonic() + total_s
    while time.monotonic() < end:
        for h in HOSTS:
            stop(mesh, [h], 0.5)
    mesh.wait_until(lambda: healthy(mesh), 60, "healthy after round-robin stalls")
    turns = committed(mesh, HOSTS[0], t0)
    settle(mesh)
    t1 = time.time()
    end = time.monotonic() + total_s
    while time.monotonic() < end:
        stop(mesh, list(HOSTS), 1.0)
        pause(3.0)
    mesh.wait_until(lambda: healthy(mesh), 60, "healthy after stalls of all")
    together = committed(mesh, HOSTS[0], t1)
    print(f"  round-robin 0.5 s: {turns}; all at once 1 s every 4 s: {together}", flush=True)
    return {"round_robin_0.5s": turns, "all_at_once_1s_every_4s": together}


def saturated(mesh: Mesh, loops: int, stall_s: float) -> dict[str, Any]:
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(loops)]
    try:
        pause(2.0)
        got = ride(mesh, [stall_s])
    finally:
        for b in burners:
            b.kill()
            b.wait()
    return {"busy_loops": loops, **got}


def dead_host(mesh: Mesh, kills: int) -> dict[str, Any]:
    samples = []
    for _ in range(kills):
        leader = settle(mesh)
        victim = [h for h in HOSTS if h != leader][len(samples) % 4]
        t = mesh.kill(victim)
        seen = None
        while time.time() - t < 30:
            if mesh.verdict(leader, victim) == "failed":
                seen = time.time() - t
                break
            pause(0.01)
        samples.append(None if seen is None else round(seen, 3))
        mesh.restart(victim, timeout_s=60)  # an agent starts slowly at load 20+
    got = sorted(s for s in samples if s is not None)

    def pct(p: float) -> float | None:
        return got[min(len(got) - 1, math.ceil(p * len(got)) - 1)] if got else None

    print(f"  dead host -> failed: p50 {pct(0.5)} s, p99 {pct(0.99)} s ({samples})", flush=True)
    return {
        "samples_s": samples,
        "p50_s": pct(0.5),
        "p99_s": pct(0.99),
        "missed": samples.count(None),
    }


def agent_restart(mesh: Mesh, restarts: int) -> dict[str, Any]:
    rows = []
    for i in range(restarts):
        leader = settle(mesh)
        victim, watch = [h for h in HOSTS if h != leader][i % 4], leader
        t0 = mesh.kill(victim, links=False)
        pause(1.0)  # RestartSec=1
        mesh.restart(victim, timeout_s=60)
        gone_s = time.time() - t0
        with contextlib.suppress(MeshTimeout):  # counted below from the ledger
            mesh.wait_until(lambda: healthy(mesh), 60, "healthy after the restart")
        got = committed(mesh, watch, t0, victim)
        ok = not any(v in got["verdicts"] for v in BAD) and got["fences"] == 0
        rows.append({"gone_s": round(gone_s, 2), "ridden": ok, **got})
        print(f"  agent killed, back after {gone_s:.2f} s: {'ridden' if ok else 'NOT'} {got}")
    gone = sorted(r["gone_s"] for r in rows)
    return {
        "runs": rows,
        "ridden": sum(r["ridden"] for r in rows),
        "gone_p50_s": gone[len(gone) // 2] if gone else None,
        "gone_max_s": gone[-1] if gone else None,
    }


def run_profile(lab: netns.Lab, profile: str, a: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"stall-ride-{profile}-"))
    mesh = UnitMesh(work, HOSTS, lab=lab, reserved=["host5"], profile=profile)
    grace = TIMING_PROFILES[profile]["stall_grace_s"]
    stalls = [1.0, 3.0, 5.0, grace - 1.0, grace + 2.0] if not a.quick else [5.0, grace + 2.0]
    phases = a.phases.split(",")
    try:
        mesh.start(timeout_s=60)
        res: dict[str, Any] = {"timings": TIMING_PROFILES[profile]}
        if "ride" in phases:
            print(f"{profile}: ride", flush=True)
            res["ride"] = ride(mesh, stalls)
        if "repeated" in phases:
            print(f"{profile}: repeated", flush=True)
            res["repeated"] = [
                repeated(mesh, 1.0, 3.0, a.repeat_s),
                repeated(mesh, 2.0, 5.0, a.repeat_s),
            ]
        if "slow" in phases:
            print(f"{profile}: slow observers", flush=True)
            res["slow_observers"] = slow_observers(mesh, a.repeat_s)
        if "saturated" in phases:
            print(f"{profile}: saturated cores", flush=True)
            res["saturated"] = saturated(mesh, 12, 5.0)
        if "dead" in phases:
            print(f"{profile}: dead host", flush=True)
            res["dead_host"] = dead_host(mesh, a.kills)
        if "restart" in phases:
            print(f"{profile}: agent killed and restarted", flush=True)
            res["agent_restart"] = agent_restart(mesh, a.restarts)
        return res
    finally:
        mesh.close()
        if a.keep:
            print(f"  agents' logs and data kept in {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer stalls, 15 s repeats, 5 kills")
    ap.add_argument("--profiles", default="lan-fast,lan-safe")
    ap.add_argument("--phases", default="ride,repeated,slow,saturated,dead,restart")
    ap.add_argument("--repeat-s", type=float, default=None)
    ap.add_argument("--kills", type=int, default=None)
    ap.add_argument("--restarts", type=int, default=None)
    ap.add_argument("--out", type=Path, default=RESULTS / "stall_ride.json")
    ap.add_argument("--keep", action="store_true", help="keep the agents' logs and data")
    a = ap.parse_args()
    a.repeat_s = a.repeat_s or (15.0 if a.quick else 40.0)
    a.kills = a.kills or (5 if a.quick else 20)
    a.restarts = a.restarts or (3 if a.quick else 10)
    why = netns.available()
    if why is not None:
        print(f"stall_ride: cannot run: {why}", file=sys.stderr)
        return 2
    lab = netns.Lab(HOSTS, NETWORKS, prefix="mhf")
    started = time.time()
    out: dict[str, Any] = {
        "bench": "stall_ride",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": a.quick,
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "load": os.getloadavg()},
        "what": "SIGSTOP of a follower's agent (its kernel answers): the worst verdict committed "
        "about it; slow observers; 12 busy loops; dead host (SIGKILL + links down) -> failed; "
        "agent SIGKILLed on a live host and restarted 1 s later",
        "agent_priority": "nice -n -10 (as config/meshha-agent.service)",
        "profiles": {},
    }
    try:
        lab.setup()
        for profile in a.profiles.split(","):
            out["profiles"][profile] = run_profile(lab, profile, a)
    except MeshTimeout as e:
        print(f"stall_ride: {e}", file=sys.stderr)
        out["error"] = str(e)[:2000]
    finally:
        lab.teardown()
    out["wall_s"] = round(time.time() - started, 1)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    for name, p in out["profiles"].items():
        d, r = p.get("dead_host", {}), p.get("agent_restart", {})
        print(
            f"{name:9} longest stall ridden {p.get('ride', {}).get('longest_ridden_s')} s "
            f"(grace {p['timings']['stall_grace_s']:g} s); dead host failed p50 {d.get('p50_s')} s "
            f"p99 {d.get('p99_s')} s; agent restarts ridden {r.get('ridden')} of "
            f"{len(r.get('runs', []))} (gone p50 {r.get('gone_p50_s')} s)"
        )
    return 1 if "error" in out else 0


if __name__ == "__main__":
    sys.exit(main())
