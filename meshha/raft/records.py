"""The records the replicated state holds: frozen values, built only by the state machine
(`meshha.raft.state`) from committed entries, read by the deciders, the agent's status
and the simulator. Replacing one is how the state changes; nobody edits one in place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from meshha.config.model import Priority
from meshha.raft.entries import Action, Outcome, VerdictKind
from meshha.raft.intent_key import IntentKey

IntentStatus = Literal["pending", "ok", "failed", "abandoned"]
ProcessOutcome = Literal["down", "restarted", "restart_failed"]
FenceMethod = Literal["bmc", "self_fence_deadline"]
# (observer, network, since): one observer's loss of a host on a network.
Evidence = tuple[str, str, float]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The condition of a host, with why: kind, the networks it concerns, a readable
    reason and the evidence (observer, network, since) it rests on."""

    kind: VerdictKind
    networks: tuple[str, ...] = ()
    reason: str = ""
    evidence: tuple[Evidence, ...] = ()

    def same_as(self, other: Verdict | None) -> bool:
        return other is not None and (self.kind, self.networks) == (other.kind, other.networks)


HEALTHY = Verdict("healthy", (), "no peer has lost it")


@dataclass(frozen=True, slots=True)
class Intent:
    """One committed step (or attempt at one) and, once done, how it went."""

    id: str
    key: IntentKey | None  # None for an id `decide` did not make (hand-made, old tests)
    action: Action
    host: str
    vm: str | None
    target: str | None
    order: int
    reason: str
    params: Mapping[str, Any]
    created_ts: float
    created_index: int
    episode: int
    status: IntentStatus = "pending"
    detail: str = ""
    error_kind: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)
    done_ts: float | None = None

    @property
    def done(self) -> bool:
        return self.status != "pending"


@dataclass(frozen=True, slots=True)
class Fence:
    """Proof that a host is fenced: by its BMC, or by its self-fence deadline passing."""

    method: str  # FenceMethod, or what a `fenced` entry from outside said
    detail: str
    ts: float
    episode: int  # the host's failure episode it was fenced in


@dataclass(frozen=True, slots=True)
class Reconcile:
    """A returning host's own report, after a fence: when it booted, which domains it
    destroyed because Nova places their instance elsewhere, which it kept (Nova places
    them here), and whether it could finish. The positive evidence a fenced host needs
    before its nova-compute is enabled again (decide/return_.py)."""

    episode: int  # the fence episode it answers
    ts: float
    booted_at: float | None  # None: the agent could not tell
    destroyed: tuple[str, ...]
    kept: tuple[str, ...]
    ok: bool
    detail: str
    # When the host was last up before it booted (agent/alive.py); None: not known.
    alive_until: float | None = None


@dataclass(frozen=True, slots=True)
class Maintenance:
    reason: str
    since: float
    operator: str = ""


@dataclass(frozen=True, slots=True)
class Server:
    """One server of an inventory: what evacuation planning needs."""

    id: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    ha: bool = True
    priority: Priority = "medium"

    @staticmethod
    def from_row(row: Mapping[str, Any]) -> Server:
        return Server(
            row["id"],
            row["vcpus"],
            row["ram_mb"],
            row["disk_gb"],
            row.get("ha", True),
            row.get("priority", "medium"),
        )


@dataclass(frozen=True, slots=True)
class HostFacts:
    """One host's free capacity, as Nova's placement reported it to an inventory."""

    host: str
    vcpus_free: int
    ram_mb_free: int
    disk_gb_free: int
    running_vms: int = 0

    @staticmethod
    def from_row(row: Mapping[str, Any]) -> HostFacts:
        return HostFacts(
            row["host"],
            row["vcpus_free"],
            row["ram_mb_free"],
            row["disk_gb_free"],
            row.get("running_vms", 0),
        )


@dataclass(frozen=True, slots=True)
class Inventory:
    """The servers of a host and the segment's free capacity, taken in a failure episode
    for a purpose (evacuate | live_migrate), at `ts` (the executor's clock)."""

    episode: int
    purpose: str
    ts: float
    servers: tuple[Server, ...]
    facts: tuple[HostFacts, ...]

    @staticmethod
    def from_data(episode: int, purpose: str, data: Mapping[str, Any]) -> Inventory:
        return Inventory(
            episode,
            purpose,
            data.get("ts", 0),
            tuple(Server.from_row(s) for s in data.get("servers", [])),
            tuple(HostFacts.from_row(f) for f in data.get("facts", [])),
        )


@dataclass(frozen=True, slots=True)
class VmFailure:
    """The latest failure of a VM, and the HA policy its host knew for it then."""

    host: str
    event: str
    detail: str
    ha: bool
    on_vm_failure: str | None
    ts: float


@dataclass(frozen=True, slots=True)
class SelfFence:
    """A host isolated itself and destroyed these VMs: its `isolation` entry, usually the
    off one, committed once it is back in contact (an isolated host has no quorum).
    `episode`: the host's failure episode when it committed."""

    ts: float
    episode: int
    vms: tuple[str, ...]
    ha: Mapping[str, bool]  # what its host could tell of each VM's HA policy


@dataclass(frozen=True, slots=True)
class ProcessFailure:
    outcome: ProcessOutcome
    detail: str
    ts: float
    since: float | None = None  # when the outage began, if the report says

    @property
    def began(self) -> float:
        """The failure this report is about: its outage's start (older reports: ts)."""
        return self.ts if self.since is None else self.since


@dataclass(frozen=True, slots=True)
class Capacity:
    """The segment's N+k status, as last measured: could it lose its k largest hosts?"""

    survives: bool
    k: int
    reason: str
    lost_hosts: tuple[str, ...] = ()
    ts: float = 0.0


@dataclass(frozen=True, slots=True)
class Brake:
    """The mass-failure brake: while on, nothing is fenced."""

    on: bool = False
    hosts: tuple[str, ...] = ()
    reason: str = ""
    since: float = 0.0


__all__ = [
    "HEALTHY",
    "Brake",
    "Capacity",
    "Evidence",
    "Fence",
    "FenceMethod",
    "HostFacts",
    "Intent",
    "IntentStatus",
    "Inventory",
    "Maintenance",
    "Outcome",
    "ProcessFailure",
    "ProcessOutcome",
    "Reconcile",
    "Server",
    "Verdict",
    "VerdictKind",
    "VmFailure",
]
