"""What an idle agent costs: memory, CPU and probe traffic, with real agents.

For segments of 5 and 15 hosts (each agent in its own network namespace with admin,
storage and tenant links, meshha.lab.netns; dry run), once every agent reports every
host healthy, over a window of `--window-s` seconds (at least 30):
- RSS (MB): /proc/<pid>/status VmRSS, sampled every second; mean and max per agent;
- CPU (% of one core): utime+stime from /proc/<pid>/stat over the window;
- traffic per host (bytes/s it sends): an nftables counter per switch port at the
  bridges (UDP = probes, TCP = Raft), and the port's own byte counters (everything,
  ARP included).
A 15-host segment runs `--voters` (5) voters and 10 non-voting members, as the example
config recommends (more voters only slow commits).

The agents check their processes as on a compute host ([processes] defaults:
nova-compute, libvirtd): a stand-in of each (`sleep` under that name) runs for the whole
measurement, so the checks find them alive. Without them every agent fails, "restarts"
and reports nova-compute every few seconds, and the segment is no longer idle.

`--profile PY_SPY`: also sample the leader and one other agent with py-spy during the
window and say where their active time went (categories in `CATEGORIES`, first match
along the stack wins; shares of the samples, not CPU time: see summarise_profile); the
raw stacks are left beside the JSON (mesh_overhead_profile/, not committed).

Writes bench/results/mesh_overhead.json and prints a table against the targets
(<= 80 MB RSS, <= 1 % of a core per agent). Needs root.

    python bench/mesh_overhead.py [--quick] [--window-s S] [--profiles lan-fast,lan-safe]
        [--profile /path/to/py-spy]

--quick: the lan-fast profile only, 30 s windows (under 3 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from meshha.config.model import TIMING_PROFILES, Processes
from meshha.lab import netns
from meshha.lab.mesh import Mesh, MeshTimeout

RESULTS = Path(__file__).resolve().parent / "results"
NETWORKS = ("admin", "storage", "tenant")
TARGETS = {"rss_mb": 80.0, "cpu_pct": 1.0}
COUNT_TABLE = "mhbcount"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROFILE_RATE_HZ = 100
# Stacks that end here are a thread waiting, not working (py-spy does not always tell).
IDLE_LEAVES = ("PollPoller.poll (", "EpollIOManager.get_events (", "WorkerThread._work (")
# What a sampled stack is counted as: the first category with a frame (function or file
# name) in the stack. Order matters: the specific before the general.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("process checks (/proc)", ("find_pids", "processes.py")),
    ("raft: journal sync", ("_durable ", "journal.py")),
    ("raft: heartbeats out", ("__sendAppendEntries", "_send_keepalives")),
    ("raft: messages in", ("__onMessageReceived", "processReceive", "__onIncomingMessage")),
    ("raft: status publishing", ("_compute_status", "_publish ")),
    ("raft: socket send/poll", ("tcp_connection.py", "connections.py", "poller.py")),
    ("raft: tick, other", ("_tick_loop",)),
    ("ledger / apply", ("ledger", "sink.py", "_apply_loop", "state.py")),
    ("probes: encode/verify", ("wire.py",)),
    ("probes: prober", ("swim.py", "_probe_loop", "_report_observations")),
    ("probes: UDP socket", ("udp.py",)),
    ("leader: decide", ("_lead_loop", "decide")),
    ("isolation check", ("_isolation_loop",)),
    ("trio scheduler / other", ("",)),
)


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def count_traffic(lab: netns.Lab) -> None:
    """One counter per (host, protocol) on the frames each host sends into the bridges."""
    rules = []
    for h in lab.hosts:
        ports = ", ".join(lab.veth(h, n) for n in lab.networks)
        for proto in ("udp", "tcp"):
            rules.append(
                f'    iifname {{ {ports} }} ip protocol {proto} counter comment "{h} {proto}"'
            )
    script = "\n".join(
        [
            f"table bridge {COUNT_TABLE} {{",
            "  chain forward {",
            "    type filter hook forward priority -10; policy accept;",
            *rules,
            "  }",
            "}",
        ]
    )
    netns.run(["nft", "delete", "table", "bridge", COUNT_TABLE], check=False)
    netns.run(["nft", "-f", "-"], input=script.encode())


def read_counters() -> dict[tuple[str, str], int]:
    out = json.loads(netns.run(["nft", "-j", "list", "table", "bridge", COUNT_TABLE]))
    got: dict[tuple[str, str], int] = {}
    for item in out["nftables"]:
        rule = item.get("rule")
        if not rule or "comment" not in rule:
            continue
        host, proto = rule["comment"].split()
        for e in rule["expr"]:
            if "counter" in e:
                got[host, proto] = e["counter"]["bytes"]
    return got


def start_standins(work: Path) -> list[subprocess.Popen[bytes]]:
    """One idle process per supervised name (comm = the name): what a compute host runs."""
    sleep = shutil.which("sleep")
    assert sleep is not None
    (work / "standins").mkdir()
    procs = []
    for name in Processes().names:
        exe = work / "standins" / name
        exe.symlink_to(sleep)
        procs.append(subprocess.Popen([str(exe), "infinity"]))
    return procs


def start_profile(py_spy: str, pid: int, out: Path, duration_s: int) -> subprocess.Popen[bytes]:
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [py_spy, "record", "--nonblocking", "-d", str(duration_s), "-r", str(PROFILE_RATE_HZ)]
    argv += ["--pid", str(pid), "-f", "raw", "-o", str(out)]
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarise_profile(path: Path, duration_s: float) -> dict[str, Any]:
    """Active samples per category (threads waiting in poll are left out). A thread that
    is runnable but waits for a CPU counts as active too, so on a loaded machine
    `active_pct` (active samples per sampling tick) is far above the CPU use measured from
    /proc: read the categories as shares of where the agent was, not as CPU time."""
    counts = dict.fromkeys((c for c, _ in CATEGORIES), 0)
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit() or stack.rpartition(";")[2].startswith(IDLE_LEAVES):
            continue
        for category, keys in CATEGORIES:
            if any(k in stack for k in keys):
                counts[category] += int(n)
                break
    busy = sum(counts.values())
    return {
        "active_samples": busy,
        "active_pct": round(100 * busy / PROFILE_RATE_HZ / duration_s, 2),
        "by_category_pct": {
            c: round(100 * n / busy, 1) for c, n in sorted(counts.items(), key=lambda x: -x[1]) if n
        },
    }


def all_healthy(mesh: Mesh) -> bool:
    if mesh.leader() is None:
        return False
    for h in mesh.hosts:
        st = mesh.try_status(h)
        if st is None or any(x["verdict"] != "healthy" for x in st["hosts"]):
            return False
    return True


def measure(
    size: int, profile: str, voters: int, window_s: float, py_spy: str | None, profile_dir: Path
) -> dict[str, Any]:
    hosts = [f"host{i}" for i in range(1, size + 1)]
    lab = netns.Lab(hosts, NETWORKS, prefix="mhb")
    work = Path(tempfile.mkdtemp(prefix="mesh-overhead-"))
    mesh: Mesh | None = None
    standins: list[subprocess.Popen[bytes]] = []
    profiled: dict[str, tuple[Path, subprocess.Popen[bytes]]] = {}
    profile_s = int(window_s)
    try:
        standins = start_standins(work)
        lab.setup()
        mesh = Mesh(
            work,
            hosts,
            lab=lab,
            reserved=[hosts[-1]],
            voters=hosts[: min(voters, size)],
            profile=profile,
        )
        mesh.start(timeout_s=120)
        mesh.wait_until(lambda: all_healthy(mesh), 120, "every host healthy", poll_s=0.5)
        count_traffic(lab)
        pids = {h: mesh.pid(h) for h in hosts}
        links0 = {h: sum(lab.link_bytes(h, n)[0] for n in NETWORKS) for h in hosts}
        ticks0 = {h: cpu_ticks(p) for h, p in pids.items()}
        index0 = max((mesh.try_status(h) or {}).get("index", 0) for h in hosts)
        if py_spy is not None:
            leader = mesh.wait_leader(30)  # an election may be under way on a loaded machine
            other = next(h for h in hosts if h != leader)
            for role, h in (("leader", leader), ("follower", other)):
                out = profile_dir / f"{profile}-{size}-{role}.txt"
                profiled[role] = (out, start_profile(py_spy, pids[h], out, profile_s))
        t0 = time.monotonic()
        rss: dict[str, list[float]] = {h: [] for h in hosts}
        while time.monotonic() - t0 < window_s:
            for h, p in pids.items():
                rss[h].append(rss_mb(p))
            time.sleep(1.0)  # noqa: TID251  # the sampling period of an idle measurement
        elapsed = time.monotonic() - t0
        ticks = {h: cpu_ticks(p) - ticks0[h] for h, p in pids.items()}
        counters = read_counters()
        links = {h: sum(lab.link_bytes(h, n)[0] for n in NETWORKS) - links0[h] for h in hosts}
        assert all(mesh.running(h) for h in hosts), "an agent died while measured"
        healthy_after = all_healthy(mesh)
        committed = max((mesh.try_status(h) or {}).get("index", 0) for h in hosts) - index0
        for _, spy in profiled.values():
            spy.wait(timeout=60)
    finally:
        netns.run(["nft", "delete", "table", "bridge", COUNT_TABLE], check=False)
        if mesh is not None:
            mesh.close()
        lab.teardown()
        for standin in standins:
            standin.kill()
            standin.wait()
        shutil.rmtree(work, ignore_errors=True)
    per_host = {
        h: {
            "rss_mb_mean": round(statistics.fmean(rss[h]), 1),
            "rss_mb_max": round(max(rss[h]), 1),
            "cpu_pct": round(100 * ticks[h] / CLK_TCK / elapsed, 2),
            "probe_bps": round(counters.get((h, "udp"), 0) / elapsed),
            "raft_bps": round(counters.get((h, "tcp"), 0) / elapsed),
            "link_bps": round(links[h] / elapsed),
            "voter": h in hosts[:voters],
        }
        for h in hosts
    }

    def agg(key: str) -> dict[str, float]:
        xs = [v[key] for v in per_host.values()]
        return {"mean": round(statistics.fmean(xs), 2), "max": round(max(xs), 2)}

    return {
        "hosts": size,
        "voters": min(voters, size),
        "profile": profile,
        "window_s": round(elapsed, 1),
        "healthy_after": healthy_after,
        "rss_mb": agg("rss_mb_max"),
        "cpu_pct": agg("cpu_pct"),
        "probe_bps": agg("probe_bps"),
        "raft_bps": agg("raft_bps"),
        "link_bps": agg("link_bps"),
        "entries_committed": committed,  # during the window: an idle segment commits none
        "profile_s": profile_s if profiled else None,
        "where_the_time_went": {
            role: summarise_profile(out, profile_s) for role, (out, _) in profiled.items()
        },
        "per_host": per_host,
    }


def table(results: list[dict[str, Any]]) -> str:
    head = (
        f"{'profile':<9}{'hosts':>6}{'RSS MB mean/max':>17}{'CPU % mean/max':>16}"
        f"{'probe B/s':>11}{'raft B/s':>10}{'link B/s':>10}"
    )
    lines = [head]
    for r in results:
        lines.append(
            f"{r['profile']:<9}{r['hosts']:>6}"
            f"{r['rss_mb']['mean']:>10.1f}/{r['rss_mb']['max']:<6.1f}"
            f"{r['cpu_pct']['mean']:>9.2f}/{r['cpu_pct']['max']:<6.2f}"
            f"{r['probe_bps']['mean']:>11.0f}{r['raft_bps']['mean']:>10.0f}"
            f"{r['link_bps']['mean']:>10.0f}"
        )
    lines.append(
        f"{'target':<9}{'':>6}{'<= 80':>10}{'':7}{'<= 1.00':>9}{'':7}"
        "   (per agent; B/s = bytes each host sends, mean over hosts)"
    )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="lan-fast only, 30 s windows")
    ap.add_argument("--window-s", type=float, default=None, help="default 60 (quick: 30)")
    ap.add_argument("--sizes", default="5,15")
    ap.add_argument("--profiles", default=None, help="default lan-fast,lan-safe (quick: lan-fast)")
    ap.add_argument("--voters", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS / "mesh_overhead.json")
    ap.add_argument("--profile", metavar="PY_SPY", default=None, help="py-spy to sample with")
    a = ap.parse_args()
    window = a.window_s or (30.0 if a.quick else 60.0)
    if window < 30:
        ap.error("--window-s must be at least 30")
    profiles = (a.profiles or ("lan-fast" if a.quick else "lan-fast,lan-safe")).split(",")
    why = netns.available()
    if why is not None:
        print(f"mesh_overhead: cannot run: {why}", file=sys.stderr)
        return 2
    started = time.time()
    results = []
    unsettled: list[
        dict[str, Any]
    ] = []  # (profile, hosts, why): never all healthy, so not measured
    for profile in profiles:
        for size in (int(s) for s in a.sizes.split(",")):
            print(f"{profile}, {size} agents, {window:g} s ...", flush=True)
            profile_dir = a.out.with_name(a.out.stem + "_profile")
            try:
                results.append(measure(size, profile, a.voters, window, a.profile, profile_dir))
            except MeshTimeout as e:  # a loaded machine: say so, measure the rest
                print(f"mesh_overhead: {profile}, {size} agents: {e}", file=sys.stderr)
                unsettled.append({"profile": profile, "hosts": size, "why": str(e)[:2000]})
    res = {
        "bench": "mesh_overhead",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "wall_s": round(time.time() - started, 1),
        "quick": a.quick,
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release()},
        "networks": list(NETWORKS),
        "timings": {p: TIMING_PROFILES[p] for p in profiles},
        "how": "idle, every host healthy; RSS sampled each second (VmRSS), CPU from "
        "/proc/<pid>/stat utime+stime over the window; B/s: nft counters on the frames "
        "each host sends into the bridges (udp = probes, tcp = raft) and the switch "
        "ports' byte counters (link, everything)",
        "targets": TARGETS,
        "results": results,
        "unsettled": unsettled,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=1) + "\n")
    print()
    print(table(results))
    for r in results:
        for role, summary in r["where_the_time_went"].items():
            print(
                f"\n{r['profile']}, {r['hosts']} hosts, {role}: {summary['active_samples']} active"
                " py-spy samples, by category"
            )
            for c, pct in summary["by_category_pct"].items():
                print(f"  {pct:5.1f} %  {c}")
    for u in unsettled:
        print(f"not measured: {u['profile']}, {u['hosts']} hosts: never all healthy")
    print(f"\nwritten: {a.out}")
    return 1 if unsettled else 0


if __name__ == "__main__":
    sys.exit(main())
