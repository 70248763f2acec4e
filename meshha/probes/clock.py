"""Clock skew between the hosts of a segment, measured from probe round trips (pure).

No host's wall clock is trusted to be right, and none needs to be: probes never look at
it (meshha.probes.wire), and the times meshha commits to the log are *segment time*, the
members' median wall clock as measured here (`segment_base`: robust to an even count). A host whose wall clock is minutes
off (at start, or stepped while running, either way) is heard as usual, commits correct
times, and is reported (per host, with its offset) as a clock to fix.

Measuring (NTP's on-wire method, simplified to what a ping/ack pair gives). The transport
notes, on this host's monotonic clock, when it sent a ping (`sent_mono`) and when the
matching direct ack came back (`recv_mono`); the ack carries the peer's wall clock when
it sent it (`peer_wall`, the datagram's ``ts``). Assuming the ack left half way through
the round trip (error at most rtt/2, sub-millisecond on a LAN):

    base(peer) = peer_wall - (sent_mono + recv_mono) / 2     (peer's wall minus my monotonic)

A sample whose round trip is longer than `max_rtt_s` (the probe timeout) is not taken:
the ack waited somewhere (a stalled peer answering its backlog of pings, a queue), and
its error could be as large. Of the last `SAMPLES` samples from a peer, the one with the
shortest round trip counts (queueing only ever adds delay), and only while younger than
`fresh_s`. This host's own
base is ``wall - monotonic``, read at the time of the question. Segment time is then

    segment_now = mono + vote({my base} ∪ {fresh peer bases})

and a host's offset is its base minus that vote (`segment_base`). Each vote is one host's
wall clock. The vote is never a point *between* clocks (a mean): with the plain median
of an even number of votes (the mean of the middle two), one bad clock out of two, or
two out of four, moved segment time by half its offset. Instead, with S =
`max_clock_skew_s` and the votes sorted:

- the *majority cluster*: the largest run of votes that agree within S (last minus first
  <= S; the lowest such run on a tie). If it holds a strict majority of the votes, the
  vote is its lower median: the clocks outside it are excluded whatever they say,
- otherwise (no majority agrees: 1 against 1, 2 against 2) the lower median of all the
  votes, an actual clock.

Bound: when more than half of the clocks that answered agree within S, segment time is
one of them, so it is within S of every one of them, however far off the others are
(minutes, either way), and an even count no longer matters. When no majority agrees,
nothing can tell the good clocks from the bad; the lower median is still one host's
clock, and every host that holds the same votes picks the same one, which is what the
deadline proof below needs (committed times compared with each other, not with true
time). A step of this host's own wall clock moves only its own vote. Judging anyone
(`skewed`) needs fresh samples from a majority of the hosts (this one included); until
then nothing is judged.

How a skewed host's self-fence deadline compares with the majority's. The isolated host
counts its own *monotonic* time from its last contact with a majority (meshha.agent.node,
`_isolation_loop`), so its wall clock, however wrong, does not move its deadline; only its
monotonic rate does (NTP-free crystals: under 500 ppm, 15 ms over a 30 s deadline). The
majority's leader proves the deadline passed from *committed* times: the newest ``since``
of the committed losses (stamped by the observers) against its own ``now``, both in
segment time. With S = `max_clock_skew_s`, the bound is: the segment times of any two
hosts whose clocks agree with the median differ by at most S (the spread of the good
clocks plus the measurement error rtt/2, itself under a millisecond on a LAN). A host
outside that bound is corrected to segment time before it stamps anything, and alerted.
So the leader concludes at real time t >= T_heard + D + S - S >= T_heard + D, where
T_heard is the real time the last observer still heard the host: never before the
isolated host's own deadline, whatever any one host's wall clock says. What this does
not cover: a majority of hosts whose wall clocks are wrong together (then the median is
wrong; keep NTP on the hosts), and the first second after an agent starts, before its
first samples (it stamps its own wall clock until a majority has answered; an agent
that has just started has no losses to commit yet).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

SAMPLES = 8  # per peer: the shortest round trip of the last 8 counts
DEFAULT_FRESH_S = 30.0


def segment_base(votes: Iterable[float], max_skew_s: float) -> float:
    """The segment's vote among the hosts' clock bases (module doc): the lower median of
    the largest run agreeing within `max_skew_s` if it is a strict majority, else the
    lower median of all. Always one of the votes."""
    v = sorted(votes)
    assert v, "at least this host's own vote"
    best_i, best_n, j = 0, 0, 0
    for i in range(len(v)):
        j = max(j, i)
        while j + 1 < len(v) and v[j + 1] - v[i] <= max_skew_s:
            j += 1
        if j - i + 1 > best_n:
            best_i, best_n = i, j - i + 1
    if 2 * best_n > len(v):
        return v[best_i + (best_n - 1) // 2]
    return v[(len(v) - 1) // 2]


@dataclass(frozen=True)
class Sample:
    at_mono: float  # when the ack arrived, this host's monotonic clock
    base: float  # the peer's wall clock minus this host's monotonic clock
    rtt_s: float


class SegmentClock:
    """Per-peer clock offsets and the segment's median time (see the module doc).

    `hosts` are the segment's members other than `me` whose votes count.
    """

    def __init__(
        self,
        me: str,
        hosts: Iterable[str],
        *,
        max_skew_s: float,
        max_rtt_s: float,
        fresh_s: float = DEFAULT_FRESH_S,
    ) -> None:
        assert max_skew_s >= 0 and fresh_s > 0 and max_rtt_s > 0
        self.me = me
        self.max_rtt_s = max_rtt_s
        self.hosts = tuple(h for h in hosts if h != me)
        self.max_skew_s = max_skew_s
        self.fresh_s = fresh_s
        self._samples: dict[str, deque[Sample]] = {h: deque(maxlen=SAMPLES) for h in self.hosts}

    def sample(self, peer: str, sent_mono: float, recv_mono: float, peer_wall: float) -> None:
        """One ping/ack round trip with `peer` (ignored for unknown peers or bad times)."""
        rtt = recv_mono - sent_mono
        if peer not in self._samples or not 0 <= rtt <= self.max_rtt_s:
            return
        self._samples[peer].append(Sample(recv_mono, peer_wall - (sent_mono + rtt / 2), rtt))

    def peer_base(self, peer: str, mono: float) -> Sample | None:
        """The best fresh sample of `peer`, or None."""
        fresh = [s for s in self._samples.get(peer, ()) if mono - s.at_mono <= self.fresh_s]
        return min(fresh, key=lambda s: s.rtt_s) if fresh else None

    def _bases(self, mono: float, wall: float) -> dict[str, float]:
        bases = {self.me: wall - mono}
        for h in self.hosts:
            s = self.peer_base(h, mono)
            if s is not None:
                bases[h] = s.base
        return bases

    def base(self, mono: float, wall: float) -> float:
        """Segment time minus this host's monotonic clock."""
        return segment_base(self._bases(mono, wall).values(), self.max_skew_s)

    def now(self, mono: float, wall: float) -> float:
        """Segment time at this host's monotonic `mono` (its own wall clock is `wall`)."""
        return mono + self.base(mono, wall)

    def judged(self, mono: float, wall: float) -> bool:
        """Enough hosts answered (a majority, this one included) to say who is off."""
        return 2 * len(self._bases(mono, wall)) > len(self.hosts) + 1

    def offsets(self, mono: float, wall: float) -> dict[str, float]:
        """Each measured host's wall clock minus segment time (this host's included)."""
        bases = self._bases(mono, wall)
        vote = segment_base(bases.values(), self.max_skew_s)
        return {h: b - vote for h, b in sorted(bases.items())}

    def skewed(self, mono: float, wall: float) -> dict[str, float]:
        """Hosts whose clock is more than `max_skew_s` off segment time: {host: offset}.
        Empty until `judged`."""
        if not self.judged(mono, wall):
            return {}
        return {h: o for h, o in self.offsets(mono, wall).items() if abs(o) > self.max_skew_s}

    def report(self, mono: float, wall: float) -> dict[str, object]:
        """For `meshctl status`: offsets (rounded to 0.1 ms) and who is off."""
        return {
            "judged": self.judged(mono, wall),
            "max_skew_s": self.max_skew_s,
            "offsets_s": {h: round(o, 4) for h, o in self.offsets(mono, wall).items()},
            "skewed": sorted(self.skewed(mono, wall)),
        }
