"""Start and drive real Nova in a box (meshha/lab/nova_box.py) from meshha's environment.

Nova runs in its own virtualenv (scripts/install-nova-venv.sh), as a child process: this
module never imports nova. `NovaBox` starts it, waits for its ready line with a deadline,
says how openstacksdk reaches it, performs the control actions (stop a nova-compute for
real, start it again, cut the API) and stops it.

    box = NovaBox(hosts=["host1", "host2"])
    box.start()
    conn = openstack.connect(**box.connect_kwargs())
    box.stop_compute("host1")
    box.close()

The calls are blocking (short HTTP requests to 127.0.0.1); from trio code run them with
`trio.to_thread.run_sync`.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

DEFAULT_VENV = "/opt/meshha/nova-venv"
BOX_SCRIPT = Path(__file__).with_name("nova_box.py")


class NovaBoxError(RuntimeError):
    """The box could not start, or a control action failed (a lab problem, not Nova's)."""


def venv_python(venv: str | None = None) -> Path:
    """The nova venv's python: `venv`, else $MESHHA_NOVA_VENV, else /opt/meshha/nova-venv."""
    root = venv or os.environ.get("MESHHA_NOVA_VENV") or DEFAULT_VENV
    return Path(root) / "bin" / "python"


def venv_missing_reason(venv: str | None = None) -> str | None:
    """Why a NovaBox cannot start here, or None if it can."""
    python = venv_python(venv)
    if not python.exists():
        return f"no nova venv at {python.parent.parent} (run scripts/install-nova-venv.sh)"
    if not (python.parent.parent / "etc" / "nova" / "api-paste.ini").exists():
        return f"{python.parent.parent} has no etc/nova/api-paste.ini: not a nova venv"
    return None


class NovaBox:
    """One real Nova (API, conductor, scheduler, placement, one nova-compute per host).

    `host_sizes` maps a host to (vcpus, ram_mb, disk_gb); `size` applies to the others.
    With `cpu_allocation_ratio=1.0` (the default) those sizes are exactly what the
    scheduler can place. `service_down_time_s` is how long a stopped nova-compute still
    looks up (nova's default 60 s is shortened for tests). `real_vms=True` makes each
    instance a QEMU domain `meshha-<host>-<uuid>` in `libvirt_uri` (or the host's own
    libvirtd from `libvirt_uris`, where the domain's UUID is the instance's). `eventlet=False` runs nova in
    native threads, upstream's future mode; here it is about 2x slower, and under load
    an API request sometimes stalls for more than 10 s.
    """

    def __init__(
        self,
        hosts: list[str],
        *,
        size: tuple[int, int, int] | None = None,
        host_sizes: dict[str, tuple[int, int, int]] | None = None,
        venv: str | None = None,
        tmpdir: str | Path | None = None,
        service_down_time_s: int = 6,
        cpu_allocation_ratio: float = 1.0,
        real_vms: bool = False,
        libvirt_uri: str | None = None,
        libvirt_uris: dict[str, str] | None = None,
        eventlet: bool = True,
        log_path: str | Path | None = None,
        ready_timeout_s: float = 90.0,
    ) -> None:
        assert hosts, "a NovaBox needs at least one compute host"
        self.hosts = list(hosts)
        self.size = size
        self.host_sizes = dict(host_sizes or {})
        self.python = venv_python(venv)
        self.tmpdir = Path(tmpdir) if tmpdir else None
        self.service_down_time_s = service_down_time_s
        self.cpu_allocation_ratio = cpu_allocation_ratio
        self.real_vms = real_vms
        self.libvirt_uri = libvirt_uri
        self.libvirt_uris = dict(libvirt_uris or {})
        self.eventlet = eventlet
        self.log_path = Path(log_path) if log_path else None
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready: dict[str, Any] = {}

    # ---- life cycle -------------------------------------------------------------------

    def command(self) -> list[str]:
        cmd = [str(self.python), str(BOX_SCRIPT), "--hosts", ",".join(self.hosts)]
        if self.size:
            cmd += ["--host-size", ",".join(map(str, self.size))]
        for host, hsize in self.host_sizes.items():
            cmd += ["--host-size", f"{host}=" + ",".join(map(str, hsize))]
        if self.tmpdir:
            cmd += ["--tmpdir", str(self.tmpdir)]
        cmd += ["--service-down-time", str(self.service_down_time_s)]
        cmd += ["--cpu-allocation-ratio", str(self.cpu_allocation_ratio)]
        if self.real_vms:
            cmd.append("--real-vms")
            if self.libvirt_uri:
                cmd += ["--libvirt-uri", self.libvirt_uri]
            for host, uri in self.libvirt_uris.items():
                cmd += ["--libvirt-uri", f"{host}={uri}"]
        if self.eventlet:
            cmd.append("--eventlet")
        return cmd

    def start(self) -> dict[str, Any]:
        """Start the box and return its ready line (port, control_port, hosts, startup_s)."""
        assert self.proc is None, "already started"
        reason = venv_missing_reason(str(self.python.parent.parent))
        if reason:
            raise NovaBoxError(reason)
        log_path = self.log_path or Path(os.environ.get("TMPDIR", "/tmp")) / (
            f"meshha-nova-box-{os.getpid()}-{id(self)}.log"
        )
        self.log_path = log_path
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        try:
            self.ready = self._read_ready()
        except BaseException:
            self.close()
            raise
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return self.ready

    def _read_ready(self) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + self.ready_timeout_s
        fd = self.proc.stdout.fileno()
        buf = b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise NovaBoxError(
                    f"nova box not ready after {self.ready_timeout_s:g} s; see {self.log_path}"
                )
            readable, _, _ = select.select([fd], [], [], left)
            if readable:
                chunk = os.read(fd, 4096)
                if not chunk:
                    code = self.proc.wait(timeout=10)
                    raise NovaBoxError(f"nova box exited ({code}) before ready:\n{self.log_tail()}")
                buf += chunk
        ready = json.loads(buf.split(b"\n", 1)[0])
        if not ready.get("ready"):
            raise NovaBoxError(f"nova box said {ready!r}")
        return ready

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def close(self, timeout_s: float = 15.0) -> None:
        """Stop the box: ask, then SIGTERM, then SIGKILL its process group."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None and self.ready:
            with contextlib.suppress(NovaBoxError):
                self.control("shutdown", timeout_s=2.0)
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None and proc.poll() is None:
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=timeout_s / 3)
                break
            except subprocess.TimeoutExpired:
                continue
        self.proc = None

    def __enter__(self) -> NovaBox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- how to reach it --------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self.ready["port"])

    @property
    def endpoint(self) -> str:
        """The compute endpoint, http://127.0.0.1:PORT/v2.1."""
        return f"http://127.0.0.1:{self.port}/v2.1"

    @property
    def placement_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/placement"

    def connect_kwargs(self, user: str = "admin", project: str = "admin") -> dict[str, Any]:
        """Keyword arguments for `openstack.connect(**...)`."""
        return {
            "auth_type": "admin_token",
            "auth": {"endpoint": self.endpoint, "token": f"{user}:{project}"},
            "placement_endpoint_override": self.placement_endpoint,
            "api_timeout": 10,
        }

    def clouds_yaml(self, cloud: str = "meshha-lab") -> str:
        """A clouds.yaml naming this box `cloud` (for NovaDriver(cloud) / OS_CLIENT_CONFIG_FILE)."""
        return json.dumps(
            {
                "clouds": {
                    cloud: {
                        "auth_type": "admin_token",
                        "auth": {"endpoint": self.endpoint, "token": "admin:admin"},
                        "placement_endpoint_override": self.placement_endpoint,
                    }
                }
            },
            indent=2,
        )

    def connect(self, **kwargs: Any) -> Any:
        """An openstacksdk Connection to the box (admin unless user/project say else)."""
        import openstack

        return openstack.connect(**{**self.connect_kwargs(), **kwargs})

    # ---- control actions --------------------------------------------------------------

    def control(self, op: str, timeout_s: float = 30.0, **args: Any) -> dict[str, Any]:
        body = json.dumps({"op": op, **args}).encode()
        url = f"http://127.0.0.1:{self.ready['control_port']}/control"
        request = urllib.request.Request(url, data=body, method="POST")
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                reply = json.loads(response.read())
        except urllib.error.HTTPError as e:
            raise NovaBoxError(f"{op}: {e.read().decode(errors='replace')}") from e
        except OSError as e:
            raise NovaBoxError(f"{op}: control endpoint unreachable: {e}") from e
        return reply

    def stop_compute(self, host: str) -> None:
        """Stop that host's nova-compute for real: no RPC, no heartbeats (host death)."""
        self.control("stop_compute", host=host)

    def start_compute(self, host: str, *, keep_vms: bool = False) -> None:
        """Start it again. keep_vms=False: the host rebooted and its guests are gone."""
        self.control("start_compute", host=host, keep_vms=keep_vms)

    def outage(
        self,
        mode: str = "refuse",
        *,
        duration_s: float | None = None,
        after_method: str | None = None,
        after_path_suffix: str = "",
        after_body_contains: str = "",
    ) -> None:
        """Cut the API: mode "refuse" closes the listener, "503" answers 503. With
        after_method, arm it to begin right after the first matching request is answered."""
        args: dict[str, Any] = {"mode": mode, "duration_s": duration_s}
        if after_method:
            args["after"] = {
                "method": after_method,
                "path_suffix": after_path_suffix,
                "body_contains": after_body_contains,
            }
        self.control("outage", **args)

    def heal(self) -> None:
        """End the outage (the API listens and answers again)."""
        self.control("heal")

    def status(self) -> dict[str, Any]:
        return self.control("status")

    def counters(self, *, reset: bool = False) -> dict[str, Any]:
        """API requests answered since the last reset ({"requests": {method: n},
        "nova_requests": n}, placement apart) and every instance state change, as
        [uuid, host, vm_state, task_state, unix_time] in the order Nova saved them."""
        return self.control("counters", reset=reset)
