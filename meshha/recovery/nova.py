"""NovaPort over openstacksdk: the only place meshha talks to Nova.

Every sdk call is blocking, so it runs in `trio.to_thread.run_sync` under the driver's own
`CapacityLimiter` (bounded parallel HTTP calls). Each public method has one deadline,
`timeout_s`, covering the request and the wait for its end state; waits poll Nova every
`poll_interval_s` for a *condition* (for an evacuation: host changed to the target and no
task state), never a fixed time.

Errors become `NovaError` with a `kind`:

    unreachable  connection refused/reset, discovery failed, 502/503/504
    conflict     409 (the server is busy or in the wrong state)
    not_found    404, or a host Nova does not know
    refused      400/401/403: Nova said no (e.g. evacuating from a host still up)
    timeout      the end state did not come before the deadline
    failed       Nova reported the operation failed (migration error, ERROR state), 5xx

Microversion: the whole compute API is used at `microversion` (default 2.94, at least
2.60), chosen for evacuation. 2.95 (nova 27, 2023.1) makes every evacuated server end
SHUTOFF on its new host, whatever it was before: it was added for tenants whose guests
must not be started by an administrator (encrypted volumes whose secrets the admin must
not read, workloads that need a token to boot, a replacement already running elsewhere).
Nova even starts the guest and then stops it (launchpad bug 1994967). HA wants the
opposite: the VM running again, in the state the user left it. At 2.94 an evacuated
server keeps its vm_state (ACTIVE stays ACTIVE, a stopped one stays SHUTOFF), with no
second request and no stop/start cycle. With `microversion` >= 2.95, `evacuate` starts
the server again unless its last power action before the evacuation was a stop.

Evacuation runs through a pipeline (meshha.recovery.evacuation decides, this module does
the requests): an adaptive limit on evacuations in flight, admission by rank (priority,
then plan order), one POST per server, and one shared watch: one listing of the target
host per poll (trimmed with `changes-since`), polled by whichever waiting call gets
there first, instead of one GET per server per poll.

Capacity comes from Placement (what the scheduler decides on: allocation ratios,
reserved amounts and in-flight allocations included), looked up per compute node; the
hypervisors API gives the node uuids of each host (at 2.53+ they are the provider uuids).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import structlog
import trio

from meshha.errors import NovaError
from meshha.recovery.evacuation import AdaptiveLimit, Board, Job, LimitSettings, Rank, View
from meshha.recovery.ports import Flavor, HostFacts, Server

log = structlog.get_logger("meshha.nova")

MIN_MICROVERSION = (2, 60)
# Actions that say whether the user wants the server running; the newest one wins.
RUNNING_ACTIONS = frozenset(
    {"create", "start", "reboot", "rebuild", "unshelve", "resume", "unpause", "unrescue"}
)
STOPPED_ACTIONS = frozenset({"stop", "shelve", "suspend", "pause"})
FAILED_MIGRATION = frozenset({"error", "failed", "cancelled"})
# Evacuation migration states before its source compute cleans up: the evacuation is
# running, or has finished (the server is on its new host, "done" until then).
EVACUATION_UNDER_WAY = frozenset({"accepted", "pre-migrating", "migrating", "running", "done"})
STRAGGLERS_PER_POLL = 2  # servers looked at on their own per poll, at most


def parse_microversion(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return int(major), int(minor)


# ---- pure helpers -----------------------------------------------------------------------


def to_server(raw: Any) -> Server:
    """An sdk Server (detail view, microversion >= 2.47) as meshha's frozen Server."""
    f = raw.flavor
    flavor = Flavor(
        name=str(getattr(f, "original_name", None) or getattr(f, "name", None) or ""),
        vcpus=int(getattr(f, "vcpus", 0) or 0),
        ram_mb=int(getattr(f, "ram", 0) or 0),
        disk_gb=int(getattr(f, "disk", 0) or 0),
        extra_specs=tuple(sorted((str(k), str(v)) for k, v in (f.extra_specs or {}).items())),
    )
    return Server(
        id=raw.id,
        name=raw.name or "",
        host=raw.compute_host,
        status=raw.status or "",
        task_state=raw.task_state,
        project_id=raw.project_id or "",
        flavor=flavor,
        metadata=tuple(sorted((str(k), str(v)) for k, v in (raw.metadata or {}).items())),
        availability_zone=raw.availability_zone,
    )


@asynccontextmanager
async def side_by_side() -> AsyncIterator[trio.Nursery]:
    """A nursery for concurrent Nova calls whose operating error stays a NovaError: the
    first one is raised as itself (the others are cancelled), not inside an exception
    group; anything else (a programmer error) propagates as the group."""
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        errors, rest = group.split(NovaError)
        if errors is None or rest is not None:
            raise
        first: BaseException = errors
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None


def view_of(raw: Any) -> View:
    """An sdk Server as the evacuation board's View."""
    return View(
        id=raw.id,
        host=raw.compute_host,
        status=raw.status or "",
        task_state=raw.task_state,
        updated=raw.updated_at or "",
    )


def wants_running(actions_newest_first: Iterable[str]) -> bool:
    """Whether a server should run after an evacuation: its newest power action, evacuations
    left out. A server stopped on purpose (before or after) stays stopped."""
    for action in actions_newest_first:
        if action in STOPPED_ACTIONS:
            return False
        if action in RUNNING_ACTIONS:
            return True
    return True


def free_amount(inventory: dict[str, Any] | None, used: int) -> int:
    """What placement would still allocate of one resource class."""
    if not inventory:
        return 0
    total = inventory.get("total", 0) - inventory.get("reserved", 0)
    return max(0, math.floor(total * float(inventory.get("allocation_ratio", 1.0))) - used)


@dataclass(frozen=True)
class _Service:
    id: str
    host: str
    up: bool
    enabled: bool
    forced_down: bool
    zone: str | None


# ---- the driver -------------------------------------------------------------------------


class NovaDriver:
    """NovaPort over openstacksdk.

    `conn` is a cloud name from clouds.yaml, or a zero-argument callable that returns an
    `openstack.connection.Connection` (made lazily, in a worker thread, once).
    """

    def __init__(
        self,
        conn: str | Callable[[], Any],
        *,
        microversion: str = "2.94",
        timeout_s: float = 30.0,
        limiter: trio.CapacityLimiter | None = None,
        poll_interval_s: float = 0.25,
        limits: LimitSettings | None = None,
        straggler_after_s: float = 3.0,
    ) -> None:
        if parse_microversion(microversion) < MIN_MICROVERSION:
            raise ValueError(f"nova microversion {microversion} < 2.60 is not supported")
        assert timeout_s > 0 and poll_interval_s > 0
        self.microversion = microversion
        self.stops_evacuated = parse_microversion(microversion) >= (2, 95)
        self.timeout_s = timeout_s
        self.poll_interval_s = poll_interval_s
        self.limiter = limiter or trio.CapacityLimiter(10)
        self.where = conn if isinstance(conn, str) else "nova"
        self._factory = (
            _cloud_factory(conn, microversion, timeout_s) if isinstance(conn, str) else conn
        )
        self._conn: Any = None
        self._conn_lock = threading.Lock()
        # The evacuation pipeline: who is queued, moving, done; the shared watch.
        self.board = Board(AdaptiveLimit(limits), straggler_after_s=straggler_after_s)
        self._raw: dict[str, Any] = {}  # the newest sdk view of each server on the board
        self._wake = trio.Event()
        self._polling = False
        self._next_poll = -math.inf

    # ---- plumbing ---------------------------------------------------------------------

    def _compute(self) -> Any:
        """The sdk compute proxy, pinned to our microversion (called in worker threads)."""
        with self._conn_lock:
            if self._conn is None:
                conn = self._factory()
                conn.compute.default_microversion = self.microversion
                self._conn = conn
        return self._conn.compute

    def _placement(self) -> Any:
        self._compute()
        return self._conn.placement

    async def _call(self, what: str, fn: Callable[..., Any], *args: Any) -> Any:
        """Run one blocking sdk call in a worker thread; sdk errors become NovaError."""

        def run() -> Any:
            try:
                return fn(*args)
            except Exception as e:  # translated (or re-raised as is), never swallowed
                raise _translate(e, f"{self.where}: {what}") from e

        return await trio.to_thread.run_sync(run, limiter=self.limiter)

    @contextmanager
    def _deadline(self, what: str) -> Iterator[None]:
        """One deadline for a whole public call: TooSlowError becomes kind=timeout."""
        try:
            with trio.fail_after(self.timeout_s):
                yield
        except trio.TooSlowError:
            raise NovaError(
                f"{what}: not done after {self.timeout_s:g} s", kind="timeout", where=self.where
            ) from None

    async def _server(self, server_id: str) -> Any:
        return await self._call(f"get {server_id}", lambda: self._compute().get_server(server_id))

    async def _wait(self, server_id: str, what: str, done: Callable[[Any], bool]) -> Any:
        """Poll until `done(server)`; an ERROR state with no task state is a failure."""
        while True:
            raw = await self._server(server_id)
            if done(raw):
                return raw
            if raw.status == "ERROR" and raw.task_state is None:
                raise NovaError(f"{what}: server went to ERROR", kind="failed", where=self.where)
            await trio.sleep(self.poll_interval_s)

    async def _service(self, host: str) -> _Service:
        for svc in await self._services():
            if svc.host == host:
                return svc
        raise NovaError(f"no nova-compute service on {host}", kind="not_found", where=self.where)

    async def _services(self) -> list[_Service]:
        raws = await self._call(
            "list services", lambda: list(self._compute().services(binary="nova-compute"))
        )
        return [
            _Service(
                id=s.id,
                host=s.host,
                up=s.state == "up",
                enabled=s.status == "enabled",
                forced_down=bool(s.is_forced_down),
                zone=s.availability_zone,
            )
            for s in raws
        ]

    async def _update_service(self, host: str, what: str, **attrs: Any) -> None:
        svc = await self._service(host)
        await self._call(f"{what} {host}", lambda: self._compute().update_service(svc.id, **attrs))
        log.info("nova.service_updated", host=host, what=what)

    # ---- services ---------------------------------------------------------------------

    async def force_down(self, host: str, reason: str) -> None:
        """One PUT (2.53+): forced down, disabled, with `reason`. Idempotent."""
        with self._deadline(f"force down {host}"):
            await self._update_service(
                host, "force_down", forced_down=True, status="disabled", disabled_reason=reason
            )

    async def disable_service(self, host: str, reason: str) -> None:
        with self._deadline(f"disable {host}"):
            await self._update_service(host, "disable", status="disabled", disabled_reason=reason)

    async def enable_service(self, host: str) -> None:
        """Un-force and enable. Nova refuses (kind=refused) while evacuations from the
        host wait for its nova-compute to restart and clean up."""
        with self._deadline(f"enable {host}"):
            await self._update_service(host, "enable", forced_down=False, status="enabled")

    # ---- reads ------------------------------------------------------------------------

    async def list_servers(self, host: str) -> list[Server]:
        raws = await self._call(
            f"list servers on {host}",
            lambda: list(
                self._compute().servers(details=True, all_projects=True, compute_host=host)
            ),
        )
        return [to_server(r) for r in raws if r.compute_host == host]

    async def get_server(self, server_id: str) -> Server:
        return to_server(await self._server(server_id))

    async def host_facts(
        self, hosts: list[str], *, known_counts: Mapping[str, int] | None = None
    ) -> list[HostFacts]:
        """Independent lookups run side by side (bounded by the driver's limiter): this
        is on the path from a fence to the first evacuation."""
        with self._deadline("host facts"):
            got: dict[str, Any] = {}

            async def fetch(key: str, fn: Callable[[], Any]) -> None:
                got[key] = await fn()

            async with side_by_side() as nursery:
                nursery.start_soon(fetch, "services", self._services)
                nursery.start_soon(fetch, "nodes", self._nodes_by_host)
                nursery.start_soon(
                    fetch,
                    "aggregates",
                    lambda: self._call(
                        "list aggregates", lambda: list(self._compute().aggregates())
                    ),
                )
            services = {s.host: s for s in got["services"]}
            missing = [h for h in hosts if h not in services]
            if missing:
                raise NovaError(
                    f"no nova-compute service on {', '.join(missing)}",
                    kind="not_found",
                    where=self.where,
                )
            nodes, aggregates = got["nodes"], got["aggregates"]
            free: dict[str, list[int]] = {h: [0, 0, 0] for h in hosts}
            count: dict[str, int] = {h: n for h, n in (known_counts or {}).items() if h in free}

            async def node_free(host: str, node: str) -> None:
                for i, amount in enumerate(await self._node_free(node)):
                    free[host][i] += amount

            async def server_count(host: str) -> None:
                count[host] = await self._server_count(host)

            async with side_by_side() as nursery:
                for host in hosts:
                    if host not in count:
                        nursery.start_soon(server_count, host)
                    for node in nodes.get(host, []):
                        nursery.start_soon(node_free, host, node)
            facts = []
            for host in hosts:
                svc = services[host]
                facts.append(
                    HostFacts(
                        host=host,
                        vcpus_free=free[host][0],
                        ram_mb_free=free[host][1],
                        disk_gb_free=free[host][2],
                        availability_zone=svc.zone,
                        aggregates=tuple(
                            sorted(a.name for a in aggregates if host in (a.hosts or ()))
                        ),
                        service_up=svc.up and not svc.forced_down,
                        service_enabled=svc.enabled,
                        forced_down=svc.forced_down,
                        running_vms=count[host],
                    )
                )
            return facts

    async def _server_count(self, host: str) -> int:
        """Servers Nova places on `host` (any status), from the short list view."""
        return await self._call(
            f"count servers on {host}",
            lambda: sum(
                1
                for _ in self._compute().servers(
                    details=False, all_projects=True, compute_host=host
                )
            ),
        )

    async def _nodes_by_host(self) -> dict[str, list[str]]:
        raws = await self._call(
            "list hypervisors", lambda: list(self._compute().hypervisors(details=True))
        )
        nodes: dict[str, list[str]] = {}
        for h in raws:
            host = (h.service_details or {}).get("host")
            if host:
                nodes.setdefault(host, []).append(h.id)
        return nodes

    async def _node_free(self, node: str) -> tuple[int, int, int]:
        def read() -> tuple[dict, dict]:
            placement = self._placement()
            inv = placement.get(f"/resource_providers/{node}/inventories")
            use = placement.get(f"/resource_providers/{node}/usages")
            for r in (inv, use):
                _raise_for_status(r)
            return inv.json()["inventories"], use.json()["usages"]

        inventories, usages = await self._call(f"placement {node}", read)
        return (
            free_amount(inventories.get("VCPU"), usages.get("VCPU", 0)),
            free_amount(inventories.get("MEMORY_MB"), usages.get("MEMORY_MB", 0)),
            free_amount(inventories.get("DISK_GB"), usages.get("DISK_GB", 0)),
        )

    async def _actions(self, server_id: str) -> list[str]:
        """Instance action names, newest first."""
        raws = await self._call(
            f"actions of {server_id}", lambda: list(self._compute().server_actions(server_id))
        )
        raws.sort(key=lambda a: a.start_time or "", reverse=True)
        return [a.action for a in raws]

    async def _newest_migration(self, server_id: str, kind: str) -> Any:
        def newest() -> Any:
            migs = list(self._compute().migrations(server_id=server_id, migration_type=kind))
            return max(migs, key=lambda m: int(m.id), default=None)  # ids only grow

        return await self._call(f"migrations of {server_id}", newest)

    async def _migration_failed(self, server_id: str, kind: str) -> str | None:
        """The status of the newest migration of `kind` for the server if it failed."""
        mig = await self._newest_migration(server_id, kind)
        if mig is not None and mig.status in FAILED_MIGRATION:
            return str(mig.status)
        return None

    # ---- evacuation -------------------------------------------------------------------

    async def evacuate(self, server_id: str, target_host: str, *, rank: Rank = (1,)) -> Server:
        """Evacuate through the pipeline (meshha.recovery.evacuation): wait for a place
        under the adaptive limit (best `rank` first), one POST, then the shared watch
        (one listing of the target per poll, whoever polls for everyone)."""
        t0 = time.monotonic()
        what = f"evacuate {server_id} to {target_host}"
        if self.board.active(server_id):
            raise NovaError(f"{what}: already under way here", kind="conflict", where=self.where)
        job = self.board.submit(server_id, target_host, rank, trio.current_time())
        self._notify()
        try:
            # The deadline (timeout_s: one Nova call) starts at admission: the wait for a
            # place under the limit is not Nova's time. Counted from submission, a batch
            # of 20 behind a limit of 3-10 timed out in the queue on a slow Nova, lowered
            # the limit as "overload" and was retried under new intents (lab, load 20).
            await self._admission(job)
            with self._deadline(what):
                raw = await self._evacuation(job, what)
                if self.stops_evacuated and raw.status == "SHUTOFF":
                    actions = await self._actions(server_id)
                    if wants_running(a for a in actions if a != "evacuate"):
                        raw = await self._power(server_id, "start")
        except NovaError as err:
            overload = err.kind in ("unreachable", "timeout")
            self.board.failed(server_id, str(err), err.kind, overload=overload)
            raise
        finally:
            self.board.forget(server_id)
            self._raw.pop(server_id, None)
            self._notify()
        log.info(
            "nova.evacuated",
            server=server_id,
            host=raw.compute_host,
            status=raw.status,
            elapsed_s=round(time.monotonic() - t0, 3),
            limit=self.board.limit.limit,
        )
        return to_server(raw)

    async def _admission(self, job: Job) -> None:
        """Until the board admits `job` (best rank first, under the adaptive limit)."""
        await trio.lowlevel.checkpoint()  # calls made together all queue before admission
        while job.phase == "queued":
            self.board.admit()
            if job.phase == "queued":
                await self._changed()

    async def _evacuation(self, job: Job, what: str) -> Any:
        server_id = job.vm
        # An evacuation already under way (a previous leader's, or our own attempt that
        # lost its answer) is adopted, never started again. Its migration record says so
        # even in the moment, near its end, when the server shows no task state on its
        # old host (an evacuate request then would be accepted: a second rebuild).
        mig = await self._newest_migration(server_id, "evacuation")
        if mig is not None and mig.status in EVACUATION_UNDER_WAY:
            dest = getattr(mig, "dest_compute", None)
            if dest and dest != job.target:
                raise NovaError(
                    f"{what}: already evacuated to {dest} (migration {mig.status})",
                    kind="conflict",
                    where=self.where,
                )
            log.info("nova.evacuation_adopted", server=server_id, migration=mig.status)
            raw = await self._server(server_id)
            self._raw[server_id] = raw
            self.board.posted(server_id, trio.current_time(), adopted=True)
            self.board.observe_server(view_of(raw), trio.current_time())
        else:
            await self._post_evacuation(job, what)
        self._notify()
        while job.phase == "moving":
            await self._watch()
        if job.phase == "failed":
            raise NovaError(f"{what}: {job.error}", kind=job.error_kind, where=self.where)
        return self._raw[server_id]

    async def _post_evacuation(self, job: Job, what: str) -> None:
        server_id, target = job.vm, job.target
        try:
            await self._call(what, lambda: self._compute().evacuate_server(server_id, host=target))
            log.info("nova.evacuate_requested", server=server_id, target=target)
        except NovaError as err:
            if err.kind not in ("conflict", "refused"):
                raise
            # Busy (409) or "already on that host" (400): look before saying no. One
            # under way is adopted; one already finished is done.
            raw = await self._server(server_id)
            self._raw[server_id] = raw
            if raw.compute_host == target and raw.task_state is None and raw.status != "ERROR":
                self.board.done(server_id, view_of(raw), trio.current_time())
                return
            if raw.task_state is None or (await self._actions(server_id))[:1] != ["evacuate"]:
                raise
            log.info("nova.evacuation_adopted", server=server_id, task_state=raw.task_state)
            self.board.posted(server_id, trio.current_time(), adopted=True)
        else:
            self.board.posted(server_id, trio.current_time())

    # -- the shared watch ----------------------------------------------------------------

    def _notify(self) -> None:
        self._wake.set()
        self._wake = trio.Event()

    async def _changed(self) -> None:
        await self._wake.wait()

    async def _watch(self) -> None:
        """Poll for everyone, or wait for whoever is polling. A poller that is cancelled
        (its deadline, a lost leadership) hands over: the next waiter polls."""
        if self._polling:
            await self._changed()
            return
        self._polling = True
        try:
            delay = self._next_poll - trio.current_time()
            if delay > 0:
                await trio.sleep(delay)
            await self._poll()
        finally:
            self._polling = False
            self._next_poll = trio.current_time() + self.poll_interval_s
            self._notify()

    async def _poll(self) -> None:
        for host in self.board.hosts_to_list():
            since = self.board.changes_since(host)
            query: dict[str, Any] = {"details": True, "all_projects": True, "compute_host": host}
            if since:
                query["changes_since"] = since
            try:
                raws = await self._call(
                    f"list servers on {host}", lambda q=query: list(self._compute().servers(**q))
                )
            except NovaError as err:
                self._watch_failed(host, err)
                continue
            mine = {r.id: r for r in raws if r.id in self.board.jobs}
            self._raw.update(mine)
            self.board.observe_listing(host, [view_of(r) for r in raws], trio.current_time())
        for job in self.board.stragglers(trio.current_time(), most=STRAGGLERS_PER_POLL):
            await self._look_at(job)

    async def _look_at(self, job: Job) -> None:
        """One straggler on its own: where is it, and if idle off its target, did the
        migration fail (or is this the short gap Nova leaves mid-evacuation)?"""
        try:
            raw = await self._server(job.vm)
            self._raw[job.vm] = raw
            self.board.observe_server(view_of(raw), trio.current_time())
            if job.suspect:
                status = await self._migration_failed(job.vm, "evacuation")
                if status is not None:
                    self.board.failed(job.vm, f"evacuation {status}", overload=False)
        except NovaError as err:
            if err.kind == "not_found":
                self.board.failed(job.vm, str(err), "not_found", overload=False)
            else:
                self._watch_failed(job.target, err)

    def _watch_failed(self, host: str, err: NovaError) -> None:
        """Nova could not be asked: the evacuations watched there fail with its kind
        (decide retries them; the retry adopts what Nova did meanwhile)."""
        log.warning("nova.watch_failed", host=host, kind=err.kind, error=str(err))
        self.board.overloaded()
        if err.kind in ("unreachable", "refused"):
            for j in list(self.board.jobs.values()):
                if j.phase == "moving" and j.target == host:
                    self.board.failed(j.vm, str(err), err.kind, overload=False)

    async def _wait_moved(
        self, server_id: str, what: str, kind: str, target: str | None, source: str | None = None
    ) -> Any:
        """Wait until the server sits on `target` (or anywhere but `source`) with no task
        state. Host unchanged and no task state can be a 70 ms gap mid-operation, so it
        only counts as failure when the migration record says so."""
        while True:
            raw = await self._server(server_id)
            moved = raw.compute_host == target if target else raw.compute_host != source
            if raw.task_state is None:
                if moved:
                    return raw
                status = await self._migration_failed(server_id, kind)
                if status is not None or raw.status == "ERROR":
                    raise NovaError(
                        f"{what}: {kind} {status or 'left the server in ERROR'}",
                        kind="failed",
                        where=self.where,
                    )
            await trio.sleep(self.poll_interval_s)

    # ---- power ------------------------------------------------------------------------

    async def start(self, server_id: str) -> None:
        with self._deadline(f"start {server_id}"):
            await self._power(server_id, "start")

    async def stop(self, server_id: str) -> None:
        with self._deadline(f"stop {server_id}"):
            await self._power(server_id, "stop")

    async def hard_reboot(self, server_id: str) -> None:
        with self._deadline(f"hard reboot {server_id}"):
            await self._power(server_id, "reboot")

    async def _power(self, server_id: str, action: str) -> Any:
        """start/stop are idempotent (no request when already there); the API sets a task
        state before it answers, so "no task state and the end status" is the end."""
        end = "SHUTOFF" if action == "stop" else "ACTIVE"
        raw = await self._server(server_id)
        if action != "reboot" and raw.status == end and raw.task_state is None:
            return raw
        compute = self._compute()
        request = {
            "start": lambda: compute.start_server(server_id),
            "stop": lambda: compute.stop_server(server_id),
            "reboot": lambda: compute.reboot_server(server_id, "HARD"),
        }[action]
        await self._call(f"{action} {server_id}", request)
        log.info("nova.power", server=server_id, action=action)
        return await self._wait(
            server_id,
            f"{action} {server_id}",
            lambda r: r.status == end and r.task_state is None,
        )

    # ---- migrations -------------------------------------------------------------------

    async def live_migrate(self, server_id: str, target_host: str | None) -> Server:
        what = f"live-migrate {server_id} to {target_host or 'any host'}"
        with self._deadline(what):
            raw = await self._server(server_id)
            if target_host and raw.compute_host == target_host and raw.task_state is None:
                return to_server(raw)
            source = raw.compute_host
            if raw.task_state == "migrating":
                # A live migration is under way (an earlier try of ours that timed out
                # while Nova went on): Nova refuses a second one (409), so follow it.
                log.info("nova.live_migrate_following", server=server_id, source=source)
                raw = await self._wait_moved(server_id, what, "live-migration", None, source)
                return to_server(raw)
            await self._call(
                what,
                lambda: self._compute().live_migrate_server(
                    server_id, host=target_host, block_migration="auto"
                ),
            )
            log.info("nova.live_migrate_requested", server=server_id, target=target_host)
            raw = await self._wait_moved(server_id, what, "live-migration", target_host, source)
        return to_server(raw)

    async def cold_migrate(self, server_id: str, target_host: str | None) -> Server:
        what = f"cold-migrate {server_id} to {target_host or 'any host'}"
        with self._deadline(what):
            raw = await self._server(server_id)
            if target_host and raw.compute_host == target_host and raw.task_state is None:
                if raw.status == "VERIFY_RESIZE":
                    return to_server(await self._confirm(server_id, what))
                return to_server(raw)
            source = raw.compute_host
            if raw.status != "VERIFY_RESIZE":
                await self._call(
                    what, lambda: self._compute().migrate_server(server_id, host=target_host)
                )
                log.info("nova.cold_migrate_requested", server=server_id, target=target_host)
                await self._wait(
                    server_id, what, lambda r: r.status == "VERIFY_RESIZE" and r.task_state is None
                )
            raw = await self._confirm(server_id, what)
            if raw.compute_host == source:
                raise NovaError(f"{what}: still on {source}", kind="failed", where=self.where)
        return to_server(raw)

    async def _confirm(self, server_id: str, what: str) -> Any:
        await self._call(what, lambda: self._compute().confirm_server_resize(server_id))
        return await self._wait(
            server_id,
            what,
            lambda r: r.status in ("ACTIVE", "SHUTOFF") and r.task_state is None,
        )


def _cloud_factory(cloud: str, microversion: str, timeout_s: float) -> Callable[[], Any]:
    def connect() -> Any:
        import openstack

        return openstack.connect(
            cloud=cloud, compute_api_version=microversion, api_timeout=timeout_s
        )

    return connect


def _raise_for_status(response: Any) -> None:
    from openstack import exceptions

    exceptions.raise_from_response(response)


def _translate(e: Exception, where: str) -> NovaError:
    """An sdk/keystoneauth exception as a NovaError with its kind."""
    from keystoneauth1 import exceptions as ksa
    from openstack import exceptions as sdk

    if isinstance(e, ksa.ConnectionError | ksa.DiscoveryFailure):
        return NovaError(f"unreachable: {e}", kind="unreachable", where=where)
    status = getattr(e, "status_code", None)
    if isinstance(e, sdk.NotFoundException) or status == 404:
        kind = "not_found"
    elif isinstance(e, sdk.ConflictException) or status == 409:
        kind = "conflict"
    elif status in (502, 503, 504):
        kind = "unreachable"
    elif status in (400, 401, 403):
        kind = "refused"
    elif isinstance(e, sdk.SDKException | ksa.ClientException):
        kind = "failed"
    elif isinstance(e, OSError):
        # (requests' and so the sdk's HTTP errors are OSErrors too: checked first.)
        # Raised by this host's libraries or kernel on the way (too many open files, a
        # failed backoff sleep, ...): the call did not get through. An error of this
        # step, said with where it happened, never a crash of the agent (which would
        # leave its watchdog to reset a healthy host).
        return NovaError(f"unreachable: {type(e).__name__}: {e}", kind="unreachable", where=where)
    else:
        raise e  # a programmer error: let it crash as it is
    return NovaError(_message(e), kind=kind, where=where)


def _message(e: Exception) -> str:
    details = getattr(e, "details", None)
    return f"{type(e).__name__}: {details or e}"
