"""One WatchdogPort contract, run against the lab watchdog (meshha.lab.watchdog, driven by
the agent's SocketWatchdog, firing a real chassis program that SIGKILLs the host's
processes) and the simulator's FakeWatchdog; and against a Linux watchdog device when
MESHHA_TEST_WATCHDOG_DEVICE names one (never by default: a failing case reboots the
machine; this kernel has no watchdog driver and no modules, so there is none here).

What it proves, the semantics the agent's self-fence relies on: opening starts it and
reads back the timeout in use; fed, it never fires; not fed, it fires one timeout after
the last keepalive; the magic close stops it; a close without it (an agent that dies)
leaves it running; one opener at a time; a restarted agent that reopens it in time keeps
the host alive.

Real time (the lab watchdog is a separate timer, as hardware is), with 1 s timeouts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from meshha.agent.watchdog import LinuxWatchdog, SocketWatchdog
from meshha.errors import WatchdogError
from meshha.lab.watchdog import LabWatchdog
from meshha.recovery.ports import WatchdogPort
from meshha.sim.watchdog import FakeWatchdog

TIMEOUT_S = 1
SLACK_S = 1.0  # scheduling on a loaded 2-core machine


class FakeBackend:
    name = "fake"

    def __init__(self) -> None:
        self.device = FakeWatchdog(trio.current_time, "fake")

    def port(self) -> WatchdogPort:
        return self.device  # one device; "opening" it again is the same object

    def fired(self) -> bool:
        if self.device.due():
            self.device.fire()
        return self.device.fired_at is not None


class LabBackend:
    name = "lab"

    def __init__(self, root: Path, nursery: trio.Nursery) -> None:
        self.chassis = root / "chassis"
        self.chassis.mkdir()
        (self.chassis / "power").write_text("1\n")
        # A process of the lab host: it must die when the watchdog fires.
        self.victim = subprocess.Popen(["sleep", "300"], start_new_session=True)
        (self.chassis / "kill-pids").write_text(f"{self.victim.pid}\n")
        self.socket = root / "wd.sock"
        self.watchdog = LabWatchdog(self.socket, chassis_dir=self.chassis)
        self.nursery = nursery

    def port(self) -> WatchdogPort:
        return SocketWatchdog(self.socket)

    def fired(self) -> bool:
        if (self.chassis / "power").read_text().strip() != "0":
            return False
        assert self.victim.wait(timeout=5) == -signal.SIGKILL
        return True

    def close(self) -> None:
        if self.victim.poll() is None:
            self.victim.kill()
            self.victim.wait()


class LinuxBackend:
    name = "linux"

    def __init__(self, device: Path) -> None:
        self.device = device

    def port(self) -> WatchdogPort:
        return LinuxWatchdog(self.device)

    def fired(self) -> bool:
        return False  # it would reset this machine: the cases that expect it are skipped


BACKENDS = ["fake", "lab", "linux"]


@pytest.fixture(params=BACKENDS)
async def backend(
    request: pytest.FixtureRequest, nursery: trio.Nursery
) -> AsyncIterator[FakeBackend | LabBackend | LinuxBackend]:
    if request.param == "fake":
        yield FakeBackend()
    elif request.param == "lab":
        with tempfile.TemporaryDirectory(prefix="mh-wd-", dir="/tmp") as tmp:
            lab = LabBackend(Path(tmp), nursery)
            await nursery.start(lab.watchdog.run)
            try:
                yield lab
            finally:
                lab.close()
    else:
        device = os.environ.get("MESHHA_TEST_WATCHDOG_DEVICE")
        if not device:
            pytest.skip("no watchdog device here (set MESHHA_TEST_WATCHDOG_DEVICE to run)")
        yield LinuxBackend(Path(device))


def needs_firing(backend: object) -> None:
    if isinstance(backend, LinuxBackend):
        pytest.skip("firing a real watchdog resets this machine")


async def wait_fired(backend: FakeBackend | LabBackend | LinuxBackend, within_s: float) -> float:
    start = trio.current_time()
    with trio.fail_after(within_s):
        while not backend.fired():  # noqa: ASYNC110 - the device has no event to wait on
            await trio.sleep(0.02)
    return trio.current_time() - start


async def feed_for(port: WatchdogPort, seconds: float) -> None:
    end = trio.current_time() + seconds
    while trio.current_time() < end:
        await port.keepalive()
        await trio.sleep(TIMEOUT_S / 5)


async def test_open_sets_and_reads_back_the_timeout(backend: FakeBackend | LabBackend) -> None:
    port = backend.port()
    assert await port.open(2) == 2
    port.close(magic=True)


async def test_fed_it_never_fires(backend: FakeBackend | LabBackend) -> None:
    port = backend.port()
    await port.open(TIMEOUT_S)
    await feed_for(port, 3 * TIMEOUT_S)
    assert not backend.fired()
    port.close(magic=True)


async def test_unfed_it_fires_one_timeout_after_the_last_keepalive(
    backend: FakeBackend | LabBackend,
) -> None:
    needs_firing(backend)
    port = backend.port()
    await port.open(TIMEOUT_S)
    await feed_for(port, TIMEOUT_S)
    await port.keepalive()  # the last one: the clock starts here
    took = await wait_fired(backend, TIMEOUT_S + SLACK_S)
    assert took >= TIMEOUT_S - 0.05
    port.close(magic=False)


async def test_magic_close_stops_it(backend: FakeBackend | LabBackend) -> None:
    port = backend.port()
    await port.open(TIMEOUT_S)
    port.close(magic=True)
    with trio.move_on_after(2 * TIMEOUT_S + SLACK_S):
        await wait_fired(backend, 2 * TIMEOUT_S + SLACK_S + 1)
    assert not backend.fired()


async def test_close_without_magic_leaves_it_running(backend: FakeBackend | LabBackend) -> None:
    needs_firing(backend)
    port = backend.port()
    await port.open(TIMEOUT_S)
    port.close(magic=False)  # the agent died with the device open
    await wait_fired(backend, TIMEOUT_S + SLACK_S)


async def test_one_opener_at_a_time(backend: FakeBackend | LabBackend) -> None:
    first = backend.port()
    await first.open(TIMEOUT_S)
    for _ in range(50):  # the refusal is never lost to a race with the hang-up
        second = backend.port() if not isinstance(backend, FakeBackend) else backend.device
        with pytest.raises(WatchdogError) as err:
            await second.open(TIMEOUT_S)
        assert err.value.kind == "busy", err.value
    await feed_for(first, 2 * TIMEOUT_S)  # the refused opener stopped nothing
    assert not backend.fired()
    first.close(magic=True)


async def test_a_restarted_agent_that_reopens_in_time_keeps_the_host(
    backend: FakeBackend | LabBackend,
) -> None:
    port = backend.port()
    await port.open(TIMEOUT_S)
    port.close(magic=False)
    again = backend.port()
    await again.open(TIMEOUT_S)
    await feed_for(again, 2 * TIMEOUT_S)
    assert not backend.fired()
    again.close(magic=True)
