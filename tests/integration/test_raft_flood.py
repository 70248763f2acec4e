"""An unauthenticated flood against the Raft leader's port changes nothing that matters.

Three real member processes on 127.0.0.x; a separate attacker process (raft_flood.py)
floods the leader's port for FLOOD_S seconds with a 2 GiB length prefix followed by
garbage on repeated connections, a connection flood that holds 500 silent connections,
and small well-formed garbage frames, all at once. Meanwhile the test proposes entries on
the leader one after the other. The same proposal loop runs first without the flood, as
the baseline for CPU.

Proves: no election (every member keeps the same leader and term), every proposal
during the flood commits, the leader's CPU stays far from a core and its memory does
not grow (figures printed; issue 12 saw 90 % of a core and 48 -> 174 MB with one
connection of the `huge` kind), and the port counted what it refused.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from raft_harness import Cluster

from meshha.agent.control import ControlError

pytestmark = pytest.mark.integration

FLOOD = Path(__file__).with_name("raft_flood.py")
# The agent's timings under the lan-fast profile (meshha.agent.main.raft_config, e = 1 s):
# what a real segment runs with, and no tighter, so scheduler noise on a loaded test
# machine is not taken for the flood's doing.
LAN_FAST = {
    "election_timeout_min_s": 0.4,
    "election_timeout_max_s": 1.4,
    "heartbeat_interval_s": 0.1,
    "leader_fallback_timeout_s": 1.5,
    "connection_timeout_s": 3.5,
    "reconnect_interval_s": 1.0,
}
FLOOD_S = 10.0
BASELINE_S = 5.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _propose_for(c: Cluster, leader: str, seconds: float) -> dict:
    """Propose on the leader back to back for `seconds`; CPU, RSS and latency figures."""
    pid = c.pid(leader)
    lat: list[float] = []
    failures: list[str] = []
    rss = [_rss_mb(pid)]
    cpu0, t0 = _cpu_s(pid), time.monotonic()
    i = 0
    while time.monotonic() - t0 < seconds:
        t = time.perf_counter()
        entry = {"v": 1, "kind": "observation", "ts": time.time(), "by": "t", "i": i}
        try:
            c.propose(leader, entry, timeout_s=5.0)
            lat.append(time.perf_counter() - t)
        except ControlError as e:
            failures.append(e.kind)
        rss.append(_rss_mb(pid))
        i += 1
    wall = time.monotonic() - t0
    lat.sort()
    return {
        "cpu_pct": round((_cpu_s(pid) - cpu0) / wall * 100, 1),
        "rss_mb_start": round(rss[0], 1),
        "rss_mb_max": round(max(rss), 1),
        "commits": len(lat),
        "failures": failures,
        "p50_ms": round(statistics.median(lat) * 1000, 2) if lat else None,
        "p99_ms": round(lat[int(len(lat) * 0.99) - 1] * 1000, 2) if lat else None,
    }


def flood_figures(c: Cluster) -> dict:
    c.start_all()
    leader = c.leader()
    before = {n: c.call(n, "status") for n in c.names}
    baseline = _propose_for(c, leader, BASELINE_S)
    host, port = c.voters[leader].rsplit(":", 1)
    attacker = subprocess.Popen(
        [sys.executable, str(FLOOD), host, port, str(FLOOD_S)], stdout=subprocess.PIPE, text=True
    )
    try:
        flood = _propose_for(c, leader, FLOOD_S)
        out, _ = attacker.communicate(timeout=FLOOD_S + 30)
    finally:
        attacker.kill()
    after = {n: c.call(n, "status") for n in c.names}
    return {
        "leader": leader,
        "terms_before": {n: s["term"] for n, s in before.items()},
        "terms_after": {n: s["term"] for n, s in after.items()},
        "leaders_after": {n: s["leader"] for n, s in after.items()},
        "baseline": baseline,
        "flood": flood,
        "attacker": json.loads(out) if out.strip() else {},
        "port": c.call(leader, "port"),
    }


def test_flood_changes_neither_leader_nor_commits(tmp_path):
    c = Cluster(3, timings=LAN_FAST)
    try:
        f = flood_figures(c)
    finally:
        c.stop()
    print(f"\nflood figures: {json.dumps(f, indent=1)}")
    assert f["terms_after"] == f["terms_before"], "an election happened during the flood"
    assert set(f["leaders_after"].values()) == {f["leader"]}
    flood = f["flood"]
    assert not flood["failures"] and flood["commits"] > 0
    assert flood["cpu_pct"] < 50, f"leader CPU {flood['cpu_pct']} % under the flood"
    assert flood["rss_mb_max"] - flood["rss_mb_start"] < 20, "leader memory grew"
    # The port counted what it refused: frames it admitted and then refused, or, when the
    # connection flood keeps accepting paused (CI saw it paused 9.3 s of 10), connections
    # it never admitted, so the huge and garbage frames never reached a buffer.
    p = f["port"]
    refused = ("refused_connections", "oversized_frames", "bad_frames", "handshake_timeouts")
    assert sum(p[k] for k in refused) > 0, p
    assert p["oversized_frames"] + p["bad_frames"] > 0 or p["paused_s"] > FLOOD_S / 2, p
    assert f["attacker"]["huge_conns"] > 0 and f["attacker"]["conns"] > 0
