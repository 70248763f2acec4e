"""sd_notify(3) without libsystemd: one datagram per state to $NOTIFY_SOCKET.

systemd sets NOTIFY_SOCKET for a `Type=notify` service (a path, or "@name" for an
abstract socket), and WATCHDOG_USEC (with WATCHDOG_PID) when the unit has `WatchdogSec=`.
The agent sends READY=1 once every service is started, WATCHDOG=1 from its keepalive loop
while its own loops are responsive (meshha.agent.keepalive), and STOPPING=1 on a clean
stop. Sending never blocks and never raises: a notification that cannot be sent is
counted and logged once; if they keep failing, systemd restarts the agent, which is the
intent.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger("meshha.sd_notify")


class SdNotifier:
    def __init__(self, address: str, watchdog_usec: int | None = None) -> None:
        # "@name" is an abstract socket: a leading NUL byte on the wire.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog_interval_s = None if watchdog_usec is None else watchdog_usec / 1e6
        self.failures = 0
        self.readied = False  # WATCHDOG=1 only after READY=1: start-up has its own timeout
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SdNotifier | None:
        """The notifier systemd asked for, or None (not under systemd, or not notify)."""
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET", "")
        if not address or not (address.startswith(("/", "@"))):
            return None
        usec: int | None = None
        pid = env.get("WATCHDOG_PID", "")
        if env.get("WATCHDOG_USEC", "").isdigit() and (not pid or pid == str(os.getpid())):
            usec = int(env["WATCHDOG_USEC"]) or None
        return cls(address, usec)

    def notify(self, state: str) -> None:
        try:
            self._sock.sendto(state.encode(), self.address)
        except OSError as err:
            self.failures += 1
            if self.failures == 1:
                log.error("sd_notify_failed", state=state, error=err.strerror or str(err))

    def ready(self) -> None:
        self.readied = True
        self.notify("READY=1")

    def watchdog(self) -> None:
        if self.readied:
            self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def close(self) -> None:
        self._sock.close()
