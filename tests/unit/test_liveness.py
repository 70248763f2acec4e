"""A silent peer whose kernel still completes TCP handshakes is stalled, not lost, for
the grace; this agent's own stalls are measured from a loop's lateness (pure)."""

from __future__ import annotations

import pytest

from meshha.probes.liveness import (
    KNOCK_ANSWERED,
    KNOCK_REFUSED,
    KNOCK_SILENT,
    KernelLiveness,
    StallMeter,
)


def _k() -> KernelLiveness:
    return KernelLiveness(stall_grace_s=6.0, window_s=1.0)


def test_a_peer_whose_kernel_answers_is_stalled_until_the_grace():
    k = _k()
    k.record("host2", "admin", 10.1, 10.2, KNOCK_ANSWERED)
    assert k.stalled("host2", "admin", since=10.0, now=10.5)
    assert not k.stalled("host2", "storage", since=10.0, now=10.5)  # per network
    k.record("host2", "admin", 15.8, 15.9, KNOCK_ANSWERED)
    assert k.stalled("host2", "admin", since=10.0, now=15.99)
    assert not k.stalled("host2", "admin", since=10.0, now=16.0)  # grace over: lost


def test_no_answer_is_no_evidence():
    k = _k()
    assert not k.stalled("host2", "admin", since=10.0, now=10.5)  # never knocked
    k.record("host2", "admin", 10.1, 10.2, KNOCK_SILENT)
    assert not k.stalled("host2", "admin", since=10.0, now=10.5)  # a dead host


def test_a_refusal_is_a_live_kernel_whose_agent_restarts_held_for_the_grace():
    """RST: the kernel is up and no agent listens (killed, its init starting it again).
    Held like a stall, for the same grace: a crash of the agent alone must not fence a
    healthy host under a profile that detects faster than an agent restarts."""
    k = _k()
    k.record("host2", "admin", 10.1, 10.2, KNOCK_REFUSED)
    assert k.stalled("host2", "admin", since=10.0, now=10.5)
    k.record("host2", "admin", 10.2, 10.3, KNOCK_ANSWERED)  # a stall, then a crash
    k.record("host2", "admin", 10.3, 10.4, KNOCK_REFUSED)
    k.record("host2", "admin", 15.5, 15.6, KNOCK_REFUSED)  # still not back
    assert k.stalled("host2", "admin", since=10.0, now=15.99)
    assert not k.stalled("host2", "admin", since=10.0, now=16.0)  # grace over: lost
    k.record("host2", "admin", 9.0, 9.1, KNOCK_REFUSED)  # from before the silence
    assert not k.stalled("host2", "admin", since=20.0, now=20.1)


def test_an_answer_from_before_the_silence_proves_nothing():
    k = _k()
    k.record("host2", "admin", 9.8, 9.9, KNOCK_ANSWERED)  # it answered, then died at 10.0
    assert not k.stalled("host2", "admin", since=10.0, now=10.5)


def test_evidence_expires_but_a_timeout_does_not_erase_it():
    k = _k()
    k.record("host2", "admin", 10.1, 10.2, KNOCK_ANSWERED)
    k.record("host2", "admin", 10.8, 10.9, KNOCK_SILENT)  # the observer may be the slow one
    assert k.stalled("host2", "admin", since=10.0, now=11.1)
    assert not k.stalled("host2", "admin", since=10.0, now=11.3)  # window passed


def test_stall_meter_measures_the_lateness_of_a_loop():
    m = StallMeter(0.1, 0.05)
    assert m.tick(0.0) is None
    assert m.tick(0.1) is None
    assert m.tick(0.23) is None  # 30 ms late: under the threshold
    s = m.tick(5.33)
    assert s is not None and s.duration_s == pytest.approx(5.0) and s.start == pytest.approx(0.33)
    assert m.tick(5.43) is None
    assert [x.duration_s for x in m.recent(6.0)] == [pytest.approx(5.0)]
    assert m.recent(70.0) == [] and m.total == 1


def test_repeated_stalls_are_reported_once_a_window_as_repeated():
    """Stops of 1 s every 3 s (bench/stall_ride.py): the first is reported, the next two
    are not (same episode), the third noticeable one in the window is reported as
    repeated, then nothing more until a window has passed."""
    m = StallMeter(0.1, 0.05, window_s=60.0)
    got = []
    m.tick(0.0)
    t = 0.0
    for _ in range(10):
        t += 1.1  # 1 s late
        s = m.tick(t)
        assert s is not None
        got.append(m.report(s, t, 0.3))
        for _ in range(20):  # 2 s of running, on time
            t += 0.1
            assert m.tick(t) is None
    assert got[:3] == ["single", None, "repeated"] and got[3:] == [None] * 7
    for _ in range(610):
        t += 0.1
        m.tick(t)
    s = m.tick(t + 1.0)
    assert s is not None and m.report(s, t + 1.0, 0.3) == "single"


def test_a_stall_too_short_to_notice_is_not_reported():
    m = StallMeter(0.1, 0.05)
    m.tick(0.0)
    s = m.tick(0.2)
    assert s is not None and m.report(s, 0.2, 0.3) is None
