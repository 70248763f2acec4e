"""FakeWatchdog: the in-memory WatchdogPort of a simulated host.

Same semantics as the Linux device and the lab watchdog (tests/contract/test_watchdog_
contract.py runs all through the same cases): `open` starts it, one opener at a time,
`keepalive` feeds it, `close(magic=True)` stops it and `close(magic=False)` leaves it
running. It fires when `due()`: the simulator's lifecycle loop checks that and powers the
machine off, as the lab watchdog powers its host off through the chassis.
"""

from __future__ import annotations

from collections.abc import Callable

from meshha.errors import WatchdogError


class FakeWatchdog:
    def __init__(self, clock: Callable[[], float], where: str = "") -> None:
        self.clock = clock
        self.where = where
        self.timeout_s = 60
        self.armed = False
        self.held = False
        self.last_feed = 0.0
        self.fired_at: float | None = None

    async def open(self, timeout_s: int) -> int:
        if self.held:
            raise WatchdogError("refused: busy", kind="busy", where=self.where)
        self.held, self.armed = True, True
        self.timeout_s = timeout_s
        self.last_feed = self.clock()
        return timeout_s

    async def keepalive(self) -> None:
        assert self.held, "not open"
        self.last_feed = self.clock()

    def close(self, *, magic: bool) -> None:
        self.held = False
        if magic:
            self.armed = False

    def due(self) -> bool:
        return self.armed and self.clock() - self.last_feed >= self.timeout_s

    def fire(self) -> None:
        """The timer ran out: the machine is powered off, the watchdog with it."""
        self.armed = False
        self.fired_at = self.clock()
