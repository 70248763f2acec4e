"""In-memory fakes of every port, over one shared fake cloud.

The simulator runs whole segments on these; the contract tests (tests/contract) run the
same suites against these and the real adapters (ipmi_sim, real Nova, libvirtd), so a
fake that drifts from its real counterpart fails a test.

`FakeCloud` is the ground truth the invariant checks read: which machines are powered,
where each VM's process really runs (a hung host's VMs still "run": frozen, not gone),
and every action taken, by whom, when. Starting a VM somewhere while it still runs
elsewhere is recorded as a violation the moment it happens.

Delays are simulated with trio.sleep, so under an autojump clock they cost nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import trio

from meshha.errors import AlertError, FenceError, HypervisorError, NovaError, ProcessError
from meshha.recovery.evacuation import AdaptiveLimit, Board, LimitSettings, View
from meshha.recovery.ports import (
    Alert,
    FenceProof,
    Flavor,
    HostFacts,
    PowerState,
    Server,
    VmEvent,
)

UNREACHABLE_BMC_S = 4.6  # what pyghmi takes to give up on a dead BMC (environment.md)
# A hung BMC accepts the session and never answers: the IPMI adapter gives up when its
# confirm deadline passes (fence_ipmi's confirm_timeout_s), with kind "timeout".
HUNG_BMC_S = 30.0

LIBVIRT_DAEMONS = ("libvirtd", "virtqemud")  # as meshha.agent.main watches them


@dataclass
class FakeMachine:
    name: str
    networks: tuple[str, ...]
    vcpus: int = 16
    ram_mb: int = 32768
    disk_gb: int = 500
    powered: bool = True
    hung: bool = False
    bmc_alive: bool = True
    bmc_hung: bool = False  # accepts the session, never answers (see HUNG_BMC_S)
    bmc_password: bytes = b"secret"
    bmc_delay_s: float = 0.02
    nics: dict[str, bool] = field(default_factory=dict)
    processes: dict[str, bool] = field(
        default_factory=lambda: {"nova-compute": True, "libvirtd": True}
    )
    restart_fails: set[str] = field(default_factory=set)
    availability_zone: str = "nova"
    aggregates: tuple[str, ...] = ()
    # A watchdog the agent pets: a host hung this long is reset (None: no watchdog).
    watchdog_s: float | None = None
    hung_since: float | None = None
    booted_at: float = 0.0  # wall clock of its last power-on
    bmc_lies: bool = False  # says "off" to a fence, but nothing happens
    # When each process last started (cloud time): power-on, or a restart.
    started: dict[str, float] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return self.powered and not self.hung


@dataclass
class FakeServer:
    id: str
    name: str
    project_id: str
    flavor: Flavor
    host: str
    status: str = "ACTIVE"
    task_state: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    availability_zone: str = "nova"

    def view(self) -> Server:
        return Server(
            id=self.id,
            name=self.name,
            host=self.host,
            status=self.status,
            task_state=self.task_state,
            project_id=self.project_id,
            flavor=self.flavor,
            metadata=tuple(sorted(self.metadata.items())),
            availability_zone=self.availability_zone,
        )


@dataclass
class Action:
    t: float
    actor: str
    action: str
    host: str
    detail: str = ""


class FakeCloud:
    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self.machines: dict[str, FakeMachine] = {}
        self.servers: dict[str, FakeServer] = {}
        self.migrating: dict[str, trio.Event] = {}  # live migrations under way
        self.running: dict[str, set[str]] = {}  # vm -> hosts where its process runs
        self.services: dict[str, dict[str, object]] = {}
        self.violations: list[str] = []
        self.actions: list[Action] = []
        self.alerts: list[Alert] = []
        self.nova_up = True
        self.alerts_up = True
        # Evacuation records in status `done`, by source host: set when an evacuation
        # finishes, cleared when the source's nova-compute starts (process_started).
        self.evacuations_done: dict[str, set[str]] = {}
        self.nova_delay_s = 0.3
        self.nova_timeout_s = 30.0  # the real driver's deadline for one call
        self._clock = clock or trio.current_time
        self._events: dict[
            str, tuple[trio.MemorySendChannel[VmEvent], trio.MemoryReceiveChannel[VmEvent]]
        ] = {}

    # -- building ----------------------------------------------------------------------

    def add_host(
        self, name: str, networks: tuple[str, ...] = ("admin",), **kw: object
    ) -> FakeMachine:
        m = FakeMachine(name, networks, **kw)  # type: ignore[arg-type]
        m.nics = {n: True for n in networks}
        self.machines[name] = m
        self.services[name] = {"forced_down": False, "disabled": False, "reason": ""}
        self._events[name] = trio.open_memory_channel[VmEvent](256)
        return m

    def boot(
        self,
        vm: str,
        host: str,
        flavor: Flavor,
        *,
        project: str = "demo",
        metadata: Mapping[str, str] | None = None,
    ) -> FakeServer:
        s = FakeServer(
            vm,
            vm,
            project,
            flavor,
            host,
            metadata=dict(metadata or {}),
            availability_zone=self.machines[host].availability_zone,
        )
        self.servers[vm] = s
        self._start(vm, host)
        return s

    def schedule(
        self,
        vm: str,
        flavor: Flavor,
        *,
        project: str = "demo",
        metadata: Mapping[str, str] | None = None,
    ) -> FakeServer:
        """Boot `vm` where Nova's scheduler would: an enabled, running compute host with
        room for the flavor (ComputeFilter, resource filters), the most free RAM first."""
        host = self.pick_host(flavor, exclude=())
        if host is None:
            raise NovaError(f"no valid host for {vm}", kind="failed", where="nova-scheduler")
        return self.boot(vm, host, flavor, project=project, metadata=metadata)

    def pick_host(self, flavor: Flavor, exclude: tuple[str, ...]) -> str | None:
        best: tuple[int, str] | None = None
        for h, m in sorted(self.machines.items()):
            if h in exclude or not self.schedulable(h):
                continue
            mine = [s.flavor for s in self.servers.values() if s.host == h]
            free = (
                m.vcpus - sum(f.vcpus for f in mine),
                m.ram_mb - sum(f.ram_mb for f in mine),
                m.disk_gb - sum(f.disk_gb for f in mine),
            )
            if free[0] < flavor.vcpus or free[1] < flavor.ram_mb or free[2] < flavor.disk_gb:
                continue
            if best is None or free[1] > best[0]:
                best = (free[1], h)
        return None if best is None else best[1]

    def schedulable(self, host: str) -> bool:
        """What ComputeFilter passes: the service is enabled and up."""
        svc, m = self.services[host], self.machines[host]
        return (
            not svc["disabled"]
            and not svc["forced_down"]
            and m.alive
            and m.processes.get("nova-compute", False)
        )

    # -- ground truth ------------------------------------------------------------------

    def now(self) -> float:
        return self._clock()

    def record(self, actor: str, action: str, host: str, detail: str = "") -> None:
        self.actions.append(Action(self.now(), actor, action, host, detail))

    def _start(self, vm: str, host: str) -> None:
        where = self.running.setdefault(vm, set())
        others = where - {host}
        if others:
            self.violations.append(
                f"t={self.now():.3f}: VM {vm} started on {host} while still running on {sorted(others)}"
            )
        where.add(host)

    def _stop(self, vm: str, host: str | None = None) -> None:
        where = self.running.get(vm, set())
        if host is None:
            where.clear()
        else:
            where.discard(host)

    def vms_on(self, host: str) -> list[str]:
        return sorted(vm for vm, hosts in self.running.items() if host in hosts)

    def power_off(self, host: str) -> None:
        m = self.machines[host]
        m.powered, m.hung = False, False
        for vm in self.vms_on(host):
            self._stop(vm, host)

    def power_on(self, host: str) -> None:
        m = self.machines[host]
        if not m.powered:
            m.booted_at = self.now()
            for p in m.processes:
                self.process_started(host, p)
        m.powered, m.hung = True, False
        m.processes = {p: True for p in m.processes}

    def process_started(self, host: str, name: str) -> None:
        """`name` starts on `host`. A nova-compute that starts moves the evacuation
        records from its host to `completed` (ComputeManager._destroy_evacuated_instances,
        run once at start): until then, records that reached `done` keep Nova from
        forcing the service up."""
        self.machines[host].started[name] = self.now()
        if name == "nova-compute":
            self.evacuations_done.pop(host, None)

    def crash_vm(self, vm: str, kind: str = "crashed", detail: str = "STOPPED/FAILED") -> None:
        s = self.servers[vm]
        if kind == "crashed":
            self._stop(vm, s.host)
            s.status = "SHUTOFF"
        self._events[s.host][0].send_nowait(VmEvent(kind, vm, detail))  # type: ignore[arg-type]

    def hypervisor_connection(self, host: str, up: bool) -> None:
        """libvirtd died (or runs again): the host's event monitor loses (or regains) its
        connection, as the real one reports it (meshha.probes.libvirt_events)."""
        kind = "hypervisor_up" if up else "hypervisor_down"
        detail = "connection open" if up else "connection closed: end of file"
        self._events[host][0].send_nowait(VmEvent(kind, None, detail))  # type: ignore[arg-type]

    def events_for(self, host: str) -> trio.MemoryReceiveChannel[VmEvent]:
        return self._events[host][1]


class FakeBmc:
    """FencePort over FakeCloud. `credentials` is what the adapter was configured with;
    a mismatch with the machine's BMC password is an auth error, as on a real BMC."""

    def __init__(
        self, cloud: FakeCloud, actor: str = "", credentials: Mapping[str, bytes] | None = None
    ) -> None:
        self.cloud, self.actor, self.credentials = cloud, actor, dict(credentials or {})

    def _machine(self, host: str) -> FakeMachine:
        m = self.cloud.machines.get(host)
        if m is None:
            raise FenceError(f"no BMC configured for {host}", kind="unreachable", where=host)
        return m

    async def _login(self, host: str) -> FakeMachine:
        m = self._machine(host)
        if not m.bmc_alive:
            await trio.sleep(UNREACHABLE_BMC_S)
            raise FenceError("BMC does not answer", kind="unreachable", where=f"bmc of {host}")
        await trio.sleep(m.bmc_delay_s)
        if host in self.credentials and self.credentials[host] != m.bmc_password:
            raise FenceError("BMC refused the credentials", kind="auth", where=f"bmc of {host}")
        if m.bmc_hung:
            await trio.sleep(HUNG_BMC_S)
            raise FenceError(
                f"BMC accepted the session but did not answer in {HUNG_BMC_S:g}s",
                kind="timeout",
                where=f"bmc of {host}",
            )
        return m

    async def power_off(self, host: str) -> FenceProof:
        m = await self._login(host)
        self.cloud.record(self.actor, "fence", host)
        if m.bmc_lies:
            return FenceProof(host, "bmc", "power state read back: off")
        self.cloud.power_off(host)
        await trio.sleep(m.bmc_delay_s)
        state = await self.power_state(host)
        if state != "off":
            raise FenceError(
                "BMC still reports power on", kind="not_confirmed", where=f"bmc of {host}"
            )
        return FenceProof(host, "bmc", "power state read back: off")

    async def power_state(self, host: str) -> PowerState:
        m = await self._login(host)
        return "on" if m.powered and not m.bmc_lies else "off"

    async def power_on(self, host: str) -> None:
        await self._login(host)
        self.cloud.record(self.actor, "power_on", host)
        self.cloud.power_on(host)


class FakeNova:
    """NovaPort over FakeCloud, with the Nova behaviour meshha depends on, as the real
    driver reports it (tests/contract): evacuation is `refused` while the source compute
    service is up (HTTP 400 ComputeServiceInUse); un-forcing is `refused` until the
    compute service runs again; start/stop of a server already there is a no-op; an
    outage makes every call fail `unreachable`."""

    def __init__(
        self, cloud: FakeCloud, actor: str = "", limits: LimitSettings | None = None
    ) -> None:
        self.cloud, self.actor = cloud, actor
        self.board = Board(AdaptiveLimit(limits))
        self._board_wake = trio.Event()

    async def _call(self) -> None:
        if not self.cloud.nova_up:
            await trio.sleep(0.05)
            raise NovaError("connection refused", kind="unreachable", where="nova-api")
        await trio.sleep(0.01)

    def _server(self, server_id: str) -> FakeServer:
        s = self.cloud.servers.get(server_id)
        if s is None:
            raise NovaError(f"server {server_id} not found", kind="not_found", where="nova-api")
        return s

    def _service_down(self, host: str) -> bool:
        svc = self.cloud.services[host]
        m = self.cloud.machines[host]
        return bool(svc["forced_down"]) or not (m.alive and m.processes.get("nova-compute", False))

    async def force_down(self, host: str, reason: str) -> None:
        await self._call()
        self.cloud.record(self.actor, "force_down", host, reason)
        self.cloud.services[host].update(forced_down=True, disabled=True, reason=reason)

    async def disable_service(self, host: str, reason: str) -> None:
        await self._call()
        self.cloud.record(self.actor, "disable", host, reason)
        self.cloud.services[host].update(disabled=True, reason=reason)

    async def enable_service(self, host: str) -> None:
        await self._call()
        m = self.cloud.machines[host]
        if not (m.alive and m.processes.get("nova-compute", False)):
            raise NovaError(
                f"nova-compute on {host} has not restarted", kind="refused", where="nova-api"
            )
        if self.cloud.evacuations_done.get(host):
            raise NovaError(
                f"Unable to force up host {host} as `done` evacuation migration records "
                "remain associated with the host",
                kind="refused",
                where="nova-api",
            )
        self.cloud.record(self.actor, "enable", host)
        self.cloud.services[host].update(forced_down=False, disabled=False, reason="")

    async def list_servers(self, host: str) -> list[Server]:
        await self._call()
        return [
            s.view()
            for s in sorted(self.cloud.servers.values(), key=lambda s: s.id)
            if s.host == host
        ]

    async def get_server(self, server_id: str) -> Server:
        await self._call()
        return self._server(server_id).view()

    async def host_facts(
        self, hosts: list[str], *, known_counts: Mapping[str, int] | None = None
    ) -> list[HostFacts]:
        await self._call()
        out = []
        for h in hosts:
            m = self.cloud.machines.get(h)
            if m is None:
                raise NovaError(f"no compute host {h}", kind="not_found", where="nova-api")
            mine = [s for s in self.cloud.servers.values() if s.host == h]
            svc = self.cloud.services[h]
            out.append(
                HostFacts(
                    host=h,
                    vcpus_free=m.vcpus - sum(s.flavor.vcpus for s in mine),
                    ram_mb_free=m.ram_mb - sum(s.flavor.ram_mb for s in mine),
                    disk_gb_free=m.disk_gb - sum(s.flavor.disk_gb for s in mine),
                    availability_zone=m.availability_zone,
                    aggregates=m.aggregates,
                    service_up=not self._service_down(h),
                    service_enabled=not svc["disabled"],
                    forced_down=bool(svc["forced_down"]),
                    running_vms=len(mine),
                )
            )
        return out

    async def evacuate(
        self, server_id: str, target_host: str, *, rank: tuple[int, ...] = (1,)
    ) -> Server:
        if self.board.active(server_id):
            raise NovaError(f"{server_id} is being evacuated", kind="conflict", where="nova-api")
        # The real driver's admission (the same pure Board): bounded, best rank first;
        # calls made together all queue before the first is admitted.
        job = self.board.submit(server_id, target_host, rank, trio.current_time())
        try:
            await self._call()
            s = self._server(server_id)
            if s.host == target_host and s.task_state is None:
                return s.view()  # already done: idempotent
            if not self._service_down(s.host):
                raise NovaError(
                    f"compute service of {s.host} is still in use",
                    kind="refused",
                    where="nova-api",
                )
            if not self.cloud.machines[target_host].alive:
                raise NovaError(f"target {target_host} is down", kind="failed", where="nova-api")
            if self.cloud.services[target_host]["disabled"]:
                # An explicit host still goes through the scheduler's filters (no force).
                raise NovaError(
                    f"no valid host: {target_host} is disabled",
                    kind="failed",
                    where="nova-scheduler",
                )
            while job.phase == "queued":
                self.board.admit()
                if job.phase == "queued":
                    await self._board_changed()
            self.cloud.record(self.actor, "evacuate", s.host, f"{server_id} -> {target_host}")
            s.task_state = "rebuilding"
            self.board.posted(server_id, trio.current_time())
            await trio.sleep(self.cloud.nova_delay_s)
            self.cloud.evacuations_done.setdefault(s.host, set()).add(server_id)
            s.host, s.task_state, s.status = target_host, None, "ACTIVE"
            self.cloud._start(server_id, target_host)
            view = View(server_id, target_host, "ACTIVE", None)
            self.board.done(server_id, view, trio.current_time())
        finally:
            self.board.forget(server_id)
            self._board_wake.set()
            self._board_wake = trio.Event()
        return s.view()

    async def _board_changed(self) -> None:
        await self._board_wake.wait()

    async def _cast(self, host: str, what: str) -> None:
        """Nova's API answers a power action at once and casts it to the server's
        nova-compute; a compute that is powered off, hung or dead never acts on it, and
        the real driver gives up at its deadline."""
        m = self.cloud.machines[host]
        if m.alive and m.processes.get("nova-compute", False):
            return
        await trio.sleep(self.cloud.nova_timeout_s)
        raise NovaError(
            f"{what}: not done after {self.cloud.nova_timeout_s:g} s",
            kind="timeout",
            where="nova-api",
        )

    async def start(self, server_id: str) -> None:
        await self._call()
        s = self._server(server_id)
        if s.status == "ACTIVE" and s.host in self.cloud.running.get(server_id, set()):
            return  # already running: a no-op, as with the real driver
        await self._cast(s.host, f"start {server_id}")
        self.cloud.record(self.actor, "start", s.host, server_id)
        await trio.sleep(self.cloud.nova_delay_s)
        s.status = "ACTIVE"
        self.cloud._start(server_id, s.host)

    async def stop(self, server_id: str) -> None:
        await self._call()
        s = self._server(server_id)
        if s.status == "SHUTOFF":
            return  # already stopped: a no-op, as with the real driver
        await self._cast(s.host, f"stop {server_id}")
        self.cloud.record(self.actor, "stop", s.host, server_id)
        s.status = "SHUTOFF"
        self.cloud._stop(server_id, s.host)

    async def hard_reboot(self, server_id: str) -> None:
        await self._call()
        s = self._server(server_id)
        await self._cast(s.host, f"hard reboot {server_id}")
        self.cloud.record(self.actor, "hard_reboot", s.host, server_id)
        self.cloud._stop(server_id, s.host)
        await trio.sleep(self.cloud.nova_delay_s)
        s.status = "ACTIVE"
        self.cloud._start(server_id, s.host)

    async def _move(self, server_id: str, target_host: str | None, action: str) -> Server:
        await self._call()
        s = self._server(server_id)
        under_way = self.cloud.migrating.get(server_id)
        if action == "live_migrate" and under_way is not None:
            await under_way.wait()  # one under way: followed, as NovaDriver does
            return s.view()
        if target_host is not None and not self.cloud.schedulable(target_host):
            raise NovaError(
                f"no valid host: {target_host} is disabled or down",
                kind="failed",
                where="nova-scheduler",
            )
        target = target_host or next(
            (
                h
                for h, m in sorted(self.cloud.machines.items())
                if h != s.host and m.alive and not self.cloud.services[h]["disabled"]
            ),
            None,
        )
        if target is None:
            raise NovaError("no valid host found", kind="failed", where="nova-scheduler")
        self.cloud.record(self.actor, action, s.host, f"{server_id} -> {target}")
        was_running = s.host in self.cloud.running.get(server_id, set())
        self.cloud._stop(server_id, s.host)
        done = trio.Event()
        if action == "live_migrate":
            s.task_state = "migrating"
            self.cloud.migrating[server_id] = done
        try:
            await trio.sleep(self.cloud.nova_delay_s)
        finally:
            s.task_state = None
            self.cloud.migrating.pop(server_id, None)
            done.set()
        s.host = target
        if action == "live_migrate" or was_running:
            s.status = "ACTIVE"
            self.cloud._start(server_id, target)
        return s.view()

    async def live_migrate(self, server_id: str, target_host: str | None) -> Server:
        return await self._move(server_id, target_host, "live_migrate")

    async def cold_migrate(self, server_id: str, target_host: str | None) -> Server:
        return await self._move(server_id, target_host, "cold_migrate")


class FakeHypervisor:
    """HypervisorPort for one host of the FakeCloud."""

    def __init__(self, cloud: FakeCloud, host: str, wall_offset: float = 0.0) -> None:
        self.cloud, self.host, self.wall_offset = cloud, host, wall_offset

    async def running_vms(self) -> list[str]:
        return self.cloud.vms_on(self.host)

    async def destroy_all(self) -> list[str]:
        vms = self.cloud.vms_on(self.host)
        for vm in vms:
            self.cloud._stop(vm, self.host)
        self.cloud.record(self.host, "self_fence", self.host, f"destroyed {len(vms)}")
        return vms

    async def destroy(self, vm: str) -> None:
        if not self.cloud.machines[self.host].alive:
            raise HypervisorError("libvirtd does not answer", kind="unreachable", where=self.host)
        self.cloud._stop(vm, self.host)
        self.cloud.record(self.host, "destroy", self.host, vm)

    async def booted_at(self) -> float:
        return self.cloud.machines[self.host].booted_at + self.wall_offset

    async def resume(self, vm: str) -> None:
        s = self.cloud.servers.get(vm)
        if s is None or s.host != self.host:
            raise HypervisorError(
                f"no domain {vm} on {self.host}", kind="not_found", where=self.host
            )
        self.cloud._start(vm, self.host)


class FakeProcesses:
    """ProcessPort for one host: processes named in FakeMachine.processes."""

    def __init__(self, cloud: FakeCloud, host: str) -> None:
        self.cloud, self.host = cloud, host

    async def is_alive(self, name: str) -> bool:
        m = self.cloud.machines[self.host]
        return m.alive and m.processes.get(name, False)

    async def restart(self, name: str) -> None:
        m = self.cloud.machines[self.host]
        await trio.sleep(0.1)
        if name in m.restart_fails or not m.alive:
            raise ProcessError(f"restart of {name} failed", kind="restart_failed", where=self.host)
        m.processes[name] = True
        self.cloud.process_started(self.host, name)
        if name in LIBVIRT_DAEMONS:
            self.cloud.hypervisor_connection(self.host, up=True)

    def age_s(self, name: str) -> float:
        m = self.cloud.machines[self.host]
        if not (m.alive and m.processes.get(name, False)):
            return math.inf
        return self.cloud.now() - m.started.get(name, 0.0)


class FakeAlerts:
    def __init__(self, cloud: FakeCloud, actor: str = "") -> None:
        self.cloud, self.actor = cloud, actor

    async def send(self, alert: Alert) -> None:
        await trio.sleep(0.01)
        if not self.cloud.alerts_up:
            raise AlertError("no alert sink accepted the alert", where="alerts")
        self.cloud.alerts.append(alert)
