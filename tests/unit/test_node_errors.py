"""Errors the node gets past (a proposal or a result commit that failed) are no longer
only kept in NodeStats.last_error: they are logged with their kind, counted by kind, and
shown by `meshctl status` (the control handler's `errors`)."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
import trio
import trio.testing
from structlog.testing import capture_logs

from meshha.agent.node import Node, NodePorts
from meshha.agent.service import ControlHandler
from meshha.config.synthetic import synthetic_segment
from meshha.errors import LogError
from meshha.raft import entries as E


class RefusingLog:
    leader, term, is_leader, has_quorum, commit_index = None, 1, False, False, 0

    async def propose(self, entry: dict[str, Any], *, timeout_s: float) -> int:
        raise LogError("no leader with a quorum", kind="no_quorum", where="host1")

    async def committed_from(self, index: int) -> Any:
        await trio.sleep_forever()
        yield


@pytest.fixture(autouse=True)
def default_structlog() -> Iterator[None]:
    """Another test may have configured a level filter (the CLI's): capture from the
    defaults, then put the configuration back."""
    saved = structlog.get_config()
    structlog.reset_defaults()
    yield
    structlog.configure(**saved)


async def test_failed_proposals_are_logged_counted_and_shown() -> None:
    seg = synthetic_segment(3)
    ports = NodePorts(
        log=RefusingLog(),  # type: ignore[arg-type]
        transport=SimpleNamespace(send=lambda *a: None),  # type: ignore[arg-type]
        ledger=SimpleNamespace(append=lambda i, e: None),  # type: ignore[arg-type]
        now=lambda: 123.0,
    )
    node = Node(seg, "host1", ports)
    with capture_logs() as logs, trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node._proposer)
            node.propose(E.maintenance(ts=1.0, by="host1", host="host2", on=True, reason="x"))
            node.propose(E.maintenance(ts=2.0, by="host1", host="host2", on=False, reason="y"))
            await trio.testing.wait_all_tasks_blocked()  # both refused, the proposer idle
            nursery.cancel_scope.cancel()
    failed = [x for x in logs if x["event"] == "propose_failed"]
    assert [(x["kind"], x["entry_kind"], x["log_level"]) for x in failed] == [
        ("no_quorum", "maintenance", "warning")
    ] * 2
    handler = ControlHandler(seg, node, RefusingLog(), None, lambda: 130.0)
    errors = handler.status()["errors"]
    assert errors["counts"] == {"propose/no_quorum": 2}
    assert errors["last"]["kind"] == "propose/no_quorum" and errors["last"]["ts"] == 123.0
    assert "no leader with a quorum" in errors["last"]["error"]


async def test_a_refused_stall_report_is_proposed_again_while_recent() -> None:
    """Right after a stall this member's Raft may not reach the leader yet: the one report
    of the stall must not be lost to one refused proposal (a refused observation is
    proposed again from the difference; a stall report would not be)."""
    seg = synthetic_segment(3)
    now = [100.0]
    ports = NodePorts(
        log=RefusingLog(),  # type: ignore[arg-type]
        transport=SimpleNamespace(send=lambda *a: None),  # type: ignore[arg-type]
        ledger=SimpleNamespace(append=lambda i, e: None),  # type: ignore[arg-type]
        now=lambda: now[0],
    )
    node = Node(seg, "host1", ports)
    node._own_stall(1.0, 50.0)
    (report,) = node._stall_reports
    old = E.process_failure(
        ts=now[0] - node.stalls.window_s - 1,
        by="host1",
        host="host1",
        process="meshha-agent",
        outcome="stalled",
        detail="long ago",
    )
    other = E.maintenance(ts=1.0, by="host1", host="host2", on=True, reason="x")
    node._stall_reports.clear()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node._proposer)
            for entry in (report, old, other):
                node.propose(entry)
            await trio.testing.wait_all_tasks_blocked()
            nursery.cancel_scope.cancel()
    assert list(node._stall_reports) == [report]  # the recent one waits for a quorum
