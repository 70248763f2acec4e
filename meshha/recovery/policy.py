"""HA policy resolution: what one VM gets, and why.

Pure: `resolve(policy, ctx)` looks only at its arguments. It answers three questions for
one VM — is it protected (`ha`), how early is it evacuated (`priority`), and what a crash
of the VM itself leads to (`on_vm_failure`) — and records, per answer, which source
decided it (`decided_by`), so an operator can see why a VM was or was not evacuated.

The rule, per field independently:

1. Levels, coarse to fine: region, cell, availability_zone, aggregate, project, flavor,
   vm. The finest level at which some source says something about the field wins. A VM
   may take `ha` from its flavor and `priority` from its project.
2. Sources at a level, strongest first (a stronger source hides a weaker one at the
   same level; the coarser levels are not looked at once a level has spoken):
   - config rules (`policy.rules`) whose `match` equals the VM's name at that level:
     region, cell, availability zone (`ctx.availability_zone`, else the server's),
     each aggregate the VM's host is in, project id, flavor name, server id.
     The operator wins over the user at the same level.
   - flavor level: the flavor's extra_specs `meshha:ha`, `meshha:priority`,
     `meshha:on_vm_failure`.
   - vm level: the server's metadata `meshha:ha`, `meshha:priority`,
     `meshha:on_vm_failure`; then Masakari's `HA_Enabled` for `ha` (so an explicit
     `meshha:ha` beats a legacy `HA_Enabled`).
3. Disagreement among equally strong sources at one level (a VM whose host is in two
   aggregates with different rules, or duplicate rules) is settled safely and
   deterministically: HA on beats off, a higher priority beats a lower one, and for
   `on_vm_failure` the action that does more to bring the VM back wins (in the order
   of `VM_FAILURE_ACTIONS`: restart, hard_reboot, restart_elsewhere, alert, ignore).
   Remaining ties go to the source name in sort order. decided_by says what was beaten.
4. Nothing speaks: the policy's defaults.

Values set by users (metadata, extra_specs) are parsed leniently (case and surrounding
space do not matter) and a value that still means nothing, such as
`meshha:priority=urgent`, is ignored for that field and listed in decided_by as
ignored. Config rules were checked when the config was loaded; a bad value there is a
programmer error and asserts.

Never per compute host: the VM's current host is not an input (`Server.host` is not
read), since where nova-scheduler happened to boot a VM must not decide its protection.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshha.config.model import (
    POLICY_LEVELS,
    PRIORITIES,
    VM_FAILURE_ACTIONS,
    Policy,
    PolicyRule,
    Priority,
    VmFailureAction,
)
from meshha.recovery.ports import Server

FIELDS: tuple[str, ...] = ("ha", "priority", "on_vm_failure")

# Metadata / extra_specs keys per field, strongest first.
_USER_KEYS: dict[str, tuple[str, ...]] = {
    "ha": ("meshha:ha", "HA_Enabled"),
    "priority": ("meshha:priority",),
    "on_vm_failure": ("meshha:on_vm_failure",),
}
_KEY_FIELD: dict[str, str] = {key: f for f, keys in _USER_KEYS.items() for key in keys}

# Source strength at one level: lower is stronger.
_RULE, _META, _LEGACY = 0, 1, 2


@dataclass(frozen=True)
class VmContext:
    """Everything policy may look at for one VM (and nothing about its compute host)."""

    server: Server
    aggregates: tuple[str, ...] = ()
    availability_zone: str | None = None  # falls back to server.availability_zone
    region: str | None = None
    cell: str | None = None


@dataclass(frozen=True)
class VmPolicy:
    """The resolved policy of one VM.

    `decided_by` holds one `(field, source)` entry per field, in the order of `FIELDS`,
    where source is `"level:match …"` or `"default"`; after them come
    `(field, "ignored: …")` entries for user values that meant nothing.
    """

    ha: bool
    priority: Priority
    on_vm_failure: VmFailureAction
    decided_by: tuple[tuple[str, str], ...]

    def why(self, field: str) -> str:
        """The source that decided `field`."""
        for f, source in self.decided_by:
            if f == field:
                return source
        raise KeyError(field)

    @property
    def ignored(self) -> tuple[tuple[str, str], ...]:
        return self.decided_by[len(FIELDS) :]


@dataclass(frozen=True)
class _Say:
    """One source saying one value for one field."""

    field: str
    value: bool | str
    strength: int
    source: str


def resolve(policy: Policy, ctx: VmContext) -> VmPolicy:
    """Resolve the HA policy of one VM; see the module docstring for the rule."""
    says, ignored = _collect(policy, ctx)
    defaults: dict[str, bool | str] = {
        "ha": policy.default_ha,
        "priority": policy.default_priority,
        "on_vm_failure": policy.default_on_vm_failure,
    }
    chosen: dict[str, bool | str] = {}
    reasons: list[tuple[str, str]] = []
    for field in FIELDS:
        value, reason = defaults[field], "default"
        for level in reversed(POLICY_LEVELS):
            here = [s for s in says[level] if s.field == field]
            if here:
                value, reason = _settle(field, here)
                break
        chosen[field] = value
        reasons.append((field, reason))
    ha, priority, action = chosen["ha"], chosen["priority"], chosen["on_vm_failure"]
    assert isinstance(ha, bool), ha
    assert priority in PRIORITIES, priority
    assert action in VM_FAILURE_ACTIONS, action
    return VmPolicy(
        ha=ha,
        priority=priority,  # type: ignore[arg-type]
        on_vm_failure=action,  # type: ignore[arg-type]
        decided_by=tuple(reasons) + tuple(ignored),
    )


def names_at(ctx: VmContext) -> dict[str, tuple[str, ...]]:
    """The VM's name at each policy level (what a rule's `match` is compared with)."""
    s = ctx.server
    az = ctx.availability_zone if ctx.availability_zone is not None else s.availability_zone

    def one(name: str | None) -> tuple[str, ...]:
        return () if name is None else (name,)

    return {
        "region": one(ctx.region),
        "cell": one(ctx.cell),
        "availability_zone": one(az),
        "aggregate": tuple(sorted(set(ctx.aggregates))),
        "project": one(s.project_id),
        "flavor": one(s.flavor.name),
        "vm": one(s.id),
    }


# -- collecting what every source says -------------------------------------------------


def _collect(policy: Policy, ctx: VmContext) -> tuple[dict[str, list[_Say]], list[tuple[str, str]]]:
    says: dict[str, list[_Say]] = {level: [] for level in POLICY_LEVELS}
    names = names_at(ctx)
    for rule in policy.rules:
        _check_rule(rule)
        if rule.match in names[rule.level]:
            says[rule.level] += _rule_says(rule)
    ignored: list[tuple[str, str]] = []
    flavor = ctx.server.flavor
    says["flavor"] += _user_says(flavor.extra_specs, f"flavor:{flavor.name} extra_specs", ignored)
    says["vm"] += _user_says(ctx.server.metadata, f"vm:{ctx.server.id} metadata", ignored)
    return says, ignored


def _check_rule(rule: PolicyRule) -> None:
    assert rule.level in POLICY_LEVELS, f"policy rule at unknown level {rule.level!r}"
    assert rule.ha is None or isinstance(rule.ha, bool), rule
    assert rule.priority is None or rule.priority in PRIORITIES, rule
    assert rule.on_vm_failure is None or rule.on_vm_failure in VM_FAILURE_ACTIONS, rule


def _rule_says(rule: PolicyRule) -> list[_Say]:
    source = f"{rule.level}:{rule.match}"
    values = {"ha": rule.ha, "priority": rule.priority, "on_vm_failure": rule.on_vm_failure}
    return [_Say(f, v, _RULE, source) for f, v in values.items() if v is not None]


def _user_says(
    pairs: tuple[tuple[str, str], ...], where: str, ignored: list[tuple[str, str]]
) -> list[_Say]:
    out: list[_Say] = []
    for key, raw in sorted(pairs):
        field = _KEY_FIELD.get(key)
        if field is None:
            continue  # not ours
        value = _parse(field, raw)
        if value is None:
            ignored.append((field, f"ignored: {where} {key}={raw!r} ({_EXPECTED[field]})"))
            continue
        strength = _LEGACY if key == "HA_Enabled" else _META
        out.append(_Say(field, value, strength, f"{where} {key}={raw}"))
    return out


_EXPECTED = {
    "ha": "expected true or false",
    "priority": "expected one of " + ", ".join(PRIORITIES),
    "on_vm_failure": "expected one of " + ", ".join(VM_FAILURE_ACTIONS),
}


def _parse(field: str, raw: str) -> bool | str | None:
    """A user-set value, or None if it means nothing for `field`."""
    if not isinstance(raw, str):
        return None
    text = raw.strip().lower()
    if field == "ha":
        return {"true": True, "false": False}.get(text)
    allowed = PRIORITIES if field == "priority" else VM_FAILURE_ACTIONS
    return text if text in allowed else None


# -- settling one level -----------------------------------------------------------------


def _safety_rank(field: str, value: bool | str) -> int:
    """Lower is safer: the value chosen when equally strong sources disagree."""
    if field == "ha":
        return 0 if value else 1
    if field == "priority":
        return PRIORITIES.index(str(value))
    return VM_FAILURE_ACTIONS.index(str(value))


_WHY_SAFER = {
    "ha": "HA on beats off",
    "priority": "higher priority wins",
    "on_vm_failure": "the action that does more to recover wins",
}


def _settle(field: str, here: list[_Say]) -> tuple[bool | str, str]:
    """The value and reason at one level that has spoken about `field`."""
    strongest = min(s.strength for s in here)
    peers = sorted(
        (s for s in here if s.strength == strongest),
        key=lambda s: (_safety_rank(field, s.value), s.source),
    )
    win = peers[0]
    reason = win.source
    beaten = [s for s in peers if s.value != win.value]
    if beaten:
        who = ", ".join(f"{s.source} {field}={s.value}" for s in beaten)
        reason += f" (conflict: beats {who}; {_WHY_SAFER[field]})"
    hidden = [s for s in here if s.strength > strongest and s.value != win.value]
    if hidden:
        who = ", ".join(sorted(s.source for s in hidden))
        reason += f" (overrides {who})"
    return win.value, reason
