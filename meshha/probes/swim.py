"""SWIM-style peer probing, as a pure state machine (no sockets, no clock).

The caller feeds it `tick(now)` every `probe_interval_s` and every datagram it receives
(`receive`), and carries out the sends it returns. The same code runs over UDP in the
agent and over the in-memory network in the simulator.

Per period and per network a host probes:
- `fanout` peers in a shuffled round-robin (so every peer is probed by someone about
  every period, whatever the segment size: load per host does not grow with N),
- one voter, round-robin (so each host knows whether it still reaches a majority, which
  drives its isolation response),
- every peer it is *watching*: those it has missed at least once, those it was asked to
  probe for someone else, and those the segment suspects (committed losses).
A direct ping that is not acked within `probe_timeout_s` is followed by ping-reqs through
`indirect_probes` helpers, voters first, so the voters whose opinion decides a verdict are
already watching the suspect when the first observer reports it. A round with no ack by
the end of the period is a miss; `misses_before_suspect` consecutive misses make the
peer *lost* on that network (since the first miss), and one ack makes it reachable again.

An ack that arrives after its round was closed as a miss (jitter, a queue, a helper's
slow relay) still counts as one, for `late_ack_s` after its ping was sent (the longer of
`misses_before_suspect` periods and the profile's `stall_grace_s`; at most MAX_CLOSED
rounds kept): it echoes a challenge this host sent, so it proves the peer was alive
after that ping. Without it, a link with 10 % loss and 50 ms of
jitter under lan-fast (0.1 s for the direct ack, 0.1 s more for the four hops of an
indirect one) gave about 130 false "lost" observations an hour, each followed by its
"regained" (sim scenario lossy-network-hour); with it, none. A dead peer sends no ack,
late or not: detection is as fast as before.

Why as long as the stall grace: on a loaded machine (2 cores, load 15) a lan-fast agent's
answers queued for 1 to 2.6 s behind its own backlog (measured: bench/stall_ride.py,
RESULTS.md). Acks that late were thrown away, so every peer stayed "lost" from its first
miss on; its kernel answered the knocks (meshha.probes.liveness), so it was held stalled
for `stall_grace_s`, then reported with that old `since`: `failed` at once and a fence,
for a host that had answered every ping. A late ack is evidence of life whatever its
delay; the only cost is on the observer's side: a host that dies right after answering
is found later by the time its last ack spent in *this observer's* queues, which is only
long when the observer itself is slow (Lifeguard: a slow observer should accuse late).

And one ping in flight per target and network: a ping-req for a target this host is
already pinging (for itself or for another requester) joins that ping instead of sending
another (up to MAX_RELAYS requesters; the ack is relayed to each). Without it, a slow
peer drew every observer's ping plus `indirect_probes` helpers' pings per observer,
each period, on every network: the slower it answered, the more it was sent, a probe
storm that fed itself on a loaded machine.

Local health (Lifeguard's awareness, memberlist awareness.go). `health` is a score from 0
(healthy) to MAX_HEALTH: +1 for each ack that came back late and each stall of this
agent's own (`pause`) of a probe timeout or more, -1 for each direct ack on time. The period and the probe timeout
are scaled by (health + 1): an agent whose answers or whose own loop run late probes
less often and waits longer before it counts a miss, so it neither accuses its peers of
its own slowness nor feeds the storm above. A probe that gets no answer at all does not
change the score: a dead peer sends nothing, so the healthy observers, whose acks from
everyone else come on time, stay at 0 and find it as fast as before.
"""

from __future__ import annotations

import math
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from meshha.config.model import Segment, majority

MAX_CLOSED = 4096  # rounds closed as a miss whose late ack is still accepted (bound)
MAX_RELAYS = 8  # requesters joined to one ping in flight (bound)
MAX_HEALTH = 8  # local health score: period and timeout scaled up to 9x (memberlist's 8)


@dataclass(frozen=True)
class Send:
    network: str
    to: str
    msg: dict[str, Any]


@dataclass
class _Pending:
    target: str
    network: str
    started: float
    deadline: float
    indirect_sent: bool = False
    requester: str | None = None  # set when we probe on someone else's behalf
    requester_id: int = 0
    helpers: tuple[str, ...] = ()  # who we asked to probe for us: only they may relay
    joined: list[tuple[str, int]] = field(default_factory=list)  # more requesters (doc)


@dataclass
class PeerView:
    reachable: bool = True
    since: float = 0.0
    misses: int = 0
    first_miss: float = 0.0
    last_miss: float = 0.0
    last_ack: float | None = None


@dataclass
class ProbeStats:
    sent: int = 0
    received: int = 0
    rounds: int = 0
    misses: int = 0
    by_type: dict[str, int] = field(default_factory=dict)


class Prober:
    def __init__(self, segment: Segment, me: str, *, seed: int = 0, fanout: int = 1) -> None:
        self.me = me
        self.t = segment.timings
        self.fanout = fanout
        self.rng = random.Random(f"{seed}:{me}")
        me_host = segment.host(me)
        self.networks = me_host.networks
        self.peers: dict[str, tuple[str, ...]] = {}
        for net in self.networks:
            self.peers[net] = tuple(
                h.name for h in segment.hosts if h.name != me and h.address(net) is not None
            )
        self.voters = tuple(v for v in segment.voters if v != me)
        # How many voters besides this host make a majority (`majority_contact`).
        self.majority_others = majority(len(segment.voters)) - (1 if me in segment.voters else 0)
        self._next_voter_check = float("-inf")
        self._order: dict[str, list[str]] = {n: [] for n in self.networks}
        self._voter_pos = 0
        # Ping ids are the challenges of challenge-response: an ack counts only if it
        # echoes the id of a ping still pending, so ids start at a random 62-bit base
        # (drawn from `seed`: the daemon passes a fresh one per run), and nothing a peer
        # sent before this run, replayed now, answers one (meshha.probes.wire).
        self._next_id = self.rng.getrandbits(62) + 1
        self._next_period = float("-inf")
        self.poll_interval_s = min(self.t.probe_timeout_s, self.t.probe_interval_s / 2)
        self.late_ack_s = max(
            self.t.probe_interval_s * self.t.misses_before_suspect, self.t.stall_grace_s
        )
        self._pending: dict[int, _Pending] = {}
        self._closed: OrderedDict[int, _Pending] = OrderedDict()  # missed: a late ack counts
        self.view: dict[tuple[str, str], PeerView] = {}
        self.watch_extra: set[str] = set()  # suspects from committed state
        self._asked: dict[tuple[str, str], float] = {}  # (target, net) -> until
        self.stats = ProbeStats()
        self.health = 0  # local health score (module doc)

    # -- the two inputs --------------------------------------------------------------

    def tick(self, now: float) -> list[Send]:
        """Close the rounds whose time is up and, once per period, start new probes.
        Call it every `probe_timeout_s` or more often (`poll_interval_s`)."""
        out: list[Send] = []
        self._close_rounds(now, out)
        out += self._check_voters(now)
        if now + 1e-9 < self._next_period:
            self.stats.sent += len(out)
            return out
        self._next_period = now + self._scaled(self.t.probe_interval_s)
        self.stats.rounds += 1
        for net in self.networks:
            for target in self._targets(net, now):
                if not any(
                    p.target == target and p.network == net and p.requester is None
                    for p in self._pending.values()
                ):
                    out.append(self._ping(net, target, now))
        self.stats.sent += len(out)
        return out

    def receive(self, network: str, sender: str, msg: dict[str, Any], now: float) -> list[Send]:
        self.stats.received += 1
        t = msg.get("t")
        if not isinstance(msg.get("id"), int) or isinstance(msg.get("id"), bool):
            self.stats.by_type["malformed"] = self.stats.by_type.get("malformed", 0) + 1
            return []  # an authenticated but malformed probe: ignore it
        self.stats.by_type[str(t)] = self.stats.by_type.get(str(t), 0) + 1
        out: list[Send] = []
        if t == "ping":
            out.append(Send(network, sender, {"t": "ack", "id": msg.get("id", 0)}))
        elif t == "req":
            target = msg.get("target")
            if isinstance(target, str) and target in self.peers.get(network, ()):
                joined = self._in_flight(target, network, now)
                if joined is not None and len(joined.joined) < MAX_RELAYS:
                    joined.joined.append((sender, int(msg.get("id", 0))))
                    self.stats.by_type["req_joined"] = self.stats.by_type.get("req_joined", 0) + 1
                else:
                    send = self._ping(network, target, now)
                    helping = self._pending[send.msg["id"]]
                    helping.requester, helping.requester_id = sender, int(msg.get("id", 0))
                    helping.indirect_sent = True  # a helper does not recurse
                    out.append(send)
                # A helper keeps watching the suspect for a few periods.
                self._asked[(target, network)] = now + self.t.probe_interval_s * (
                    self.t.misses_before_suspect + 1
                )
        elif t == "ack":
            pid = int(msg.get("id", -1))
            pend = self._pending.pop(pid, None)
            late = pend is None and pid in self._closed
            if late:
                pend = self._closed[pid]  # a late ack (module doc)
            # A direct ack must come from the target itself; a relayed one names its helper.
            genuine = (
                pend is not None
                and pend.network == network
                and (sender == pend.target or (msg.get("via") == sender and sender in pend.helpers))
            )
            if pend is not None and genuine:
                if late:
                    del self._closed[pid]
                    self.stats.by_type["late_ack"] = self.stats.by_type.get("late_ack", 0) + 1
                    self._health(+1)
                elif sender == pend.target and pend.requester is None:
                    self._health(-1)  # our own direct probe, answered on time
                self._acked(pend.target, network, now)
                relays = [(pend.requester, pend.requester_id)] if pend.requester else []
                for requester, rid in relays + pend.joined:
                    relay = {"t": "ack", "id": rid, "via": self.me}
                    out.append(Send(network, requester, relay))
            elif pend is not None and not late:
                self._pending[pid] = pend  # not for this one: keep waiting
        self.stats.sent += len(out)
        return out

    def pause(self, gap_s: float) -> None:
        """This host stood still for `gap_s` (meshha.probes.liveness.StallMeter): the
        pending probes waited that much less than it seems, so their deadlines move by
        the gap, and acks queued during the stall still count."""
        for p in self._pending.values():
            p.started += gap_s
            p.deadline += gap_s
        if gap_s >= self.t.probe_timeout_s:
            self._health(+1)  # long enough to have cost an ack its deadline

    # -- what the agent reads --------------------------------------------------------

    def peer(self, target: str, network: str) -> PeerView:
        return self.view.setdefault((target, network), PeerView())

    def lost(self) -> dict[tuple[str, str], float]:
        """(target, network) -> since, for peers currently lost."""
        return {k: v.since for k, v in self.view.items() if not v.reachable}

    def _check_voters(self, now: float) -> list[Send]:
        """Once no majority of voters has answered for half of `isolation_after_s`, ping
        every voter on every network once per probe interval, unscaled by local health:
        the isolation check (agent/node.py) counts from the last answers of a majority,
        and a host must not destroy its VMs because it asked too few voters (a slow
        host probes less often: the lab's nemesis found a reserve that self-fenced its
        evacuated VMs during a leader election, its last answers 6 s old)."""
        contact = self.majority_contact(self.majority_others)
        if contact == -math.inf:  # just started: the rounds find them first
            return []
        if now - contact < self.t.isolation_after_s / 2 or now < self._next_voter_check:
            return []
        self._next_voter_check = now + self.t.probe_interval_s
        self.stats.by_type["voter_check"] = self.stats.by_type.get("voter_check", 0) + 1
        return [
            self._ping(net, v, now)
            for net in self.networks
            for v in self.voters
            if v in self.peers[net] and self._in_flight(v, net, now) is None
        ]

    def majority_contact(self, others: int) -> float:
        """The last time at which `others` voters besides this host had acked one of our
        probes (on any network): the `others`-th most recent of their last acks. Since
        then, no majority has answered. -inf when fewer ever acked; inf when none is
        needed. (Not "acked within a window, counted now": the isolation check would
        then wait its window twice, and self-fence long after the majority could
        count on it.)"""
        if others <= 0:
            return math.inf
        last: dict[str, float] = {}
        for (t, _), v in self.view.items():
            if t in self.voters and t != self.me and v.last_ack is not None:
                last[t] = max(last.get(t, -math.inf), v.last_ack)
        acks = sorted(last.values(), reverse=True)
        return acks[others - 1] if len(acks) >= others else -math.inf

    # -- internals -------------------------------------------------------------------

    def _targets(self, net: str, now: float) -> list[str]:
        peers = self.peers[net]
        if not peers:
            return []
        chosen: list[str] = []
        order = self._order[net]
        for _ in range(min(self.fanout, len(peers))):
            if not order:
                order.extend(peers)
                self.rng.shuffle(order)
            chosen.append(order.pop())
        if self.voters:
            v = self.voters[self._voter_pos % len(self.voters)]
            if net == self.networks[0]:
                self._voter_pos += 1
            if v in peers:
                chosen.append(v)
        for (target, n), pv in self.view.items():
            if n == net and (pv.misses > 0 or not pv.reachable):
                chosen.append(target)
        for (target, n), until in list(self._asked.items()):
            if until < now:
                del self._asked[(target, n)]
            elif n == net:
                chosen.append(target)
        # sorted: a set's order follows PYTHONHASHSEED and would reach the wire
        chosen += [s for s in sorted(self.watch_extra) if s in peers]
        return list(dict.fromkeys(chosen))  # dedup, keep order

    def _scaled(self, seconds: float) -> float:
        return seconds * (self.health + 1)

    def _health(self, delta: int) -> None:
        self.health = min(MAX_HEALTH, max(0, self.health + delta))

    def _in_flight(self, target: str, net: str, now: float) -> _Pending | None:
        """A ping to `target` on `net` still waiting for its direct ack, if any."""
        for p in self._pending.values():
            if (
                p.target == target
                and p.network == net
                and now < p.started + self._scaled(self.t.probe_timeout_s)
            ):
                return p
        return None

    def _ping(self, net: str, target: str, now: float) -> Send:
        pid = self._next_id
        self._next_id += 1
        self._pending[pid] = _Pending(target, net, now, now + self._scaled(self.t.probe_timeout_s))
        return Send(net, target, {"t": "ping", "id": pid})

    def _close_rounds(self, now: float, out: list[Send]) -> None:
        for pid, p in list(self._pending.items()):
            if now < p.deadline:
                continue
            if not p.indirect_sent and self.t.indirect_probes > 0:
                helpers = self._helpers(p.network, p.target)
                p.helpers = tuple(helpers)
                for h in helpers:
                    out.append(Send(p.network, h, {"t": "req", "id": pid, "target": p.target}))
                p.indirect_sent = True
                p.deadline = p.started + self._scaled(self.t.probe_interval_s)
                if helpers:
                    continue
            del self._pending[pid]
            self._closed[pid] = p
            self._missed(p.target, p.network, p.started)
        keep_s = self.late_ack_s
        while self._closed and (
            len(self._closed) > MAX_CLOSED
            or next(iter(self._closed.values())).started < now - keep_s
        ):
            self._closed.popitem(last=False)  # oldest first (closed about in start order)

    def _helpers(self, net: str, target: str) -> list[str]:
        peers = [h for h in self.peers[net] if h != target]
        voters = [h for h in peers if h in self.voters]
        others = [h for h in peers if h not in self.voters]
        self.rng.shuffle(voters)
        self.rng.shuffle(others)
        return (voters + others)[: self.t.indirect_probes]

    def _missed(self, target: str, net: str, at: float) -> None:
        """One miss per peer per period, however many pings failed in it (our own round,
        and those we sent as a helper for others): the count means periods of silence."""
        pv = self.peer(target, net)
        if pv.misses and at - pv.last_miss < self.t.probe_interval_s * 0.99:
            return
        pv.last_miss = at
        self.stats.misses += 1
        if pv.misses == 0:
            pv.first_miss = at
        pv.misses += 1
        if pv.reachable and pv.misses >= self.t.misses_before_suspect:
            pv.reachable, pv.since = False, pv.first_miss

    def _acked(self, target: str, net: str, now: float) -> None:
        pv = self.peer(target, net)
        pv.last_ack = now
        pv.misses = 0
        if not pv.reachable:
            pv.reachable, pv.since = True, now
