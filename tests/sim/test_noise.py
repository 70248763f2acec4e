"""The noise invariant (sim/noise.py) flags what the simulator showed before damping and
one supervision path: 21 alerts for one unrestartable nova-compute, a verdict change
every second for a flapping link, repeated reports for one outage."""

from __future__ import annotations

from meshha.config.synthetic import synthetic_segment
from meshha.raft import entries as E
from meshha.raft.entries import Entry
from meshha.sim.noise import noise_problems

SEG = synthetic_segment()


def alert(n: int) -> Entry:
    return E.intent(
        ts=float(n),
        by="host1",
        intent_id=f"alert:brake:{n + 1}:a1",
        action="alert",
        host="",
        reason="x",
        params={"severity": "warning", "subject": "x", "body": ""},
    )


def test_a_quiet_log_passes() -> None:
    log = [alert(0), alert(1)]
    assert noise_problems(SEG, log, [0.0, 1.0], faults=1) == []


def test_too_many_alerts_for_the_faults() -> None:
    log = [alert(n) for n in range(21)]
    (p,) = noise_problems(SEG, log, [float(n) for n in range(21)], faults=1)
    assert "21 alerts for 1 faults" in p


def test_a_flapping_verdict() -> None:
    kinds = ["suspect", "degraded", "healthy"]
    log = [
        E.verdict(
            ts=float(n),
            by="host1",
            host="host2",
            verdict=kinds[n % 3],
            networks=[],
            reason="",
            evidence=[],
        )
        for n in range(45)
    ]
    (p,) = noise_problems(SEG, log, [float(n) for n in range(45)], faults=1)
    assert "verdicts for host2 within 60s" in p


def test_one_outage_reported_three_times() -> None:
    log = [
        E.process_failure(
            ts=float(n),
            by="host2",
            host="host2",
            process="nova-compute",
            outcome="restart_failed",
            detail="",
            since=5.0,
        )
        for n in range(3)
    ]
    (p,) = noise_problems(SEG, log, [0.0, 1.0, 2.0], faults=1)
    assert "3 reports for one outage of nova-compute on host2" in p
