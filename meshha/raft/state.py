"""The replicated segment state machine.

`SegmentState.apply(entry)` is the only mutator and is deterministic: it reads nothing
but the entry and the state (no clock, no IO), so every replica that applies the same log
holds the same state, and replaying a journal rebuilds it. `apply(state, entry)` is the
functional form used by tests. What it holds are frozen records (`meshha.raft.records`),
replaced, never edited; intents are indexed by their step (`meshha.raft.intent_key`).

Invariants are checked here a second time (the leader checks them when planning): an
evacuation whose source host was never fenced in this failure episode is a bug and
raises InvariantViolation; an intent that merely lost a race (the host went into
maintenance, or came back and was un-fenced, between planning and commit) is recorded as
abandoned, which is safe.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from dataclasses import replace
from typing import Any

from meshha.config.model import Segment
from meshha.errors import InvariantViolation
from meshha.raft.entries import ACTIONS, Action, Entry
from meshha.raft.intent_key import VM_FAILURE_STEPS, IntentKey, ms
from meshha.raft.records import (
    HEALTHY,
    Brake,
    Capacity,
    Fence,
    Intent,
    IntentStatus,
    Inventory,
    Maintenance,
    ProcessFailure,
    Reconcile,
    SelfFence,
    Verdict,
    VmFailure,
)

# What maintenance itself does to a host in maintenance: disable it, list its servers
# (read only), live-migrate them off (decide/maintenance.py).
MAINTENANCE_ACTIONS: frozenset[Action] = frozenset({"maint_hold", "inventory", "drain"})
# Actions that touch a host (or its VMs) and so are refused while it is in maintenance:
# all but re-enabling its compute service once it is back, and maintenance's own.
HOST_ACTIONS: frozenset[Action] = (
    frozenset(ACTIONS) - {"enable_compute", "maint_release"} - MAINTENANCE_ACTIONS
)
# Actions that leave a host's nova-compute enabled.
ENABLING: frozenset[Action] = frozenset({"enable_compute", "reserve_release", "maint_release"})
# Bounds: finished intents kept in memory (the ledger keeps all), VM failure times per VM.
MAX_FINISHED_INTENTS = 5000
MAX_VM_FAILURES = 20

__all__ = [
    "HEALTHY",
    "HOST_ACTIONS",
    "MAINTENANCE_ACTIONS",
    "Intent",
    "SegmentState",
    "Verdict",
    "apply",
]


class SegmentState:
    def __init__(self, segment: Segment) -> None:
        self.segment_name = segment.name
        self.hosts: tuple[str, ...] = segment.host_names
        self.voters: tuple[str, ...] = segment.voters
        self.timings = segment.timings  # reconcile reports, decision invariants
        self.reserve_disable = segment.recovery.reserve_disable  # reserve held off in Nova
        self.index = 0
        self.last_ts = 0.0
        self.lost: dict[tuple[str, str, str], float] = {}  # (observer, target, net) -> since
        # When the picture of each host last changed, in the log's own time: losses or
        # recoveries committed in a burst (after a leader change, or as a host comes
        # back network by network) must settle before they mean "degraded".
        self.changed_at: dict[str, float] = {}
        self.verdicts: dict[str, Verdict] = {h: HEALTHY for h in self.hosts}
        self.verdict_since: dict[str, float] = {h: 0.0 for h in self.hosts}
        # The last few times each host's verdict changed (flap damping, recovery/damping.py)
        self.verdict_changes: dict[str, deque[float]] = {}
        self.episode: dict[str, int] = {h: 0 for h in self.hosts}
        self.maintenance: dict[str, Maintenance] = {}
        self.roles: dict[str, str] = {h.name: h.role for h in segment.hosts}
        self.role_since: dict[str, float] = {h: 0.0 for h in self.hosts}
        # host -> when its nova-compute was last enabled by an intent (log time)
        self.enabled_at: dict[str, float] = {}
        self.maintenance_ended: dict[str, Maintenance] = {}  # host -> its last window
        self.capacity: Capacity | None = None  # the latest N+k measurement
        self.capacity_shortfalls = 0  # episodes of "could not survive k losses"
        self.fenced: dict[str, Fence] = {}
        self.ever_fenced: set[tuple[str, int]] = set()  # (host, episode)
        self.intents: dict[str, Intent] = {}
        # step -> the ids of its attempts, in commit order (intents with a key only)
        self.attempts: dict[IntentKey, list[str]] = {}
        self.finished: deque[str] = deque()
        self.inventory: dict[str, Inventory] = {}  # host -> its latest inventory
        self.vm_failures: dict[str, list[float]] = {}
        self.vm_last_failure: dict[str, VmFailure] = {}
        self.brake_count = 0
        self.process_failures: dict[tuple[str, str], ProcessFailure] = {}  # (host, process)
        self.brake = Brake()
        self.isolated: dict[str, bool] = {}
        self.self_fences: dict[str, SelfFence] = {}  # host -> its latest self-fence
        self.kinds_seen: dict[str, int] = {}
        self.reconciled: dict[str, Reconcile] = {}  # host -> its latest reconcile report
        # (host, fence episode) an operator vouched for (maintenance on after a BMC lie)
        self.vouched: set[tuple[str, int]] = set()

    # -- reading ---------------------------------------------------------------------

    def copy(self) -> SegmentState:
        return copy.deepcopy(self)

    def lost_by(self, target: str, network: str) -> dict[str, float]:
        """observer -> since, for observers that have lost `target` on `network`."""
        return {o: s for (o, t, n), s in self.lost.items() if t == target and n == network}

    def in_maintenance(self, host: str) -> bool:
        return host in self.maintenance

    def intents_for(self, host: str, episode: int | None = None) -> list[Intent]:
        ep = self.episode[host] if episode is None else episode
        return [i for i in self.intents.values() if i.host == host and i.episode == ep]

    def is_fenced(self, host: str) -> bool:
        f = self.fenced.get(host)
        return f is not None and f.episode == self.episode[host]

    def attempts_of(self, step: IntentKey) -> list[Intent]:
        """Every attempt at `step` still held, oldest first."""
        return [self.intents[i] for i in self.attempts.get(step, ())]

    def latest(self, step: IntentKey) -> Intent | None:
        ids = self.attempts.get(step)
        return self.intents[ids[-1]] if ids else None

    # -- the one mutator ---------------------------------------------------------------

    def apply(self, entry: Entry, index: int | None = None) -> None:
        self.index = self.index + 1 if index is None else index
        self.last_ts = max(self.last_ts, entry["ts"])
        kind = entry["kind"]
        self.kinds_seen[kind] = self.kinds_seen.get(kind, 0) + 1
        handler = getattr(self, f"_apply_{kind}", None)
        if handler is not None:  # an unknown kind from a newer schema is kept in the ledger only
            handler(entry)

    def _apply_observation(self, e: Entry) -> None:
        key = (e["by"], e["host"], e["network"])
        if e["reachable"]:
            if self.lost.pop(key, None) is not None:
                self.changed_at[e["host"]] = self.last_ts
        elif key not in self.lost:
            self.lost[key] = e["since"]
            self.changed_at[e["host"]] = self.last_ts

    def _apply_verdict(self, e: Entry) -> None:
        host = e["host"]
        new = Verdict(
            e["verdict"],
            tuple(e["networks"]),
            e["reason"],
            tuple((o, n, float(s)) for o, n, s in e["evidence"]),
        )
        old = self.verdicts[host]
        # A failure episode starts when a host in service fails. A fenced host is out of
        # service until it is re-enabled: it was powered off, Nova holds it forced down
        # and disabled, and it runs nothing Nova places elsewhere, so a loss of it in the
        # meantime (its power-off seen as "failed", a boot with a link still cut) is the
        # same episode: it is not fenced again, nor its VMs moved again.
        starts = new.kind in ("failed", "degraded") and old.kind not in ("failed", "degraded")
        if starts and host not in self.fenced:
            self.episode[host] += 1
        if new.kind == "failed":
            # What a dead host said it saw is stale; it reports again when it is back.
            for key in [k for k in self.lost if k[0] == host]:
                del self.lost[key]
        self.verdicts[host] = new
        self.verdict_since[host] = e["ts"]
        self.verdict_changes.setdefault(host, deque(maxlen=16)).append(e["ts"])

    def _apply_maintenance(self, e: Entry) -> None:
        host = e["host"]
        if e["on"]:
            f = self.fenced.get(host)
            if f is not None:
                self.vouched.add((host, f.episode))
            if host in self.maintenance:
                return  # already on: the window (and what it is doing) goes on
            self.maintenance[host] = Maintenance(e["reason"], e["ts"], e.get("operator", ""))
            for i in list(self.intents.values()):
                if not i.done and i.action in HOST_ACTIONS and host in (i.host, i.target):
                    self._finish(i, "abandoned", "host entered maintenance", e["ts"])
        else:
            ended = self.maintenance.pop(host, None)
            if ended is not None:
                self.maintenance_ended[host] = ended
            # The operator ended the window: the drain stops where it is.
            for i in list(self.intents.values()):
                if not i.done and i.action == "drain" and i.host == host:
                    self._finish(i, "abandoned", "maintenance ended", e["ts"])

    def _apply_intent(self, e: Entry) -> None:
        iid = e["intent"]
        if iid in self.intents:  # a re-proposal by a new leader: idempotent
            return
        host = e["host"]
        key = IntentKey.parse_or_none(iid)
        i = Intent(
            id=iid,
            key=key,
            action=e["action"],
            host=host,
            vm=e.get("vm"),
            target=e.get("target"),
            order=e.get("order", 0),
            reason=e["reason"],
            params=dict(e.get("params") or {}),
            created_ts=e["ts"],
            created_index=self.index,
            episode=self.episode.get(host, 0),
        )
        self.intents[iid] = i
        if key is not None:
            self.attempts.setdefault(key.base, []).append(iid)
        if i.action in HOST_ACTIONS and self.in_maintenance(host):
            self._finish(i, "abandoned", "host in maintenance when the intent committed", e["ts"])
        elif i.target is not None and self.in_maintenance(i.target):
            self._finish(i, "abandoned", "target in maintenance when the intent committed", e["ts"])
        elif i.action == "drain" and not self.in_maintenance(host):
            self._finish(i, "abandoned", "host no longer in maintenance", e["ts"])
        elif (
            i.action == "maint_release"
            and self.roles.get(host) == "reserved"
            and self.reserve_disable
        ):
            # It became reserve since the window ended: the reserve stays disabled.
            self._finish(i, "abandoned", "host is reserved now: it stays disabled", e["ts"])
        elif i.action == "evacuate" and not self.is_fenced(host):
            if (host, i.episode) not in self.ever_fenced:
                raise InvariantViolation(
                    f"evacuate {i.vm} from {host}: {host} was never fenced in episode {i.episode}"
                )
            self._finish(i, "abandoned", "source host is no longer fenced", e["ts"])

    def _apply_result(self, e: Entry) -> None:
        i = self.intents.get(e["intent"])
        if i is None:
            return
        # What happened happened: a late result overrides an abandonment.
        self._finish(i, e["outcome"], e["detail"], e["ts"], e.get("error_kind"), e.get("data"))
        if e["outcome"] != "ok":
            return
        if i.action == "fence":
            self._set_fenced(i.host, "bmc", e["detail"], e["ts"])
        elif i.action == "inventory":
            purpose = i.params.get("purpose", "")
            self.inventory[i.host] = Inventory.from_data(i.episode, purpose, e.get("data") or {})
        elif i.action == "enable_compute":
            self.fenced.pop(i.host, None)
        if i.action in ENABLING:
            self.enabled_at[i.host] = e["ts"]

    def _apply_reconcile(self, e: Entry) -> None:
        if e["by"] != e["host"]:
            return  # only a host's own agent can say what runs on it
        booted = e.get("booted_at")
        self.reconciled[e["host"]] = Reconcile(
            int(e["episode"]),
            e["ts"],
            None if booted is None else float(booted),
            tuple(e["destroyed"]),
            tuple(e["kept"]),
            bool(e["ok"]),
            e["detail"],
            _finite(e.get("alive_until")),
        )

    def _apply_fenced(self, e: Entry) -> None:
        self._set_fenced(e["host"], e["method"], e["reason"], e["ts"])

    def _set_fenced(self, host: str, method: str, detail: str, ts: float) -> None:
        ep = self.episode[host]
        self.fenced[host] = Fence(method, detail, ts, ep)
        self.ever_fenced.add((host, ep))
        # A VM restart planned before the fence must not start a VM on the fenced host
        # once it returns, nor race the evacuation of that VM: the host chain moves it.
        for i in list(self.intents.values()):
            if not i.done and i.host == host and i.action in VM_FAILURE_STEPS:
                self._finish(i, "abandoned", f"{host} was fenced", ts)

    def _apply_vm_failure(self, e: Entry) -> None:
        times = self.vm_failures.setdefault(e["vm"], [])
        times.append(e["ts"])
        del times[:-MAX_VM_FAILURES]
        self.vm_last_failure[e["vm"]] = VmFailure(
            e["host"], e["event"], e["detail"], e.get("ha", True), e.get("on_vm_failure"), e["ts"]
        )

    def _apply_process_failure(self, e: Entry) -> None:
        self.process_failures[(e["host"], e["process"])] = ProcessFailure(
            e["outcome"], e["detail"], e["ts"], e.get("since")
        )

    def _apply_brake(self, e: Entry) -> None:
        if e["on"] and not self.brake.on:
            self.brake_count += 1
            # A fence proposed just before the brake committed is held too. (One already
            # running still reports its result, which then counts: what happened happened.)
            for i in list(self.intents.values()):
                if not i.done and i.action == "fence":
                    self._finish(i, "abandoned", "mass-failure brake engaged", e["ts"])
        self.brake = Brake(e["on"], tuple(e["hosts"]), e["reason"], e["ts"])

    def _apply_reserve(self, e: Entry) -> None:
        if self.roles.get(e["host"]) != e["role"]:
            self.role_since[e["host"]] = e["ts"]
        self.roles[e["host"]] = e["role"]

    def _apply_capacity(self, e: Entry) -> None:
        new = Capacity(
            e["survives"], e["k"], e["reason"], tuple(e.get("lost_hosts") or ()), e["ts"]
        )
        if not new.survives and (self.capacity is None or self.capacity.survives):
            self.capacity_shortfalls += 1
        self.capacity = new

    def _apply_isolation(self, e: Entry) -> None:
        self.isolated[e["host"]] = e["on"]
        if "vms" in e:  # what it destroyed when it isolated itself (see decide/isolation.py)
            vms = [v for v in e["vms"] if isinstance(v, dict) and isinstance(v.get("vm"), str)]
            ha = {v["vm"]: bool(v["ha"]) for v in vms if "ha" in v}
            self.self_fences[e["host"]] = SelfFence(
                e["ts"], self.episode[e["host"]], tuple(v["vm"] for v in vms), ha
            )

    def _finish(
        self,
        i: Intent,
        status: IntentStatus,
        detail: str,
        ts: float,
        error_kind: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        self.intents[i.id] = replace(
            i,
            status=status,
            detail=detail,
            done_ts=ts,
            error_kind=error_kind,
            data=dict(data or {}),
        )
        if not i.done:
            self.finished.append(i.id)
            if len(self.finished) > MAX_FINISHED_INTENTS:
                self._evict()

    def _evict(self) -> None:
        """Forget the oldest finished intents that `decide` can no longer reach: those of
        a host's past failure episodes and of VM failures that are not the VM's latest.
        An intent it can still reach is kept, or it would be proposed again (its id is
        the only memory that it was done). The ledger keeps every one regardless."""
        live_vm = {(vm, ms(t[-1])) for vm, t in self.vm_failures.items() if t}
        live_process = {(h, ms(rec.began)) for (h, _), rec in self.process_failures.items()}

        def reachable(i: Intent) -> bool:
            k = i.key
            if k is not None and (k.step in VM_FAILURE_STEPS or k.topic == "vm"):
                return (k.vm, k.failure_ms) in live_vm
            if k is not None and (k.topic == "process" or (k.step == "disable" and k.process)):
                return (i.host, k.failure_ms) in live_process
            # Host-failure chains exist from episode 1 on; only the current one is reachable.
            return i.host in self.episode and i.episode == self.episode[i.host] > 0

        for _ in range(len(self.finished)):
            if len(self.finished) <= MAX_FINISHED_INTENTS:
                return
            old = self.finished.popleft()
            i = self.intents.get(old)
            if i is None or not i.done:
                continue
            if reachable(i):
                self.finished.append(old)  # keep it; look at the next oldest
            else:
                self._forget(i)

    def _forget(self, i: Intent) -> None:
        del self.intents[i.id]
        if i.key is not None:
            ids = self.attempts[i.key.base]
            ids.remove(i.id)
            if not ids:
                del self.attempts[i.key.base]


def apply(state: SegmentState, entry: Entry, index: int | None = None) -> SegmentState:
    """Functional form: a new state with `entry` applied; `state` is untouched."""
    new = state.copy()
    new.apply(entry, index)
    return new


def _finite(x: object) -> float | None:
    """A float field that may be missing (older entries); None unless a finite number."""
    if isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x):
        return float(x)
    return None
