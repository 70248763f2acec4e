"""The installed agent's self-fence and its systemd side, through the console script the
way config/meshha-agent.service runs it (`meshha-agent --config … --host …`, plus the
lab's control socket and data dir), on a loopback segment of three real agents.

- systemd: a real unix datagram socket stands in for $NOTIFY_SOCKET; the agent says
  READY=1, then WATCHDOG=1 again and again, and STOPPING=1 on SIGTERM (exit 0).
- the self-fence: host1 runs two real QEMU domains on its private libvirtd and declares
  a lab watchdog (meshha.lab.watchdog, its own process, wired to host1's chassis program
  exactly as an ipmi_sim BMC is). host2 and host3 are SIGKILLed: host1 is cut off from
  any majority. Its agent destroys its domains through libvirt, keeps feeding the
  watchdog while that is still safe, then stops; the watchdog fires and the chassis kills
  the agent, all before the majority's self-fence deadline (last heard + 10 s). The
  agent arms the watchdog only once it has had a majority.
- a declared watchdog device that is missing stops the agent at start (exit 2).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import trio

from meshha.lab.libvirt_setup import PrivateLibvirtd, domain_xml, missing_programs
from meshha.lab.mesh import Mesh

pytestmark = pytest.mark.integration

AGENT = Path(sys.executable).parent / "meshha-agent"
HOSTS = ("host1", "host2", "host3")
NO_PROCESS_CHECKS = "\n[processes]\nnames = []\n"
DEADLINE_S = 10.0  # lan-fast self_fence_deadline_s
WATCHDOG_TIMEOUT_S = 2


class ConsoleMesh(Mesh):
    """A Mesh whose agents are started by the installed console script, with per-host
    extra options and environment."""

    def __init__(
        self,
        workdir: Path,
        *,
        args: dict[str, list[str]] | None = None,
        env: dict[str, dict[str, str]] | None = None,
        host1_toml: str = "",
    ) -> None:
        super().__init__(workdir, HOSTS, extra_toml=NO_PROCESS_CHECKS)
        self.args, self.env = args or {}, env or {}
        if host1_toml:  # a [hosts.*] table of host1: before the second [[hosts]]
            text = self.config.read_text()
            first = text.index("[[hosts]]")
            second = text.index("[[hosts]]", first + 1)
            self.config.write_text(text[:second] + host1_toml + "\n" + text[second:])

    def agent_argv(self, host: str) -> list[str]:
        argv = super().agent_argv(host)
        assert argv[1:3] == ["-m", "meshha.agent.main"]
        return [str(AGENT), *argv[3:], *self.args.get(host, [])]

    def spawn(self, host: str) -> subprocess.Popen[bytes]:
        assert not self.running(host), f"{host} is already running"
        out = open(self.log_path(host), "ab")  # noqa: SIM115 - the child keeps it
        try:
            p = subprocess.Popen(
                self.agent_argv(host),
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env.get(host, {})},
            )
        finally:
            out.close()
        self.procs[host] = p
        self.exit_codes.pop(host, None)
        return p


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """Unix socket paths must stay under 108 bytes: pytest's tmp_path can be too long."""
    with tempfile.TemporaryDirectory(prefix="mh-sf-", dir="/tmp") as d:
        yield Path(d)


def _recv_all(sock: socket.socket, until: float) -> list[str]:
    got = []
    while time.monotonic() < until:
        sock.settimeout(max(until - time.monotonic(), 0.01))
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            break
    return got


def test_agent_notifies_systemd_ready_watchdog_and_stopping(short_tmp: Path) -> None:
    notify = short_tmp / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify))
        env = {"NOTIFY_SOCKET": str(notify), "WATCHDOG_USEC": "3000000"}
        with ConsoleMesh(short_tmp / "mesh", env={"host1": env}) as mesh:
            mesh.start(["host1"], leader=False)  # alone: no majority, still alive
            got = _recv_all(sock, time.monotonic() + 4.0)
            assert got and got[0] == "READY=1", got
            pings = [m for m in got if m == "WATCHDOG=1"]
            # WatchdogSec=3 -> a ping at least every second (3 s / 3).
            assert len(pings) >= 3, got
            assert mesh.stop("host1") == 0
            assert "STOPPING=1" in _recv_all(sock, time.monotonic() + 2.0)


def test_declared_watchdog_that_is_missing_stops_the_agent(short_tmp: Path) -> None:
    wd = f'[hosts.watchdog]\ndevice = "{short_tmp / "no-such-watchdog"}"\ntimeout_s = 2\n'
    with ConsoleMesh(short_tmp / "mesh", host1_toml=wd) as mesh:
        p = mesh.spawn("host1")
        assert p.wait(timeout=60) == 2
        assert "no-such-watchdog" in mesh.log_tail("host1")


def _active_domains(uri: str) -> list[str]:
    import libvirt

    conn = libvirt.open(uri)
    try:
        return [d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)]
    finally:
        conn.close()


def _wait(cond: object, timeout_s: float, what: str, poll_s: float = 0.05) -> float:
    """Poll `cond` until true; the wall-clock time it became true. AssertionError after."""
    assert callable(cond)
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"not within {timeout_s:g}s: {what}"
        time.sleep(poll_s)  # noqa: TID251 - polling a condition in another process
    return time.time()


@contextlib.contextmanager
def lab_watchdog(sock: Path, chassis: Path) -> Iterator[subprocess.Popen[bytes]]:
    argv: Sequence[str] = [sys.executable, "-m", "meshha.lab.watchdog"]
    argv = [*argv, "--socket", str(sock), "--chassis-dir", str(chassis)]
    p = subprocess.Popen(argv, start_new_session=True)
    try:
        _wait(sock.exists, 20, "the lab watchdog listens")
        yield p
    finally:
        p.terminate()
        p.wait(timeout=10)


@pytest.mark.skipif(bool(missing_programs()), reason=f"missing: {missing_programs()}")
def test_isolated_agent_destroys_its_domains_then_its_watchdog_fires(short_tmp: Path) -> None:
    lv = PrivateLibvirtd(short_tmp / "lv")
    lv.start()
    try:
        trio.run(lv.wait_ready)
        import libvirt

        conn = libvirt.open(lv.uri)
        for name in ("sf-vm1", "sf-vm2"):
            conn.createXML(domain_xml(name), 0)
        conn.close()
        assert sorted(_active_domains(lv.uri)) == ["sf-vm1", "sf-vm2"]

        chassis = short_tmp / "chassis"
        chassis.mkdir()
        (chassis / "power").write_text("1\n")
        (chassis / "kill-pidfiles").write_text(lv.qemu_pidfile_glob + "\n")
        wd_sock = short_tmp / "wd.sock"
        host1_wd = f'[hosts.watchdog]\ndevice = "{wd_sock}"\ntimeout_s = {WATCHDOG_TIMEOUT_S}\n'
        with (
            lab_watchdog(wd_sock, chassis),
            ConsoleMesh(
                short_tmp / "mesh",
                args={"host1": ["--libvirt-uri", lv.uri]},
                host1_toml=host1_wd,
            ) as mesh,
        ):
            mesh.start()
            agent = mesh.procs["host1"]
            (chassis / "kill-pids").write_text(f"{agent.pid}\n")  # the agent dies with it
            mesh.wait_until(
                lambda: "watchdog_armed" in mesh.log_path("host1").read_text(),
                20,
                "host1 arms its watchdog once it has a majority",
            )
            time.sleep(3 * WATCHDOG_TIMEOUT_S)  # noqa: TID251 - it must not fire while fed
            assert (chassis / "power").read_text().strip() == "1", "fired while in contact"
            wd = mesh.status("host1")["watchdog"]  # what `meshctl status` shows
            assert wd == {"declared": True, "armed": True, "feeding": True, "timeout_s": 2}

            cut = time.time()
            mesh.kill("host2")
            mesh.kill("host3")
            destroyed = _wait(lambda: not _active_domains(lv.uri), 15, "host1 destroys its domains")
            _wait(lambda: (chassis / "power").read_text().strip() == "0", 15, "it fires")
            fired = next(
                t
                for t, op, name, value in _chassis_calls(chassis)
                if (op, name) == ("set", "power")
            )
            assert agent.wait(timeout=10) == -signal.SIGKILL  # the chassis killed it
            log = mesh.log_path("host1").read_text()

        assert '"self_fenced"' in log and '"destroyed": 2' in log, log[-3000:]
        assert "watchdog_not_fed" in log and "self-fence deadline near" in log
        # The order the majority relies on: VMs gone, then the host, then the deadline.
        assert cut < destroyed < fired < cut + DEADLINE_S, (cut, destroyed, fired)
        print(
            f"domains destroyed at cut+{destroyed - cut:.2f}s, watchdog fired at cut+{fired - cut:.2f}s"
        )
        # It kept feeding while that was safe: no reset at the first missed probe.
        assert fired - cut > WATCHDOG_TIMEOUT_S + 1, (cut, fired)
    finally:
        lv.stop()


def _chassis_calls(chassis: Path) -> list[tuple[float, str, str, str]]:
    calls = []
    for line in (chassis / "chassis.log").read_text().splitlines():
        t, op, name, *value = line.split()
        calls.append((float(t), op, name, value[0] if value else ""))
    return calls
