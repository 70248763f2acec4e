"""Five real meshha-agent processes on loopback addresses (one per host per network).

Proves, with real pysyncobj, UDP probes, SQLite ledgers and control sockets: a leader is
elected and every member names the same one; maintenance on/off committed through any
member is visible from every member; the ledgers hold the same entry at every index;
SIGTERM drains every agent and it exits 0, removing its control socket.
"""

from __future__ import annotations

import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from meshha.agent.service import ControlHandler
from meshha.config.load import load_segment
from meshha.lab.mesh import Mesh, conflicts
from meshha.lab.segment_files import write_segment
from meshha.raft.state import SegmentState

HOSTS = tuple(f"host{i}" for i in range(1, 6))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Any:
    m = Mesh(tmp_path_factory.mktemp("mesh-lo"), HOSTS, reserved=["host5"])
    try:
        m.start(timeout_s=40)
        yield m
    finally:
        m.close()


def maintenance_of(mesh: Mesh, observer: str, host: str) -> tuple[str, Any]:
    st = mesh.status(observer)
    h = next(x for x in st["hosts"] if x["name"] == host)
    return h["verdict"], h["maintenance"]


@pytest.mark.integration
def test_one_leader_and_every_member_names_it(mesh: Mesh) -> None:
    leader = mesh.wait_leader(20)
    statuses = {h: mesh.status(h) for h in HOSTS}
    assert {s["leader"] for s in statuses.values()} == {leader}
    assert len({s["term"] for s in statuses.values()}) == 1
    assert [h for h, s in statuses.items() if s["is_leader"]] == [leader]
    for s in statuses.values():
        assert s["has_quorum"] and not s["stale"] and not s["isolated"]
        assert {x["name"]: x["verdict"] for x in s["hosts"]} == dict.fromkeys(HOSTS, "healthy")


@pytest.mark.integration
def test_maintenance_round_trip_seen_from_every_host(mesh: Mesh) -> None:
    leader = mesh.wait_leader(20)
    via = next(h for h in HOSTS if h != leader)  # a follower forwards to the leader
    reply = mesh.call(via, {"op": "maintenance", "host": "host3", "on": True, "reason": "bios"})
    assert reply["has_quorum"]
    for h in HOSTS:
        mesh.wait_until(
            lambda h=h: maintenance_of(mesh, h, "host3")[0] == "maintenance",
            10,
            f"{h} sees host3 in maintenance",
        )
        _verdict, info = maintenance_of(mesh, h, "host3")
        assert info["reason"] == "bios"
    mesh.call("host4", {"op": "maintenance", "host": "host3", "on": False})
    for h in HOSTS:
        mesh.wait_until(
            lambda h=h: maintenance_of(mesh, h, "host3") == ("healthy", None),
            10,
            f"{h} sees host3 healthy again",
        )
    for h in HOSTS:
        kinds = [(e["host"], e["on"]) for _, e in mesh.ledger(h) if e["kind"] == "maintenance"]
        assert kinds[-2:] == [("host3", True), ("host3", False)], h


@pytest.mark.integration
def test_ledgers_identical_on_every_host(mesh: Mesh) -> None:
    book = mesh.wait_ledgers_equal(HOSTS, timeout_s=15)
    books = mesh.ledgers(HOSTS)
    assert not conflicts(books)
    assert all(b == book for b in books.values())
    assert any(e["kind"] == "maintenance" for e in book.values())
    idx = sorted(book)
    assert idx == sorted(set(idx)) and idx[0] >= 1


@pytest.mark.integration
def test_sigterm_drains_and_exits_zero(mesh: Mesh) -> None:
    codes = mesh.stop_all(sig=signal.SIGTERM, timeout_s=20)
    assert codes == dict.fromkeys(HOSTS, 0), {h: mesh.log_tail(h, 5) for h in HOSTS}
    for h in HOSTS:
        assert not mesh.control(h).exists(), f"{h} left its control socket behind"
        assert '"agent_stopping"' in mesh.log_path(h).read_text()


class _Log:
    leader, term, is_leader, has_quorum = "host1", 3, True, True

    async def propose(self, entry: dict[str, Any], *, timeout_s: float) -> int:
        return 42  # the Raft index the entry committed at


async def test_maintenance_reply_names_the_committed_index(tmp_path: Path) -> None:
    hosts = [(h, {"admin": f"127.0.9.{i}"}) for i, h in enumerate(HOSTS, 1)]
    cfg = write_segment(tmp_path, hosts, networks={"admin": "alert"})
    segment = load_segment(cfg)
    state = SegmentState(segment)  # the handler reads the window's drain progress from it
    state.index = 7

    async def wait_applied(index: int) -> None:
        state.index = index

    node = SimpleNamespace(me="host2", state=state, wait_applied=wait_applied)
    handler = ControlHandler(segment, node, _Log(), ledger=None, now=lambda: 1.0)  # type: ignore[arg-type]
    reply = await handler({"op": "maintenance", "host": "host3", "on": True})
    assert reply["index"] == 42 and reply["applied"]
