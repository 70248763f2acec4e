"""The segment configuration as frozen values.

One TOML file describes one failover segment (see config/segment.example.toml, which
documents every key and what it trades off). `meshha.config.load` turns the file into the
values below and checks them against themselves; everything else in meshha receives a
`Segment` explicitly and never reads a global.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

OnLoss = Literal["fence_evacuate", "live_migrate", "alert", "ignore"]
Role = Literal["compute", "reserved"]
Priority = Literal["high", "medium", "low"]
VmFailureAction = Literal["restart", "hard_reboot", "restart_elsewhere", "alert", "ignore"]
# The shortest probe key (HMAC-SHA256) a segment may use; the wire format refuses shorter.
MIN_KEY_B = 16

PolicyLevel = Literal["region", "cell", "availability_zone", "aggregate", "project", "flavor", "vm"]

ON_LOSS_VALUES: tuple[str, ...] = ("fence_evacuate", "live_migrate", "alert", "ignore")
ROLES: tuple[str, ...] = ("compute", "reserved")
PRIORITIES: tuple[str, ...] = ("high", "medium", "low")
VM_FAILURE_ACTIONS: tuple[str, ...] = (
    "restart",
    "hard_reboot",
    "restart_elsewhere",
    "alert",
    "ignore",
)
# Coarsest first: a rule at a later level overrides one at an earlier level.
POLICY_LEVELS: tuple[str, ...] = (
    "region",
    "cell",
    "availability_zone",
    "aggregate",
    "project",
    "flavor",
    "vm",
)


@dataclass(frozen=True)
class Network:
    """A network the peers probe each other on, and what losing it means."""

    name: str
    on_loss: OnLoss
    probe_port: int


@dataclass(frozen=True)
class Bmc:
    """How to reach a host's baseboard management controller (IPMI 2.0 lanplus)."""

    address: str
    port: int
    username: str
    password_file: Path


@dataclass(frozen=True)
class Capacity:
    """Schedulable size of a host, used by the placement planner."""

    vcpus: int
    ram_mb: int
    disk_gb: int


DEFAULT_HYPERVISOR_URI = "qemu:///system"
# `[hypervisor] uri = "none"`: this host's agent watches no VMs and cannot self-fence.
NO_HYPERVISOR = "none"
# An isolated agent stops feeding its watchdog this long before the latest moment that
# still lets it fire before the self-fence deadline (covers the feeding period).
WATCHDOG_MARGIN_S = 1.0
# Raft's longest election timeout, and so its quorum window (how long a member keeps
# counting a leader it no longer hears: meshha.raft.pysyncobj_log), as a multiple of
# `election_timeout_s` (agent/main.py).
ELECTION_TIMEOUT_MAX_FACTOR = 1.4


@dataclass(frozen=True)
class Watchdog:
    """A watchdog device the agent feeds: it resets (or powers off) the host when the agent
    stops feeding it, which it does when its loops stall or, isolated from the majority,
    once stopping still lets the watchdog fire before the self-fence deadline. A char
    device is driven by the Linux watchdog API; a unix socket by meshha's user-space
    watchdog protocol (the lab's chassis watchdog, meshha/lab/watchdog.py)."""

    device: Path = Path("/dev/watchdog")
    timeout_s: int = 5  # whole seconds, as WDIOC_SETTIMEOUT takes them


@dataclass(frozen=True)
class Host:
    """A compute hypervisor; `name` equals its nova-compute service host name."""

    name: str
    addresses: tuple[tuple[str, str], ...]  # (network name, IP address), one per network
    bmc: Bmc | None
    role: Role
    voter: bool
    capacity: Capacity | None = None
    # The libvirt URI of this host's hypervisor (VM events, libvirtd health, self-fence);
    # None: no hypervisor (`uri = "none"`).
    hypervisor_uri: str | None = DEFAULT_HYPERVISOR_URI
    watchdog: Watchdog | None = None  # [hosts.watchdog], else the segment's [watchdog]

    def address(self, network: str) -> str | None:
        for net, addr in self.addresses:
            if net == network:
                return addr
        return None

    @property
    def networks(self) -> tuple[str, ...]:
        return tuple(net for net, _ in self.addresses)


@dataclass(frozen=True)
class Timings:
    """Failure-detection timings. See segment.example.toml for the trade-offs.

    A silent host is *suspected* by one observer after about
    `probe_interval_s * misses_before_suspect`, and *failed* once a majority of voters
    have held it lost on every network for `fail_after_s` more.
    """

    profile: str
    probe_interval_s: float
    probe_timeout_s: float
    indirect_probes: int
    misses_before_suspect: int
    fail_after_s: float
    isolation_after_s: float
    self_fence_deadline_s: float
    max_clock_skew_s: float
    election_timeout_s: float
    # A silent host whose kernel still answers (meshha.probes.liveness) is held stalled,
    # not lost, this long from the first miss: the longest agent stall ridden through.
    # Keep: longest stall to ride < host watchdog timeout <= this < self_fence_deadline_s.
    stall_grace_s: float = 0.0

    @property
    def suspect_after_s(self) -> float:
        return self.probe_interval_s * self.misses_before_suspect


@dataclass(frozen=True)
class Brake:
    """Mass-failure brake: more than `max_failed_fraction` of the segment failing inside
    `window_s` holds all fencing and raises an alert instead."""

    max_failed_fraction: float
    window_s: float
    # How long a failed verdict stands before its fence, so that hosts failing together
    # (detected a few probes apart) are all seen before the first is fenced. None: the
    # timings' suspect_after_s. Adds that much to every recovery.
    settle_s: float | None = None


@dataclass(frozen=True)
class PolicyRule:
    """One HA policy rule. `match` is the name at that level (project id, flavor name,
    availability zone, aggregate name, …; for `vm`, a server id). Unset fields say nothing
    and let a coarser level decide."""

    level: PolicyLevel
    match: str
    ha: bool | None = None
    priority: Priority | None = None
    on_vm_failure: VmFailureAction | None = None


@dataclass(frozen=True)
class Policy:
    default_ha: bool = True
    default_priority: Priority = "medium"
    default_on_vm_failure: VmFailureAction = "restart"
    # A VM that fails this many times inside the window is restarted elsewhere.
    vm_restart_limit: int = 3
    vm_restart_window_s: float = 600.0
    rules: tuple[PolicyRule, ...] = ()


@dataclass(frozen=True)
class Recovery:
    max_parallel_evacuations: int = 10
    intent_max_attempts: int = 5
    intent_retry_backoff_s: float = 2.0
    # What a process that cannot be restarted leads to: "disable" (no new VMs, alert)
    # or "fence_evacuate" (treat the host as failed).
    process_restart_failure: Literal["disable", "fence_evacuate"] = "disable"
    # Accept "the host's self-fence deadline has provably passed" as a fence when the BMC
    # cannot be reached; used only for a host whose config declares a watchdog and a
    # hypervisor URI (`self_fence_provable`). The loader refuses an explicit true when a
    # host lacks either.
    allow_self_fence_proof: bool = True
    # N+k: how many of the largest hosts the segment must be able to lose.
    reserve_k: int = 1
    # Reserved hosts are disabled in Nova (reason names meshha) so its scheduler leaves
    # them empty; one is enabled only when chosen as an evacuation target.
    reserve_disable: bool = True
    # `meshctl maintenance on` may live-migrate onto a reserved host when the compute
    # hosts have no room (the reserve is then used up until replaced).
    maintenance_may_use_reserve: bool = False


@dataclass(frozen=True)
class Smtp:
    host: str
    port: int
    sender: str
    recipients: tuple[str, ...]
    username: str | None = None
    password_file: Path | None = None
    starttls: bool = False


@dataclass(frozen=True)
class Alerts:
    webhooks: tuple[str, ...] = ()
    smtp: Smtp | None = None
    timeout_s: float = 5.0


@dataclass(frozen=True)
class Raft:
    port: int
    password_file: Path
    data_dir: Path


@dataclass(frozen=True)
class Nova:
    cloud: str | None = None  # a cloud name in clouds.yaml; None: no Nova (dry run)
    microversion: str = "2.94"  # evacuated servers keep their vm_state (see recovery/nova.py)
    timeout_s: float = 30.0


@dataclass(frozen=True)
class Processes:
    names: tuple[str, ...] = ("nova-compute", "libvirtd")
    check_interval_s: float = 2.0
    restart_attempts: int = 3
    restart_backoff_s: float = 2.0
    # "{name}" is replaced by the process name. Used when set (systemd hosts too); else
    # `systemctl restart NAME` on systemd hosts (meshha.probes.processes).
    restart_command: str | None = None


@dataclass(frozen=True)
class Metrics:
    # "NET:PORT" (this host's address on network NET) or "IP:PORT"; None: not served.
    # Off by default: root daemon, unauthenticated page, no port free on every host.
    listen: str | None = None


@dataclass(frozen=True)
class Segment:
    name: str
    networks: tuple[Network, ...]
    hosts: tuple[Host, ...]
    timings: Timings
    brake: Brake
    raft: Raft
    probe_key_file: Path
    policy: Policy = field(default_factory=Policy)
    recovery: Recovery = field(default_factory=Recovery)
    alerts: Alerts = field(default_factory=Alerts)
    nova: Nova = field(default_factory=Nova)
    processes: Processes = field(default_factory=Processes)
    metrics: Metrics = field(default_factory=Metrics)
    region: str | None = None
    cell: str | None = None
    source: str = "<memory>"  # the file it came from, for messages

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def network(self, name: str) -> Network:
        for n in self.networks:
            if n.name == name:
                return n
        raise KeyError(name)

    @property
    def host_names(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.hosts)

    @property
    def voters(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.hosts if h.voter)

    @property
    def network_names(self) -> tuple[str, ...]:
        return tuple(n.name for n in self.networks)


def self_fence_provable(segment: Segment, host: str) -> bool:
    """May the majority take "the self-fence deadline of `host` has passed" as a fence?
    Only when allowed, and when the host's config declares a hypervisor (so its agent
    destroys its VMs when isolated) and a watchdog (so a hung host is reset anyway)."""
    if not segment.recovery.allow_self_fence_proof:
        return False
    h = next((x for x in segment.hosts if x.name == host), None)
    return h is not None and h.hypervisor_uri is not None and h.watchdog is not None


def majority(n: int) -> int:
    """Smallest count that is more than half of n."""
    return n // 2 + 1


TIMING_PROFILES: dict[str, dict[str, float]] = {
    # Dedicated low-latency LAN: a dead host failed in about a second; an agent stalled
    # for 5 s while its host's kernel answers is ridden through (stall_grace_s 8 s: the
    # first miss can precede the stall by a probe interval, and a resumed agent needs a
    # moment under load to answer again; the host watchdog, 5-8 s, is the authority
    # beyond; bench/stall_ride.py measures it: 7 s ridden, 10 s not; stops of 1 s every
    # 3 s and slow observers give no verdict; dead host p50 1.0 s, p99 3.0 s at load
    # 6-16 on 2 shared cores, p99 1.3 s once the load was under 12).
    "lan-fast": {
        "probe_interval_s": 0.2,
        "probe_timeout_s": 0.1,
        "indirect_probes": 3,
        "misses_before_suspect": 3,
        "fail_after_s": 0.3,
        "isolation_after_s": 2.0,
        "self_fence_deadline_s": 10.0,
        "max_clock_skew_s": 0.5,
        "election_timeout_s": 1.0,
        "stall_grace_s": 8.0,
    },
    # Busy or lossy networks: a few seconds, far fewer false suspicions; rides through an
    # agent stall of about 12 s while its host's kernel answers (stall_grace_s 15 s).
    "lan-safe": {
        "probe_interval_s": 1.0,
        "probe_timeout_s": 0.5,
        "indirect_probes": 3,
        "misses_before_suspect": 3,
        "fail_after_s": 2.0,
        "isolation_after_s": 6.0,
        "self_fence_deadline_s": 30.0,
        "max_clock_skew_s": 1.0,
        "election_timeout_s": 3.0,
        "stall_grace_s": 15.0,
    },
}
