"""`meshctl maintenance on HOST` through the real click entry point and control socket,
against the agent's real control handler over a committed state that a stepping leader
(the decide core with a fake executor, tests/unit/test_decide.py) moves on while the
CLI follows: the reply and the long poll show how many VMs moved and which could not."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import trio
from click.testing import CliRunner

from meshha.agent.control import serve
from meshha.agent.service import ControlHandler
from meshha.cli import main
from meshha.raft.entries import Entry
from tests.unit.test_decide import Leader, server


class SteppedNode:
    """What the handler reads of a Node: me, state, executor (set: not a dry run), and
    wait_applied; a trio task steps the leader so entries keep committing."""

    def __init__(self, leader: Leader) -> None:
        self.L, self.me, self.executor = leader, "host1", object()
        self.applied = trio.Event()

    @property
    def state(self) -> Any:
        return self.L.state

    async def wait_applied(self, index: int) -> None:
        while self.L.state.index < index:
            await self.applied.wait()

    async def stepping(self) -> None:
        while True:
            await trio.sleep(0.05)
            before = self.L.state.index
            self.L.step()
            self.L.execute()
            self.L.now += 0.5
            if self.L.state.index != before:
                self.applied.set()
                self.applied = trio.Event()


class CommitLog:
    leader, term, is_leader, has_quorum, commit_index = "host1", 3, True, True, 0

    def __init__(self, leader: Leader) -> None:
        self.L = leader

    async def propose(self, entry: Entry, timeout_s: float) -> int:
        self.L.commit(entry)
        return self.L.state.index


async def test_maintenance_on_follows_the_drain_and_names_what_could_not_move() -> None:
    big = server("vm-big", size=(8, 30000, 40))
    L = Leader(
        servers={"host2": [server("vm-a"), server("vm-b"), big]},
        free={"host1": (4, 8192, 100), "host3": (4, 8192, 100), "host4": (4, 8192, 100)},
    )
    L.run(1)
    node = SteppedNode(L)
    handler = ControlHandler(L.seg, node, CommitLog(L), None, lambda: L.now)  # type: ignore[arg-type]
    sock = Path("/tmp") / f"mhmaint-{random.randrange(10**9)}.sock"

    def run(*args: str) -> Any:
        return CliRunner().invoke(main, ["maintenance", "--control", str(sock), *args])

    async with trio.open_nursery() as nursery:
        await nursery.start(serve, sock, handler)
        nursery.start_soon(node.stepping)
        res = await trio.to_thread.run_sync(run, "on", "host2", "--reason", "bios")
        assert res.exit_code == 0, res.output
        out = res.output
        assert "maintenance on host2: committed at index" in out
        assert "disabling: moved 0 of 0 VMs" in out  # the reply, before the leader stepped
        assert "done: moved 2 of 3 VMs, could not move 1" in out
        assert "could not move vm-big: no compute host of the segment has room for it" in out
        assert L.state.in_maintenance("host2")
        moved = [i for i in L.state.intents.values() if i.action == "drain" and i.status == "ok"]
        assert sorted(i.vm for i in moved) == ["vm-a", "vm-b"]
        res = await trio.to_thread.run_sync(run, "off", "host2")
        assert res.exit_code == 0, res.output
        with trio.fail_after(10):
            while not any(i.action == "maint_release" for i in L.state.intents.values()):
                await node.wait_applied(L.state.index + 1)
        nursery.cancel_scope.cancel()
    assert not sock.exists()


async def test_maintenance_on_and_off_vouches_for_a_host_whose_bmc_lied() -> None:
    """The operator's way back for a host a BMC lied about (decide/return_.py): it stays
    out until `meshctl maintenance on` and `off`, then returns through the reconciled
    enable, whose reason in the ledger names the lie and the window."""
    from tests.unit.test_decide import T0
    from tests.unit.test_decide_return import fenced_and_back, report

    L = fenced_and_back()
    report(L, booted_at=T0 - 3600)  # booted an hour before the BMC said "off"
    L.run(5)
    assert any(i.startswith("alert:bmc-lied:host2") for i in L.state.intents)
    assert not any(i.action == "enable_compute" for i in L.state.intents.values())
    node = SteppedNode(L)
    handler = ControlHandler(L.seg, node, CommitLog(L), None, lambda: L.now)  # type: ignore[arg-type]
    sock = Path("/tmp") / f"mhvouch-{random.randrange(10**9)}.sock"

    def run(*args: str) -> Any:
        return CliRunner().invoke(main, ["maintenance", "--control", str(sock), *args])

    async with trio.open_nursery() as nursery:
        await nursery.start(serve, sock, handler)
        nursery.start_soon(node.stepping)
        res = await trio.to_thread.run_sync(run, "on", "host2", "--reason", "BMC checked")
        assert res.exit_code == 0, res.output
        assert "host2" in L.state.fenced  # nothing enables it during the window
        res = await trio.to_thread.run_sync(run, "off", "host2")
        assert res.exit_code == 0, res.output
        with trio.fail_after(10):
            while "host2" in L.state.fenced:
                await node.wait_applied(L.state.index + 1)
        nursery.cancel_scope.cancel()
    enabling = [
        i for i in L.state.intents.values() if i.action in ("enable_compute", "maint_release")
    ]
    assert [(i.action, i.status) for i in enabling] == [("enable_compute", "ok")]
    assert "operator vouched" in enabling[0].reason and "BMC checked" in enabling[0].reason
