"""Faults inside one host that the daemon handles (issue 12), modelled on what the shipped
agent does about each, no more:

- **a wall clock stepped** (`clock-step HOST ±S`): each host has its own wall clock
  (`HostFaults.wall`). The probe transport here stamps every datagram with its sender's
  wall clock and feeds ping/ack round trips to the product's `SegmentClock`, as the UDP
  transport does (meshha.agent.udp); the agent commits *segment time* and reports skewed
  hosts, exactly as in the daemon. Probes never read the clock (wire v2 is epoch+seq,
  and the simulator passes datagrams unencoded), so nothing else changes. The host's
  boot time (a reconcile report's `booted_at`) is read in its own wall clock, as
  /proc/stat's btime is. Modelled only in runs that ask for it (`HostFaults.clocks`):
  elsewhere every host stamps the one true simulated time, which keeps the scenario
  timelines byte-stable (segment time carries sub-microsecond float noise, and intent
  keys truncate to milliseconds).
- **a full disk under the data directory** (`disk-full HOST`, `disk-ok HOST`): the
  journal and the ledger share it. The Raft member freezes at its next journal write
  (the next entry it would persist, or a vote), as `PysyncobjLog` does: it neither
  votes nor acknowledges nor leads, and receives nothing until a write succeeds again
  (`SimRaft.frozen`); the ledger keeps committed entries in a bounded backlog and writes
  them in order once space is back (`SimLedger`, as `LedgerSink`); the product's
  `PersistWatch` polls both and alerts from the agent itself. Probes go on. The watch
  runs only in runs that ask for it (`HostFaults.disks`): another task per agent
  reorders trio's deterministic schedule, hence every scenario timeline.
- **the agent process stopped** (`stall HOST S`, like SIGSTOP or a long page-fault
  storm): every task of the agent stops (its node's cancel scope is cancelled, the
  `Node` object and all its memory kept) and resumes after S on the same object, so its
  `StallMeter` sees the gap and its prober, isolation check and watchdog act on it as in
  the daemon. Its Raft member (a thread of the same process) stops too. Datagrams sent
  to it wait in its kernel's socket buffer (bounded) and are read when it resumes. Its
  kernel still completes TCP handshakes: peers' knocks (meshha.probes.liveness) are
  answered while it is stopped, by a host that is powered, not hung, and reachable on
  that network, and refused when no agent runs there. What this does not model: a call
  the agent had in flight when it stopped is abandoned at the stall (as if it had timed
  out; the daemon would finish it after), and a stall shorter than the simulator's
  20 ms lifecycle step ends at the next step.
- **the agent process killed** (`kill-agent HOST S`: kill -9, an OOM kill, a crash): its
  tasks, its memory and its Raft member are gone (the journal stays); its watchdog is
  closed as a dying process closes it (no magic character: still armed); its init starts
  a fresh agent S later (the unit's Restart=always, RestartSec=1, plus the start), which
  knows only the log, as after `restart-agents`. Meanwhile its kernel refuses peers'
  knocks (RST: no agent listens), which is a live kernel all the same.

Knocks are always modelled (the daemon always knocks), not only in runs with stalls.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from meshha.agent.persist import PersistWatch, Problem, problem_of
from meshha.config.model import Segment
from meshha.errors import MeshhaError
from meshha.ledger.sink import MAX_BACKLOG, LedgerBacklogFull
from meshha.ledger.store import LedgerError
from meshha.probes.clock import SegmentClock
from meshha.probes.liveness import KNOCK_ANSWERED, KNOCK_REFUSED, KernelLiveness
from meshha.raft.entries import Entry
from meshha.sim.fakes import FakeCloud, FakeHypervisor
from meshha.sim.network import SimNetwork

if TYPE_CHECKING:
    from meshha.sim.world import MemoryLedger, Sim

SOCKET_BUFFER_DATAGRAMS = 2048  # what a stopped agent's UDP socket holds (rmem / ~100 B)
MAX_PINGS_TIMED = 4096  # as meshha.agent.udp


def data_dir(host: str) -> str:
    return f"/var/lib/meshha/{host}"


class SimProbeTransport:
    """The probe transport of one simulated host: as meshha.agent.udp.UdpTransport for
    clocks (SegmentClock from direct ping/ack pairs) and knocks (KernelLiveness)."""

    def __init__(
        self,
        net: SimNetwork,
        segment: Segment,
        me: str,
        wall: Callable[[], float],
        listening: Callable[[str], bool],
        rng: random.Random,
    ) -> None:
        self.net, self.segment, self.me, self.wall = net, segment, me, wall
        self.listening = listening  # does an agent (running or stopped) own the port there?
        self.rng = rng
        t = segment.timings
        self.clock = SegmentClock(
            me, segment.host_names, max_skew_s=t.max_clock_skew_s, max_rtt_s=t.probe_timeout_s
        )
        self.knock_timeout_s = 4 * t.probe_interval_s
        self.kernel = KernelLiveness(
            stall_grace_s=t.stall_grace_s, window_s=2 * self.knock_timeout_s + t.probe_interval_s
        )
        self._pings: dict[tuple[str, str, int], float] = {}
        self._last_knock: dict[tuple[str, str], float] = {}
        self.deliver: Callable[[str, str, dict[str, Any]], None] | None = None
        self.held: deque[tuple[str, str, dict[str, Any]]] | None = None  # while stopped

    # -- datagrams -----------------------------------------------------------------------

    def send(self, network: str, to: str, msg: dict[str, Any]) -> None:
        self.net.send(network, self.me, to, {"ts": self.wall(), "msg": msg})
        if msg.get("t") == "ping" and isinstance(msg.get("id"), int):
            self._pings[(network, to, msg["id"])] = trio.current_time()
            while len(self._pings) > MAX_PINGS_TIMED:
                del self._pings[next(iter(self._pings))]

    def receive(self, network: str, sender: str, envelope: dict[str, Any]) -> None:
        """What the kernel hands the socket: read now, or held while the agent is stopped."""
        if self.held is not None:
            if len(self.held) < SOCKET_BUFFER_DATAGRAMS:
                self.held.append((network, sender, envelope))
            return
        msg = envelope["msg"]
        if msg.get("t") == "ack" and "via" not in msg and isinstance(msg.get("id"), int):
            sent = self._pings.pop((network, sender, msg["id"]), None)
            if sent is not None:
                self.clock.sample(sender, sent, trio.current_time(), envelope["ts"])
        if self.deliver is not None:
            self.deliver(network, sender, msg)

    def resume(self) -> None:
        held, self.held = self.held or deque(), None
        for item in held:
            self.receive(*item)

    # -- clocks (ClockPort and NodePorts.now) ----------------------------------------------

    def segment_now(self) -> float:
        return self.clock.now(trio.current_time(), self.wall())

    def skewed_hosts(self) -> dict[str, float]:
        return self.clock.skewed(trio.current_time(), self.wall())

    def clock_judged(self) -> bool:
        return self.clock.judged(trio.current_time(), self.wall())

    def wall_to_segment(self, wall_ts: float) -> float:
        wall = self.wall()
        return wall_ts + self.clock.now(trio.current_time(), wall) - wall

    # -- knocks (KernelPort) -------------------------------------------------------------

    def knock(self, network: str, peer: str) -> None:
        """A TCP handshake with `peer`'s kernel, decided from the ground truth now: the
        SYN and the SYN-ACK each cross the link (loss applies to each), a powered host
        that is not hung answers, with an RST when no agent listens there."""
        now = trio.current_time()
        key = (network, peer)
        if now - self._last_knock.get(key, -math.inf) < self.segment.timings.probe_interval_s:
            return
        self._last_knock[key] = now
        loss = self.net.quality.loss
        if not self.net.link_up(network, self.me, peer):
            return  # silent: nothing is recorded for a knock nobody answered
        if loss and (self.rng.random() < loss or self.rng.random() < loss):
            return
        outcome = KNOCK_ANSWERED if self.listening(peer) else KNOCK_REFUSED
        self.kernel.record(peer, network, now, now + 2 * self.net.quality.delay_s, outcome)

    def kernel_stalled(self, peer: str, network: str, since: float, now: float) -> bool:
        return self.kernel.stalled(peer, network, since, now)


class SimLedger:
    """A host's ledger behind its disk: as meshha.ledger.sink.LedgerSink, entries wait in
    a bounded backlog while the disk is full and are written in order after."""

    def __init__(self, rows: MemoryLedger, host: str, full: Callable[[], bool]) -> None:
        self.rows, self.host, self.full = rows, host, full
        self.backlog: deque[tuple[int, Entry]] = deque()
        self.error: LedgerError | None = None

    def append(self, index: int, entry: Entry) -> None:
        if len(self.backlog) >= MAX_BACKLOG:
            raise LedgerBacklogFull(f"{len(self.backlog)} committed entries not written")
        self.backlog.append((index, entry))
        self.flush()

    def flush(self) -> None:
        if self.full():
            if self.error is None:
                path = f"{data_dir(self.host)}/ledger.sqlite"
                self.error = LedgerError("database or disk is full", kind="disk_full", where=path)
            return
        self.error = None
        while self.backlog:
            self.rows.append(*self.backlog.popleft())


class SimHypervisor(FakeHypervisor):
    """The host's boot time as its own wall clock tells it (as /proc/stat's btime)."""

    def __init__(self, cloud: FakeCloud, host: str, wall: Callable[[], float]) -> None:
        super().__init__(cloud, host)
        self.wall = wall

    async def booted_at(self) -> float:
        return self.cloud.machines[self.host].booted_at + self.wall() - trio.current_time()


class HostFaults:
    """The host-local fault state of one simulated segment (see the module doc)."""

    def __init__(self, epoch: float, *, clocks: bool = False, disks: bool = False) -> None:
        self.epoch = epoch
        self.clocks = clocks
        self.disks = disks
        self.offsets: dict[str, float] = {}
        self.disk_full: set[str] = set()
        self.stalled: dict[str, float] = {}  # host -> when its agent resumes (trio time)
        self.killed: dict[str, float] = {}  # host -> when its init starts it again
        self.transports: dict[str, SimProbeTransport] = {}
        self.ledgers: dict[str, SimLedger] = {}
        self.persist: dict[str, PersistWatch] = {}

    def wall(self, host: str) -> float:
        return self.epoch + trio.current_time() + self.offsets.get(host, 0.0)

    def ledger(self, rows: MemoryLedger, host: str) -> SimLedger:
        if host not in self.ledgers:
            self.ledgers[host] = SimLedger(rows, host, lambda: host in self.disk_full)
        return self.ledgers[host]

    def persist_sources(self, sim: Sim, host: str) -> dict[str, Callable[[], Problem | None]]:
        def journal() -> Problem | None:
            if host not in sim.raft.frozen:
                return None
            err = MeshhaError("journal write: No space left on device", kind="disk_full")
            return problem_of("journal", err, f"{data_dir(host)}/raft")

        def ledger() -> Problem | None:
            err = self.ledgers[host].error
            return problem_of("ledger", err, data_dir(host)) if err is not None else None

        return {"journal": journal, "ledger": ledger}


# -- the faults, as the simulator injects them --------------------------------------------


def clock_step(sim: Sim, host: str, step_s: float) -> None:
    assert sim.host_faults.clocks, "a clock step needs a run that models clocks (SimSpec.clocks)"
    hf = sim.host_faults
    hf.offsets[host] = hf.offsets.get(host, 0.0) + step_s
    sim.fault(f"clock-step {host} {step_s:+g}s (now {hf.offsets[host]:+g}s off)")


def disk(sim: Sim, host: str, full: bool) -> None:
    hf = sim.host_faults
    assert hf.disks, "a disk fault needs a run that models disks (SimSpec.disks)"
    sim.fault(f"disk-{'full' if full else 'ok'} {host}")
    if full:
        hf.disk_full.add(host)
        sim.raft.disk_full.add(host)
        return
    hf.disk_full.discard(host)
    sim.raft.disk_full.discard(host)
    sim.raft.frozen.discard(host)  # the member's next retry writes: it votes again
    if host in hf.ledgers:
        hf.ledgers[host].flush()


def stall(sim: Sim, host: str, duration_s: float) -> None:
    """Stop the agent of `host` for `duration_s` (see the module doc)."""
    hf = sim.host_faults
    sim.fault(f"stall {host} {duration_s:g}s")
    if host in hf.stalled:
        hf.stalled[host] = max(hf.stalled[host], trio.current_time() + duration_s)
        return
    if host not in sim.scopes:
        return  # no agent runs there to stop
    hf.stalled[host] = trio.current_time() + duration_s
    sim.scopes.pop(host).cancel()
    sim.raft.frozen.add(host)
    hf.transports[host].held = deque()


def kill_agent(sim: Sim, host: str, restart_after_s: float) -> None:
    """Kill the agent of `host`; its init starts a new one `restart_after_s` later."""
    hf = sim.host_faults
    sim.fault(f"kill-agent {host} (restarted after {restart_after_s:g}s)")
    if host in hf.killed or host in hf.stalled or host not in sim.scopes:
        return  # no running agent there to kill
    hf.killed[host] = trio.current_time() + restart_after_s
    sim.stop_node(host)  # its keepalive closes the watchdog without the magic character
    sim.raft.frozen.add(host)


def restart_due(sim: Sim, *, all_now: bool = False) -> None:
    """Start the killed agents whose init's restart is due (all of them with `all_now`);
    forget the kill on a machine that went down meanwhile (it boots a fresh agent)."""
    hf = sim.host_faults
    for host, until in sorted(hf.killed.items()):
        if not sim.cloud.machines[host].alive or all_now or trio.current_time() >= until:
            del hf.killed[host]
            if host not in sim.raft.disk_full:
                sim.raft.frozen.discard(host)


def resume_due(sim: Sim, *, all_now: bool = False) -> None:
    """Resume the agents whose stall is over (all of them with `all_now`); forget the
    stall of a machine that went down meanwhile (its agent starts afresh with it)."""
    hf = sim.host_faults
    for host, until in sorted(hf.stalled.items()):
        m = sim.cloud.machines[host]
        if not m.alive:
            del hf.stalled[host]
            sim.raft.frozen.discard(host)
            sim.nodes[host].alive = False
            sim.net.receivers.pop(host, None)
            continue
        if all_now or trio.current_time() >= until:
            del hf.stalled[host]
            wd = sim.watchdogs.get(host)
            if wd is not None and wd.armed:
                # Stopping the tasks closed it as a dying process would; a stopped one
                # keeps it open: held again as it was, its timer running since the
                # last feed before the stall.
                wd.held = True
            if host not in sim.raft.disk_full:
                sim.raft.frozen.discard(host)
            sim.resume_node(host)
            hf.transports[host].resume()


def heal(sim: Sim) -> None:
    """The healed phase: disks freed, stopped agents resumed (clocks stay as they are:
    a wrong clock is the operator's to fix, and must never matter)."""
    for host in sorted(sim.host_faults.disk_full):
        disk(sim, host, False)
    resume_due(sim, all_now=True)
    restart_due(sim, all_now=True)
