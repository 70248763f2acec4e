"""The small interfaces between meshha's core and the world.

Each port has a real adapter (pyghmi, openstacksdk, libvirt, systemd, HTTP/SMTP) and an
in-memory fake (meshha.sim.fakes) that the simulator drives; one contract test suite runs
against both. Every method is async: real adapters run their blocking library in a thread
owned by the agent (trio.to_thread with the adapter's own CapacityLimiter); fakes run
inline, so they work under trio's autojump clock.

Failures are raised as the typed errors of meshha.errors, never returned as flags.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

PowerState = Literal["on", "off"]


@dataclass(frozen=True)
class FenceProof:
    """What a confirmed fence rests on: the BMC said off after we asked for off."""

    host: str
    method: Literal["bmc", "self_fence_deadline"]
    detail: str
    attempts: int = 1


class FencePort(Protocol):
    async def power_off(self, host: str) -> FenceProof:
        """Power the host off and return only once the BMC *reports* it off.
        Raises FenceError(kind=unreachable|auth|timeout|not_confirmed)."""

    async def power_state(self, host: str) -> PowerState: ...

    async def power_on(self, host: str) -> None: ...


@dataclass(frozen=True)
class Flavor:
    name: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    extra_specs: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Server:
    """What Nova says about one instance, with what HA policy needs to resolve."""

    id: str
    name: str
    host: str | None
    status: str  # ACTIVE, SHUTOFF, ERROR, …
    task_state: str | None
    project_id: str
    flavor: Flavor
    metadata: tuple[tuple[str, str], ...] = ()
    availability_zone: str | None = None


@dataclass(frozen=True)
class HostFacts:
    """Placement facts for a hypervisor: free capacity and where it sits."""

    host: str
    vcpus_free: int
    ram_mb_free: int
    disk_gb_free: int
    availability_zone: str | None = None
    aggregates: tuple[str, ...] = ()
    service_up: bool = True
    service_enabled: bool = True
    forced_down: bool = False
    running_vms: int = 0


class NovaPort(Protocol):
    async def force_down(self, host: str, reason: str) -> None:
        """Force the compute service down *and* disable it, with `reason`. Idempotent."""

    async def disable_service(self, host: str, reason: str) -> None: ...

    async def enable_service(self, host: str) -> None:
        """Un-force-down and enable. Nova refuses while the service has not restarted."""

    async def list_servers(self, host: str) -> list[Server]:
        """All servers on `host`, across all projects."""

    async def get_server(self, server_id: str) -> Server: ...

    async def host_facts(
        self, hosts: list[str], *, known_counts: Mapping[str, int] | None = None
    ) -> list[HostFacts]:
        """Capacity and place of each host. `known_counts`: servers per host the caller
        has just listed (not asked again: this is on the path to the first evacuation)."""

    async def evacuate(
        self, server_id: str, target_host: str, *, rank: tuple[int, ...] = (1,)
    ) -> Server:
        """Rebuild the server on `target_host` and return once Nova shows it there with
        no task state, in the power state it had (ACTIVE, or SHUTOFF if it was stopped).
        Idempotent: a server already on `target_host` is fine, and one already being
        evacuated is waited for, never evacuated again. Concurrent calls share a bounded,
        adaptive number of evacuations in flight and start lowest `rank` first
        (meshha.recovery.evacuation.rank_of: priority, then plan order)."""

    async def start(self, server_id: str) -> None: ...

    async def stop(self, server_id: str) -> None: ...

    async def hard_reboot(self, server_id: str) -> None: ...

    async def live_migrate(self, server_id: str, target_host: str | None) -> Server: ...

    async def cold_migrate(self, server_id: str, target_host: str | None) -> Server: ...


VmEventKind = Literal[
    "crashed",  # qemu died: STOPPED/FAILED, STOPPED/CRASHED
    "panicked",  # CRASHED/PANICKED
    "io_error",  # IO_ERROR / IO_ERROR_REASON / SUSPENDED/IOERROR
    "watchdog",  # WATCHDOG / SUSPENDED/WATCHDOG
    "hypervisor_down",  # the libvirt connection is gone
    "hypervisor_up",  # the libvirt connection is back
]


@dataclass(frozen=True)
class VmEvent:
    """A classified failure signal from the local hypervisor. Events the operator caused
    (shutdown, destroy through Nova) never become a VmEvent."""

    kind: VmEventKind
    vm: str | None  # the Nova instance uuid (libvirt domain UUID), None for hypervisor
    detail: str  # the libvirt event/detail names, e.g. "STOPPED/FAILED"


class HypervisorPort(Protocol):
    async def running_vms(self) -> list[str]: ...

    async def destroy_all(self) -> list[str]:
        """Self-fence: destroy every running domain; returns the uuids destroyed."""

    async def resume(self, vm: str) -> None: ...

    async def destroy(self, vm: str) -> None:
        """Destroy one domain (by Nova instance uuid); one already gone is fine."""
        ...


class WatchdogPort(Protocol):
    """A watchdog that resets this host unless fed (Linux /dev/watchdog semantics).

    `open` starts it, as opening the device does; from then on it fires `timeout` seconds
    after the last keepalive. `close(magic=True)` stops it (the magic close of a clean
    stop); `close(magic=False)`, like a process that dies with the device open, leaves it
    running. Only one opener at a time (WatchdogError kind "busy")."""

    async def open(self, timeout_s: int) -> int:
        """Start it with `timeout_s`; returns the timeout the device really uses (read
        back: hardware may round it)."""

    async def keepalive(self) -> None: ...

    def close(self, *, magic: bool) -> None:
        """Synchronous, so a `finally` under cancellation can run it."""


class ProcessPort(Protocol):
    async def is_alive(self, name: str) -> bool: ...

    async def restart(self, name: str) -> None: ...

    def age_s(self, name: str) -> float:
        """Seconds since the running process called `name` started; inf when none is
        known (a duration: no wall clock in it)."""
        ...


@dataclass(frozen=True)
class Alert:
    segment: str
    severity: Literal["info", "warning", "critical"]
    subject: str
    body: str
    host: str | None = None
    key: str = ""  # idempotency key: the intent id that raised it
    facts: tuple[tuple[str, str], ...] = field(default=())


class AlertPort(Protocol):
    async def send(self, alert: Alert) -> None:
        """Deliver to every configured sink; raises AlertError if none accepted it."""
