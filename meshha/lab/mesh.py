"""A segment of real `meshha-agent` processes, for integration tests and benchmarks.

    mesh = Mesh(workdir, [f"host{i}" for i in range(1, 6)], reserved=["host5"])
    mesh.start()                        # writes the segment, starts 5 agents, waits a leader
    mesh.status("host3")                # the control socket's `status`
    mesh.kill("host2")                  # SIGKILL, its addresses silent (links down in a lab)
    mesh.wait_until(lambda: mesh.verdict("host1", "host2") == "failed", 5, "host2 failed")
    mesh.restart("host2")
    mesh.ledger("host1")                # [(idx, entry), ...] from its SQLite ledger
    mesh.stop_all()                     # SIGTERM, wait; {host: exit code}

Where the agents run:
- `lab=None`: on loopback. Host i gets 127.B.(n+1).(i+1) on network n, with B drawn at
  random (100..199) and the Raft and probe ports picked free, so two meshes (or another
  engineer's) on one machine do not collide.
- `lab=Lab(...)` (meshha.lab.netns): each agent in its host's namespace, on the lab's
  addresses; then `kill` also takes the host's links down ("the whole host dies") and
  `restart` brings them back.

A dead host answers nothing, and the agents tell a dead host from a dead agent by its
kernel (meshha.probes.liveness: a refused knock is a live kernel). On loopback the
kernel outlives every agent, so `kill` also silences the host's addresses: an nft table
of the mesh's own drops every packet to them (`kill(host, links=False)`: only the agent
dies, its kernel refuses knocks, as after a crash under systemd), and `restart` lifts it.

Every agent gets `--data-dir workdir/data` (so its journal and ledger are in
`workdir/data/<host>/`), its control socket at `workdir/run/<host>.sock`, and its output
appended to `workdir/logs/<host>.log` (across restarts; `log_tail` reads it for a failing
test's message). Agents run in dry-run (no Nova configured): intents are committed, not
executed. Waiting is always for a condition with a deadline (`wait_until`), never a
fixed sleep.
"""

from __future__ import annotations

import contextlib
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from meshha.agent.control import ControlError, call
from meshha.lab.netns import Lab
from meshha.lab.segment_files import write_segment
from meshha.ledger.store import Ledger

NETWORKS = ("admin", "storage", "tenant")
ON_LOSS = {"admin": "alert", "storage": "fence_evacuate", "tenant": "live_migrate"}
POLL_S = 0.02
T = TypeVar("T")


def poll_until(cond: Callable[[], T | None], timeout_s: float, poll_s: float) -> T | None:
    """The lab's one synchronous poll: what `cond` returns once truthy, None at the
    deadline (the caller raises its own timeout, with its own context)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() >= deadline:
            return None
        time.sleep(poll_s)  # noqa: TID251  # a poll interval, not a wait for the event itself


class MeshTimeout(AssertionError):
    """A condition did not hold before its deadline (an assertion failure in a test)."""


class Mesh:
    def __init__(
        self,
        workdir: Path,
        hosts: Sequence[str] = ("host1", "host2", "host3", "host4", "host5"),
        *,
        lab: Lab | None = None,
        networks: Sequence[str] = NETWORKS,
        reserved: Sequence[str] = (),
        voters: Sequence[str] | None = None,
        profile: str = "lan-fast",
        extra_toml: str = "",
        log_level: str = "info",
        seed: int | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.hosts = tuple(hosts)
        self.lab = lab
        self.networks = tuple(networks)
        self.log_level = log_level
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.exit_codes: dict[str, int] = {}
        rng = random.Random(seed)
        if lab is not None:
            assert set(self.hosts) <= set(lab.hosts) and set(self.networks) <= set(lab.networks)
            self.addrs = {h: {n: lab.address(h, n) for n in self.networks} for h in self.hosts}
            raft_port, probe_port0 = 4321, 7946
        else:
            b = rng.randrange(100, 200)
            self.addrs = {
                h: {n: f"127.{b}.{k + 1}.{i + 1}" for k, n in enumerate(self.networks)}
                for i, h in enumerate(self.hosts)
            }
            raft_port, probe_port0 = self._free_ports(rng)
        self.raft_port, self.probe_port0 = raft_port, probe_port0
        self.silenced: set[str] = set()  # loopback hosts whose addresses drop everything
        self._nft_table = f"meshha_mesh_{raft_port}"
        self.config = write_segment(
            self.workdir / "config",
            [(h, self.addrs[h]) for h in self.hosts],
            networks={n: ON_LOSS.get(n, "alert") for n in self.networks},
            reserved=reserved,
            voters=voters,
            profile=profile,
            raft_port=raft_port,
            probe_port0=probe_port0,
            extra=extra_toml,
        )
        for d in ("data", "run", "logs"):
            (self.workdir / d).mkdir(parents=True, exist_ok=True)

    def _free_ports(self, rng: random.Random) -> tuple[int, int]:
        """A Raft port free on every admin address and a run of probe ports free (UDP) on
        every address of its network."""
        for _ in range(200):
            raft, probe0 = rng.randrange(20000, 30000), rng.randrange(30000, 40000)
            try:
                for h in self.hosts:
                    _check_free(socket.SOCK_STREAM, self.addrs[h]["admin"], raft)
                    for k, n in enumerate(self.networks):
                        _check_free(socket.SOCK_DGRAM, self.addrs[h][n], probe0 + k)
            except OSError:
                continue
            return raft, probe0
        raise RuntimeError("no free ports found")

    # -- paths -------------------------------------------------------------------------

    def control(self, host: str) -> Path:
        return self.workdir / "run" / f"{host}.sock"

    def data_dir(self, host: str) -> Path:
        return self.workdir / "data" / host

    def log_path(self, host: str) -> Path:
        return self.workdir / "logs" / f"{host}.log"

    def log_tail(self, host: str, lines: int = 30) -> str:
        try:
            text = self.log_path(host).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- starting and stopping ------------------------------------------------------------

    def agent_argv(self, host: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "meshha.agent.main",
            "--config",
            str(self.config),
            "--host",
            host,
            "--control",
            str(self.control(host)),
            "--data-dir",
            str(self.workdir / "data"),
            "--log-level",
            self.log_level,
        ]

    def spawn(self, host: str) -> subprocess.Popen[bytes]:
        """Start `host`'s agent (not waiting for it)."""
        assert not self.running(host), f"{host} is already running"
        out = open(self.log_path(host), "ab")  # noqa: SIM115 - the child keeps it
        try:
            argv = self.agent_argv(host)
            if self.lab is not None:
                p = self.lab.popen(host, argv, stdout=out, stderr=subprocess.STDOUT)
            else:
                p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        finally:
            out.close()
        self.procs[host] = p
        self.exit_codes.pop(host, None)
        return p

    def start(
        self, hosts: Iterable[str] | None = None, *, timeout_s: float = 30.0, leader: bool = True
    ) -> None:
        """Start the agents of `hosts` (default: all) at once; wait until each answers on
        its control socket and (if `leader`) all running agents agree on a leader."""
        todo = list(hosts or self.hosts)
        for h in todo:
            self.spawn(h)
        deadline = time.monotonic() + timeout_s
        for h in todo:
            self.wait_ready(h, max(deadline - time.monotonic(), 0.1))
        if leader:
            self.wait_leader(max(deadline - time.monotonic(), 0.1))

    def wait_ready(self, host: str, timeout_s: float = 20.0) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            p = self.procs.get(host)
            if p is not None and p.poll() is not None:
                raise MeshTimeout(
                    f"{host}'s agent exited with {p.returncode}:\n{self.log_tail(host)}"
                )
            return self.try_status(host)

        return self.wait_until(ready, timeout_s, f"{host}'s control socket answers")

    def running(self, host: str) -> bool:
        p = self.procs.get(host)
        return p is not None and p.poll() is None

    def running_hosts(self) -> list[str]:
        return [h for h in self.hosts if self.running(h)]

    def pid(self, host: str) -> int:
        return self.procs[host].pid

    def kill(self, host: str, *, links: bool = True) -> float:
        """The whole host dies: SIGKILL its agent and, if `links`, take its links down (a
        namespace lab) or silence its addresses (loopback). `links=False`: the agent alone
        dies, its host's kernel stays. Returns the wall-clock time of the kill."""
        t = time.time()
        p = self.procs[host]
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGKILL)
        if self.lab is not None and links:
            self.lab.cut_host(host)
        elif links:
            self._silence(self.silenced | {host})
        self.exit_codes[host] = p.wait()
        return t

    def _silence(self, hosts: set[str]) -> None:
        """Make every packet to `hosts`' loopback addresses vanish (nft, input hook), and
        only theirs: the mesh's table is replaced whole."""
        subprocess.run(
            ["nft", "delete", "table", "inet", self._nft_table], capture_output=True, check=False
        )
        self.silenced = set(hosts)
        if not hosts:
            return
        addrs = ", ".join(sorted(a for h in hosts for a in self.addrs[h].values()))
        script = (
            f"table inet {self._nft_table} {{\n"
            "  chain input {\n"
            "    type filter hook input priority -10; policy accept;\n"
            f"    ip daddr {{ {addrs} }} drop\n"
            "  }\n"
            "}\n"
        )
        try:
            subprocess.run(
                ["nft", "-f", "-"], input=script.encode(), capture_output=True, check=True
            )
        except (OSError, subprocess.CalledProcessError) as err:
            detail = getattr(err, "stderr", b"") or b""
            raise RuntimeError(
                f"cannot silence {sorted(hosts)}'s loopback addresses with nft ({err}: "
                f"{detail.decode(errors='replace').strip()}); kill(host, links=False) kills "
                "the agent alone"
            ) from err

    def restart(self, host: str, *, timeout_s: float = 20.0) -> None:
        """Bring a killed or stopped host back: links up (namespace lab), agent started,
        wait until it answers."""
        if self.running(host):
            self.stop(host)
        if self.lab is not None:
            self.lab.restore_host(host)
        elif host in self.silenced:
            self._silence(self.silenced - {host})
        self.spawn(host)
        self.wait_ready(host, timeout_s)

    def stop(self, host: str, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int:
        """Signal `host`'s agent and wait for it; SIGKILL after `timeout_s`. Its exit code."""
        return self.stop_all([host], sig, timeout_s)[host]

    def stop_all(
        self, hosts: Iterable[str] | None = None, sig: int = signal.SIGTERM, timeout_s: float = 15.0
    ) -> dict[str, int]:
        """Signal every running agent at once, then wait for each (SIGKILL past the
        deadline). Returns {host: exit code} (negative: killed by that signal)."""
        todo = [h for h in (hosts or self.hosts) if h in self.procs]
        for h in todo:
            if self.procs[h].poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self.procs[h].send_signal(sig)
        deadline = time.monotonic() + timeout_s
        for h in todo:
            p = self.procs[h]
            try:
                p.wait(max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            self.exit_codes[h] = p.returncode
        return {h: self.exit_codes[h] for h in todo}

    def close(self) -> None:
        """Stop everything this mesh started (SIGTERM, then SIGKILL). Idempotent."""
        self.stop_all(timeout_s=10.0)
        if self.silenced:
            self._silence(set())

    def __enter__(self) -> Mesh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- asking the agents ---------------------------------------------------------------

    def call(self, host: str, request: dict[str, Any], timeout_s: float = 5.0) -> dict[str, Any]:
        return call(self.control(host), request, timeout_s)

    def status(self, host: str) -> dict[str, Any]:
        return self.call(host, {"op": "status"})

    def try_status(self, host: str) -> dict[str, Any] | None:
        """`status`, or None while the agent cannot answer (starting, stopped, busy)."""
        try:
            return self.status(host)
        except ControlError as e:
            if e.remote:
                raise
            return None

    def verdicts(self, host: str) -> dict[str, tuple[str, tuple[str, ...]]]:
        """{host: (verdict, networks)} as `host`'s agent sees them."""
        st = self.status(host)
        return {h["name"]: (h["verdict"], tuple(h["networks"])) for h in st["hosts"]}

    def verdict(self, observer: str, host: str) -> str | None:
        st = self.try_status(observer)
        if st is None:
            return None
        return next(h["verdict"] for h in st["hosts"] if h["name"] == host)

    def leader(self, among: Iterable[str] | None = None) -> str | None:
        """The leader every agent of `among` (default: the running ones) reports, with a
        quorum, or None while they do not agree."""
        seen = set()
        for h in among or self.running_hosts():
            st = self.try_status(h)
            if st is None or not st["has_quorum"]:
                return None
            seen.add(st["leader"])
        return seen.pop() if len(seen) == 1 and None not in seen else None

    def wait_leader(
        self, timeout_s: float = 20.0, *, among: Iterable[str] | None = None, not_: str = ""
    ) -> str:
        hosts = list(among) if among is not None else None

        def agreed() -> str | None:
            lead = self.leader(hosts)
            return lead if lead is not None and lead != not_ else None

        return self.wait_until(agreed, timeout_s, "the agents agree on a leader with a quorum")

    def wait_until(
        self, cond: Callable[[], T | None], timeout_s: float, what: str, poll_s: float = POLL_S
    ) -> T:
        """Poll `cond` until it returns something truthy, and return that; MeshTimeout
        (with the agents' view) after `timeout_s`."""
        got = poll_until(cond, timeout_s, poll_s)
        if got is None:
            raise MeshTimeout(f"not within {timeout_s:g}s: {what}\n{self.describe()}")
        return got

    def describe(self) -> str:
        """One line per host: running?, leader, verdicts; for failure messages."""
        lines = []
        for h in self.hosts:
            st = self.try_status(h) if self.running(h) else None
            if st is None:
                lines.append(f"  {h}: {'running, no answer' if self.running(h) else 'down'}")
                continue
            vs = " ".join(
                f"{x['name']}={x['verdict']}{'[' + ','.join(x['networks']) + ']' if x['networks'] else ''}"
                for x in st["hosts"]
            )
            lines.append(
                f"  {h}: leader={st['leader']} term={st['term']} quorum={st['has_quorum']} "
                f"index={st['index']} isolated={st['isolated']} {vs}"
            )
        return "\n".join(lines)

    # -- the ledgers -------------------------------------------------------------------

    def ledger(self, host: str) -> list[tuple[int, dict[str, Any]]]:
        """Every (idx, entry) in `host`'s SQLite ledger (running or not)."""
        path = self.data_dir(host) / "ledger.sqlite"
        if not path.exists():
            return []
        with Ledger(path) as led:
            return list(led.entries())

    def ledgers(self, hosts: Iterable[str] | None = None) -> dict[str, dict[int, dict[str, Any]]]:
        return {h: dict(self.ledger(h)) for h in (hosts or self.hosts)}

    def wait_ledgers_equal(
        self,
        hosts: Iterable[str] | None = None,
        timeout_s: float = 10.0,
        holding: Callable[[dict[int, dict[str, Any]]], bool] | None = None,
    ) -> dict[int, dict[str, Any]]:
        """Wait until the ledgers of `hosts` (default: running) hold the same entries,
        and, given `holding`, entries it accepts. A control call returns once its entry
        is committed; each ledger writes it a moment later, so ledgers can be equal and
        all still without it: a caller that needs an entry names it with `holding`."""
        todo = list(hosts or self.running_hosts())

        def same() -> dict[int, dict[str, Any]] | None:
            books = [dict(self.ledger(h)) for h in todo]
            if not books[0] or any(b != books[0] for b in books):
                return None
            return books[0] if holding is None or holding(books[0]) else None

        return self.wait_until(same, timeout_s, f"ledgers of {todo} are identical", poll_s=0.1)


def _check_free(kind: int, addr: str, port: int) -> None:
    s = socket.socket(socket.AF_INET, kind)
    try:
        s.bind((addr, port))
    finally:
        s.close()


def conflicts(
    books: Mapping[str, Mapping[int, dict[str, Any]]],
) -> list[tuple[int, str, str]]:
    """(idx, host a, host b) for every index two ledgers hold with different entries."""
    out = []
    names = sorted(books)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            for idx in books[a].keys() & books[b].keys():
                if books[a][idx] != books[b][idx]:
                    out.append((idx, a, b))
    return out
