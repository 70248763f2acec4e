"""Clock skew measured from ping/ack round trips: segment time is the median clock, a
host whose clock is off is named with its offset, and nobody is judged before a majority
has answered. Pure: times are inputs."""

from __future__ import annotations

import pytest

from meshha.probes.clock import SegmentClock, segment_base

HOSTS = ("host1", "host2", "host3", "host4", "host5")
TRUE = 1_800_000_000.0  # true wall time at monotonic 0 on every host


def _clock(me: str = "host1", offsets: dict[str, float] | None = None) -> SegmentClock:
    """host1's view after one round trip (2 ms) with every peer; peers' wall clocks are
    TRUE + mono + their offset."""
    offsets = offsets or {}
    c = SegmentClock(me, HOSTS, max_skew_s=0.5, max_rtt_s=0.1)
    for k, h in enumerate(HOSTS):
        if h != me:
            sent = 10.0 + k
            c.sample(h, sent, sent + 0.002, TRUE + sent + 0.001 + offsets.get(h, 0.0))
    return c


def test_all_clocks_agree():
    c = _clock()
    assert c.judged(20.0, TRUE + 20.0)
    assert c.now(20.0, TRUE + 20.0) == pytest.approx(TRUE + 20.0, abs=1e-6)
    assert c.skewed(20.0, TRUE + 20.0) == {}


@pytest.mark.parametrize("offset", [-300.0, 300.0, 0.6])
def test_a_peer_clock_off_is_named_and_does_not_move_segment_time(offset):
    c = _clock(offsets={"host3": offset})
    assert c.skewed(20.0, TRUE + 20.0) == {"host3": pytest.approx(offset, abs=1e-3)}
    assert c.now(20.0, TRUE + 20.0) == pytest.approx(TRUE + 20.0, abs=1e-3)


@pytest.mark.parametrize("offset", [-300.0, 300.0])
def test_my_own_clock_off_is_corrected_and_named(offset):
    c = _clock()
    wall = TRUE + 20.0 + offset  # my wall clock is wrong, the peers' are right
    assert c.now(20.0, wall) == pytest.approx(TRUE + 20.0, abs=1e-3)
    assert c.skewed(20.0, wall) == {"host1": pytest.approx(offset, abs=1e-3)}


def test_my_wall_clock_stepped_mid_run_does_not_step_segment_time():
    c = _clock()
    before = c.now(20.0, TRUE + 20.0)
    after = c.now(20.5, TRUE + 20.5 - 300.0)  # stepped back 5 minutes
    assert after - before == pytest.approx(0.5, abs=1e-3)


def test_nobody_is_judged_before_a_majority_answered():
    c = SegmentClock("host1", HOSTS, max_skew_s=0.5, max_rtt_s=0.1)
    c.sample("host2", 1.0, 1.002, TRUE + 1.001 + 300.0)
    assert not c.judged(2.0, TRUE + 2.0) and c.skewed(2.0, TRUE + 2.0) == {}
    # two votes that disagree: no majority, the lower one (an actual clock, not the mean)
    assert c.now(2.0, TRUE + 2.0) == pytest.approx(TRUE + 2.0, abs=1e-3)
    c.sample("host3", 1.0, 1.002, TRUE + 1.001)
    assert c.skewed(2.0, TRUE + 2.0) == {"host2": pytest.approx(300.0, abs=1e-3)}


def test_the_shortest_round_trip_wins_and_samples_expire():
    c = SegmentClock("host1", HOSTS, max_skew_s=0.5, max_rtt_s=1.0, fresh_s=5.0)
    c.sample("host2", 1.0, 1.9, TRUE + 1.0 + 0.85)  # delayed ack: 0.4 s error
    c.sample("host2", 2.0, 2.002, TRUE + 2.001)
    best = c.peer_base("host2", 3.0)
    assert best is not None and best.base == pytest.approx(TRUE, abs=1e-6)
    assert c.peer_base("host2", 8.0) is None
    c.sample("host9", 1.0, 1.1, 0.0)  # not a member: ignored
    c.sample("host2", 5.0, 4.0, 0.0)  # negative round trip: ignored
    c.sample("host2", 5.0, 6.5, 0.0)  # longer than max_rtt_s: ignored (a stalled peer)
    assert c.peer_base("host9", 1.2) is None
    assert c.peer_base("host2", 7.1) is None  # only the ignored one would still be fresh


@pytest.mark.parametrize("offset", [-300.0, 300.0, 0.8])
def test_one_bad_clock_of_four_moves_segment_time_not_at_all(offset):
    """An even count: the plain median (mean of the middle two) moved by offset / 2."""
    c = SegmentClock("host1", HOSTS[:4], max_skew_s=0.5, max_rtt_s=0.1)
    for k, h in enumerate(HOSTS[1:4]):
        sent = 10.0 + k
        c.sample(h, sent, sent + 0.002, TRUE + sent + 0.001 + (offset if h == "host3" else 0.0))
    assert c.now(20.0, TRUE + 20.0) == pytest.approx(TRUE + 20.0, abs=1e-3)
    assert c.skewed(20.0, TRUE + 20.0) == {"host3": pytest.approx(offset, abs=1e-3)}


def test_good_clocks_spread_within_the_bound_stay_within_it():
    """A majority agreeing within S: segment time is one of them (within S of each)."""
    good = [100.0, 100.2, 100.4]
    for bad in ([-200.0], [500.0], [-200.0, 700.0], [99.0]):
        v = segment_base(good + bad, 0.5)
        if bad == [99.0]:  # within S of some good ones: then it is one of the cluster
            assert 99.0 <= v <= 100.4
        else:
            assert v in good
            assert all(abs(v - g) <= 0.5 for g in good)


def test_without_a_majority_the_lower_median_is_an_actual_clock():
    assert segment_base([100.0, 400.0], 0.5) == 100.0  # 1 against 1
    assert segment_base([400.0, 100.0, 100.1, 400.2], 0.5) == 100.1  # 2 against 2
    assert segment_base([7.0], 0.5) == 7.0
    # the same votes in any order give the same answer (every host agrees)
    votes = [3.0, 1.0, 2.0, 10.0, 10.3, 10.1]
    assert segment_base(votes, 0.5) == segment_base(sorted(votes, reverse=True), 0.5)


def test_the_majority_cluster_is_preferred_over_the_median_of_all():
    # 3 good clocks of 5 agree; two bad ones below pull the plain median to a bad one's side
    assert segment_base([-300.0, -299.9, 100.0, 100.1, 100.2], 0.5) == 100.1
