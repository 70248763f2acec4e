"""Detection in the simulator: power-off -> committed `failed` verdict.

For segments of 5, 50 and 200 hosts (the real decision core and SWIM prober, simulated
network and Raft stand-in, lan-fast timings), repeated over seeds:
  - detect_s: a random host loses power -> the leader commits `failed` (p50, p99),
  - fence_s / evacuated_s: -> BMC fence confirmed / its VMs ACTIVE elsewhere,
  - probe messages per host per second while idle, and the bytes that makes on the wire
    (each message sized with meshha.probes.wire.encode, HMAC and all).
Simulated seconds: the clock is trio's MockClock, so these are the protocol's figures,
not this machine's speed. Writes bench/results/sim_detect.json.

    python bench/sim_detect.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import time
from pathlib import Path

import structlog
import trio
import trio.testing

from meshha.probes import wire
from meshha.sim.world import Sim, SimSpec

RESULTS = Path(__file__).resolve().parent / "results"
# peers.md: when each peer declares a host failed (seconds).
PEERS = {
    "vSphere HA (failed at)": 15.0,
    "Masakari hostmonitor (poll interval)": 60.0,
    "Proxmox ha-manager (fenced after)": 60.0,
    "Kubernetes NotReady": 50.0,
}


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    k = max(0, min(len(xs) - 1, round(p / 100 * (len(xs) - 1))))
    return xs[k]


def wire_size(msg: dict) -> int:  # type: ignore[type-arg]
    key = b"k" * 32
    return len(wire.encode(msg, key=key, sender="host123", seq=123456, now=1.8e9))


async def trial(hosts: int, seed: int) -> dict[str, float]:
    spec = SimSpec(hosts=hosts, vms_per_host=1, reserved=("host1",))
    sim = Sim(spec, seed)
    rng = random.Random(seed)
    out: dict[str, float] = {}

    async def body(sim: Sim) -> None:
        await sim.wait_for(lambda: sim.raft.leader is not None, 10, "leader")
        await trio.sleep(3.0)
        sent0, t0 = dict(sim.net.sent_by), trio.current_time()
        await trio.sleep(5.0)
        span = trio.current_time() - t0
        per_host = [
            (sim.net.sent_by.get(h, 0) - sent0.get(h, 0)) / span for h in sim.segment.host_names
        ]
        out["msgs_per_host_s"] = statistics.mean(per_host)
        out["msgs_per_host_s_max"] = max(per_host)
        victim = rng.choice([h for h in sim.segment.host_names if h != "host1"])
        off = trio.current_time()
        sim.power_off(victim)

        def failed() -> bool:
            return any(e["verdict"] == "failed" for _, e in sim.committed("verdict", host=victim))

        await sim.wait_for(failed, 30, f"{victim} failed")
        out["detect_s"] = trio.current_time() - off
        st = lambda: sim.live_state()
        await sim.wait_for(lambda: st() is not None and st().is_fenced(victim), 30, "fenced")
        out["fence_s"] = trio.current_time() - off
        vms = [s for s in sim.cloud.servers.values() if s.id.startswith(f"{victim}-")]
        await sim.wait_for(
            lambda: all(s.host != victim and s.status == "ACTIVE" for s in vms), 60, "evacuated"
        )
        out["evacuated_s"] = trio.current_time() - off
        out["false_verdicts"] = float(
            sum(
                1
                for _, e in sim.committed("verdict")
                if e["verdict"] in ("failed", "degraded") and e["host"] != victim
            )
        )

    await sim.run(body)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer trials (CI smoke)")
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    plan = {5: 40, 50: 15, 200: 6} if not args.quick else {5: 5, 50: 2, 200: 1}
    ping = wire_size({"t": "ping", "id": 123456})
    ack = wire_size({"t": "ack", "id": 123456, "via": "host123"})
    avg_bytes = (ping + ack) / 2
    results = {}
    for hosts, n in plan.items():
        wall = time.time()
        trials = [
            trio.run(trial, hosts, seed, clock=trio.testing.MockClock(autojump_threshold=0))
            for seed in range(1, n + 1)
        ]
        det = [t["detect_s"] for t in trials]
        msgs = statistics.median(t["msgs_per_host_s"] for t in trials)
        results[str(hosts)] = {
            "trials": n,
            "detect_p50_s": round(statistics.median(det), 3),
            "detect_p99_s": round(pct(det, 99), 3),
            "fence_p50_s": round(statistics.median(t["fence_s"] for t in trials), 3),
            "evacuated_p50_s": round(statistics.median(t["evacuated_s"] for t in trials), 3),
            "probe_msgs_per_host_s": round(msgs, 1),
            "probe_msgs_per_host_s_max": round(max(t["msgs_per_host_s_max"] for t in trials), 1),
            "probe_bytes_per_host_s": round(msgs * avg_bytes),
            "false_verdicts": int(sum(t["false_verdicts"] for t in trials)),
            "wall_s": round(time.time() - wall, 1),
        }
    doc = {
        "bench": "sim_detect",
        "clock": "simulated (trio MockClock)",
        "profile": "lan-fast",
        "wire_bytes": {"ping": ping, "ack": ack},
        "results": results,
        "peers_failed_after_s": PEERS,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sim_detect.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(
        f"{'hosts':>5} {'trials':>6} {'detect p50':>10} {'p99':>6} {'fenced p50':>10} {'VMs back p50':>12} "
        f"{'msgs/host/s':>11} {'B/host/s':>8} {'false':>5}"
    )
    for h, r in results.items():
        print(
            f"{h:>5} {r['trials']:>6} {r['detect_p50_s']:>9.2f}s {r['detect_p99_s']:>5.2f}s {r['fence_p50_s']:>9.2f}s "
            f"{r['evacuated_p50_s']:>11.2f}s {r['probe_msgs_per_host_s']:>11.1f} {r['probe_bytes_per_host_s']:>8} "
            f"{r['false_verdicts']:>5}"
        )
    p50 = results["5"]["detect_p50_s"]
    for name, s in PEERS.items():
        print(f"  vs {name}: {s:g}s -> meshha (5 hosts, p50 {p50:.2f}s) is {s / p50:.0f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
