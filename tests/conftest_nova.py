"""The shared real Nova for the integration and contract suites.

Import the fixtures into a test module (`from tests.conftest_nova import nova_box`).
One NovaBox serves the whole pytest session (startup is about 3 s); tests keep out of
each other's way by using their own hosts and their own servers:

    host1  dies in the host-failure test        host2  the reserved evacuation target
    host3  dies in the outage test              host4  power actions and migrations
    host5  dies silently (the timeout test)     host6  in an aggregate with an AZ
    c1..c3 the contract suite
    r1..r3 the reserve kept empty (az-reserve)   m1, m2 maintenance live migration

The suite is skipped, with the reason, where the nova venv is not installed
(scripts/install-nova-venv.sh). Nova runs under eventlet (about 2x faster here);
MESHHA_NOVA_THREADING=1 runs it in native threads instead.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio

from meshha.lab.nova_client import NovaBox, venv_missing_reason

NOVA_HOSTS = (
    *("host1", "host2", "host3", "host4", "host5", "host6", "c1", "c2", "c3"),
    *("r1", "r2", "r3", "m1", "m2"),
)
HOST_SIZE = (16, 16384, 1024)  # vcpus, ram_mb, disk_gb
IMAGE_ID = "155d900f-4e14-4e4c-a73d-069cbf4541e6"  # one of nova's GlanceFixture images
TINY_FLAVOR_ID = "1"  # m1.tiny: 1 vcpu, 512 MB, 1 GB

_shared: dict[str, Any] = {}


@pytest.fixture(scope="session")
def nova_box() -> Iterator[NovaBox]:
    """A running NovaBox (shared by every module that imports this fixture)."""
    reason = venv_missing_reason()
    if reason:
        pytest.skip(reason)
    if "box" not in _shared:
        box = NovaBox(
            list(NOVA_HOSTS),
            size=HOST_SIZE,
            eventlet=os.environ.get("MESHHA_NOVA_THREADING") != "1",
        )
        t0 = time.monotonic()
        box.start()
        box.ready["client_startup_s"] = round(time.monotonic() - t0, 3)
        _shared["box"] = box
        _shared["users"] = 0
    _shared["users"] += 1
    try:
        yield _shared["box"]
    finally:
        _shared["users"] -= 1
        if _shared["users"] == 0:
            _shared.pop("box").close()


@pytest.fixture(scope="session")
def nova_conn(nova_box: NovaBox) -> Any:
    """An admin openstacksdk Connection to the box, for test setup and checks."""
    return nova_box.connect(compute_api_version="2.95")


async def wait_for(
    what: str, check: Callable[[], Any], *, timeout_s: float = 30.0, interval_s: float = 0.1
) -> Any:
    """Poll the blocking `check` (in a thread) until it returns something truthy."""
    with trio.fail_after(timeout_s):
        while True:
            result = await trio.to_thread.run_sync(check)
            if result:
                return result
            await trio.sleep(interval_s)
    raise AssertionError(what)  # pragma: no cover - fail_after raises first


async def boot(
    conn: Any,
    names: list[str],
    host: str,
    *,
    flavor_id: str = TINY_FLAVOR_ID,
    metadata: dict[str, str] | None = None,
    timeout_s: float = 60.0,
) -> list[str]:
    """Boot servers on `host` (admin host targeting, 2.74+) and wait until all are ACTIVE."""

    def create(name: str) -> str:
        server = conn.compute.create_server(
            name=name,
            flavor_id=flavor_id,
            image_id=IMAGE_ID,
            networks="none",
            host=host,
            metadata=metadata or {},
        )
        return server.id

    ids = [await trio.to_thread.run_sync(create, name) for name in names]

    def all_active() -> bool:
        servers = {s.id: s for s in conn.compute.servers(details=True, all_projects=True)}
        states = [servers[i].status for i in ids]
        assert "ERROR" not in states, [(s.id, s.fault) for s in servers.values() if s.id in ids]
        return all(s == "ACTIVE" for s in states)

    await wait_for(f"{names} ACTIVE", all_active, timeout_s=timeout_s)
    return ids


def action_names(conn: Any, server_id: str) -> list[str]:
    """The server's instance actions (os-instance-actions), newest first."""
    actions = list(conn.compute.server_actions(server_id))
    actions.sort(key=lambda a: a.start_time or "", reverse=True)
    return [a.action for a in actions]
