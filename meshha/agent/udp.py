"""UDP probe transport: one socket per network, bound to this host's address on it.

Outgoing probes are encoded with the segment key (meshha.probes.wire) and sent without
blocking; incoming datagrams are checked by the wire Decoder (MAC, sender, source address,
replay window of the sender's epoch) and only then handed to the node. A bad datagram is
dropped and counted by reason; it never reaches the prober and never raises.

The transport also measures the peers' clocks (meshha.probes.clock): it notes when each
ping left (monotonic) and, when the peer's own ack to it arrives, feeds the round trip
and the ack's timestamp to the `SegmentClock`; `segment_now` is the time the agent stamps
on what it commits. Only direct acks count (a relayed ack carries the helper's clock).

And the kernel-level liveness signal (meshha.probes.liveness): on each network the
transport listens on TCP at the probe port (backlog `LISTEN_BACKLOG`, enough for every
peer's knocks through a long stall) and only accepts and closes; `knock(network, peer)`
connects to a peer's listener (bounded: one per peer and network in flight, at most one
per probe interval, `MAX_KNOCKS` in all) and records whether the handshake completed.
"""

from __future__ import annotations

import math
import socket
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import Any

import structlog
import trio

from meshha.config.model import Segment
from meshha.probes import wire
from meshha.probes.clock import SegmentClock
from meshha.probes.liveness import KNOCK_ANSWERED, KNOCK_REFUSED, KNOCK_SILENT, KernelLiveness

log = structlog.get_logger("meshha.udp")
RECV_BUFFER_B = 2048
MAX_PINGS_TIMED = 4096  # bound on pings awaiting an ack for a clock sample
LISTEN_BACKLOG = 1024  # knocks queued while this agent is stopped: peers x networks x s / interval
MAX_KNOCKS = 64  # knocks in flight at once

Deliver = Callable[[str, str, dict[str, Any]], None]


class UdpTransport:
    def __init__(
        self,
        segment: Segment,
        me: str,
        key: bytes,
        now: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.segment = segment
        self.me = me
        self.key = key
        self.now = now  # this host's wall clock: sent in every datagram, never trusted
        self.mono = mono
        self.deliver: Deliver | None = None
        self.epoch = wire.new_epoch()
        self.seq = wire.SeqCounter()
        self.clock = SegmentClock(
            me,
            segment.host_names,
            max_skew_s=segment.timings.max_clock_skew_s,
            max_rtt_s=segment.timings.probe_timeout_s,
        )
        self._pings: OrderedDict[tuple[str, str, int], float] = OrderedDict()
        t = segment.timings
        # A late answer is still an answer (a dead host gives none): a generous timeout
        # costs no detection time, and spares a slow observer a false "silent".
        self.knock_timeout_s = 4 * t.probe_interval_s
        self.kernel = KernelLiveness(
            stall_grace_s=t.stall_grace_s, window_s=2 * self.knock_timeout_s + t.probe_interval_s
        )
        self._knocking: dict[tuple[str, str], float] = {}  # (net, peer) -> started
        self.knocks: Counter[str] = Counter()  # outcomes, for status and metrics
        self._last_knock: dict[tuple[str, str], float] = {}
        self._nursery: trio.Nursery | None = None
        self.listeners: dict[str, socket.socket] = {}
        self.sockets: dict[str, socket.socket] = {}
        self.decoders: dict[str, wire.Decoder] = {}
        self.peers: dict[str, dict[str, tuple[str, int]]] = {}
        self.sent = 0
        self.send_errors = 0
        me_host = segment.host(me)
        for net in me_host.networks:
            port = segment.network(net).probe_port
            self.peers[net] = {
                h.name: (addr, port)
                for h in segment.hosts
                if h.name != me and (addr := h.address(net)) is not None
            }
            senders = {name: addr for name, (addr, _) in self.peers[net].items()}
            self.decoders[net] = wire.Decoder(key, senders=senders)

    def bind(self) -> None:
        """Open every socket now, so a port in use is reported before anything starts."""
        me_host = self.segment.host(self.me)
        for net in me_host.networks:
            addr = me_host.address(net)
            port = self.segment.network(net).probe_port
            family = socket.AF_INET6 if addr and ":" in addr else socket.AF_INET
            s = socket.socket(family, socket.SOCK_DGRAM)
            s.setblocking(False)
            listener = socket.socket(family, socket.SOCK_STREAM)
            listener.setblocking(False)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((addr, port))
                listener.bind((addr, port))
                listener.listen(LISTEN_BACKLOG)
            except OSError as err:
                s.close()
                listener.close()
                raise OSError(
                    err.errno, f"probe socket for network {net} on {addr}:{port}: {err.strerror}"
                ) from None
            self.sockets[net] = s
            self.listeners[net] = listener

    def send(self, network: str, to: str, msg: dict[str, Any]) -> None:
        s = self.sockets.get(network)
        dest = self.peers.get(network, {}).get(to)
        if s is None or dest is None:
            return
        data = wire.encode(
            msg, key=self.key, sender=self.me, epoch=self.epoch, seq=self.seq.next(), now=self.now()
        )
        try:
            s.sendto(data, dest)
            self.sent += 1
        except OSError:  # link down, no route, buffer full: a lost probe, as on the wire
            self.send_errors += 1
            return
        if msg.get("t") == "ping" and isinstance(msg.get("id"), int):
            self._pings[(network, to, msg["id"])] = self.mono()
            while len(self._pings) > MAX_PINGS_TIMED:
                self._pings.popitem(last=False)

    def segment_now(self) -> float:
        """Segment time (the median of the members' wall clocks, meshha.probes.clock)."""
        return self.clock.now(self.mono(), self.now())

    def skewed_hosts(self) -> dict[str, float]:
        return self.clock.skewed(self.mono(), self.now())

    def clock_judged(self) -> bool:
        return self.clock.judged(self.mono(), self.now())

    def wall_to_segment(self, wall_ts: float) -> float:
        """A time read on this host's wall clock (e.g. /proc/stat's btime, which follows
        its steps) in segment time: shifted by this host's offset from the median."""
        mono, wall = self.mono(), self.now()
        return wall_ts + self.clock.now(mono, wall) - wall

    def clock_report(self) -> dict[str, Any]:
        return self.clock.report(self.mono(), self.now())

    def _timed(self, network: str, got: wire.Message) -> None:
        msg = got.msg
        if msg.get("t") != "ack" or "via" in msg or not isinstance(msg.get("id"), int):
            return
        sent = self._pings.pop((network, got.sender, msg["id"]), None)
        if sent is not None:
            self.clock.sample(got.sender, sent, self.mono(), got.ts)

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if not self.sockets:
            self.bind()
        async with trio.open_nursery() as nursery:
            for net, s in self.sockets.items():
                nursery.start_soon(self._receive, net, trio.socket.from_stdlib_socket(s))
            for net, listener in self.listeners.items():
                nursery.start_soon(self._accept, net, trio.socket.from_stdlib_socket(listener))
            self._nursery = nursery
            task_status.started()

    async def _receive(self, network: str, sock: trio.socket.SocketType) -> None:
        decoder = self.decoders[network]
        while True:
            try:
                data, addr = await sock.recvfrom(RECV_BUFFER_B)
            except OSError as err:  # e.g. ICMP port unreachable surfacing on Linux
                log.debug("recv_error", network=network, error=str(err))
                continue
            got = decoder.decode(data, addr)
            if isinstance(got, wire.Drop):
                continue
            self._timed(network, got)
            if self.deliver is not None:
                self.deliver(network, got.sender, got.msg)

    async def _accept(self, network: str, listener: trio.socket.SocketType) -> None:
        """Accept and close: the handshake, done by the kernel, is the whole answer."""
        while True:
            try:
                conn, _ = await listener.accept()
            except OSError as err:  # e.g. EMFILE: knocks wait in the backlog meanwhile
                log.debug("accept_error", network=network, error=str(err))
                await trio.sleep(0.1)
                continue
            conn.close()

    def knock(self, network: str, peer: str) -> None:
        """Start a TCP handshake with `peer`'s kernel on `network` (see the module doc)."""
        key = (network, peer)
        dest = self.peers.get(network, {}).get(peer)
        now = trio.current_time()
        if (
            self._nursery is None
            or dest is None
            or key in self._knocking
            or len(self._knocking) >= MAX_KNOCKS
            or now - self._last_knock.get(key, -math.inf) < self.segment.timings.probe_interval_s
        ):
            return
        self._knocking[key] = self._last_knock[key] = now
        self._nursery.start_soon(self._knock, network, peer, dest)

    async def _knock(self, network: str, peer: str, dest: tuple[str, int]) -> None:
        outcome = KNOCK_SILENT
        src = self.segment.host(self.me).address(network)
        sock = trio.socket.socket(
            socket.AF_INET6 if ":" in dest[0] else socket.AF_INET, socket.SOCK_STREAM
        )
        try:
            with sock, trio.move_on_after(self.knock_timeout_s):
                if src is not None:
                    await sock.bind((src, 0))
                await sock.connect(dest)
                outcome = KNOCK_ANSWERED
        except ConnectionRefusedError:  # the kernel is up, but no agent listens
            outcome = KNOCK_REFUSED
        except OSError:  # unreachable: no answer from it
            outcome = KNOCK_SILENT
        finally:
            sent = self._knocking.pop((network, peer))
            self.knocks[outcome] += 1
            self.kernel.record(peer, network, sent, trio.current_time(), outcome)

    def kernel_stalled(self, peer: str, network: str, since: float, now: float) -> bool:
        return self.kernel.stalled(peer, network, since, now)

    def drops(self) -> dict[str, dict[str, int]]:
        return {net: dict(d.drops) for net, d in self.decoders.items()}
