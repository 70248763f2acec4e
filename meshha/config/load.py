"""Read one segment TOML file into a `Segment`, and check it against itself: the entry.

`load_segment(path)` returns the frozen `Segment` or raises `ConfigError` whose message
lists every problem found, one per line, each as ``FILE: key.path: what is wrong``
(array entries are 0-based: ``hosts[2]`` is the third ``[[hosts]]`` table).
`check_file(path)` returns the same lines as a list (empty: the file is good); it is what
``meshctl config check FILE`` prints.

Reading and checking are one pass that never stops at the first problem: a reader hands
out keys by type and records what is wrong, the checks across sections run on whatever
could be read, and the `Segment` is built only when nothing was found. Unknown keys are
refused (a typo must not silently turn a setting back to its default).

Secrets are never in the config and never in a message: the config names files (BMC,
raft and SMTP passwords, the probe key), which must exist, be non-empty and not be
readable or writable by others. Messages name the file, never what is in it, and never
echo the value of an unknown key (someone may have pasted a password there) or of a
webhook URL (which often carries a token). Relative paths are resolved against the
directory of the config file.

The parts: `read` (the typed TOML reader), `sections` (one reader per table), `checks`
(the checks across sections); this module runs them in order and builds the values.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from meshha.config import checks, fencing, sections
from meshha.config.model import (
    Alerts,
    Bmc,
    Brake,
    Capacity,
    Host,
    Metrics,
    Network,
    Nova,
    Policy,
    PolicyRule,
    Processes,
    Raft,
    Recovery,
    Segment,
    Smtp,
    Watchdog,
)
from meshha.config.read import Findings, Problems, Table, parse_toml
from meshha.config.sections import HOST_POLICY_REFUSED
from meshha.errors import ConfigError

__all__ = ["HOST_POLICY_REFUSED", "check_file", "load_segment"]


def load_segment(path: str | os.PathLike[str]) -> Segment:
    """The segment described by the TOML file at `path`; `ConfigError` listing every
    problem (one per line) if there is any."""
    segment, problems = _load(Path(path))
    if problems:
        raise ConfigError("\n".join(problems))
    assert segment is not None
    return segment


def check_file(path: str | os.PathLike[str]) -> list[str]:
    """Every problem of the TOML file at `path`, one message each; empty when it loads."""
    return _load(Path(path))[1]


def _load(path: Path) -> tuple[Segment | None, list[str]]:
    out = Problems(str(path))
    raw = parse_toml(path, out)
    if raw is None:
        return None, out.lines
    root = Table(raw, "", out, path.absolute().parent)
    read = Findings()
    segment = sections.segment_table(root, read)
    nets = sections.networks(root)
    declared = [n["name"] for n in nets] if nets and all(n["name"] for n in nets) else None
    checks.check_raft_network(declared, out)
    host_tables = root.subs("hosts", required=True)
    hosts = [sections.host(t, declared, read) for t in host_tables]
    timings = sections.timings(root)
    brake = sections.brake(root)
    policy = sections.policy(root, out)
    recovery = sections.recovery(root, out)
    alerts = sections.alerts(root, read)
    raft = sections.raft(root, read)
    nova = sections.nova(root, out)
    processes = sections.processes(root, out)
    metrics = sections.metrics(root, declared)
    uri = fencing.hypervisor(root, out)
    segment_watchdog = fencing.watchdog(root)
    root.done()
    checks.check_hosts(host_tables, hosts, recovery, out)
    checks.check_secrets(read, out)
    fencing.check_self_fence(root, host_tables, hosts, segment_watchdog, uri, timings, out)
    if out.lines:
        return None, out.lines
    assert declared is not None and timings is not None and brake and raft
    smtp = alerts.pop("smtp")
    rules = policy.pop("rules")
    built = Segment(
        name=segment["name"],
        region=segment["region"],
        cell=segment["cell"],
        probe_key_file=segment["probe_key_file"],
        networks=tuple(Network(**n) for n in nets),
        hosts=tuple(_build_host(h, declared, uri, segment_watchdog) for h in hosts),
        timings=timings,
        brake=Brake(**brake),
        policy=Policy(**policy, rules=tuple(PolicyRule(**r) for r in rules)),
        recovery=Recovery(**recovery),
        alerts=Alerts(**alerts, smtp=None if smtp is None else Smtp(**smtp)),
        raft=Raft(**raft),
        nova=Nova(**nova),
        processes=Processes(**processes),
        metrics=Metrics(**metrics),
        source=str(path),
    )
    return built, []


def _build_host(
    h: dict[str, Any], declared: list[str], uri: str | None, watchdog: dict[str, Any] | None
) -> Host:
    bmc, cap, wd = h["bmc"], h["capacity"], h["watchdog"] or watchdog
    return Host(
        name=h["name"],
        addresses=tuple((net, h["addresses"][net]) for net in declared),
        bmc=None if bmc is None else Bmc(**bmc),
        role=h["role"],
        voter=h["voter"],
        capacity=None if cap is None else Capacity(**cap),
        hypervisor_uri=fencing.effective_uri(h, uri),
        watchdog=None if wd is None else Watchdog(**wd),
    )
