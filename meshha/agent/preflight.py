"""The agent's start-up check of its Nova credentials: make every read call meshha will
need (those marked "start" in meshha.recovery.nova_policy), and say for each one that is
refused which call it was and which policy rule the operator must grant. Write calls
(force-down, evacuate, …) cannot be tried without an effect; their rules are in the same
table and in docs/nova-permissions.md, and a refused one names its rule when it happens.

It never stops the agent: detection and fencing do not need Nova, and a segment is better
protected by an agent that says what it cannot do than by none.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
import trio

from meshha.recovery.nova_policy import by_sdk

log = structlog.get_logger("meshha.preflight")


def _reads(conn: Any, me: str) -> list[tuple[str, Callable[[], Any]]]:
    def node_ids() -> list[str]:
        return [
            hv.id
            for hv in conn.compute.hypervisors(details=True)
            if (hv.service_details or {}).get("host") == me
        ]

    def placement(what: str) -> Callable[[], Any]:
        def call() -> Any:
            for rp in node_ids():
                response = conn.placement.get(f"/resource_providers/{rp}/{what}")
                if response.status_code >= 400:
                    from openstack import exceptions

                    exceptions.raise_from_response(response)

        return call

    return [
        ("services", lambda: list(conn.compute.services(binary="nova-compute"))),
        (
            "servers",
            lambda: list(conn.compute.servers(details=True, all_projects=True, compute_host=me)),
        ),
        ("aggregates", lambda: list(conn.compute.aggregates())),
        ("hypervisors", node_ids),
        ("placement GET /resource_providers/{uuid}/inventories", placement("inventories")),
        ("placement GET /resource_providers/{uuid}/usages", placement("usages")),
    ]


def check_nova_sync(connect: Callable[[], Any], me: str) -> list[str]:
    """One message per start-up call that failed: what, the HTTP status, the rules."""
    from keystoneauth1 import exceptions as ksa
    from openstack import exceptions as sdk

    try:
        conn = connect()
    except (sdk.SDKException, ksa.ClientException) as e:
        return [f"cannot connect to Nova: {e}"]
    problems = []
    table = by_sdk()
    for name, call in _reads(conn, me):
        try:
            call()
        except (sdk.SDKException, ksa.ClientException) as e:
            status = getattr(e, "status_code", None)
            rules = ", ".join(table[name].rules)
            if status in (401, 403):
                problems.append(f"{name} ({table[name].http}) refused ({status}): grant {rules}")
            else:
                problems.append(f"{name} ({table[name].http}) failed: {e}")
    return problems


async def check_nova(connect: Callable[[], Any], me: str) -> list[str]:
    """check_nova_sync in a worker thread; logs each problem once."""
    problems = await trio.to_thread.run_sync(check_nova_sync, connect, me)
    for p in problems:
        log.error("nova_permission_missing", problem=p)
    if not problems:
        log.info("nova_permissions_ok", me=me)
    return problems
