"""LibvirtEventMonitor and LibvirtHypervisor against a real libvirtd + QEMU.

Each test gets its own libvirtd (meshha.lab.libvirt_setup.PrivateLibvirtd: own mount
namespace and directories, under a reaping supervisor), so killing and restarting it
disturbs nothing else on the machine. Every fault is real: kill -9 of qemu, a disk
served by an NBD server that answers EIO/ENOSPC, a guest that arms the ib700 watchdog or
writes the ISA panic port, libvirtd killed and started again.

Absence of an event is proven by ordering, not by waiting: after the operator actions,
a sentinel VM is crashed; its event must be the next one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from meshha.lab.libvirt_setup import PrivateLibvirtd, domain_xml, missing_programs
from meshha.lab.nbd_fault import MAILBOX_BOOT_SECTOR, NbdFaultServer
from meshha.probes.libvirt_events import (
    LibvirtEventMonitor,
    LibvirtHypervisor,
    classify_lifecycle,
    classify_state,
)
from meshha.recovery.ports import VmEvent

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(bool(missing_programs()), reason=f"missing: {missing_programs()}"),
    pytest.mark.skipif(os.geteuid() != 0, reason="a private libvirtd needs root"),
]

EVENT_TIMEOUT_S = 15.0


@pytest.fixture
def root() -> Iterator[Path]:
    # Short, because libvirtd's socket path must fit in 108 bytes.
    path = Path(tempfile.mkdtemp(prefix="mh-lv-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def libvirtd(root: Path) -> AsyncIterator[PrivateLibvirtd]:
    lv = PrivateLibvirtd(root / "lv")
    lv.start()
    try:
        await lv.wait_ready()
        yield lv
    finally:
        lv.stop()


@pytest.fixture
async def events(
    libvirtd: PrivateLibvirtd, nursery: trio.Nursery
) -> trio.MemoryReceiveChannel[VmEvent]:
    send, receive = trio.open_memory_channel[VmEvent](64)
    monitor = LibvirtEventMonitor(libvirtd.uri, reconnect_max_s=0.5)
    await nursery.start(monitor.run, send)
    return receive


class Libvirt:
    """The operator's side: plain libvirt calls, each in a thread (an in-process NBD
    server must keep serving while QEMU starts)."""

    def __init__(self, uri: str) -> None:
        import libvirt

        self.conn = libvirt.open(uri)

    async def create(self, xml: str) -> str:
        dom = await trio.to_thread.run_sync(self.conn.createXML, xml, 0)
        return str(dom.UUIDString())

    async def define_and_start(self, xml: str) -> str:
        dom = await trio.to_thread.run_sync(self.conn.defineXML, xml)
        await trio.to_thread.run_sync(dom.create)
        return str(dom.UUIDString())

    async def do(self, uuid: str, method: str) -> None:
        dom = self.conn.lookupByUUIDString(uuid)
        await trio.to_thread.run_sync(getattr(dom, method))

    def state(self, uuid: str) -> tuple[int, int]:
        state, reason = self.conn.lookupByUUIDString(uuid).state()
        return state, reason

    def close(self) -> None:
        import libvirt

        with contextlib.suppress(libvirt.libvirtError):  # closed already
            self.conn.close()


@pytest.fixture
def operator(libvirtd: PrivateLibvirtd) -> Iterator[Libvirt]:
    lv = Libvirt(libvirtd.uri)
    yield lv
    lv.close()


async def next_event(events: trio.MemoryReceiveChannel[VmEvent]) -> VmEvent:
    with trio.fail_after(EVENT_TIMEOUT_S):
        return await events.receive()


async def wait_guest_io(server: NbdFaultServer, requests: int = 10) -> None:
    """Wait until the guest's boot sector is reading and writing its disk."""
    target = server.requests_served + requests
    with trio.fail_after(30):
        while True:
            if server.requests_served >= target:
                return
            await trio.sleep(0.01)


async def test_kill_9_of_qemu_is_crashed(
    libvirtd: PrivateLibvirtd, operator: Libvirt, events: trio.MemoryReceiveChannel[VmEvent]
) -> None:
    vm = await operator.create(domain_xml("victim"))
    start = time.monotonic()
    os.kill(libvirtd.qemu_pid("victim"), signal.SIGKILL)
    event = await next_event(events)
    latency_s = time.monotonic() - start
    print(f"kill -9 -> crashed event: {latency_s * 1000:.0f} ms")
    assert event == VmEvent("crashed", vm, "STOPPED/FAILED")


async def test_operator_actions_are_not_events(
    libvirtd: PrivateLibvirtd, operator: Libvirt, events: trio.MemoryReceiveChannel[VmEvent]
) -> None:
    paused = await operator.create(domain_xml("paused-by-operator"))
    destroyed = await operator.create(domain_xml("destroyed-by-operator"))
    sentinel = await operator.create(domain_xml("sentinel"))
    await operator.do(paused, "suspend")
    await operator.do(paused, "resume")
    await operator.do(paused, "suspend")
    await operator.do(destroyed, "destroy")
    os.kill(libvirtd.qemu_pid("sentinel"), signal.SIGKILL)
    # Events arrive in order: had any operator action become an event, it came first.
    assert await next_event(events) == VmEvent("crashed", sentinel, "STOPPED/FAILED")


async def test_disk_io_error_is_io_error_and_resume_recovers(
    libvirtd: PrivateLibvirtd,
    operator: Libvirt,
    events: trio.MemoryReceiveChannel[VmEvent],
    nursery: trio.Nursery,
) -> None:
    import libvirt

    disk = NbdFaultServer(libvirtd.root / "disk.sock")
    await nursery.start(disk.serve)
    # TCG: SeaBIOS boots in ~0.2 s; under nested KVM here it takes 3-6 s.
    vm = await operator.create(domain_xml("io", nbd_socket=disk.socket_path, kvm=False))
    await wait_guest_io(disk)

    disk.fault = "enospc"
    start = time.monotonic()
    event = await next_event(events)
    print(f"NBD ENOSPC -> io_error event: {(time.monotonic() - start) * 1000:.0f} ms")
    assert event.kind == "io_error" and event.vm == vm
    assert "reason=enospc" in event.detail and "action=PAUSE" in event.detail
    assert operator.state(vm) == (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_IOERROR)

    disk.fault = None
    await LibvirtHypervisor(libvirtd.uri).resume(vm)
    assert operator.state(vm)[0] == libvirt.VIR_DOMAIN_RUNNING
    await wait_guest_io(disk)

    disk.fault = "eio"  # a second episode is a second event
    start = time.monotonic()
    event = await next_event(events)
    print(f"NBD EIO -> io_error event: {(time.monotonic() - start) * 1000:.0f} ms")
    assert event.kind == "io_error" and event.vm == vm and "reason=eio" in event.detail


async def test_guest_watchdog_is_watchdog(
    libvirtd: PrivateLibvirtd,
    operator: Libvirt,
    events: trio.MemoryReceiveChannel[VmEvent],
    nursery: trio.Nursery,
) -> None:
    import libvirt

    disk = NbdFaultServer(libvirtd.root / "wd.sock", boot_sector=MAILBOX_BOOT_SECTOR)
    await nursery.start(disk.serve)
    xml = domain_xml("wd", nbd_socket=disk.socket_path, watchdog=True, kvm=False)
    vm = await operator.create(xml)
    await wait_guest_io(disk)
    disk.set_mailbox(b"W")  # the guest arms the ib700 and halts; it fires 2 s later
    event = await next_event(events)
    assert event == VmEvent("watchdog", vm, "WATCHDOG action=PAUSE")
    assert operator.state(vm) == (libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_WATCHDOG)


async def test_guest_panic_is_panicked_then_crashed(
    libvirtd: PrivateLibvirtd,
    operator: Libvirt,
    events: trio.MemoryReceiveChannel[VmEvent],
    nursery: trio.Nursery,
) -> None:
    disk = NbdFaultServer(libvirtd.root / "panic.sock", boot_sector=MAILBOX_BOOT_SECTOR)
    await nursery.start(disk.serve)
    xml = domain_xml("panic", nbd_socket=disk.socket_path, panic=True, kvm=False)
    vm = await operator.create(xml)
    await wait_guest_io(disk)
    disk.set_mailbox(b"P")
    assert await next_event(events) == VmEvent("panicked", vm, "CRASHED/PANICKED")
    # on_crash=destroy: QEMU is then stopped, which is a crash of its own kind
    assert await next_event(events) == VmEvent("crashed", vm, "STOPPED/CRASHED")


async def test_libvirtd_restart_is_down_then_up_and_loses_no_crash(
    libvirtd: PrivateLibvirtd, operator: Libvirt, events: trio.MemoryReceiveChannel[VmEvent]
) -> None:
    vm = await operator.define_and_start(domain_xml("persistent"))
    operator.close()
    qemu = libvirtd.qemu_pid("persistent")

    libvirtd.kill_libvirtd()
    down = await next_event(events)
    assert down.kind == "hypervisor_down" and down.vm is None
    assert "EOF" in down.detail or "KEEPALIVE" in down.detail

    os.kill(qemu, signal.SIGKILL)  # dies while nobody is watching
    libvirtd.start_libvirtd()
    up = await next_event(events)
    assert up.kind == "hypervisor_up"
    crashed = await next_event(events)
    assert crashed.kind == "crashed" and crashed.vm == vm
    assert "while disconnected" in crashed.detail


async def test_monitor_started_while_libvirtd_is_down(
    libvirtd: PrivateLibvirtd, nursery: trio.Nursery
) -> None:
    libvirtd.kill_libvirtd()
    send, receive = trio.open_memory_channel[VmEvent](16)
    monitor = LibvirtEventMonitor(libvirtd.uri, reconnect_max_s=0.2)
    await nursery.start(monitor.run, send)
    assert (await next_event(receive)).kind == "hypervisor_down"
    libvirtd.start_libvirtd()
    assert (await next_event(receive)).kind == "hypervisor_up"
    assert monitor.connected


async def test_hypervisor_running_destroy_all_resume(
    libvirtd: PrivateLibvirtd, operator: Libvirt
) -> None:
    from meshha.errors import HypervisorError

    hypervisor = LibvirtHypervisor(libvirtd.uri)
    assert await hypervisor.running_vms() == []
    vms = sorted([await operator.create(domain_xml(f"vm{i}")) for i in range(3)])
    await operator.do(vms[0], "suspend")  # paused still holds its disks: it counts
    assert await hypervisor.running_vms() == vms

    await hypervisor.resume(vms[0])
    await hypervisor.resume(vms[0])  # running already: fine
    with pytest.raises(HypervisorError) as caught:
        await hypervisor.resume("00000000-0000-0000-0000-000000000000")
    assert caught.value.kind == "not_found"

    start = time.monotonic()
    assert await hypervisor.destroy_all() == vms
    print(f"destroy_all of 3 VMs: {(time.monotonic() - start) * 1000:.0f} ms")
    assert await hypervisor.running_vms() == []
    assert await hypervisor.destroy_all() == []


async def test_hypervisor_unreachable(libvirtd: PrivateLibvirtd) -> None:
    from meshha.errors import HypervisorError

    libvirtd.kill_libvirtd()
    with pytest.raises(HypervisorError) as caught:
        await LibvirtHypervisor(libvirtd.uri).running_vms()
    assert caught.value.kind == "unreachable"


def test_classification_table() -> None:
    import libvirt as lv

    assert classify_lifecycle(lv.VIR_DOMAIN_EVENT_STOPPED, lv.VIR_DOMAIN_EVENT_STOPPED_FAILED)
    assert classify_lifecycle(lv.VIR_DOMAIN_EVENT_STOPPED, lv.VIR_DOMAIN_EVENT_STOPPED_CRASHED)
    operator_caused = [
        (lv.VIR_DOMAIN_EVENT_STOPPED, lv.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN),
        (lv.VIR_DOMAIN_EVENT_STOPPED, lv.VIR_DOMAIN_EVENT_STOPPED_DESTROYED),
        (lv.VIR_DOMAIN_EVENT_STOPPED, lv.VIR_DOMAIN_EVENT_STOPPED_MIGRATED),
        (lv.VIR_DOMAIN_EVENT_STOPPED, lv.VIR_DOMAIN_EVENT_STOPPED_SAVED),
        (lv.VIR_DOMAIN_EVENT_SUSPENDED, lv.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED),
        (lv.VIR_DOMAIN_EVENT_SUSPENDED, lv.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED),
        (lv.VIR_DOMAIN_EVENT_STARTED, 0),
        (lv.VIR_DOMAIN_EVENT_RESUMED, 0),
        (lv.VIR_DOMAIN_EVENT_SHUTDOWN, 0),
    ]
    assert all(classify_lifecycle(e, d) is None for e, d in operator_caused)
    assert classify_lifecycle(lv.VIR_DOMAIN_EVENT_CRASHED, 0) == ("panicked", "CRASHED/PANICKED")
    assert classify_lifecycle(lv.VIR_DOMAIN_EVENT_SUSPENDED, 2) == ("io_error", "SUSPENDED/IOERROR")
    assert classify_lifecycle(lv.VIR_DOMAIN_EVENT_SUSPENDED, 3) == (
        "watchdog",
        "SUSPENDED/WATCHDOG",
    )
    assert classify_state(lv.VIR_DOMAIN_SHUTOFF, lv.VIR_DOMAIN_SHUTOFF_DESTROYED) is None
    assert classify_state(lv.VIR_DOMAIN_SHUTOFF, lv.VIR_DOMAIN_SHUTOFF_FAILED)
    assert classify_state(lv.VIR_DOMAIN_PAUSED, lv.VIR_DOMAIN_PAUSED_USER) is None
