"""A lab watchdog: the Linux watchdog's semantics, served on a unix socket, firing a lab
host's chassis.

A lab host has no /dev/watchdog (this kernel has no watchdog drivers and no modules), so
`LabWatchdog` stands in for it as a separate process, the way the hardware timer is
separate from the OS: the agent drives it with `meshha.agent.watchdog.SocketWatchdog`
(the protocol is in that module's doc) and, when it is not fed in time, it powers the host
off through the host's chassis program (meshha/lab/chassis.py `set power 0`, exactly what
an IPMI power-off through ipmi_sim runs): the registered processes (the agent, the
host's QEMU domains) are SIGKILLed and the power file reads 0. Power off, not reset, as
the simulator's watchdog does (a reset host would come back without its VMs).

Semantics kept from drivers/watchdog/watchdog_dev.c: opening starts the timer, one
opener at a time (the next is refused "busy"), any write feeds it, a write containing 'V'
allows the next close to stop it, a close without it leaves it running; the timeout is
whole seconds, 60 until set. Like a hardware timer, which loses power with its host, it
stops when its chassis is powered off (the chassis `power` file reads 0): a host that is
powered off and on again by its BMC does not get a stale firing from before.

`meshha-lab up` runs one per host (`spawn`), outside the host's namespaces (a hung host
does not freeze its watchdog), serving `/run/meshha/watchdog.sock` inside the host, and
the lab's segment config declares it (`[watchdog] device = ...`), as the shipped example
declares /dev/watchdog.

    wd = LabWatchdog(Path("run/host1-wd.sock"), chassis_dir=bmc.state_dir)
    await nursery.start(wd.run)       # or, as its own process:
    python -m meshha.lab.watchdog --socket run/host1-wd.sock --chassis-dir DIR
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from meshha.lab.bmc import CHASSIS_PROGRAM

DEFAULT_TIMEOUT_S = 60
REFUSE_WAIT_S = 2.0  # an opener sends its first request at once
MAX_MESSAGE_B = 64
CHECK_INTERVAL_S = 0.02


class LabWatchdog:
    """One lab host's watchdog (see the module doc). `fired_at` is the trio time it fired."""

    def __init__(
        self,
        socket_path: Path,
        *,
        chassis_dir: Path | None = None,
        on_fire: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        assert (chassis_dir is None) != (on_fire is None), "one of chassis_dir, on_fire"
        self.socket_path = Path(socket_path)
        self.chassis_dir = chassis_dir
        self._on_fire = on_fire
        self.timeout_s = DEFAULT_TIMEOUT_S
        self.armed = False
        self.held = False
        self.last_feed = 0.0
        self.fired_at: float | None = None
        self.feeds = 0
        self._allow_release = False

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_SEQPACKET)
        with listener:
            await listener.bind(str(self.socket_path))
            os.chmod(self.socket_path, 0o600)
            listener.listen(4)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._timer)
                task_status.started()
                while True:
                    conn, _ = await listener.accept()
                    nursery.start_soon(self._serve, conn)

    async def _serve(self, conn: trio.socket.SocketType) -> None:
        with conn:
            if self.held:
                # Refuse the opener's first request, read first: a unix socket closed
                # with a message unread resets its peer, and the refusal would be lost.
                with trio.move_on_after(REFUSE_WAIT_S):
                    await conn.recv(MAX_MESSAGE_B)
                await conn.send(b"Ebusy")
                return
            self.held, self.armed, self._allow_release = True, True, False
            self.last_feed = trio.current_time()
            try:
                while True:
                    msg = await conn.recv(MAX_MESSAGE_B)
                    if not msg:
                        break
                    answer = self._handle(msg)
                    if answer:
                        await conn.send(answer)
            except OSError:
                pass  # the opener died: the same as a close without the magic character
            finally:
                self.held = False
                if self._allow_release or self._powered_off():
                    self.armed = False

    def _handle(self, msg: bytes) -> bytes:
        op, arg = msg[:1], msg[1:]
        now = trio.current_time()
        if op == b"S":
            if not arg.isdigit() or not 1 <= int(arg) <= 65535:
                return b"E%d" % errno.EINVAL
            self.timeout_s = int(arg)
            self.last_feed = now  # the kernel pings after setting the timeout
            return b"%d" % self.timeout_s
        if op == b"G":
            return b"%d" % self.timeout_s
        if op in (b"K", b"W"):
            self.last_feed = now
            self.feeds += 1
            if op == b"W":
                self._allow_release = b"V" in arg
            return b""
        return b"Eunsupported"

    async def _timer(self) -> None:
        while True:
            await trio.sleep(CHECK_INTERVAL_S)
            if self.armed and self._powered_off():
                self.armed = False  # the host lost power, and its watchdog with it
            if self.armed and trio.current_time() - self.last_feed >= self.timeout_s:
                self.armed = False
                self.fired_at = trio.current_time()
                await self._fire()

    def _powered_off(self) -> bool:
        if self.chassis_dir is None:
            return False
        try:
            return (self.chassis_dir / "power").read_text().strip() == "0"
        except OSError:
            return False

    async def _fire(self) -> None:
        if self._on_fire is not None:
            await self._on_fire()
            return
        assert self.chassis_dir is not None
        argv = [sys.executable, "-S", "-I", str(CHASSIS_PROGRAM), str(self.chassis_dir)]
        await trio.run_process([*argv, "set", "power", "0"], check=False)


def spawn(socket_path: Path, chassis_dir: Path, log_path: Path) -> int:
    """Start one lab watchdog as its own process (its own session); its pid, once its
    socket exists."""
    import subprocess

    from meshha.lab.mesh import poll_until

    with contextlib.suppress(FileNotFoundError):
        socket_path.unlink()
    argv = [sys.executable, "-m", "meshha.lab.watchdog", "--socket", str(socket_path)]
    argv += ["--chassis-dir", str(chassis_dir)]
    with open(log_path, "ab") as log:
        p = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    if not poll_until(lambda: socket_path.exists() or p.poll() is not None, 15, 0.05):
        p.kill()
    if not socket_path.exists():
        raise RuntimeError(f"lab watchdog {socket_path} did not start; see {log_path}")
    return p.pid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run one lab watchdog in the foreground")
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--chassis-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    trio.run(LabWatchdog(args.socket, chassis_dir=args.chassis_dir).run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
