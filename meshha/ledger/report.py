"""The SLA and health report: what the ledger says about a time range, as numbers.

Pure: `build_report(entries, since, until, nk)` is a function of the committed entries
(in log order, as `Ledger.entries()` yields them), the range and the segment's N+k
status (computed by the caller, see `meshha.agent.capacity`). No clock, no IO; the
renderers (`meshha.ledger.render`) turn the result into text, JSON or HTML.

What counts, read from the entries alone (the same on every host's ledger):

- **Incident**: one failure, by class.
  - ``vm``: a `vm_failure` entry (qemu died, IO error, watchdog, …) for a VM that had no
    open outage. Repaired when a restart_vm / hard_reboot / migrate_vm / evacuate of
    that VM reports ok.
  - ``host``: a committed `failed` verdict for a host. ``network``: a `degraded`
    verdict (some networks lost). Either is repaired when every HA VM the episode's
    evacuation inventory listed is running again; when the inventory found none, at that
    inventory; when no evacuation was started (alert-only network, a host that came
    back), when the verdict is healthy again.
  - ``process``: a `process_failure` whose outcome is not a success (down,
    restart_failed); repaired at the next success for the same host and process. A
    success with nothing open (restarted within one check) is an incident repaired in
    place: it counts as a failure of that host, with no repair time.
- **Outage** (per VM): detected → running again. A VM failure opens one at the failure;
  a host or network failure opens one for every HA server of the host's evacuation
  inventory, from the verdict's time (detection, not the later inventory). Non-HA servers
  are counted, not tracked: meshha does not recover them. An outage still open at
  `until` counts up to `until` and is reported as ongoing.
- **Availability** of a VM = 1 − downtime inside [since, until) / (until − since). Only
  VMs with an outage in the range are listed: any other VM was up as far as the ledger
  knows.
- **MTTR** per class = mean of (repaired − detected) over the incidents that started in
  the range and were repaired (ongoing ones are counted apart).
- Fences (BMC results and self-fence proofs) with the time from the fence intent and
  from detection; maintenance windows; brake windows with the hosts they held; recovery
  attempts that failed (every non-ok result) and intents that never got a result.

Bounded by what it is given: memory grows with the intents and incidents in the entries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

CLASSES = ("vm", "process", "host", "network")
# Actions whose ok result means the VM runs again.
VM_REPAIRS = frozenset({"restart_vm", "hard_reboot", "migrate_vm", "evacuate"})
PROCESS_OK = frozenset({"restarted", "recovered", "running", "ok", "up"})


@dataclass
class Outage:
    vm: str
    host: str
    cls: str  # vm | host | network
    start: float
    end: float | None = None
    cause: str = ""
    repaired_by: str = ""  # the intent whose ok result ended it

    def down_s(self, since: float, until: float) -> float:
        """Downtime inside [since, until)."""
        end = until if self.end is None else min(self.end, until)
        return max(0.0, end - max(self.start, since))


@dataclass
class Incident:
    cls: str
    host: str
    start: float
    what: str  # the VM, the process, or the verdict with its networks
    end: float | None = None
    in_place: bool = False  # a process restarted within one check: no repair time known
    vms: set[str] = field(default_factory=set)  # VM outages it opened (host, network)
    evacuating: bool = False  # an evacuation inventory was taken for it

    @property
    def repair_s(self) -> float | None:
        return None if self.end is None or self.in_place else self.end - self.start


@dataclass(frozen=True)
class Window:
    host: str
    start: float
    end: float | None
    reason: str
    who: str = ""


@dataclass(frozen=True)
class Fence:
    host: str
    ts: float
    method: str
    detail: str
    took_s: float | None  # from the fence intent to its result
    since_detection_s: float | None


@dataclass(frozen=True)
class Attempt:
    ts: float
    intent: str
    action: str
    host: str
    vm: str | None
    outcome: str  # failed | abandoned | pending (no result by `until`)
    detail: str
    error_kind: str | None = None


@dataclass(frozen=True)
class VmLine:
    vm: str
    host: str
    outages: int
    downtime_s: float
    availability: float
    ongoing: bool
    name: str = ""  # Nova's display name, when an inventory gave it


@dataclass(frozen=True)
class ClassLine:
    cls: str
    incidents: int
    repaired: int
    ongoing: int
    in_place: int
    mttr_s: float | None
    max_s: float | None


@dataclass(frozen=True)
class Report:
    since: float
    until: float
    vms: tuple[VmLine, ...]
    outages: tuple[Outage, ...]
    classes: tuple[ClassLine, ...]
    incidents: tuple[Incident, ...]
    host_failures: dict[str, dict[str, int]]  # host -> class -> count (+ "fences")
    fences: tuple[Fence, ...]
    maintenance: tuple[Window, ...]
    brakes: tuple[Window, ...]
    failed: tuple[Attempt, ...]
    non_ha_vms: int
    nk: Mapping[str, Any] | None
    entries: int

    @property
    def span_s(self) -> float:
        return self.until - self.since

    @property
    def downtime_s(self) -> float:
        return sum(v.downtime_s for v in self.vms)


class ReportBuilder:
    """Feed entries in log order (`feed`), then `report(since, until, nk)`. Entries at or
    after `until` should not be fed (the caller reads up to `until`)."""

    def __init__(self, on_outage_end: Callable[[Outage], None] | None = None) -> None:
        self.on_outage_end = on_outage_end  # the metrics observe each repaired outage
        self.intents: dict[str, dict[str, Any]] = {}
        self.results: dict[str, float] = {}  # intent -> ts of its first result
        self.open_vm: dict[str, Outage] = {}
        self.outages: list[Outage] = []
        self.incidents: list[Incident] = []
        self.open_host: dict[str, Incident] = {}  # host or network incident per host
        self.open_proc: dict[tuple[str, str], Incident] = {}
        self.verdict: dict[str, str] = {}
        self.maint_open: dict[str, tuple[float, str, str]] = {}
        self.maintenance: list[Window] = []
        self.brake_open: tuple[float, str, str] | None = None
        self.brakes: list[Window] = []
        self.fences: list[Fence] = []
        self.failed: list[Attempt] = []
        self.non_ha: set[str] = set()
        self.names: dict[str, str] = {}  # VM id -> display name (from inventories)
        self.n = 0

    # -- feeding -------------------------------------------------------------------------

    def feed(self, entry: Mapping[str, Any]) -> None:
        self.n += 1
        handler = getattr(self, f"_on_{entry.get('kind')}", None)
        if handler is not None:
            handler(entry)

    def _on_vm_failure(self, e: Mapping[str, Any]) -> None:
        vm, host = str(e["vm"]), str(e["host"])
        if not vm or e.get("ha") is False or vm in self.open_vm:
            return
        cause = f"{e.get('event', '')}: {e.get('detail', '')}".strip(": ")
        self._open_outage(vm, host, "vm", float(e["ts"]), cause)
        inc = Incident("vm", host, float(e["ts"]), vm)
        inc.vms.add(vm)
        self.incidents.append(inc)

    def _on_verdict(self, e: Mapping[str, Any]) -> None:
        host, kind, ts = str(e["host"]), str(e["verdict"]), float(e["ts"])
        before = self.verdict.get(host, "healthy")
        self.verdict[host] = kind
        failing = kind in ("failed", "degraded")
        inc: Incident | None
        if failing and before not in ("failed", "degraded"):
            nets = ",".join(e.get("networks") or [])
            cls = "host" if kind == "failed" else "network"
            inc = Incident(cls, host, ts, f"{kind}({nets})" if nets else kind)
            self.incidents.append(inc)
            self.open_host[host] = inc
        elif kind == "failed" and before == "degraded" and (inc := self.open_host.get(host)):
            inc.cls, inc.what = "host", inc.what + " → failed"  # the degradation became a failure
        elif (
            not failing
            and (inc := self.open_host.pop(host, None)) is not None
            and inc.end is None
            and not inc.evacuating
        ):
            inc.end = ts  # healthy (or maintenance) again: what was not evacuating is over

    def _on_process_failure(self, e: Mapping[str, Any]) -> None:
        key = (str(e["host"]), str(e["process"]))
        ts, ok = float(e["ts"]), str(e["outcome"]) in PROCESS_OK
        inc = self.open_proc.get(key)
        if not ok and inc is None:
            inc = Incident("process", key[0], ts, key[1])
            self.incidents.append(inc)
            self.open_proc[key] = inc
        elif ok and inc is not None:
            inc.end = ts
            del self.open_proc[key]
        elif ok:
            self.incidents.append(Incident("process", key[0], ts, key[1], ts, in_place=True))

    def _on_maintenance(self, e: Mapping[str, Any]) -> None:
        host, ts = str(e["host"]), float(e["ts"])
        if e["on"]:
            self.maint_open.setdefault(
                host, (ts, str(e.get("reason", "")), str(e.get("operator", "")))
            )
        elif host in self.maint_open:
            start, reason, who = self.maint_open.pop(host)
            self.maintenance.append(Window(host, start, ts, reason, who))

    def _on_brake(self, e: Mapping[str, Any]) -> None:
        ts = float(e["ts"])
        if e["on"]:
            if self.brake_open is None:
                held = ",".join(e.get("hosts") or [])
                self.brake_open = (ts, held, str(e.get("reason", "")))
        elif self.brake_open is not None:
            start, held, reason = self.brake_open
            self.brake_open = None
            self.brakes.append(Window(held, start, ts, reason, str(e.get("reason", ""))))

    def _on_fenced(self, e: Mapping[str, Any]) -> None:
        host, ts = str(e["host"]), float(e["ts"])
        self.fences.append(
            Fence(host, ts, str(e["method"]), str(e["reason"]), None, self._since_detect(host, ts))
        )

    def _on_intent(self, e: Mapping[str, Any]) -> None:
        self.intents.setdefault(str(e["intent"]), dict(e))

    def _on_result(self, e: Mapping[str, Any]) -> None:
        iid, ts, outcome = str(e["intent"]), float(e["ts"]), str(e["outcome"])
        first = iid not in self.results
        self.results.setdefault(iid, ts)
        i = self.intents.get(iid)
        if i is None:
            return
        action, host, vm = str(i["action"]), str(i["host"]), i.get("vm")
        if outcome != "ok":
            self.failed.append(
                Attempt(ts, iid, action, host, vm, outcome, str(e["detail"]), e.get("error_kind"))
            )
            return
        if not first:
            return
        if action == "fence":
            data = e.get("data") or {}
            self.fences.append(
                Fence(
                    host,
                    ts,
                    str(data.get("method", "bmc")),
                    str(e["detail"]),
                    ts - float(i["ts"]),
                    self._since_detect(host, ts),
                )
            )
        elif action == "inventory":
            self._on_inventory(i, e, ts)
        elif action in VM_REPAIRS and vm:
            self._close_outage(str(vm), ts, iid)

    def _on_inventory(self, i: Mapping[str, Any], e: Mapping[str, Any], ts: float) -> None:
        if (i.get("params") or {}).get("purpose") != "evacuate":
            return
        inc = self.open_host.get(str(i["host"]))
        if inc is None or inc.evacuating:
            return
        inc.evacuating = True
        servers = (e.get("data") or {}).get("servers") or []
        for s in servers:
            if s.get("name"):
                self.names[str(s["id"])] = str(s["name"])
            if not s.get("ha", True):
                self.non_ha.add(str(s["id"]))
                continue
            vm = str(s["id"])
            if vm not in self.open_vm:
                self._open_outage(vm, inc.host, inc.cls, inc.start, f"{inc.host} {inc.what}")
                inc.vms.add(vm)
        if not inc.vms:
            inc.end = ts

    # -- helpers -------------------------------------------------------------------------

    def _open_outage(self, vm: str, host: str, cls: str, ts: float, cause: str) -> None:
        o = Outage(vm, host, cls, ts, cause=cause)
        self.open_vm[vm] = o
        self.outages.append(o)

    def _close_outage(self, vm: str, ts: float, by: str) -> None:
        o = self.open_vm.pop(vm, None)
        if o is None:
            return
        o.end, o.repaired_by = ts, by
        if self.on_outage_end is not None:
            self.on_outage_end(o)
        for inc in self.incidents:
            if inc.end is None and vm in inc.vms and all(x not in self.open_vm for x in inc.vms):
                inc.end = ts

    def compact(self, max_intents: int) -> None:
        """Forget what is over (repaired outages and incidents, intents with a result,
        the lists a report prints), keeping only what later entries can still change,
        and at most `max_intents` intents without a result: a streaming consumer (the
        metrics) stays bounded. A report built after this covers only what was kept."""
        self.outages = [o for o in self.outages if o.end is None]
        self.incidents = [i for i in self.incidents if i.end is None]
        self.intents = {k: v for k, v in self.intents.items() if k not in self.results}
        for k in list(self.intents)[: max(0, len(self.intents) - max_intents)]:
            del self.intents[k]
        self.results.clear()
        self.maintenance.clear()
        self.brakes.clear()
        self.fences.clear()
        self.failed.clear()
        self.non_ha.clear()

    def _since_detect(self, host: str, ts: float) -> float | None:
        inc = self.open_host.get(host)
        return None if inc is None else ts - inc.start

    # -- the result ----------------------------------------------------------------------

    def report(self, since: float, until: float, nk: Mapping[str, Any] | None = None) -> Report:
        assert until > since, (since, until)

        def inside(start: float, end: float | None) -> bool:
            return start < until and (end is None or end >= since)

        outages = [o for o in self.outages if inside(o.start, o.end)]
        vms = _vm_lines(outages, since, until, self.names)
        incidents = [i for i in self.incidents if since <= i.start < until]
        pending = [
            Attempt(
                float(i["ts"]),
                iid,
                str(i["action"]),
                str(i["host"]),
                i.get("vm"),
                "pending",
                "no result in the ledger (abandoned, held or still running)",
            )
            for iid, i in self.intents.items()
            if iid not in self.results and since <= float(i["ts"]) < until
        ]
        maint = self.maintenance + [
            Window(h, s, None, r, w) for h, (s, r, w) in self.maint_open.items()
        ]
        brakes = list(self.brakes)
        if self.brake_open is not None:
            s, held, reason = self.brake_open
            brakes.append(Window(held, s, None, reason))
        return Report(
            since=since,
            until=until,
            vms=tuple(vms),
            outages=tuple(sorted(outages, key=lambda o: (o.start, o.vm))),
            classes=tuple(_class_line(c, incidents) for c in CLASSES),
            incidents=tuple(incidents),
            host_failures=_per_host(incidents, self.fences, since, until),
            fences=tuple(f for f in self.fences if since <= f.ts < until),
            maintenance=tuple(
                sorted((w for w in maint if inside(w.start, w.end)), key=lambda w: w.start)
            ),
            brakes=tuple(w for w in brakes if inside(w.start, w.end)),
            failed=tuple(
                sorted(
                    [a for a in self.failed if since <= a.ts < until] + pending,
                    key=lambda a: a.ts,
                )
            ),
            non_ha_vms=len(self.non_ha),
            nk=nk,
            entries=self.n,
        )


def build_report(
    entries: Iterable[Mapping[str, Any]],
    since: float,
    until: float,
    nk: Mapping[str, Any] | None = None,
) -> Report:
    """The report over [since, until) from every entry before `until`, in log order
    (earlier entries say what was already broken or in maintenance at `since`)."""
    b = ReportBuilder()
    for e in entries:
        if float(e.get("ts", 0.0)) >= until:
            break
        b.feed(e)
    return b.report(since, until, nk)


def _vm_lines(
    outages: list[Outage], since: float, until: float, names: Mapping[str, str]
) -> list[VmLine]:
    span = until - since
    by_vm: dict[str, list[Outage]] = {}
    for o in outages:
        by_vm.setdefault(o.vm, []).append(o)
    lines = []
    for vm, os_ in sorted(by_vm.items()):
        down = min(span, sum(o.down_s(since, until) for o in os_))
        lines.append(
            VmLine(
                vm,
                os_[-1].host,
                len(os_),
                down,
                1.0 - down / span,
                any(o.end is None or o.end > until for o in os_),
                names.get(vm, ""),
            )
        )
    return lines


def _class_line(cls: str, incidents: list[Incident]) -> ClassLine:
    mine = [i for i in incidents if i.cls == cls]
    times = [t for i in mine if (t := i.repair_s) is not None]
    return ClassLine(
        cls=cls,
        incidents=len(mine),
        repaired=sum(1 for i in mine if i.end is not None),
        ongoing=sum(1 for i in mine if i.end is None),
        in_place=sum(1 for i in mine if i.in_place),
        mttr_s=sum(times) / len(times) if times else None,
        max_s=max(times) if times else None,
    )


def _per_host(
    incidents: list[Incident], fences: list[Fence], since: float, until: float
) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for i in incidents:
        row = out.setdefault(i.host, dict.fromkeys((*CLASSES, "fences"), 0))
        row[i.cls] += 1
    for f in fences:
        if since <= f.ts < until:
            row = out.setdefault(f.host, dict.fromkeys((*CLASSES, "fences"), 0))
            row["fences"] += 1
    return dict(sorted(out.items()))
