"""One host's agent logic, independent of how it talks to the world.

`Node` wires the pure pieces (Prober, SegmentState, decide) to ports: a replicated log, a
datagram transport, drivers, the local hypervisor, a ledger and a clock. The daemon gives
it pysyncobj, UDP and the real drivers; the simulator gives it an in-memory Raft
stand-in, an in-memory network and fakes. The logic is the same code in both.

Tasks (all in the node's one nursery):
- apply:     committed entries -> state -> ledger, in log order.
- probe:     SWIM ticks; local reachability changes proposed as observations.
- lead:      when leader of a majority and caught up: decide, propose, execute intents.
- isolation: no probe answered by a majority of voters on any network for
             isolation_after_s, and no Raft quorum -> destroy the local VMs (the
             self-fence the majority relies on).
- monitors:  local VM events and process checks -> proposed failures.
- keepalive: the watchdog and systemd's, fed while the loops above run (agent/keepalive.py).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

import structlog
import trio

from meshha.agent.alive import MARK_EVERY_S, AliveMark
from meshha.agent.capacity import CapacityWatch
from meshha.agent.keepalive import Keepalive, Notifier
from meshha.agent.reconcile import boot_time, reconcile_loop
from meshha.config.model import Segment
from meshha.errors import MeshhaError
from meshha.probes.liveness import Stall, StallMeter
from meshha.probes.swim import Prober
from meshha.raft import entries as E
from meshha.raft.entries import Entry
from meshha.raft.intent_key import IntentKey, ms
from meshha.raft.log import LogPort
from meshha.raft.state import Intent, SegmentState
from meshha.recovery.damping import ObservationDamper
from meshha.recovery.decide import decide, pending_intents
from meshha.recovery.executor import Drivers, Executor, Guard
from meshha.recovery.ports import HypervisorPort, ProcessPort, VmEvent, WatchdogPort

log = structlog.get_logger("meshha.node")

PROPOSAL_QUEUE = 1024  # bound on proposals waiting to be sent to the leader
OTHER_PARALLEL = 8  # bound on concurrent non-evacuation intents
CLOCK_REALERT_S = 3600.0  # a clock still off is alerted again after this long
CLOCK_SKEW_HOLD_S = 1.0  # a skew must hold this long before it is logged and alerted


class Transport(Protocol):
    def send(self, network: str, to: str, msg: dict[str, Any]) -> None: ...


class LedgerSink(Protocol):
    def append(self, index: int, entry: Entry) -> None: ...


class KernelPort(Protocol):
    """The kernel-level liveness signal (meshha.probes.liveness), times on trio's clock."""

    def knock(self, network: str, peer: str) -> None: ...

    def kernel_stalled(self, peer: str, network: str, since: float, now: float) -> bool: ...


class ClockPort(Protocol):
    def skewed_hosts(self) -> dict[str, float]:
        """Hosts whose wall clock is off segment time by more than max_clock_skew_s."""
        ...

    def wall_to_segment(self, wall_ts: float) -> float:
        """A time read on this host's own wall clock (its boot time), in segment time."""
        ...

    def clock_judged(self) -> bool:
        """A majority of the hosts answered: segment time is the median, not our clock."""
        ...


@dataclass
class NodePorts:
    log: LogPort
    transport: Transport
    ledger: LedgerSink
    now: Callable[[], float]  # wall-clock seconds for entry timestamps
    drivers: Drivers | None = None  # the leader's hands; None = dry run (intents only logged)
    hypervisor: HypervisorPort | None = None
    vm_events: trio.abc.ReceiveChannel[VmEvent] | None = None
    processes: ProcessPort | None = None
    # What the process port watches, if not the config's names (virtqemud for libvirtd)
    process_names: tuple[str, ...] | None = None
    guard: Guard | None = None
    watchdog: WatchdogPort | None = None  # only for a host whose config declares one
    notifier: Notifier | None = None  # systemd's sd_notify
    clock: ClockPort | None = None  # measured clock skews (meshha.probes.clock)
    kernel: KernelPort | None = None  # peers' kernels answer while their agent is stopped
    alive: AliveMark | None = None  # when this host was last up, across reboots (alive.py)


@dataclass
class NodeStats:
    proposed: int = 0
    propose_failed: int = 0
    executed: int = 0
    self_fences: int = 0
    decisions: int = 0
    last_error: str = ""
    last_error_kind: str = ""  # "<what>/<error kind>", e.g. "propose/no_quorum"
    last_error_ts: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)  # by "<what>/<error kind>"
    extra: dict[str, int] = field(default_factory=dict)

    def error(self, what: str, err: MeshhaError, ts: float, **context: Any) -> None:
        """An operating error the node gets past (the entry or result is retried or
        re-decided): logged with its kind, counted, kept for `meshctl status`."""
        key = f"{what}/{err.kind}"
        self.errors[key] = self.errors.get(key, 0) + 1
        self.last_error, self.last_error_kind, self.last_error_ts = str(err), key, ts
        log.warning(f"{what}_failed", kind=err.kind, error=str(err), **context)


class Node:
    def __init__(
        self, segment: Segment, me: str, ports: NodePorts, *, seed: int = 0, fanout: int = 1
    ) -> None:
        self.segment = segment
        self.me = me
        self.p = ports
        self.state = SegmentState(segment)
        self.prober = Prober(segment, me, seed=seed, fanout=fanout)
        self.executor = Executor(segment, ports.drivers, me, ports.guard) if ports.drivers else None
        self.stats = NodeStats()
        self.isolated = False
        self._last_contact = -math.inf
        self._quorum_back_m = math.inf  # when Raft last got its quorum back (trio time)
        self.contact_m = -math.inf  # when a majority was last counted (trio time)
        self.beats: dict[str, float] = {}  # loop -> when it last ran (trio time)
        self.keepalive = Keepalive(self, ports.watchdog, ports.notifier)
        self._destroyed: tuple[float, list[str]] = (0.0, [])
        self._back: Entry | None = None  # the isolation off entry, until committed
        self._in_flight: set[Any] = set()
        self._running: dict[str, trio.CancelScope] = {}
        self._dry_logged: set[str] = set()
        self._damper = ObservationDamper()
        self.supervisor: Any = None  # the process Supervisor, once running
        self._send, self._recv = trio.open_memory_channel[tuple[Entry, Any]](PROPOSAL_QUEUE)
        self._applied = trio.Event()
        self.alive = True
        self.skewed: dict[str, float] = {}
        self._skew_seen: dict[str, float] = {}
        t = segment.timings
        # A stall long enough for peers to notice is committed (self-reported).
        self.stall_report_s = t.probe_interval_s * t.misses_before_suspect / 2
        self.stalls = StallMeter(self.prober.poll_interval_s, t.probe_timeout_s / 2)
        self.stalled_peers: dict[tuple[str, str], float] = {}  # (peer, net) -> silent since
        self._resumed_at = -math.inf  # when this agent last came back from its own stall
        self._stall_reports: deque[Entry] = deque(maxlen=16)  # waiting for a quorum
        self._capacity = CapacityWatch(segment, self.propose, me)

    # -- entry points ------------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._last_contact = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._apply_loop)
            nursery.start_soon(self._proposer)
            nursery.start_soon(self._probe_loop)
            nursery.start_soon(self._lead_loop, nursery)
            nursery.start_soon(self._isolation_loop)
            nursery.start_soon(reconcile_loop, self)  # a fenced host's return (reconcile.py)
            if self.p.alive is not None:
                nursery.start_soon(self._alive_loop, self.p.alive)
            if self.p.vm_events is not None:
                nursery.start_soon(self._vm_event_loop)
            if self.p.processes is not None:
                nursery.start_soon(self._process_loop)
            if self.p.watchdog is not None or self.p.notifier is not None:
                nursery.start_soon(self.keepalive.run)
            task_status.started()

    def restore(self, rows: Any) -> int:
        """Rebuild the state from the ledger's (index, entry) rows before `run`: the Raft
        journal is compacted, the ledger keeps everything. Returns the index reached."""
        for index, entry in rows:  # Raft indexes increase but have gaps (no-op entries)
            if index > self.state.index:
                self.state.apply(entry, index)
        return self.state.index

    async def wait_applied(self, index: int) -> None:
        """Return once the state has applied Raft `index` (the caller bounds the wait)."""
        while self.state.index < index:
            await self._applied.wait()

    def on_datagram(self, network: str, sender: str, msg: dict[str, Any]) -> None:
        """An authenticated probe datagram arrived (the transport checked it)."""
        for s in self.prober.receive(network, sender, msg, trio.current_time()):
            self.p.transport.send(s.network, s.to, s.msg)

    def propose(self, entry: Entry, key: Any = None) -> None:
        """Queue an entry for the log; drop it if the same key is already in flight."""
        if key is not None:
            if key in self._in_flight:
                return
            self._in_flight.add(key)
        try:
            self._send.send_nowait((entry, key))
        except trio.WouldBlock:
            self._in_flight.discard(key)
            self.stats.extra["proposal_queue_full"] = (
                self.stats.extra.get("proposal_queue_full", 0) + 1
            )

    # -- loops -------------------------------------------------------------------------

    async def _apply_loop(self) -> None:
        async for index, entry in self.p.log.committed_from(self.state.index):
            if index <= self.state.index:
                continue
            self.state.apply(entry, index)
            self.p.ledger.append(index, entry)
            self._applied.set()
            self._applied = trio.Event()

    async def _proposer(self) -> None:
        timeout = max(2.0, 2 * self.segment.timings.election_timeout_s)
        async for item in self._recv:
            entry, key = item
            try:
                await self.p.log.propose(entry, timeout_s=timeout)
                self.stats.proposed += 1
            except MeshhaError as err:
                self.stats.propose_failed += 1
                self.stats.error("propose", err, self.p.now(), entry_kind=entry.get("kind"))
                self._retry_stall_report(entry)
            finally:
                self._in_flight.discard(key)

    async def _probe_loop(self) -> None:
        while True:
            now_m = trio.current_time()
            stall = self.stalls.tick(now_m)
            if stall is not None:
                self._own_stall(stall.duration_s, now_m)
            for s in self.prober.tick(now_m):
                self.p.transport.send(s.network, s.to, s.msg)
            if self.p.kernel is not None:
                for (target, net), pv in list(self.prober.view.items()):
                    if pv.misses > 0 or not pv.reachable:
                        self.p.kernel.knock(net, target)
            self._report_observations()
            self.beats["probe"] = trio.current_time()
            await trio.sleep(self.prober.poll_interval_s)

    def _own_stall(self, gap_s: float, now_m: float) -> None:
        """This agent stood still for `gap_s` (meshha.probes.liveness): its prober's
        timeouts did not run, its isolation check must look again, and a stall peers
        could notice is committed as what it is."""
        self.prober.pause(gap_s)
        self._resumed_at = now_m
        recent = self.stalls.recent(now_m)
        log.warning("agent_stalled", stall_s=round(gap_s, 3), recent=len(recent))
        # One entry per episode, and one per window for repeated stalls
        # (meshha.probes.liveness StallMeter.report).
        what = self.stalls.report(Stall(now_m - gap_s, gap_s), now_m, self.stall_report_s)
        if what is not None:
            seen = [s for s in recent if s.duration_s >= self.stall_report_s]
            detail = (
                f"the agent stood still for {gap_s:.2f} s "
                f"({len(recent)} stall(s) in the last {self.stalls.window_s:g} s, "
                f"{self.stalls.total} since start); its host's kernel answered peers"
                if what == "single"
                else f"the agent stood still repeatedly: {len(seen)} times in the last "
                f"{self.stalls.window_s:g} s (longest {max(x.duration_s for x in seen):.2f} s, "
                f"{sum(x.duration_s for x in seen):.2f} s in all); its host's kernel "
                "answered peers throughout: a loaded or swapping host, not a failed one"
            )
            # Committed once this member sees a quorum again (right after a stall, its
            # Raft member has not heard the leader yet): `_report_observations`.
            self._stall_reports.append(
                E.process_failure(
                    ts=self.p.now(),
                    by=self.me,
                    host=self.me,
                    process="meshha-agent",
                    outcome="stalled",
                    detail=detail,
                )
            )

    def _retry_stall_report(self, entry: Entry) -> None:
        """A stall report is proposed once, right after the stall, when this member's Raft
        connections may still be catching up: one that failed goes back in the queue
        (observations need no retry: they are proposed again from the difference), for
        as long as the stall is recent. A propose that timed out yet committed may give a
        second report of the same stall: harmless, and rare."""
        if (
            entry.get("kind") == "process_failure"
            and entry.get("outcome") == "stalled"
            and entry.get("host") == self.me
            and self.p.now() - entry["ts"] < self.stalls.window_s
        ):
            self._stall_reports.append(entry)

    def _report_observations(self) -> None:
        """Propose the difference between what this host sees and what is committed."""
        if not self.p.log.has_quorum:
            self._quorum_back_m = math.inf
            return
        if self._quorum_back_m == math.inf:
            self._quorum_back_m = trio.current_time()
        while self._stall_reports:
            self.propose(self._stall_reports.popleft())
        now = self.p.now()
        # The prober runs on the monotonic clock (a wall clock step must not stop or
        # hurry probing); what is committed is in the log's time, `now`.
        lag = now - trio.current_time()
        suspects = {t for (_, t, _) in self.state.lost} - {self.me}
        self.prober.watch_extra = suspects if self.me in self.segment.voters else set()
        local = self.prober.lost()
        committed = {(t, n): s for (o, t, n), s in self.state.lost.items() if o == self.me}
        self._note_stalled(local, lag)
        settling = trio.current_time() - self._quorum_back_m < self.segment.timings.suspect_after_s
        for (target, net), since in local.items():
            if (target, net) in self.stalled_peers:
                continue  # its kernel answers: a stalled agent, not (yet) a lost host
            if settling and since < self._quorum_back_m:
                # Lost while this host was cut off from the quorum, and it has just got
                # the quorum back: let the probes look again before telling the segment
                # (a healed minority's stale losses made the majority suspect and braked).
                continue
            self._damper.lost(target, net, since)
            if (target, net) not in committed:
                self.propose(
                    E.observation(
                        ts=now,
                        by=self.me,
                        host=target,
                        network=net,
                        reachable=False,
                        since=since + lag,
                    ),
                    ("obs", target, net, False),
                )
        for target, net in committed:
            if (target, net) not in local:
                pv = self.prober.peer(target, net)
                if pv.last_ack is None:
                    continue  # not heard since this agent started: unknown, not reachable
                other_up = any(
                    (target, n) not in local for n in self.segment.host(target).networks if n != net
                )
                now_m = trio.current_time()  # the prober's clock
                if self._damper.hold_regain(target, net, pv.since or now_m, other_up, now_m):
                    continue  # a flapping link: reachable again once it stays so
                self.propose(
                    E.observation(
                        ts=now,
                        by=self.me,
                        host=target,
                        network=net,
                        reachable=True,
                        since=pv.since + lag if pv.since else now,
                    ),
                    ("obs", target, net, True),
                )

    def _note_stalled(self, local: dict[tuple[str, str], float], lag: float) -> None:
        """Which lost peers are only stalled: silent, but their kernel answers, within
        the grace (meshha.probes.liveness). Logged when it starts and ends."""
        kernel = self.p.kernel
        now_m = trio.current_time()
        stalled = {
            k: since + lag
            for k, since in local.items()
            if kernel is not None and kernel.kernel_stalled(k[0], k[1], since, now_m)
        }
        for (target, net), since in stalled.items():
            if (target, net) not in self.stalled_peers:
                log.warning("peer_stalled", host=target, network=net, since=round(since, 3))
        for target, net in self.stalled_peers:
            if (target, net) not in stalled:
                heard = (target, net) not in local
                log.info("peer_stall_over", host=target, network=net, heard_again=heard)
        self.stalled_peers = stalled

    async def _alive_loop(self, mark: AliveMark) -> None:
        """Keep the mark of when this host was last up (alive.py), in segment time."""
        boot = await boot_time(self.p.hypervisor)
        await trio.to_thread.run_sync(mark.start, boot)
        if boot is None:
            log.warning("alive_mark_off", why="this host's boot time cannot be read")
            return
        while True:
            await trio.to_thread.run_sync(mark.mark, boot, self.p.now())
            await trio.sleep(MARK_EVERY_S)

    async def _lead_loop(self, nursery: trio.Nursery) -> None:
        while True:
            # Step as soon as something commits (each recovery step waits on the last
            # one's result), and at least every probe interval (verdicts ripen with time).
            with trio.move_on_after(self.segment.timings.probe_interval_s):
                await self._applied.wait()
            log_ = self.p.log
            self._watch_clocks()
            if not (log_.is_leader and log_.has_quorum):
                self._stop_running("lost leadership")
                continue
            if self.state.index < log_.commit_index:
                continue  # not caught up: acting now could repeat what is already decided
            now = self.p.now()
            self.stats.decisions += 1
            for entry in decide(self.segment, self.state, now, self.me):
                self.propose(entry, _key(entry))
            self._clock_alerts(now)
            self._execute(nursery, now)
            nova = self.p.drivers.nova if self.p.drivers is not None else None
            self._capacity.maybe_measure(nursery, self.state, nova, now)

    def _watch_clocks(self) -> None:
        """Log when the set of hosts with a wrong clock changes (every host does)."""
        if self.p.clock is None:
            return
        now_m = trio.current_time()
        measured = self.p.clock.skewed_hosts()
        for host in measured:
            self._skew_seen.setdefault(host, now_m)
        for host in set(self._skew_seen) - set(measured):
            del self._skew_seen[host]
        # Only a skew that holds for CLOCK_SKEW_HOLD_S counts (one odd sample is not a clock).
        skewed = {
            h: o for h, o in measured.items() if now_m - self._skew_seen[h] >= CLOCK_SKEW_HOLD_S
        }
        if set(skewed) != set(self.skewed):
            for host, offset in sorted(skewed.items()):
                log.warning("clock_skew", host=host, offset_s=round(offset, 3), me=self.me)
            for host in sorted(set(self.skewed) - set(skewed)):
                log.info("clock_skew_over", host=host, me=self.me)
        self.skewed = skewed

    def _clock_alerts(self, now: float) -> None:
        """The leader alerts, once per host per CLOCK_REALERT_S, on a clock off segment
        time. A clock is never evidence about a host: no verdict comes from it."""
        for host, offset in sorted(self.skewed.items()):
            prefix = f"alert:clock:{host}:"
            if any(
                i.id.startswith(prefix) and now - i.created_ts < CLOCK_REALERT_S
                for i in self.state.intents.values()
            ):
                continue
            subject = f"{host}'s clock is {offset:+.3f} s off the segment's"
            body = (
                f"The wall clock of {host} differs from the median of the segment's clocks "
                f"by {offset:+.3f} s (limit max_clock_skew_s="
                f"{self.segment.timings.max_clock_skew_s:g} s), measured from probe round "
                "trips. meshha keeps working (probes do not depend on clocks and committed "
                f"times are corrected to the segment's), but fix NTP on {host}."
            )
            self.propose(
                E.intent(
                    ts=now,
                    by=self.me,
                    intent_id=IntentKey("alert", "clock", host=host, failure_ms=ms(now))
                    .at(1)
                    .format(),
                    action="alert",
                    host=host,
                    reason=subject,
                    params={"severity": "warning", "subject": subject, "body": body},
                ),
                ("clock-alert", host),
            )

    def _execute(self, nursery: trio.Nursery, now: float) -> None:
        if self.executor is None:  # dry run: say what would be done, once per intent
            for intent in pending_intents(self.state):
                if intent.id not in self._dry_logged:
                    if len(self._dry_logged) > 10_000:  # bounded: forget what is no longer pending
                        self._dry_logged &= {i.id for i in pending_intents(self.state)}
                    self._dry_logged.add(intent.id)
                    log.info(
                        "dry_run_intent",
                        intent=intent.id,
                        action=intent.action,
                        host=intent.host,
                        vm=intent.vm,
                        target=intent.target,
                        reason=intent.reason,
                    )
            return
        evac_running = sum(
            1 for i in self._running if (k := IntentKey.parse_or_none(i)) and k.step == "evacuate"
        )
        other_running = len(self._running) - evac_running
        for intent in pending_intents(self.state):
            if intent.id in self._running:
                continue
            if intent.action == "evacuate":
                if evac_running >= self.segment.recovery.max_parallel_evacuations:
                    continue
                evac_running += 1
            else:
                if other_running >= OTHER_PARALLEL:
                    continue
                other_running += 1
            scope = trio.CancelScope()
            self._running[intent.id] = scope
            nursery.start_soon(self._run_intent, intent, scope)

    async def _run_intent(self, intent: Intent, scope: trio.CancelScope) -> None:
        assert self.executor is not None
        try:
            with scope:
                result = await self.executor.execute(intent, self.state, self.p.now)
                self.stats.executed += 1
                if self.p.log.is_leader:
                    await self.p.log.propose(
                        result, timeout_s=max(2.0, 2 * self.segment.timings.election_timeout_s)
                    )
        except MeshhaError as err:  # the result could not be committed: the intent stays pending
            self.stats.error("result_commit", err, self.p.now(), intent=intent.id)
        finally:
            self._running.pop(intent.id, None)

    def _stop_running(self, why: str) -> None:
        for scope in self._running.values():
            scope.cancel()

    async def _isolation_loop(self) -> None:
        """A host cut off from a majority of voters on every network kills its own VMs
        within the self-fence deadline; the majority may then evacuate them even when
        this host's BMC cannot be reached."""
        t = self.segment.timings
        others = self.prober.majority_others
        prev = trio.current_time()
        while True:
            await trio.sleep(self.prober.poll_interval_s)
            now_m = trio.current_time()
            self.beats["isolation"] = now_m
            if now_m - prev > self.prober.poll_interval_s + self.stalls.threshold_s:
                self._resumed_at = now_m  # whichever loop wakes first after a stall
            prev = now_m
            # Isolated: no majority of voters answered a probe for isolation_after_s
            # (counted from the last such answer, the signal the majority judges this host
            # by: its `last_heard`) *and* Raft has no quorum. Raft alone lags: a follower
            # keeps `has_quorum` for a quorum window after the leader's last heartbeat,
            # and the old "acked within isolation_after_s, counted from now" waited the
            # window twice: the self-fence came after the majority's fence on a lying BMC
            # and its evacuation (a VM ran twice: nemesis seed 268). The quorum window is
            # shorter than isolation_after_s (config/checks.py), so it does not delay the
            # self-fence; it does keep a host whose probes went stale while Raft still
            # carries the segment's traffic (seen once in the lab, after a partition
            # healed) from destroying its VMs.
            contact = min(self.prober.majority_contact(others), now_m)
            quorum = self.p.log.has_quorum
            if quorum or now_m - contact < t.isolation_after_s:
                self._last_contact = max(self._last_contact, contact)
                self.contact_m = now_m if quorum else max(self.contact_m, contact)
                if self.isolated:
                    self.isolated = False
                    self._back = await self._back_entry()
                self._report_back()
                continue
            resumed = now_m - self._resumed_at < 2 * t.probe_interval_s + t.probe_timeout_s
            if resumed and now_m - self._last_contact < t.self_fence_deadline_s - (
                t.isolation_after_s + t.max_clock_skew_s
            ):
                # This agent has just come back from its own stall: the silence was its
                # own. Let probes and Raft answer first; past this bound the majority
                # may count on our self-fence already, so then it happens at once.
                continue
            if not self.isolated and now_m - self._last_contact >= t.isolation_after_s:
                self.isolated = True
                await self._self_fence()

    async def _self_fence(self) -> None:
        destroyed: list[str] = []
        if self.p.hypervisor is not None:
            try:
                destroyed = await self.p.hypervisor.destroy_all()
            except MeshhaError as err:
                log.error("self_fence_failed", error=str(err))
        self.stats.self_fences += 1
        self._destroyed = (self.p.now(), destroyed)
        log.warning("self_fenced", host=self.me, destroyed=len(destroyed))
        self.propose(  # rarely commits: an isolated host has no quorum
            E.isolation(
                ts=self.p.now(),
                by=self.me,
                host=self.me,
                on=True,
                reason=f"lost a majority on every network: destroyed {len(destroyed)} VMs",
                vms=[{"vm": vm} for vm in destroyed],
            )
        )

    async def _back_entry(self) -> Entry:
        """The `isolation` off entry: with the VMs destroyed while isolated and their HA
        policy (Nova answers again), so the leader restarts the ones nobody evacuated."""
        at, destroyed = self._destroyed
        found: dict[str, dict[str, Any]] = {}

        async def look(vm: str) -> None:
            found[vm] = await self._vm_policy(vm)

        # Side by side (the Nova driver bounds how many at once), within one bound: one
        # after the other, a loaded Nova answered too few of them in time, and a VM whose
        # policy is unknown falls back to the default (often HA off: never restarted).
        self.beats["isolation"] = trio.current_time()
        with trio.move_on_after(max(2.0, self.segment.timings.election_timeout_s)):
            async with trio.open_nursery() as nursery:
                for vm in destroyed:
                    nursery.start_soon(look, vm)
        self.beats["isolation"] = trio.current_time()
        vms: list[dict[str, Any]] = [
            {"vm": vm, **({"ha": found[vm]["ha"]} if "ha" in found.get(vm, {}) else {})}
            for vm in destroyed
        ]
        return E.isolation(
            ts=self.p.now(),
            by=self.me,
            host=self.me,
            on=False,
            reason=(
                f"contact with a majority is back; destroyed {len(destroyed)} VMs "
                f"when it isolated itself at {at:.3f}"
            ),
            vms=vms,
        )

    def _report_back(self) -> None:
        """Propose the off entry until it is committed (one proposal at a time)."""
        back = self._back
        if back is None:
            return
        sf = self.state.self_fences.get(self.me)
        if sf is not None and sf.ts == back["ts"]:
            self._back = None
            return
        self.propose(back, key=("isolation", back["ts"]))

    async def _vm_event_loop(self) -> None:
        assert self.p.vm_events is not None
        async for ev in self.p.vm_events:
            now = self.p.now()
            if ev.kind in ("hypervisor_down", "hypervisor_up"):
                # Not a report of its own: the supervisor checks now and reports the
                # outage once (probes/supervisor.py).
                log.info(
                    "libvirt_connection", kind=ev.kind, detail=ev.detail
                )  # not event=: the message
                if ev.kind == "hypervisor_down" and self.supervisor is not None:
                    self.supervisor.wake()
                continue
            entry = E.vm_failure(
                ts=now, by=self.me, host=self.me, vm=ev.vm or "", event=ev.kind, detail=ev.detail
            )
            entry.update(await self._vm_policy(ev.vm))
            self.propose(entry)

    async def _vm_policy(self, vm: str | None) -> dict[str, Any]:
        """The VM's HA policy, if Nova can tell us now; decide falls back to defaults."""
        d = self.p.drivers
        if d is None or vm is None:
            return {}
        from meshha.recovery.policy import VmContext, resolve

        try:
            server = await d.nova.get_server(vm)
        except MeshhaError:
            return {}
        p = resolve(
            self.segment.policy,
            VmContext(server=server, region=self.segment.region, cell=self.segment.cell),
        )
        return {"ha": p.ha, "on_vm_failure": p.on_vm_failure, "priority": p.priority}

    async def _process_loop(self) -> None:
        """One supervision path (probes/supervisor.py): bounded restarts, at most one
        failure and one recovery report per outage, none while in maintenance."""
        from meshha.probes.supervisor import ProcessReport, Supervisor

        assert self.p.processes is not None

        def report(r: ProcessReport) -> None:
            self.propose(
                E.process_failure(
                    ts=self.p.now(),
                    by=self.me,
                    host=self.me,
                    process=r.name,
                    outcome=r.outcome,
                    detail=r.detail,
                    since=r.since,
                )
            )

        self.supervisor = Supervisor(
            self.p.processes,
            replace(self.segment.processes, names=self.supervised_names),
            report,
            now=self.p.now,
            paused=lambda: self.state.in_maintenance(self.me),
        )
        await self.supervisor.run()

    @property
    def supervised_names(self) -> tuple[str, ...]:
        """The processes this agent supervises: the segment's list, with the libvirt
        daemon this host really runs (libvirtd or virtqemud: main.py) when it was told."""
        if self.p.process_names is not None:
            return self.p.process_names
        return self.segment.processes.names

    # -- reading -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        st = self.state
        return {
            "host": self.me,
            "index": st.index,
            "isolated": self.isolated,
            "watchdog": self.keepalive.status(),
            "verdicts": {
                h: {"kind": v.kind, "networks": list(v.networks), "reason": v.reason}
                for h, v in st.verdicts.items()
            },
            "maintenance": {h: asdict(m) for h, m in st.maintenance.items()},
            "fenced": {h: asdict(f) for h, f in st.fenced.items()},
            "roles": dict(st.roles),
            "brake": asdict(st.brake),
        }


def _key(entry: Entry) -> Any:
    kind = entry["kind"]
    if kind == "intent":
        return ("intent", entry["intent"])
    if kind == "verdict":
        return ("verdict", entry["host"], entry["verdict"], tuple(entry["networks"]))
    if kind in ("fenced", "reserve"):
        return (kind, entry["host"], entry.get("role"))
    if kind == "brake":
        return ("brake", entry["on"])
    return None
