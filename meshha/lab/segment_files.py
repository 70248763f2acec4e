"""Write a segment config (TOML) and its secret files for a lab or test segment."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path


def _secret(path: Path, value: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(value)
    return path


def write_segment(
    directory: Path,
    hosts: Sequence[tuple[str, Mapping[str, str]]],
    *,
    name: str = "lab",
    networks: Mapping[str, str] | None = None,
    reserved: Sequence[str] = (),
    voters: Sequence[str] | None = None,
    profile: str = "lan-fast",
    raft_port: int = 4321,
    probe_port0: int = 7946,
    bmcs: Mapping[str, tuple[str, int]] | None = None,
    nova_cloud: str | None = None,
    hypervisor_uri: str = "none",
    extra: str = "",
) -> Path:
    """`hosts`: (name, {network: address}). Returns the path of segment.toml.

    `hypervisor_uri` defaults to "none", not to the config's qemu:///system: a lab agent
    must never watch (or, isolated, destroy) the domains of this machine's own libvirtd."""
    directory.mkdir(parents=True, exist_ok=True)
    nets = dict(
        networks or {"admin": "alert", "storage": "fence_evacuate", "tenant": "live_migrate"}
    )
    _secret(directory / "secrets" / "probe.key", secrets.token_hex(32).encode())
    _secret(directory / "secrets" / "raft.pw", secrets.token_hex(24).encode())
    if bmcs:
        _secret(directory / "secrets" / "bmc.pw", b"secret")
    voters = list(voters) if voters is not None else [h for h, _ in hosts]
    lines = [
        "[segment]",
        f'name = "{name}"',
        'probe_key_file = "secrets/probe.key"',
        "",
    ]
    for i, (net, on_loss) in enumerate(nets.items()):
        lines += [
            "[[networks]]",
            f'name = "{net}"',
            f'on_loss = "{on_loss}"',
            f"probe_port = {probe_port0 + i}",
            "",
        ]
    for h, addrs in hosts:
        role = "reserved" if h in reserved else "compute"
        addr = ", ".join(f'{n} = "{a}"' for n, a in addrs.items())
        lines += [
            "[[hosts]]",
            f'name = "{h}"',
            f'role = "{role}"',
            f"voter = {'true' if h in voters else 'false'}",
            f"addresses = {{ {addr} }}",
        ]
        if bmcs and h in bmcs:
            a, p = bmcs[h]
            lines += [
                "[hosts.bmc]",
                f'address = "{a}"',
                f"port = {p}",
                'username = "admin"',
                'password_file = "secrets/bmc.pw"',
            ]
        lines.append("")
    lines += [
        "[timings]",
        f'profile = "{profile}"',
        "",
        "[brake]",
        "max_failed_fraction = 0.5",
        "window_s = 30.0",
        "",
        "[raft]",
        f"port = {raft_port}",
        'password_file = "secrets/raft.pw"',
        'data_dir = "data"',
        "",
        "[recovery]",
        f"reserve_k = {1 if reserved else 0}",
        "",
    ]
    if nova_cloud:
        lines += ["[nova]", f'cloud = "{nova_cloud}"', ""]
    lines += ["[hypervisor]", f'uri = "{hypervisor_uri}"', ""]
    path = directory / "segment.toml"
    path.write_text("\n".join(lines) + extra)
    return path
