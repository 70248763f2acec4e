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
- load {concurrency}              -> starts proposing without end (until killed); every
    proposal that returned an index is appended to <data_dir>.acked as "idx i" lines
    (one write each, so a kill -9 keeps every line written)
- ledger                          -> {"entries": the ledger's rows} (with "ledger": true)
- port                            -> the Raft port's refusal counters

Config beyond the log's: "ledger": true feeds every committed entry into a real SQLite
ledger (meshha.ledger) at <data_dir>.ledger.sqlite, as the agent does; "power_cut": true
records, after every journal sync, the journal's inode and the size now on stable
storage in <journal>.synced (what tests/integration/test_raft_powercut.py cuts back to);
"unsafe_sync": true replaces the durable journal's sync with pysyncobj's old behaviour
(no acknowledgement waits, an fsync only once a second): only to show that the
power-cut checker catches a journal that acknowledges what is not on disk.

It prints "ready" on stdout once the control socket answers.
"""

from __future__ import annotations

import json
import os
import random
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import structlog
import trio

from meshha.agent.control import call, serve
from meshha.errors import MeshhaError
from meshha.ledger.store import Ledger
from meshha.raft.pysyncobj_log import PysyncobjLog, RaftLogConfig


def _record_synced(path: Path, size: int) -> None:
    """After each journal sync: "inode size" in <journal>.synced, one pwrite."""
    line = f"{os.stat(path).st_ino:020d} {size:020d}\n".encode()
    fd = os.open(f"{path}.synced", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, line, 0)
    finally:
        os.close(fd)


def _make_sync_unsafe() -> None:
    """pysyncobj's old behaviour, for the test of the test: nothing ever waits."""
    from meshha.raft.journal import DurableJournal

    real_sync = DurableJournal.sync
    last = {"at": 0.0}

    def sync(self: DurableJournal) -> bool:
        if time.monotonic() - last["at"] >= 1.0:
            last["at"] = time.monotonic()
            return real_sync(self)
        return True

    DurableJournal.sync = sync  # type: ignore[method-assign]
    DurableJournal.dirty = property(lambda self: False)  # type: ignore[method-assign,assignment]


class Member:
    def __init__(self, cfg: dict) -> None:
        data_dir = Path(cfg["data_dir"])
        if cfg.get("unsafe_sync"):
            _make_sync_unsafe()
        self.log = PysyncobjLog(
            RaftLogConfig(
                me=cfg["me"],
                voters=cfg["voters"],
                password=cfg["password"],
                data_dir=data_dir,
                **cfg.get("timings", {}),
            ),
            # (only when asked: the flood test also runs this harness against older builds)
            **({"on_journal_synced": _record_synced} if cfg.get("power_cut") else {}),
        )
        self.data_dir = data_dir
        self.ledger = (
            Ledger(data_dir.parent / f"{data_dir.name}.ledger.sqlite")
            if cfg.get("ledger")
            else None
        )
        self.entries: list[tuple[int, dict]] = []
        self.read = trio.Event()
        self.nursery: trio.Nursery | None = None

    async def reader(self) -> None:
        async for idx, entry in self.log.committed_from(0):
            if self.ledger is not None:  # as the agent's sink: idempotent on the index
                self.ledger.append(idx, entry)
            self.entries.append((idx, entry))
            self.read.set()
            self.read = trio.Event()

    async def load(self, concurrency: int) -> None:
        fd = os.open(
            self.data_dir.parent / f"{self.data_dir.name}.acked",
            os.O_WRONLY | os.O_CREAT | os.O_APPEND,
            0o600,
        )
        counter = iter(range(10**9))

        async def worker() -> None:
            while True:
                i = next(counter)
                e = {"v": 1, "kind": "load", "ts": time.time(), "by": self.log.config.me, "i": i}
                try:
                    idx = await self.log.propose(e, timeout_s=5.0)
                except MeshhaError:
                    await trio.sleep(0.05)
                    continue
                os.write(fd, f"{idx} {i}\n".encode())

        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)

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
                        # has_quorum can turn without a change event (it is read off
                        # pysyncobj's state): look again every tick, or a quorum reached
                        # between two events is missed until the deadline (CI at 4ca8f0c:
                        # "not quorum in time" with a status showing a quorum).
                        n.start_soon(on, _tick)
        except trio.TooSlowError:
            raise MeshhaError(f"not {until} in time: {self.log.status}", kind="timeout") from None
        return self.status()

    def status(self) -> dict:
        s = self.log.status
        return {**asdict(s), "n_read": len(self.entries), "pid": os.getpid()}

    async def bench(self, req: dict) -> dict:
        n, conc = req["n"], req.get("concurrency", 1)
        lat: list[float] = []

        async def worker(k: int) -> None:
            for i in range(k, n, conc):
                t = time.perf_counter()
                e = {"v": 1, "kind": "bench", "ts": time.time(), "by": self.log.config.me, "i": i}
                await self.log.propose(e, timeout_s=10.0)
                lat.append(time.perf_counter() - t)

        journal = getattr(self.log, "_journal", None)  # None on builds before it existed
        syncs0 = journal.syncs if journal is not None else 0
        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for k in range(conc):
                nursery.start_soon(worker, k)
        wall = time.perf_counter() - t0
        syncs = (journal.syncs - syncs0) if journal is not None else 0
        lat.sort()
        return {
            "n": n,
            "p50_ms": statistics.median(lat) * 1000,
            "p99_ms": lat[int(len(lat) * 0.99) - 1] * 1000,
            "per_s": n / wall,
            "syncs_per_commit": syncs / n,  # journal syncs of this member per commit
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
        if op == "load":
            assert self.nursery is not None
            self.nursery.start_soon(self.load, req.get("concurrency", 4))
            return {}
        if op == "ledger":
            assert self.ledger is not None
            return {"entries": [[i, e] for i, e in self.ledger.entries()]}
        if op == "port":
            return getattr(self.log, "port_counters", {})
        raise MeshhaError(f"unknown op {op!r}", kind="bad_request")


async def main(cfg: dict) -> None:
    member = Member(cfg)
    async with trio.open_nursery() as nursery:
        member.nursery = nursery
        await nursery.start(member.log.run)
        nursery.start_soon(member.reader)
        await nursery.start(serve, cfg["control"], member.handle)
        print("ready", flush=True)


# ---- the launcher: tests and bench/raft_commit.py start members through this ----------

PASSWORD = "segment-secret"
POLL_S = 0.05  # how often `wait` looks at the member's status between change events


async def _tick() -> None:
    await trio.sleep(POLL_S)


START_S = 20.0  # process start: imports, PBKDF2 of the password, bind
WAIT_S = 15.0  # any awaited condition
TIMINGS = {
    "election_timeout_min_s": 0.4,
    "election_timeout_max_s": 0.8,
    "heartbeat_interval_s": 0.1,
    "leader_fallback_timeout_s": 1.5,
    "connection_timeout_s": 1.0,
    "reconnect_interval_s": 0.3,
}
REPO = Path(__file__).resolve().parents[2]


class HarnessError(AssertionError):
    """A member did not start or answer as expected (a test failure, not a bug here)."""


def free_port(hosts: list[str]) -> int:
    """A port free on every one of `hosts`, below the kernel's ephemeral range.

    A port the kernel handed out (bind to 0) is in the ephemeral range, where any
    other process's outgoing or wildcard socket may take it before the members bind
    it: CI once failed with BindError on a port picked that way.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(10000, max(low, 10001))
        try:
            for host in hosts:
                with socket.socket() as s:
                    s.bind((host, port))
        except OSError:
            continue
        return port
    raise HarnessError(f"no port free on all of {hosts} below {low}")


class Cluster:
    """Separate member processes; voters h1..hN on 127.0.0.(10+i), one shared port.

    `base_dir`: where the data dirs go (default /tmp, which is on disk here: fsync is
    real). `extra`: merged into every member's config (e.g. {"ledger": True}).
    """

    def __init__(
        self,
        n: int,
        readonly: tuple[str, ...] = (),
        *,
        base_dir: str | None = None,
        extra: dict | None = None,
        timings: dict | None = None,
    ) -> None:
        hosts = [f"127.0.0.{10 + i}" for i in range(1, n + 1)]
        port = free_port(hosts)
        self.voters = {f"h{i}": f"{host}:{port}" for i, host in enumerate(hosts, 1)}
        self.names = list(self.voters) + list(readonly)
        self.dir = Path(tempfile.mkdtemp(prefix="mhraft-", dir=base_dir or "/tmp"))
        self.procs: dict[str, subprocess.Popen] = {}
        self.extra = extra or {}
        self.timings = timings or TIMINGS

    def sock(self, name: str) -> Path:
        return self.dir / f"{name}.sock"

    def data_dir(self, name: str) -> Path:
        return self.dir / name

    def start(self, name: str, *, password: str = PASSWORD, voters: dict | None = None) -> None:
        cfg = {
            "me": name,
            "voters": voters or self.voters,
            "password": password,
            "data_dir": str(self.data_dir(name)),
            "control": str(self.sock(name)),
            "timings": self.timings,
            **self.extra,
        }
        cfg_path = self.dir / f"{name}.json"
        cfg_path.write_text(json.dumps(cfg))
        err = open(self.dir / f"{name}.err", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__)), str(cfg_path)],
            stdout=subprocess.PIPE,
            stderr=err,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        err.close()
        self.procs[name] = proc
        deadline = time.monotonic() + START_S
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            ready, _, _ = select.select([proc.stdout], [], [], max(left, 0))
            if not ready:
                raise HarnessError(f"{name} not ready in {START_S}s: {self.stderr(name)}")
            chunk = os.read(proc.stdout.fileno(), 64)
            if not chunk:
                raise HarnessError(f"{name} exited: {self.stderr(name)}")
            line += chunk
        assert line.strip() == b"ready", line

    def start_all(self) -> None:
        for name in self.names:
            self.start(name)

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def stderr(self, name: str) -> str:
        return (self.dir / f"{name}.err").read_text()[-3000:]

    def call(self, name: str, op: str, timeout_s: float = WAIT_S + 5, **kw) -> dict:
        return call(self.sock(name), {"op": op, **kw}, timeout_s)

    def wait(self, name: str, until: str, **kw) -> dict:
        return self.call(name, "wait", until=until, timeout_s=WAIT_S, **kw)

    def leader(self, among: list[str] | None = None, not_leader: str | None = None) -> str:
        """Wait until every member in `among` sees one leader with a quorum, and that leader
        says so itself; return it. Each read blocks in the member until it sees a quorum;
        a re-election between the reads makes them disagree, so read all again until they
        agree (the deadline is WAIT_S)."""
        among = among or list(self.procs)
        deadline = time.monotonic() + WAIT_S
        while True:
            seen = {n: self.wait(n, "quorum", not_leader=not_leader) for n in among}
            named = {s["leader"] for s in seen.values()}
            (leader,) = named if len(named) == 1 else (None,)
            if leader in seen:
                confirmed = seen[leader]["is_leader"]
            else:  # a member outside `among` (or one already gone)
                confirmed = leader in self.procs and self.wait(leader, "quorum")["is_leader"]
            if confirmed:
                return leader
            if time.monotonic() > deadline:
                raise HarnessError(f"no agreed leader among {among} in {WAIT_S}s: {seen}")

    def propose(self, name: str, entry: dict, timeout_s: float = 5.0) -> int:
        return self.call(name, "propose", entry=entry, timeout_s=timeout_s)["idx"]

    def entries(self, name: str, n: int) -> list:
        self.wait(name, "entries", n=n)
        return self.call(name, "entries")["entries"]

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        proc.wait(timeout=WAIT_S)
        proc.stdout.close()

    def stop(self) -> None:
        for name in list(self.procs):
            self.kill(name)
        shutil.rmtree(self.dir, ignore_errors=True)


if __name__ == "__main__":
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    trio.run(main, json.loads(Path(sys.argv[1]).read_text()))
