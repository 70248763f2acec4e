"""How long ledger work holds an agent's trio loop: before (SQLite on the loop, as the
control handler did) and after (a worker thread under the ledger's own limiter, a page
per call, meshha.ledger.sink.LedgerReader).

A ledger of `--rows` (50 000) entries, a mix of observations, verdicts, intents and
results. While each operation runs, a heartbeat task sleeps 1 ms at a time and records
how late it wakes: the worst lateness is how long the loop was blocked (what a probe
round or a Raft tick would have waited). Operations:
- export: the whole ledger as CSV (before: `Ledger.export` on the loop; after: what the
  agent does for `meshctl export` now, pages of 2000 rows read in a worker thread, the
  CSV formatting done by meshctl);
- append: a burst of 500 committed entries (before: one transaction each, on the loop, as
  the node's sink did; after: queued, written in batches by the sink's worker thread);
- events: the latest 1000 rows (`meshctl events --limit 1000`);
- report: the SLA report over the whole ledger (after only; there was none before);
- idle: nothing but the heartbeat for 1 s, the machine's own noise floor.

Writes bench/results/ledger_blocking.json.

    python bench/ledger_blocking.py [--rows 50000]
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from meshha.ledger.sink import LedgerReader, LedgerSink, limiter
from meshha.ledger.store import EXPORT_PAGE, Ledger
from meshha.raft import entries as E

RESULTS = Path(__file__).resolve().parent / "results"
APPEND_BURST = 500  # committed entries in a burst (a leader change, a mass failure)


def fill(led: Ledger, rows: int) -> None:
    batch = []
    for i in range(1, rows + 1):
        ts = 1_700_000_000.0 + i * 0.5
        k = i % 4
        if k == 0:
            e = E.observation(
                ts=ts,
                by=f"host{i % 5}",
                host=f"host{i % 7}",
                network="storage",
                reachable=False,
                since=ts,
            )
        elif k == 1:
            e = E.verdict(
                ts=ts,
                by="host1",
                host=f"host{i % 7}",
                verdict="healthy",
                networks=[],
                reason="ok",
                evidence=[],
            )
        elif k == 2:
            e = E.intent(
                ts=ts,
                by="host1",
                intent_id=f"restart_vm:vm{i}:{i}:a1",
                action="restart_vm",
                host=f"host{i % 7}",
                vm=f"vm{i}",
                reason="crashed",
            )
        else:
            e = E.result(
                ts=ts,
                by="host1",
                intent_id=f"restart_vm:vm{i - 1}:{i - 1}:a1",
                outcome="ok",
                detail="done",
            )
        batch.append((i, e))
        if len(batch) == 5000:
            led.append_many(batch)
            batch = []
    led.append_many(batch)


async def blocked(op: Callable[[], Awaitable[Any]]) -> dict[str, float]:
    """Run `op` beside a 1 ms heartbeat: the worst and mean lateness, and the op's time."""
    late: list[float] = []
    done = trio.Event()

    async def heartbeat() -> None:
        while not done.is_set():
            t = trio.current_time()
            await trio.sleep(0.001)
            late.append(trio.current_time() - t - 0.001)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(heartbeat)
        await trio.sleep(0.01)
        t0 = time.perf_counter()
        await op()
        took = time.perf_counter() - t0
        done.set()
    return {
        "took_s": round(took, 4),
        "loop_blocked_max_s": round(max(late), 4),
        "loop_lateness_mean_ms": round(1000 * statistics.mean(late), 3),
    }


async def main_async(rows: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="mhbench-") as d:
        led = Ledger(Path(d) / "ledger.sqlite")
        fill(led, rows)
        reader = LedgerReader(led, limiter())

        async def export_before() -> None:
            led.export("csv", io.StringIO())

        async def export_after() -> None:
            after = 0
            while page := await reader.page(after, EXPORT_PAGE):
                after = page[-1]["idx"]

        async def events_before() -> None:
            led.query(limit=1000, newest_first=True)

        async def events_after() -> None:
            await reader.query(limit=1000, newest_first=True)

        async def report_after() -> None:
            await reader.report(0.0, 2e9, None)

        sink = LedgerSink(led, reader.limiter)
        base = rows + 1

        def burst(n: int) -> list[tuple[int, dict[str, Any]]]:
            nonlocal base
            out = [
                (
                    base + k,
                    E.observation(
                        ts=float(base + k),
                        by="host1",
                        host="host2",
                        network="admin",
                        reachable=False,
                        since=0.0,
                    ),
                )
                for k in range(n)
            ]
            base += n
            return out

        async def append_before() -> None:
            for idx, e in burst(APPEND_BURST):  # one transaction per committed entry, on the loop
                led.append(idx, e)

        async def append_after() -> None:
            async with trio.open_nursery() as nursery:
                await nursery.start(sink.run)
                for idx, e in burst(APPEND_BURST):
                    sink.append(idx, e)
                nursery.cancel_scope.cancel()  # the sink flushes what is queued on its way out
            assert not sink.backlog

        async def idle() -> None:
            await trio.sleep(1.0)

        for name, op in (
            ("idle", idle),  # the noise floor: this machine's scheduling, nothing else
            ("export_before", export_before),
            ("export_after", export_after),
            ("append_before", append_before),
            ("append_after", append_after),
            ("events_before", events_before),
            ("events_after", events_after),
            ("report_after", report_after),
        ):
            runs = [await blocked(op) for _ in range(3)]
            out[name] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        led.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=50_000)
    args = ap.parse_args()
    res = trio.run(main_async, args.rows)
    doc = {
        "rows": args.rows,
        "machine": platform.platform(),
        "cpus": __import__("os").cpu_count(),
        "results": res,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ledger_blocking.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"{'operation':16} {'took':>8} {'loop blocked (max)':>20}")
    for name, r in res.items():
        print(f"{name:16} {r['took_s']:7.3f}s {r['loop_blocked_max_s']:19.3f}s")


if __name__ == "__main__":
    main()
