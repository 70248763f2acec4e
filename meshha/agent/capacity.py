"""The segment's N+k status: could it lose its k largest compute hosts right now and
still place every HA VM of theirs on the reserve? (`meshctl capacity`, `meshctl report`.)

Gathers the inputs through the Nova port (the servers of every compute host, the free
capacity of every host) and hands them to the pure `placement.n_plus_k`. Counted: the
compute hosts' HA servers (policy resolved as for an evacuation), and as reserve the
reserved hosts that are healthy and not in maintenance. k is `[recovery] reserve_k`
unless the operator asks for another. Without Nova (dry run) the answer says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import structlog
import trio

from meshha.config.model import Segment
from meshha.errors import MeshhaError
from meshha.raft import entries as E
from meshha.raft.entries import Entry
from meshha.raft.state import SegmentState
from meshha.recovery.placement import HostLoad, VmDemand, n_plus_k, target_of
from meshha.recovery.policy import VmContext, resolve
from meshha.recovery.ports import NovaPort

NOVA_PARALLEL = 4  # hosts listed at once
# Besides every change of the segment, measure this often (new servers booted by users
# are no change the log sees).
CAPACITY_POLL_S = 300.0

log = structlog.get_logger("meshha.capacity")


def reserve_hosts(segment: Segment, state: SegmentState) -> list[str]:
    return [
        h.name
        for h in segment.hosts
        if state.roles.get(h.name, h.role) == "reserved"
        and state.verdicts[h.name].kind == "healthy"
        and not state.in_maintenance(h.name)
    ]


def compute_hosts(segment: Segment, state: SegmentState) -> list[str]:
    return [h.name for h in segment.hosts if state.roles.get(h.name, h.role) == "compute"]


async def nk_status(
    segment: Segment, state: SegmentState, nova: NovaPort | None, k: int | None = None
) -> dict[str, Any]:
    """A JSON-able N+k answer: k, survives, lost_hosts, unplaced, reason, and what it
    counted; or {"k", "error"} when it could not be known."""
    k = segment.recovery.reserve_k if k is None else k
    if nova is None:
        return {"k": k, "error": "no Nova configured (dry run): the servers are unknown"}
    hosts = compute_hosts(segment, state)
    reserve = reserve_hosts(segment, state)
    loads: dict[str, HostLoad] = {}
    limiter = trio.CapacityLimiter(NOVA_PARALLEL)
    # A child's error reaches the nursery's caller wrapped in an ExceptionGroup, which
    # `except MeshhaError` does not catch: each lookup keeps its own (a Nova outage in the
    # middle of a measurement once took the measuring leader's agent down).
    failed: list[MeshhaError] = []
    try:
        facts = await nova.host_facts(list(segment.host_names))

        async def one(host: str) -> None:
            try:
                async with limiter:
                    servers = await nova.list_servers(host)
            except MeshhaError as err:
                failed.append(err)
                return
            own = next((f for f in facts if f.host == host), None)
            vms = []
            for s in servers:
                ctx = VmContext(
                    server=s,
                    aggregates=own.aggregates if own else (),
                    availability_zone=s.availability_zone
                    or (own.availability_zone if own else None),
                    region=segment.region,
                    cell=segment.cell,
                )
                p = resolve(segment.policy, ctx)
                if p.ha:
                    f = s.flavor
                    vms.append(VmDemand(s.id, f.vcpus, f.ram_mb, f.disk_gb, p.priority))
            loads[host] = HostLoad(host, tuple(vms))

        async with trio.open_nursery() as nursery:
            for h in hosts:
                nursery.start_soon(one, h)
        if failed:
            raise failed[0]
    except MeshhaError as err:
        return {"k": k, "error": f"Nova: {err.kind}: {err}"}
    targets = [target_of(f) for f in facts if f.host in reserve]
    rep = n_plus_k([loads[h] for h in hosts], targets, k)
    return {
        "k": rep.k,
        "survives": rep.survives,
        "lost_hosts": list(rep.lost_hosts),
        "unplaced": [
            {"vm": u.vm, "priority": u.priority, "reason": u.reason} for u in rep.unplaced
        ],
        "reason": rep.reason,
        "compute_hosts": len(hosts),
        "ha_vms": sum(len(x.vms) for x in loads.values()),
        "reserve": [
            {
                "host": t.host,
                "vcpus_free": t.vcpus_free,
                "ram_mb_free": t.ram_mb_free,
                "disk_gb_free": t.disk_gb_free,
            }
            for t in targets
        ],
    }


def segment_signature(state: SegmentState) -> tuple[Any, ...]:
    """What N+k depends on that the log sees: roles, verdicts, maintenance, fences, and
    every server moved (evacuations, drains)."""
    moved = sum(
        1
        for i in state.intents.values()
        if i.action in ("evacuate", "drain", "migrate_vm", "live_migrate") and i.status == "ok"
    )
    return (
        tuple(sorted(state.roles.items())),
        tuple(sorted((h, v.kind) for h, v in state.verdicts.items())),
        tuple(sorted(state.maintenance)),
        tuple(sorted(h for h in state.fenced)),
        moved,
    )


class CapacityWatch:
    """The leader's N+k check: on every change of the segment (and every
    CAPACITY_POLL_S), measure through Nova, one measurement at a time, and propose a
    `capacity` entry when the answer differs from the committed one. decide/reserve.py
    alerts once per shortfall."""

    def __init__(self, segment: Segment, propose: Callable[[Entry], None], me: str) -> None:
        self.segment, self.propose, self.me = segment, propose, me
        self._signature: tuple[Any, ...] | None = None
        self._last = -math.inf
        self._busy = False

    def maybe_measure(
        self, nursery: trio.Nursery, state: SegmentState, nova: NovaPort | None, now: float
    ) -> None:
        if nova is None or self._busy:
            return
        sig = segment_signature(state)
        if sig == self._signature and now < self._last + CAPACITY_POLL_S:
            return
        self._signature, self._last, self._busy = sig, now, True
        nursery.start_soon(self._measure, state, nova, now)

    async def _measure(self, state: SegmentState, nova: NovaPort, now: float) -> None:
        try:
            rep = await nk_status(self.segment, state, nova)
        finally:
            self._busy = False
        if "error" in rep:
            log.warning("capacity_unknown", error=rep["error"])
            self._signature = None  # try again on the next round
            return
        old = state.capacity
        new = (rep["survives"], rep["k"], tuple(rep["lost_hosts"]))
        if old is not None and (old.survives, old.k, old.lost_hosts) == new:
            return
        self.propose(
            E.capacity(
                ts=now,
                by=self.me,
                survives=rep["survives"],
                k=rep["k"],
                reason=rep["reason"],
                lost_hosts=list(rep["lost_hosts"]),
            )
        )
