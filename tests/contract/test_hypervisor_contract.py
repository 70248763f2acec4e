"""One HypervisorPort contract, run against LibvirtHypervisor (a private libvirtd with real
QEMU domains, meshha.lab.libvirt_setup) and the simulator's FakeHypervisor.

What it proves: what the agent's self-fence and VM recovery rely on - `running_vms`
lists every VM that holds its disks (running or paused) by its uuid, `destroy_all`
destroys exactly those and returns them, so nothing runs after it, and is idempotent;
`resume` runs a paused VM again and is idempotent. Where the fake differs, the test says
so with an xfail and the reason.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from meshha.errors import HypervisorError
from meshha.recovery.ports import Flavor, HypervisorPort

HOST = "h1"
TINY = Flavor("m1.tiny", vcpus=1, ram_mb=32, disk_gb=0)
_names = itertools.count()


class RealHypervisor:
    name = "real"

    def __init__(self) -> None:
        from meshha.lab.libvirt_setup import PrivateLibvirtd

        # Short: libvirtd's socket path must fit in 108 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="mh-hv-", dir="/tmp"))
        self.libvirtd = PrivateLibvirtd(self.root / "lv")
        self.conn: Any = None
        self.port: HypervisorPort

    async def start(self) -> None:
        import libvirt

        from meshha.probes.libvirt_events import LibvirtHypervisor

        self.libvirtd.start()
        await self.libvirtd.wait_ready()
        self.conn = libvirt.open(self.libvirtd.uri)
        self.port = LibvirtHypervisor(self.libvirtd.uri)

    def stop(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.libvirtd.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    async def start_vm(self) -> str:
        from meshha.lab.libvirt_setup import domain_xml

        xml = domain_xml(f"contract-{next(_names)}")
        dom = await trio.to_thread.run_sync(self.conn.createXML, xml, 0)
        return str(dom.UUIDString())

    async def pause(self, vm: str) -> None:
        await trio.to_thread.run_sync(self.conn.lookupByUUIDString(vm).suspend)


class FakeBackend:
    name = "fake"

    def __init__(self) -> None:
        from meshha.sim.fakes import FakeCloud, FakeHypervisor

        self.cloud = FakeCloud()
        self.cloud.add_host(HOST)
        self.port: HypervisorPort = FakeHypervisor(self.cloud, HOST)

    async def start(self) -> None:
        return

    def stop(self) -> None:
        return

    async def start_vm(self) -> str:
        vm = f"00000000-0000-4000-8000-{next(_names):012d}"
        self.cloud.boot(vm, HOST, TINY)
        return vm

    async def pause(self, vm: str) -> None:
        return  # the fake has no paused state: a paused VM is one that still runs


def real_unavailable() -> str | None:
    from meshha.lab.libvirt_setup import missing_programs

    if os.geteuid() != 0:
        return "a private libvirtd needs root"
    missing = missing_programs()
    return f"missing: {missing}" if missing else None


@pytest.fixture(params=["real", "fake"])
def kind(request: pytest.FixtureRequest) -> str:
    if request.param == "real" and (reason := real_unavailable()):
        pytest.skip(reason)
    return str(request.param)


@pytest.fixture
def clock(kind: str) -> MockClock | None:
    """The fake runs in simulated time (pytest-trio takes a Clock from the test's args)."""
    return MockClock(autojump_threshold=0) if kind == "fake" else None


@pytest.fixture
async def backend(kind: str) -> AsyncIterator[RealHypervisor | FakeBackend]:
    b: RealHypervisor | FakeBackend = RealHypervisor() if kind == "real" else FakeBackend()
    try:
        await b.start()
        yield b
    finally:
        b.stop()


async def test_empty_host_runs_nothing(backend: Any, clock: MockClock | None) -> None:
    assert await backend.port.running_vms() == []
    assert await backend.port.destroy_all() == []


async def test_running_vms_lists_every_vm_by_uuid(backend: Any, clock: MockClock | None) -> None:
    vms = sorted([await backend.start_vm() for _ in range(2)])
    assert sorted(await backend.port.running_vms()) == vms


async def test_a_paused_vm_still_counts_and_resume_runs_it(
    backend: Any, clock: MockClock | None
) -> None:
    vm = await backend.start_vm()
    await backend.pause(vm)
    assert vm in await backend.port.running_vms()
    await backend.port.resume(vm)
    await backend.port.resume(vm)  # running already: fine
    assert vm in await backend.port.running_vms()


async def test_destroy_all_leaves_nothing_running(backend: Any, clock: MockClock | None) -> None:
    vms = sorted([await backend.start_vm() for _ in range(3)])
    await backend.pause(vms[0])
    assert sorted(await backend.port.destroy_all()) == vms
    assert await backend.port.running_vms() == []
    assert await backend.port.destroy_all() == []


async def test_resume_of_an_unknown_vm_is_not_found(
    backend: Any, clock: MockClock | None, kind: str, request: pytest.FixtureRequest
) -> None:
    with pytest.raises(HypervisorError) as caught:
        await backend.port.resume("00000000-0000-4000-8000-999999999999")
    assert caught.value.kind == "not_found"
