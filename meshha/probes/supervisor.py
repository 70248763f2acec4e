"""Process supervision: the one path from "nova-compute / libvirtd is not running" to a
report in the log. Production (`Node`) and the simulator run this same loop over a
`ProcessPort` (the real `ProcessChecker`, or `FakeProcesses`).

An outage of a process runs from the first check that finds it dead (absent, or present
but failing its health probe) to the first check that finds it running again. Per outage:
- restarts are bounded and backed off: attempt n waits `restart_backoff_s * 2**(n-1)`
  after attempt n-1 failed, capped at `max_pause_s` (default 300 s), so an unrestartable
  process costs at most one restart every 5 minutes once the first ones failed;
- at most two reports: `restart_failed` once `restart_attempts` attempts have failed (at
  once, with no restart tried, when `restart_attempts` is 0), and
  `restarted` when it runs again (after a restart, or by itself) - or only `restarted`
  when a restart worked before the failure was reported. Both carry `since`, the wall
  time the outage began, so every entry of one outage names the same failure and the
  leader's steps for it (disable, alert) are proposed once;
- nothing is restarted while `paused()` says so (the host is in maintenance: an operator
  works on it); an outage that began in maintenance starts counting when it ends.
`wake()` checks at once (the libvirt event monitor calls it when its connection drops:
that is a hint, not a report of its own). A process that is found dead and comes back by itself before any restart was tried
(systemd's own restart, within one check) is not an outage worth a report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import structlog
import trio

from meshha.config.model import Processes
from meshha.errors import MeshhaError
from meshha.recovery.ports import ProcessPort

log = structlog.get_logger(__name__)

Outcome = Literal["restarted", "restart_failed"]
MAX_PAUSE_S = 300.0


@dataclass(frozen=True)
class ProcessReport:
    """One report about one outage of one process."""

    name: str
    outcome: Outcome
    since: float  # wall time the outage began
    attempts: int  # restarts tried in this outage so far
    detail: str


@dataclass
class Outage:
    since: float  # wall clock
    started: float  # trio clock
    attempts: int = 0
    next_try: float = 0.0  # trio clock
    reported: bool = False
    last_problem: str = ""


class Supervisor:
    """Checks every `check_interval_s` (see the module doc)."""

    def __init__(
        self,
        port: ProcessPort,
        config: Processes,
        report: Callable[[ProcessReport], None],
        *,
        now: Callable[[], float],
        paused: Callable[[], bool] = lambda: False,
        max_pause_s: float = MAX_PAUSE_S,
    ) -> None:
        assert config.restart_attempts >= 0 and config.check_interval_s > 0
        self.port, self.config, self.report = port, config, report
        self.now, self.paused, self.max_pause_s = now, paused, max_pause_s
        self.outages: dict[str, Outage] = {}
        self.restarts = 0  # over the supervisor's life, for status and tests
        self._woken = trio.Event()

    async def run(self) -> None:
        while True:
            with trio.move_on_after(self.config.check_interval_s):
                await self._woken.wait()
            self._woken = trio.Event()
            await self.check_once()

    def wake(self) -> None:
        """Check now (libvirt's connection just dropped), not at the next interval."""
        self._woken.set()

    async def check_once(self) -> None:
        for name in self.config.names:
            await self._check(name)

    def pause_before(self, attempt: int) -> float:
        """The wait after failed attempt `attempt - 1` (attempt >= 2)."""
        return min(self.config.restart_backoff_s * 2.0 ** (attempt - 2), self.max_pause_s)

    async def _check(self, name: str) -> None:
        alive = await self.port.is_alive(name)
        o = self.outages.get(name)
        if alive:
            if o is not None:
                del self.outages[name]
                if o.attempts or o.reported:
                    self._send(name, "restarted", o, "running again")
            return
        if o is None:
            o = self.outages[name] = Outage(since=self.now(), started=trio.current_time())
            log.warning("process.dead", name=name)
        if self.paused():
            o.next_try = 0.0  # after maintenance, start afresh
            return
        if self.config.restart_attempts == 0:  # restarts are off: report it, once
            if not o.reported:
                o.reported = True
                self._send(name, "restart_failed", o, "not running (restart_attempts = 0)")
            return
        if trio.current_time() < o.next_try:
            return
        o.attempts += 1
        self.restarts += 1
        try:
            await self.port.restart(name)
            ok = await self.port.is_alive(name)
            problem = "" if ok else "not running after the restart"
        except MeshhaError as err:
            ok, problem = False, str(err)
        if ok:
            del self.outages[name]
            self._send(name, "restarted", o, f"restarted (attempt {o.attempts})")
            return
        o.last_problem = problem
        o.next_try = trio.current_time() + self.pause_before(o.attempts + 1)
        log.warning("process.restart_attempt_failed", name=name, attempt=o.attempts, error=problem)
        if o.attempts >= self.config.restart_attempts and not o.reported:
            o.reported = True
            self._send(name, "restart_failed", o, f"attempt {o.attempts}: {problem}")

    def _send(self, name: str, outcome: Outcome, o: Outage, detail: str) -> None:
        down_s = trio.current_time() - o.started
        text = f"{detail}; {o.attempts} restart(s) in {down_s:.1f}s"
        if outcome == "restarted":
            log.info("process.restarted", name=name, attempts=o.attempts)
        self.report(ProcessReport(name, outcome, o.since, o.attempts, text))
