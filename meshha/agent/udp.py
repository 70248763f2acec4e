"""UDP probe transport: one socket per network, bound to this host's address on it.

Outgoing probes are encoded with the segment key (meshha.probes.wire) and sent without
blocking; incoming datagrams are checked by the wire Decoder (MAC, sender, source address,
age, replay window) and only then handed to the node. A bad datagram is dropped and
counted by reason; it never reaches the prober and never raises.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import structlog
import trio

from meshha.config.model import Segment
from meshha.probes import wire

log = structlog.get_logger("meshha.udp")
RECV_BUFFER_B = 2048

Deliver = Callable[[str, str, dict[str, Any]], None]


class UdpTransport:
    def __init__(
        self, segment: Segment, me: str, key: bytes, now: Callable[[], float] = time.time
    ) -> None:
        self.segment = segment
        self.me = me
        self.key = key
        self.now = now
        self.deliver: Deliver | None = None
        self.seq = wire.SeqCounter(now())
        self.sockets: dict[str, socket.socket] = {}
        self.decoders: dict[str, wire.Decoder] = {}
        self.peers: dict[str, dict[str, tuple[str, int]]] = {}
        self.sent = 0
        self.send_errors = 0
        me_host = segment.host(me)
        max_age = max(wire.DEFAULT_MAX_AGE_S, 4 * segment.timings.max_clock_skew_s)
        for net in me_host.networks:
            port = segment.network(net).probe_port
            self.peers[net] = {
                h.name: (addr, port)
                for h in segment.hosts
                if h.name != me and (addr := h.address(net)) is not None
            }
            senders = {name: addr for name, (addr, _) in self.peers[net].items()}
            self.decoders[net] = wire.Decoder(key, max_age_s=max_age, senders=senders)

    def bind(self) -> None:
        """Open every socket now, so a port in use is reported before anything starts."""
        me_host = self.segment.host(self.me)
        for net in me_host.networks:
            addr = me_host.address(net)
            port = self.segment.network(net).probe_port
            s = socket.socket(
                socket.AF_INET6 if addr and ":" in addr else socket.AF_INET, socket.SOCK_DGRAM
            )
            s.setblocking(False)
            try:
                s.bind((addr, port))
            except OSError as err:
                s.close()
                raise OSError(
                    err.errno, f"probe socket for network {net} on {addr}:{port}: {err.strerror}"
                ) from None
            self.sockets[net] = s

    def send(self, network: str, to: str, msg: dict[str, Any]) -> None:
        s = self.sockets.get(network)
        dest = self.peers.get(network, {}).get(to)
        if s is None or dest is None:
            return
        data = wire.encode(msg, key=self.key, sender=self.me, seq=self.seq.next(), now=self.now())
        try:
            s.sendto(data, dest)
            self.sent += 1
        except OSError:  # link down, no route, buffer full: a lost probe, as on the wire
            self.send_errors += 1

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if not self.sockets:
            self.bind()
        async with trio.open_nursery() as nursery:
            for net, s in self.sockets.items():
                nursery.start_soon(self._receive, net, trio.socket.from_stdlib_socket(s))
            task_status.started()

    async def _receive(self, network: str, sock: trio.socket.SocketType) -> None:
        decoder = self.decoders[network]
        while True:
            try:
                data, addr = await sock.recvfrom(RECV_BUFFER_B)
            except OSError as err:  # e.g. ICMP port unreachable surfacing on Linux
                log.debug("recv_error", network=network, error=str(err))
                continue
            got = decoder.decode(data, addr, self.now())
            if isinstance(got, wire.Drop):
                continue
            if self.deliver is not None:
                self.deliver(network, got.sender, got.msg)

    def drops(self) -> dict[str, dict[str, int]]:
        return {net: dict(d.drops) for net, d in self.decoders.items()}
