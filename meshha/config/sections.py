"""The sections of the segment TOML, one reader each: `segment`, `networks`, `hosts`,
`timings`, `brake`, `policy`, `recovery`, `alerts`, `raft`, `nova`, `processes`,
`metrics`.

Each takes the root `Table` and returns the keyword arguments of its model value (a dict,
with None where a key was wrong), recording problems as it goes; `load` builds the frozen
values once nothing was found. Checks within one section live here; checks that need
several sections live in `checks`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from meshha.config.checks import check_timings
from meshha.config.fencing import host_hypervisor, watchdog
from meshha.config.model import (
    ON_LOSS_VALUES,
    POLICY_LEVELS,
    PRIORITIES,
    ROLES,
    TIMING_PROFILES,
    VM_FAILURE_ACTIONS,
    Alerts,
    Metrics,
    Nova,
    Policy,
    Processes,
    Recovery,
    Timings,
)
from meshha.config.read import Findings, Problems, Table, ip_value

HOST_POLICY_REFUSED = (
    "HA policy per compute host is refused: VMs would inherit HA non-deterministically "
    "depending on where nova-scheduler placed them (user story); "
    "set it per aggregate or availability_zone instead"
)
# Level names that would mean "per compute host"; refused with the reason above.
_HOST_LEVELS = frozenset(
    {"host", "hosts", "compute_host", "compute-host", "compute", "hypervisor", "node"}
)
_DEFAULT_BMC_PORT = 623
_PROCESS_RESTART_FAILURE = ("disable", "fence_evacuate")
_MICROVERSION = re.compile(r"^\d+\.\d+$")
_INT_TIMINGS = ("indirect_probes", "misses_before_suspect")
# Single-field bounds of the timing overrides: (kind, bound) as for Table.number.
_TIMING_BOUNDS: dict[str, tuple[str, float]] = {
    "probe_interval_s": ("above", 0),
    "probe_timeout_s": ("above", 0),
    "indirect_probes": ("at_least", 0),
    "misses_before_suspect": ("at_least", 1),
    "fail_after_s": ("at_least", 0),
    "isolation_after_s": ("above", 0),
    "self_fence_deadline_s": ("above", 0),
    "max_clock_skew_s": ("at_least", 0),
    "election_timeout_s": ("above", 0),
    "stall_grace_s": ("at_least", 0),
}


def segment_table(root: Table, read: Findings) -> dict[str, Any]:
    t = root.sub("segment", required=True)
    if t is None:
        return {}
    kw: dict[str, Any] = {
        "name": t.text("name", required=True),
        "region": t.text("region"),
        "cell": t.text("cell"),
        "probe_key_file": t.file("probe_key_file", required=True),
    }
    if kw["probe_key_file"] is not None:
        read.secrets.append((t.at("probe_key_file"), kw["probe_key_file"], "probe key"))
    t.done()
    return kw


def networks(root: Table) -> list[dict[str, Any]]:
    nets = []
    names: dict[str, str] = {}
    ports: dict[int, str] = {}
    for t in root.subs("networks", required=True):
        kw: dict[str, Any] = {
            "name": t.text("name", required=True),
            "on_loss": t.choice("on_loss", ON_LOSS_VALUES, required=True),
            "probe_port": t.port("probe_port", required=True),
        }
        t.done()
        name, port = kw["name"], kw["probe_port"]
        if name is not None:
            if name in names:
                t.problem("name", f"duplicate network name {name!r} (also {names[name]})")
            names.setdefault(name, t.path)
        if port is not None:
            if port in ports:
                t.problem("probe_port", f"duplicate probe port {port} (also {ports[port]})")
            ports.setdefault(port, t.path)
        nets.append(kw)
    return nets


def host(t: Table, declared: list[str] | None, read: Findings) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "name": t.text("name", required=True),
        "role": t.choice("role", ROLES, required=True),
        "voter": t.flag("voter", required=True),
    }
    raw_addrs = t.mapping("addresses", required=True)
    addrs: dict[str, str | None] = {}
    for net, value in (raw_addrs or {}).items():
        key = f"addresses.{net}"
        if declared is not None and net not in declared:
            t.problem(
                key,
                f"network {net!r} is not declared in [[networks]] "
                f"(declared: {', '.join(declared) or 'none'})",
            )
        addrs[net] = ip_value(t, key, value)
    if raw_addrs is not None and declared is not None:
        for net in declared:
            if net not in addrs:
                t.problem(
                    "addresses",
                    f"no address on network {net!r}: every host needs one "
                    "on each declared network, so peers can probe it there",
                )
    kw["addresses"] = addrs
    kw["bmc"] = None
    bmc = t.sub("bmc")
    if bmc is not None:
        kw["bmc"] = {
            "address": bmc.ip("address", required=True),
            "port": bmc.port("port", default=_DEFAULT_BMC_PORT),
            "username": bmc.text("username", required=True),
            "password_file": bmc.file("password_file", required=True),
        }
        if kw["bmc"]["password_file"] is not None:
            read.secrets.append(
                (bmc.at("password_file"), kw["bmc"]["password_file"], "BMC password")
            )
        bmc.done()
    kw["capacity"] = None
    cap = t.sub("capacity")
    if cap is not None:
        kw["capacity"] = {
            "vcpus": cap.integer("vcpus", required=True, at_least=1),
            "ram_mb": cap.integer("ram_mb", required=True, at_least=1),
            "disk_gb": cap.integer("disk_gb", required=True, at_least=0),
        }
        cap.done()
    kw["watchdog"] = watchdog(t)
    kw["hypervisor"] = host_hypervisor(t)
    t.done()
    return kw


def timings(root: Table) -> Timings | None:
    t = root.sub("timings", required=True)
    if t is None:
        return None
    profile = t.text("profile", required=True)
    overrides: dict[str, float] = {}
    for name, (kind, bound) in _TIMING_BOUNDS.items():
        if name in _INT_TIMINGS:
            value: float | None = t.integer(name, at_least=int(bound))
        else:
            value = (
                t.number(name, above=bound) if kind == "above" else t.number(name, at_least=bound)
            )
        if value is not None:
            overrides[name] = value
    t.done()
    if profile is None:
        return None
    if profile not in TIMING_PROFILES:
        valid = ", ".join(TIMING_PROFILES)
        t.problem("profile", f"unknown timing profile {profile!r} (valid: {valid})")
        return None
    if any(t.has(name) and name not in overrides for name in _TIMING_BOUNDS):
        return None  # a bad override has its own problem; relations would only mislead
    values = {**TIMING_PROFILES[profile], **overrides}
    for name in _INT_TIMINGS:
        values[name] = int(values[name])
    timings = Timings(profile=profile, **values)  # type: ignore[arg-type]
    check_timings(t, timings, overrides)
    return timings


def brake(root: Table) -> dict[str, Any] | None:
    t = root.sub("brake", required=True)
    if t is None:
        return None
    kw: dict[str, Any] = {
        "max_failed_fraction": t.number("max_failed_fraction", required=True, above=0, at_most=1),
        "window_s": t.number("window_s", required=True, above=0),
    }
    t.done()
    return kw


def policy(root: Table, out: Problems) -> dict[str, Any]:
    d = Policy()
    t = root.sub("policy") or Table({}, "policy", out, Path())
    kw: dict[str, Any] = {
        "default_ha": t.flag("default_ha", default=d.default_ha),
        "default_priority": t.choice("default_priority", PRIORITIES, default=d.default_priority),
        "default_on_vm_failure": t.choice(
            "default_on_vm_failure", VM_FAILURE_ACTIONS, default=d.default_on_vm_failure
        ),
        "vm_restart_limit": t.integer("vm_restart_limit", default=d.vm_restart_limit, at_least=1),
        "vm_restart_window_s": t.number(
            "vm_restart_window_s", default=d.vm_restart_window_s, above=0
        ),
    }
    rules = []
    for r in t.subs("rules"):
        level = r.text("level", required=True)
        if level is not None:
            if level.strip().lower() in _HOST_LEVELS:
                r.problem("level", HOST_POLICY_REFUSED)
                level = None
            elif level not in POLICY_LEVELS:
                valid = ", ".join(POLICY_LEVELS)
                r.problem("level", f"unknown level {level!r} (valid: {valid})")
                level = None
        rule = {
            "level": level,
            "match": r.text("match", required=True),
            "ha": r.flag("ha"),
            "priority": r.choice("priority", PRIORITIES),
            "on_vm_failure": r.choice("on_vm_failure", VM_FAILURE_ACTIONS),
        }
        if not any(r.has(k) for k in ("ha", "priority", "on_vm_failure")):
            r.problem("", "says nothing: set at least one of ha, priority, on_vm_failure")
        r.done()
        rules.append(rule)
    kw["rules"] = rules
    t.done()
    return kw


def recovery(root: Table, out: Problems) -> dict[str, Any]:
    d = Recovery()
    t = root.sub("recovery") or Table({}, "recovery", out, Path())
    kw: dict[str, Any] = {
        "max_parallel_evacuations": t.integer(
            "max_parallel_evacuations", default=d.max_parallel_evacuations, at_least=1
        ),
        "intent_max_attempts": t.integer(
            "intent_max_attempts", default=d.intent_max_attempts, at_least=1
        ),
        "intent_retry_backoff_s": t.number(
            "intent_retry_backoff_s", default=d.intent_retry_backoff_s, at_least=0
        ),
        "process_restart_failure": t.choice(
            "process_restart_failure",
            _PROCESS_RESTART_FAILURE,
            default=d.process_restart_failure,
        ),
        "allow_self_fence_proof": t.flag(
            "allow_self_fence_proof", default=d.allow_self_fence_proof
        ),
        "reserve_k": t.integer("reserve_k", default=d.reserve_k, at_least=0),
        "reserve_disable": t.flag("reserve_disable", default=d.reserve_disable),
        "maintenance_may_use_reserve": t.flag(
            "maintenance_may_use_reserve", default=d.maintenance_may_use_reserve
        ),
    }
    t.done()
    return kw


def alerts(root: Table, read: Findings) -> dict[str, Any]:
    d = Alerts()
    t = root.sub("alerts")
    if t is None:
        return {"webhooks": d.webhooks, "smtp": None, "timeout_s": d.timeout_s}
    webhooks = t.strs("webhooks", d.webhooks)
    for i, url in enumerate(webhooks or ()):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            # The URL itself is not echoed: webhook URLs often carry a token.
            t.out.add(f"{t.at('webhooks')}[{i}]", "not an http(s) URL")
    kw: dict[str, Any] = {
        "webhooks": webhooks,
        "timeout_s": t.number("timeout_s", default=d.timeout_s, above=0),
        "smtp": None,
    }
    s = t.sub("smtp")
    if s is not None:
        smtp: dict[str, Any] = {
            "host": s.text("host", required=True),
            "port": s.port("port", required=True),
            "sender": s.text("sender", required=True),
            "recipients": s.strs("recipients"),
            "username": s.text("username"),
            "password_file": s.file("password_file"),
            "starttls": s.flag("starttls", default=False),
        }
        if smtp["recipients"] == ():
            s.problem("recipients", "missing or empty: name at least one recipient")
            smtp["recipients"] = None
        if s.has("username") != s.has("password_file"):
            s.problem("", "set both username and password_file, or neither")
        if smtp["password_file"] is not None:
            read.secrets.append((s.at("password_file"), smtp["password_file"], "SMTP password"))
        s.done()
        kw["smtp"] = smtp
    t.done()
    return kw


def raft(root: Table, read: Findings) -> dict[str, Any] | None:
    t = root.sub("raft", required=True)
    if t is None:
        return None
    kw: dict[str, Any] = {
        "port": t.port("port", required=True),
        "password_file": t.file("password_file", required=True),
        "data_dir": t.file("data_dir", required=True),
    }
    if kw["password_file"] is not None:
        read.secrets.append((t.at("password_file"), kw["password_file"], "raft password"))
    t.done()
    return kw


def nova(root: Table, out: Problems) -> dict[str, Any]:
    d = Nova()
    t = root.sub("nova") or Table({}, "nova", out, Path())
    kw: dict[str, Any] = {
        "cloud": t.text("cloud", default=d.cloud),
        "microversion": t.text("microversion", default=d.microversion),
        "timeout_s": t.number("timeout_s", default=d.timeout_s, above=0),
    }
    if kw["microversion"] is not None and not _MICROVERSION.match(kw["microversion"]):
        t.problem("microversion", f"not a microversion like '2.95': {kw['microversion']!r}")
        kw["microversion"] = None
    t.done()
    return kw


def processes(root: Table, out: Problems) -> dict[str, Any]:
    d = Processes()
    t = root.sub("processes") or Table({}, "processes", out, Path())
    kw: dict[str, Any] = {
        "names": t.strs("names", d.names),
        "check_interval_s": t.number("check_interval_s", default=d.check_interval_s, above=0),
        "restart_attempts": t.integer("restart_attempts", default=d.restart_attempts, at_least=0),
        "restart_backoff_s": t.number("restart_backoff_s", default=d.restart_backoff_s, at_least=0),
        "restart_command": t.text("restart_command", default=d.restart_command),
    }
    cmd = kw["restart_command"]
    if cmd is not None and "{name}" not in cmd:
        t.problem(
            "restart_command",
            "must contain '{name}' (replaced by the process name), or every process "
            "would be restarted with the same command",
        )
    t.done()
    return kw


def metrics(root: Table, declared: list[str] | None) -> dict[str, Any]:
    t = root.sub("metrics") or Table({}, "metrics", root.out, Path())
    listen = t.text("listen", default=Metrics().listen) or None
    if listen is not None:
        where, _, port = listen.rpartition(":")
        where = where.strip("[]")
        if not (port.isdigit() and 0 < int(port) < 65536) or not where:
            t.problem("listen", f"not NETWORK:PORT or IP:PORT: {listen!r}")
        elif where not in (declared or ()):
            ip_value(t, "listen", where)  # neither a declared network nor an IP: reported
    t.done()
    return {"listen": listen}
