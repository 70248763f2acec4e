"""A Raft stand-in for the simulator, behind the same log port as pysyncobj.

It models what meshha's safety rests on, not Raft's message exchange: one committed
history; a leader per term; an entry commits only while its leader reaches a majority of
voters on the Raft network (so a minority never commits); a leader that loses its
majority stops leading at once (stricter than pysyncobj's leaderFallbackTimeout) and a
new one is elected among the voters that reach a majority after `election_timeout_s`;
a member receives committed entries only while it reaches the leader. Proposals take
one `commit_latency_s`; they fail with LogError when there is no quorum.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import trio

from meshha.config.model import Segment, majority
from meshha.errors import LogError
from meshha.raft.entries import Entry
from meshha.sim.network import SimNetwork

TICK_S = 0.05


class SimRaft:
    def __init__(
        self,
        segment: Segment,
        net: SimNetwork,
        rng: random.Random,
        *,
        network: str = "admin",
        commit_latency_s: float = 0.002,
    ) -> None:
        self.segment = segment
        self.net = net
        self.rng = rng
        self.network = network
        self.voters = segment.voters
        self.need = majority(len(self.voters))
        self.election_timeout_s = segment.timings.election_timeout_s
        self.commit_latency_s = commit_latency_s
        self.log: list[Entry] = []
        self.term = 0
        self.leader: str | None = None
        self.leaderless_since = 0.0
        self.history: list[tuple[float, int, str | None]] = []  # (t, term, leader)
        self.commit_times: list[float] = []
        self._committed = trio.Event()
        # Members that neither vote, acknowledge nor lead (meshha.sim.host_faults): their
        # agent is stopped, or their journal cannot persist (`disk_full`: frozen at their
        # next write, a committed entry or an election, as PysyncobjLog freezes).
        self.frozen: set[str] = set()
        self.disk_full: set[str] = set()

    # -- connectivity ------------------------------------------------------------------

    def reach(self, a: str, b: str) -> bool:
        if a in self.frozen or b in self.frozen:
            return False
        return (a == b and self.net.cloud.machines[a].alive) or self.net.link_up(self.network, a, b)

    def holds_majority(self, host: str) -> bool:
        return sum(1 for v in self.voters if self.reach(host, v)) >= self.need

    def leading(self, host: str) -> bool:
        return self.leader == host and self.holds_majority(host)

    def in_quorum(self, host: str) -> bool:
        return (
            self.leader is not None
            and self.holds_majority(self.leader)
            and self.reach(host, self.leader)
        )

    # -- the election loop -------------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.leaderless_since = trio.current_time() - self.election_timeout_s
        task_status.started()
        while True:
            now = trio.current_time()
            if self.leader is not None and not self.holds_majority(self.leader):
                self.leader = None
                self.leaderless_since = now
                self.history.append((now, self.term, None))
            if self.leader is None and now - self.leaderless_since >= self.election_timeout_s:
                self.frozen |= self.disk_full  # a vote is a journal write
                candidates = sorted(
                    v
                    for v in self.voters
                    if self.net.cloud.machines[v].alive and self.holds_majority(v)
                )
                if candidates:
                    self.term += 1
                    self.leader = self.rng.choice(candidates)
                    self.history.append((now, self.term, self.leader))
                    self._notify()
            await trio.sleep(TICK_S)

    def _notify(self) -> None:
        self._committed.set()
        self._committed = trio.Event()

    async def propose(self, host: str, entry: Entry, timeout_s: float) -> int:
        with trio.move_on_after(timeout_s):
            while True:
                leader = self.leader
                if leader is not None and self.in_quorum(host):
                    await trio.sleep(self.commit_latency_s)
                    self.frozen |= self.disk_full  # every member persists the entry
                    if self.leader == leader and self.leading(leader) and self.reach(host, leader):
                        self.log.append(entry)
                        self.commit_times.append(trio.current_time())
                        self._notify()
                        return len(self.log)
                await trio.sleep(TICK_S)
        raise LogError(
            f"no quorum to commit from {host} within {timeout_s:g}s", kind="no_quorum", where=host
        )

    async def stream(self, host: str, index: int) -> AsyncIterator[tuple[int, Entry]]:
        while True:
            if self.in_quorum(host) or self.leader == host:
                while index < len(self.log):
                    index += 1
                    yield index, self.log[index - 1]
            with trio.move_on_after(TICK_S * 2):
                await self._committed.wait()


class SimLog:
    """The log port one node sees."""

    def __init__(self, raft: SimRaft, me: str) -> None:
        self.raft, self.me = raft, me

    async def propose(self, entry: Entry, *, timeout_s: float) -> int:
        return await self.raft.propose(self.me, entry, timeout_s)

    def committed_from(self, index: int) -> AsyncIterator[tuple[int, Entry]]:
        return self.raft.stream(self.me, index)

    @property
    def is_leader(self) -> bool:
        return self.raft.leader == self.me

    @property
    def has_quorum(self) -> bool:
        return self.raft.in_quorum(self.me)

    @property
    def commit_index(self) -> int:
        return len(self.raft.log)

    @property
    def leader(self) -> str | None:
        return self.raft.leader

    @property
    def term(self) -> int:
        return self.raft.term
