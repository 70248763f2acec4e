"""The SWIM probe state machine: rounds, misses and `lost`, indirect probes through
helpers (voters first), acks that must be genuine, and a per-period cost that does not
grow with the segment."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshha.config.model import Segment
from meshha.config.synthetic import synthetic_segment
from meshha.probes.swim import MAX_HEALTH, Prober, Send

ONE_NET = {"admin": "alert"}
SEG = synthetic_segment(hosts=5, networks=ONE_NET)  # five voters, lan-fast
T = SEG.timings  # interval 0.2 s, timeout 0.1 s, 3 misses, 3 indirect probes


class Peers:
    """One prober under test; every other host answers what it is sent (unless down),
    and never probes anyone itself, so what the prober sees is its own rounds only."""

    def __init__(self, seg: Segment = SEG, me: str = "host1", **kw: Any) -> None:
        self.seg = seg
        self.p = Prober(seg, me, **kw)
        self.me = me
        self.down: set[str] = set()
        self.cut: set[str] = set()  # peers whose link to `me` is down (helpers still reach them)
        self.now = 0.0
        self.sent: list[tuple[float, Send]] = []
        self.per_tick: list[int] = []

    def tick(self) -> None:
        out = self.p.tick(self.now)
        self.per_tick.append(len(out))
        self.deliver(out)

    def deliver(self, sends: list[Send]) -> None:
        for s in sends:
            self.sent.append((self.now, s))
            if s.to in self.down:
                continue
            if s.msg["t"] == "ping" and s.to not in self.cut:
                self.p.receive(s.network, s.to, {"t": "ack", "id": s.msg["id"]}, self.now)
            elif s.msg["t"] == "req" and s.msg["target"] not in self.down:
                relay = {"t": "ack", "id": s.msg["id"], "via": s.to}
                self.p.receive(s.network, s.to, relay, self.now)

    def run(self, seconds: float) -> None:
        # Twice per poll interval, so a round closes right after its deadline (ticking
        # exactly on deadlines lets float rounding slip a round by a poll interval).
        end = self.now + seconds
        while self.now < end - 1e-9:
            self.tick()
            self.now = round(self.now + self.p.poll_interval_s / 2, 6)

    def pings_to(self, host: str) -> list[float]:
        return [t for t, s in self.sent if s.to == host and s.msg["t"] == "ping"]


class Mesh:
    """Every host runs a prober; messages are delivered at once unless a host is down."""

    def __init__(self, seg: Segment, **kw: Any) -> None:
        self.seg = seg
        self.probers = {h: Prober(seg, h, **kw) for h in seg.host_names}
        self.down: set[str] = set()
        self.now = 0.0
        self.first_lost: dict[str, tuple[float, float]] = {}  # observer -> (when, since)

    def run(self, seconds: float, target: str) -> None:
        end = self.now + seconds
        while self.now < end - 1e-9:
            for h, p in self.probers.items():
                if h in self.down:
                    continue
                queue = [(h, s) for s in p.tick(self.now)]
                while queue:
                    frm, s = queue.pop(0)
                    if s.to in self.down or frm in self.down:
                        continue
                    out = self.probers[s.to].receive(s.network, frm, s.msg, self.now)
                    queue += [(s.to, o) for o in out]
            for h, p in self.probers.items():
                lost = p.lost()
                for (t, _), since in lost.items():
                    if t == target and h not in self.first_lost:
                        self.first_lost[h] = (self.now, since)
            self.now = round(self.now + T.probe_interval_s / 2, 6)


# -- rounds, misses, lost ----------------------------------------------------------------


def test_a_dead_peer_is_lost_after_misses_before_suspect_rounds_since_the_first_miss() -> None:
    w = Peers()
    w.down.add("host2")
    step = w.p.poll_interval_s / 2
    while w.p.peer("host2", "admin").reachable:
        w.run(step)
        assert w.now < 10
    view = w.p.peer("host2", "admin")
    pings = w.pings_to("host2")
    assert view.misses == T.misses_before_suspect
    assert view.since == view.first_miss == pings[0]
    # One direct ping per round: lost when the third round closed, a period after it began.
    assert len(pings) == T.misses_before_suspect
    closed = pings[-1] + T.probe_interval_s
    assert closed - 1e-9 <= w.now - step <= closed + step + 1e-9
    assert w.p.lost() == {("host2", "admin"): pings[0]}


def test_fewer_misses_than_the_limit_are_not_a_loss() -> None:
    w = Peers()
    w.down.add("host2")
    w.run(2)
    assert not w.p.peer("host2", "admin").reachable
    w2 = Peers()
    w2.down.add("host2")
    # Stop just before the third round closes.
    while w2.p.peer("host2", "admin").misses < T.misses_before_suspect - 1:
        w2.run(w2.p.poll_interval_s)
    assert w2.p.peer("host2", "admin").reachable
    w2.down.clear()
    w2.run(1)
    v = w2.p.peer("host2", "admin")
    assert v.reachable and v.misses == 0


def test_one_ack_makes_a_lost_peer_reachable_again() -> None:
    w = Peers()
    w.down.add("host2")
    w.run(2)
    assert ("host2", "admin") in w.p.lost()
    w.down.clear()
    w.run(T.probe_interval_s)  # it is watched: probed every period
    v = w.p.peer("host2", "admin")
    assert v.reachable and v.misses == 0 and v.last_ack is not None
    assert v.since == v.last_ack  # reachable since the ack
    assert w.p.lost() == {}


def test_every_peer_is_probed_round_robin_and_the_voters_in_turn() -> None:
    seg = synthetic_segment(hosts=12, voters=5, networks=ONE_NET)
    w = Peers(seg)
    w.run(11 * T.probe_interval_s)
    probed = {s.to for _, s in w.sent if s.msg["t"] == "ping"}
    assert probed == set(seg.host_names) - {"host1"}
    voters = [s.to for _, s in w.sent if s.msg["t"] == "ping" and s.to in seg.voters]
    assert len(voters) >= 11  # one voter a period, besides the round-robin


def test_majority_contact_is_when_the_last_of_a_majority_answered() -> None:
    w = Peers()  # 5 voters: this host and 2 others are a majority
    w.down.add("host3")
    w.run(2)
    last = {
        t: max(v.last_ack for (h, _), v in w.p.view.items() if h == t and v.last_ack)
        for t in ("host2", "host4", "host5")
    }
    assert w.p.majority_contact(2) == sorted(last.values())[-2]
    assert w.now - w.p.majority_contact(2) < T.isolation_after_s / 2  # well in contact
    assert w.p.majority_contact(4) == -math.inf  # host3 never answered
    assert w.p.majority_contact(0) == math.inf
    # Everyone goes silent: the contact stays where it was (no window counted from now).
    before = w.p.majority_contact(2)
    w.down.update({"host2", "host4", "host5"})
    w.run(5)
    assert w.p.majority_contact(2) == before


def test_a_slow_host_keeps_asking_the_voters_often_enough_not_to_isolate() -> None:
    """At full local health a host probes 9x less often; its last answers from a
    majority of voters would then get older than isolation_after_s while every voter is
    fine (3.6 s against 2 s here), and it would destroy its VMs at the next leader
    election (no quorum for a moment). Once they are half that old, it asks every voter
    at the unscaled period."""
    w = Peers()
    w.run(1)
    worst = 0.0
    for _ in range(300):
        w.p.health = MAX_HEALTH  # held there: its acks would bring it down
        w.run(T.probe_timeout_s)
        worst = max(worst, w.now - w.p.majority_contact(w.p.majority_others))
    assert worst < T.isolation_after_s * 0.75, worst
    assert w.p.stats.by_type["voter_check"] > 0


def test_committed_suspects_are_watched_every_period() -> None:
    seg = synthetic_segment(hosts=40, networks=ONE_NET)
    w = Peers(seg)
    w.p.watch_extra = {"host30"}
    w.run(10 * T.probe_interval_s)
    assert len(w.pings_to("host30")) >= 10


# -- indirect probes ---------------------------------------------------------------------


def test_indirect_probes_go_through_voters_first() -> None:
    seg = synthetic_segment(hosts=8, voters=3, networks=ONE_NET)
    w = Peers(seg, me="host1")
    w.cut.add("host6")  # host1 cannot reach host6 directly; everyone else can
    w.p.watch_extra = {"host6"}
    w.run(T.probe_interval_s)
    reqs = [s for _, s in w.sent if s.msg["t"] == "req"]
    assert len(reqs) == T.indirect_probes
    assert {s.msg["target"] for s in reqs} == {"host6"}
    assert {s.to for s in reqs[:2]} == {"host2", "host3"}  # the other voters
    assert reqs[2].to not in seg.voters and reqs[2].to != "host6"
    # The helpers' relayed acks count: no miss.
    w.run(2)
    v = w.p.peer("host6", "admin")
    assert v.reachable and v.misses == 0


def test_without_helpers_a_timeout_is_a_miss_at_once() -> None:
    seg = synthetic_segment(hosts=2, networks=ONE_NET)
    w = Peers(seg)
    w.down.add("host2")
    w.run(T.probe_timeout_s + w.p.poll_interval_s)
    assert w.p.peer("host2", "admin").misses == 1
    assert [s for _, s in w.sent if s.msg["t"] == "req"] == []


def test_a_helper_probes_for_the_requester_and_relays_the_ack() -> None:
    helper = Prober(SEG, "host3")
    out = helper.receive("admin", "host1", {"t": "req", "id": 41, "target": "host2"}, 5.0)
    assert len(out) == 1 and out[0].to == "host2" and out[0].msg["t"] == "ping"
    relay = helper.receive("admin", "host2", {"t": "ack", "id": out[0].msg["id"]}, 5.01)
    assert relay == [Send("admin", "host1", {"t": "ack", "id": 41, "via": "host3"})]


def test_a_helper_does_not_recurse_and_keeps_watching() -> None:
    helper = Prober(SEG, "host3")  # no round of its own yet
    helper.receive("admin", "host1", {"t": "req", "id": 7, "target": "host2"}, 0.0)
    later = helper.tick(T.probe_timeout_s)  # its ping for host1 times out
    assert [s for s in later if s.msg["t"] == "req" and s.msg["target"] == "host2"] == []
    # It keeps probing host2 itself for the next few periods, as a voter should.
    watched = []
    for k in range(3, 16):
        watched += [s.to for s in helper.tick(k * T.probe_timeout_s / 2) if s.msg["t"] == "ping"]
    assert watched.count("host2") >= T.misses_before_suspect


def test_a_req_for_an_unknown_target_is_ignored() -> None:
    p = Prober(SEG, "host1")
    assert p.receive("admin", "host2", {"t": "req", "id": 1, "target": "host99"}, 0.0) == []
    assert p.receive("admin", "host2", {"t": "req", "id": 1, "target": "host1"}, 0.0) == []
    assert p.receive("storage", "host2", {"t": "req", "id": 1, "target": "host3"}, 0.0) == []


def test_a_ping_is_acked_with_its_id() -> None:
    p = Prober(SEG, "host1")
    assert p.receive("admin", "host4", {"t": "ping", "id": 99}, 0.0) == [
        Send("admin", "host4", {"t": "ack", "id": 99})
    ]


# -- acks must be genuine ----------------------------------------------------------------


def first_ping(p: Prober) -> Send:
    sends = p.tick(0.0)
    assert sends and sends[0].msg["t"] == "ping"
    return sends[0]


@pytest.mark.parametrize(
    ("sender", "network", "msg"),
    [
        ("host4", "admin", {"t": "ack"}),  # from someone else, not relayed
        ("TARGET", "admin", {"t": "ack", "id_delta": 1000}),  # an id never sent
        ("TARGET", "storage", {"t": "ack"}),  # on another network
        ("host4", "admin", {"t": "ack", "via": "host5"}),  # names a helper it is not
    ],
)
def test_a_forged_ack_does_not_count(sender: str, network: str, msg: dict[str, Any]) -> None:
    seg = synthetic_segment(hosts=5)  # admin, storage, tenant
    p = Prober(seg, "host1")
    ping = first_ping(p)
    target = ping.to
    forged = {k: v for k, v in msg.items() if k != "id_delta"}
    forged["id"] = ping.msg["id"] + msg.get("id_delta", 0)
    p.receive(network, target if sender == "TARGET" else sender, forged, 0.01)
    assert p.peer(target, "admin").last_ack is None
    # The round is still open: the genuine ack counts.
    p.receive("admin", target, {"t": "ack", "id": ping.msg["id"]}, 0.02)
    assert p.peer(target, "admin").last_ack == 0.02


def test_a_duplicated_ack_counts_once() -> None:
    p = Prober(SEG, "host1")
    ping = first_ping(p)
    ack = {"t": "ack", "id": ping.msg["id"]}
    p.receive("admin", ping.to, ack, 0.01)
    p.receive("admin", ping.to, ack, 0.05)
    assert p.peer(ping.to, "admin").last_ack == 0.01


def missed_round(p: Prober) -> Send:
    """A first direct ping whose round (direct, then indirect) closed as a miss."""
    ping = first_ping(p)
    p.tick(T.probe_timeout_s)  # ping-reqs to helpers
    p.tick(T.probe_interval_s)  # the round closes: a miss (and the next round starts)
    assert p.peer(ping.to, "admin").misses == 1
    return ping


def test_a_late_ack_still_counts_once() -> None:
    """Jitter or a queue: the ack echoes our challenge after its round closed. It proves
    the peer was alive after the ping, so it ends the misses (issue: lossy-network-hour
    flooded the log with lost/regained pairs without this)."""
    p = Prober(SEG, "host1")
    ping = missed_round(p)
    forged = {"t": "ack", "id": ping.msg["id"]}
    p.receive("admin", "host5" if ping.to != "host5" else "host4", forged, 0.25)
    assert p.peer(ping.to, "admin").misses == 1  # not from the target, not relayed
    p.receive("admin", ping.to, {"t": "ack", "id": ping.msg["id"]}, 0.26)
    v = p.peer(ping.to, "admin")
    assert v.misses == 0 and v.last_ack == 0.26
    assert p.stats.by_type["late_ack"] == 1
    p.receive("admin", ping.to, {"t": "ack", "id": ping.msg["id"]}, 0.27)
    assert v.last_ack == 0.26 and p.stats.by_type["late_ack"] == 1  # once


def test_a_late_relayed_ack_counts_from_an_asked_helper_only() -> None:
    seg = synthetic_segment(hosts=6, networks=ONE_NET)  # one host is never asked
    p = Prober(seg, "host1")
    first = first_ping(p)
    reqs = p.tick(T.probe_timeout_s)
    helpers = [s.to for s in reqs if s.msg["t"] == "req" and s.msg["target"] == first.to]
    assert helpers
    p.tick(T.probe_interval_s)
    never = next(h for h in seg.host_names if h not in (*helpers, first.to, "host1"))
    relay = {"t": "ack", "id": first.msg["id"]}
    p.receive("admin", never, {**relay, "via": never}, 0.25)
    assert p.peer(first.to, "admin").misses == 1
    p.receive("admin", helpers[0], {**relay, "via": helpers[0]}, 0.26)
    assert p.peer(first.to, "admin").misses == 0


def test_an_ack_later_than_the_late_ack_window_does_not_count() -> None:
    p = Prober(SEG, "host1")
    assert p.late_ack_s == max(T.probe_interval_s * T.misses_before_suspect, T.stall_grace_s)
    ping = missed_round(p)
    too_late = p.late_ack_s + T.probe_interval_s
    p.tick(too_late)  # the closed round is forgotten
    misses = p.peer(ping.to, "admin").misses
    p.receive("admin", ping.to, {"t": "ack", "id": ping.msg["id"]}, too_late + 0.01)
    assert p.peer(ping.to, "admin").misses == misses > 0


def test_a_relayed_ack_from_a_host_never_asked_to_help_does_not_count() -> None:
    p = Prober(SEG, "host1")
    ping = first_ping(p)  # direct phase: no ping-req sent to anyone yet
    p.receive("admin", "host4", {"t": "ack", "id": ping.msg["id"], "via": "host4"}, 0.01)
    assert p.peer(ping.to, "admin").last_ack is None


msg_values = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=4)
    | st.lists(st.integers(), max_size=2)
)


@settings(max_examples=150, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "t": st.sampled_from(["ping", "ack", "req", "x"]) | msg_values,
            "id": st.integers(min_value=0, max_value=5) | msg_values,
            "target": st.sampled_from(["host1", "host2", "host3"]) | msg_values,
            "via": st.sampled_from(["host2", "host3"]) | msg_values,
        },
    ),
    st.sampled_from(["host2", "host3", "nobody"]),
    st.sampled_from(["admin", "storage"]),
)
def test_any_authenticated_but_malformed_message_is_harmless(
    msg: dict[str, Any], sender: str, network: str
) -> None:
    p = Prober(SEG, "host1")
    p.tick(0.0)
    out = p.receive(network, sender, msg, 0.01)
    assert all(isinstance(s, Send) for s in out)
    p.tick(1.0)  # and the machine still runs


# -- cost per period ---------------------------------------------------------------------


def max_sends_per_tick(n_hosts: int, dead: int = 0, nets: dict[str, str] | None = None) -> int:
    seg = synthetic_segment(hosts=n_hosts, networks=nets or ONE_NET)
    w = Peers(seg)
    w.down |= {f"host{k}" for k in range(2, 2 + dead)}
    w.run(40 * T.probe_interval_s)
    return max(w.per_tick)


def test_sends_per_period_do_not_grow_with_the_segment() -> None:
    small, large = max_sends_per_tick(5), max_sends_per_tick(200)
    # One round-robin peer and one voter a period, per network.
    assert small <= 2 and large <= 2
    three = {"admin": "alert", "storage": "fence_evacuate", "tenant": "live_migrate"}
    assert max_sends_per_tick(200, nets=three) <= 2 * 3


def test_a_dead_peer_adds_a_bounded_cost() -> None:
    small, large = max_sends_per_tick(5, dead=1), max_sends_per_tick(200, dead=1)
    # Per network: round-robin + voter + the watched peer, then its ping-reqs.
    bound = 3 + T.indirect_probes
    assert small <= bound and large <= bound


def test_helping_others_does_not_shorten_the_way_to_lost() -> None:
    mesh = Mesh(SEG)
    mesh.down.add("host2")
    mesh.run(3, target="host2")
    assert set(mesh.first_lost) == {"host1", "host3", "host4", "host5"}
    rounds = (T.misses_before_suspect - 1) * T.probe_interval_s
    for observer, (when, since) in mesh.first_lost.items():
        assert when - since >= rounds - 1e-9, (observer, when, since)


def test_an_ack_seconds_late_still_ends_the_silence() -> None:
    """A loaded machine: answers queued 1 to 2.6 s (bench/stall_ride.py). Each proves the
    peer alive after its ping; thrown away, the peer stayed lost from its first miss on,
    was held stalled for the grace (its kernel answered), then failed at once."""
    p = Prober(SEG, "host1")
    ping = missed_round(p)
    for k in range(2, 12):  # 2 s of rounds that all miss
        p.tick(k * T.probe_interval_s / 2)
    assert not p.peer(ping.to, "admin").reachable
    p.receive("admin", ping.to, {"t": "ack", "id": ping.msg["id"]}, 2.0)
    v = p.peer(ping.to, "admin")
    assert v.reachable and v.misses == 0 and v.last_ack == 2.0


def test_a_req_for_a_target_already_pinged_joins_that_ping() -> None:
    """One ping in flight per target and network, whoever asks: the ack is relayed to
    every requester (no probe storm on a slow peer)."""
    helper = Prober(SEG, "host3")
    out = helper.receive("admin", "host1", {"t": "req", "id": 41, "target": "host2"}, 5.0)
    assert [s.msg["t"] for s in out] == ["ping"]
    again = helper.receive("admin", "host4", {"t": "req", "id": 77, "target": "host2"}, 5.01)
    assert again == [] and helper.stats.by_type["req_joined"] == 1
    relays = helper.receive("admin", "host2", {"t": "ack", "id": out[0].msg["id"]}, 5.02)
    assert sorted((s.to, s.msg["id"]) for s in relays) == [("host1", 41), ("host4", 77)]
    assert all(s.msg["via"] == "host3" for s in relays)
    # once that ping's direct wait is over, a new req sends a new ping
    later = helper.receive("admin", "host5", {"t": "req", "id": 9, "target": "host2"}, 5.5)
    assert [s.msg["t"] for s in later] == ["ping"]


def test_local_health_slows_a_slow_observer_and_not_one_that_lost_a_dead_peer() -> None:
    """Lifeguard's awareness: late acks and own stalls raise the score, which stretches
    the period and the timeout; acks on time lower it; a peer that never answers (dead)
    does not raise it, so detection of a dead host is not slowed."""
    w = Peers()
    w.down.add("host2")
    w.run(5.0)
    assert w.p.health == 0 and not w.p.peer("host2", "admin").reachable
    p = Prober(SEG, "host1")
    ping = missed_round(p)
    p.receive("admin", ping.to, {"t": "ack", "id": ping.msg["id"]}, 0.5)
    assert p.health == 1
    p.pause(T.probe_timeout_s / 10)  # a short stall: not a sign
    assert p.health == 1
    p.pause(T.probe_timeout_s)
    assert p.health == 2
    sends = p.tick(1.0)  # a new period starts; the next one only 3 periods later
    assert [s for s in sends if s.msg["t"] == "ping"]
    later = p.tick(1.0 + T.probe_interval_s)  # one plain period later: no new round yet
    assert not [s for s in later if s.msg["t"] == "ping"]
    on_time = next(s for s in sends if s.msg["t"] == "ping")
    p.receive("admin", on_time.to, {"t": "ack", "id": on_time.msg["id"]}, 1.01)
    assert p.health == 1
    for _ in range(20):
        p.pause(1.0)
    assert p.health == 8  # bounded
