"""The Raft port: pysyncobj's TCP transport with bounded connections (the classes are in
meshha.raft.connections), and acknowledgements held until the journal is durable.

Why this shape. pysyncobj's own `TcpConnection` reads whatever a peer sends into one
buffer (`bytes +=`, quadratic) until the frame length in the first 4 bytes is reached,
up to 2 GiB, before anything is authenticated; it reads until the socket is empty within
one tick; a connection that never speaks is never timed out; any number may be opened.
One unauthenticated connection that sends a huge length and then garbage pinned a
leader's core and tripled its memory (issue 12). Two fixes were possible: an HMAC
framing of our own in front of pysyncobj's (a second envelope around its Fernet one), or
replacing the connection and server classes under `TCPTransport` through the two places
that construct them (`addNode`, `_createServer`). This does the second: the wire format
stays byte for byte pysyncobj's (4-byte length, Fernet token over zlib'd pickle, the
random-key handshake), so nothing is added per message and a member running this talks
to one that does not; and every bound sits where the bytes arrive, so nothing can reach
a buffer before it is checked. Authentication remains pysyncobj's: Fernet (AES-CBC +
HMAC-SHA256 with a key derived from the segment's Raft password) on every frame, plus
the per-connection random keys that make a replayed frame useless after the first one.

The bounds (`PortLimits`, each with what it trades off):

- A connection is *authenticated* once a frame carrying the random key we sent on it
  decrypts: that needs the password and is fresh (a replayed recorded frame cannot carry
  our new key). Until then a frame may be at most `handshake_frame_b` (the handshake's
  frames are ~200 B); after it, `max_frame_b` (an append_entries batch is at most
  ~2 x 64 KiB of entries; a snapshot chunk 64 KiB). A length over the bound closes the
  connection after reading 4 bytes. Decompression is capped at `max_message_b`.
- Each poll event reads at most `read_budget_b` per connection, so one fast sender
  cannot keep the tick thread (heartbeats, elections) from the rest of its work. The
  read buffer is a bytearray consumed from the front: linear, never quadratic.
- An incoming connection that has not authenticated within `handshake_timeout_s` is
  closed; so is any connection silent for longer than pysyncobj's connectionTimeout
  (pysyncobj checks that only when data arrives). Our own sends are bounded too: a peer
  that stops reading is dropped once `max_send_buffer_b` waits for it.
- At most `max_pending` unauthenticated incoming connections at once, and
  `max_pending_per_ip` from one address; new connections from addresses that are not
  trusted (the voters' own, plus `trusted_ips`) are admitted at `accept_rate_per_s`
  (burst `accept_burst`). When that runs out the listening socket is left alone for
  `accept_pause_s`: the flood waits in the kernel's backlog, costing this process
  nothing, instead of being accepted and closed at full speed. The price: a member
  that reconnects from an untrusted address during a flood may wait a few seconds;
  voters (trusted, and they connect from their own Raft address) are admitted first
  and are never refused for the rate. Established connections are never affected.
- `max_connections` bounds all of them, authenticated read-only members included.

Refusals are counted (`PortCounters`, shown by `PysyncobjLog.port_counters`) and
logged at most every `log_interval_s`.

The durability barrier. `send` holds every message that acknowledges persisted state
(`next_node_idx`, a vote, a vote request) while the journal has records not yet on
stable storage, and everything after it on the same connection (order is kept per
peer); `release_held` sends them once the journal synced (meshha.raft.journal).
"""

from __future__ import annotations

import functools
import socket
import time
from collections.abc import Callable
from typing import Any

import structlog
from pysyncobj.tcp_connection import CONNECTION_STATE
from pysyncobj.transport import TCPTransport

from meshha.raft.connections import (
    BoundedConnection,
    BoundedServer,
    PortCounters,
    PortLimits,
    TokenBucket,
)

log = structlog.get_logger("meshha.raft.port")

HELD_TYPES = frozenset({"next_node_idx", "response_vote", "request_vote"})
KEEPALIVE_TYPE = "meshha_keepalive"

__all__ = ["HELD_TYPES", "KEEPALIVE_TYPE", "MeshhaTransport", "PortCounters", "PortLimits"]


class MeshhaTransport(TCPTransport):
    """`TCPTransport` over `BoundedConnection`/`BoundedServer`, noting when each node last
    sent Raft traffic (for `has_quorum`: pysyncobj's `hasQuorum` only counts open
    connections; our keepalives do not count), and holding acknowledgements until
    `is_durable()` (see the module doc)."""

    def __init__(
        self,
        syncObj: Any,
        selfNode: Any,
        otherNodes: Any,
        *,
        limits: PortLimits,
        trusted_ips: frozenset[str],
        source_ip: str | None,
        is_durable: Callable[[], bool],
    ) -> None:
        self.heard: dict[str, float] = {}
        self.counters = PortCounters()
        self._limits = limits
        self._trusted = trusted_ips
        self._source_ip = source_ip
        self._is_durable = is_durable
        self._bucket = TokenBucket(limits.accept_rate_per_s, limits.accept_burst)
        self._held: dict[Any, list[Any]] = {}
        self._logged_at = 0.0
        self._logged_counts: dict[str, float] = {}
        super().__init__(syncObj, selfNode, otherNodes)

    # ---- construction points of TCPTransport -------------------------------------------

    def _new_connection(
        self, sock: socket.socket | None = None, peer_ip: str | None = None
    ) -> BoundedConnection:
        conf = self._syncObj.conf
        conn = BoundedConnection(
            self._syncObj._poller,
            self._limits,
            self.counters,
            timeout_s=conf.connectionTimeout,
            send_buffer_b=conf.sendBufferSize,
            recv_buffer_b=conf.recvBufferSize,
            sock=sock,
            peer_ip=peer_ip,
            source_ip=self._source_ip,
            keepalive=conf.tcp_keepalive,
        )
        return conn

    def _createServer(self) -> None:
        conf = self._syncObj.conf
        assert self._syncObj.encryptor is not None, "the Raft port needs a password"
        assert conf.bindAddress, "meshha always binds the Raft port to one address"
        host, port = conf.bindAddress.rsplit(":", 1)
        self._server = BoundedServer(
            self._syncObj._poller,
            host,
            int(port),
            self._onNewIncomingConnection,
            make_connection=lambda sock, ip: self._new_connection(sock, ip),
            admit=self._admit,
            limits=self._limits,
            send_buffer_b=conf.sendBufferSize,
            recv_buffer_b=conf.recvBufferSize,
        )

    def addNode(self, node: Any) -> None:
        self._nodes.add(node)
        self._nodeAddrToNode[node.address] = node
        if self._shouldConnect(node):
            conn = self._new_connection()
            conn.encryptor = self._syncObj.encryptor
            conn.setOnConnectedCallback(functools.partial(self._onOutgoingConnected, conn))
            conn.setOnMessageReceivedCallback(functools.partial(self._onMessageReceived, node))
            conn.setOnDisconnectedCallback(functools.partial(self._onDisconnected, conn))
            self._connections[node] = conn

    # ---- admission and sweeping ----------------------------------------------------------

    def _admit(self, ip: str) -> bool:
        now = time.monotonic()
        pending = [c for c in self._unknownConnections if isinstance(c, BoundedConnection)]
        total = len(self._connections) + len(pending)
        same_ip = sum(1 for c in pending if c.peer_ip == ip)
        trusted = ip in self._trusted
        ok = total < self._limits.max_connections and same_ip < self._limits.max_pending_per_ip
        if ok and not trusted:
            untrusted = sum(1 for c in pending if c.peer_ip not in self._trusted)
            ok = untrusted < self._limits.max_pending and self._bucket.take(now)
            if not ok and self._bucket.tokens < 1 and self._server is not None:
                self._server.pause(now)
        if not ok:
            self.counters.refused_connections += 1
        return ok

    def _onTick(self) -> None:
        super()._onTick()
        now = time.monotonic()
        if isinstance(self._server, BoundedServer):
            self.counters.paused_s += self._server.resume_if_due(now)
        for conn in list(self._unknownConnections):
            if now - conn.opened_at > self._limits.handshake_timeout_s:
                self.counters.handshake_timeouts += 1
                conn.disconnect()
        timeout = self._syncObj.conf.connectionTimeout
        for conn in list(self._connections.values()):
            if conn.state != CONNECTION_STATE.DISCONNECTED and conn.idle_s(now) > timeout:
                self.counters.idle_timeouts += 1
                conn.disconnect()
        self._log_refusals(now)

    def _log_refusals(self, now: float) -> None:
        if now - self._logged_at < self._limits.log_interval_s:
            return
        counts = self.counters.snapshot()
        if counts != self._logged_counts and any(
            counts[k] != self._logged_counts.get(k, 0) for k in counts if k != "idle_timeouts"
        ):
            log.warning("raft port refused input (since start)", **counts)
        self._logged_at, self._logged_counts = now, counts

    # ---- messages ------------------------------------------------------------------------

    def _onMessageReceived(self, node: Any, message: Any) -> None:
        if not (isinstance(message, dict) and message.get("type") == KEEPALIVE_TYPE):
            self.heard[node.id] = time.monotonic()
        super()._onMessageReceived(node, message)

    def send(self, node: Any, message: Any) -> bool:
        acknowledges = isinstance(message, dict) and message.get("type") in HELD_TYPES
        if node not in self._held and not (acknowledges and not self._is_durable()):
            return super().send(node, message)
        conn = self._connections.get(node)
        if conn is None or conn.state != CONNECTION_STATE.CONNECTED:
            return False
        self._held.setdefault(node, []).append(message)
        return True

    def release_held(self) -> None:
        """Send what `send` held back; call only once the journal is durable."""
        assert self._is_durable()
        held, self._held = self._held, {}
        for node, messages in held.items():
            for message in messages:
                if not super().send(node, message):
                    break

    @property
    def holding(self) -> int:
        return sum(map(len, self._held.values()))
