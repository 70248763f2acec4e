"""One Raft member as its own process, for tests/integration/test_raft_log.py.

    python raft_harness.py CONFIG.json

runs a `PysyncobjLog` and a reader that collects every committed entry, and answers on a
control socket (meshha.agent.control) at `config["control"]`. Ops:

- status                          -> the LogStatus, the pid and how many entries were read
- propose {entry, timeout_s}      -> {"idx"}; LogError comes back as an error of its kind
- entries {after}                 -> {"entries": [[idx, entry], ...]}
- wait {until, timeout_s, ...}    -> waits in this process, on the log's own change events:
    until="quorum" [not_leader=NAME]: a leader with a quorum is known (and is not NAME)
    until="no_quorum": has_quorum is false
    until="entries" n=N: N entries were read
- bench {n, concurrency}          -> latency figures of n proposals

It prints "ready" on stdout once the control socket answers.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

import structlog
import trio

from meshha.agent.control import serve
from meshha.errors import MeshhaError
from meshha.raft.pysyncobj_log import PysyncobjLog, RaftLogConfig


class Member:
    def __init__(self, cfg: dict) -> None:
        self.log = PysyncobjLog(
            RaftLogConfig(
                me=cfg["me"],
                voters=cfg["voters"],
                password=cfg["password"],
                data_dir=Path(cfg["data_dir"]),
                **cfg.get("timings", {}),
            )
        )
        self.entries: list[tuple[int, dict]] = []
        self.read = trio.Event()

    async def reader(self) -> None:
        async for idx, entry in self.log.committed_from(0):
            self.entries.append((idx, entry))
            self.read.set()
            self.read = trio.Event()

    async def wait(self, req: dict) -> dict:
        until = req["until"]

        def done() -> bool:
            s = self.log.status
            if until == "quorum":
                return s.has_quorum and s.leader is not None and s.leader != req.get("not_leader")
            if until == "no_quorum":
                return not s.has_quorum
            if until == "entries":
                return len(self.entries) >= req["n"]
            raise ValueError(until)

        try:
            with trio.fail_after(req.get("timeout_s", 10.0)):
                while not done():
                    async with trio.open_nursery() as n:  # whichever comes first

                        async def on(ev, n=n):
                            await ev()
                            n.cancel_scope.cancel()

                        n.start_soon(on, self.log.wait_change)
                        n.start_soon(on, self.read.wait)
        except trio.TooSlowError:
            raise MeshhaError(f"not {until} in time: {self.log.status}", kind="timeout") from None
        return self.status()

    def status(self) -> dict:
        return {**asdict(self.log.status), "n_read": len(self.entries), "pid": os.getpid()}

    async def bench(self, req: dict) -> dict:
        n, conc = req["n"], req.get("concurrency", 1)
        lat: list[float] = []

        async def worker(k: int) -> None:
            for i in range(k, n, conc):
                t = time.perf_counter()
                e = {"v": 1, "kind": "bench", "ts": time.time(), "by": self.log.config.me, "i": i}
                await self.log.propose(e, timeout_s=10.0)
                lat.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for k in range(conc):
                nursery.start_soon(worker, k)
        wall = time.perf_counter() - t0
        lat.sort()
        return {
            "n": n,
            "p50_ms": statistics.median(lat) * 1000,
            "p99_ms": lat[int(len(lat) * 0.99) - 1] * 1000,
            "per_s": n / wall,
        }

    async def handle(self, req: dict) -> dict:
        op = req.get("op")
        if op == "status":
            return self.status()
        if op == "propose":
            idx = await self.log.propose(req["entry"], timeout_s=req.get("timeout_s", 5.0))
            return {"idx": idx}
        if op == "entries":
            after = req.get("after", 0)
            return {"entries": [[i, e] for i, e in self.entries if i > after]}
        if op == "wait":
            return await self.wait(req)
        if op == "bench":
            return await self.bench(req)
        raise MeshhaError(f"unknown op {op!r}", kind="bad_request")


async def main(cfg: dict) -> None:
    member = Member(cfg)
    async with trio.open_nursery() as nursery:
        await nursery.start(member.log.run)
        nursery.start_soon(member.reader)
        await nursery.start(serve, cfg["control"], member.handle)
        print("ready", flush=True)


if __name__ == "__main__":
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    trio.run(main, json.loads(Path(sys.argv[1]).read_text()))
