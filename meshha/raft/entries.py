"""Log entries: the only way the segment's replicated state changes.

An entry is a plain dict (it travels through msgpack and pysyncobj and lands in the
ledger as a row). Every entry carries `v` (schema version), `kind`, `ts` (the proposer's
clock, so `apply` never reads one) and `by` (the proposing host). Builders below are the
only place entries are made; `check` validates one coming from outside.
"""

from __future__ import annotations

from typing import Any, Literal, cast, get_args

import msgpack

SCHEMA_VERSION = 1

Entry = dict[str, Any]

# kind -> required fields (besides v, kind, ts, by)
REQUIRED: dict[str, tuple[str, ...]] = {
    "observation": ("host", "network", "reachable", "since"),
    "verdict": ("host", "verdict", "networks", "reason", "evidence"),
    "maintenance": ("host", "on", "reason"),
    "intent": ("intent", "action", "host", "reason"),
    "result": ("intent", "outcome", "detail"),
    "fenced": ("host", "method", "reason", "evidence"),
    "vm_failure": ("host", "vm", "event", "detail"),
    "process_failure": ("host", "process", "outcome", "detail"),
    "brake": ("on", "hosts", "reason"),
    "reserve": ("host", "role", "reason"),
    "isolation": ("host", "on", "reason"),
    "capacity": ("survives", "k", "reason"),
    # a returning host's agent: what it found and destroyed before it may run VMs again
    "reconcile": ("host", "episode", "booted_at", "destroyed", "kept", "ok", "detail"),
}

Action = Literal[
    "fence",
    "disable_compute",
    "inventory",
    "evacuate",
    "live_migrate",
    "restart_vm",
    "hard_reboot",
    "migrate_vm",
    "enable_compute",
    "power_check",
    "alert",
    # Reserved hosts are kept empty in Nova (decide/reserve.py) and maintenance empties
    # a host (decide/maintenance.py).
    "reserve_hold",
    "reserve_release",
    "maint_hold",
    "drain",
    "maint_release",
]
ACTIONS: tuple[Action, ...] = get_args(Action)

VerdictKind = Literal["healthy", "suspect", "degraded", "failed", "maintenance"]

Outcome = Literal["ok", "failed", "abandoned"]
OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)


def _base(kind: str, ts: float, by: str) -> Entry:
    return {"v": SCHEMA_VERSION, "kind": kind, "ts": float(ts), "by": by}


def observation(
    *, ts: float, by: str, host: str, network: str, reachable: bool, since: float
) -> Entry:
    """`by` lost (or regained) `host` on `network` since `since`."""
    e = _base("observation", ts, by)
    e.update(host=host, network=network, reachable=bool(reachable), since=float(since))
    return e


def verdict(
    *,
    ts: float,
    by: str,
    host: str,
    verdict: VerdictKind,
    networks: list[str],
    reason: str,
    evidence: list[list[Any]],
) -> Entry:
    e = _base("verdict", ts, by)
    e.update(host=host, verdict=verdict, networks=list(networks), reason=reason, evidence=evidence)
    return e


def maintenance(
    *, ts: float, by: str, host: str, on: bool, reason: str, operator: str = ""
) -> Entry:
    e = _base("maintenance", ts, by)
    e.update(host=host, on=bool(on), reason=reason, operator=operator)
    return e


def intent(
    *,
    ts: float,
    by: str,
    intent_id: str,
    action: Action,
    host: str,
    reason: str,
    vm: str | None = None,
    target: str | None = None,
    order: int = 0,
    params: dict[str, Any] | None = None,
) -> Entry:
    assert action in ACTIONS, action
    e = _base("intent", ts, by)
    e.update(
        intent=intent_id,
        action=action,
        host=host,
        vm=vm,
        target=target,
        order=order,
        reason=reason,
        params=params or {},
    )
    return e


def result(
    *,
    ts: float,
    by: str,
    intent_id: str,
    outcome: Outcome,
    detail: str,
    error_kind: str | None = None,
    data: dict[str, Any] | None = None,
) -> Entry:
    assert outcome in OUTCOMES, outcome
    e = _base("result", ts, by)
    e.update(
        intent=intent_id, outcome=outcome, detail=detail, error_kind=error_kind, data=data or {}
    )
    return e


def fenced(*, ts: float, by: str, host: str, method: str, reason: str, evidence: Any) -> Entry:
    e = _base("fenced", ts, by)
    e.update(host=host, method=method, reason=reason, evidence=evidence)
    return e


def vm_failure(*, ts: float, by: str, host: str, vm: str, event: str, detail: str) -> Entry:
    e = _base("vm_failure", ts, by)
    e.update(host=host, vm=vm, event=event, detail=detail)
    return e


def process_failure(
    *,
    ts: float,
    by: str,
    host: str,
    process: str,
    outcome: str,
    detail: str,
    since: float | None = None,
) -> Entry:
    """`since`: when the outage began (every report of one outage carries the same)."""
    e = _base("process_failure", ts, by)
    e.update(host=host, process=process, outcome=outcome, detail=detail)
    if since is not None:
        e["since"] = since
    return e


def brake(*, ts: float, by: str, on: bool, hosts: list[str], reason: str) -> Entry:
    e = _base("brake", ts, by)
    e.update(on=bool(on), hosts=sorted(hosts), reason=reason)
    return e


def reserve(*, ts: float, by: str, host: str, role: str, reason: str) -> Entry:
    e = _base("reserve", ts, by)
    e.update(host=host, role=role, reason=reason)
    return e


def isolation(
    *, ts: float, by: str, host: str, on: bool, reason: str, vms: list[dict[str, Any]] | None = None
) -> Entry:
    """`vms`: the VMs the host destroyed when it isolated itself, each {"vm"} and, when
    its host could ask Nova, {"ha"}. The on entry rarely commits (no quorum); the off
    one, proposed until committed, carries them too. decide/isolation.py restarts them
    if the majority did not fence the host meanwhile."""
    e = _base("isolation", ts, by)
    e.update(host=host, on=bool(on), reason=reason)
    if vms is not None:
        e["vms"] = vms
    return e


def capacity(
    *, ts: float, by: str, survives: bool, k: int, reason: str, lost_hosts: list[str]
) -> Entry:
    """The segment's N+k status as the leader measured it (meshha.agent.capacity)."""
    e = _base("capacity", ts, by)
    e.update(survives=bool(survives), k=int(k), reason=reason, lost_hosts=list(lost_hosts))
    return e


def reconcile(
    *,
    ts: float,
    by: str,
    host: str,
    episode: int,
    booted_at: float | None,
    destroyed: list[str],
    kept: list[str],
    ok: bool,
    detail: str,
    alive_until: float | None = None,
) -> Entry:
    """`alive_until`: when the host was last up before `booted_at` (agent/alive.py),
    only when known (older entries and the simulator's have none)."""
    e = _base("reconcile", ts, by)
    e.update(
        host=host,
        episode=episode,
        booted_at=booted_at,
        destroyed=destroyed,
        kept=kept,
        ok=ok,
        detail=detail,
    )
    if alive_until is not None:
        e["alive_until"] = alive_until
    return e


def check(entry: Any) -> list[str]:
    """Problems with an entry from outside (control socket, old journal). Empty = fine."""
    if not isinstance(entry, dict):
        return [f"entry is a {type(entry).__name__}, not a map"]
    problems = []
    for key, typ in (("v", int), ("kind", str), ("ts", float), ("by", str)):
        if not isinstance(entry.get(key), typ):
            problems.append(f"{key}: missing or not a {typ.__name__}")
    kind = entry.get("kind")
    if isinstance(kind, str):
        if kind not in REQUIRED:
            problems.append(f"kind: unknown {kind!r}")
        else:
            problems += [f"{f}: missing for {kind}" for f in REQUIRED[kind] if f not in entry]
    v = entry.get("v")
    if isinstance(v, int) and not isinstance(v, bool) and v > SCHEMA_VERSION:
        problems.append(f"v: schema {v} is newer than this agent's {SCHEMA_VERSION}")
    return problems


def pack(entry: Entry) -> bytes:
    return cast(bytes, msgpack.packb(entry, use_bin_type=True))


def unpack(data: bytes) -> Entry:
    """What `pack` wrote. Bytes from outside may hold anything: `check` says whether it
    is an entry."""
    return cast(Entry, msgpack.unpackb(data, raw=False, strict_map_key=True))
