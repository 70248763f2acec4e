"""The agent's keepalives: its watchdog (what makes the self-fence deadline a proof) and
systemd's (a hung agent is restarted).

One loop, on the agent's trio thread, every `interval_s`:

- *responsive*: the node's own loops (probing, isolation) have each run within
  `stall_s`; a stalled loop stops both keepalives.
- systemd: WATCHDOG=1 while responsive.
- the watchdog: armed (opened) at the first contact with a majority, never before (a host
  that boots cut off does not start a timer it cannot feed); then fed while responsive
  and before `feed_until`: the last moment at which stopping still lets the watchdog fire
  before the majority's self-fence deadline.

`feed_until`: the node's `contact_m` is when it last counted a majority (directly, or
through probes acked within isolation_after_s, so the real last contact may be up to
isolation_after_s older). The majority's deadline is at least that real last contact +
self_fence_deadline_s, and the watchdog fires one timeout after the last keepalive, so

    feed_until = contact_m - isolation_after_s + self_fence_deadline_s - timeout - margin

The loader refuses a timeout that leaves this before the isolation itself.

A clean stop (`clean_stop`, SIGTERM) disarms the watchdog with the magic close, unless
the host is isolated: then the majority may already count on its deadline, and the
watchdog is left running. Any other end of the loop (a crash, cancellation) closes it
without the magic character, which also leaves it running.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

import structlog
import trio

from meshha.config.model import WATCHDOG_MARGIN_S, Timings
from meshha.errors import WatchdogError
from meshha.recovery.ports import WatchdogPort

if TYPE_CHECKING:
    from meshha.agent.node import Node

log = structlog.get_logger("meshha.keepalive")

MAX_INTERVAL_S = 1.0


class Notifier(Protocol):
    watchdog_interval_s: float | None

    def watchdog(self) -> None: ...

    def stopping(self) -> None: ...


def feed_until(contact_m: float, timings: Timings, timeout_s: float) -> float:
    """The last (monotonic) time an agent last in contact at `contact_m` may feed."""
    return (
        contact_m
        - timings.isolation_after_s
        + timings.self_fence_deadline_s
        - timeout_s
        - WATCHDOG_MARGIN_S
    )


def responsive(beats: Mapping[str, float], now_m: float, stall_s: float) -> bool:
    """Every loop that beats has beaten within `stall_s` (and at least one has)."""
    return bool(beats) and all(now_m - t <= stall_s for t in beats.values())


class Keepalive:
    def __init__(
        self, node: Node, watchdog: WatchdogPort | None, notifier: Notifier | None
    ) -> None:
        self.node = node
        self.watchdog = watchdog
        self.notifier = notifier
        wd = node.segment.host(node.me).watchdog
        assert watchdog is None or wd is not None, "a watchdog port for a host that declares none"
        self.timeout_s = wd.timeout_s if wd is not None else 0
        self.device_timeout_s: int | None = None  # read back from the device once armed
        self.feeding = False
        self.stopped = False
        poll = node.prober.poll_interval_s
        intervals = [MAX_INTERVAL_S, 10 * poll]
        if watchdog is not None:
            intervals.append(self.timeout_s / 4)
        if notifier is not None and notifier.watchdog_interval_s:
            intervals.append(notifier.watchdog_interval_s / 3)
        self.interval_s = min(intervals)
        self.stall_s = max(5.0, 10 * poll)

    async def run(self) -> None:
        try:
            while True:
                await self.tick()
                await trio.sleep(self.interval_s)
        finally:
            if self.watchdog is not None:
                self.watchdog.close(magic=False)  # as a dying process closes it

    async def tick(self) -> None:
        node, now = self.node, trio.current_time()
        ok = responsive(node.beats, now, self.stall_s)
        if ok and self.notifier is not None:
            self.notifier.watchdog()
        if self.watchdog is None:
            return
        if self.device_timeout_s is None:
            if ok and node.contact_m > -math.inf and not self.stopped:
                await self._arm()
            return
        until = feed_until(node.contact_m, node.segment.timings, self.device_timeout_s)
        feed = ok and now < until
        if feed:
            try:
                await self.watchdog.keepalive()
            except WatchdogError as err:
                node.stats.last_error = str(err)
                log.error("watchdog_keepalive_failed", error=str(err), kind=err.kind)
        if feed != self.feeding:
            self.feeding = feed
            why = "" if feed else ("loops stalled" if not ok else "self-fence deadline near")
            log.warning(
                "watchdog_feeding" if feed else "watchdog_not_fed",
                host=node.me,
                why=why,
                fires_in_s=self.device_timeout_s,
            )

    async def _arm(self) -> None:
        assert self.watchdog is not None
        try:
            got = await self.watchdog.open(self.timeout_s)
        except WatchdogError as err:
            self.node.stats.last_error = str(err)
            log.error("watchdog_open_failed", error=str(err), kind=err.kind)
            return
        if got != self.timeout_s:
            log.warning("watchdog_timeout_rounded", asked_s=self.timeout_s, device_s=got)
        self.device_timeout_s, self.feeding = got, True
        log.info("watchdog_armed", host=self.node.me, timeout_s=got)

    def status(self) -> dict[str, object]:
        """For `meshctl status`: is the watchdog armed, and is it being fed?"""
        return {
            "declared": self.watchdog is not None,
            "armed": self.device_timeout_s is not None,
            "feeding": self.device_timeout_s is not None and self.feeding,
            "timeout_s": self.device_timeout_s,
        }

    def clean_stop(self) -> None:
        """SIGTERM: disarm, unless isolated (see the module doc)."""
        self.stopped = True
        if self.notifier is not None:
            self.notifier.stopping()
        if self.watchdog is None or self.device_timeout_s is None:
            return
        if self.node.isolated:
            log.warning("watchdog_left_armed", host=self.node.me, why="isolated")
            return
        self.watchdog.close(magic=True)
        self.device_timeout_s = None
        log.info("watchdog_disarmed", host=self.node.me)
