"""An in-memory network per network name: links, partitions, loss, delay, jitter,
duplication and (through jitter) reordering, driven by a seeded PRNG.

A datagram from a to b on network n gets through only if, both when sent and when it
would arrive, both machines are alive (powered, not hung), both NICs on n are up and no
partition separates them on n.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from meshha.sim.fakes import FakeCloud

Deliver = Callable[[str, str, dict[str, Any]], None]  # (network, sender, msg)


@dataclass
class LinkQuality:
    loss: float = 0.0
    delay_s: float = 0.0005
    jitter_s: float = 0.0
    duplicate: float = 0.0


class SimNetwork:
    def __init__(self, cloud: FakeCloud, networks: tuple[str, ...], rng: random.Random) -> None:
        self.cloud = cloud
        self.networks = networks
        self.rng = rng
        self.quality = LinkQuality()
        # network -> list of groups; None network key = every network
        self.partitions: dict[str, list[set[str]]] = {}
        self.receivers: dict[str, Deliver] = {}
        self._heap: list[tuple[float, int, str, str, str, dict[str, Any]]] = []
        self._seq = itertools.count()
        self._wake = trio.Event()
        self.sent = 0
        self.delivered = 0
        self.dropped = 0
        self.sent_by: dict[str, int] = {}

    # -- faults ------------------------------------------------------------------------

    def partition(self, groups: list[set[str]], networks: tuple[str, ...] | None = None) -> None:
        for n in networks or self.networks:
            self.partitions[n] = [set(g) for g in groups]

    def heal(self) -> None:
        self.partitions.clear()

    # -- reachability ------------------------------------------------------------------

    def link_up(self, network: str, a: str, b: str) -> bool:
        ma, mb = self.cloud.machines.get(a), self.cloud.machines.get(b)
        if ma is None or mb is None or not (ma.alive and mb.alive):
            return False
        if not (ma.nics.get(network, False) and mb.nics.get(network, False)):
            return False
        groups = self.partitions.get(network)
        if groups:
            ga = next((i for i, g in enumerate(groups) if a in g), None)
            gb = next((i for i, g in enumerate(groups) if b in g), None)
            if ga != gb:
                return False
        return True

    # -- traffic -----------------------------------------------------------------------

    def send(self, network: str, src: str, dst: str, msg: dict[str, Any]) -> None:
        self.sent += 1
        self.sent_by[src] = self.sent_by.get(src, 0) + 1
        q = self.quality
        if not self.link_up(network, src, dst) or (q.loss and self.rng.random() < q.loss):
            self.dropped += 1
            return
        copies = 2 if q.duplicate and self.rng.random() < q.duplicate else 1
        now = trio.current_time()
        for _ in range(copies):
            due = now + q.delay_s + (self.rng.random() * q.jitter_s if q.jitter_s else 0.0)
            heapq.heappush(self._heap, (due, next(self._seq), network, src, dst, msg))
        self._wake.set()

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            if not self._heap:
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            due = self._heap[0][0]
            if due > trio.current_time():
                self._wake = trio.Event()
                with trio.move_on_at(due):
                    await self._wake.wait()
                continue
            _, _, network, src, dst, msg = heapq.heappop(self._heap)
            receiver = self.receivers.get(dst)
            if receiver is None or not self.link_up(network, src, dst):
                self.dropped += 1
                continue
            self.delivered += 1
            receiver(network, src, msg)


class SimTransport:
    """The Transport a Node sees: send on one named network to one host."""

    def __init__(self, net: SimNetwork, me: str) -> None:
        self.net, self.me = net, me

    def send(self, network: str, to: str, msg: dict[str, Any]) -> None:
        self.net.send(network, self.me, to, msg)
