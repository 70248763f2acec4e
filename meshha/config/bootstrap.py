"""Starting a segment file from the cloud that already exists, and its secret files.

`meshctl config init` asks Nova which nova-compute hosts form the segment (an aggregate or
an availability zone) and how big each is (Placement's inventories), and writes a segment
file: networks, hosts with their capacity, roles and voters, and every other section at
its default. What Nova cannot know (each host's address per network, its BMC) comes from
an inventory file, or is left as `FILL-IN` for `meshctl config check` to point at.

`meshctl config secrets` then creates every secret file the segment file names and that
does not exist yet, with mode 0600 in a 0700 directory: the shared keys (probe key, Raft
password) are generated; passwords that belong to someone else (each BMC's, the SMTP
relay's) are asked for on the terminal (never argv). Run it once and copy the directory
to every host: the shared keys must be the same on all of them.

Pure: `render_segment`, `secret_files`, `read_inventory`. Adapters: `discover_hosts`
(openstacksdk), `create_secrets` (the file system).
"""

from __future__ import annotations

import os
import secrets
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from meshha.config.model import MIN_KEY_B
from meshha.errors import ConfigError

FILL_IN = "FILL-IN"
DEFAULT_NETWORKS = (
    ("admin", "alert", 7946),
    ("storage", "fence_evacuate", 7947),
    ("tenant", "live_migrate", 7948),
)
MAX_VOTERS = 5  # more voters make every commit wait for more hosts; 5 tolerate 2 failures

SecretKind = Literal["generate", "ask"]


@dataclass(frozen=True)
class HostSeed:
    """What Nova says about one compute host."""

    name: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    availability_zone: str | None = None
    aggregates: tuple[str, ...] = ()


@dataclass(frozen=True)
class InventoryHost:
    """What the operator's inventory says about one host (what Nova cannot know)."""

    addresses: Mapping[str, str] = field(default_factory=dict)
    bmc_address: str | None = None
    bmc_port: int = 623
    bmc_username: str = "meshha"


# -- the segment file --------------------------------------------------------------------


def choose_roles(names: Sequence[str], reserved: int | Sequence[str]) -> dict[str, str]:
    """Reserved hosts: the names given, or the last `reserved` hosts by name."""
    ordered = sorted(names)
    if isinstance(reserved, int):
        chosen = set(ordered[len(ordered) - reserved :]) if reserved > 0 else set()
    else:
        unknown = sorted(set(reserved) - set(ordered))
        if unknown:
            raise ConfigError(f"--reserved names hosts not in the segment: {', '.join(unknown)}")
        chosen = set(reserved)
    return {h: "reserved" if h in chosen else "compute" for h in ordered}


def choose_voters(names: Sequence[str]) -> set[str]:
    """An odd number of voters, at most MAX_VOTERS, the first hosts by name."""
    ordered = sorted(names)
    n = min(len(ordered), MAX_VOTERS)
    if n % 2 == 0 and n > 1:
        n -= 1
    return set(ordered[:n])


def _q(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_segment(
    name: str,
    hosts: Sequence[HostSeed],
    *,
    cloud: str,
    reserved: int | Sequence[str] = 1,
    inventory: Mapping[str, InventoryHost] | None = None,
    networks: Sequence[tuple[str, str, int]] = DEFAULT_NETWORKS,
    source: str = "",
) -> str:
    """The segment file's text. Every key not written here keeps its default; see
    config/segment.example.toml for what each one trades off."""
    if len(hosts) < 3:
        raise ConfigError(f"a segment needs at least 3 hosts (3 voters); Nova gave {len(hosts)}")
    inventory = inventory or {}
    roles = choose_roles([h.name for h in hosts], reserved)
    voters = choose_voters([h.name for h in hosts])
    out = [
        f"# meshha segment {name!r}, written by `meshctl config init`{source}.",
        "# Every key not set here has its default; config/segment.example.toml documents each",
        "# one with what it trades off. Then run `meshctl config secrets THIS_FILE` and",
        "# `meshctl config check THIS_FILE` (which names every value still to fill in).",
        "",
        "[segment]",
        f"name = {_q(name)}",
        'probe_key_file = "secrets/probe.key"',
        "",
    ]
    for net, on_loss, port in networks:
        out += [
            "[[networks]]",
            f"name = {_q(net)}",
            f"on_loss = {_q(on_loss)}",
            f"probe_port = {port}",
            "",
        ]
    for h in sorted(hosts, key=lambda h: h.name):
        inv = inventory.get(h.name, InventoryHost())
        where = ", ".join(
            f"{net} = {_q(inv.addresses.get(net, FILL_IN))}" for net, _, _ in networks
        )
        facts = [f"az {h.availability_zone}"] if h.availability_zone else []
        facts += [f"aggregates {', '.join(h.aggregates)}"] if h.aggregates else []
        out += [
            "[[hosts]]" + (f"  # {'; '.join(facts)}" if facts else ""),
            f"name = {_q(h.name)}",
            f"role = {_q(roles[h.name])}",
            f"voter = {'true' if h.name in voters else 'false'}",
            f"addresses = {{ {where} }}",
            "[hosts.bmc]",
            f"address = {_q(inv.bmc_address or FILL_IN)}",
            f"port = {inv.bmc_port}",
            f"username = {_q(inv.bmc_username)}",
            f'password_file = "secrets/bmc-{h.name}.pw"',
            "[hosts.capacity]",
            f"vcpus = {h.vcpus}",
            f"ram_mb = {h.ram_mb}",
            f"disk_gb = {h.disk_gb}",
            "",
        ]
    out += [
        "[timings]",
        'profile = "lan-fast"',
        "",
        "[brake]",
        "# No automatic fencing when more than this fraction of the segment fails within",
        "# window_s: a mass failure is more likely our network than their hosts.",
        "max_failed_fraction = 0.34",
        "window_s = 120.0",
        "",
        "[raft]",
        "port = 4321",
        'password_file = "secrets/raft.pw"',
        'data_dir = "/var/lib/meshha/raft"',
        "",
        "[nova]",
        f"cloud = {_q(cloud)}",
        "",
    ]
    return "\n".join(out)


def read_inventory(path: Path) -> dict[str, InventoryHost]:
    """An inventory file (TOML): one table per host,

    [hosts.compute-01]
    addresses = { admin = "10.0.0.11", storage = "10.0.1.11", tenant = "10.0.2.11" }
    bmc = { address = "10.0.99.11", username = "meshha" }   # port defaults to 623
    """
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the inventory: {e}") from None
    out = {}
    for host, t in (raw.get("hosts") or {}).items():
        if not isinstance(t, dict):
            raise ConfigError(f"{path}: hosts.{host}: must be a table")
        bmc = t.get("bmc") or {}
        out[host] = InventoryHost(
            addresses={str(k): str(v) for k, v in (t.get("addresses") or {}).items()},
            bmc_address=bmc.get("address"),
            bmc_port=int(bmc.get("port", 623)),
            bmc_username=str(bmc.get("username", "meshha")),
        )
    return out


# -- Nova --------------------------------------------------------------------------------


def discover_hosts(
    conn: Any, *, aggregate: str | None = None, availability_zone: str | None = None
) -> list[HostSeed]:
    """The nova-compute hosts of an aggregate or AZ (or all of them), each with its total
    schedulable size from Placement (total - reserved, times the allocation ratio).
    `conn` is an openstacksdk Connection; runs blocking, from the CLI."""
    services = [s for s in conn.compute.services() if s.binary == "nova-compute"]
    aggregates = list(conn.compute.aggregates())
    member_of: dict[str, list[str]] = {}
    for agg in aggregates:
        for h in agg.hosts or ():
            member_of.setdefault(h, []).append(agg.name)
    if aggregate is not None and aggregate not in {a.name for a in aggregates}:
        raise ConfigError(f"Nova has no host aggregate named {aggregate!r}")
    chosen = [
        s
        for s in services
        if (aggregate is None or aggregate in member_of.get(s.host, ()))
        and (availability_zone is None or s.availability_zone == availability_zone)
    ]
    sizes = _placement_sizes(conn)
    return [
        HostSeed(
            name=s.host,
            vcpus=sizes.get(s.host, (0, 0, 0))[0],
            ram_mb=sizes.get(s.host, (0, 0, 0))[1],
            disk_gb=sizes.get(s.host, (0, 0, 0))[2],
            availability_zone=s.availability_zone,
            aggregates=tuple(sorted(member_of.get(s.host, ()))),
        )
        for s in sorted(chosen, key=lambda s: s.host)
    ]


def _placement_sizes(conn: Any) -> dict[str, tuple[int, int, int]]:
    """host -> (vcpus, ram_mb, disk_gb) summed over its resource providers (nodes)."""
    nodes: dict[str, list[str]] = {}
    for hv in conn.compute.hypervisors(details=True):
        host = (hv.service_details or {}).get("host")
        if host:
            nodes.setdefault(host, []).append(hv.id)
    out = {}
    for host, ids in nodes.items():
        total = [0, 0, 0]
        for rp in ids:
            inv = conn.placement.get(f"/resource_providers/{rp}/inventories").json()
            for i, rc in enumerate(("VCPU", "MEMORY_MB", "DISK_GB")):
                total[i] += _schedulable(inv.get("inventories", {}).get(rc))
        out[host] = (total[0], total[1], total[2])
    return out


def _schedulable(inventory: Mapping[str, Any] | None) -> int:
    if not inventory:
        return 0
    usable = inventory.get("total", 0) - inventory.get("reserved", 0)
    return max(0, int(usable * float(inventory.get("allocation_ratio", 1.0))))


# -- secrets -----------------------------------------------------------------------------


def secret_files(config_path: Path) -> list[tuple[Path, SecretKind, str]]:
    """Every secret file the segment file names, resolved against its directory, with
    whether meshha can generate it or must ask for it, and what it is."""
    try:
        raw = tomllib.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{config_path}: cannot read: {e}") from None
    base = config_path.resolve().parent
    found: list[tuple[str | None, SecretKind, str]] = [
        (raw.get("segment", {}).get("probe_key_file"), "generate", "probe key"),
        (raw.get("raft", {}).get("password_file"), "generate", "Raft password"),
        ((raw.get("alerts", {}).get("smtp") or {}).get("password_file"), "ask", "SMTP password"),
    ]
    for h in raw.get("hosts", []):
        bmc = h.get("bmc") or {}
        found.append((bmc.get("password_file"), "ask", f"BMC password of {h.get('name')}"))
    return [(base / p, kind, what) for p, kind, what in found if isinstance(p, str)]


def create_secrets(
    config_path: Path, ask: Callable[[str], str], *, say: Callable[[str], None] = print
) -> list[Path]:
    """Create the missing secret files (0600, directories 0700); leave existing ones.
    Returns the files created. `ask(what)` returns a password the operator typed."""
    created = []
    for path, kind, what in secret_files(config_path):
        if path.exists():
            say(f"{path}: exists, left as it is ({what})")
            continue
        if kind == "generate":
            data = secrets.token_urlsafe(max(32, MIN_KEY_B)).encode()
        else:
            data = ask(what).encode()
            if not data:
                raise ConfigError(f"{path}: an empty {what} was given")
        _write_private(path, data + b"\n")
        created.append(path)
        say(f"{path}: created ({what}, mode 0600)")
    return created


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
