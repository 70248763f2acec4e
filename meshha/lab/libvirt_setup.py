"""libvirtd + QEMU for the lab and the integration tests, as this machine needs them.

Three ways to get a hypervisor (facts in /work/shared/reference/environment.md):

- `await ensure_system_libvirtd()`: the host's own libvirtd (`qemu:///system`). Writes
  /etc/libvirt/qemu.conf, starts virtlogd, then libvirtd, unless one already answers.
- `PrivateLibvirtd(root)`: a system-mode libvirtd of its own, in a private mount
  namespace whose /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/log/libvirt and
  /var/cache/libvirt are directories under `root`. Its URI is
  `qemu+unix:///system?socket=ROOT/run/libvirt-sock`. One per simulated host; killing or
  restarting it disturbs nobody else on the machine. This is what the tests use.
- `prepare_embed_root(root)`: `qemu:///embed?root=ROOT`, a QEMU driver inside the calling
  process (one per process).

Both libvirtd variants run under a small supervisor (`python -m meshha.lab.libvirt_setup
supervise`) that is a child subreaper: QEMU daemonises, so its parent is the nearest
subreaper, and libvirt reports a killed QEMU only once the process has been reaped. PID 1
here reaps about every 2 s (so kill -9 -> STOPPED/FAILED took 1.5-2 s); the supervisor
reaps at once, as systemd would, and the event arrives in about 0.2 s. The supervisor
also restarts libvirtd on SIGUSR1 (`start-libvirtd`, a process checker's restart
command) and, on SIGTERM, stops libvirtd and - for a private one - kills the VMs.

    lv = PrivateLibvirtd(tmp / "lv")
    lv.start()
    await lv.wait_ready()
    conn = libvirt.open(lv.uri)
    conn.createXML(domain_xml("vm1"), 0)

From a shell:

    python -m meshha.lab.libvirt_setup system              # ensure qemu:///system
    python -m meshha.lab.libvirt_setup supervise --root R --private   # foreground
    python -m meshha.lab.libvirt_setup start-libvirtd --root R        # after a kill
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid as uuid_module
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import trio

from meshha.probes.libvirt_events import libvirt_answers

QEMU_CONF = """\
# Written by meshha.lab.libvirt_setup: QEMU runs as root without confinement, the way
# this lab machine (no systemd, no cgroups, no device namespaces) can run it.
user = "root"
group = "root"
security_driver = "none"
namespaces = []
cgroup_controllers = []
dynamic_ownership = 0
remember_owner = 0
"""
# A private libvirtd has no virtlogd of its own: QEMU's output goes straight to a file.
PRIVATE_QEMU_CONF = QEMU_CONF + 'stdio_handler = "file"\n'
PRIVATE_LIBVIRTD_CONF = """\
unix_sock_group = "root"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
"""
# Where private libvirtds keep QEMU's capability cache: probing costs ~7 s the first time
# and nothing after, and the cache depends on the binaries, not on the instance.
SHARED_CACHE_DIR = Path("/var/cache/meshha-lab/libvirt")
# in-namespace path -> directory under the private root
_PRIVATE_MOUNTS = {
    "/etc/libvirt": "etc",
    "/run/libvirt": "run",
    "/var/lib/libvirt": "lib",
    "/var/log/libvirt": "log",
}

_CLONE_NEWNS = 0x00020000
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_PR_SET_CHILD_SUBREAPER = 36


def kvm_available() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def missing_programs() -> list[str]:
    """What this machine lacks to run the lab's libvirt (for a test's skip reason)."""
    missing = [p for p in ("libvirtd", "qemu-system-x86_64") if shutil.which(p) is None]
    try:
        import libvirt  # noqa: F401
    except ImportError:
        missing.append("libvirt-python")
    return missing


def write_qemu_conf(path: Path, text: str = QEMU_CONF) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def prepare_embed_root(root: Path) -> str:
    """Make ROOT/etc/qemu.conf and return `qemu:///embed?root=ROOT`. Without that file
    QEMU gets "KVM Permission denied" and probing takes about 45 s."""
    root = Path(root).absolute()
    write_qemu_conf(root / "etc" / "qemu.conf", PRIVATE_QEMU_CONF)  # no virtlogd either
    return f"qemu:///embed?root={root}"


async def wait_libvirt(uri: str, timeout_s: float = 60.0) -> None:
    """Wait until `uri` answers (raises trio.TooSlowError)."""
    with trio.fail_after(timeout_s):
        while True:
            if await trio.to_thread.run_sync(libvirt_answers, uri):
                return
            await trio.sleep(0.05)


# -- the supervisor --------------------------------------------------------------------


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _enter_private_namespace(root: Path, cache_dir: Path) -> None:
    """Give this process a mount namespace where libvirt's directories are under root."""
    libc = _libc()
    _check(libc.unshare(_CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _check(libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "mount --make-rprivate /")
    mounts = {**{target: root / sub for target, sub in _PRIVATE_MOUNTS.items()}}
    mounts["/var/cache/libvirt"] = cache_dir
    for target, source in mounts.items():
        source.mkdir(parents=True, exist_ok=True)
        Path(target).mkdir(parents=True, exist_ok=True)  # an empty mount point
        _check(
            libc.mount(str(source).encode(), target.encode(), None, _MS_BIND, None),
            f"mount --bind {source} {target}",
        )


def _spawn(argv: list[str], log_path: Path) -> int:
    """Start argv with an empty signal mask (the supervisor blocks its signals)."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        return os.posix_spawnp(
            argv[0],
            argv,
            dict(os.environ),
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, fd, 1),
                (os.POSIX_SPAWN_DUP2, fd, 2),
            ],
            setsigmask=(),
        )
    finally:
        os.close(fd)


def _children_of(pid: int) -> list[int]:
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            children.append(int(entry))
    return children


def supervise(root: Path, *, private: bool, cache_dir: Path | None = None) -> int:
    """Run libvirtd as a child of this subreaper until SIGTERM (see the module doc)."""
    root = Path(root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    if private:
        _enter_private_namespace(root, cache_dir or SHARED_CACHE_DIR)
        write_qemu_conf(Path("/etc/libvirt/qemu.conf"), PRIVATE_QEMU_CONF)
        Path("/etc/libvirt/libvirtd.conf").write_text(PRIVATE_LIBVIRTD_CONF)
        argv = ["libvirtd", "--pid-file", "/run/libvirt/libvirtd.pid"]
    else:
        argv = ["libvirtd"]
    _check(_libc().prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0), "PR_SET_CHILD_SUBREAPER")
    watched = {signal.SIGCHLD, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)
    log_path = root / "libvirtd.log"
    libvirtd: int | None = _spawn(argv, log_path)
    (root / "supervisor.pid").write_text(f"{os.getpid()}\n")
    (root / "libvirtd.pid").write_text(f"{libvirtd}\n")
    # A start request that arrives while a killed libvirtd is not reaped yet (it may not
    # even have exited) is kept for a few seconds and honoured when it has.
    start_wanted_until = 0.0
    while True:
        info = signal.sigwaitinfo(watched)
        if info.si_signo == signal.SIGUSR1:
            start_wanted_until = time.monotonic() + 5.0
        elif info.si_signo != signal.SIGCHLD:
            _shutdown(libvirtd, kill_vms=private)
            return 0
        if libvirtd is not None and libvirtd in _reap_all():
            libvirtd = None
        if libvirtd is None and time.monotonic() < start_wanted_until:
            start_wanted_until = 0.0
            libvirtd = _spawn(argv, log_path)
            (root / "libvirtd.pid").write_text(f"{libvirtd}\n")


def _reap_all() -> set[int]:
    reaped: set[int] = set()
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped.add(pid)


def _shutdown(libvirtd: int | None, *, kill_vms: bool) -> None:
    if libvirtd is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(libvirtd, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while libvirtd not in _reap_all() and time.monotonic() < deadline:
            signal.sigtimedwait({signal.SIGCHLD}, 0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(libvirtd, signal.SIGKILL)
    if kill_vms:  # the simulated host goes away with everything it ran
        for pid in _children_of(os.getpid()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while _children_of(os.getpid()) and time.monotonic() < deadline:
        _reap_all()
        signal.sigtimedwait({signal.SIGCHLD}, 0.05)
    _reap_all()


# -- the handles the lab and tests use -------------------------------------------------


class PrivateLibvirtd:
    """A libvirtd of its own (see the module doc). Start, wait_ready, stop; kill_libvirtd
    and start_libvirtd make "libvirtd died" and "it was restarted" for real."""

    def __init__(self, root: Path, *, cache_dir: Path | None = None) -> None:
        self.root = Path(root).absolute()
        self.cache_dir = cache_dir
        socket_path = self.root / "run" / "libvirt-sock"
        if len(str(socket_path)) > 100:
            raise ValueError(f"{socket_path}: too long for a unix socket path")
        self.uri = f"qemu+unix:///system?socket={socket_path}"
        self._supervisor: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self._supervisor is None, "already started"
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "supervisor.pid").unlink(missing_ok=True)
        argv = [sys.executable, "-m", "meshha.lab.libvirt_setup", "supervise"]
        argv += ["--root", str(self.root), "--private"]
        if self.cache_dir is not None:
            argv += ["--cache-dir", str(self.cache_dir)]
        with open(self.root / "supervisor.log", "ab") as log:
            self._supervisor = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )

    async def wait_ready(self, timeout_s: float = 90.0) -> None:
        """Wait until libvirtd answers (the first start probes QEMU for about 7 s)."""
        with trio.fail_after(timeout_s):
            while not await trio.to_thread.run_sync(libvirt_answers, self.uri):
                if self._supervisor is not None and self._supervisor.poll() is not None:
                    raise RuntimeError(f"libvirt supervisor exited: {self._tail()}")
                await trio.sleep(0.05)

    def stop(self) -> None:
        """Stop libvirtd and kill this host's VMs."""
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is None:
            return
        with contextlib.suppress(ProcessLookupError):
            supervisor.terminate()
        try:
            supervisor.wait(timeout=20)
        except subprocess.TimeoutExpired:
            supervisor.kill()
            supervisor.wait(timeout=5)

    @property
    def supervisor_pid(self) -> int | None:
        return self._supervisor.pid if self._supervisor is not None else None

    def libvirtd_pid(self) -> int | None:
        try:
            pid = int((self.root / "libvirtd.pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if Path(f"/proc/{pid}").exists() else None

    def kill_libvirtd(self, sig: int = signal.SIGKILL) -> int:
        """The fault: libvirtd dies (its VMs keep running). Returns the pid killed."""
        pid = self.libvirtd_pid()
        assert pid is not None, "libvirtd is not running"
        os.kill(pid, sig)
        return pid

    def start_libvirtd(self) -> None:
        """Ask the supervisor to start libvirtd again (no-op while it runs)."""
        assert self._supervisor is not None
        os.kill(self._supervisor.pid, signal.SIGUSR1)

    def restart_command(self) -> str:
        """A restart command for meshha.probes.processes (no shell, no secrets)."""
        return f"{sys.executable} -m meshha.lab.libvirt_setup start-libvirtd --root {self.root}"

    @property
    def qemu_pidfile_glob(self) -> str:
        """Pid files of this libvirtd's QEMUs: hand to BmcSim.kill_on_power_off."""
        return str(self.root / "run" / "qemu" / "*.pid")

    def qemu_pid(self, name: str) -> int:
        return int((self.root / "run" / "qemu" / f"{name}.pid").read_text().split()[0])

    def _tail(self) -> str:
        texts = []
        for name in ("supervisor.log", "libvirtd.log"):
            with contextlib.suppress(OSError):
                texts.append((self.root / name).read_text(errors="replace")[-1500:])
        return "\n".join(texts)

    def __enter__(self) -> PrivateLibvirtd:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


async def ensure_system_libvirtd(timeout_s: float = 90.0) -> str:
    """Make `qemu:///system` answer: prepare and start virtlogd and libvirtd (under the
    reaping supervisor, detached) unless libvirtd already answers. Returns the URI."""
    uri = "qemu:///system"
    if await trio.to_thread.run_sync(libvirt_answers, uri):
        return uri
    await trio.to_thread.run_sync(_start_system_libvirtd)
    await wait_libvirt(uri, timeout_s)
    return uri


def _start_system_libvirtd() -> None:
    """Blocking preparation: dirs, users, qemu.conf, virtlogd, the detached supervisor."""
    for directory in ("/var/log/libvirt", "/run/libvirt", "/var/lib/libvirt", "/etc/libvirt"):
        Path(directory).mkdir(parents=True, exist_ok=True)
    _ensure_users()
    write_qemu_conf(Path("/etc/libvirt/qemu.conf"))
    from meshha.probes.processes import find_pids

    if not find_pids("virtlogd"):
        subprocess.run(["virtlogd", "-d"], check=True)
    root = Path("/run/meshha-lab/system-libvirtd")
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "supervisor.log", "ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "meshha.lab.libvirt_setup", "supervise", "--root", str(root)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )


def _ensure_users() -> None:
    """The QEMU driver fails to initialise without the group kvm and the user (and
    group) libvirt-qemu, even when qemu.conf says root."""
    import grp
    import pwd

    for group in ("kvm", "libvirt-qemu"):
        try:
            grp.getgrnam(group)
        except KeyError:
            subprocess.run(["groupadd", "-r", group], check=True)
    try:
        pwd.getpwnam("libvirt-qemu")
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "-r",
                "-g",
                "libvirt-qemu",
                "-G",
                "kvm",
                "-d",
                "/var/lib/libvirt",
                "-s",
                "/usr/sbin/nologin",
                "libvirt-qemu",
            ],
            check=True,
        )


# -- domain XML ------------------------------------------------------------------------


def domain_xml(
    name: str,
    *,
    uuid: str | None = None,
    memory_mib: int = 32,
    kvm: bool | None = None,
    watchdog: bool = False,
    panic: bool = False,
    nbd_socket: Path | None = None,
    nbd_export: str = "disk0",
    error_policy: str = "stop",
    on_crash: str = "destroy",
) -> str:
    """A tiny QEMU domain: diskless (or booting from an NBD disk), 1 vCPU, no display.

    KVM when /dev/kvm is usable, else TCG. `watchdog` adds an ib700 (action pause), which
    guest code arms by writing 0x0e to port 0x443; `panic` adds an ISA pvpanic at 0x505,
    which a guest write of 1 fires. `nbd_socket` attaches an NBD export over a unix
    socket as virtio disk vda with `error_policy` (stop: an I/O error pauses the VM) and
    boots from it: see meshha.lab.nbd_fault for a server and guests that use it.
    """
    if kvm is None:
        kvm = kvm_available()
    domain_uuid = uuid or str(uuid_module.uuid4())
    devices = ["    <controller type='usb' model='none'/>", "    <memballoon model='none'/>"]
    boot = ""
    if nbd_socket is not None:
        boot = "    <boot dev='hd'/>\n"
        devices.append(
            "    <disk type='network' device='disk'>\n"
            f"      <driver name='qemu' type='raw' cache='none' error_policy={quoteattr(error_policy)}/>\n"
            f"      <source protocol='nbd' name={quoteattr(nbd_export)}>\n"
            f"        <host transport='unix' socket={quoteattr(str(nbd_socket))}/>\n"
            "      </source>\n"
            "      <target dev='vda' bus='virtio'/>\n"
            "    </disk>"
        )
    if watchdog:
        devices.append("    <watchdog model='ib700' action='pause'/>")
    if panic:
        devices.append(
            "    <panic model='isa'>\n      <address type='isa' iobase='0x505'/>\n    </panic>"
        )
    return (
        f"<domain type='{'kvm' if kvm else 'qemu'}'>\n"
        f"  <name>{escape(name)}</name>\n"
        f"  <uuid>{domain_uuid}</uuid>\n"
        f"  <memory unit='MiB'>{memory_mib}</memory>\n"
        "  <vcpu>1</vcpu>\n"
        "  <os>\n"
        "    <type arch='x86_64' machine='pc'>hvm</type>\n"
        f"{boot}"
        "  </os>\n"
        "  <on_poweroff>destroy</on_poweroff>\n"
        "  <on_reboot>restart</on_reboot>\n"
        f"  <on_crash>{escape(on_crash)}</on_crash>\n"
        "  <devices>\n" + "\n".join(devices) + "\n  </devices>\n"
        "</domain>\n"
    )


# -- command line ----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meshha.lab.libvirt_setup")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("system", help="make qemu:///system answer")
    sup = commands.add_parser("supervise", help="run libvirtd under a reaping supervisor")
    sup.add_argument("--root", type=Path, required=True)
    sup.add_argument("--private", action="store_true", help="own mount namespace under ROOT")
    sup.add_argument("--cache-dir", type=Path, default=None)
    start = commands.add_parser("start-libvirtd", help="restart a supervised libvirtd")
    start.add_argument("--root", type=Path, required=True)
    start.add_argument("--timeout-s", type=float, default=30.0)
    args = parser.parse_args(argv)
    if args.command == "system":
        print(trio.run(ensure_system_libvirtd))
        return 0
    if args.command == "supervise":
        return supervise(args.root, private=args.private, cache_dir=args.cache_dir)
    root = args.root.absolute()
    os.kill(int((root / "supervisor.pid").read_text()), signal.SIGUSR1)
    uri = f"qemu+unix:///system?socket={root / 'run' / 'libvirt-sock'}"
    try:
        trio.run(wait_libvirt, uri, args.timeout_s)
    except trio.TooSlowError:
        print(f"libvirtd under {root} did not answer in {args.timeout_s}s", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
