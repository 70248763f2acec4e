"""The Raft port's connections: pysyncobj's `TcpConnection` and `TcpServer` interfaces
and wire format, with every bound applied where the bytes arrive. What the bounds are
and why: meshha.raft.transport, which plugs these under pysyncobj's `TCPTransport`."""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pysyncobj.pickle as pysyncobj_pickle
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE, _getAddrType

_LEN = struct.Struct("i")  # pysyncobj's length prefix (native int), kept for compatibility
_READ = POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR
_ALL = _READ | POLL_EVENT_TYPE.WRITE


@dataclass(frozen=True)
class PortLimits:
    """The Raft port's bounds; see the module doc for what each trades off."""

    handshake_frame_b: int = 4096
    max_frame_b: int = 1 << 20
    max_message_b: int = 8 << 20
    read_budget_b: int = 256 << 10
    max_send_buffer_b: int = 32 << 20
    handshake_timeout_s: float = 2.0
    max_pending: int = 16
    max_pending_per_ip: int = 4
    max_connections: int = 128
    accept_rate_per_s: float = 50.0
    accept_burst: int = 50
    accept_pause_s: float = 0.1
    accept_batch: int = 32
    listen_backlog: int = 64
    log_interval_s: float = 10.0


@dataclass
class PortCounters:
    """What the port refused since it started (read from trio: plain ints, no lock)."""

    refused_connections: int = 0  # over a connection bound or the accept rate
    oversized_frames: int = 0  # a length over the bound for the connection's state
    bad_frames: int = 0  # not decryptable, stale, not decompressible or not unpicklable
    handshake_timeouts: int = 0
    idle_timeouts: int = 0
    slow_readers: int = 0  # peers dropped for not reading what we send
    paused_s: float = 0.0  # time the listener was left alone for the accept rate

    def snapshot(self) -> dict[str, float]:
        return dict(vars(self))


@dataclass
class TokenBucket:
    rate_per_s: float
    burst: float
    tokens: float = 0.0
    at: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate_per_s)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class BoundedConnection:
    """pysyncobj's `TcpConnection` interface and wire format, with the bounds above."""

    def __init__(
        self,
        poller: Any,
        limits: PortLimits,
        counters: PortCounters,
        *,
        timeout_s: float,
        send_buffer_b: int,
        recv_buffer_b: int,
        sock: socket.socket | None = None,
        peer_ip: str | None = None,
        source_ip: str | None = None,
        keepalive: tuple[int, int, int] | None = None,
    ) -> None:
        self.sendRandKey: bytes | None = None
        self.recvRandKey: bytes | None = None
        self.recvLastTimestamp = 0
        self.encryptor: Any = None
        self.authenticated = False
        self.peer_ip = peer_ip
        self.opened_at = time.monotonic()
        self._poller = poller
        self._limits = limits
        self._counters = counters
        self._timeout_s = timeout_s
        self._send_buffer_b = send_buffer_b
        self._recv_buffer_b = recv_buffer_b
        self._source_ip = source_ip
        self._keepalive = keepalive
        self._rbuf = bytearray()
        self._wbuf = bytearray()
        self._last_read = time.monotonic()
        self._on_message: Callable[[Any], None] | None = None
        self._on_connected: Callable[[], None] | None = None
        self._on_disconnected: Callable[[], None] | None = None
        self._sock = sock
        self._fileno: int | None = None
        self._state = CONNECTION_STATE.DISCONNECTED
        if sock is not None:
            with contextlib.suppress(OSError):
                _set_keepalive(sock, keepalive)
            self._fileno = sock.fileno()
            self._state = CONNECTION_STATE.CONNECTED
            poller.subscribe(self._fileno, self._process, _ALL)

    # ---- pysyncobj's TcpConnection interface -------------------------------------------

    @property
    def state(self) -> int:
        return self._state

    def setOnConnectedCallback(self, cb: Callable[[], None] | None) -> None:
        self._on_connected = cb

    def setOnMessageReceivedCallback(self, cb: Callable[[Any], None] | None) -> None:
        self._on_message = cb

    def setOnDisconnectedCallback(self, cb: Callable[[], None] | None) -> None:
        self._on_disconnected = cb

    def fileno(self) -> int | None:
        return self._fileno

    def getSendBufferSize(self) -> int:
        return len(self._wbuf)

    def connect(self, host: str, port: int) -> bool:
        if host is None:
            return False
        self._state = CONNECTION_STATE.DISCONNECTED
        self._fileno = None
        sock = socket.socket(_getAddrType(host), socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_buffer_b)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._recv_buffer_b)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(OSError):
            _set_keepalive(sock, self._keepalive)
        sock.setblocking(False)
        self._sock = sock
        self._rbuf.clear()
        self._wbuf.clear()
        self._authenticated_reset()
        try:
            if self._source_ip is not None:  # peers recognise us by our Raft address
                sock.bind((self._source_ip, 0))
            sock.connect((host, port))
        except BlockingIOError:
            pass
        except OSError:
            sock.close()
            self._sock = None
            return False
        self._fileno = sock.fileno()
        self._state = CONNECTION_STATE.CONNECTING
        self._poller.subscribe(self._fileno, self._process, _ALL)
        return True

    def send(self, message: Any) -> None:
        if self.sendRandKey:
            message = (self.sendRandKey, message)
        data = zlib.compress(pysyncobj_pickle.dumps(message), 3)
        if self.encryptor:
            data = self.encryptor.encrypt_at_time(data, int(time.monotonic()))
        self._wbuf += _LEN.pack(len(data))
        self._wbuf += data
        if len(self._wbuf) > self._limits.max_send_buffer_b:
            self._counters.slow_readers += 1
            self.disconnect()
            return
        self._try_send()
        if self._wbuf and self._fileno is not None and self._state == CONNECTION_STATE.CONNECTED:
            self._poller.subscribe(self._fileno, self._process, _ALL)

    def disconnect(self) -> None:
        notify = self._on_disconnected is not None and self._state != CONNECTION_STATE.DISCONNECTED
        self.sendRandKey = self.recvRandKey = None
        self.recvLastTimestamp = 0
        self.authenticated = False
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._fileno is not None:
            self._poller.unsubscribe(self._fileno)
            self._fileno = None
        self._wbuf = bytearray()
        self._rbuf = bytearray()
        self._state = CONNECTION_STATE.DISCONNECTED
        if notify:
            assert self._on_disconnected is not None
            self._on_disconnected()

    # ---- the transport's side ------------------------------------------------------------

    def idle_s(self, now: float) -> float:
        return now - self._last_read

    def _authenticated_reset(self) -> None:
        self.authenticated = False
        self.opened_at = time.monotonic()
        self._last_read = self.opened_at

    def _process(self, descr: int, event: int) -> None:
        if descr != self._fileno:
            self._poller.unsubscribe(descr)
            return
        if event & POLL_EVENT_TYPE.ERROR or self._sock is None:
            self.disconnect()
            return
        if time.monotonic() - self._last_read > self._timeout_s:
            self._counters.idle_timeouts += 1
            self.disconnect()
            return
        if self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.disconnect()
            return
        if self._state == CONNECTION_STATE.CONNECTING:
            if self._on_connected is not None:
                self._on_connected()
            if self._state == CONNECTION_STATE.DISCONNECTED:
                return
            self._state = CONNECTION_STATE.CONNECTED
            self._last_read = time.monotonic()
            return
        if event & POLL_EVENT_TYPE.WRITE:
            self._try_send()
            if self._state == CONNECTION_STATE.DISCONNECTED:
                return
            self._poller.subscribe(descr, self._process, _ALL if self._wbuf else _READ)
        if event & POLL_EVENT_TYPE.READ:
            self._read()

    def _try_send(self) -> None:
        while self._wbuf and self._sock is not None:
            try:
                sent = self._sock.send(self._wbuf)
            except BlockingIOError:
                return
            except OSError:
                self.disconnect()
                return
            if sent <= 0:
                return
            del self._wbuf[:sent]

    def _read(self) -> None:
        budget = self._limits.read_budget_b
        while budget > 0 and self._sock is not None:
            try:
                chunk = self._sock.recv(min(self._recv_buffer_b, budget))
            except BlockingIOError:
                break
            except OSError:
                self.disconnect()
                return
            if not chunk:
                self.disconnect()
                return
            budget -= len(chunk)
            self._last_read = time.monotonic()
            self._rbuf += chunk
            if not self._deliver():
                return

    def _deliver(self) -> bool:
        """Hand every whole frame in the buffer on; False once the connection is closed."""
        while len(self._rbuf) >= _LEN.size:
            (length,) = _LEN.unpack_from(self._rbuf)
            bound = (
                self._limits.max_frame_b if self.authenticated else self._limits.handshake_frame_b
            )
            if not 0 < length <= bound:
                self._counters.oversized_frames += 1
                self.disconnect()
                return False
            if len(self._rbuf) < _LEN.size + length:
                return True
            frame = bytes(self._rbuf[_LEN.size : _LEN.size + length])
            del self._rbuf[: _LEN.size + length]
            ok, message = self._decode(frame)
            if not ok:
                self._counters.bad_frames += 1
                self.disconnect()
                return False
            if self._on_message is not None:
                self._on_message(message)
            if self._state == CONNECTION_STATE.DISCONNECTED:
                return False
        return True

    def _decode(self, frame: bytes) -> tuple[bool, Any]:
        try:
            data = frame
            if self.encryptor:
                stamp = self.encryptor.extract_timestamp(data)  # verifies the HMAC first
                if stamp < self.recvLastTimestamp:
                    return False, None
                self.recvLastTimestamp = stamp
                data = self.encryptor.decrypt(data)
            inflate = zlib.decompressobj()
            raw = inflate.decompress(data, self._limits.max_message_b)
            if inflate.unconsumed_tail:
                return False, None
            message = pysyncobj_pickle.loads(raw)
            if self.recvRandKey:
                rand_key, message = message
                if rand_key != self.recvRandKey:
                    return False, None
                self.authenticated = True
        # Whatever a peer's bytes make decryption, zlib or unpickling raise, the answer is
        # the same and pysyncobj's: drop the connection. (Unpickling happens only after the
        # Fernet HMAC verified, i.e. on frames made with the segment's password.)
        except Exception:  # noqa: BLE001
            return False, None
        return True, message


class BoundedServer:
    """pysyncobj's `TcpServer` interface, admitting connections within `PortLimits`."""

    def __init__(
        self,
        poller: Any,
        host: str,
        port: int,
        on_new_connection: Callable[[BoundedConnection], None],
        *,
        make_connection: Callable[[socket.socket, str], BoundedConnection],
        admit: Callable[[str], bool],
        limits: PortLimits,
        send_buffer_b: int,
        recv_buffer_b: int,
    ) -> None:
        self._poller = poller
        self._host, self._port = host, int(port)
        self._on_new_connection = on_new_connection
        self._make_connection = make_connection
        self._admit = admit
        self._limits = limits
        self._send_buffer_b = send_buffer_b
        self._recv_buffer_b = recv_buffer_b
        self._sock: socket.socket | None = None
        self._fileno: int | None = None
        self.paused_until: float | None = None

    def bind(self) -> None:
        sock = socket.socket(_getAddrType(self._host), socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_buffer_b)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._recv_buffer_b)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setblocking(False)
            sock.bind((self._host, self._port))
            sock.listen(self._limits.listen_backlog)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._fileno = sock.fileno()
        self._poller.subscribe(self._fileno, self._on_event, _READ)

    def unbind(self) -> None:
        if self._fileno is not None:
            self._poller.unsubscribe(self._fileno)
            self._fileno = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def pause(self, now: float) -> None:
        if self._fileno is not None and self.paused_until is None:
            self._poller.unsubscribe(self._fileno)
            self.paused_until = now + self._limits.accept_pause_s

    def resume_if_due(self, now: float) -> float:
        """Listen again once the pause is over; the seconds it lasted (0 if none)."""
        if self.paused_until is None or now < self.paused_until or self._fileno is None:
            return 0.0
        self.paused_until = None
        self._poller.subscribe(self._fileno, self._on_event, _READ)
        return self._limits.accept_pause_s

    def _on_event(self, descr: int, event: int) -> None:
        if event & POLL_EVENT_TYPE.ERROR or self._sock is None:
            self.unbind()
            return
        for _ in range(self._limits.accept_batch):
            if self.paused_until is not None:
                return
            try:
                sock, addr = self._sock.accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return  # out of descriptors or memory: try again next tick
                if e.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue
                self.unbind()
                return
            if not self._admit(addr[0]):
                sock.close()
                continue
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_buffer_b)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._recv_buffer_b)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            self._on_new_connection(self._make_connection(sock, addr[0]))


def _set_keepalive(sock: socket.socket, keepalive: tuple[int, int, int] | None) -> None:
    if keepalive is None or not hasattr(socket, "TCP_KEEPIDLE"):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, keepalive[0])
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, keepalive[1])
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, keepalive[2])
