"""End to end: four real agents, an ipmi_sim BMC per host and a real Nova, no dry run.

The "host" of each agent is its process: its BMC's power-off SIGKILLs it. host4 is the
reserved host. Four servers are booted on host2, one of them `HA_Enabled=False`; then
host2 dies (its agent SIGKILLed, its addresses silent: Mesh.kill; its nova-compute stopped
for real). Proves:

- with a working BMC: the leader commits `failed` for host2, fences it through the BMC
  (ipmitool, a second client, sees the chassis off), forces down and disables its
  nova-compute, takes an inventory and evacuates every HA server once onto host4, where
  it is ACTIVE with no task state; the non-HA server stays where it was; the three live
  ledgers hold the same entries, intents and their ok results included;
- with a dead BMC: the fence fails, "cannot fence host2" is alerted, nothing is evacuated
  before the self-fence deadline has passed, and everything is evacuated after it. The
  deadline is a proof only because host2's config declares a hypervisor (its own private
  libvirtd) and a watchdog (meshha.lab.watchdog on its chassis, which works without the
  BMC, as a mainboard watchdog does): the dead agent stops feeding it, and it powers
  host2 off before the deadline.

Skipped, with the reason, where ipmi_sim, ipmitool or the nova venv are missing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from meshha.lab.bmc import BmcSim, free_udp_port
from meshha.lab.libvirt_setup import PrivateLibvirtd
from meshha.lab.mesh import NETWORKS, ON_LOSS, Mesh
from meshha.lab.nova_client import NovaBox, venv_missing_reason
from meshha.lab.segment_files import write_segment
from tests.conftest_nova import IMAGE_ID, TINY_FLAVOR_ID, action_names

HOSTS = ("host1", "host2", "host3", "host4")
RESERVED = "host4"
VICTIM = "host2"
LIVE = ("host1", "host3", "host4")
CLOUD = "meshha-e2e"
HOST_SIZE = (16, 16384, 1024)  # vcpus, ram_mb, disk_gb
# The dead BMC fails after 3 attempts of about 4.6 s each (pyghmi's own give-up); the
# self-fence deadline must come after that for "cannot fence" to be alerted first.
DEAD_BMC_SELF_FENCE_DEADLINE_S = 25.0

# The agents' "hosts" run no nova-compute or libvirtd of their own (Nova runs in the box):
# with the default process checks every agent would find both missing, fail to restart
# them and disable its own nova-compute, the reserved host4 included.
NO_PROCESS_CHECKS = "[processes]\nnames = []\n"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("ipmi_sim") is None, reason="ipmi_sim (openipmi) missing"),
    pytest.mark.skipif(shutil.which("ipmitool") is None, reason="ipmitool missing"),
    pytest.mark.skipif(venv_missing_reason() is not None, reason=str(venv_missing_reason())),
]


class NovaMesh(Mesh):
    """A Mesh whose agents act for real: BMCs and Nova in the segment, clouds.yaml in the
    agents' environment."""

    def __init__(
        self,
        workdir: Path,
        *,
        bmc_ports: dict[str, int],
        clouds_yaml: Path,
        timings: str = "",
        host_toml: dict[str, str] | None = None,
    ) -> None:
        super().__init__(workdir, HOSTS, reserved=[RESERVED])
        self.config = write_segment(
            self.workdir / "config",
            [(h, self.addrs[h]) for h in self.hosts],
            networks={n: ON_LOSS[n] for n in NETWORKS},
            reserved=[RESERVED],
            raft_port=self.raft_port,
            probe_port0=self.probe_port0,
            bmcs={h: ("127.0.0.1", p) for h, p in bmc_ports.items()},
            nova_cloud=CLOUD,
        )
        text = self.config.read_text()
        if "[processes]" not in text:
            text += NO_PROCESS_CHECKS
        if timings:  # overrides go into the [timings] table write_segment wrote
            profile = 'profile = "lan-fast"\n'
            assert text.count(profile) == 1
            text = text.replace(profile, profile + timings.strip() + "\n")
        for host, tables in (host_toml or {}).items():  # before the next [[hosts]]
            start = text.index(f'[[hosts]]\nname = "{host}"')
            end = text.index("[[hosts]]", start + 1)
            text = text[:end] + tables + "\n" + text[end:]
        self.config.write_text(text)
        self.bmc_password_file = self.workdir / "config" / "secrets" / "bmc.pw"
        self.env = {**os.environ, "OS_CLIENT_CONFIG_FILE": str(clouds_yaml)}

    def spawn(self, host: str) -> subprocess.Popen[bytes]:
        assert not self.running(host), f"{host} is already running"
        out = open(self.log_path(host), "ab")  # noqa: SIM115 - the child keeps it
        try:
            p = subprocess.Popen(
                self.agent_argv(host), stdout=out, stderr=subprocess.STDOUT, env=self.env
            )
        finally:
            out.close()
        self.procs[host] = p
        self.exit_codes.pop(host, None)
        return p


class Lab:
    def __init__(self, mesh: NovaMesh, box: NovaBox, conn: Any, sims: dict[str, BmcSim]):
        self.mesh, self.box, self.conn, self.sims = mesh, box, conn, sims


@contextlib.contextmanager
def running_lab(
    workdir: Path,
    *,
    dead_bmcs: tuple[str, ...] = (),
    timings: str = "",
    self_fence: tuple[str, ...] = (),
) -> Iterator[Lab]:
    """Nova box, BMCs (those in `dead_bmcs` point at a port nothing listens on) and the
    four agents; the hosts in `self_fence` declare a hypervisor (a private libvirtd) and
    a lab watchdog on their chassis. Everything is stopped on the way out."""
    with contextlib.ExitStack() as stack:
        host_toml = {h: _self_fence_kit(stack, workdir, h) for h in self_fence}
        box = NovaBox(
            list(HOSTS), size=HOST_SIZE, tmpdir=workdir / "nova", log_path=workdir / "nova.log"
        )
        stack.callback(box.close)
        box.start()
        clouds = workdir / "clouds.yaml"
        clouds.write_text(box.clouds_yaml(CLOUD))
        ports = {h: free_udp_port() for h in HOSTS}
        mesh = NovaMesh(
            workdir / "mesh",
            bmc_ports=ports,
            clouds_yaml=clouds,
            timings=timings,
            host_toml=host_toml,
        )
        stack.callback(mesh.close)
        sims = {}
        for h in HOSTS:
            if h in dead_bmcs:
                continue
            sim = BmcSim(
                h, workdir / "bmc" / h, port=ports[h], password_file=mesh.bmc_password_file
            )
            stack.callback(sim.stop)
            sim.start()
            sims[h] = sim
        for sim in sims.values():
            trio.run(sim.wait_ready)
        mesh.start(timeout_s=40)
        for h, sim in sims.items():
            sim.kill_on_power_off(pids=[mesh.pid(h)])  # the agent process is the host
        for h in self_fence:
            with open(workdir / "bmc" / h / "kill-pids", "a") as f:
                f.write(f"{mesh.pid(h)}\n")
        yield Lab(mesh, box, box.connect(compute_api_version="2.95"), sims)


WATCHDOG_TIMEOUT_S = 5


def _self_fence_kit(stack: contextlib.ExitStack, workdir: Path, host: str) -> str:
    """A private libvirtd and a lab watchdog (its own process, firing the chassis program
    in workdir/bmc/HOST, which works whether or not its ipmi_sim runs) for `host`; the
    [hosts.*] tables that declare them."""
    short = Path(tempfile.mkdtemp(prefix="mh-e2e-", dir="/tmp"))  # unix socket paths
    stack.callback(shutil.rmtree, short, ignore_errors=True)
    lv = PrivateLibvirtd(short / "lv")
    stack.callback(lv.stop)
    lv.start()
    trio.run(lv.wait_ready)
    chassis = workdir / "bmc" / host
    chassis.mkdir(parents=True, exist_ok=True)
    (chassis / "power").write_text("1\n")
    (chassis / "kill-pidfiles").write_text(lv.qemu_pidfile_glob + "\n")
    sock = short / "wd.sock"
    argv = [sys.executable, "-m", "meshha.lab.watchdog", "--socket", str(sock)]
    argv += ["--chassis-dir", str(chassis)]
    wd = subprocess.Popen(argv, start_new_session=True)
    stack.callback(wd.wait, 10)
    stack.callback(wd.terminate)
    deadline = time.monotonic() + 20
    while not sock.exists():
        assert time.monotonic() < deadline and wd.poll() is None, "lab watchdog did not start"
        time.sleep(0.05)  # noqa: TID251 - polling for another process's socket
    return (
        f'[hosts.hypervisor]\nuri = "{lv.uri}"\n'
        f'[hosts.watchdog]\ndevice = "{sock}"\ntimeout_s = {WATCHDOG_TIMEOUT_S}\n'
    )


def watchdog_fired_at(workdir: Path, host: str) -> float | None:
    """When `host`'s chassis was powered off (chassis.log), or None."""
    log = workdir / "bmc" / host / "chassis.log"
    for line in log.read_text().splitlines() if log.exists() else []:
        t, op, name, *value = line.split()
        if (op, name, value) == ("set", "power", ["0"]):
            return float(t)
    return None


# -- helpers ------------------------------------------------------------------------------


def boot(lab: Lab, names: list[str], host: str, metadata: dict[str, str]) -> list[str]:
    conn = lab.conn
    ids = [
        conn.compute.create_server(
            name=n,
            flavor_id=TINY_FLAVOR_ID,
            image_id=IMAGE_ID,
            networks="none",
            host=host,
            metadata=metadata,
        ).id
        for n in names
    ]

    def active() -> bool:
        states = [conn.compute.get_server(i).status for i in ids]
        assert "ERROR" not in states, states
        return all(s == "ACTIVE" for s in states)

    lab.mesh.wait_until(active, 60, f"{names} ACTIVE on {host}", poll_s=0.1)
    return ids


def boot_workload(lab: Lab) -> tuple[list[str], str]:
    ha = boot(lab, ["ha-1", "ha-2", "ha-3"], VICTIM, {"HA_Enabled": "True"})
    (non_ha,) = boot(lab, ["not-ha"], VICTIM, {"HA_Enabled": "False"})
    return ha, non_ha


def kill_host(lab: Lab, host: str) -> float:
    t = lab.mesh.kill(host)
    lab.box.stop_compute(host)
    return t


def entries(lab: Lab, host: str) -> list[dict[str, Any]]:
    return [e for _, e in lab.mesh.ledger(host)]


def leader_ledger_has(lab: Lab, pred: Any) -> dict[str, Any] | None:
    leader = lab.mesh.leader(LIVE)
    if leader is None:
        return None
    return next((e for e in entries(lab, leader) if pred(e)), None)


def results(book: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["intent"]: e for e in book if e["kind"] == "result"}


def intents(book: list[dict[str, Any]], action: str) -> list[dict[str, Any]]:
    return [e for e in book if e["kind"] == "intent" and e["action"] == action]


def ipmitool_power(lab: Lab, host: str) -> str:
    """`chassis power status` from ipmitool, a second IPMI client; password by -f FILE."""
    sim = lab.sims[host]
    argv = ["ipmitool", "-I", "lanplus", "-C", "3", "-H", sim.address, "-p", str(sim.port)]
    argv += ["-U", "admin", "-f", str(lab.mesh.bmc_password_file), "chassis", "power", "status"]
    return subprocess.run(
        argv, capture_output=True, timeout=15, check=True, text=True
    ).stdout.strip()


def service(lab: Lab, host: str) -> Any:
    return next(
        s for s in lab.conn.compute.services() if s.host == host and s.binary == "nova-compute"
    )


def evacuated(lab: Lab, ids: list[str], target: str) -> bool:
    servers = [lab.conn.compute.get_server(i) for i in ids]
    return all(
        s.compute_host == target and s.task_state is None and s.status == "ACTIVE" for s in servers
    )


def assert_evacuated_once(lab: Lab, ha: list[str], non_ha: str) -> None:
    for i in ha:
        s = lab.conn.compute.get_server(i)
        assert (s.compute_host, s.status, s.task_state) == (RESERVED, "ACTIVE", None)
        assert action_names(lab.conn, i).count("evacuate") == 1, action_names(lab.conn, i)
    s = lab.conn.compute.get_server(non_ha)
    assert s.compute_host == VICTIM
    assert "evacuate" not in action_names(lab.conn, non_ha)


def assert_ledgers_agree(lab: Lab, ha: list[str]) -> list[dict[str, Any]]:
    """The live ledgers are identical and hold every step with its ok result."""

    def complete() -> dict[int, dict[str, Any]] | None:
        # Nova shows a server ACTIVE on the target a poll interval before the executor
        # commits the evacuation's result: wait for the results, not for Nova.
        book = lab.mesh.wait_ledgers_equal(LIVE, timeout_s=15)
        rows = [book[i] for i in sorted(book)]
        done = results(rows)
        evac = [e for e in intents(rows, "evacuate") if e["host"] == VICTIM]
        return book if len(evac) >= len(ha) and all(e["intent"] in done for e in evac) else None

    book = lab.mesh.wait_until(
        complete, 30, "every evacuation's result committed on the live hosts"
    )
    rows = [book[i] for i in sorted(book)]
    done = results(rows)
    for action in ("disable_compute", "inventory"):
        mine = [e for e in intents(rows, action) if e["host"] == VICTIM]
        assert mine and done[mine[-1]["intent"]]["outcome"] == "ok", (action, mine)
    evac = [e for e in intents(rows, "evacuate") if e["host"] == VICTIM]
    assert sorted(e["vm"] for e in evac) == sorted(ha), evac
    assert {e["target"] for e in evac} == {RESERVED}
    assert all(done[e["intent"]]["outcome"] == "ok" for e in evac)
    return rows


# -- the tests ----------------------------------------------------------------------------


def test_host_power_loss_fenced_by_bmc_and_evacuated_once(tmp_path: Path) -> None:
    with running_lab(tmp_path) as lab:
        ha, non_ha = boot_workload(lab)
        assert ipmitool_power(lab, VICTIM) == "Chassis Power is on"

        kill_host(lab, VICTIM)

        lab.mesh.wait_until(
            lambda: leader_ledger_has(
                lab,
                lambda e: (
                    e["kind"] == "verdict" and e["host"] == VICTIM and e["verdict"] == "failed"
                ),
            ),
            15,
            "the leader commits failed for host2",
        )
        lab.mesh.wait_until(
            lambda: evacuated(lab, ha, RESERVED), 60, "HA servers ACTIVE on host4", poll_s=0.2
        )
        assert not lab.sims[VICTIM].powered_on()
        assert ipmitool_power(lab, VICTIM) == "Chassis Power is off"
        svc = service(lab, VICTIM)
        assert svc.is_forced_down and svc.status == "disabled", svc
        assert_evacuated_once(lab, ha, non_ha)

        rows = assert_ledgers_agree(lab, ha)
        fence = [e for e in intents(rows, "fence") if e["host"] == VICTIM]
        assert len(fence) == 1, fence
        done = results(rows)[fence[0]["intent"]]
        assert done["outcome"] == "ok" and done["data"]["method"] == "bmc", done
        assert "BMC reports host2 powered off" in done["detail"]
        assert all(lab.sims[h].powered_on() for h in LIVE)  # nobody else was fenced
        # Besides the reserve kept empty in Nova (holds, and the release of the chosen
        # target), every intent is about the failed host.
        reserve_steps = ("reserve_hold", "reserve_release")
        about = {
            e["host"]
            for e in rows
            if e["kind"] == "intent" and e["host"] and e["action"] not in reserve_steps
        }
        assert about == {VICTIM}


def test_dead_bmc_waits_for_the_self_fence_deadline_before_evacuating(tmp_path: Path) -> None:
    timings = f"self_fence_deadline_s = {DEAD_BMC_SELF_FENCE_DEADLINE_S}"
    with running_lab(tmp_path, dead_bmcs=(VICTIM,), timings=timings, self_fence=(VICTIM,)) as lab:
        lab.mesh.wait_until(
            lambda: "watchdog_armed" in lab.mesh.log_path(VICTIM).read_text(),
            20,
            "host2 arms its watchdog",
        )
        ha, non_ha = boot_workload(lab)

        kill_host(lab, VICTIM)

        alert = lab.mesh.wait_until(
            lambda: leader_ledger_has(
                lab,
                lambda e: (
                    e["kind"] == "intent"
                    and e["action"] == "alert"
                    and e["host"] == VICTIM
                    and "cannot fence host2" in e["reason"]
                ),
            ),
            40,
            "the leader alerts 'cannot fence host2'",
        )
        lab.mesh.wait_until(
            lambda: evacuated(lab, ha, RESERVED), 90, "HA servers ACTIVE on host4", poll_s=0.2
        )
        assert_evacuated_once(lab, ha, non_ha)
        rows = assert_ledgers_agree(lab, ha)

        fences = [e for e in intents(rows, "fence") if e["host"] == VICTIM]
        assert fences and all(results(rows)[e["intent"]]["outcome"] == "failed" for e in fences)
        assert {results(rows)[e["intent"]]["error_kind"] for e in fences} == {"unreachable"}
        (proof,) = [e for e in rows if e["kind"] == "fenced" and e["host"] == VICTIM]
        assert proof["method"] == "self_fence_deadline"
        deadline = proof["evidence"]["deadline"]
        assert alert["ts"] < deadline <= proof["ts"]
        evac = [e for e in intents(rows, "evacuate") if e["host"] == VICTIM]
        assert min(e["ts"] for e in evac) >= deadline
        for i in ha:  # Nova agrees: no evacuation request before the deadline
            (act,) = [a for a in lab.conn.compute.server_actions(i) if a.action == "evacuate"]
            assert _unix(act.start_time) >= deadline - 1.0, (act.start_time, deadline)
        # What made the deadline a proof: host2's watchdog powered it off before it.
        fired = watchdog_fired_at(tmp_path, VICTIM)
        assert fired is not None and fired < deadline, (fired, deadline)


def _unix(iso: str) -> float:
    from datetime import UTC, datetime

    t = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.timestamp()
