"""A lab BMC per simulated host: OpenIPMI's `ipmi_sim`, whose power-off really stops things.

Each `BmcSim` runs one `ipmi_sim` (IPMI 2.0 lanplus, user `admin` with a password read
from a file) on its own UDP port and state directory. Its `chassis_control` program is
meshha/lab/chassis.py, which keeps the host's power in the file `STATE_DIR/power` and, on
power off, SIGKILLs what was registered for the host (pids, process groups, pid files such
as a libvirt root's `run/qemu/*.pid`). So a fence through this BMC has a real effect that
the test can see, and `ipmitool` can cross-check it as a second client.

    sim = BmcSim("host1", state_dir, port=free_udp_port(), password_file=pw)
    sim.start()
    await sim.wait_ready()
    ...            # sim.bmc is the meshha.config.model.Bmc to hand to IpmiFencer
    sim.stop()

From a shell (writes the config, then execs ipmi_sim in the foreground):

    python -m meshha.lab.bmc --name host1 --state-dir /run/meshha-lab/bmc/host1 \
        --port 16231 --password-file /etc/meshha/bmc-password

Facts this rests on (see /work/shared/reference/environment.md): ipmi_sim runs the
chassis program with `sh -c` and is single-threaded while it runs; `ipmitool` needs
`-C 3`; lanplus cipher suite 0 accepts any password (an ipmi_sim bug), so only md5 auth
is configured for every privilege level.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import trio

from meshha.config.model import Bmc

CHASSIS_PROGRAM = Path(__file__).with_name("chassis.py")
# An RMCP/ASF presence ping (IANA 4542, message type 0x80, tag 0x42). ipmi_sim answers it
# with a pong (0x40) from its main loop, so an answer means "the BMC serves requests now".
_ASF_PING = bytes([0x06, 0x00, 0xFF, 0x06, 0x00, 0x00, 0x11, 0xBE, 0x80, 0x42, 0x00, 0x00])
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_./+-]+$")
_SAFE_WORD = re.compile(r"^[A-Za-z0-9_.+-]{1,16}$")
_IPMI2_MAX_PASSWORD_BYTES = 20


def free_udp_port(address: str = "127.0.0.1") -> int:
    """A UDP port that nothing listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def read_password(password_file: Path) -> str:
    """The password in `password_file`, without the trailing newline."""
    password = password_file.read_bytes().rstrip(b"\r\n").decode()
    if not password or len(password.encode()) > _IPMI2_MAX_PASSWORD_BYTES:
        raise ValueError(f"{password_file}: IPMI 2.0 passwords are 1-20 bytes")
    if any(c in password for c in '"\\\n\r'):
        raise ValueError(f"{password_file}: no quotes, backslashes or newlines, please")
    return password


def lan_conf(
    name: str,
    *,
    address: str,
    port: int,
    username: str,
    password: str,
    chassis_command: str,
) -> str:
    """ipmi_sim's lan.conf for one BMC: md5 only, one admin user, our chassis program."""
    return (
        f'name "{name}"\n'
        "set_working_mc 0x20\n"
        "  startlan 1\n"
        f"    addr {address} {port}\n"
        "    priv_limit admin\n"
        "    allowed_auths_callback md5\n"
        "    allowed_auths_user md5\n"
        "    allowed_auths_operator md5\n"
        "    allowed_auths_admin md5\n"
        "    guid a123456789abcdefa123456789abcdef\n"
        "  endlan\n"
        f'  chassis_control "{chassis_command}"\n'
        f'  user 2 true "{username}" "{password}" admin 10 md5\n'
    )


BMC_EMU = (
    "mc_setbmc 0x20\n"
    "mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n"
    "sel_enable 0x20 1000 0x0a\n"
    "mc_enable 0x20\n"
)


class BmcSim:
    """One ipmi_sim for one simulated host. Not thread-safe; one owner (a test, the lab)."""

    def __init__(
        self,
        name: str,
        state_dir: Path,
        *,
        port: int,
        password_file: Path,
        address: str = "127.0.0.1",
        username: str = "admin",
        powered_on: bool = True,
    ) -> None:
        for word in (name, username):
            if not _SAFE_WORD.match(word):
                raise ValueError(f"{word!r}: use 1-16 of [A-Za-z0-9_.+-]")
        self.name = name
        self.state_dir = Path(state_dir).absolute()
        if not _SAFE_PATH.match(str(self.state_dir)):
            raise ValueError(f"{self.state_dir}: the chassis command needs a plain path")
        self.address = address
        self.port = port
        self.username = username
        self.password_file = Path(password_file)
        self._initial_power = "1" if powered_on else "0"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bmc(self) -> Bmc:
        """The config value an `IpmiFencer` needs to reach this BMC."""
        return Bmc(self.address, self.port, self.username, self.password_file)

    # -- lifecycle ---------------------------------------------------------------------

    def write_config(self) -> list[str]:
        """Write lan.conf, bmc.emu and the initial power file; return ipmi_sim's argv."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "state").mkdir(exist_ok=True)
        chassis = f"{sys.executable} -S -I {CHASSIS_PROGRAM} {self.state_dir}"
        conf = self.state_dir / "lan.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(
                lan_conf(
                    self.name,
                    address=self.address,
                    port=self.port,
                    username=self.username,
                    password=read_password(self.password_file),
                    chassis_command=chassis,
                )
            )
        (self.state_dir / "bmc.emu").write_text(BMC_EMU)
        power = self.state_dir / "power"
        if not power.exists():
            power.write_text(self._initial_power + "\n")
        return [
            "ipmi_sim",
            "-c",
            str(conf),
            "-f",
            str(self.state_dir / "bmc.emu"),
            "-s",
            str(self.state_dir / "state"),
            "-n",
        ]

    def start(self) -> None:
        """Start ipmi_sim in its own session; returns at once (see `wait_ready`)."""
        assert self._process is None, "already started"
        argv = self.write_config()
        log = open(self.state_dir / "ipmi_sim.log", "ab")  # noqa: SIM115 - child owns it
        try:
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "MESHHA_LAB_BMC": "1"},  # its chassis calls (see `lies`)
            )
        finally:
            log.close()

    def stop(self) -> None:
        """Stop ipmi_sim (SIGTERM, then SIGKILL). The simulated host's power stays as is."""
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    async def wait_ready(self, timeout_s: float = 10.0) -> None:
        """Wait until the BMC answers an RMCP presence ping (raises trio.TooSlowError)."""
        with trio.fail_after(timeout_s):
            udp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            with udp:
                while True:
                    if self._process is not None and self._process.poll() is not None:
                        log = (self.state_dir / "ipmi_sim.log").read_text(errors="replace")
                        raise RuntimeError(f"ipmi_sim for {self.name} exited: {log[-2000:]}")
                    await udp.sendto(_ASF_PING, (self.address, self.port))
                    with trio.move_on_after(0.05):
                        data = await udp.recv(512)
                        if len(data) > 8 and data[8] == 0x40:
                            return
                    await trio.sleep(0.02)

    def __enter__(self) -> BmcSim:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- what the simulated host is and does -------------------------------------------

    def powered_on(self) -> bool:
        """The host's real power state: what the chassis program last set."""
        return (self.state_dir / "power").read_text().strip() != "0"

    def set_powered_on(self, on: bool) -> None:
        """Set the power file directly (no kill, no boot): a lab's starting state."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "power").write_text("1\n" if on else "0\n")

    def kill_on_power_off(
        self,
        *,
        pids: Iterable[int] = (),
        pgids: Iterable[int] = (),
        pidfile_globs: Iterable[str] = (),
    ) -> None:
        """Register what dies with this host when its BMC powers it off or resets it."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for file, items in (
            ("kill-pids", [str(p) for p in pids]),
            ("kill-pgids", [str(g) for g in pgids]),
            ("kill-pidfiles", list(pidfile_globs)),
        ):
            if items:
                with open(self.state_dir / file, "a") as f:
                    f.write("".join(f"{item}\n" for item in items))

    def boot_with(self, argv: Sequence[str] | None) -> None:
        """What runs (detached) when the host is powered on or reset; None for nothing."""
        path = self.state_dir / "on-command"
        if argv is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(json.dumps(list(argv)))

    def set_delay_s(self, delay_s: float) -> None:
        """Make every chassis call take `delay_s` longer (a slow BMC); 0 to undo."""
        (self.state_dir / "delay-s").write_text(f"{delay_s}\n")

    def set_stuck(self, stuck: bool) -> None:
        """A stuck BMC accepts power commands and changes nothing."""
        self._flag("stuck", stuck)

    def set_lying(self, lying: bool) -> None:
        """A lying BMC: power commands change nothing, and it reads back what it was told
        (a host told off keeps running and is reported off). Only calls through ipmi_sim
        lie; the host's watchdog still really powers it off."""
        self._flag("lies", lying)
        if not lying:
            (self.state_dir / "lie-power").unlink(missing_ok=True)

    def set_broken(self, broken: bool) -> None:
        """A broken BMC fails every chassis call (completion code 0xFF)."""
        self._flag("broken", broken)

    def chassis_calls(self) -> list[tuple[float, str, str, str]]:
        """(unix time, op, name, value) for every call the chassis program served."""
        calls = []
        with contextlib.suppress(FileNotFoundError):
            for line in (self.state_dir / "chassis.log").read_text().splitlines():
                parts = line.split()
                if len(parts) >= 3:
                    value = parts[3] if len(parts) > 3 else ""
                    calls.append((float(parts[0]), parts[1], parts[2], value))
        return calls

    def _flag(self, name: str, on: bool) -> None:
        path = self.state_dir / name
        if on:
            path.touch()
        else:
            path.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="run one lab BMC (ipmi_sim) in the foreground")
    parser.add_argument("--name", required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--password-file", type=Path, required=True)
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--username", default="admin")
    parser.add_argument("--powered-off", action="store_true")
    args = parser.parse_args(argv)
    sim = BmcSim(
        args.name,
        args.state_dir,
        port=args.port,
        password_file=args.password_file,
        address=args.address,
        username=args.username,
        powered_on=not args.powered_off,
    )
    ipmi_argv = sim.write_config()
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.environ["MESHHA_LAB_BMC"] = "1"  # what its chassis calls see (chassis.py `lies`)
    os.execvp(ipmi_argv[0], ipmi_argv)
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main())
