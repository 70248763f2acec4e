"""Raft commit latency and throughput with real members on loopback.

3 and 5 voters, each its own process (tests/integration/raft_harness.py: a PysyncobjLog
over TCP on 127.0.0.x, the data dir on this machine's disk, so every fsync is a real
one), driven through their control sockets. For each group size, once a leader holds a
quorum:

- `leader c=1`: 300 proposals one after the other on the leader: the latency of one
  commit (propose -> committed and applied on the leader), p50/p99, and commits/s;
- `follower c=1`: the same proposed on a follower (forwarded to the leader);
- `leader c=16`: 2000 proposals with 16 in flight: throughput, and what group commit
  (one fsync for every entry written in a tick) does to latency under load;
  `fsyncs/commit` is the journal syncs of the proposing member per commit (below 1:
  entries share an fsync; nan or 0 for the build without a durable journal).

Also measured once: the fdatasync latency of the disk under the data dirs (200 x 100 B
appends), the floor any durable commit pays at least once (leader and follower fsync in
parallel, then one round trip).

Writes bench/results/raft_commit.json: a list of rounds per `--label` (default
"after"; the "before" rounds were taken with this same script run against the previous
build, pysyncobj's journal that never fsyncs: `--repo` points the members at another
checkout), each round appended, and prints the median over the rounds of every label.
This machine is shared (load average 4-8 on 2 cores while these ran): run the labels
alternately, round by round, so that both see the same load.

    python bench/raft_commit.py [--label after] [--sizes 3,5] [--quick] [--repo DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "raft_commit.json"
sys.path.insert(0, str(HERE.parent / "tests" / "integration"))

import raft_harness  # noqa: E402 - after the path insert
from raft_harness import Cluster  # noqa: E402

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


def _median(rounds: list[dict[str, Any]], *path: str) -> float:
    values = []
    for r in rounds:
        for key in path:
            r = r.get(key, {}) if isinstance(r, dict) else {}
        if isinstance(r, (int, float)):
            values.append(float(r))
    return statistics.median(values) if values else float("nan")


def table(results: dict[str, list[dict[str, Any]]]) -> str:
    """Medians over the rounds of each label."""
    head = (
        f"{'label':8} {'voters':>6} {'run':13} {'commits/s':>10} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'fsyncs/commit':>13}"
    )
    rows = [head]
    for label, rounds in results.items():
        for size in rounds[0]["sizes"]:
            for name, _, _, _ in RUNS:
                per_s, p50, p99, syncs = (
                    _median(rounds, "sizes", size, name, k)
                    for k in ("per_s", "p50_ms", "p99_ms", "syncs_per_commit")
                )
                rows.append(
                    f"{label:8} {size:>6} {name:13} {per_s:10.0f} {p50:8.2f} {p99:8.2f}"
                    f" {syncs:13.2f}"
                )
        p50, p99 = (_median(rounds, "fdatasync", k) for k in ("p50_ms", "p99_ms"))
        rows.append(
            f"{label:8} fdatasync of the disk: p50 {p50:.2f} ms, p99 {p99:.2f} ms"
            f" ({len(rounds)} rounds)"
        )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--label", default="after")
    ap.add_argument("--sizes", default="3,5")
    ap.add_argument("--quick", action="store_true", help="a quarter of the proposals")
    ap.add_argument("--base-dir", default="/tmp", help="where the data dirs go (on disk)")
    ap.add_argument("--repo", default=None, help="run the members from this checkout")
    ap.add_argument("--table", action="store_true", help="only print the table")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(RESULTS.read_text())))
        return
    if args.repo:
        raft_harness.REPO = Path(args.repo).resolve()
    git = (
        args.repo
        or subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=HERE,
            check=False,
        ).stdout.strip()
    )
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
    if not isinstance(all_results.get(args.label), list):
        all_results[args.label] = []
    all_results[args.label].append(res)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(all_results, indent=2) + "\n")
    print(table(all_results))


if __name__ == "__main__":
    main()
