"""The self-fence sections of the segment TOML and their checks.

`[hypervisor] uri` (default qemu:///system, "none" for no hypervisor; `[hosts.hypervisor]`
for one host) is what the agent watches VMs through and destroys them through when it is
isolated; `[watchdog]` (for
every host) or `[hosts.watchdog]` (for one) is the device that resets a host whose agent
stops feeding it. The majority may take "the self-fence deadline has passed" as a fence
only for a host that declares both (`model.self_fence_provable`); an explicit
`recovery.allow_self_fence_proof = true` is refused when a host lacks either, and a
watchdog whose timeout leaves it no time to fire before the deadline is refused.
"""

from __future__ import annotations

import re
from typing import Any

from meshha.config.model import (
    DEFAULT_HYPERVISOR_URI,
    NO_HYPERVISOR,
    WATCHDOG_MARGIN_S,
    Timings,
    Watchdog,
)
from meshha.config.read import Problems, Table

_URI = re.compile(r"^[a-z][a-z0-9+.-]*://")


def hypervisor(root: Table, out: Problems) -> str | None:
    """The segment's hypervisor URI; None for "none" (and when wrong: recorded)."""
    t = root.sub("hypervisor") or Table({}, "hypervisor", out, root.base)
    uri = _uri(t, DEFAULT_HYPERVISOR_URI)
    t.done()
    return uri


def host_hypervisor(host: Table) -> tuple[bool, str | None]:
    """A `[hosts.hypervisor]` table: (present, its URI or None for "none")."""
    t = host.sub("hypervisor")
    if t is None:
        return False, None
    uri = _uri(t, None)
    if not t.has("uri"):
        t.problem("uri", "missing (required)")
    t.done()
    return True, uri


def effective_uri(h: dict[str, Any], segment_uri: str | None) -> str | None:
    present, uri = h.get("hypervisor", (False, None))
    return uri if present else segment_uri


def _uri(t: Table, default: str | None) -> str | None:
    uri = t.text("uri", default=default)
    if uri is None or uri == NO_HYPERVISOR:
        return None
    if not _URI.match(uri):
        t.problem("uri", f"not a libvirt URI like 'qemu:///system' (or \"{NO_HYPERVISOR}\")")
        return None
    return uri


def watchdog(parent: Table, key: str = "watchdog") -> dict[str, Any] | None:
    """A `[watchdog]` / `[hosts.watchdog]` table as Watchdog's keyword arguments."""
    t = parent.sub(key)
    if t is None:
        return None
    d = Watchdog()
    kw: dict[str, Any] = {
        "device": t.file("device") or d.device,
        "timeout_s": t.integer("timeout_s", required=True, at_least=1),
    }
    t.done()
    return kw


def check_self_fence(
    root: Table,
    host_tables: list[Table],
    hosts: list[dict[str, Any]],
    segment_watchdog: dict[str, Any] | None,
    uri: str | None,
    timings: Timings | None,
    out: Problems,
) -> None:
    """Refuse an explicit deadline proof where it would not hold, and watchdog timeouts
    that cannot fire before the self-fence deadline. `hosts[i]["watchdog"]` is the host's
    own table; without one, the segment's applies."""
    recovery = root.raw.get("recovery")
    asked = isinstance(recovery, dict) and recovery.get("allow_self_fence_proof") is True
    lacking: dict[str, list[str]] = {}
    for t, h in zip(host_tables, hosts, strict=True):
        wd = h.get("watchdog") or segment_watchdog
        label = repr(h["name"]) if h["name"] else t.path
        if wd is None:
            lacking.setdefault("watchdog ([watchdog] or [hosts.watchdog])", []).append(label)
        if effective_uri(h, uri) is None:
            lacking.setdefault(f'hypervisor (uri = "{NO_HYPERVISOR}")', []).append(label)
        if h.get("watchdog") is not None:
            _check_timeout(f"{t.path}.watchdog.timeout_s", h["watchdog"], timings, out)
    if segment_watchdog is not None:
        _check_timeout("watchdog.timeout_s", segment_watchdog, timings, out)
    if asked and lacking:
        lacks = "; ".join(f"no {what} on {', '.join(labels)}" for what, labels in lacking.items())
        out.add(
            "recovery.allow_self_fence_proof",
            f"is true but the config declares {lacks}: a self-fence deadline would prove "
            "nothing there (nothing destroys the VMs of a host that is cut off, or resets a "
            "host that hangs), so a VM could run twice; declare them, or set "
            "allow_self_fence_proof = false",
        )


def _check_timeout(key: str, wd: dict[str, Any], timings: Timings | None, out: Problems) -> None:
    if wd["timeout_s"] is None or timings is None:
        return
    latest = timings.self_fence_deadline_s - timings.isolation_after_s - WATCHDOG_MARGIN_S
    if wd["timeout_s"] > latest:
        out.add(
            key,
            f"is {wd['timeout_s']} but must be at most self_fence_deadline_s - "
            f"isolation_after_s - {WATCHDOG_MARGIN_S:g} = {latest:g}: an isolated host stops "
            "feeding its watchdog when its last contact with the majority may be "
            "isolation_after_s old, and it must fire before the deadline",
        )
