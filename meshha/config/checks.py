"""The checks of the segment config against itself: timings that contradict each other,
hosts across the segment (duplicate names, addresses and BMCs, enough voters, a way to
fence every host, reserved capacity for N+k), the Raft network, and the secret files
(present, non-empty, not readable by others; never echoed).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from meshha.config.model import ELECTION_TIMEOUT_MAX_FACTOR, MIN_KEY_B, Timings
from meshha.config.read import Findings, Problems, Table

_MIN_VOTERS = 3
RAFT_NETWORK = "admin"  # Raft binds to each host's address on this network


def check_timings(t: Table, tm: Timings, overrides: dict[str, float]) -> None:
    """Refuse timings that contradict each other (see segment.example.toml)."""

    def val(name: str) -> str:
        v = getattr(tm, name)
        return f"{name} = {v:g}" + ("" if name in overrides else f" from profile {tm.profile!r}")

    if tm.probe_timeout_s >= tm.probe_interval_s:
        t.problem(
            "probe_timeout_s",
            f"must be less than probe_interval_s ({val('probe_timeout_s')}, "
            f"{val('probe_interval_s')}): a probe must time out before the next one is sent, "
            "or slow replies pile up and one delay counts as several misses",
        )
    if tm.stall_grace_s >= tm.self_fence_deadline_s:
        t.problem(
            "stall_grace_s",
            f"must be less than self_fence_deadline_s ({val('stall_grace_s')}, "
            f"{val('self_fence_deadline_s')}): the host watchdog must have reset a host "
            "stalled that long before the majority counts on its self-fence",
        )
    if tm.isolation_after_s >= tm.self_fence_deadline_s:
        t.problem(
            "isolation_after_s",
            f"must be less than self_fence_deadline_s ({val('isolation_after_s')}, "
            f"{val('self_fence_deadline_s')}): the isolated host must have time to kill its "
            "VMs before the majority may rely on the deadline",
        )
    if tm.isolation_after_s < tm.suspect_after_s:
        t.problem(
            "isolation_after_s",
            f"must be at least suspect_after_s = probe_interval_s x misses_before_suspect "
            f"= {tm.suspect_after_s:g} ({val('isolation_after_s')}): a host must not "
            "self-isolate faster than its peers can even suspect it",
        )
    if ELECTION_TIMEOUT_MAX_FACTOR * tm.election_timeout_s >= tm.isolation_after_s:
        t.problem(
            "election_timeout_s",
            f"x {ELECTION_TIMEOUT_MAX_FACTOR:g} (Raft's longest election timeout and quorum "
            f"window) must be less than isolation_after_s ({val('election_timeout_s')}, "
            f"{val('isolation_after_s')}): a leader election must finish before a host "
            "counts itself isolated, or a routine leader change could make healthy hosts "
            "self-fence; and a host cut off must lose its quorum before then, or it "
            "self-fences late",
        )


def check_hosts(
    tables: list[Table], hosts: list[dict[str, Any]], recovery: dict[str, Any], out: Problems
) -> None:
    names: dict[str, str] = {}
    addr_owner: dict[str, str] = {}
    bmc_owner: dict[tuple[str, int], str] = {}
    voters: list[str] = []
    maybe_voters = 0
    for t, h in zip(tables, hosts, strict=True):
        name = h["name"]
        label = repr(name) if name else t.path
        if name is not None:
            if name in names:
                t.problem("name", f"duplicate host name {name!r} (also {names[name]})")
            names.setdefault(name, t.path)
        if h["voter"]:
            voters.append(name or t.path)
        elif h["voter"] is None:
            maybe_voters += 1
        for net, addr in h["addresses"].items():
            if addr is None:
                continue
            key = t.at(f"addresses.{net}")
            if addr in addr_owner:
                out.add(key, f"duplicate address {addr} (also {addr_owner[addr]})")
            addr_owner.setdefault(addr, key)
        bmc = h["bmc"]
        if bmc is not None and bmc["address"] is not None and bmc["port"] is not None:
            where = (bmc["address"], bmc["port"])
            key = t.at("bmc.address")
            if where in bmc_owner:
                out.add(
                    key,
                    f"BMC {where[0]} port {where[1]} is also {bmc_owner[where]}: "
                    "fencing one host would power off another",
                )
            bmc_owner.setdefault(where, key)
        if bmc is None and recovery["allow_self_fence_proof"] is False:
            t.problem(
                "",
                f"host {label} has no [hosts.bmc] and recovery.allow_self_fence_proof is "
                "false: it could never be fenced, so its VMs could never be evacuated",
            )
    if tables and len(voters) + maybe_voters < _MIN_VOTERS:
        out.add(
            "hosts",
            f"only {len(voters)} voter(s) ({', '.join(map(str, voters)) or 'none'}): a segment "
            f"needs at least {_MIN_VOTERS}, so that losing one still leaves a majority",
        )
    reserve_k = recovery["reserve_k"]
    roles = [h["role"] for h in hosts]
    if reserve_k and tables and "reserved" not in roles and None not in roles:
        out.add(
            "recovery.reserve_k",
            f'is {reserve_k} but no host has role = "reserved": N+k needs reserved '
            "capacity to evacuate onto (set reserve_k = 0 to run without)",
        )


def _secret_file_problems(path: Path, what: str) -> Iterator[str]:
    """What is wrong with a secret file. Never reads the content into a message."""
    name = f"{what} file '{path}'"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        yield f"{name} does not exist"
        return
    except OSError as e:
        yield f"{name} cannot be examined: {e.strerror}"
        return
    if not stat.S_ISREG(st.st_mode):
        yield f"{name} is not a regular file"
        return
    if st.st_mode & 0o007:
        yield (
            f"{name} is readable or writable by others (mode {stat.S_IMODE(st.st_mode):04o}): "
            "run chmod o-rwx on it"
        )
    try:
        data = path.read_bytes()
    except OSError as e:
        yield f"{name} cannot be read: {e.strerror}"
        return
    if not data.strip():
        yield f"{name} is empty"
    elif what == "probe key" and len(data.rstrip(b"\r\n")) < MIN_KEY_B:
        yield f"{name} is too short: a probe key must be at least {MIN_KEY_B} bytes"


def check_secrets(read: Findings, out: Problems) -> None:
    seen: dict[tuple[Path, str], list[str]] = {}
    for key, path, what in read.secrets:
        if (path, what) not in seen:
            seen[path, what] = list(_secret_file_problems(path, what))
        for problem in seen[path, what]:
            out.add(key, problem)


def check_raft_network(declared: list[str] | None, out: Problems) -> None:
    if declared is not None and RAFT_NETWORK not in declared:
        out.add(
            "networks",
            f"no network named {RAFT_NETWORK!r}: Raft runs between the hosts' "
            f"{RAFT_NETWORK} addresses, so the segment must declare it",
        )
