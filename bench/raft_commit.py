"""Raft commit latency and throughput with real members on loopback.

3 and 5 voters, each its own process (tests/integration/raft_harness.py: a PysyncobjLog
over TCP on 127.0.0.x, the data dir on this machine's disk, so every fsync is a real
one), driven through their control sockets. For each group size, once a leader holds a
quorum:

- `leader c=1`: 300 proposals one after the other on the leader: the latency of one
  commit (propose -> committed and applied on the leader), p50/p99, and commits/s;
- `follower c=1`: the same proposed on a follower (forwarded to the leader);
- `leader c=16`: 2000 proposals with 16 in flight: throughput, and what group commit
  (one fsync for every entry written in a tick) does to latency under load.

Also measured once: the fdatasync latency of the disk under the data dirs (200 x 100 B
appends), the floor any durable commit pays at least once (leader and follower fsync in
parallel, then one round trip).

Writes bench/results/raft_commit.json, keyed by `--label` (default "after"; the "before"
figures were taken with the same script against the journal pysyncobj ships, which never
fsyncs), and prints a table of every label in the file.

    python bench/raft_commit.py [--label after] [--sizes 3,5] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "raft_commit.json"
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))

from raft_harness import Cluster  # noqa: E402 - after the path insert

RUNS = (  # (name, where, n, concurrency)
    ("leader c=1", "leader", 300, 1),
    ("follower c=1", "follower", 300, 1),
    ("leader c=16", "leader", 2000, 16),
)


def fdatasync_ms(directory: str, n: int = 200) -> dict[str, float]:
    lat = []
    fd, path = tempfile.mkstemp(dir=directory)
    try:
        for _ in range(n):
            t = time.perf_counter()
            os.write(fd, b"x" * 100)
            os.fdatasync(fd)
            lat.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        os.unlink(path)
    lat.sort()
    return {"p50_ms": lat[n // 2] * 1000, "p99_ms": lat[int(n * 0.99) - 1] * 1000}


def run_size(size: int, base_dir: str, quick: bool) -> dict[str, Any]:
    c = Cluster(size, base_dir=base_dir)
    try:
        c.start_all()
        leader = c.leader()
        follower = next(n for n in c.names if n != leader)
        c.call(leader, "bench", n=20)  # warm up: connections, first no-op committed
        out: dict[str, Any] = {}
        for name, where, n, conc in RUNS:
            n = n // 4 if quick else n
            member = leader if where == "leader" else follower
            r = c.call(member, "bench", n=n, concurrency=conc, timeout_s=300)
            out[name] = {k: round(v, 3) for k, v in r.items()}
            print(
                f"  {size} voters {name:13} {r['per_s']:8.0f}/s  p50 {r['p50_ms']:7.2f} ms"
                f"  p99 {r['p99_ms']:7.2f} ms",
                flush=True,
            )
        return out
    finally:
        c.stop()


def table(results: dict[str, Any]) -> str:
    rows = [f"{'label':8} {'voters':>6} {'run':13} {'commits/s':>10} {'p50 ms':>8} {'p99 ms':>8}"]
    for label, res in results.items():
        for size, runs in res["sizes"].items():
            for name, r in runs.items():
                rows.append(
                    f"{label:8} {size:>6} {name:13} {r['per_s']:10.0f}"
                    f" {r['p50_ms']:8.2f} {r['p99_ms']:8.2f}"
                )
        f = res["fdatasync"]
        rows.append(
            f"{label:8} fdatasync of the disk: p50 {f['p50_ms']:.2f} ms, p99 {f['p99_ms']:.2f} ms"
        )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--label", default="after")
    ap.add_argument("--sizes", default="3,5")
    ap.add_argument("--quick", action="store_true", help="a quarter of the proposals")
    ap.add_argument("--base-dir", default="/tmp", help="where the data dirs go (on disk)")
    args = ap.parse_args()
    git = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        cwd=HERE,
        check=False,
    ).stdout.strip()
    res: dict[str, Any] = {
        "commit": git,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.node()} {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
        "fdatasync": fdatasync_ms(args.base_dir),
        "sizes": {},
    }
    for size in map(int, args.sizes.split(",")):
        res["sizes"][str(size)] = run_size(size, args.base_dir, args.quick)
    all_results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    all_results[args.label] = res
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(all_results, indent=2) + "\n")
    print(table(all_results))


if __name__ == "__main__":
    main()
