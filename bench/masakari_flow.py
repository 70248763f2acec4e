"""Run Masakari's own host-failure flow once, against a Nova in a box (no Keystone).

Runs with the *Masakari venv's* python (bench/evacuate_vs_masakari.py installs Masakari
22.0.0 from PyPI there and calls this), never from meshha's environment. It is the real
`TaskFlowDriver.execute_host_failure` of masakari-engine, unchanged: its tasks
(DisableComputeServiceTask, PrepareHAEnabledInstancesTask, EvacuateInstancesTask), its
greenpool of `host_failure_recovery_threads` (3), its 1 s `verify_interval`, its
`wait_period_after_service_update` (180 s unless --wait says otherwise), its VMove rows
in its own SQLite database, novaclient at 2.53. The process is eventlet monkey-patched
as masakari-engine is (masakari/cmd/__init__.py), so its green threads really run in
parallel on the network.

One thing is replaced: masakari.compute.nova.novaclient() builds its keystoneauth session
with keystoneauth's admin-token plugin (`token_endpoint.Token`) pointing at the box,
because there is no Keystone here. Everything else of that function is kept (microversion
2.53, a new client per call as Masakari does; with Keystone every such client would also
fetch a token, which is not counted here).

    python bench/masakari_flow.py --endpoint http://127.0.0.1:P/v2.1 --failed host1 \\
        --reserved host2 --method reserved_host --wait 0 --workdir DIR

Prints one JSON line: {"t_start": unix, "t_end": unix, "outcome": "...", "error": ...}.
"""

import eventlet

eventlet.monkey_patch()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402


def configure(args):
    import masakari.conf
    from masakari import config as masakari_config

    conf = masakari.conf.CONF
    db = os.path.join(args.workdir, "masakari.sqlite")
    conf.set_override("connection", f"sqlite:///{db}", group="database")
    conf.set_override("connection", f"sqlite:///{db}", group="taskflow")
    conf.set_override("wait_period_after_service_update", args.wait)
    # No message bus here: oslo.messaging's in-process fake driver takes the versioned
    # notifications Masakari emits when its segment and host rows change.
    masakari_config.parse_args(["masakari-flow"], default_config_files=[], init_rpc=False)
    from masakari import rpc
    from oslo_messaging import transport

    conf.register_opts(transport._transport_opts)
    conf.set_override("transport_url", "fake://")
    rpc.init(conf)
    return conf


def patch_auth(endpoint, token):
    """Masakari's novaclient(), with keystoneauth's admin-token plugin for its session."""
    from keystoneauth1 import session as ks_session
    from keystoneauth1 import token_endpoint
    from masakari.compute import nova as masakari_nova
    from novaclient import api_versions
    from novaclient import client as nova_client

    def novaclient(context, timeout=None):
        auth = token_endpoint.Token(endpoint, token)
        session = ks_session.Session(auth=auth)
        return nova_client.Client(
            api_versions.APIVersion(masakari_nova.NOVA_API_VERSION),
            session=session,
            timeout=timeout,
            global_request_id=context.global_id,
            endpoint_override=endpoint,
            extensions=masakari_nova.nova_extensions,
        )

    masakari_nova.novaclient = novaclient


def prepare_db(failed, reserved):
    from masakari import context as masakari_context
    from masakari import objects
    from masakari.db import migration

    migration.db_sync()
    objects.register_all()
    ctx = masakari_context.get_admin_context()
    segment = objects.FailoverSegment(
        context=ctx,
        name="bench",
        service_type="compute",
        recovery_method="reserved_host",
    )
    segment.create()
    for name, is_reserved in ((failed, False), (reserved, True)):
        host = objects.Host(
            context=ctx,
            name=name,
            type="COMPUTE",
            control_attributes="SSH",
            reserved=is_reserved,
            on_maintenance=False,
            failover_segment=segment,
        )
        host.create()
    return ctx


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--token", default="admin:admin")
    p.add_argument("--failed", required=True)
    p.add_argument("--reserved", required=True)
    p.add_argument("--method", choices=["reserved_host", "auto"], default="reserved_host")
    p.add_argument("--wait", type=int, default=0, help="wait_period_after_service_update")
    p.add_argument("--workdir", required=True)
    args = p.parse_args()
    configure(args)
    patch_auth(args.endpoint, args.token)
    ctx = prepare_db(args.failed, args.reserved)
    from masakari.engine import manager
    from masakari.engine.drivers.taskflow import driver

    flow = driver.TaskFlowDriver()
    outcome, error = "ok", None
    t_start = time.time()
    try:
        flow.execute_host_failure(
            ctx,
            args.failed,
            args.method,
            str(uuid.uuid4()),
            update_host_method=manager.update_host_method,
            reserved_host_list=[args.reserved] if args.method == "reserved_host" else None,
        )
    except Exception as e:  # noqa: BLE001  reported to the harness, which fails the run
        outcome, error = "failed", f"{type(e).__name__}: {e}"
    t_end = time.time()
    sys.stdout.write(
        json.dumps({"t_start": t_start, "t_end": t_end, "outcome": outcome, "error": error}) + "\n"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
