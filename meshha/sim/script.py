"""The one scenario language: one verb table and one parser, for the simulator's scenarios
(meshha/sim/scenarios, run by `scenario.py` against a whole simulated segment) and the
decide data tests (tests/unit/scenarios, run against the pure decision core).

A script is lines of words (shell quoting; `#` starts a comment). Its first comment block
says what it proves. Every other line is a step: a verb, one word or two when the first
is `expect`, then its arguments:

    # A compute host loses power. Proves: ...
    segment hosts=5 reserved=host5
    wait-leader
    power-off host2
    expect verdict host2 failed within 5s

`VERBS` below is the whole language, with each verb's arguments and meaning. A runner
supports a subset (the decide tests have no network to partition, the simulator no
observations to commit by hand) and says which by the handlers it passes to `parse`;
`parse` rejects an unknown verb, a verb the runner does not support and a step with too
few arguments, naming the file and line, before anything runs. Expectations may end in
`within DURATION` (`Step.within`): how long a runner that waits (the simulator) waits.

A line starting with `----` ends the steps. Below it is the expected trace, kept in the
file like etcd-raft's testdata (`Script.expected`); the runner's test compares it and a
flag rewrites it (`with_expected`).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

from meshha.config.model import Policy, Recovery
from meshha.config.synthetic import DEFAULT_NETWORKS

H = TypeVar("H")  # a runner's handler type

GOLDEN_MARK = "----"

# verb -> (arguments, meaning). [..] is optional, a|b a choice, HOSTS a comma list of
# hosts (`leader` and `old-leader` may stand for the leader now and before the last
# fault), DURATION 500ms / 3s / 2m / 1h.
VERBS: dict[str, tuple[str, str]] = {
    # -- the segment and time (both runners)
    "segment": ("[KEY=VALUE ...]", "the segment; see SEGMENT_KEYS (first step)"),
    "tick": ("DURATION", "let time pass (the decide tests: the leader decides every 0.1 s)"),
    "maintenance": ("on|off HOST", "an operator's maintenance command, committed"),
    # -- physical faults (simulator)
    "no-heal": ("", "do not heal and converge after the last step"),
    "wait-leader": ("[DURATION]", "wait until there is a leader"),
    "power-off": ("HOSTS", "machines lose power"),
    "power-on": ("HOSTS", "machines are powered on again"),
    "hang": ("HOSTS", "machines hang (powered, silent)"),
    "nic-down": ("HOSTS NET[,NET]", "NICs go down"),
    "nic-up": ("HOSTS NET[,NET]", "NICs come back"),
    "bmc-dead": ("HOSTS", "BMCs stop answering"),
    "bmc-alive": ("HOSTS", "BMCs answer again"),
    "bmc-lies": ("HOSTS", "BMCs confirm a power-off that does not happen"),
    "restart-agents": ("[HOSTS]", "the agents restart, knowing only the log (default: all)"),
    "bmc-hang": ("HOSTS", "BMCs accept the session and never answer"),
    "flap": ("HOST NET every DURATION for DURATION", "a NIC goes down and up repeatedly"),
    "clock-step": ("HOSTS +|-DURATION", "wall clocks step (the run then models every clock)"),
    "disk-full": ("HOSTS", "the disk under the agent's data dir fills: journal and ledger"),
    "disk-ok": ("HOSTS", "space there again"),
    "stall": ("HOSTS DURATION", "the agent process stops (its kernel still answers)"),
    "kill-agent": ("HOSTS DURATION", "the agent is killed; its init starts it DURATION later"),
    "partition": ("HOSTS | HOSTS [| HOSTS ...]", "split every network into these groups"),
    "heal": ("", "remove every partition"),
    "loss": ("PERCENT [jitter DURATION] [delay DURATION] [dup PERCENT]", "link quality"),
    "crash-vm": ("VM", "a VM crashes"),
    "process-dead": ("HOST PROCESS [restart-fails]", "a process dies (and cannot restart)"),
    "nova": ("up|down", "the Nova API answers or not"),
    "boot": ("VM [FLAVOR]", "a user boots a server; Nova's scheduler picks the host"),
    # -- committed facts (decide tests)
    "servers": ("HOST VM[:PRIORITY][:noha][:big] ...", "what an inventory of HOST lists"),
    "answer": ("ACTION ok|failed|none", "the executor's answer (none: no result)"),
    "lose": ("HOST [on NET,NET] [by HOST,HOST]", "observations: lost (default every net, voter)"),
    "regain": ("HOST [on NET,NET] [by HOST,HOST]", "observations: reachable again"),
    "vm-failure": ("HOST VM [KEY=VALUE ...]", "a committed VM failure"),
    "process-failure": ("HOST PROCESS", "a committed process restart failure"),
    # -- expectations (both; `within DURATION` at the end for the simulator)
    "expect verdict": ("HOST KIND [NET,NET]", "the committed verdict (networks exactly)"),
    "expect fenced": ("HOST [by METHOD]", "the host counts as fenced"),
    "expect unfenced": ("HOST", "the host does not count as fenced"),
    "expect brake": ("on|off", "the mass-failure brake"),
    "expect role": ("HOST ROLE", "a host's committed role"),
    "expect evacuations": ("HOST VM>TARGET ...", "the evacuations proposed, in order"),
    "expect actions": ("HOST ACTION ...", "every intent for HOST, in order (alerts too)"),
    "expect count": ("PATTERN N", "intents whose id matches the glob"),
    "expect evacuated": ("HOST", "every VM of HOST runs ACTIVE elsewhere, once"),
    "expect live-migrated": ("HOST", "HOST's VMs were live-migrated away"),
    "expect alert": ("TEXT", "an alert whose subject or body holds TEXT"),
    "expect leader-changed": ("", "a leader other than the one before the last fault"),
    "expect vm-running": ("VM", "the VM runs, ACTIVE"),
    "expect vm-on": ("VM HOST", "the VM runs on HOST and only there"),
    "expect self-fenced": ("HOST", "the host destroyed its own VMs"),
    "expect service-disabled": ("HOST", "its nova-compute service is disabled"),
    "expect service-enabled": ("HOST", "its nova-compute service is enabled"),
    "expect vms-on": ("HOST N", "exactly N servers are on HOST in Nova"),
    "expect reconciled": ("HOST", "its agent committed a clean reconcile report"),
    "expect no-action": ("[HOSTS]", "for the whole `within`: no recovery action on them"),
    "expect no-fence": ("[HOSTS]", "... no fence"),
    "expect no-evacuation": ("[HOSTS]", "... no evacuation"),
    "expect no-alert": ("TEXT", "... no alert holding TEXT"),
    "expect no-verdict": ("[KIND,KIND]", "... no such verdict committed (failed,degraded)"),
    "expect no-commit-from": ("HOSTS", "... nothing committed from them"),
}

# `segment` settings -> what they set (SimSpec field names; synthetic_segment's keywords
# except the last four, which only the simulator has).
SEGMENT_KEYS = {
    "hosts": "hosts",
    "voters": "voters",
    "reserved": "reserved",
    "networks": "networks",  # name:on_loss,... in probe-port order
    "profile": "profile",
    "timing.NAME": "timings",
    "host-size": "host_size",  # vcpus,ram_mb,disk_gb
    "brake": "brake_fraction",
    "brake-window": "brake_window_s",
    "process_restart_failure": "recovery",
    "allow_self_fence_proof": "recovery",
    "max_parallel_evacuations": "recovery",
    "default_ha": "policy",
    "vm_restart_limit": "policy",
    "vms": "vms_per_host",
    "flavor": "flavor",
    "watchdog": "watchdog",
    "fanout": "fanout",
}
SIM_ONLY = frozenset({"vms_per_host", "flavor", "fanout"})


class ScriptError(Exception):
    """The script itself is wrong (not the system under test)."""


@dataclass(frozen=True)
class Verb(Generic[H]):
    name: str
    args: str
    meaning: str
    run: H

    @property
    def usage(self) -> str:
        return f"{self.name} {self.args}".rstrip()

    @property
    def min_args(self) -> int:
        required = self.args
        while (less := re.sub(r"\[[^\[\]]*\]", "", required)) != required:
            required = less
        return sum(1 for w in required.split() if w != "...")


def table(handlers: Mapping[str, H]) -> dict[str, Verb[H]]:
    """A runner's verb table: its handlers, each for a verb of the language."""
    unknown = sorted(set(handlers) - set(VERBS))
    assert not unknown, f"handlers for verbs not in the language: {unknown}"
    return {v: Verb(v, *VERBS[v], run) for v, run in handlers.items()}


@dataclass(frozen=True)
class Step:
    line: int
    verb: str
    args: list[str]
    within: float | None = None  # `within DURATION`, taken off `args`

    @property
    def text(self) -> str:
        within = f" within {self.within:g}s" if self.within is not None else ""
        return " ".join([self.verb, *self.args]) + within


@dataclass
class Script:
    name: str
    description: str
    steps: list[Step]
    expected: list[str] | None = None  # the lines below `----`, if there is such a line
    head: str = ""  # the text above `----` (kept as it is when the trace is rewritten)


def parse(text: str, name: str, verbs: Mapping[str, Verb[Any]]) -> Script:
    lines = text.splitlines()
    description: list[str] = []
    steps: list[Step] = []
    expected: list[str] | None = None
    end = len(lines)
    for no, raw in enumerate(lines, 1):
        if raw.startswith(GOLDEN_MARK):
            end, expected = no - 1, lines[no:]
            break
        if raw.strip().startswith("#"):
            if not steps and (not description or lines[no - 2].strip().startswith("#")):
                description.append(raw.strip().lstrip("#").strip())
            continue
        try:
            words = shlex.split(raw, comments=True)
        except ValueError as err:
            raise ScriptError(f"{name}:{no}: {err}") from None
        if words:
            steps.append(_step(words, name, no, verbs))
    head = "\n".join(lines[:end]).rstrip() + "\n"
    return Script(name, " ".join(d for d in description if d), steps, expected, head)


def _step(words: list[str], name: str, no: int, verbs: Mapping[str, Verb[Any]]) -> Step:
    verb = " ".join(words[:2]) if words[0] == "expect" and len(words) > 1 else words[0]
    args = words[len(verb.split()) :]
    if verb not in VERBS:
        raise ScriptError(f"{name}:{no}: unknown step {verb!r}")
    if verb not in verbs:
        raise ScriptError(f"{name}:{no}: {verb!r} means nothing to this runner")
    within = None
    if len(args) >= 2 and args[-2] == "within":
        if not verb.startswith("expect "):
            raise ScriptError(f"{name}:{no}: only an expectation takes `within`")
        within, args = seconds(args[-1]), args[:-2]
    if len(args) < verbs[verb].min_args:
        raise ScriptError(f"{name}:{no}: too few arguments; usage: {verbs[verb].usage}")
    return Step(no, verb, args, within)


def with_expected(script: Script, header: str, trace: list[str]) -> str:
    """The script's text with `trace` below a `----` line (replacing any trace there)."""
    return f"{script.head.rstrip()}\n\n{GOLDEN_MARK} {header}\n" + "".join(
        f"{line}\n" for line in trace
    )


# -- words ------------------------------------------------------------------------------


def seconds(word: str) -> float:
    w = word.strip()
    for suffix, mult in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if w.endswith(suffix) and w[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(w[: -len(suffix)]) * mult
    raise ScriptError(f"not a duration: {word!r} (use 500ms, 3s, 2m, 1h)")


def signed_seconds(word: str) -> float:
    """`+5m` / `-300s` -> seconds (the sign is required: a step has a direction)."""
    if word[:1] not in "+-" or len(word) < 2:
        raise ScriptError(f"not a signed duration: {word!r} (use +5m, -300s)")
    return seconds(word[1:]) * (-1.0 if word[0] == "-" else 1.0)


def percent(word: str) -> float:
    if not word.endswith("%") or not word[:-1].replace(".", "", 1).isdigit():
        raise ScriptError(f"not a percentage: {word!r}")
    return float(word[:-1]) / 100.0


def names(word: str) -> list[str]:
    """`a,b,c` -> [a, b, c]"""
    return [w for w in word.split(",") if w]


def tail_list(args: list[str], key: str) -> tuple[str, ...] | None:
    """`on a,b` / `by a,b` in a step's arguments."""
    if key in args and args.index(key) + 1 < len(args):
        return tuple(names(args[args.index(key) + 1]))
    return None


def segment_options(args: list[str], *, sim: bool = True) -> dict[str, Any]:
    """`segment` settings as SimSpec fields (`SimSpec(**options)`); without `sim`, only
    those that `synthetic_segment` takes (the simulator's own are refused)."""
    out: dict[str, Any] = {}
    rec: dict[str, Any] = {}
    pol: dict[str, Any] = {}
    for w in args:
        key, eq, val = w.partition("=")
        where = SEGMENT_KEYS.get("timing.NAME" if key.startswith("timing.") else key)
        if not eq or where is None:
            raise ScriptError(f"unknown segment setting {w!r}; known: {', '.join(SEGMENT_KEYS)}")
        if where in SIM_ONLY and not sim:
            raise ScriptError(f"segment setting {key!r} means something only to the simulator")
        try:
            if where in ("recovery", "policy"):
                (rec if where == "recovery" else pol)[key] = _value(val)
            elif where == "timings":
                out.setdefault("timings", {})[key[len("timing.") :]] = float(val)
            else:
                out[where] = _SEGMENT_VALUES.get(where, str)(val)
        except ValueError as err:
            raise ScriptError(f"segment setting {w!r}: {err}") from None
    out["recovery"] = replace(Recovery(), **rec)
    out["policy"] = replace(Policy(), **pol)
    return out


def _value(val: str) -> Any:
    return {"true": True, "false": False}.get(val, int(val) if val.isdigit() else val)


def _host_size(val: str) -> tuple[int, int, int]:
    vcpus, ram_mb, disk_gb = (int(x) for x in val.split(","))
    return vcpus, ram_mb, disk_gb


_SEGMENT_VALUES: dict[str, Any] = {
    "hosts": int,
    "voters": int,
    "reserved": lambda v: tuple(names(v)),
    "networks": lambda v: dict(p.split(":", 1) for p in names(v)) or dict(DEFAULT_NETWORKS),
    "host_size": _host_size,
    "brake_fraction": float,
    "brake_window_s": seconds,
    "vms_per_host": int,
    "watchdog": lambda v: v == "true",
    "fanout": int,
}
