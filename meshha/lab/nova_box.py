"""Real Nova in one local process: the lab's and the integration tests' Nova.

Run it with the *nova venv's* python (scripts/install-nova-venv.sh), never from meshha's
own environment: the agent must not depend on nova. `meshha.lab.nova_client.NovaBox`
starts and drives it.

    /opt/meshha/nova-venv/bin/python meshha/lab/nova_box.py --hosts host1,host2

It uses the functional-test fixtures that nova's wheel ships: a subclass of
`ProviderUsageBaseTestCase`, instantiated and `setUp()` by hand, gives the API,
conductor, scheduler, placement, the neutron/glance/cinder fixtures, the databases and a
fake RPC bus; one nova-compute per host is added on top (fake virt driver, sized per
host). The API and placement are served over real HTTP on 127.0.0.1 so that openstacksdk
in another process can talk to them:

    http://127.0.0.1:PORT/v2.1        Nova (compute)
    http://127.0.0.1:PORT/placement   Placement

Auth: `X-Auth-Token: user:project` (the user `admin` is an admin), mapped to the headers
nova's stubbed keystone context reads. Nova's real default policy applies.

A second HTTP endpoint on 127.0.0.1:CONTROL_PORT takes `POST /control` with a JSON body
`{"op": ...}` so tests can do what the world does to Nova:

    stop_compute  {host}                 stop that nova-compute for real (host death)
    start_compute {host, keep_vms}       start it again (a fresh driver unless keep_vms)
    outage        {mode, after?, duration_s?}
                                         mode "refuse": close the API listener;
                                         mode "503": answer 503 to every API request;
                                         after {method, path_suffix, body_contains}:
                                         trip only once a matching request was answered
    heal          {}                     end the outage
    status        {}                     hosts, compute state, outage
    counters      {reset?}               API requests answered (by method), and every
                                         instance state change (uuid, host, vm_state,
                                         task_state, unix time) since the last reset:
                                         what a benchmark measures without polling Nova
    shutdown      {}                     stop everything and exit

When ready it prints one JSON line to stdout, then sends stdout to stderr:

    {"ready": true, "port": P, "control_port": C, "hosts": [...], "startup_s": S}
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import shutil
import signal
import socketserver
import subprocess
import sys
import tempfile
import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

DEFAULT_SIZE = (16, 16384, 1024)  # vcpus, ram_mb, disk_gb per host
DOMAIN_PREFIX = "meshha-"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="nova_box", description=__doc__.splitlines()[0])
    p.add_argument("--hosts", required=True, help="comma-separated compute host names")
    p.add_argument(
        "--host-size",
        action="append",
        default=[],
        metavar="[HOST=]VCPUS,RAM_MB,DISK_GB",
        help="size of every host, or of one host with HOST=; repeatable",
    )
    p.add_argument("--port", type=int, default=0, help="API port (0: any free port)")
    p.add_argument("--control-port", type=int, default=0)
    p.add_argument("--tmpdir", default=None, help="wiped at start (default: a new dir)")
    p.add_argument(
        "--service-down-time",
        type=int,
        default=6,
        help="seconds without a heartbeat before nova calls a service down "
        "(nova's default is 60; heartbeats come every down-time/3 s)",
    )
    p.add_argument(
        "--cpu-allocation-ratio",
        type=float,
        default=1.0,
        help="placement VCPU allocation ratio (nova's default is 4.0); with 1.0 and no "
        "reserved memory, --host-size is exactly what the scheduler can place",
    )
    p.add_argument(
        "--eventlet",
        action="store_true",
        help="run nova under eventlet (deprecated upstream, but about 2x faster here) "
        "instead of native threads",
    )
    p.add_argument("--real-vms", action="store_true", help="each instance is a QEMU domain")
    p.add_argument(
        "--libvirt-uri",
        action="append",
        default=[],
        metavar="[HOST=]URI",
        help="with --real-vms: the libvirt of every host (default qemu:///system), or of one",
    )
    return p.parse_args(argv)


def parse_sizes(
    specs: list[str], hosts: list[str]
) -> tuple[tuple[int, int, int], dict[str, tuple[int, int, int]]]:
    default = DEFAULT_SIZE
    per_host: dict[str, tuple[int, int, int]] = {}
    for spec in specs:
        host, _, size = spec.rpartition("=")
        parts = tuple(int(x) for x in size.split(","))
        if len(parts) != 3 or min(parts) <= 0:
            raise SystemExit(f"--host-size {spec!r}: want [HOST=]VCPUS,RAM_MB,DISK_GB")
        if host:
            if host not in hosts:
                raise SystemExit(f"--host-size {spec!r}: {host} is not in --hosts")
            per_host[host] = parts  # type: ignore[assignment]
        else:
            default = parts  # type: ignore[assignment]
    return default, per_host


def prepare_process(tmpdir: str, eventlet: bool) -> None:
    """What must happen before nova is imported: the concurrency mode, a private TMPDIR."""
    shutil.rmtree(tmpdir, ignore_errors=True)
    os.makedirs(tmpdir)
    os.environ["TMPDIR"] = tmpdir
    tempfile.tempdir = tmpdir
    if eventlet:
        os.environ.pop("OS_NOVA_DISABLE_EVENTLET_PATCHING", None)
    else:
        os.environ["OS_NOVA_DISABLE_EVENTLET_PATCHING"] = "1"
    os.environ.pop("OS_DEBUG", None)


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class Outage:
    """The API's failure switch. `after` arms it to trip once a matching request was
    answered (so a test can cut Nova exactly between an action and its polling)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.mode: str | None = None  # None, "refuse", "503"
        self.armed: dict | None = None  # {"mode", "method", "path_suffix", "body_contains"}
        self.timer: threading.Timer | None = None


class Box:
    """The running Nova, its HTTP front door and the control actions."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.hosts = [h for h in args.hosts.split(",") if h]
        self.default_size, self.sizes = parse_sizes(args.host_size, self.hosts)
        self.outage = Outage()
        self.control_lock = threading.Lock()
        self.listener_lock = threading.Lock()  # opening/closing the API listener
        self.api_server: ThreadingWSGIServer | None = None
        self.api_thread: threading.Thread | None = None
        self.stopped_hosts: set[str] = set()
        self.done = threading.Event()
        self.port = 0  # the API port, once listening
        self.meter = Meter()

    # ---- starting nova ----------------------------------------------------------------

    def start_nova(self) -> None:
        # nova first: importing it picks threading mode (and forbids eventlet after).
        from nova.tests.functional import integrated_helpers
        from nova.virt import fake
        from placement import deploy

        if self.args.eventlet:
            # socketserver picked the real poll selector at import; the green select
            # (patched in place by eventlet) keeps serve_forever from blocking the hub.
            import selectors

            socketserver._ServerSelector = selectors.SelectSelector  # type: ignore[attr-defined]
        box = self
        install_driver(fake, self.default_size, self.sizes, self.args)
        # The placement fixture only installs a wsgi-intercept; keep the app it loads.
        real_loadapp = deploy.loadapp

        def loadapp(conf):
            self.placement_app = real_loadapp(conf)
            return self.placement_app

        deploy.loadapp = loadapp

        class NovaInABox(integrated_helpers.ProviderUsageBaseTestCase):
            compute_driver = "fake.MeshhaFakeDriver"

            def setUp(self) -> None:
                # Heartbeats every down-time/3 s; enough workers for parallel actions.
                down = box.args.service_down_time
                self.flags(service_down_time=down, report_interval=max(1, down // 3))
                self.flags(default_thread_pool_size=64, cell_worker_thread_pool_size=16)
                self.flags(
                    cpu_allocation_ratio=box.args.cpu_allocation_ratio,
                    reserved_host_memory_mb=0,
                )
                paste = os.path.join(sys.prefix, "etc", "nova", "api-paste.ini")
                self.flags(api_paste_config=paste, group="wsgi")
                super().setUp()

            def runTest(self) -> None:  # pragma: no cover - testtools wants one
                pass

        self.meter.watch_instances()
        self.case = NovaInABox("runTest")
        self.case.setUp()
        route_logs(os.path.join(self.args.tmpdir, "nova.log"))
        # nova's test base makes idle workers spin every 10 ms (50 % CPU idle).
        import futurist._thread

        futurist._thread.ThreadWorker.MAX_IDLE_FOR = 1
        for option in ("instances", "cores", "ram", "server_groups", "server_group_members"):
            self.case.flags(**{option: -1}, group="quota")
        for host in self.hosts:
            self.case._start_compute(host)
        self.nova_app = self.case.api_fixture.app()

    # ---- the HTTP front door ----------------------------------------------------------

    def wsgi(self, environ: dict, start_response):
        self.meter.request(environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", ""))
        with self.outage.lock:
            mode = self.outage.mode
        if mode is not None:
            start_response("503 Service Unavailable", [("Content-Type", "application/json")])
            return [b'{"error": "meshha nova_box outage"}']
        body = b""
        if self.outage.armed is not None:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            import io

            environ["wsgi.input"] = io.BytesIO(body)
        path = environ.get("PATH_INFO", "")
        if path == "/placement" or path.startswith("/placement/"):
            environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + "/placement"
            environ["PATH_INFO"] = path[len("/placement") :]
            result = self.placement_app(environ, start_response)
        else:
            token = environ.get("HTTP_X_AUTH_TOKEN")
            if token:
                user, _, project = token.partition(":")
                environ["HTTP_X_AUTH_USER"] = user
                environ["HTTP_X_AUTH_PROJECT_ID"] = project or user
                roles = "admin,member,reader" if user == "admin" else "member,reader"
                environ.setdefault("HTTP_X_ROLES", roles)
            elif path not in ("", "/") and path.rstrip("/") != "/v2.1":
                start_response("401 Unauthorized", [("Content-Type", "application/json")])
                return [b'{"error": "X-Auth-Token: user:project is required"}']
            result = self.nova_app(environ, start_response)
        self.maybe_trip(environ, body)
        return result

    def maybe_trip(self, environ: dict, body: bytes) -> None:
        with self.outage.lock:
            armed = self.outage.armed
            if armed is None:
                return
            if environ.get("REQUEST_METHOD") != armed.get("method", "POST"):
                return
            if not environ.get("PATH_INFO", "").endswith(armed.get("path_suffix", "")):
                return
            if armed.get("body_contains", "").encode() not in body:
                return
            self.outage.armed = None
            # From the next request on: 503 until the listener is closed, then refused.
            self.outage.mode = armed["mode"]
        threading.Thread(
            target=self.begin_outage, args=(armed["mode"], armed.get("duration_s")), daemon=True
        ).start()

    def serve_api(self, port: int) -> int:
        server = ThreadingWSGIServer(("127.0.0.1", port), QuietHandler)
        server.set_app(self.wsgi)
        self.api_server = server
        self.api_thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self.api_thread.start()
        return server.server_address[1]

    def close_api(self) -> None:
        server = self.api_server
        if server is not None:
            server.shutdown()
            server.server_close()
            self.api_server = None

    # ---- control actions --------------------------------------------------------------

    def begin_outage(self, mode: str, duration_s: float | None = None) -> None:
        assert mode in ("refuse", "503"), mode
        with self.listener_lock:
            with self.outage.lock:
                self.outage.mode = mode
                if self.outage.timer is not None:
                    self.outage.timer.cancel()
                    self.outage.timer = None
            if mode == "refuse":
                self.close_api()
            if duration_s:
                timer = threading.Timer(duration_s, self.heal)
                timer.daemon = True
                with self.outage.lock:
                    self.outage.timer = timer
                timer.start()

    def heal(self) -> None:
        with self.listener_lock:
            with self.outage.lock:
                self.outage.mode = None
                self.outage.armed = None
                if self.outage.timer is not None:
                    self.outage.timer.cancel()
                    self.outage.timer = None
            if self.api_server is None:
                self.serve_api(self.port)

    def stop_compute(self, host: str) -> None:
        compute = self.case.computes[host]
        if host not in self.stopped_hosts:
            compute.stop()
            self.stopped_hosts.add(host)

    def start_compute(self, host: str, keep_vms: bool) -> None:
        if host not in self.stopped_hosts:
            return
        old = self.case.computes[host]
        if keep_vms:
            # A nova-compute restart on a host that kept running: the same hypervisor.
            from unittest import mock  # noqa: TID251  Nova internals, inside the Nova venv

            with mock.patch("nova.virt.driver.load_compute_driver") as load:
                load.return_value = old.manager.driver
                new = self.case.start_service("compute", host=host, cell_name="cell1")
        else:
            # The host rebooted: its guests are gone, a fresh hypervisor comes up.
            if self.args.real_vms:
                old.manager.driver.destroy_all_domains()
            new = self.case.start_service("compute", host=host, cell_name="cell1")
        # Heartbeat now, not after report_interval: with our short service_down_time the
        # scheduler would otherwise still see the host down for a moment.
        new.servicegroup_api._driver._report_state(new)
        self.case.computes[host] = new
        self.stopped_hosts.discard(host)

    def status(self) -> dict:
        with self.outage.lock:
            outage = self.outage.mode
            armed = self.outage.armed is not None
        return {
            "hosts": self.hosts,
            "stopped": sorted(self.stopped_hosts),
            "outage": outage,
            "outage_armed": armed,
        }

    def control(self, request: dict) -> dict:
        op = request.get("op")
        # Reads take no control lock: a compute stop that hangs in nova-compute's graceful
        # shutdown (seen under load) held it for good, and every status or counters read
        # (a benchmark's measuring loop) hung behind it.
        if op == "status":
            return {"ok": True, **self.status()}
        if op == "counters":
            return {"ok": True, **self.meter.read(reset=bool(request.get("reset")))}
        with self.control_lock:
            if op == "stop_compute":
                self.stop_compute(request["host"])
            elif op == "start_compute":
                self.start_compute(request["host"], bool(request.get("keep_vms", False)))
            elif op == "outage":
                mode = request.get("mode", "refuse")
                if mode not in ("refuse", "503"):
                    raise ValueError(f"outage mode {mode!r}: want refuse or 503")
                after = request.get("after")
                if after:
                    with self.outage.lock:
                        self.outage.armed = dict(
                            after, mode=mode, duration_s=request.get("duration_s")
                        )
                else:
                    self.begin_outage(mode, request.get("duration_s"))
            elif op == "heal":
                self.heal()
            elif op == "shutdown":
                self.done.set()
            else:
                raise ValueError(f"unknown op {op!r}")
            return {"ok": True, **self.status()}

    def serve_control(self, port: int) -> int:
        box = self

        def app(environ: dict, start_response):
            if environ["REQUEST_METHOD"] != "POST" or environ["PATH_INFO"] != "/control":
                start_response("404 Not Found", [("Content-Type", "application/json")])
                return [b'{"ok": false, "error": "POST /control"}']
            length = int(environ.get("CONTENT_LENGTH") or 0)
            try:
                request = json.loads(environ["wsgi.input"].read(length) or b"{}")
                reply = box.control(request)
                status = "200 OK"
            except (KeyError, ValueError) as e:
                reply, status = {"ok": False, "error": repr(e)}, "400 Bad Request"
            start_response(status, [("Content-Type", "application/json")])
            return [json.dumps(reply).encode()]

        server = ThreadingWSGIServer(("127.0.0.1", port), QuietHandler)
        server.set_app(app)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.control_server = server
        return server.server_address[1]


class Meter:
    """What benchmarks read from the box: API requests answered (placement apart) and
    every change of an instance's (host, vm_state, task_state), with the time Nova saved
    it. Both bounded; `read(reset=True)` starts a new count."""

    MAX_CHANGES = 100_000

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[str, int] = {}
        self.changes: list[list] = []
        self.last: dict[str, tuple] = {}

    def request(self, method: str, path: str) -> None:
        if path == "/placement" or path.startswith("/placement/"):
            key = "placement"
        else:
            key = method
        with self.lock:
            self.requests[key] = self.requests.get(key, 0) + 1

    def instance_saved(self, uuid: str, host: str | None, vm_state: str, task: str | None) -> None:
        now = time.time()
        state = (host, vm_state, task)
        with self.lock:
            if self.last.get(uuid) == state:
                return
            self.last[uuid] = state
            if len(self.changes) < self.MAX_CHANGES:
                self.changes.append([uuid, host, vm_state, task, now])

    def read(self, reset: bool) -> dict:
        with self.lock:
            out = {
                "requests": dict(self.requests),
                "nova_requests": sum(v for k, v in self.requests.items() if k != "placement"),
                "changes": list(self.changes),
            }
            if reset:
                self.requests.clear()
                self.changes.clear()
        return out

    def watch_instances(self) -> None:
        """Wrap Instance.save (all services share this process) to see state changes."""
        from nova.objects import instance as instance_obj

        real_save = instance_obj.Instance.save
        meter = self

        def save(inst, *args, **kwargs):
            real_save(inst, *args, **kwargs)
            fields = ("uuid", "host", "vm_state", "task_state")
            if all(inst.obj_attr_is_set(f) for f in fields):  # never lazy-load (a DB read)
                meter.instance_saved(inst.uuid, inst.host, inst.vm_state, inst.task_state)

        instance_obj.Instance.save = save


def route_logs(path: str) -> None:
    """Send nova's logs to a file at INFO. The test fixtures keep them in memory (growing
    without bound) and format every DEBUG record into a null handler (costly)."""
    import logging

    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def install_driver(fake, default_size, sizes, args) -> None:
    """Register `nova.virt.fake.MeshhaFakeDriver`: MediumFakeDriver sized per host, and
    with --real-vms one real QEMU domain per instance (through `virsh`: the fixtures
    forbid `import libvirt` inside nova)."""
    from oslo_config import cfg

    conf = cfg.CONF

    class MeshhaFakeDriver(fake.MediumFakeDriver):
        def __init__(self, virtapi, read_only=False):
            self.vcpus, self.memory_mb, self.local_gb = sizes.get(conf.host, default_size)
            super().__init__(virtapi, read_only)

    if args.real_vms:
        default_uri, uris = parse_uris(args.libvirt_uri, args.hosts.split(","))
        MeshhaFakeDriver = real_vm_driver(MeshhaFakeDriver, default_uri, uris)  # type: ignore[misc]
    fake.MeshhaFakeDriver = MeshhaFakeDriver  # type: ignore[misc]


# A flavor extra spec of the lab (not Nova's): the instance's disk is an NBD export named
# after the instance on this unix socket (shared storage: meshha.lab.nbd_fault --dir).
NBD_SOCKET_SPEC = "meshha-lab:nbd_socket"


def domain_xml(
    name: str,
    uuid: str | None,
    *,
    nbd_socket: str | None = None,
    watchdog_action: str | None = None,
) -> str:
    """A tiny domain: diskless, or booting from its NBD disk (`nbd_socket`, export
    `uuid`). The driver of Nova's libvirt gives a disk no error_policy, so QEMU's defaults
    apply (a write that fails with ENOSPC pauses the guest, other errors reach it), and
    for a flavor with `hw:watchdog_action` a watchdog with that action: i6300esb there,
    ib700 here, which the disk's guest can arm without an OS (meshha.lab.nbd_fault)."""
    kvm = os.path.exists("/dev/kvm")
    uuid_element = f"<uuid>{uuid}</uuid>" if uuid else ""
    devices = "<graphics type='vnc' listen='127.0.0.1' autoport='yes'/>"
    boot = ""
    if nbd_socket and uuid:
        boot = "<boot dev='hd'/>"
        devices += (
            "<disk type='network' device='disk'><driver name='qemu' type='raw' cache='none'/>"
            f"<source protocol='nbd' name='{uuid}'><host transport='unix' socket='{nbd_socket}'/>"
            "</source><target dev='vda' bus='virtio'/></disk>"
        )
    if watchdog_action and watchdog_action != "disabled":
        devices += f"<watchdog model='ib700' action='{watchdog_action}'/>"
    return f"""<domain type='{"kvm" if kvm else "qemu"}'>
  <name>{name}</name>{uuid_element}
  <memory unit='MiB'>32</memory><vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>{boot}</os>
  <on_crash>destroy</on_crash>
  <devices>{devices}</devices>
</domain>"""


def parse_uris(specs: list[str], hosts: list[str]) -> tuple[str, dict[str, str]]:
    """--libvirt-uri URI (every host) and --libvirt-uri HOST=URI (one host)."""
    default, per_host = "qemu:///system", {}
    for spec in specs:
        host, sep, uri = spec.partition("=")
        if sep and host in hosts:
            per_host[host] = uri
        else:
            default = spec
    return default, per_host


def virsh(uri: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["virsh", "-q", "-c", uri, *argv], check=check, capture_output=True, text=True, timeout=60
    )


def real_vm_driver(base, default_uri: str, uris: dict[str, str]):
    """Each instance becomes a transient diskless QEMU domain `meshha-<host>-<uuid>`. A host
    with a libvirtd of its own (HOST=URI) gives the domain the instance uuid as its libvirt
    UUID, so libvirt events name Nova's instance; hosts sharing one libvirtd cannot."""
    from oslo_config import cfg

    conf = cfg.CONF

    class RealVmDriver(base):
        def __init__(self, virtapi, read_only=False):
            self.meshha_host = conf.host
            self.meshha_uri = uris.get(conf.host, default_uri)
            self.meshha_own_uuid = conf.host in uris
            super().__init__(virtapi, read_only)

        def _name(self, uuid: str) -> str:
            return f"{DOMAIN_PREFIX}{self.meshha_host}-{uuid}"

        def _create(self, instance) -> None:
            name = self._name(instance.uuid)
            if virsh(self.meshha_uri, "domstate", name, check=False).returncode == 0:
                return
            path = os.path.join(tempfile.gettempdir(), name + ".xml")
            specs = dict(instance.flavor.extra_specs or {})
            action = specs.get("hw:watchdog_action")  # validated by Nova's API
            with open(path, "w") as f:
                f.write(
                    domain_xml(
                        name,
                        instance.uuid if self.meshha_own_uuid else None,
                        nbd_socket=specs.get(NBD_SOCKET_SPEC),
                        watchdog_action=action,
                    )
                )
            virsh(self.meshha_uri, "create", path)

        def _destroy(self, uuid: str) -> None:
            virsh(self.meshha_uri, "destroy", self._name(uuid), check=False)

        def spawn(self, context, instance, *a, **kw):
            super().spawn(context, instance, *a, **kw)
            if kw.get("power_on", True):
                self._create(instance)

        def destroy(self, context, instance, *a, **kw):
            self._destroy(instance.uuid)
            super().destroy(context, instance, *a, **kw)

        def power_off(self, instance, *a, **kw):
            super().power_off(instance, *a, **kw)
            self._destroy(instance.uuid)

        def power_on(self, context, instance, *a, **kw):
            super().power_on(context, instance, *a, **kw)
            self._create(instance)

        def reboot(self, context, instance, *a, **kw):
            self._destroy(instance.uuid)
            super().reboot(context, instance, *a, **kw)
            self._create(instance)

        def migrate_disk_and_power_off(self, context, instance, *a, **kw):
            # A cold migration stops the guest on the source before it is spawned on the
            # destination (finish_migration spawns it; confirm_migration destroys it here).
            out = super().migrate_disk_and_power_off(context, instance, *a, **kw)
            self._destroy(instance.uuid)
            return out

        def post_live_migration_at_destination(self, context, instance, *a, **kw):
            super().post_live_migration_at_destination(context, instance, *a, **kw)
            self._create(instance)

        def post_live_migration(self, context, instance, *a, **kw):
            super().post_live_migration(context, instance, *a, **kw)
            self._destroy(instance.uuid)

        def destroy_all_domains(self) -> None:
            """The host crashed: its guests are gone."""
            for uuid in list(self.instances):
                self._destroy(uuid)

    return RealVmDriver


def reap_domains(uris: set[str]) -> None:
    """Destroy meshha-* domains a previous box left behind."""
    for uri in uris:
        out = virsh(uri, "list", "--name", check=False)
        for name in out.stdout.split():
            if name.startswith(DOMAIN_PREFIX):
                virsh(uri, "destroy", name, check=False)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    t0 = time.monotonic()
    tmpdir = args.tmpdir = args.tmpdir or tempfile.mkdtemp(prefix="meshha-nova-")
    prepare_process(tmpdir, args.eventlet)
    if args.real_vms:
        default_uri, uris = parse_uris(args.libvirt_uri, args.hosts.split(","))
        reap_domains({default_uri, *uris.values()})
    box = Box(args)
    err_fd = os.dup(2)  # the fixtures capture stderr: keep a way to say why we died
    try:
        box.start_nova()
    except BaseException:  # noqa: BLE001  reported, then re-raised
        import traceback

        os.write(err_fd, ("nova_box: startup failed\n" + traceback.format_exc()).encode())
        os._exit(1)
    box.port = box.serve_api(args.port)
    control_port = box.serve_control(args.control_port)
    ready = {
        "ready": True,
        "port": box.port,
        "control_port": control_port,
        "hosts": box.hosts,
        "tmpdir": tmpdir,
        "pid": os.getpid(),
        "startup_s": round(time.monotonic() - t0, 3),
    }
    sys.stdout.write(json.dumps(ready) + "\n")
    sys.stdout.flush()
    os.dup2(2, 1)  # nothing more on stdout: the parent may stop reading it
    # `kill -USR2 PID` writes every thread's stack to TMPDIR/stacks.txt (for a stall).
    stacks = open(os.path.join(tmpdir, "stacks.txt"), "a")  # noqa: SIM115 - lives until exit
    faulthandler.register(signal.SIGUSR2, file=stacks, all_threads=True)
    signal.signal(signal.SIGTERM, lambda *_: box.done.set())
    signal.signal(signal.SIGINT, lambda *_: box.done.set())
    box.done.wait()
    box.close_api()
    if args.real_vms:
        default_uri, uris = parse_uris(args.libvirt_uri, args.hosts.split(","))
        reap_domains({default_uri, *uris.values()})
    # The fixtures' cleanups would take seconds and the process is about to exit anyway.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
