"""Read one segment TOML file into a `Segment`, and check it against itself.

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
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import stat
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from meshha.config.model import (
    MIN_KEY_B,
    ON_LOSS_VALUES,
    POLICY_LEVELS,
    PRIORITIES,
    ROLES,
    TIMING_PROFILES,
    VM_FAILURE_ACTIONS,
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
    Timings,
)
from meshha.errors import ConfigError

__all__ = ["check_file", "load_segment"]

HOST_POLICY_REFUSED = (
    "HA policy per compute host is refused: VMs would inherit HA non-deterministically "
    "depending on where nova-scheduler placed them (user story); "
    "set it per aggregate or availability_zone instead"
)
# Level names that would mean "per compute host"; refused with the reason above.
_HOST_LEVELS = frozenset(
    {"host", "hosts", "compute_host", "compute-host", "compute", "hypervisor", "node"}
)
_MIN_VOTERS = 3
_RAFT_NETWORK = "admin"  # Raft binds to each host's address on this network
_DEFAULT_BMC_PORT = 623
_PROCESS_RESTART_FAILURE = ("disable", "fence_evacuate")
_MICROVERSION = re.compile(r"^\d+\.\d+$")
_INT_TIMINGS = ("indirect_probes", "misses_before_suspect")
# Single-field bounds of the timing overrides: (kind, bound) as for _Table.num.
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
}
_TOML_TYPES: dict[type, str] = {
    bool: "a boolean",
    int: "an integer",
    float: "a float",
    str: "a string",
    list: "an array",
    dict: "a table",
}


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


# -- reading ---------------------------------------------------------------------------


class _Problems:
    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: list[str] = []

    def add(self, key: str, what: str) -> None:
        self.lines.append(f"{self.source}: {key}: {what}" if key else f"{self.source}: {what}")


_ABSENT = object()


def _type_name(value: object) -> str:
    for t, name in _TOML_TYPES.items():
        if isinstance(value, t):
            return name
    return f"a {type(value).__name__}"


class _Table:
    """One TOML table being read: hands out keys by type, records what is wrong, and
    (`done`) refuses the keys nobody asked for. A getter returns None for a key that is
    absent without a default, or wrong (then a problem is recorded)."""

    def __init__(self, raw: dict[str, Any], path: str, out: _Problems, base: Path) -> None:
        self.raw, self.path, self.out, self.base = raw, path, out, base
        self.asked: list[str] = []

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def problem(self, key: str, what: str) -> None:
        self.out.add(self.at(key) if key else self.path, what)

    def has(self, key: str) -> bool:
        return key in self.raw

    def _take(self, key: str, required: bool) -> Any:
        self.asked.append(key)
        if key not in self.raw:
            if required:
                self.problem(key, "missing (required)")
            return _ABSENT
        return self.raw[key]

    def _typed(self, key: str, types: tuple[type, ...], want: str, required: bool) -> Any:
        value = self._take(key, required)
        if value is _ABSENT:
            return _ABSENT
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            self.problem(key, f"expected {want}, got {_type_name(value)}")
            return None
        return value

    def text(self, key: str, *, required: bool = False, default: str | None = None) -> str | None:
        value = self._typed(key, (str,), "a string", required)
        if value is _ABSENT:
            return default
        if value is not None and not value.strip():
            self.problem(key, "must not be empty")
            return None
        return value

    def flag(self, key: str, *, required: bool = False, default: bool | None = None) -> bool | None:
        value = self._typed(key, (bool,), "true or false", required)
        return default if value is _ABSENT else value

    def integer(
        self,
        key: str,
        *,
        required: bool = False,
        default: int | None = None,
        at_least: int | None = None,
    ) -> int | None:
        value = self._typed(key, (int,), "an integer", required)
        if value is _ABSENT:
            return default
        if value is not None and at_least is not None and value < at_least:
            self.problem(key, f"must be at least {at_least}, got {value}")
            return None
        return value

    def number(
        self,
        key: str,
        *,
        required: bool = False,
        default: float | None = None,
        above: float | None = None,
        at_least: float | None = None,
        at_most: float | None = None,
    ) -> float | None:
        value = self._typed(key, (int, float), "a number", required)
        if value is _ABSENT:
            return default
        if value is None:
            return None
        if not math.isfinite(value):
            self.problem(key, f"must be a finite number, got {value}")
            return None
        wrong = (
            (above is not None and value <= above)
            or (at_least is not None and value < at_least)
            or (at_most is not None and value > at_most)
        )
        if wrong:
            bounds = [
                f"greater than {above:g}" if above is not None else "",
                f"at least {at_least:g}" if at_least is not None else "",
                f"at most {at_most:g}" if at_most is not None else "",
            ]
            self.problem(key, f"must be {' and '.join(b for b in bounds if b)}, got {value:g}")
            return None
        return float(value)

    def port(self, key: str, *, required: bool = False, default: int | None = None) -> int | None:
        value = self._typed(key, (int,), "an integer", required)
        if value is _ABSENT:
            return default
        if value is not None and not 1 <= value <= 65535:
            self.problem(key, f"port out of range 1-65535: {value}")
            return None
        return value

    def choice(
        self,
        key: str,
        values: tuple[str, ...],
        *,
        required: bool = False,
        default: str | None = None,
    ) -> str | None:
        value = self._typed(key, (str,), "a string", required)
        if value is _ABSENT:
            return default
        if value is not None and value not in values:
            self.problem(key, f"unknown value {value!r} (valid: {', '.join(values)})")
            return None
        return value

    def strs(self, key: str, default: tuple[str, ...] = ()) -> tuple[str, ...] | None:
        value = self._typed(key, (list,), "an array of strings", False)
        if value is _ABSENT:
            return default
        if value is None:
            return None
        ok = True
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.out.add(f"{self.at(key)}[{i}]", f"expected a string, got {_type_name(item)}")
                ok = False
            elif not item.strip():
                self.out.add(f"{self.at(key)}[{i}]", "must not be empty")
                ok = False
        return tuple(value) if ok else None

    def file(self, key: str, *, required: bool = False) -> Path | None:
        """A path; relative ones are resolved against the config file's directory."""
        value = self.text(key, required=required)
        if value is None:
            return None
        return self.base / Path(value).expanduser()

    def ip(self, key: str, *, required: bool = False) -> str | None:
        value = self._take(key, required)
        return None if value is _ABSENT else _ip(self, key, value)

    def mapping(self, key: str, *, required: bool = False) -> dict[str, Any] | None:
        value = self._typed(key, (dict,), "a table", required)
        return None if value is _ABSENT else value

    def sub(self, key: str, *, required: bool = False) -> _Table | None:
        value = self.mapping(key, required=required)
        return None if value is None else _Table(value, self.at(key), self.out, self.base)

    def subs(self, key: str, *, required: bool = False) -> list[_Table]:
        """An array of tables (``[[key]]``)."""
        value = self._typed(key, (list,), "an array of tables", required)
        if value is _ABSENT or value is None:
            return []
        tables = []
        for i, item in enumerate(value):
            path = f"{self.at(key)}[{i}]"
            if isinstance(item, dict):
                tables.append(_Table(item, path, self.out, self.base))
            else:
                self.out.add(path, f"expected a table, got {_type_name(item)}")
        if required and not value:
            self.problem(key, "must not be empty")
        return tables

    def done(self) -> None:
        """Refuse every key that was not asked for. The value is never echoed."""
        for key in self.raw:
            if key in self.asked:
                continue
            what = "unknown key"
            close = difflib.get_close_matches(key, self.asked, n=1, cutoff=0.6)
            if close:
                what += f" (did you mean {close[0]!r}?)"
            if re.search(r"pass|secret|token|key", key) and not key.endswith("_file"):
                what += "; secrets never go in the config: put it in a file (mode 0600) "
                what += "and name the file with a *_file key"
            self.problem(key, what)


def _ip(table: _Table, key: str, value: object) -> str | None:
    """The normalised IP address in `value`, or None (problem recorded)."""
    if not isinstance(value, str):
        table.problem(key, f"expected an IP address string, got {_type_name(value)}")
        return None
    try:
        addr = ipaddress.ip_address(value.strip())
    except ValueError:
        table.problem(key, f"not an IP address: {value!r}")
        return None
    if addr.is_unspecified or addr.is_multicast:
        table.problem(key, f"not a unicast host address: {value!r}")
        return None
    return str(addr)


# -- sections --------------------------------------------------------------------------


@dataclasses.dataclass
class _Read:
    """What the reading found that the checks across sections need."""

    secrets: list[tuple[str, Path, str]] = dataclasses.field(default_factory=list)


def _segment_table(root: _Table, read: _Read) -> dict[str, Any]:
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


def _networks(root: _Table) -> list[dict[str, Any]]:
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


def _host(t: _Table, declared: list[str] | None, read: _Read) -> dict[str, Any]:
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
        addrs[net] = _ip(t, key, value)
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
    t.done()
    return kw


def _timings(root: _Table) -> Timings | None:
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
    _check_timings(t, timings, overrides)
    return timings


def _check_timings(t: _Table, tm: Timings, overrides: dict[str, float]) -> None:
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
    if tm.election_timeout_s >= tm.isolation_after_s:
        t.problem(
            "election_timeout_s",
            f"must be less than isolation_after_s ({val('election_timeout_s')}, "
            f"{val('isolation_after_s')}): a leader election must finish before a host "
            "counts itself isolated, or a routine leader change could make healthy hosts "
            "self-fence",
        )


def _brake(root: _Table) -> dict[str, Any] | None:
    t = root.sub("brake", required=True)
    if t is None:
        return None
    kw: dict[str, Any] = {
        "max_failed_fraction": t.number("max_failed_fraction", required=True, above=0, at_most=1),
        "window_s": t.number("window_s", required=True, above=0),
    }
    t.done()
    return kw


def _policy(root: _Table, out: _Problems) -> dict[str, Any]:
    d = Policy()
    t = root.sub("policy") or _Table({}, "policy", out, Path())
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


def _recovery(root: _Table, out: _Problems) -> dict[str, Any]:
    d = Recovery()
    t = root.sub("recovery") or _Table({}, "recovery", out, Path())
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
    }
    t.done()
    return kw


def _alerts(root: _Table, read: _Read) -> dict[str, Any]:
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


def _raft(root: _Table, read: _Read) -> dict[str, Any] | None:
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


def _nova(root: _Table, out: _Problems) -> dict[str, Any]:
    d = Nova()
    t = root.sub("nova") or _Table({}, "nova", out, Path())
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


def _processes(root: _Table, out: _Problems) -> dict[str, Any]:
    d = Processes()
    t = root.sub("processes") or _Table({}, "processes", out, Path())
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


def _metrics(root: _Table, declared: list[str] | None) -> dict[str, Any]:
    t = root.sub("metrics") or _Table({}, "metrics", root.out, Path())
    listen = t.text("listen", default=Metrics().listen) or None
    if listen is not None:
        where, _, port = listen.rpartition(":")
        where = where.strip("[]")
        if not (port.isdigit() and 0 < int(port) < 65536) or not where:
            t.problem("listen", f"not NETWORK:PORT or IP:PORT: {listen!r}")
        elif where not in (declared or ()):
            _ip(t, "listen", where)  # neither a declared network nor an IP: reported
    t.done()
    return {"listen": listen}


# -- checks across sections ------------------------------------------------------------


def _check_hosts(
    tables: list[_Table], hosts: list[dict[str, Any]], recovery: dict[str, Any], out: _Problems
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


def _check_secrets(read: _Read, out: _Problems) -> None:
    seen: dict[tuple[Path, str], list[str]] = {}
    for key, path, what in read.secrets:
        if (path, what) not in seen:
            seen[path, what] = list(_secret_file_problems(path, what))
        for problem in seen[path, what]:
            out.add(key, problem)


# -- the whole file --------------------------------------------------------------------


def _parse(path: Path, out: _Problems) -> dict[str, Any] | None:
    try:
        return tomllib.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        out.add("", f"cannot read: {e.strerror}")
    except UnicodeDecodeError:
        out.add("", "not UTF-8 text")
    except tomllib.TOMLDecodeError as e:
        out.add("", f"not valid TOML: {e}")
    return None


def _load(path: Path) -> tuple[Segment | None, list[str]]:
    out = _Problems(str(path))
    raw = _parse(path, out)
    if raw is None:
        return None, out.lines
    root = _Table(raw, "", out, path.absolute().parent)
    read = _Read()
    segment = _segment_table(root, read)
    nets = _networks(root)
    declared = [n["name"] for n in nets] if nets and all(n["name"] for n in nets) else None
    if declared is not None and _RAFT_NETWORK not in declared:
        out.add(
            "networks",
            f"no network named {_RAFT_NETWORK!r}: Raft runs between the hosts' "
            f"{_RAFT_NETWORK} addresses, so the segment must declare it",
        )
    host_tables = root.subs("hosts", required=True)
    hosts = [_host(t, declared, read) for t in host_tables]
    timings = _timings(root)
    brake = _brake(root)
    policy = _policy(root, out)
    recovery = _recovery(root, out)
    alerts = _alerts(root, read)
    raft = _raft(root, read)
    nova = _nova(root, out)
    processes = _processes(root, out)
    metrics = _metrics(root, declared)
    root.done()
    _check_hosts(host_tables, hosts, recovery, out)
    _check_secrets(read, out)
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
        hosts=tuple(_build_host(h, declared) for h in hosts),
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


def _build_host(h: dict[str, Any], declared: list[str]) -> Host:
    bmc, cap = h["bmc"], h["capacity"]
    return Host(
        name=h["name"],
        addresses=tuple((net, h["addresses"][net]) for net in declared),
        bmc=None if bmc is None else Bmc(**bmc),
        role=h["role"],
        voter=h["voter"],
        capacity=None if cap is None else Capacity(**cap),
    )
