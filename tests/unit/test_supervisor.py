"""The Supervisor over an in-memory ProcessPort, in simulated time: bounded, backed-off
restarts; one failure and one recovery report per outage, naming the outage's start;
nothing restarted while the host is in maintenance."""

from __future__ import annotations

import itertools

import pytest
import trio
from trio.testing import MockClock

from meshha.config.model import Processes
from meshha.errors import ProcessError
from meshha.probes.supervisor import ProcessReport, Supervisor


@pytest.fixture
def clock() -> MockClock:
    return MockClock(autojump_threshold=0)


class Port:
    def __init__(self) -> None:
        self.alive = {"nova-compute": True, "libvirtd": True}
        self.broken: set[str] = set()
        self.restarts: list[tuple[float, str]] = []

    async def is_alive(self, name: str) -> bool:
        return self.alive[name]

    async def restart(self, name: str) -> None:
        self.restarts.append((trio.current_time(), name))
        await trio.sleep(0.1)
        if name in self.broken:
            raise ProcessError(f"{name} not restarted", kind="restart_failed", where=name)
        self.alive[name] = True


CONFIG = Processes(check_interval_s=2.0, restart_attempts=3, restart_backoff_s=2.0)


def make(port: Port, paused: bool = False) -> tuple[Supervisor, list[ProcessReport]]:
    reports: list[ProcessReport] = []
    flag = {"paused": paused}
    sup = Supervisor(
        port, CONFIG, reports.append, now=trio.current_time, paused=lambda: flag["paused"]
    )
    sup.flag = flag  # type: ignore[attr-defined]
    return sup, reports


async def test_an_unrestartable_process_for_5_minutes_is_one_report(
    clock: MockClock, nursery: trio.Nursery
) -> None:
    port = Port()
    sup, reports = make(port)
    nursery.start_soon(sup.run)
    await trio.sleep(1)
    port.alive["nova-compute"] = False
    port.broken.add("nova-compute")
    await trio.sleep(300)
    (failed,) = reports
    assert failed.outcome == "restart_failed" and failed.attempts == 3
    # Bounded with backoff: 2, 4, 8, ... s apart, at most one per 5 minutes later on.
    times = [t for t, n in port.restarts if n == "nova-compute"]
    assert 5 <= len(times) <= 9, times
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g2 >= g1 for g1, g2 in itertools.pairwise(gaps)), gaps
    port.broken.clear()
    await trio.sleep(400)
    assert [r.outcome for r in reports] == ["restart_failed", "restarted"]
    assert reports[1].since == failed.since
    assert not port.restarts or port.alive["nova-compute"]


async def test_a_quick_restart_is_one_report(clock: MockClock, nursery: trio.Nursery) -> None:
    port = Port()
    sup, reports = make(port)
    nursery.start_soon(sup.run)
    port.alive["libvirtd"] = False
    await trio.sleep(10)
    (r,) = reports
    assert (r.name, r.outcome, r.attempts) == ("libvirtd", "restarted", 1)


async def test_no_restart_in_maintenance(clock: MockClock, nursery: trio.Nursery) -> None:
    port = Port()
    sup, reports = make(port, paused=True)
    nursery.start_soon(sup.run)
    port.alive["nova-compute"] = False
    await trio.sleep(60)
    assert port.restarts == [] and reports == []
    sup.flag["paused"] = False  # type: ignore[attr-defined]
    await trio.sleep(5)
    assert [r.outcome for r in reports] == ["restarted"]


async def test_a_process_back_by_itself_ends_the_outage(
    clock: MockClock, nursery: trio.Nursery
) -> None:
    port = Port()
    port.broken.add("nova-compute")
    sup, reports = make(port)
    nursery.start_soon(sup.run)
    port.alive["nova-compute"] = False
    await trio.sleep(30)
    assert [r.outcome for r in reports] == ["restart_failed"]
    port.alive["nova-compute"] = True  # an operator fixed it
    await trio.sleep(5)
    assert [r.outcome for r in reports] == ["restart_failed", "restarted"]
    assert sup.outages == {}


async def test_restart_attempts_zero_reports_at_once_and_never_restarts(
    clock: MockClock, nursery: trio.Nursery
) -> None:
    port = Port()
    reports: list[ProcessReport] = []
    config = Processes(check_interval_s=2.0, restart_attempts=0, restart_backoff_s=2.0)
    sup = Supervisor(port, config, reports.append, now=trio.current_time)
    nursery.start_soon(sup.run)
    port.alive["nova-compute"] = False
    await trio.sleep(120)
    assert port.restarts == []
    assert [(r.outcome, r.attempts) for r in reports] == [("restart_failed", 0)]
    port.alive["nova-compute"] = True  # restarted by someone else
    await trio.sleep(5)
    assert [r.outcome for r in reports] == ["restart_failed", "restarted"]


class Nova:
    def __init__(self) -> None:
        self.up, self.enabled, self.forced, self.calls, self.fail = True, True, False, 0, False

    async def host_facts(self, hosts: list[str]) -> list[object]:
        from meshha.errors import NovaError
        from meshha.recovery.ports import HostFacts

        self.calls += 1
        if self.fail:
            raise NovaError("Nova API down", kind="unreachable", where="nova")
        return [
            HostFacts(
                hosts[0],
                1,
                1,
                1,
                service_up=self.up,
                service_enabled=self.enabled,
                forced_down=self.forced,
            )
        ]


async def test_nova_service_state_detects_a_hung_nova_compute(clock: MockClock) -> None:
    from meshha.probes.processes import nova_service_probe

    nova = Nova()
    probe = nova_service_probe(nova, "h1", every_s=30)  # type: ignore[arg-type]
    assert await probe()
    nova.up = False  # heartbeats stopped: Nova reports the service down
    assert await probe()  # asked again only after every_s
    await trio.sleep(30)
    assert not await probe()
    assert nova.calls == 2
    nova.forced = True  # forced down by us (a fence): says nothing about the process
    await trio.sleep(30)
    assert await probe()
    nova.forced, nova.fail = False, True  # Nova unreachable: no evidence, alive
    await trio.sleep(30)
    assert await probe()
