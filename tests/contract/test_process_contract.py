"""One ProcessPort contract, run against the real ProcessChecker (a real daemon found in
/proc, killed with SIGKILL, brought back by its restart command) and the simulator's
FakeProcesses; and the one Supervisor over each.

What it proves: what supervision relies on - a running process is alive and a killed one
is not; `restart` is one attempt that returns only once the process is alive again, or
raises ProcessError(kind="restart_failed"); and over either port the Supervisor makes
bounded restarts and gives one "restart_failed" and one "restarted" report per outage,
both naming the outage's start.
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from meshha.config.model import Processes
from meshha.errors import ProcessError
from meshha.probes.processes import ProcessChecker, find_pids
from meshha.probes.supervisor import ProcessReport, Supervisor
from meshha.recovery.ports import ProcessPort
from meshha.sim.fakes import FakeCloud, FakeProcesses

DEADLINE_S = 20.0


class RealBackend:
    """A copy of `sleep` under a unique name, started detached by a script (its restart
    command) that refuses while the file `broken` exists."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mh-pc-"))
        self.name = "mhc-" + secrets.token_hex(4)
        self.binary = self.dir / self.name
        shutil.copy(shutil.which("sleep") or "/bin/sleep", self.binary)
        self.broken_flag = self.dir / "broken"
        script = self.dir / "start"
        script.write_text(
            "#!/bin/sh\n"
            f'[ -e "{self.broken_flag}" ] && {{ echo "start refused" >&2; exit 3; }}\n'
            f'setsid "{self.binary}" 600 </dev/null >/dev/null 2>&1 &\n'
        )
        script.chmod(0o755)
        self.config = Processes(
            names=(self.name,),
            check_interval_s=0.1,
            restart_attempts=2,
            restart_backoff_s=0.1,
            restart_command=f"{script} {{name}}",
        )
        # use_systemd=True: restart_command must win on a systemd host too.
        self.port: ProcessPort = ProcessChecker(
            self.config, use_systemd=True, confirm_timeout_s=2.0
        )

    async def start(self) -> None:
        await trio.run_process([str(self.dir / "start")])
        await wait_until(lambda: bool(find_pids(self.name)))

    def kill(self) -> None:
        for pid in find_pids(self.name):
            os.kill(pid, signal.SIGKILL)

    def break_restarts(self, broken: bool) -> None:
        if broken:
            self.broken_flag.touch()
        else:
            self.broken_flag.unlink(missing_ok=True)

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class FakeBackend:
    def __init__(self) -> None:
        self.cloud = FakeCloud()
        self.machine = self.cloud.add_host("h1")
        self.name = "nova-compute"
        self.config = Processes(
            names=(self.name,), check_interval_s=0.1, restart_attempts=2, restart_backoff_s=0.1
        )
        self.port: ProcessPort = FakeProcesses(self.cloud, "h1")

    async def start(self) -> None:
        self.machine.processes[self.name] = True

    def kill(self) -> None:
        self.machine.processes[self.name] = False

    def break_restarts(self, broken: bool) -> None:
        if broken:
            self.machine.restart_fails.add(self.name)
        else:
            self.machine.restart_fails.discard(self.name)

    def stop(self) -> None:
        pass


@pytest.fixture(params=["real", "fake"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock(kind: str) -> MockClock | None:
    return MockClock(autojump_threshold=0) if kind == "fake" else None


@pytest.fixture
async def backend(kind: str) -> AsyncIterator[Any]:
    b: Any = RealBackend() if kind == "real" else FakeBackend()
    try:
        await b.start()
        yield b
    finally:
        b.stop()


async def wait_until(cond: Callable[[], bool]) -> None:
    with trio.fail_after(DEADLINE_S):
        while not cond():  # noqa: ASYNC110 - a condition over plain objects
            await trio.sleep(0.02)


async def wait_dead(backend: Any) -> None:
    with trio.fail_after(DEADLINE_S):
        while True:
            if not await backend.port.is_alive(backend.name):
                return
            await trio.sleep(0.02)


async def test_running_is_alive_killed_is_not(backend: Any, clock: MockClock | None) -> None:
    assert await backend.port.is_alive(backend.name)
    backend.kill()
    await wait_dead(backend)  # a killed process may be a zombie for a moment


async def test_restart_is_one_attempt_that_returns_alive(
    backend: Any, clock: MockClock | None
) -> None:
    backend.kill()
    await backend.port.restart(backend.name)
    assert await backend.port.is_alive(backend.name)


async def test_age_is_since_the_running_process_started(
    backend: Any, clock: MockClock | None
) -> None:
    """What the agent reads to tell whether its nova-compute started before an
    evacuation finished (agent/reconcile.py): none for a dead process, a duration that
    starts again at a restart and grows with time."""
    backend.kill()
    await wait_dead(backend)
    assert backend.port.age_s(backend.name) == math.inf
    await backend.port.restart(backend.name)
    young = backend.port.age_s(backend.name)
    assert 0.0 <= young < DEADLINE_S
    await wait_until(lambda: backend.port.age_s(backend.name) >= young + 0.4)
    assert backend.port.age_s(backend.name) < young + DEADLINE_S


async def test_a_restart_that_fails_raises_restart_failed(
    backend: Any, clock: MockClock | None
) -> None:
    backend.break_restarts(True)
    backend.kill()
    await wait_dead(backend)
    with pytest.raises(ProcessError) as caught:
        await backend.port.restart(backend.name)
    assert caught.value.kind == "restart_failed"
    assert not await backend.port.is_alive(backend.name)


async def test_supervisor_reports_an_outage_once_then_its_end(
    backend: Any, clock: MockClock | None, nursery: trio.Nursery
) -> None:
    reports: list[ProcessReport] = []
    sup = Supervisor(backend.port, backend.config, reports.append, now=trio.current_time)
    backend.break_restarts(True)
    backend.kill()
    nursery.start_soon(sup.run)
    await wait_until(lambda: len(reports) == 1)
    (failed,) = reports
    assert failed.outcome == "restart_failed" and failed.attempts == 2
    # It keeps trying, backed off, and says nothing more while the outage lasts.
    await wait_until(lambda: sup.restarts >= 4)
    assert len(reports) == 1
    backend.break_restarts(False)
    await wait_until(lambda: len(reports) == 2)
    recovered = reports[1]
    assert recovered.outcome == "restarted" and recovered.since == failed.since
    assert await backend.port.is_alive(backend.name)
    assert not sup.outages
