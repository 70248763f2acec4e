"""The agent's keepalives (meshha.agent.keepalive) over the FakeWatchdog, in trio's
autojump time; sd_notify over a real unix datagram socket; which libvirt daemon is
watched."""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
from trio.testing import MockClock

from meshha.agent.keepalive import Keepalive, feed_until, responsive
from meshha.agent.main import libvirt_daemon_names
from meshha.agent.sd_notify import SdNotifier
from meshha.agent.watchdog import LinuxWatchdog, SocketWatchdog, open_watchdog
from meshha.cli import _this_host_line
from meshha.config.model import Processes, Segment
from meshha.config.synthetic import synthetic_segment
from meshha.errors import WatchdogError
from meshha.sim.watchdog import FakeWatchdog

SEG = synthetic_segment(3)  # lan-fast: isolation 2 s, deadline 10 s; watchdog timeout 6 s
T = SEG.timings


@dataclass
class StubProber:
    poll_interval_s: float = 0.1


@dataclass
class StubStats:
    last_error: str = ""


@dataclass
class StubNode:
    """What Keepalive reads of a Node, set by the test."""

    segment: Segment = SEG
    me: str = "host1"
    prober: StubProber = field(default_factory=StubProber)
    beats: dict[str, float] = field(default_factory=dict)
    contact_m: float = -math.inf
    isolated: bool = False
    stats: StubStats = field(default_factory=StubStats)


@pytest.fixture
def clock() -> MockClock:
    return MockClock(autojump_threshold=0)


def test_feed_until_leaves_the_watchdog_time_to_fire_before_the_deadline() -> None:
    timeout = SEG.host("host1").watchdog.timeout_s  # type: ignore[union-attr]
    until = feed_until(100.0, T, timeout)
    # The real last contact may be isolation_after_s before contact_m; the watchdog fires
    # one timeout after the last keepalive; the majority's deadline is last heard + 10 s.
    assert until + timeout == 100.0 - T.isolation_after_s + T.self_fence_deadline_s - 1.0
    assert until > 100.0  # and it still feeds through a short isolation


def test_responsive_needs_every_loop_recent() -> None:
    assert not responsive({}, 10.0, 5.0)
    assert responsive({"probe": 9.0, "isolation": 6.0}, 10.0, 5.0)
    assert not responsive({"probe": 9.0, "isolation": 4.0}, 10.0, 5.0)


async def _run_node(node: StubNode, wd: FakeWatchdog, until_s: float, contact: bool) -> None:
    """Beat the node's loops (and, if `contact`, its majority contact) until `until_s`."""
    while trio.current_time() < until_s:
        now = trio.current_time()
        node.beats = {"probe": now, "isolation": now}
        if contact:
            node.contact_m = now
        if wd.due():
            wd.fire()
        await trio.sleep(0.05)


async def test_never_armed_without_a_first_contact(clock: MockClock) -> None:
    node, wd = StubNode(), FakeWatchdog(trio.current_time)
    ka = Keepalive(node, wd, None)  # type: ignore[arg-type]
    async with trio.open_nursery() as n:
        n.start_soon(ka.run)
        await _run_node(node, wd, 60.0, contact=False)
        n.cancel_scope.cancel()
    assert not wd.armed and wd.fired_at is None


async def test_fed_in_contact_then_fires_before_the_deadline_once_cut_off(
    clock: MockClock,
) -> None:
    node, wd = StubNode(), FakeWatchdog(trio.current_time)
    ka = Keepalive(node, wd, None)  # type: ignore[arg-type]
    async with trio.open_nursery() as n:
        n.start_soon(ka.run)
        await _run_node(node, wd, 30.0, contact=True)
        assert wd.armed and wd.fired_at is None and ka.device_timeout_s == wd.timeout_s
        cut = node.contact_m
        await _run_node(node, wd, 60.0, contact=False)  # loops fine, no majority
        n.cancel_scope.cancel()
    assert wd.fired_at is not None
    # Not at the first missed contact, and before the majority may rely on the deadline
    # (measured from the real last contact, at worst isolation_after_s before cut).
    assert cut + T.isolation_after_s < wd.fired_at
    assert wd.fired_at <= cut - T.isolation_after_s + T.self_fence_deadline_s


async def test_stalled_loops_stop_the_feeding(clock: MockClock) -> None:
    node, wd = StubNode(), FakeWatchdog(trio.current_time)
    ka = Keepalive(node, wd, None)  # type: ignore[arg-type]
    async with trio.open_nursery() as n:
        n.start_soon(ka.run)
        await _run_node(node, wd, 10.0, contact=True)
        stalled = trio.current_time()
        node.contact_m = math.inf  # in contact all along: only the loops stall
        while wd.fired_at is None:
            await trio.sleep(0.05)
            if wd.due():
                wd.fire()
        n.cancel_scope.cancel()
    assert wd.fired_at - stalled <= ka.stall_s + wd.timeout_s + 0.2


@pytest.mark.parametrize("isolated", [False, True])
async def test_clean_stop_disarms_unless_isolated(clock: MockClock, isolated: bool) -> None:
    node, wd = StubNode(), FakeWatchdog(trio.current_time)
    ka = Keepalive(node, wd, None)  # type: ignore[arg-type]
    async with trio.open_nursery() as n:
        n.start_soon(ka.run)
        await _run_node(node, wd, 5.0, contact=True)
        node.isolated = isolated
        ka.clean_stop()
        n.cancel_scope.cancel()
    assert wd.armed is isolated  # left running for the majority's deadline
    assert not wd.held


def test_sd_notify_from_env_and_a_real_datagram_socket(tmp_path: Path) -> None:
    assert SdNotifier.from_env({}) is None
    assert SdNotifier.from_env({"NOTIFY_SOCKET": "relative"}) is None
    name = f"mh-sdnotify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind("\0" + name)  # an abstract socket, as systemd may give
        systemd.settimeout(5)
        env = {"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "6000000"}
        n = SdNotifier.from_env(env)
        assert n is not None and n.watchdog_interval_s == 6.0
        n.watchdog()  # before READY=1: not sent (start-up has its own timeout)
        n.ready()
        n.watchdog()
        n.stopping()
        assert [systemd.recv(64) for _ in range(3)] == [b"READY=1", b"WATCHDOG=1", b"STOPPING=1"]
        n.close()
    other = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "1"}
    n = SdNotifier.from_env(other)  # the watchdog is for another process
    assert n is not None and n.watchdog_interval_s is None
    n.notify("READY=1")  # nobody listens: counted, never raised
    assert n.failures == 1
    n.close()


def test_modular_libvirt_is_watched_as_virtqemud(tmp_path: Path) -> None:
    procs = Processes(names=("nova-compute", "libvirtd"))
    assert libvirt_daemon_names(procs, tmp_path) is procs
    (tmp_path / "virtqemud-sock").touch()
    assert libvirt_daemon_names(procs, tmp_path).names == ("nova-compute", "virtqemud")
    both = Processes(names=("libvirtd", "virtqemud"))
    assert libvirt_daemon_names(both, tmp_path).names == ("virtqemud",)


def test_status_line_says_whether_the_watchdog_is_fed() -> None:
    none = _this_host_line({"watchdog": {"declared": False}})
    assert "none declared" in none and "no self-fence deadline proof" in none
    fed = {"declared": True, "armed": True, "feeding": True, "timeout_s": 15}
    assert _this_host_line({"watchdog": fed}) == "this host's watchdog: fed (timeout 15 s)"
    cut = _this_host_line({"isolated": True, "watchdog": {**fed, "feeding": False}})
    assert "NOT FED: it will reset this host" in cut


async def test_watchdog_driver_follows_the_file_type(tmp_path: Path) -> None:
    with pytest.raises(WatchdogError) as err:
        open_watchdog(tmp_path / "absent")
    assert err.value.kind == "missing"
    (tmp_path / "plain").touch()
    with pytest.raises(WatchdogError, match="neither a character device nor a unix socket"):
        open_watchdog(tmp_path / "plain")
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.bind(str(tmp_path / "wd.sock"))
        assert isinstance(open_watchdog(tmp_path / "wd.sock"), SocketWatchdog)
    # A character device that is no watchdog: the real kernel refuses the ioctl, and the
    # driver says so as a typed error and leaves nothing open.
    null = open_watchdog(Path("/dev/null"))
    assert isinstance(null, LinuxWatchdog)
    with pytest.raises(WatchdogError) as err:
        await null.open(5)
    assert err.value.kind == "unsupported"
    assert null._fd is None
