"""Intent keys: what an intent is about, as a record, and its one text form.

An intent id is the key of one recovery step (and of each attempt at it): re-proposing a
committed id is a no-op, so a new leader that plans the same step again proposes nothing
twice. The deciders build keys and the state machine reads them back (to tell which
finished intents `decide` can still reach); both go through `IntentKey.format()` and
`IntentKey.parse()` here, never through string surgery of their own.

The text form is the one written to every ledger since schema 1, field by field in this
order, each present only if set, `:`-separated:

    step [topic] [count] [host] [process] [e<episode>] [vm] [purpose] [failure_ms] [a<attempt>]

    fence:host2:e1:a1                       fence host2, failure episode 1, attempt 1
    disable:host2:e1:a1                     force-down + disable after the fence
    disable:host2:nova-compute:1700000:a1   disable after a process could not restart
    inventory:host2:e1:evacuate:a1          list servers and capacity (purpose)
    evacuate:host2:e1:vm-a:a2               evacuate vm-a, second attempt
    live_migrate:host2:e1:vm-a:a1
    enable:host2:e1:a1                      host back: re-enable its nova-compute
    restart_vm:vm-a:1700000:a1              (also hard_reboot, migrate_vm)
    alert:brake:3:a1                        the third brake
    alert:process-brake:4:1700000:a1        4 hosts' processes failing, latest at 1700000 ms
    alert:process:host2:libvirtd:1700000:a1
    alert:vm:vm-a:1700000:a1
    alert:fence-wait:host2:e1:a1            (fence-failed, unplaced, recovered, degraded, flapping)
    alert:clock:host2:1700000:a1            host2's clock off segment time, alerted at 1700000 ms
    hold:host5:reserve:0:a1                 disable reserved host5 in Nova (role since 0 ms)
    release:host5:reserve:0:a1              enable it: chosen as an evacuation target
    hold:host3:maintenance:1700000:a1       disable host3 for maintenance (since 1700000 ms)
    inventory:host3:drain:1700000:a1        list its servers to live-migrate them off
    drain:host3:vm-a:1700000:a1             live-migrate vm-a off host3 (maintenance)
    release:host3:maintenance:1700000:a1    maintenance over: enable it again
    alert:capacity:2:a1                     the segment's second N+k shortfall
    alert:drain:host3:1700000:a1            what could not be moved off host3

A key without an attempt names the step; `attempt(n)` names its n-th try. Names must not
contain `:` (host names, VM ids and process names do not).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Literal, get_args

Step = Literal[
    "fence",
    "disable",
    "inventory",
    "evacuate",
    "live_migrate",
    "enable",
    "power_check",
    "restart_vm",
    "hard_reboot",
    "migrate_vm",
    "alert",
    "hold",
    "release",
    "drain",
]
STEPS: tuple[Step, ...] = get_args(Step)
AlertTopic = Literal[
    "brake",
    "process-brake",
    "process",
    "vm",
    "fence-wait",
    "fence-failed",
    "fence-quorum",
    "unplaced",
    "recovered",
    "degraded",
    "clock",
    "capacity",
    "drain",
    "bmc-lied",
    "unreconciled",
    "enable-failed",
    "flapping",
]
ALERT_TOPICS: tuple[AlertTopic, ...] = get_args(AlertTopic)
VM_FAILURE_STEPS = ("restart_vm", "hard_reboot", "migrate_vm")

# The fields each kind of key carries, in text order (after step and topic).
_HOST_EPISODE = ("host", "episode")
_SHAPES: dict[str, tuple[tuple[str, ...], ...]] = {
    "fence": (_HOST_EPISODE,),
    "enable": (_HOST_EPISODE,),
    "power_check": (_HOST_EPISODE,),
    "disable": (_HOST_EPISODE, ("host", "process", "failure_ms")),
    "inventory": (("host", "episode", "purpose"), ("host", "purpose", "failure_ms")),
    "hold": (("host", "purpose", "failure_ms"),),
    "release": (("host", "purpose", "failure_ms"),),
    "drain": (("host", "vm", "failure_ms"),),
    "alert:capacity": (("count",),),
    "alert:drain": (("host", "failure_ms"),),
    "evacuate": (("host", "episode", "vm"),),
    "live_migrate": (("host", "episode", "vm"),),
    **{s: (("vm", "failure_ms"),) for s in VM_FAILURE_STEPS},
    "alert:brake": (("count",),),
    "alert:process-brake": (("count", "failure_ms"),),
    "alert:process": (("host", "process", "failure_ms"),),
    "alert:vm": (("vm", "failure_ms"),),
    "alert:clock": (("host", "failure_ms"),),  # a wrong clock, since (ms; agent/node.py)
    **{
        f"alert:{t}": (_HOST_EPISODE,)
        for t in (
            "fence-wait",
            "fence-failed",
            "fence-quorum",
            "unplaced",
            "recovered",
            "degraded",
            "bmc-lied",
            "unreconciled",
            "enable-failed",
            "flapping",
        )
    },
}
_ATTEMPT = re.compile(r"a([0-9]+)")
_EPISODE = re.compile(r"e([0-9]+)")
_INT = re.compile(r"-?[0-9]+")


def ms(ts: float) -> int:
    """A log timestamp as the whole milliseconds a key carries."""
    return int(ts * 1000)


@dataclass(frozen=True, slots=True)
class IntentKey:
    step: Step
    topic: AlertTopic | None = None  # alerts only: what the alert is about
    count: int | None = None  # alert:brake: which brake; alert:process-brake: how many hosts
    host: str = ""
    process: str = ""
    episode: int | None = None  # the host's failure episode (host chains)
    vm: str = ""
    purpose: str = ""  # inventory only: evacuate | live_migrate
    failure_ms: int | None = None  # the VM or process failure answered (its ts, ms)
    attempt: int | None = None  # None: the step itself; n: its n-th attempt

    def __post_init__(self) -> None:
        assert self.step in STEPS, self.step
        assert (self.topic is not None) == (self.step == "alert"), self
        for name in ("host", "process", "vm", "purpose"):
            assert ":" not in getattr(self, name), f"{name} of {self!r} contains ':'"

    # -- building ------------------------------------------------------------------------

    def at(self, attempt: int) -> IntentKey:
        """The n-th attempt at this step."""
        return replace(self, attempt=attempt)

    @property
    def base(self) -> IntentKey:
        """The step this attempt belongs to."""
        return replace(self, attempt=None) if self.attempt is not None else self

    # -- text ----------------------------------------------------------------------------

    def format(self) -> str:
        parts: list[str] = [self.step]
        if self.topic is not None:
            parts.append(self.topic)
        if self.count is not None:
            parts.append(str(self.count))
        parts += [x for x in (self.host, self.process) if x]
        if self.episode is not None:
            parts.append(f"e{self.episode}")
        parts += [x for x in (self.vm, self.purpose) if x]
        if self.failure_ms is not None:
            parts.append(str(self.failure_ms))
        if self.attempt is not None:
            parts.append(f"a{self.attempt}")
        return ":".join(parts)

    def __str__(self) -> str:
        return self.format()

    @staticmethod
    def parse(text: str) -> IntentKey:
        """The key `format()` wrote; ValueError for anything else."""
        parts = text.split(":")
        step, rest = parts[0], parts[1:]
        topic = None
        if step == "alert":
            if not rest or rest[0] not in ALERT_TOPICS:
                raise ValueError(f"intent key {text!r}: unknown alert topic")
            topic, rest = rest[0], rest[1:]
        shape_name = step if topic is None else f"alert:{topic}"
        shapes = _SHAPES.get(shape_name)
        if shapes is None:
            raise ValueError(f"intent key {text!r}: unknown step {step!r}")
        # An attempt `a<n>` ends every id; a step's key has none (and may end in a VM
        # or process whose name looks like one).
        readings: list[tuple[int | None, list[str]]] = [(None, rest)]
        if rest and (m := _ATTEMPT.fullmatch(rest[-1])):
            readings.insert(0, (int(m.group(1)), rest[:-1]))
        for attempt, fields_text in readings:
            for shape in shapes:
                fields = _fields(shape, fields_text)
                if fields is not None:
                    return IntentKey(step, topic, attempt=attempt, **fields)  # type: ignore[arg-type]
        raise ValueError(f"intent key {text!r}: not a {shape_name} key")

    @staticmethod
    def parse_or_none(text: str) -> IntentKey | None:
        """For ids from outside `decide` (hand-made ones in an old ledger, tests)."""
        try:
            return IntentKey.parse(text)
        except ValueError:
            return None


def _fields(shape: tuple[str, ...], parts: list[str]) -> dict[str, str | int] | None:
    if len(shape) != len(parts):
        return None
    out: dict[str, str | int] = {}
    for name, part in zip(shape, parts, strict=True):
        if name == "episode":
            m = _EPISODE.fullmatch(part)
            if m is None:
                return None
            out[name] = int(m.group(1))
        elif name in ("count", "failure_ms"):
            if not _INT.fullmatch(part):
                return None
            out[name] = int(part)
        elif not part:
            return None
        else:
            out[name] = part
    return out


# -- the keys the deciders use -------------------------------------------------------------


def host_step(step: Step, host: str, episode: int) -> IntentKey:
    """fence, disable, enable: one per host failure episode."""
    return IntentKey(step, host=host, episode=episode)


def inventory(host: str, episode: int, purpose: str) -> IntentKey:
    return IntentKey("inventory", host=host, episode=episode, purpose=purpose)


def vm_move(step: Step, host: str, episode: int, vm: str) -> IntentKey:
    """evacuate, live_migrate: one per VM of a host failure episode."""
    return IntentKey(step, host=host, episode=episode, vm=vm)


def host_window(step: Step, host: str, purpose: str, since_ts: float) -> IntentKey:
    """hold, release (purpose reserve | maintenance), inventory (purpose drain): one per
    reserve term or maintenance window of a host, named by when it began."""
    return IntentKey(step, host=host, purpose=purpose, failure_ms=ms(since_ts))


def drain(host: str, vm: str, since_ts: float) -> IntentKey:
    """Live-migrate one VM off a host in maintenance: one per VM and window."""
    return IntentKey("drain", host=host, vm=vm, failure_ms=ms(since_ts))


def vm_failure(step: Step, vm: str, failure_ts: float) -> IntentKey:
    """restart_vm, hard_reboot, migrate_vm: one per VM failure."""
    return IntentKey(step, vm=vm, failure_ms=ms(failure_ts))


def process_disable(host: str, process: str, failure_ts: float) -> IntentKey:
    return IntentKey("disable", host=host, process=process, failure_ms=ms(failure_ts))


def alert(
    topic: AlertTopic,
    *,
    host: str = "",
    episode: int | None = None,
    vm: str = "",
    process: str = "",
    count: int | None = None,
    failure_ms: int | None = None,
) -> IntentKey:
    return IntentKey(
        "alert",
        topic,
        count=count,
        host=host,
        process=process,
        episode=episode,
        vm=vm,
        failure_ms=failure_ms,
    )
