"""One lab host: PID 1 of its own PID, mount and UTS namespaces, inside its network namespace.

`meshha-lab up` (meshha.lab.cloud) boots each host as

    ip netns exec <ns> unshare --pid --fork --mount --mount-proc --uts --kill-child=SIGKILL \\
        python -m meshha.lab.lab_host init --spec STATE/hosts/<host>/host.json

so a lab host looks like a small machine to what runs on it:

- its own process table (`/proc` is remounted): the agent's process checks see this
  host's libvirtd and nova-compute, not every one on the machine;
- its own host name (the unit's `--host %H` is the host's name);
- its own /etc/meshha, /var/lib/meshha, /run/meshha, /etc/openstack and libvirt
  directories (bind mounts of directories under STATE/hosts/<host>/): the agent runs with
  the systemd unit's argv, `meshctl status` finds /run/meshha/control.sock, and
  `qemu:///system` is this host's own libvirtd;
- its network namespace's interfaces (one per lab network) and `lo`;
- its own boot time: every lab host runs on the one kernel, whose /proc/stat `btime` never
  changes, so init writes a copy of /proc/stat whose `btime` is this host's power-on (the
  moment init starts) and bind-mounts it over /proc/stat, as LXCFS does for containers.
  The agent, unchanged, reads its host's boot time there (meshha.agent.reconcile: a host
  fenced by its BMC must have booted after the fence, or the BMC lied). The copy is a
  snapshot: its CPU counters do not move (nothing on a lab host reads them). /proc/uptime
  is left alone: meshha does not read it.

This process is the host's init, and a very small systemd: it starts the services of the
spec in order (libvirtd, then nova-compute, then meshha-agent), reaps every orphan at once
(QEMU daemonises: libvirt reports a killed guest only once it is reaped), restarts a
service whose spec says `restart` (the unit's Restart=always, RestartSec=1), and starts a
service on request (`python -m meshha.lab.lab_host restart --sock S NAME`, the agent's
`restart_command`: a running one is stopped first), the way `systemctl restart` would. Killing it kills the whole host:
the kernel SIGKILLs every process of a PID namespace whose init dies. That is what the
host's BMC does on power off (meshha.lab.chassis).

nova-compute on a lab host is a stand-in process (`python -m meshha.lab.lab_host
nova-compute`): the real nova-compute of this host runs inside the Nova box, and the
stand-in holds a lifeline to it through the lab daemon (meshha.lab.labd): while the
stand-in lives, the host's nova-compute service runs; when it dies (killed, or the host
powered off), labd stops that nova-compute for real; when it starts again, labd starts
it (after a power-on as a freshly booted hypervisor, after a plain restart keeping the
running guests).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import selectors
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_PR_SET_NAME = 15
START_TIMEOUT_S = 60.0


@dataclass
class Service:
    name: str
    argv: list[str]
    restart: bool = False
    restart_s: float = 1.0
    ready_socket: str | None = None
    again_args: list[str] = field(default_factory=list)
    pid: int | None = None
    starts: int = 0
    restart_at: float | None = None


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _mount_bind(source: str, target: str) -> None:
    Path(source).mkdir(parents=True, exist_ok=True)
    Path(target).mkdir(parents=True, exist_ok=True)
    if _libc().mount(source.encode(), target.encode(), None, _MS_BIND | _MS_REC, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount --bind {source} {target}: {os.strerror(err)}")


class Init:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.name = spec["name"]
        self.services = [Service(**s) for s in spec["services"]]
        self.log_dir = Path(spec["log_dir"])
        self.sock_path = spec["control"]
        self.env = {**os.environ, **spec.get("env", {})}
        self.stopping = False

    def log(self, msg: str) -> None:
        print(f"{time.time():.3f} {self.name} init: {msg}", flush=True)

    def prepare(self) -> None:
        socket.sethostname(self.name)
        libc = _libc()
        libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None)
        for target, source in self.spec["mounts"].items():
            _mount_bind(source, target)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.own_boot_time(int(time.time()))

    def own_boot_time(self, booted: int) -> None:
        """/proc/stat with `btime` = this host's power-on (see the module doc)."""
        text = Path("/proc/stat").read_text()
        lines = [f"btime {booted}" if ln.startswith("btime ") else ln for ln in text.splitlines()]
        copy = self.log_dir.parent / "proc-stat"
        copy.write_text("\n".join(lines) + "\n")
        if _libc().mount(str(copy).encode(), b"/proc/stat", None, _MS_BIND, None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mount --bind {copy} /proc/stat: {os.strerror(err)}")
        self.log(f"boot time (/proc/stat btime) {booted}")

    def spawn(self, svc: Service) -> None:
        argv = list(svc.argv) + (svc.again_args if svc.starts else [])
        fd = os.open(self.log_dir / f"{svc.name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            svc.pid = os.posix_spawnp(
                argv[0],
                argv,
                self.env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, fd, 1),
                    (os.POSIX_SPAWN_DUP2, fd, 2),
                ],
                setsigmask=(),
                setsid=True,
            )
        finally:
            os.close(fd)
        svc.starts += 1
        svc.restart_at = None
        self.log(f"started {svc.name} pid {svc.pid}")

    def wait_socket(self, path: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            self.reap()
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                try:
                    s.connect(path)
                    return
                except OSError:
                    pass
            time.sleep(0.05)  # noqa: TID251  # boot order: a poll with a deadline
        self.log(f"{path} did not answer in {START_TIMEOUT_S:g}s; starting the rest anyway")

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for svc in self.services:
                if svc.pid == pid:
                    svc.pid = None
                    self.log(f"{svc.name} exited ({status:#x})")
                    if svc.restart and not self.stopping:
                        svc.restart_at = time.monotonic() + svc.restart_s

    def request(self, data: bytes) -> bytes:
        words = data.decode(errors="replace").split()
        if len(words) == 2 and words[0] in ("start", "restart"):
            svc = next((s for s in self.services if s.name == words[1]), None)
            if svc is None:
                return b"error: no such service"
            if words[0] == "restart" and svc.pid is not None and not self.stop(svc):
                return f"error: {svc.name} did not stop".encode()
            if svc.pid is None:
                try:
                    self.spawn(svc)
                except OSError as e:  # its binary cannot run: say so, as systemctl would
                    self.log(f"cannot start {svc.name}: {e.strerror}")
                    return f"error: cannot start {svc.name}: {e.strerror}".encode()
            return b"ok"
        if words == ["status"]:
            return json.dumps({s.name: s.pid for s in self.services}).encode()
        return b"error: want `start NAME` or `status`"

    def run(self) -> int:
        self.prepare()
        sel = selectors.DefaultSelector()
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        signal.set_wakeup_fd(wake_w.fileno())
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.sock_path)
        ctl = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ctl.bind(self.sock_path)
        ctl.setblocking(False)
        sel.register(wake_r, selectors.EVENT_READ, "wake")
        sel.register(ctl, selectors.EVENT_READ, "ctl")
        for svc in self.services:
            self.spawn(svc)
            if svc.ready_socket:
                self.wait_socket(svc.ready_socket)
        while True:
            timeout = 0.5
            for svc in self.services:
                if svc.restart_at is not None:
                    timeout = min(timeout, max(svc.restart_at - time.monotonic(), 0))
            for key, _ in sel.select(timeout):
                if key.data == "wake":
                    signals = wake_r.recv(64)
                    if signal.SIGTERM in signals or signal.SIGINT in signals:
                        return self.shutdown()
                else:
                    with contextlib.suppress(OSError):
                        data, addr = ctl.recvfrom(256)
                        reply = self.request(data)
                        if addr:
                            ctl.sendto(reply, addr)
            self.reap()
            for svc in self.services:
                if svc.restart_at is not None and time.monotonic() >= svc.restart_at:
                    try:
                        self.spawn(svc)
                    except OSError as e:  # unrunnable for now: try again later
                        self.log(f"cannot start {svc.name}: {e.strerror}")
                        svc.restart_at = time.monotonic() + svc.restart_s

    def stop(self, svc: Service, timeout_s: float = 10.0) -> bool:
        """Stop one service (SIGTERM, SIGKILL after half the timeout), as `systemctl
        restart` does before it starts it again; True once it is gone."""
        assert svc.pid is not None
        pid = svc.pid
        deadline = time.monotonic() + timeout_s
        sig = signal.SIGTERM
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        while svc.pid == pid and time.monotonic() < deadline:
            self.reap()
            if sig == signal.SIGTERM and time.monotonic() > deadline - timeout_s / 2:
                sig = signal.SIGKILL
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            time.sleep(0.05)  # noqa: TID251  # a stop: a poll with a deadline
        svc.restart_at = None  # started again by the request, not by Restart=always
        return svc.pid != pid

    def shutdown(self) -> int:
        """A clean power-off: services in reverse order, SIGTERM then SIGKILL."""
        self.stopping = True
        for svc in reversed(self.services):
            if svc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(svc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while any(s.pid for s in self.services) and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.05)  # noqa: TID251  # shutdown: a poll with a deadline
        return 0  # init exits: the kernel kills whatever is left in the namespace


def request(sock_path: str, text: str, timeout_s: float = 10.0) -> str:
    """Ask a host's init (`start NAME`, `status`); its reply."""
    me = f"{sock_path}.{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(me)
        s.bind(me)
        try:
            s.settimeout(timeout_s)
            s.sendto(text.encode(), sock_path)
            return s.recv(4096).decode(errors="replace")
        finally:
            os.unlink(me)


def nova_compute(host: str, port: int, again: bool) -> int:
    """The stand-in: hold the lifeline to this host's nova-compute in the Nova box."""
    with contextlib.suppress(OSError):
        _libc().prctl(_PR_SET_NAME, b"nova-compute", 0, 0, 0)
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.sendall(f"{host} {'restart' if again else 'boot'}\n".encode())
    reply = s.recv(256)
    if not reply.startswith(b"ok"):
        print(f"nova-compute {host}: lifeline refused: {reply!r}", file=sys.stderr)
        return 1
    print(f"nova-compute {host}: running ({'restart' if again else 'boot'})", flush=True)
    s.settimeout(None)
    while s.recv(256):
        pass
    print(f"nova-compute {host}: the lab daemon went away", flush=True)
    return 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m meshha.lab.lab_host")
    sub = p.add_subparsers(dest="command", required=True)
    i = sub.add_parser("init")
    i.add_argument("--spec", required=True, type=Path)
    for verb in ("start", "restart"):
        s = sub.add_parser(verb)
        s.add_argument("--sock", required=True)
        s.add_argument("name")
    n = sub.add_parser("nova-compute")
    n.add_argument("--host", required=True)
    n.add_argument("--port", type=int, required=True)
    n.add_argument("--again", action="store_true")
    a = p.parse_args(argv)
    if a.command == "init":
        return Init(json.loads(a.spec.read_text())).run()
    if a.command in ("start", "restart"):
        reply = request(a.sock, f"{a.command} {a.name}", timeout_s=30.0)
        print(reply)
        return 0 if reply == "ok" else 1
    return nova_compute(a.host, a.port, a.again)


if __name__ == "__main__":
    sys.exit(main())
