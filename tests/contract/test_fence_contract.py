"""One FencePort contract, run against the real IpmiFencer (pyghmi -> ipmi_sim, whose
power-off really happens) and the simulator's FakeBmc.

What it proves: the fake the simulator fences with behaves like a real BMC where
meshha's safety depends on it - a fence returns only with the BMC's word that the host
is off, is idempotent, and power comes back on; wrong credentials are an `auth` error
that changes nothing; a dead BMC or a host without one is `unreachable`.

The fake runs under trio's autojump clock (its dead BMC takes 4.6 simulated seconds, as
pyghmi does for real); the real backend runs on the wall clock. pytest-trio takes the
clock from the test's own arguments, hence the `clock` argument of every test.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from meshha.config.model import Bmc
from meshha.errors import FenceError
from meshha.recovery.ports import FencePort

HOST = "host1"


class RealBmc:
    """IpmiFencer against one ipmi_sim (meshha.lab.bmc)."""

    name = "real"

    def __init__(self, directory: Path) -> None:
        from meshha.lab.bmc import BmcSim, free_udp_port

        self.directory = directory
        password = directory / "bmc-password"
        password.write_text("contract-pw\n")
        self.sim = BmcSim(HOST, directory / "bmc", port=free_udp_port(), password_file=password)

    async def start(self) -> None:
        self.sim.start()
        await self.sim.wait_ready()

    def stop(self) -> None:
        self.sim.stop()

    def fencer(self, bmc: Bmc | None = None, **settings: Any) -> FencePort:
        from meshha.recovery.fence_ipmi import IpmiFencer

        settings.setdefault("confirm_timeout_s", 10.0)
        return IpmiFencer({HOST: bmc or self.sim.bmc}, **settings)

    @property
    def port(self) -> FencePort:
        return self.fencer()

    def powered(self) -> bool:
        return self.sim.powered_on()

    def with_wrong_password(self) -> FencePort:
        wrong = self.directory / "wrong-password"
        wrong.write_text("not-it\n")
        return self.fencer(Bmc(self.sim.address, self.sim.port, self.sim.username, wrong))

    def with_dead_bmc(self) -> FencePort:
        self.sim.stop()
        return self.fencer(confirm_timeout_s=2.0, attempts=1)


class FakeBackend:
    """FakeBmc over a FakeCloud with the same host."""

    name = "fake"

    def __init__(self) -> None:
        from meshha.sim.fakes import FakeBmc, FakeCloud

        self.cloud = FakeCloud()
        self.machine = self.cloud.add_host(HOST)
        self._bmc = FakeBmc
        self.port: FencePort = FakeBmc(self.cloud, "contract", {HOST: self.machine.bmc_password})

    async def start(self) -> None:
        return

    def stop(self) -> None:
        return

    def powered(self) -> bool:
        return self.machine.powered

    def with_wrong_password(self) -> FencePort:
        return self._bmc(self.cloud, "contract", {HOST: b"not-it"})  # type: ignore[no-any-return]

    def with_dead_bmc(self) -> FencePort:
        self.machine.bmc_alive = False
        return self.port


@pytest.fixture(params=["real", "fake"])
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "real" and shutil.which("ipmi_sim") is None:
        pytest.skip("ipmi_sim (openipmi) missing")
    return str(request.param)


@pytest.fixture
def clock(kind: str) -> MockClock | None:
    """The fake runs in simulated time; pytest-trio uses a Clock fixture if given one."""
    return MockClock(autojump_threshold=0) if kind == "fake" else None


@pytest.fixture
async def backend(
    kind: str, clock: MockClock | None, tmp_path: Path
) -> AsyncIterator[RealBmc | FakeBackend]:
    b: RealBmc | FakeBackend = RealBmc(tmp_path) if kind == "real" else FakeBackend()
    await b.start()
    try:
        yield b
    finally:
        b.stop()


async def test_power_off_returns_only_once_the_bmc_reports_off(
    backend: Any, clock: MockClock | None
) -> None:
    assert await backend.port.power_state(HOST) == "on" and backend.powered()
    proof = await backend.port.power_off(HOST)
    assert proof.host == HOST and proof.method == "bmc" and proof.attempts >= 1
    assert not backend.powered()
    assert await backend.port.power_state(HOST) == "off"


async def test_power_off_is_idempotent(backend: Any, clock: MockClock | None) -> None:
    await backend.port.power_off(HOST)
    proof = await backend.port.power_off(HOST)
    assert proof.method == "bmc" and not backend.powered()


async def test_power_on_after_a_fence(backend: Any, clock: MockClock | None) -> None:
    await backend.port.power_off(HOST)
    await backend.port.power_on(HOST)
    assert backend.powered()
    assert await backend.port.power_state(HOST) == "on"


async def test_wrong_credentials_are_auth_and_change_nothing(
    backend: Any, clock: MockClock | None
) -> None:
    port = backend.with_wrong_password()
    with pytest.raises(FenceError) as caught:
        await port.power_off(HOST)
    assert caught.value.kind == "auth"
    assert backend.powered()
    with pytest.raises(FenceError) as caught:
        await port.power_state(HOST)
    assert caught.value.kind == "auth"


async def test_dead_bmc_is_unreachable(backend: Any, clock: MockClock | None) -> None:
    port = backend.with_dead_bmc()
    with trio.fail_after(10):
        with pytest.raises(FenceError) as caught:
            await port.power_off(HOST)
    assert caught.value.kind == "unreachable"
    assert backend.powered()  # nothing happened: the safe state


async def test_host_without_a_bmc_is_unreachable(backend: Any, clock: MockClock | None) -> None:
    with pytest.raises(FenceError) as caught:
        await backend.port.power_off("no-such-host")
    assert caught.value.kind == "unreachable"
