"""Local process checks: is nova-compute / libvirtd alive, and restart it when not.

Alive means two things: a process with that name exists (a scan of /proc, zombies not
counted: a killed process stays a zombie until it is reaped, which PID 1 does only
every ~2 s here), and, when a health probe is given for the name, the probe answers
True within `probe_timeout_s` (a process can exist and hang: libvirtd that no longer
answers getLibVersion is dead for our purposes).

A name matches a process whose comm is the name (the kernel keeps 15 bytes of it), or
whose argv[0] or argv[1] has the name as its basename (`python3 /usr/bin/nova-compute`).
The checker remembers the pid it found (with its start time and comm, so a reused pid
or an exec into something else is not taken for it) and next time reads only
/proc/<pid>/stat; it scans /proc again only when that process is gone. A scan reads
every process's stat and cmdline (7 ms of CPU for 170 processes on the test machine:
with two names every 2 s, 0.7 % of a core); a check of a known pid reads one small file
(20 us).

The libvirt daemon is `libvirtd` or, on hosts with modular daemons, `virtqemud`: the
agent watches whichever runs (agent/main.py, `LIBVIRT_DAEMONS`).

Restarting (one attempt per `restart` call; the `Supervisor` in probes/supervisor.py
decides when to try, how often, and what to report) runs the configured
`restart_command` template with "{name}" replaced, split with shlex and run without a
shell, when one is configured - containerised nodes (`podman restart nova_compute`) and
RHEL (`systemctl restart openstack-nova-compute`) need it even under systemd; else
`systemctl restart NAME` when the host runs systemd (/run/systemd/system exists). The
process must then be alive within `confirm_timeout_s`, else ProcessError(restart_failed).

nova-compute can hang with its process present: `nova_service_probe` asks Nova whether
the host's nova-compute service is up (Nova marks it down once its heartbeats stop for
`service_down_time`). Nova unreachable is no evidence either way: the probe says alive.
Nova's answer lags: it still says "down" for a while after a restart, so a process younger
than its `health_grace_s` (NOVA_SERVICE_GRACE_S for nova-compute) is judged by its
presence alone - else every restart of a hung nova-compute would look failed, and the
next one would kill the fresh process.
"""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog
import trio

from meshha.config.model import Processes
from meshha.errors import MeshhaError, ProcessError
from meshha.probes.libvirt_events import libvirt_answers
from meshha.recovery.ports import NovaPort

log = structlog.get_logger(__name__)

HealthProbe = Callable[[], Awaitable[bool]]
# service_down_time (60 s by default) + report_interval (10 s) + the probe's own 30 s
# between questions: by then Nova's answer is about the process running now.
NOVA_SERVICE_GRACE_S = 100.0
_COMM_BYTES = 15


def find_pids(name: str, proc_root: Path = Path("/proc")) -> list[int]:
    """Pids of live (not zombie) processes called `name` (see the module doc)."""
    pids = []
    for entry in os.scandir(proc_root):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_bytes()
            comm = stat[stat.index(b"(") + 1 : stat.rindex(b")")].decode(errors="replace")
            state = stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3]
            if state in (b"Z", b"X"):
                continue
            if comm == name[:_COMM_BYTES] and len(name) <= _COMM_BYTES:
                pids.append(int(entry.name))
                continue
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue  # it exited while we looked
        heads = [os.path.basename(a.decode(errors="replace")) for a in argv[:2] if a]
        if name in heads:
            pids.append(int(entry.name))
    return sorted(pids)


@dataclass(frozen=True)
class _Known:
    """A process found by a scan: still it while pid, start time and comm agree."""

    pid: int
    start: bytes  # /proc/<pid>/stat field 22, clock ticks after boot
    comm: bytes


def _stat_fields(proc_root: Path, pid: int) -> tuple[bytes, list[bytes]] | None:
    """(comm, the fields after it: state first), or None when the pid is gone."""
    try:
        stat = Path(proc_root, str(pid), "stat").read_bytes()
    except OSError:
        return None
    head, _, rest = stat.rpartition(b")")
    return head[head.find(b"(") + 1 :], rest.split()


def _identify(proc_root: Path, pid: int) -> _Known | None:
    got = _stat_fields(proc_root, pid)
    if got is None or len(got[1]) < 20:
        return None
    return _Known(pid, got[1][19], got[0])


def _still_running(proc_root: Path, known: _Known) -> bool:
    got = _stat_fields(proc_root, known.pid)
    if got is None or len(got[1]) < 20:
        return False
    comm, fields = got
    return fields[0] not in (b"Z", b"X") and fields[19] == known.start and comm == known.comm


def host_runs_systemd() -> bool:
    """sd_booted(): the host was booted with systemd as PID 1."""
    return Path("/run/systemd/system").is_dir()


def libvirt_probe(uri: str, limiter: trio.CapacityLimiter | None = None) -> HealthProbe:
    """A health probe for libvirtd: a connection to `uri` answers getLibVersion."""

    async def probe() -> bool:
        return bool(await trio.to_thread.run_sync(libvirt_answers, uri, limiter=limiter))

    return probe


def nova_service_probe(nova: NovaPort, host: str, every_s: float = 30.0) -> HealthProbe:
    """A health probe for nova-compute: Nova's own view of the host's service. Down while
    enabled and not forced down (by us) means its heartbeats stopped: hung. Nova not
    answering, or a service we forced down, says nothing: alive. Nova is asked at most
    every `every_s` (it marks a service down only after service_down_time, 60 s by
    default, so asking more often learns nothing and loads its API)."""
    last: list[float | bool] = [-math.inf, True]  # when asked, what it said

    async def probe() -> bool:
        if trio.current_time() - float(last[0]) < every_s:
            return bool(last[1])
        last[0] = trio.current_time()
        try:
            (facts,) = await nova.host_facts([host])
        except (MeshhaError, ValueError):
            last[1] = True
            return True
        last[1] = facts.forced_down or not facts.service_enabled or facts.service_up
        return bool(last[1])

    return probe


class ProcessChecker:
    """ProcessPort for this host (see the module doc)."""

    def __init__(
        self,
        processes: Processes,
        *,
        health: Mapping[str, HealthProbe] | None = None,
        health_grace_s: Mapping[str, float] | None = None,
        use_systemd: bool | None = None,
        probe_timeout_s: float = 5.0,
        command_timeout_s: float = 60.0,
        confirm_timeout_s: float = 30.0,
        proc_root: Path = Path("/proc"),
    ) -> None:
        assert processes.restart_attempts >= 0 and processes.check_interval_s > 0
        self._config = processes
        self._health = dict(health or {})
        self._health_grace_s = dict(health_grace_s or {})
        self._systemd = host_runs_systemd() if use_systemd is None else use_systemd
        self._probe_timeout_s = probe_timeout_s
        self._command_timeout_s = command_timeout_s
        self._confirm_timeout_s = confirm_timeout_s
        self._proc_root = proc_root
        self._known: dict[str, _Known] = {}  # name -> the process last found for it
        self.scans = 0  # full /proc scans since start

    def running(self, name: str) -> bool:
        """Is a live process called `name` running here (the pid cache, then a scan)?"""
        known = self._known.get(name)
        if known is not None and _still_running(self._proc_root, known):
            return True
        self._known.pop(name, None)
        self.scans += 1
        for pid in find_pids(name, self._proc_root):
            found = _identify(self._proc_root, pid)
            if found is not None:
                self._known[name] = found
                return True
        return False

    async def is_alive(self, name: str) -> bool:
        if not self.running(name):
            return False
        probe = self._health.get(name)
        if probe is None:
            return True
        grace_s = self._health_grace_s.get(name, 0.0)
        if grace_s > 0 and self.age_s(name) < grace_s:
            return True  # too young for its probe's answer to be about it (module doc)
        with trio.move_on_after(self._probe_timeout_s):
            return await probe()
        return False  # a probe that hangs is a process that hangs

    def age_s(self, name: str) -> float:
        """Seconds since the process found for `name` started (inf when unknown)."""
        if name not in self._known and not self.running(name):
            return math.inf
        known = self._known.get(name)
        try:
            uptime_s = float((self._proc_root / "uptime").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return math.inf
        if known is None:
            return math.inf
        return uptime_s - int(known.start) / os.sysconf("SC_CLK_TCK")

    async def restart(self, name: str) -> None:
        """One restart of `name`: alive within `confirm_timeout_s`, or ProcessError."""
        problem = await self._run(self.restart_argv(name))
        if problem is None:
            if await self._wait_alive(name):
                log.info("process.restarted", name=name)
                return
            problem = f"not alive {self._confirm_timeout_s}s after the restart"
        raise ProcessError(f"{name} not restarted: {problem}", kind="restart_failed", where=name)

    def restart_argv(self, name: str) -> list[str]:
        """The command that restarts `name` here (no shell; the name is one argument)."""
        template = self._config.restart_command
        if template:
            return [part.replace("{name}", name) for part in shlex.split(template)]
        if self._systemd:
            return ["systemctl", "restart", name]
        raise ProcessError(
            "no systemd and no restart_command configured", kind="config", where=name
        )

    async def _run(self, argv: list[str]) -> str | None:
        """Run a restart command; None when it exited 0, else what went wrong."""
        try:
            with trio.fail_after(self._command_timeout_s):
                done = await trio.run_process(
                    argv, capture_stdout=True, capture_stderr=True, check=False
                )
        except trio.TooSlowError:
            return f"{argv[0]} did not finish in {self._command_timeout_s}s"
        except OSError as e:
            return f"{argv[0]}: {e.strerror}"
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace").strip().splitlines()
            return f"{argv[0]} exited {done.returncode}" + (f": {err[-1]}" if err else "")
        return None

    async def _wait_alive(self, name: str) -> bool:
        with trio.move_on_after(self._confirm_timeout_s):
            while True:
                if await self.is_alive(name):
                    return True
                await trio.sleep(0.05)
        return False
