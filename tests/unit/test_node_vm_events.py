"""The node's libvirt event loop: connection events are logged, never fatal."""

from __future__ import annotations

from types import SimpleNamespace

import trio
import trio.testing
from structlog.testing import capture_logs

from meshha.agent.node import Node, NodePorts
from meshha.config.synthetic import synthetic_segment
from meshha.recovery.ports import VmEvent
from tests.unit.test_node_errors import RefusingLog, default_structlog

__all__ = ["default_structlog"]  # autouse: capture from structlog's defaults


async def test_libvirt_connection_events_are_logged_not_fatal() -> None:
    """libvirtd going away and coming back (a host powered on again, libvirtd restarted)
    is logged with its kind. The log call once passed `event=` to structlog, whose first
    argument is the event: a TypeError that killed the agent on every start of a lab
    host powered back on (it never rejoined its segment)."""
    seg = synthetic_segment(3)
    send, receive = trio.open_memory_channel[VmEvent](4)
    ports = NodePorts(
        log=RefusingLog(),  # type: ignore[arg-type]
        transport=SimpleNamespace(send=lambda *a: None),  # type: ignore[arg-type]
        ledger=SimpleNamespace(append=lambda i, e: None),  # type: ignore[arg-type]
        now=lambda: 123.0,
        vm_events=receive,
    )
    node = Node(seg, "host1", ports)
    with capture_logs() as logs, trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node._vm_event_loop)
            send.send_nowait(VmEvent("hypervisor_down", None, "connection closed"))
            send.send_nowait(VmEvent("hypervisor_up", None, "reconnected"))
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    seen = [(x["kind"], x["detail"]) for x in logs if x["event"] == "libvirt_connection"]
    assert seen == [("hypervisor_down", "connection closed"), ("hypervisor_up", "reconnected")]
