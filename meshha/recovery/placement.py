"""Evacuation planning and capacity accounting: where evacuated VMs go, whether the
segment could survive its next failures, and which host replaces used reserve.

Pure: every function here is a deterministic function of its arguments, and the same
multiset of inputs gives the same answer whatever order it arrives in (the leader and a
replica replaying the log must agree). Nothing reads Nova; the caller turns facts into
`VmDemand` and `Target` values, and turns the answers into intents.

- `plan` — evacuation order and targets: priority first, then biggest first, each VM
  onto the target that fits it most tightly (best-fit decreasing).
- `n_plus_k` — could the segment lose its k largest hosts right now and still place
  every VM of theirs on the reserve?
- `replacement` — after an evacuation used reserved hosts, which compute hosts to
  promote to reserved so the segment keeps the number of free reserved hosts it wants.

Invariants checked on every plan, and left on: no target is given more than it has free;
every input VM appears exactly once, in `placements` or in `unplaced`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace

from meshha.config.model import PRIORITIES, Priority
from meshha.errors import InvariantViolation
from meshha.recovery.ports import HostFacts

# high first
PRIORITY_RANK: dict[str, int] = {p: i for i, p in enumerate(PRIORITIES)}
_LIST_LIMIT = 5  # hosts named in one reason, at most


@dataclass(frozen=True)
class VmDemand:
    """One VM to place, sized by its flavor."""

    vm: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    priority: Priority


@dataclass(frozen=True)
class Target:
    """A host that may take VMs, with what it has free. Free amounts may be negative
    (the caller subtracted more than inventory saw); such a host simply fits nothing."""

    host: str
    vcpus_free: int
    ram_mb_free: int
    disk_gb_free: int


@dataclass(frozen=True)
class Placement:
    vm: str
    target: str
    priority: Priority


@dataclass(frozen=True)
class Unplaced:
    vm: str
    priority: Priority
    reason: str  # names the resource that is short, e.g. "needs 8192 MB RAM, …"


@dataclass(frozen=True)
class Plan:
    placements: tuple[Placement, ...]  # in execution order
    unplaced: tuple[Unplaced, ...]  # in the same order
    remaining: tuple[Target, ...]  # every target after the plan, sorted by host


def target_of(facts: HostFacts) -> Target:
    return Target(facts.host, facts.vcpus_free, facts.ram_mb_free, facts.disk_gb_free)


def execution_order(vms: Sequence[VmDemand]) -> list[VmDemand]:
    """Priority high > medium > low; within a priority the largest first (RAM, then
    vCPUs, then disk); ties by VM id. Independent of the input order."""
    return sorted(
        vms, key=lambda d: (PRIORITY_RANK[d.priority], -d.ram_mb, -d.vcpus, -d.disk_gb, d.vm)
    )


def fits(d: VmDemand, t: Target) -> bool:
    return d.vcpus <= t.vcpus_free and d.ram_mb <= t.ram_mb_free and d.disk_gb <= t.disk_gb_free


def plan(vms: Sequence[VmDemand], targets: Sequence[Target]) -> Plan:
    """Place `vms` onto `targets`, best-fit decreasing.

    VMs are taken in `execution_order`. Each goes to the target that fits it and is left
    with the least slack afterwards — least RAM left, then fewest vCPUs, then least disk,
    then the host name — so big holes stay open for big VMs. A VM no target fits goes to
    `unplaced`, with a reason naming the short resource; it takes nothing, so smaller
    VMs after it may still be placed. `placements` is the order to evacuate in.
    """
    _check_inputs(vms, targets)
    free = {t.host: t for t in targets}
    placements: list[Placement] = []
    unplaced: list[Unplaced] = []
    for d in execution_order(vms):
        fitting = [t for t in free.values() if fits(d, t)]
        if not fitting:
            unplaced.append(Unplaced(d.vm, d.priority, why_unplaced(d, list(free.values()))))
            continue
        best = min(
            fitting,
            key=lambda t: (
                t.ram_mb_free - d.ram_mb,
                t.vcpus_free - d.vcpus,
                t.disk_gb_free - d.disk_gb,
                t.host,
            ),
        )
        free[best.host] = replace(
            best,
            vcpus_free=best.vcpus_free - d.vcpus,
            ram_mb_free=best.ram_mb_free - d.ram_mb,
            disk_gb_free=best.disk_gb_free - d.disk_gb,
        )
        placements.append(Placement(d.vm, best.host, d.priority))
    result = Plan(
        tuple(placements), tuple(unplaced), tuple(sorted(free.values(), key=lambda t: t.host))
    )
    _check_plan(vms, targets, result)
    return result


def used_targets(p: Plan) -> frozenset[str]:
    """The targets that received at least one VM in `p`."""
    return frozenset(x.target for x in p.placements)


def why_unplaced(d: VmDemand, targets: Sequence[Target]) -> str:
    """Why `d` fits none of `targets`: each resource no target has enough of, with the
    largest free amount and where; or, if every resource is free somewhere but never all
    on one host, what each host lacks."""
    assert not any(fits(d, t) for t in targets), (d, targets)
    if not targets:
        return "no reserved host is available to take it"
    short = []
    for attr, need, _, need_text, have_text in _resources(d):
        top = min(targets, key=lambda t: (-getattr(t, attr), t.host))
        have = getattr(top, attr)
        if need > have:
            short.append(
                f"needs {need_text.format(need)}, largest free on reserved hosts is "
                f"{have_text.format(have)} ({top.host})"
            )
    if short:
        return "; ".join(short)
    lacks = []
    for t in sorted(targets, key=lambda t: t.host)[:_LIST_LIMIT]:
        missing = [r[2] for r in _resources(d) if r[1] > getattr(t, r[0])]
        lacks.append(f"{t.host} lacks {' and '.join(missing)}")
    if len(targets) > _LIST_LIMIT:
        lacks.append(f"and {len(targets) - _LIST_LIMIT} more")
    return (
        f"needs {d.vcpus} vCPUs, {d.ram_mb} MB RAM and {d.disk_gb} GB disk on one host; "
        f"no reserved host has all of it free: {', '.join(lacks)}"
    )


def _resources(d: VmDemand) -> tuple[tuple[str, int, str, str, str], ...]:
    """(Target attribute, amount needed, label, how a need reads, how a free amount
    reads), as in "needs 8192 MB RAM, largest free … is 4096 MB"."""
    return (
        ("vcpus_free", d.vcpus, "vCPUs", "{} vCPUs", "{} vCPUs"),
        ("ram_mb_free", d.ram_mb, "RAM", "{} MB RAM", "{} MB"),
        ("disk_gb_free", d.disk_gb, "disk", "{} GB disk", "{} GB"),
    )


def _check_inputs(vms: Sequence[VmDemand], targets: Sequence[Target]) -> None:
    ids = [d.vm for d in vms]
    assert len(ids) == len(set(ids)), f"duplicate VMs to place: {sorted(ids)}"
    hosts = [t.host for t in targets]
    assert len(hosts) == len(set(hosts)), f"duplicate targets: {sorted(hosts)}"
    for d in vms:
        assert d.priority in PRIORITY_RANK, d
        assert d.vcpus >= 0 and d.ram_mb >= 0 and d.disk_gb >= 0, d


def _check_plan(vms: Sequence[VmDemand], targets: Sequence[Target], p: Plan) -> None:
    placed = [x.vm for x in p.placements]
    left = [u.vm for u in p.unplaced]
    if sorted(placed + left) != sorted(d.vm for d in vms):
        raise InvariantViolation(f"plan lost or duplicated VMs: placed {placed}, unplaced {left}")
    by_vm = {d.vm: d for d in vms}
    for t in targets:
        got = [by_vm[x.vm] for x in p.placements if x.target == t.host]
        if got and (
            sum(d.vcpus for d in got) > t.vcpus_free
            or sum(d.ram_mb for d in got) > t.ram_mb_free
            or sum(d.disk_gb for d in got) > t.disk_gb_free
        ):
            raise InvariantViolation(f"plan over-commits {t.host}: {[d.vm for d in got]}")
    if any(x.target not in {t.host for t in targets} for x in p.placements):
        raise InvariantViolation("plan placed a VM on a host that is not a target")


# -- N+k --------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostLoad:
    """A host whose loss is considered, with the VMs that would need a new home."""

    host: str
    vms: tuple[VmDemand, ...]

    @property
    def size(self) -> tuple[int, int]:
        return (sum(d.ram_mb for d in self.vms), sum(d.vcpus for d in self.vms))


@dataclass(frozen=True)
class NkReport:
    k: int
    survives: bool
    lost_hosts: tuple[str, ...]  # the k largest, largest first
    unplaced: tuple[Unplaced, ...]
    reason: str


def n_plus_k(loads: Sequence[HostLoad], reserve: Sequence[Target], k: int) -> NkReport:
    """Could the segment survive losing its `k` largest hosts right now?

    Largest means most RAM in use by its VMs, then most vCPUs, then host name. Their
    VMs are planned onto `reserve` (less any reserve host that is itself among the
    lost); the segment survives iff nothing is left unplaced. The caller chooses what
    counts: usually `loads` are the compute hosts with their HA VMs only, `reserve` the
    healthy reserved hosts not in maintenance. With k larger than the number of hosts,
    all of them are lost. k = 0 always survives.
    """
    assert k >= 0, k
    hosts = [h.host for h in loads]
    assert len(hosts) == len(set(hosts)), f"duplicate hosts: {sorted(hosts)}"
    ranked = sorted(loads, key=lambda h: (-h.size[0], -h.size[1], h.host))
    lost = ranked[:k]
    lost_names = tuple(h.host for h in lost)
    if not lost:
        return NkReport(k, True, (), (), f"k={k}: no host loss to survive")
    demand = [d for h in lost for d in h.vms]
    p = plan(demand, [t for t in reserve if t.host not in lost_names])
    ram = sum(d.ram_mb for d in demand)
    vcpus = sum(d.vcpus for d in demand)
    what = (
        f"losing the {len(lost)} largest hosts ({', '.join(lost_names)}) displaces "
        f"{len(demand)} VMs ({vcpus} vCPUs, {ram} MB RAM)"
    )
    if len(lost) < k:
        what += f"; only {len(lost)} hosts to lose, not {k}"
    if not p.unplaced:
        return NkReport(k, True, lost_names, (), f"{what}; all fit on the reserve")
    first = p.unplaced[0]
    return NkReport(
        k,
        False,
        lost_names,
        p.unplaced,
        f"{what}; {len(p.unplaced)} would not fit, first {first.vm} ({first.priority}): {first.reason}",
    )


# -- replacing used reserve --------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A compute host that could become reserved. The caller computes `eligible`
    (healthy, not in maintenance, not fenced, role compute, and whatever else it wants,
    e.g. no running VMs) and says why not."""

    host: str
    capacity_free: Target
    running_vms: int
    eligible: bool
    why_not: str = ""


def replacement(
    reserve_after: Sequence[Target],
    wanted: int,
    candidates: Sequence[Candidate],
    used: Collection[str] = frozenset(),
) -> tuple[str, ...]:
    """Which candidates to promote to reserved, best first; never more than needed.

    A reserved host is *still free* iff it is in `reserve_after` and not in `used`,
    where `used` is every reserved host that received a VM (`used_targets(plan)` of the
    evacuations; the caller may instead leave used hosts out of `reserve_after`).
    Needed = `wanted` minus the still-free reserved hosts, at least 0. Candidates are
    the eligible ones that are not reserved hosts already, taken emptiest first: fewest
    running VMs, then the most free RAM, vCPUs and disk, then host name. Fewer than
    needed may be returned when the pool runs dry; the caller alerts on the shortfall.
    """
    assert wanted >= 0, wanted
    still_free = {t.host for t in reserve_after if t.host not in used}
    need = max(0, wanted - len(still_free))
    pool = [c for c in candidates if c.eligible and c.host not in still_free and c.host not in used]
    pool.sort(
        key=lambda c: (
            c.running_vms,
            -c.capacity_free.ram_mb_free,
            -c.capacity_free.vcpus_free,
            -c.capacity_free.disk_gb_free,
            c.host,
        )
    )
    chosen = tuple(dict.fromkeys(c.host for c in pool))[:need]
    assert len(chosen) <= need
    return chosen
