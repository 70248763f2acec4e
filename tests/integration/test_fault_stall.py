"""A stalled agent on a live host is ridden through, not failed (issue 12, stalls).

Five real meshha-agent processes on loopback with the lan-fast profile (the default);
an agent is stopped with SIGSTOP (its process stands still, its host's kernel still
completes TCP handshakes on its probe port: meshha.probes.liveness). Proves:
- a 5 s stop of a follower: never failed or degraded (at most suspect, while it is
  stalled), nothing fenced, and the agent commits its own stall (process_failure meshha-agent/stalled,
  with its length) when it is back; its memory is locked (VmLck);
- repeated short stops (1 s every 3 s): no verdict, no fence; the stalls are committed
  as such, once per episode, with their count;
- an agent SIGKILLed and started again 1 s later, as systemd does (its kernel refuses
  the handshake meanwhile: a live kernel, no agent): never failed or degraded;
- a stop longer than the profile's stall_grace_s is `failed` (the watchdog's authority
  ends the ride), and so is a SIGKILLed agent that is not started again, at the grace.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshha.config.model import TIMING_PROFILES
from meshha.lab.mesh import Mesh

HOSTS = tuple(f"host{i}" for i in range(1, 6))
PROFILE = "lan-fast"
GRACE_S = TIMING_PROFILES[PROFILE]["stall_grace_s"]
# The grace counts from the last answer the segment heard, which under load comes a
# second or more before the stop or the kill (CI at 4ca8f0c: failed 6.97 s after the
# kill). A silent host is failed in about 1 s on lan-fast, so this still tells the two.
HEARD_SLACK_S = 2.0

pytestmark = pytest.mark.integration


class UnitMesh(Mesh):
    """Agents at the CPU priority config/meshha-agent.service gives them (Nice=-10): the
    shared test machine is as loaded as a busy compute host."""

    def agent_argv(self, host: str) -> list[str]:
        return ["nice", "-n", "-10", *super().agent_argv(host)]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    m = UnitMesh(tmp_path_factory.mktemp("mesh-stall"), HOSTS, profile=PROFILE)
    try:
        m.start(timeout_s=60)
        yield m
    finally:
        m.close()


def pick(mesh: Mesh) -> tuple[str, str]:
    """A follower to stop and another follower to watch from."""
    leader = mesh.wait_leader(30)
    followers = [h for h in HOSTS if h != leader and mesh.running(h)]
    return followers[0], followers[1]


def entries_about(mesh: Mesh, observer: str, host: str, since: float) -> list[dict[str, Any]]:
    return [e for _, e in mesh.ledger(observer) if e.get("host") == host and e["ts"] >= since]


def bad(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        e
        for e in entries
        if (e["kind"] == "verdict" and e["verdict"] in ("failed", "degraded"))
        or (e["kind"] == "intent" and e["action"] == "fence")
    ]


def stop_for(mesh: Mesh, host: str, seconds: float, watch: str) -> set[str | None]:
    """SIGSTOP `host` for `seconds`, SIGCONT; the verdicts `watch` showed meanwhile."""
    seen: set[str | None] = set()
    mesh.procs[host].send_signal(signal.SIGSTOP)
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            seen.add(mesh.verdict(watch, host))
            time.sleep(0.05)  # noqa: TID251  # a poll interval while the agent is stopped
    finally:
        mesh.procs[host].send_signal(signal.SIGCONT)
    return seen


def settle(mesh: Mesh, host: str) -> None:
    mesh.wait_until(
        lambda: all(mesh.verdict(h, host) == "healthy" for h in mesh.running_hosts()),
        30,
        f"everyone sees {host} healthy",
    )


def vm_locked_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmLck:"):
            return int(line.split()[1])
    return 0


def test_a_five_second_stop_is_ridden_through_and_reported(mesh: Mesh) -> None:
    victim, watch = pick(mesh)
    assert vm_locked_kb(mesh.pid(victim)) > 0, "the agent's memory is not locked"
    t0 = time.time()
    seen = stop_for(mesh, victim, 5.0, watch)
    stall = mesh.wait_until(
        lambda: next(
            (
                e
                for e in entries_about(mesh, watch, victim, t0)
                if e["kind"] == "process_failure" and e["outcome"] == "stalled"
            ),
            None,
        ),
        15,
        f"{victim} commits its own stall",
    )
    settle(mesh, victim)
    assert seen <= {"healthy", "suspect", None}, seen
    assert not bad(entries_about(mesh, watch, victim, t0)), entries_about(mesh, watch, victim, t0)
    stood = float(stall["detail"].split("still for ")[1].split(" s")[0])
    assert 4.5 <= stood <= 7.0, stall
    assert stall["process"] == "meshha-agent"


def test_repeated_short_stops_are_stalls_not_failures(mesh: Mesh) -> None:
    victim, watch = pick(mesh)
    t0 = time.time()
    seen: set[str | None] = set()
    for _ in range(5):
        seen |= stop_for(mesh, victim, 1.0, watch)
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            seen.add(mesh.verdict(watch, victim))
            time.sleep(0.05)  # noqa: TID251  # a poll interval between stops
    settle(mesh, victim)
    about = entries_about(mesh, watch, victim, t0)
    assert seen <= {"healthy", "suspect", None}, seen
    assert not bad(about), bad(about)
    stalls = [e for e in about if e["kind"] == "process_failure" and e["outcome"] == "stalled"]
    assert 1 <= len(stalls) <= 2, stalls  # one per episode, not one per stop


def test_an_agent_killed_and_restarted_by_its_init_is_ridden_through(mesh: Mesh) -> None:
    """kill -9, then the unit's RestartSec=1: the agent is gone for a few seconds (its
    start included), longer than lan-fast takes to fail a silent host."""
    victim, watch = pick(mesh)
    t0 = mesh.kill(victim, links=False)  # the agent alone: its kernel stays
    seen: set[str | None] = set()
    end = time.monotonic() + 1.0  # RestartSec=1
    while time.monotonic() < end:
        seen.add(mesh.verdict(watch, victim))
        time.sleep(0.05)  # noqa: TID251  # a poll interval while the agent is gone
    mesh.restart(victim)
    gone_s = time.time() - t0
    settle(mesh, victim)
    about = entries_about(mesh, watch, victim, t0)
    assert gone_s > TIMING_PROFILES[PROFILE]["fail_after_s"] + 0.6, gone_s  # slower than detection
    assert seen <= {"healthy", "suspect", None}, seen
    assert not bad(about), bad(about)


def test_a_stop_past_the_grace_is_failed_and_a_killed_agent_too(mesh: Mesh) -> None:
    victim, watch = pick(mesh)
    t0 = time.monotonic()
    mesh.procs[victim].send_signal(signal.SIGSTOP)
    try:
        mesh.wait_until(
            lambda: mesh.verdict(watch, victim) == "failed", GRACE_S + 10, f"{victim} failed"
        )
        took = time.monotonic() - t0
        assert took >= GRACE_S - HEARD_SLACK_S, f"failed after {took:.2f} s, before the grace"
    finally:
        mesh.procs[victim].send_signal(signal.SIGCONT)
    settle(mesh, victim)

    victim, watch = pick(mesh)
    t0 = time.monotonic()
    mesh.kill(victim, links=False)  # not started again: its kernel refuses knocks until the grace
    mesh.wait_until(
        lambda: mesh.verdict(watch, victim) == "failed", GRACE_S + 10, f"{victim} failed"
    )
    took = time.monotonic() - t0
    assert took >= GRACE_S - HEARD_SLACK_S, (
        f"a killed agent was failed after {took:.2f} s, in the grace"
    )
    mesh.restart(victim)
    settle(mesh, victim)
