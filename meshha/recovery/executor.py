"""The executor: carries out one committed intent with the drivers and returns the
result entry to commit. The only place recovery touches the world.

It re-checks the safety invariants right before acting (the third check, after planning
and commit): never evacuate from an unfenced host, never act on a host in maintenance.
Operating errors become a `failed` result with the error's kind, for `decide` to retry or
escalate; programmer errors propagate and crash the agent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

from meshha.config.model import Segment
from meshha.errors import InvariantViolation, MeshhaError, NovaError
from meshha.raft import entries as E
from meshha.raft.entries import Entry
from meshha.raft.state import HOST_ACTIONS, Intent, SegmentState
from meshha.recovery.evacuation import Rank, rank_of
from meshha.recovery.policy import VmContext, resolve
from meshha.recovery.ports import Alert, AlertPort, FencePort, NovaPort

log = structlog.get_logger("meshha.executor")

# Nova's disabled_reason for the services meshha disables (it names meshha).
RESERVE_REASON = "meshha: reserved capacity, kept empty for failover"
MAINTENANCE_REASON = "meshha: maintenance"

# Called right before a driver acts: (action, intent). The simulator uses it to check
# that only a majority acts; the agent leaves it None.
Guard = Callable[[str, Intent], None]


@dataclass
class Drivers:
    fence: FencePort
    nova: NovaPort
    alerts: AlertPort


def _about(i: Intent, result: Entry) -> Entry:
    """A result names the host, VM and action it is about (as its intent does), so the
    ledger's host/vm/action columns and `meshctl events --host/--vm` find outcomes too.
    Extra keys: the state machine reads only the intent id."""
    result.update(host=i.host, vm=i.vm, action=i.action)
    return result


class Executor:
    def __init__(
        self, segment: Segment, drivers: Drivers, me: str, guard: Guard | None = None
    ) -> None:
        self.segment = segment
        self.d = drivers
        self.me = me
        self.guard = guard

    async def execute(self, intent: Intent, state: SegmentState, now: Callable[[], float]) -> Entry:
        self._check(intent, state)
        if self.guard is not None:
            self.guard(intent.action, intent)
        try:
            if intent.action == "evacuate":
                detail, data = await self._do_evacuate(intent, now, evacuation_rank(intent, state))
            else:
                detail, data = await getattr(self, f"_do_{intent.action}")(intent, now)
        except MeshhaError as err:
            log.warning("intent_failed", intent=intent.id, kind=err.kind, error=str(err))
            return _about(
                intent,
                E.result(
                    ts=now(),
                    by=self.me,
                    intent_id=intent.id,
                    outcome="failed",
                    detail=str(err),
                    error_kind=err.kind,
                ),
            )
        log.info("intent_done", intent=intent.id, detail=detail)
        return _about(
            intent,
            E.result(
                ts=now(), by=self.me, intent_id=intent.id, outcome="ok", detail=detail, data=data
            ),
        )

    def _check(self, i: Intent, state: SegmentState) -> None:
        if i.action == "evacuate" and not state.is_fenced(i.host):
            raise InvariantViolation(f"about to evacuate {i.vm} from unfenced {i.host}")
        if i.action in HOST_ACTIONS and i.host and state.in_maintenance(i.host):
            raise InvariantViolation(f"about to {i.action} on {i.host}, which is in maintenance")
        if i.target and state.in_maintenance(i.target):
            raise InvariantViolation(
                f"about to {i.action} onto {i.target}, which is in maintenance"
            )

    # -- actions: each returns (detail, data) ------------------------------------------

    async def _do_fence(self, i: Intent, now: Callable[[], float]) -> tuple[str, dict[str, Any]]:
        proof = await self.d.fence.power_off(i.host)
        return f"BMC reports {i.host} powered off ({proof.detail})", {
            "method": proof.method,
            "attempts": proof.attempts,
        }

    async def _do_disable_compute(
        self, i: Intent, now: Callable[[], float]
    ) -> tuple[str, dict[str, Any]]:
        reason = f"meshha: {i.reason}"[:255]
        if i.params.get("force_down", True):
            await self.d.nova.force_down(i.host, reason)
            return f"nova-compute on {i.host} forced down and disabled", {}
        await self.d.nova.disable_service(i.host, reason)
        return f"nova-compute on {i.host} disabled", {}

    async def _do_enable_compute(
        self, i: Intent, now: Callable[[], float]
    ) -> tuple[str, dict[str, Any]]:
        await self.d.nova.enable_service(i.host)
        return f"nova-compute on {i.host} enabled", {}

    async def _do_reserve_hold(
        self, i: Intent, now: Callable[[], float]
    ) -> tuple[str, dict[str, Any]]:
        await self.d.nova.disable_service(i.host, RESERVE_REASON)
        return f"nova-compute on reserved {i.host} disabled: the scheduler leaves it empty", {}

    async def _do_reserve_release(
        self, i: Intent, now: Callable[[], float]
    ) -> tuple[str, dict[str, Any]]:
        await self.d.nova.enable_service(i.host)
        return f"nova-compute on reserved {i.host} enabled: chosen as a target", {}

    async def _do_maint_hold(
        self, i: Intent, now: Callable[[], float]
    ) -> tuple[str, dict[str, Any]]:
        await self.d.nova.disable_service(i.host, MAINTENANCE_REASON)
        return f"nova-compute on {i.host} disabled for maintenance", {}

    async def _do_maint_release(
        self, i: Intent, now: Callable[[], float]
    ) -> tuple[str, dict[str, Any]]:
        await self.d.nova.enable_service(i.host)
        return f"nova-compute on {i.host} enabled: maintenance over", {}

    async def _do_drain(self, i: Intent, now: Callable[[], float]) -> tuple[str, dict[str, Any]]:
        assert i.vm and i.target
        s = await self.d.nova.live_migrate(i.vm, i.target)
        if s.host == i.host:
            raise NovaError(
                f"{i.vm} is still on {i.host} after live migration", kind="failed", where="nova"
            )
        return f"{i.vm} live-migrated off {i.host} to {s.host}", {"host": s.host}

    async def _do_power_check(
        self, i: Intent, now: Callable[[], float]
    ) -> tuple[str, dict[str, Any]]:
        power = await self.d.fence.power_state(i.host)
        return f"BMC of {i.host} reports power {power}", {"power": power}

    async def _do_inventory(
        self, i: Intent, now: Callable[[], float]
    ) -> tuple[str, dict[str, Any]]:
        servers = await self.d.nova.list_servers(i.host)
        facts = await self.d.nova.host_facts(
            list(self.segment.host_names), known_counts={i.host: len(servers)}
        )
        own = next((f for f in facts if f.host == i.host), None)
        rows = []
        for s in servers:
            ctx = VmContext(
                server=s,
                aggregates=own.aggregates if own else (),
                availability_zone=s.availability_zone or (own.availability_zone if own else None),
                region=self.segment.region,
                cell=self.segment.cell,
            )
            p = resolve(self.segment.policy, ctx)
            rows.append(
                {
                    "id": s.id,
                    "name": s.name,
                    "status": s.status,
                    "project": s.project_id,
                    "flavor": s.flavor.name,
                    "vcpus": s.flavor.vcpus,
                    "ram_mb": s.flavor.ram_mb,
                    "disk_gb": s.flavor.disk_gb,
                    "ha": p.ha,
                    "priority": p.priority,
                    "on_vm_failure": p.on_vm_failure,
                    "decided_by": [list(x) for x in p.decided_by],
                }
            )
        fact_rows = [
            {
                "host": f.host,
                "vcpus_free": f.vcpus_free,
                "ram_mb_free": f.ram_mb_free,
                "disk_gb_free": f.disk_gb_free,
                "running_vms": f.running_vms,
                "service_up": f.service_up,
                "forced_down": f.forced_down,
            }
            for f in facts
        ]
        n_ha = sum(1 for r in rows if r["ha"])
        return (
            f"{len(rows)} servers on {i.host} ({n_ha} HA), {len(facts)} hosts' capacity",
            {"ts": now(), "servers": rows, "facts": fact_rows},
        )

    async def _do_evacuate(
        self, i: Intent, now: Callable[[], float], rank: Rank
    ) -> tuple[str, dict[str, Any]]:
        assert i.vm and i.target
        s = await self.d.nova.evacuate(i.vm, i.target, rank=rank)
        return f"{i.vm} rebuilt on {s.host}, {s.status}", {"host": s.host, "status": s.status}

    async def _do_live_migrate(
        self, i: Intent, now: Callable[[], float]
    ) -> tuple[str, dict[str, Any]]:
        assert i.vm
        s = await self.d.nova.live_migrate(i.vm, i.target)
        return f"{i.vm} live-migrated to {s.host}", {"host": s.host}

    async def _do_restart_vm(
        self, i: Intent, now: Callable[[], float]
    ) -> tuple[str, dict[str, Any]]:
        assert i.vm
        try:
            await self.d.nova.stop(i.vm)
        except NovaError as err:
            if err.kind != "conflict":  # already stopped is fine
                raise
        await self.d.nova.start(i.vm)
        return f"{i.vm} stopped and started on {i.host}", {}

    async def _do_hard_reboot(
        self, i: Intent, now: Callable[[], float]
    ) -> tuple[str, dict[str, Any]]:
        assert i.vm
        await self.d.nova.hard_reboot(i.vm)
        return f"{i.vm} hard-rebooted", {}

    async def _do_migrate_vm(
        self, i: Intent, now: Callable[[], float]
    ) -> tuple[str, dict[str, Any]]:
        assert i.vm
        s = await self.d.nova.cold_migrate(i.vm, i.target)
        if s.status != "ACTIVE":
            await self.d.nova.start(i.vm)
        return f"{i.vm} restarted elsewhere: now on {s.host}", {"host": s.host}

    async def _do_alert(self, i: Intent, now: Callable[[], float]) -> tuple[str, dict[str, Any]]:
        p = i.params
        await self.d.alerts.send(
            Alert(
                segment=self.segment.name,
                severity=p.get("severity", "warning"),
                subject=p.get("subject", i.reason),
                body=p.get("body", ""),
                host=i.host or None,
                key=i.id,
            )
        )
        return "alert delivered", {}


def evacuation_rank(i: Intent, state: SegmentState) -> Rank:
    """Where an evacuation queues in the driver: its VM's priority (from the committed
    inventory of its host, which resolved the HA policy), then the plan's order."""
    inventory = state.inventory.get(i.host)
    servers = inventory.servers if inventory is not None else ()
    priority = next((s.priority for s in servers if s.id == i.vm), "medium")
    return rank_of(priority, i.created_index, i.order)
