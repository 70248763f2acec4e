"""The lab: a real mini-cloud assembled from meshha.lab's parts (`meshha-lab up`).

    cloud = Cloud(Path("/run/meshha-lab/cloud"))
    cloud.up(LabSpec(hosts=5, reserved=1, vms=20), say=print)
    cloud.power_off("host2"); cloud.crash_vm("host3"); cloud.status()
    cloud.down()

What `up` builds (every name with the lab's prefix, default "mhlab"; every file under the
state dir, default /run/meshha-lab/cloud; `down` removes exactly that):

- network namespaces `<prefix>-host1..N` and `<prefix>-bmc`, one bridge per network
  (admin, storage, tenant, ipmi), addresses `<subnet>.<net>.<i>` inside the namespaces
  only (meshha.lab.netns);
- on each host (meshha.lab.lab_host: PID 1 of its own PID, mount and UTS namespaces):
  its own libvirtd, a nova-compute stand-in, and `meshha-agent` started with the argv of
  config/meshha-agent.service (its /etc/meshha holds the generated segment config and
  secrets, its /etc/openstack/clouds.yaml names the Nova box);
- one `ipmi_sim` per host in the bmc namespace on `<subnet>.3.(100+i)`, port 623,
  whose power-off kills the host's init (so the kernel kills everything on it: agent,
  libvirtd, QEMU, nova-compute stand-in) and takes its links down, and whose power-on
  boots it again (`python -m meshha.lab.cloud boot`);
- real Nova (meshha.lab.nova_box --real-vms) with one nova-compute per host, each
  instance a QEMU domain on its host's libvirtd; the lab daemon (meshha.lab.labd)
  relays Nova into every host and ties each nova-compute to its stand-in;
- flavors, HA policy examples, and the VMs, booted ACTIVE over the compute hosts.

The lab's description (hosts, addresses, ports, pids) is `STATE/lab.json`; every later
command (status, fault, exec, down) works from it, so `up` can exit and leave the lab
running. Time is read only to report durations; waits are for conditions with deadlines.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from keystoneauth1.exceptions import ClientException as KeystoneClientException
from openstack.exceptions import SDKException

from meshha.agent.control import ControlError, call
from meshha.lab.bmc import BmcSim
from meshha.lab.labd import ALERT_PORT, API_PORT, LIFELINE_PORT
from meshha.lab.libvirt_setup import (
    PRIVATE_LIBVIRTD_CONF,
    PRIVATE_QEMU_CONF,
    SHARED_CACHE_DIR,
)
from meshha.lab.mesh import poll_until
from meshha.lab.netns import Lab, LabError, _in_netns, run
from meshha.lab.nova_client import NovaBox, venv_missing_reason
from meshha.lab.segment_files import write_segment
from meshha.ledger.store import Ledger

DEFAULT_STATE = Path(os.environ.get("MESHHA_LAB_STATE", "/run/meshha-lab/cloud"))
DEFAULT_PREFIX = "mhlab"
DEFAULT_SUBNET = "10.213"
NETWORKS = ("admin", "storage", "tenant", "ipmi")
ON_LOSS = {"admin": "alert", "storage": "fence_evacuate", "tenant": "live_migrate", "ipmi": "alert"}
BMC_NS_HOST = "bmc"
BMC_PORT = 623
CLOUD_NAME = "meshha-lab"
HOST_SIZE = (16, 16384, 1024)  # vcpus, ram_mb, disk_gb: what Nova can place per host
IMAGE_ID = "155d900f-4e14-4e4c-a73d-069cbf4541e6"  # one of nova's GlanceFixture images
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
FAKETIME_SITE = Path(__file__).parent / "faketime_site"


def faketime_env(clock_file: Path) -> list[str]:
    """An argv prefix running a Python program under libfaketime, its wall clock offset by
    what `clock_file` says ("+300s"), its monotonic clocks the kernel's."""
    return [
        "env",
        f"LD_PRELOAD={LIBFAKETIME}",
        f"FAKETIME_TIMESTAMP_FILE={clock_file}",
        "FAKETIME_CACHE_DURATION=1",  # re-read the offset every second
        "FAKETIME_DONT_FAKE_MONOTONIC=1",  # trio's clock stays the kernel's
        # a time.sleep that works under it (libfaketime 0.9.10 breaks Python's: see there)
        f"PYTHONPATH={FAKETIME_SITE}",
    ]


UNIT_FILE = Path(__file__).resolve().parents[2] / "config" / "meshha-agent.service"
UNIT_EXEC_START = (
    "/usr/local/bin/meshha-agent --config /etc/meshha/segment.toml --host %H"
    " --control /run/meshha/control.sock"
)
INIT_SOCK = "/run/meshha/lab-init.sock"  # inside each host (its /run/meshha)
WATCHDOG_SOCK = "/run/meshha/watchdog.sock"  # inside each host: its lab watchdog
# host path -> directory under STATE/hosts/<host>/
HOST_MOUNTS = {
    "/etc/meshha": "etc-meshha",
    "/var/lib/meshha": "var-lib-meshha",
    "/run/meshha": "run-meshha",
    "/etc/openstack": "etc-openstack",
    "/etc/libvirt": "libvirt/etc",
    "/run/libvirt": "libvirt/run",
    "/var/lib/libvirt": "libvirt/lib",
    "/var/log/libvirt": "libvirt/log",
}
# (name, vcpus, ram_mb, disk_gb, extra_specs): the lab's flavors. The HA policy examples
# in the segment config speak about them by name.
FLAVORS: tuple[tuple[str, int, int, int, dict[str, str]], ...] = (
    ("m1.ha", 1, 512, 1, {}),
    ("m1.gold", 1, 512, 1, {"meshha:priority": "high"}),
    ("m1.scratch", 1, 512, 1, {}),
)
POLICY_TOML = """
[policy]
# Nothing is protected unless a rule says so: the availability zone opts in.
default_ha = false
default_priority = "medium"
default_on_vm_failure = "restart"
vm_restart_limit = 3
vm_restart_window_s = 600.0

[[policy.rules]]
level = "availability_zone"
match = "nova"
ha = true

[[policy.rules]]
level = "flavor"
match = "m1.scratch"
ha = false

[[policy.rules]]
level = "flavor"
match = "m1.gold"
priority = "high"
"""
PROCESSES_TOML = """
[processes]
names = ["nova-compute", "libvirtd"]
check_interval_s = 1.0
restart_attempts = 3
restart_backoff_s = 0.5
restart_command = "{python} -m meshha.lab.lab_host restart --sock {sock} {{name}}"
"""
DISK_FLAVOR = "m1.disk"  # see Cloud.disk_flavor
T = TypeVar("T")
Say = Callable[[str], None]


class LabTimeout(AssertionError):
    """A lab condition did not hold before its deadline."""


def wait_until(cond: Callable[[], T | None], timeout_s: float, what: str, poll_s: float = 0.1) -> T:
    got = poll_until(cond, timeout_s, poll_s)
    if got is None:
        raise LabTimeout(f"not within {timeout_s:g}s: {what}")
    return got


# The watchdog a lab host declares, per timing profile: the example's 6 s for lan-fast,
# lan-safe's stall_grace_s for lan-safe (a longer stall is the watchdog's to end).
PROFILE_WATCHDOG_S = {"lan-fast": 6, "lan-safe": 15}


@dataclass(frozen=True)
class LabSpec:
    hosts: int = 5
    reserved: int = 1
    vms: int = 20
    prefix: str = DEFAULT_PREFIX
    subnet: str = DEFAULT_SUBNET
    # The shipped example's profile (config/segment.example.toml): the lab runs the agent
    # as shipped.
    profile: str = "lan-fast"
    timings_toml: str = ""
    # Each host's watchdog (meshha.lab.watchdog, declared in the config as the shipped
    # example declares /dev/watchdog): whole seconds; 0 declares none. 6 = the example's:
    # rides an agent stall or restart of about 5 s, and fires before lan-fast's self-fence
    # deadline (at most self_fence_deadline_s - isolation_after_s - 1 = 7). lan-safe
    # allows up to 23 and holds stalls for 15 s: `watchdog_for(profile)`.
    watchdog_s: int = 6
    # For the nemesis (meshha.lab.nemesis), off by default. agent_clock: each agent runs
    # under libfaketime reading its offset from STATE/hosts/<host>/clock (`set_clock`), so
    # a host's wall clock can be made wrong while it runs (tests/integration/
    # test_fault_clock.py does the same to loopback agents). data_fs_mb: each host's
    # /var/lib/meshha (its Raft journal and ledger) is a tmpfs of that size, so it can be
    # filled (`fill_disk`) as tests/integration/test_fault_disk.py does.
    agent_clock: bool = False
    data_fs_mb: int = 0

    def host_names(self) -> list[str]:
        return [f"host{i}" for i in range(1, self.hosts + 1)]

    def reserved_names(self) -> list[str]:
        return self.host_names()[self.hosts - self.reserved :]


@dataclass(frozen=True)
class Vm:
    id: str
    name: str
    host: str | None  # Nova's view
    status: str
    task_state: str | None
    ha: bool  # what the lab booted it as (see `vm_plan`)


def vm_plan(i: int) -> tuple[str, dict[str, str], bool]:
    """(flavor, metadata, protected?) of the lab's i-th VM (from 1): mostly protected by
    the AZ rule, every 10th unprotected by its flavor (m1.scratch), every 10th (+5) by
    Masakari's HA_Enabled=False metadata, every 3rd of the rest high priority (m1.gold),
    every 10th (+1) low priority (its `meshha:priority` metadata). Booted round-robin over
    4 compute hosts, the first two hosts each hold a high, a lower and an unprotected VM."""
    if i % 10 == 0:
        return "m1.scratch", {}, False
    if i % 10 == 5:
        return "m1.ha", {"HA_Enabled": "False"}, False
    if i % 3 == 0:
        return "m1.gold", {}, True
    if i % 10 == 1:
        return "m1.ha", {"meshha:priority": "low"}, True
    return "m1.ha", {}, True


def planned_priority(flavor: str, metadata: dict[str, str]) -> str:
    """The priority the lab's HA policy gives a VM booted with `flavor` and `metadata`."""
    return metadata.get("meshha:priority") or ("high" if flavor == "m1.gold" else "medium")


class Cloud:
    def __init__(self, state: Path = DEFAULT_STATE) -> None:
        self.state = Path(state).absolute()
        self.desc: dict[str, Any] = {}
        if (self.state / "lab.json").exists():
            self.desc = json.loads((self.state / "lab.json").read_text())

    # -- the description ---------------------------------------------------------------

    @property
    def exists(self) -> bool:
        return bool(self.desc)

    def save(self) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        tmp = self.state / "lab.json.tmp"
        tmp.write_text(json.dumps(self.desc, indent=2))
        tmp.replace(self.state / "lab.json")

    @property
    def hosts(self) -> list[str]:
        return list(self.desc["hosts"])

    @property
    def reserved(self) -> list[str]:
        return list(self.desc["reserved"])

    @property
    def computes(self) -> list[str]:
        return [h for h in self.hosts if h not in self.reserved]

    @property
    def net(self) -> Lab:
        return Lab(
            [*self.desc["hosts"], BMC_NS_HOST],
            NETWORKS,
            prefix=self.desc["prefix"],
            subnet=self.desc["subnet"],
        )

    def host_dir(self, host: str) -> Path:
        return self.state / "hosts" / host

    def libvirt_uri(self, host: str) -> str:
        return (
            f"qemu+unix:///system?socket={self.host_dir(host) / 'libvirt' / 'run' / 'libvirt-sock'}"
        )

    def control_path(self, host: str) -> Path:
        return self.host_dir(host) / "run-meshha" / "control.sock"

    def ledger_path(self, host: str) -> Path:
        return self.host_dir(host) / "var-lib-meshha" / "raft" / host / "ledger.sqlite"

    def bmc(self, host: str) -> BmcSim:
        b = self.desc["bmcs"][host]
        return BmcSim(
            host,
            self.state / "bmc" / host,
            port=b["port"],
            password_file=self.state / "config" / "secrets" / "bmc.pw",
            address=b["address"],
        )

    def box(self) -> NovaBox:
        box = NovaBox(self.hosts)
        box.ready = {
            "port": self.desc["nova"]["port"],
            "control_port": self.desc["nova"]["control_port"],
        }
        return box

    def connect(self) -> Any:
        return self.box().connect(compute_api_version="2.95")

    # -- up ----------------------------------------------------------------------------

    def up(self, spec: LabSpec, say: Say = print) -> dict[str, float]:
        """Build the lab (see the module doc); returns the seconds each step took."""
        if self.exists:
            raise LabError(
                f"a lab is already up in {self.state}: `meshha-lab down` first", kind="state"
            )
        why = venv_missing_reason()
        if why:
            raise LabError(why, kind="unsupported")
        assert 0 < spec.reserved < spec.hosts, "want at least one compute and one reserved host"
        times: dict[str, float] = {}
        t0 = time.monotonic()

        def step(name: str, t: float) -> None:
            times[name] = round(time.monotonic() - t, 2)
            say(f"  [{time.monotonic() - t0:6.1f}s] {name} ({times[name]:.1f}s)")

        hosts = spec.host_names()
        self.desc = {
            "prefix": spec.prefix,
            "subnet": spec.subnet,
            "hosts": hosts,
            "reserved": spec.reserved_names(),
            "namespaces": {},
            "made_dirs": [],
            "pids": {},
            "bmcs": {},
            "vms": [],
            "created": time.time(),
        }
        self.save()
        try:
            t = time.monotonic()
            say(f"network: {len(hosts)} hosts + bmc namespace, bridges {', '.join(NETWORKS)}")
            net = self.net.setup()
            self.desc["namespaces"] = {h: net.ns(h) for h in hosts}
            self.save()
            step("namespaces and bridges", t)

            t = time.monotonic()
            self._write_configs(spec)
            step("segment config, secrets, host filesystems", t)

            t = time.monotonic()
            say("nova: API, conductor, scheduler, placement, one nova-compute per host")
            self._start_nova()
            self._start_labd()
            step("nova in a box + lab daemon", t)

            t = time.monotonic()
            say("bmcs: one ipmi_sim per host on the ipmi network")
            self._start_bmcs()
            if spec.watchdog_s:
                self._start_watchdogs()
            step("bmcs", t)

            t = time.monotonic()
            say("hosts: libvirtd, nova-compute, meshha-agent on each")
            for h in hosts:
                self.boot(h)
            self.wait_agents(hosts, say=say)
            step("hosts booted, agents agree on a leader", t)

            t = time.monotonic()
            self._flavors()
            self.boot_vms(spec.vms, say=say)
            step(f"{spec.vms} VMs ACTIVE", t)
        except BaseException:
            say("up failed: `meshha-lab down` removes what was made")
            raise
        times["total"] = round(time.monotonic() - t0, 2)
        self.desc["up_s"] = times
        self.save()
        return times

    def _made_dir(self, path: str) -> None:
        """A mount point in the root file system that the lab creates (removed if still
        empty at `down`)."""
        p = Path(path)
        if not p.exists():
            p.mkdir(parents=True)
            self.desc["made_dirs"].append(path)

    def agent_argv(self, host: str) -> list[str]:
        """The systemd unit's ExecStart, with this environment's meshha-agent and %H."""
        exec_start = UNIT_EXEC_START
        with contextlib.suppress(OSError):
            for line in UNIT_FILE.read_text().splitlines():
                if line.startswith("ExecStart="):
                    exec_start = line.split("=", 1)[1]
        argv = shlex.split(exec_start)
        agent = Path(sys.executable).parent / "meshha-agent"
        argv[0] = str(agent) if agent.exists() else (shutil.which("meshha-agent") or argv[0])
        argv = [host if a == "%H" else a for a in argv]
        return argv  # the hypervisor URI is in the segment config, as on a real host

    def _write_configs(self, spec: LabSpec) -> None:
        net = self.net
        hosts = self.hosts
        bmcs: dict[str, dict[str, Any]] = {}
        for i, h in enumerate(hosts):
            addr = f"{spec.subnet}.{NETWORKS.index('ipmi')}.{100 + i + 1}"
            bmcs[h] = {"address": addr, "port": BMC_PORT}
        self.desc["bmcs"] = bmcs
        extra = POLICY_TOML + PROCESSES_TOML.format(python=sys.executable, sock=INIT_SOCK)
        extra += f'\n[alerts]\nwebhooks = ["http://127.0.0.1:{ALERT_PORT}/alerts"]\n'
        if spec.watchdog_s:
            extra += f'\n[watchdog]\ndevice = "{WATCHDOG_SOCK}"\ntimeout_s = {spec.watchdog_s}\n'

        config = write_segment(
            self.state / "config",
            [(h, net.addresses(h)) for h in hosts],
            name="lab",
            networks=ON_LOSS,
            reserved=self.reserved,
            profile=spec.profile,
            bmcs={h: (b["address"], b["port"]) for h, b in bmcs.items()},
            nova_cloud=CLOUD_NAME,
            extra=extra,
            # Each lab host has its own libvirtd at the default path (its own mount
            # namespace), so the shipped default URI is the right one.
            hypervisor_uri="qemu:///system",
        )
        text = config.read_text().replace('data_dir = "data"', 'data_dir = "/var/lib/meshha/raft"')
        if spec.timings_toml:
            profile = f'profile = "{spec.profile}"\n'
            text = text.replace(profile, profile + spec.timings_toml.strip() + "\n")
        config.write_text(text)
        for path in HOST_MOUNTS:
            self._made_dir(path)
        for h in hosts:
            d = self.host_dir(h)
            for sub in HOST_MOUNTS.values():
                (d / sub).mkdir(parents=True, exist_ok=True)
            (d / "logs").mkdir(exist_ok=True)
            shutil.copytree(self.state / "config", d / "etc-meshha", dirs_exist_ok=True)
            (d / "etc-openstack" / "clouds.yaml").write_text(
                json.dumps(
                    {
                        "clouds": {
                            CLOUD_NAME: {
                                "auth_type": "admin_token",
                                "auth": {
                                    "endpoint": f"http://127.0.0.1:{API_PORT}/v2.1",
                                    "token": "admin:admin",
                                },
                                "placement_endpoint_override": f"http://127.0.0.1:{API_PORT}/placement",
                            }
                        }
                    },
                    indent=2,
                )
            )
            (d / "libvirt" / "etc" / "qemu.conf").write_text(PRIVATE_QEMU_CONF)
            (d / "libvirt" / "etc" / "libvirtd.conf").write_text(PRIVATE_LIBVIRTD_CONF)
            mounts = {target: str(d / sub) for target, sub in HOST_MOUNTS.items()}
            SHARED_CACHE_DIR.mkdir(parents=True, exist_ok=True)
            mounts["/var/cache/libvirt"] = str(SHARED_CACHE_DIR)
            host_spec = {
                "name": h,
                "mounts": mounts,
                "log_dir": str(d / "logs"),
                "control": INIT_SOCK,
                "env": {"PYTHONUNBUFFERED": "1"},
                "services": [
                    {
                        "name": "libvirtd",
                        "argv": ["libvirtd", "--pid-file", "/run/libvirt/libvirtd.pid"],
                        "ready_socket": "/run/libvirt/libvirt-sock",
                    },
                    {
                        "name": "nova-compute",
                        "argv": [
                            str(self._nova_compute_bin(h)),
                            "--host",
                            h,
                            "--port",
                            str(LIFELINE_PORT),
                        ],
                        "again_args": ["--again"],
                    },
                    {
                        "name": "meshha-agent",
                        "argv": self._clock_argv(h, spec) + self.agent_argv(h),
                        "restart": True,
                        "restart_s": 1.0,
                    },
                ],
            }
            (d / "host.json").write_text(json.dumps(host_spec, indent=2))
            if spec.data_fs_mb:
                self._data_fs(h, spec.data_fs_mb)
        self.save()

    def _clock_argv(self, host: str, spec: LabSpec) -> list[str]:
        """The agent's argv prefix running it under libfaketime (LabSpec.agent_clock)."""
        if not spec.agent_clock:
            return []
        if not LIBFAKETIME.exists():
            raise LabError(f"{LIBFAKETIME} missing (apt-get install faketime)", kind="unsupported")
        self.set_clock(host, 0.0)
        return faketime_env(self.host_dir(host) / "clock")

    def set_clock(self, host: str, offset_s: float) -> None:
        """Step the wall clock of `host`'s agent by `offset_s` (needs LabSpec.agent_clock;
        seen within a second)."""
        path = self.host_dir(host) / "clock"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f"{offset_s:+.0f}s\n")
        tmp.replace(path)

    def _data_fs(self, host: str, size_mb: int) -> None:
        """A tmpfs of its own under the host's /var/lib/meshha (mounted before it boots,
        so the host's bind mount carries it; unmounted at `down`)."""
        path = self.host_dir(host) / HOST_MOUNTS["/var/lib/meshha"]
        run(
            [
                "mount",
                "-t",
                "tmpfs",
                "-o",
                f"size={size_mb}m,mode=0700",
                "meshha-lab-data",
                str(path),
            ]
        )
        self.desc.setdefault("tmpfs", []).append(str(path))

    def fill_disk(self, host: str, full: bool) -> None:
        """Fill `host`'s data filesystem with a file (LabSpec.data_fs_mb), or remove it."""
        filler = self.host_dir(host) / HOST_MOUNTS["/var/lib/meshha"] / "filler"
        if full:
            run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], check=False)
        else:
            filler.unlink(missing_ok=True)

    def _start_nova(self) -> None:
        box = NovaBox(
            self.hosts,
            size=HOST_SIZE,
            tmpdir=self.state / "nova",
            log_path=self.state / "nova.log",
            real_vms=True,
            libvirt_uris={h: self.libvirt_uri(h) for h in self.hosts},
            service_down_time_s=6,
        )
        ready = box.start()
        self.desc["nova"] = {
            "port": ready["port"],
            "control_port": ready["control_port"],
            "pid": ready["pid"],
            "startup_s": ready["startup_s"],
        }
        self.save()

    def _start_labd(self) -> None:
        log = open(self.state / "labd.log", "ab")  # noqa: SIM115 - the child keeps it
        try:
            p = subprocess.Popen(
                [sys.executable, "-m", "meshha.lab.labd", "--state", str(self.state)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()
        self.desc["labd_pid"] = p.pid
        self.save()
        assert p.stdout is not None
        line = p.stdout.readline()
        if line.strip() != b"ready":
            raise LabError(
                f"lab daemon did not start: {line!r}; see {self.state}/labd.log", kind="command"
            )
        # From now on its output goes to the log (it keeps printing lifeline events).
        p.stdout.close()

    def _start_bmcs(self) -> None:
        net = self.net
        ns = net.ns(BMC_NS_HOST)
        for h in self.hosts:
            b = self.desc["bmcs"][h]
            run(["ip", "-n", ns, "addr", "add", f"{b['address']}/24", "dev", "ipmi"])
        for h in self.hosts:
            sim = self.bmc(h)
            sim.write_config()
            # ipmi_sim runs in the bmc namespace: what its chassis program runs must
            # first get back to the root namespaces (the switch ports live there), those
            # of the lab daemon (PID 1's may not be open to us in a container).
            root = ["nsenter", "-t", str(self.desc["labd_pid"]), "-m", "-n", "--"]
            off = [[*root, "ip", "link", "set", net.veth(h, n), "down"] for n in NETWORKS]
            (sim.state_dir / "off-commands").write_text(json.dumps(off))
            boot = [sys.executable, "-m", "meshha.lab.cloud", "boot", "--state", str(self.state), h]
            sim.boot_with([*root, *boot])
            self.start_bmc(h)
        for h in self.hosts:
            addr, port = self.desc["bmcs"][h]["address"], self.desc["bmcs"][h]["port"]
            wait_until(functools.partial(bmc_answers, ns, addr, port), 15, f"{h}'s BMC answers")

    def _start_watchdogs(self) -> None:
        """One lab watchdog per host, outside the host (see meshha.lab.watchdog)."""
        from meshha.lab.watchdog import spawn

        pids = self.desc.setdefault("watchdogs", {})
        for h in self.hosts:
            sock = self.host_dir(h) / HOST_MOUNTS["/run/meshha"] / Path(WATCHDOG_SOCK).name
            bmc_dir = self.state / "bmc" / h
            pids[h] = spawn(sock, bmc_dir, bmc_dir / "watchdog.log")
        self.save()

    def start_bmc(self, host: str) -> None:
        sim = self.bmc(host)
        b = self.desc["bmcs"][host]
        argv = [sys.executable, "-m", "meshha.lab.bmc", "--name", host]
        argv += ["--state-dir", str(sim.state_dir), "--port", str(b["port"])]
        argv += ["--password-file", str(sim.password_file), "--address", b["address"]]
        with open(sim.state_dir / "ipmi_sim.log", "ab") as log:
            p = self.net.popen(
                BMC_NS_HOST,
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        b["pid"] = p.pid
        self.save()

    # -- hosts -------------------------------------------------------------------------

    def boot(self, host: str) -> int:
        """Power on: links up, the host's init started (it starts libvirtd, nova-compute and
        the agent). Registers what its BMC kills on power off. Returns the init's pid."""
        net = self.net
        net.restore_host(host)
        d = self.host_dir(host)
        argv = net.argv(
            host,
            [
                "unshare",
                "--pid",
                "--fork",
                "--mount",
                "--mount-proc",
                "--uts",
                "--kill-child=SIGKILL",
                sys.executable,
                "-m",
                "meshha.lab.lab_host",
                "init",
                "--spec",
                str(d / "host.json"),
            ],
        )
        (d / "logs").mkdir(parents=True, exist_ok=True)
        with open(d / "logs" / "init.log", "ab") as log:
            p = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        init = wait_until(lambda: _children(p.pid), 10, f"{host}'s init started")[0]
        pids = {"unshare": p.pid, "init": init}
        (d / "pids.json").write_text(json.dumps(pids))
        bmc_dir = self.state / "bmc" / host
        bmc_dir.mkdir(parents=True, exist_ok=True)
        (bmc_dir / "kill-pids").write_text(f"{init}\n{p.pid}\n")
        return init

    def host_pids(self, host: str) -> dict[str, int]:
        try:
            return dict(json.loads((self.host_dir(host) / "pids.json").read_text()))
        except (OSError, ValueError):
            return {}

    def init_pid(self, host: str) -> int | None:
        pid = self.host_pids(host).get("init")
        return pid if pid and Path(f"/proc/{pid}").exists() and not _zombie(pid) else None

    def powered_on(self, host: str) -> bool:
        return self.bmc(host).powered_on()

    def exec_argv(self, host: str, argv: Sequence[str]) -> list[str]:
        """`argv` run on `host`: in its network, PID, mount and UTS namespaces."""
        init = self.init_pid(host)
        if init is None:
            raise LabError(f"{host} is not running (powered off?)", kind="state")
        return ["nsenter", "-t", str(init), "-n", "-p", "-m", "-u", "--", *argv]

    def exec(self, host: str, argv: Sequence[str], *, check: bool = True) -> str:
        return run(self.exec_argv(host, argv), check=check)

    def wait_agents(
        self, hosts: Iterable[str], *, timeout_s: float = 60.0, say: Say | None = None
    ) -> str:
        todo = list(hosts)
        for h in todo:
            wait_until(functools.partial(self.try_status, h), timeout_s, f"{h}'s agent answers")
        leader = wait_until(lambda: self.leader(todo), timeout_s, "the agents agree on a leader")
        if say:
            say(f"  agents up on {', '.join(todo)}; leader {leader}")
        return leader

    def try_status(self, host: str, timeout_s: float = 3.0) -> dict[str, Any] | None:
        try:
            return call(self.control_path(host), {"op": "status"}, timeout_s)
        except (ControlError, OSError):
            return None

    def leader(self, among: Iterable[str] | None = None) -> str | None:
        seen = set()
        for h in among if among is not None else self.hosts:
            st = self.try_status(h)
            if st is None or not st["has_quorum"]:
                return None
            seen.add(st["leader"])
        return seen.pop() if len(seen) == 1 and None not in seen else None

    def agreed_ledger(self, hosts: Iterable[str]) -> list[dict[str, Any]] | None:
        """The entries every ledger of `hosts` holds, in index order, when they agree: no
        index with two different entries, and each holds every index up to the shortest
        one's last (ledgers are read one after the other while the segment commits, so
        "identical" is checked on the common prefix). None while they do not."""
        books = [dict(self.ledger(h)) for h in hosts]
        if not books or not all(books):
            return None
        upto = min(max(b) for b in books)
        ref = {i: e for b in books for i, e in b.items() if i <= upto}
        for b in books:
            if {i: e for i, e in b.items() if i <= upto} != ref:
                return None
        return [ref[i] for i in sorted(ref)]

    def alerts(self) -> list[dict[str, Any]]:
        """Every alert the lab's webhook sink received: {"from": host, "alert": body}."""
        path = self.state / "alerts.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def save_logs(self, into: Path) -> None:
        """Copy every host's logs and ledger, Nova's and the lab daemon's logs, the
        alerts and the lab's description into `into` (replaced): what a failed test or
        bench run leaves to read once the lab is down."""
        shutil.rmtree(into, ignore_errors=True)
        into.mkdir(parents=True)
        for h in self.hosts:
            src = self.host_dir(h) / "logs"
            if src.exists():
                shutil.copytree(src, into / h)
            # Its ledger too: what was decided, and when (meshha.ledger.store.Ledger).
            ledger = self.ledger_path(h)
            for part in (ledger, *(ledger.with_name(ledger.name + x) for x in ("-wal", "-shm"))):
                if part.exists():
                    (into / h).mkdir(parents=True, exist_ok=True)
                    shutil.copy(part, into / h / part.name)
        for name in ("nova.log", "labd.log", "alerts.jsonl", "lab.json"):
            if (self.state / name).exists():
                shutil.copy(self.state / name, into / name)

    def ledger(self, host: str) -> list[tuple[int, dict[str, Any]]]:
        path = self.ledger_path(host)
        if not path.exists():
            return []
        with Ledger(path) as led:
            return list(led.entries())

    # -- Nova --------------------------------------------------------------------------

    def _flavors(self) -> None:
        conn = self.connect()
        have = {f.name for f in conn.compute.flavors()}
        for name, vcpus, ram, disk, extra in FLAVORS:
            if name in have:
                continue
            f = conn.compute.create_flavor(name=name, vcpus=vcpus, ram=ram, disk=disk)
            if extra:
                conn.compute.create_flavor_extra_specs(f, extra)

    def boot_vms(self, n: int, say: Say = print, *, timeout_s: float = 600.0) -> list[str]:
        """Boot `n` VMs round-robin over the compute hosts; wait until all are ACTIVE."""
        conn = self.connect()
        flavors = {f.name: f.id for f in conn.compute.flavors()}
        computes = self.computes
        ids = []
        start = len(self.desc["vms"])
        for k in range(n):
            i = start + k + 1
            flavor, metadata, ha = vm_plan(i)
            host = computes[(i - 1) % len(computes)]
            s = conn.compute.create_server(
                name=f"vm{i:02d}",
                flavor_id=flavors[flavor],
                image_id=IMAGE_ID,
                networks="none",
                host=host,
                metadata=metadata,
            )
            ids.append(s.id)
            self.desc["vms"].append(
                {"id": s.id, "name": f"vm{i:02d}", "ha": ha, "flavor": flavor, "metadata": metadata}
            )
        self.save()
        shown = [-1]

        def all_active() -> bool:
            try:
                listed = list(conn.compute.servers(details=True, all_projects=True))
            except (SDKException, KeystoneClientException) as e:
                # A loaded box can miss the client's 10 s read timeout while it boots
                # the VMs: a listing that timed out is not an answer, ask again.
                say(f"  (listing servers: {type(e).__name__}; asking again)")
                return False
            servers = {s.id: s for s in listed}
            states = [servers[i].status if i in servers else "?" for i in ids]
            if "ERROR" in states:
                bad = [servers[i].fault for i in ids if servers[i].status == "ERROR"]
                raise LabError(f"VMs in ERROR: {bad}", kind="state")
            active = states.count("ACTIVE")
            if active != shown[0]:
                shown[0] = active
                say(f"  VMs ACTIVE: {active}/{len(ids)}")
            return active == len(ids)

        wait_until(all_active, timeout_s, f"{n} VMs ACTIVE", poll_s=0.5)
        return ids

    def vms(self) -> list[Vm]:
        conn = self.connect()
        booted = {v["id"]: v for v in self.desc["vms"]}
        out = []
        for s in conn.compute.servers(details=True, all_projects=True):
            if s.id in booted:
                out.append(
                    Vm(s.id, s.name, s.compute_host, s.status, s.task_state, booted[s.id]["ha"])
                )
        return sorted(out, key=lambda v: v.name)

    def domains(self) -> dict[str, list[str]]:
        """{instance uuid: [hosts where its QEMU process runs]}: the ground truth, from the
        process table (every QEMU of every lab host, frozen ones included)."""
        netns_of = {}
        for h in self.hosts:
            with contextlib.suppress(OSError):
                netns_of[os.stat(f"/run/netns/{self.desc['namespaces'][h]}").st_ino] = h
        found: dict[str, list[str]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                ino = os.stat(f"/proc/{entry.name}/ns/net").st_ino
                if ino not in netns_of:
                    continue
                argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            uuid = _qemu_uuid(argv)
            if uuid is not None:
                found.setdefault(uuid, []).append(netns_of[ino])
        return found

    # -- faults ------------------------------------------------------------------------

    def ipmitool(self, host: str, *args: str) -> str:
        b = self.desc["bmcs"][host]
        argv = ["ipmitool", "-I", "lanplus", "-C", "3", "-H", b["address"], "-p", str(b["port"])]
        argv += ["-U", "admin", "-f", str(self.state / "config" / "secrets" / "bmc.pw"), *args]
        return self.net.exec(BMC_NS_HOST, argv).strip()

    def power_off(self, host: str) -> float:
        """Through the host's BMC, as an operator would (ipmitool). Returns the time."""
        t = time.time()
        self.ipmitool(host, "chassis", "power", "off")
        return t

    def power_on(self, host: str) -> float:
        t = time.time()
        self.ipmitool(host, "chassis", "power", "on")
        return t

    def host_netns_pids(self, host: str) -> list[int]:
        out = run(["ip", "netns", "pids", self.desc["namespaces"][host]], check=False)
        return [int(w) for w in out.split() if w.isdigit()]

    def hang(self, host: str) -> float:
        """Freeze every process of the host (SIGSTOP): links up, nothing answers."""
        t = time.time()
        for pid in self.host_netns_pids(host):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        return t

    def resume(self, host: str) -> None:
        for pid in self.host_netns_pids(host):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def qemu_pid(self, host: str, uuid: str) -> int | None:
        ino = os.stat(f"/run/netns/{self.desc['namespaces'][host]}").st_ino
        for pid in self.host_netns_pids(host):
            with contextlib.suppress(OSError):
                if os.stat(f"/proc/{pid}/ns/net").st_ino != ino:
                    continue
                if _qemu_uuid(Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")) == uuid:
                    return pid
        return None

    def pick_vm(self, host: str, vm: str | None = None, *, ha: bool = True) -> Vm:
        vms = self.vms()
        if vm:
            for v in vms:
                if vm in (v.id, v.name):
                    return v
            raise LabError(f"no VM {vm!r}", kind="state")
        for v in vms:
            if v.host == host and v.ha == ha and v.status == "ACTIVE":
                return v
        raise LabError(f"no ACTIVE {'HA' if ha else 'non-HA'} VM on {host}", kind="state")

    def crash_vm(self, host: str, vm: str | None = None) -> tuple[Vm, float]:
        """kill -9 the VM's QEMU (a crashed guest)."""
        v = self.pick_vm(host, vm)
        pid = self.qemu_pid(host, v.id)
        if pid is None:
            raise LabError(f"{v.name} has no QEMU running on {host}", kind="state")
        t = time.time()
        os.kill(pid, signal.SIGKILL)
        return v, t

    def kill_process(self, host: str, name: str) -> list[int]:
        """kill -9 every process of the host called `name` (libvirtd, nova-compute,
        meshha-agent)."""
        out = self.exec(host, ["pgrep", "-f", name], check=False)
        own = {os.getpid()}
        pids = [int(w) for w in out.split() if w.isdigit() and int(w) not in own]
        killed = []
        for p in pids:
            comm = self.exec(host, ["cat", f"/proc/{p}/cmdline"], check=False).replace("\0", " ")
            if name in comm and "pgrep" not in comm and "nsenter" not in comm:
                self.exec(host, ["kill", "-9", str(p)], check=False)
                killed.append(p)
        return killed

    def cut_net(self, host: str, network: str) -> None:
        self.net.cut(host, network)

    def restore_net(self, host: str, network: str) -> None:
        self.net.restore(host, network)

    def partition(self, groups: Sequence[Sequence[str]]) -> None:
        self.net.partition(groups)

    def heal(self) -> None:
        self.net.heal()

    def bmc_dead(self, host: str) -> None:
        pid = self.desc["bmcs"][host].get("pid")
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)

    def bmc_hang(self, host: str) -> None:
        pid = self.desc["bmcs"][host].get("pid")
        if pid:
            os.kill(pid, signal.SIGSTOP)

    def bmc_lie(self, host: str, lying: bool) -> None:
        """The host's BMC lies: a power-off through it is read back off, nothing happens."""
        self.bmc(host).set_lying(lying)

    def bmc_alive(self, host: str) -> None:
        pid = self.desc["bmcs"][host].get("pid")
        if pid and Path(f"/proc/{pid}").exists() and not _zombie(pid):
            os.kill(pid, signal.SIGCONT)
        else:
            self.start_bmc(host)
            b = self.desc["bmcs"][host]
            ns = self.net.ns(BMC_NS_HOST)
            wait_until(
                lambda: bmc_answers(ns, b["address"], b["port"]), 15, f"{host}'s BMC answers"
            )

    # -- faults: processes that cannot start, VM disks and guest watchdogs --------------

    def _nova_compute_bin(self, host: str) -> Path:
        """The host's nova-compute executable (its own file, so that `break_process` can
        make it unrunnable on that host alone): runs the stand-in (meshha.lab.lab_host)."""
        path = self.host_dir(host) / "bin" / "nova-compute"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"#!{sys.executable}\nimport sys\nfrom meshha.lab.lab_host import main\n"
            'sys.exit(main(["nova-compute", *sys.argv[1:]]))\n'
        )
        path.chmod(0o755)
        return path

    def _executable(self, host: str, name: str) -> str:
        if name == "nova-compute":
            return str(self.host_dir(host) / "bin" / "nova-compute")
        found = shutil.which(name)
        if found is None:
            raise LabError(f"no executable {name!r}", kind="state")
        return os.path.realpath(found)

    def break_process(self, host: str, name: str) -> None:
        """Make `name` (libvirtd, nova-compute) unrunnable on `host` alone: an empty,
        non-executable file bind-mounted over its executable in the host's own mount
        namespace (a corrupt binary; exec fails with EACCES). Restarts then fail at once,
        as `systemctl restart` of a unit that cannot exec does. `repair_process` undoes
        it; a power cycle does too (a new mount namespace)."""
        empty = self.host_dir(host) / "unrunnable"
        empty.write_bytes(b"")
        empty.chmod(0o644)
        self.exec(host, ["mount", "--bind", str(empty), self._executable(host, name)])

    def repair_process(self, host: str, name: str) -> None:
        self.exec(host, ["umount", self._executable(host, name)], check=False)

    def storage_socket(self) -> Path:
        """The lab's shared VM storage (meshha.lab.nbd_fault --dir): started on first use,
        in the bmc namespace (so `down` removes it with the namespaces); its unix socket
        is reachable from every host's QEMU."""
        d = self.state / "storage"
        sock = d / "nbd.sock"
        pid = self.desc.get("storage_pid")
        if pid and Path(f"/proc/{pid}").exists() and not _zombie(pid):
            return sock
        d.mkdir(parents=True, exist_ok=True)
        with open(d / "nbd.log", "ab") as log:
            p = self.net.popen(
                BMC_NS_HOST,
                [sys.executable, "-m", "meshha.lab.nbd_fault", "--dir", str(d)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self.desc["storage_pid"] = p.pid
        self.save()
        wait_until(lambda: sock.exists() or None, 15, "the lab's VM storage listens")
        return sock

    def disk_flavor(self, name: str = DISK_FLAVOR, watchdog_action: str = "pause") -> str:
        """A flavor whose VMs boot from a disk on the lab's storage and have a watchdog
        (`hw:watchdog_action`, as Nova's libvirt driver honours it); its id."""
        sock = self.storage_socket()
        conn = self.connect()
        for f in conn.compute.flavors():
            if f.name == name:
                return str(f.id)
        f = conn.compute.create_flavor(name=name, vcpus=1, ram=512, disk=1)
        specs = {"hw:watchdog_action": watchdog_action, "meshha-lab:nbd_socket": str(sock)}
        conn.compute.create_flavor_extra_specs(f, specs)
        return str(f.id)

    def boot_vm(
        self, name: str, host: str, flavor: str, metadata: dict[str, str] | None = None
    ) -> Vm:
        """One more VM, booted ACTIVE on `host` (protected by the lab's AZ rule unless its
        flavor or metadata say otherwise)."""
        conn = self.connect()
        flavors = {f.name: f.id for f in conn.compute.flavors()}
        s = conn.compute.create_server(
            name=name,
            flavor_id=flavors[flavor],
            image_id=IMAGE_ID,
            networks="none",
            host=host,
            metadata=metadata or {},
        )
        ha = flavor != "m1.scratch" and (metadata or {}).get("HA_Enabled") != "False"
        self.desc["vms"].append(
            {"id": s.id, "name": name, "ha": ha, "flavor": flavor, "metadata": metadata or {}}
        )
        self.save()

        def active() -> Vm | None:
            v = next((v for v in self.vms() if v.id == s.id), None)
            if v is not None and v.status == "ERROR":
                raise LabError(f"{name} in ERROR", kind="state")
            return v if v is not None and v.status == "ACTIVE" else None

        return wait_until(active, 120, f"{name} ACTIVE", poll_s=0.3)

    def disk_vm(self, host: str, vm: str | None = None) -> Vm:
        """`vm`, or a VM booting from the lab's storage on `host` (one booted if none)."""
        if vm:
            return self.pick_vm(host, vm)
        disk = {v["id"] for v in self.desc["vms"] if v["flavor"] == DISK_FLAVOR}
        for v in self.vms():
            if v.id in disk and v.host == host and v.status == "ACTIVE":
                return v
        self.disk_flavor()
        return self.boot_vm(f"vm-disk-{host}-{len(self.desc['vms']) + 1}", host, DISK_FLAVOR)

    def io_error(self, host: str, vm: str | None = None, fault: str = "enospc") -> tuple[Vm, float]:
        """The VM's disk fails its next write with `fault` (enospc: the storage is full;
        QEMU's default policy pauses the guest on it) once: a transient storage error.
        The VM must boot from the lab's storage (`disk_flavor`)."""
        v = self.pick_vm(host, vm)
        t = time.time()
        (self.state / "storage" / f"{v.id}.fault").write_text(f"{fault} write once\n")
        return v, t

    def guest_watchdog(self, host: str, vm: str | None = None) -> tuple[Vm, float]:
        """The VM's guest arms its watchdog and stops kicking it (it fires 2 s later;
        `disk_flavor` VMs only)."""
        v = self.pick_vm(host, vm)
        t = time.time()
        (self.state / "storage" / f"{v.id}.mailbox").write_bytes(b"W")
        return v, t

    def storage_hit(self, vm: str, switch: str) -> float | None:
        """When the VM's one-shot `switch` ("fault", "mailbox") took effect on the lab's
        storage (the failed write, the guest's read of its mailbox), if it has."""
        try:
            return float((self.state / "storage" / f"{vm}.{switch}.hit").read_text())
        except (OSError, ValueError):
            return None

    def domain_state(self, host: str, vm: str) -> str:
        """`virsh domstate --reason` of the VM's domain on `host`'s libvirt ("" if none)."""
        p = subprocess.run(
            ["virsh", "-c", self.libvirt_uri(host), "domstate", "--reason", f"meshha-{host}-{vm}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return p.stdout.strip() if p.returncode == 0 else ""

    # -- down --------------------------------------------------------------------------

    def down(self, say: Say = print) -> None:
        """Remove everything this lab made (idempotent; a half-built lab too)."""
        if not self.exists:
            say(f"no lab in {self.state}")
            return
        for pid in self.desc.get("watchdogs", {}).values():  # first: they power hosts off
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for h in self.hosts:
            pids = self.host_pids(h)
            for pid in (pids.get("init"), pids.get("unshare")):
                if pid:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGCONT)
                        os.kill(pid, signal.SIGKILL)
        for b in self.desc.get("bmcs", {}).values():
            if b.get("pid"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(b["pid"], signal.SIGKILL)
        if self.desc.get("labd_pid"):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.desc["labd_pid"], signal.SIGKILL)
        nova = self.desc.get("nova", {})
        if nova.get("pid"):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(nova["pid"], signal.SIGKILL)
        if self.desc.get("namespaces") or self.desc.get("prefix"):
            self.net.teardown()  # kills what is left in the namespaces, deletes links
        for path in self.desc.get("tmpfs", []):
            run(["umount", "-l", path], check=False)
        for d in reversed(self.desc.get("made_dirs", [])):
            if mounted_elsewhere(d):
                continue  # another lab's host mounts it: removing it would unmount it there
            with contextlib.suppress(OSError):
                os.rmdir(d)  # only if still empty
        shutil.rmtree(self.state, ignore_errors=True)
        self.desc = {}
        say("lab removed")


# -- helpers -------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(w) for w in text.split()]


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def mounted_elsewhere(path: str) -> bool:
    """Whether `path` is a mount point in another mount namespace: a host of another lab
    on this machine (they share the mount points /etc/meshha, /run/meshha, ...). Removing
    the directory here would detach that mount there too (Linux detaches the mounts on a
    removed directory in every namespace): its agent's control socket, config and data
    would vanish under it."""
    seen = {os.stat("/proc/self/ns/mnt").st_ino}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            ino = os.stat(f"/proc/{entry.name}/ns/mnt").st_ino
            if ino in seen:
                continue
            seen.add(ino)
            mounts = Path(f"/proc/{entry.name}/mountinfo").read_text()
        except OSError:
            continue
        for line in mounts.splitlines():
            fields = line.split(" ")
            # mountinfo escapes space, tab, newline and backslash as octal (\040 ...)
            if len(fields) > 4 and fields[4].encode().decode("unicode_escape") == path:
                return True
    return False


def _qemu_uuid(argv: list[bytes]) -> str | None:
    """The instance uuid of a lab QEMU (domain `meshha-<host>-<uuid>`), from its argv."""
    if not argv or b"qemu-system" not in argv[0]:
        return None
    for a in argv:
        if a.startswith(b"guest=meshha-"):
            name = a.split(b",", 1)[0][len(b"guest=") :].decode()
            return name[-36:]
    return None


_ASF_PING = bytes([0x06, 0x00, 0xFF, 0x06, 0x00, 0x00, 0x11, 0xBE, 0x80, 0x42, 0x00, 0x00])


def bmc_answers(ns: str, address: str, port: int, timeout_s: float = 0.3) -> bool:
    """An RMCP presence ping from inside namespace `ns` is answered."""

    def ping() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout_s)
            try:
                s.sendto(_ASF_PING, (address, port))
                data = s.recv(512)
            except OSError:
                return False
            return len(data) > 8 and data[8] == 0x40

    return bool(_in_netns(ns, ping))


def main(argv: list[str] | None = None) -> int:
    """`python -m meshha.lab.cloud boot --state S HOST`: what a BMC power-on runs."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m meshha.lab.cloud")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("boot")
    b.add_argument("--state", type=Path, required=True)
    b.add_argument("host")
    a = p.parse_args(argv)
    Cloud(a.state).boot(a.host)
    return 0


if __name__ == "__main__":
    sys.exit(main())
