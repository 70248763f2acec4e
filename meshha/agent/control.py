"""The local control socket: how `meshctl` talks to the agent on the same host.

A Unix stream socket (default `/run/meshha/control.sock`), mode 0600 and owned by root,
so only root on this host can ask the agent anything. The protocol is one JSON object per
line each way: a request `{"op": ..., ...}`, and a reply that is either
`{"ok": true, "result": {...}}` or `{"ok": false, "error": {"kind": ..., "message": ...}}`.
A connection may carry several requests in turn.

The server (`serve`) never lets a client take the agent down: a request that is not JSON,
not an object, longer than `max_request_b`, or slower than `idle_timeout_s` gets an error
reply and/or a closed connection; at most `max_connections` are served at once (more
wait in the kernel backlog). The handler is the agent's; a `MeshhaError` it raises
becomes an error reply with its kind, anything else is a bug in the handler, logged with
its traceback and answered with kind `internal` - deliberately not propagated, because a
mistyped operator command must not stop failure detection on the host.

The socket is created inside a fresh private (0700) directory beside the final path,
chmod'ed 0600, then renamed into place: there is never a moment when it exists with
looser permissions, and no process-wide umask change races with other threads.

The client (`call`) is synchronous (meshctl has no event loop) and raises `ControlError`
with kind `not_running` (no socket, or nobody listening), `permission_denied`, `timeout`,
`protocol` (the reply was not what the protocol says), or the kind the agent answered
with (then `remote` is True).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
import trio

from meshha.errors import MeshhaError

DEFAULT_PATH = Path("/run/meshha/control.sock")
MAX_REQUEST_B = 64 * 1024
MAX_RESPONSE_B = 16 * 1024 * 1024
IDLE_TIMEOUT_S = 30.0
MAX_CONNECTIONS = 16
LISTEN_BACKLOG = 128
SOCKET_MODE = 0o600
DIR_MODE = 0o755

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
log = structlog.get_logger("meshha.control")


class ControlError(MeshhaError):
    """kind: not_running | permission_denied | timeout | protocol | in_use, or the kind
    the agent replied with (`remote` is then True)."""

    kind = "control"

    def __init__(
        self, message: str, *, kind: str | None = None, where: str = "", remote: bool = False
    ) -> None:
        super().__init__(message, kind=kind, where=where)
        self.remote = remote


def _reply_ok(result: dict[str, Any]) -> bytes:
    return _line({"ok": True, "result": result})


def _reply_error(kind: str, message: str) -> bytes:
    return _line({"ok": False, "error": {"kind": kind, "message": message}})


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, allow_nan=False, separators=(",", ":")).encode() + b"\n"


# ---- server ----------------------------------------------------------------------------


async def serve(
    path: str | Path,
    handler: Handler,
    *,
    max_request_b: int = MAX_REQUEST_B,
    idle_timeout_s: float = IDLE_TIMEOUT_S,
    max_connections: int = MAX_CONNECTIONS,
    task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `handler` on the Unix socket at `path` until cancelled; then remove it.

    `task_status.started(path)` once clients can connect. Raises ControlError(in_use) if
    another process already serves that path.
    """
    path = Path(path)
    sock, inode = await _bind(path)
    listener = trio.SocketListener(sock)
    limiter = trio.CapacityLimiter(max_connections)

    async def one(stream: trio.SocketStream) -> None:
        async with limiter:
            await _serve_connection(stream, handler, max_request_b, idle_timeout_s)

    try:
        async with trio.open_nursery() as nursery:
            task_status.started(path)
            await trio.serve_listeners(one, [listener], handler_nursery=nursery)
    finally:
        _unlink_if_ours(path, inode)
        with trio.CancelScope(shield=True):
            await listener.aclose()


async def _bind(path: Path) -> tuple[trio.socket.SocketType, int]:
    """A listening socket at `path`, mode 0600, root's; and its inode (to clean up)."""
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if _is_live(path):
        raise ControlError("another agent is serving this socket", kind="in_use", where=str(path))
    private = tempfile.mkdtemp(prefix=".control-", dir=path.parent)  # 0700
    staged = os.path.join(private, "s")
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(staged)
        os.chmod(staged, SOCKET_MODE)
        inode = os.stat(staged).st_ino
        if os.geteuid() == 0:
            os.chown(staged, 0, 0)
        sock.listen(LISTEN_BACKLOG)
        os.replace(staged, path)  # atomically replaces a stale socket file too
    except OSError as e:
        sock.close()
        raise ControlError(f"cannot create control socket: {e}", where=str(path)) from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staged)
        os.rmdir(private)
    return sock, inode


def _is_live(path: Path) -> bool:
    """Is somebody accepting on `path`? A stale file (crashed agent) is not."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        return False
    else:
        return True
    finally:
        probe.close()


def _unlink_if_ours(path: Path, inode: int) -> None:
    """Remove the socket file, unless another agent has replaced it since."""
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == inode:
            os.unlink(path)


class _Oversize(Exception):
    pass


async def _read_line(stream: trio.SocketStream, buf: bytearray, limit: int) -> bytes | None:
    """The next line (without its newline); None at a clean EOF. Raises _Oversize."""
    while True:
        nl = buf.find(b"\n")
        if nl >= 0:
            if nl > limit:
                raise _Oversize
            line = bytes(buf[:nl])
            del buf[: nl + 1]
            return line
        if len(buf) > limit:
            raise _Oversize
        data = await stream.receive_some(65536)
        if not data:
            if buf:  # a last request without its newline (echo -n | socat)
                line = bytes(buf)
                buf.clear()
                return line
            return None
        buf += data


async def _serve_connection(
    stream: trio.SocketStream, handler: Handler, max_request_b: int, idle_timeout_s: float
) -> None:
    buf = bytearray()
    async with stream:
        try:
            while True:
                try:
                    with trio.fail_after(idle_timeout_s):
                        line = await _read_line(stream, buf, max_request_b)
                except _Oversize:
                    await stream.send_all(
                        _reply_error("too_large", f"request over {max_request_b} bytes")
                    )
                    return
                except trio.TooSlowError:
                    await stream.send_all(_reply_error("timeout", "idle connection closed"))
                    return
                if line is None:
                    return
                reply, keep_open = await _answer(line, handler)
                await stream.send_all(reply)
                if not keep_open:
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return  # the client went away mid-conversation: nothing to answer


async def _answer(line: bytes, handler: Handler) -> tuple[bytes, bool]:
    """The reply to one request line, and whether the connection may stay open."""
    try:
        request = json.loads(line)
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, or nested too deep
        return _reply_error("bad_request", f"not a JSON object: {type(e).__name__}"), False
    if not isinstance(request, dict):
        return _reply_error("bad_request", "a request is a JSON object"), False
    try:
        result = await handler(request)
        if not isinstance(result, dict):
            raise TypeError(f"handler returned {type(result).__name__}, not a dict")
        return _reply_ok(result), True
    except MeshhaError as e:
        return _reply_error(e.kind, str(e)), True
    except Exception as e:  # a bug in the handler: see the module doc for why not raise
        log.exception("control handler failed", op=request.get("op"))
        return _reply_error("internal", f"{type(e).__name__}: {e}"), False


# ---- client ----------------------------------------------------------------------------


def call(
    path: str | Path,
    request: dict[str, Any],
    timeout_s: float = 10.0,
    *,
    max_response_b: int = MAX_RESPONSE_B,
) -> dict[str, Any]:
    """Send one request to the agent at `path` and return its result (synchronous)."""
    where = str(path)
    deadline = time.monotonic() + timeout_s
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # A non-blocking AF_UNIX connect fails at once (EAGAIN) when the listen backlog
        # is full; a blocking one waits for room, up to SO_SNDTIMEO.
        sec, frac = divmod(max(timeout_s, 0.001), 1.0)
        sock.setsockopt(
            socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", int(sec), int(frac * 1e6))
        )
        try:
            sock.connect(where)
        except BlockingIOError as e:
            raise ControlError("agent too busy to accept", kind="timeout", where=where) from e
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise ControlError(
                f"agent not running (no one listens here: {e.strerror})",
                kind="not_running",
                where=where,
            ) from e
        except PermissionError as e:
            raise ControlError(
                "permission denied (the control socket is root's)",
                kind="permission_denied",
                where=where,
            ) from e
        except TimeoutError as e:
            raise ControlError("timed out connecting", kind="timeout", where=where) from e
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            sock.sendall(_line(request))
            raw = _recv_line(sock, deadline, max_response_b, where)
        except TimeoutError as e:
            raise ControlError(
                f"no reply within {timeout_s:g}s", kind="timeout", where=where
            ) from e
        except OSError as e:
            raise ControlError(f"connection lost: {e}", kind="protocol", where=where) from e
    finally:
        sock.close()
    return _unwrap(raw, where)


def _recv_line(sock: socket.socket, deadline: float, limit: int, where: str) -> bytes:
    buf = bytearray()
    while b"\n" not in buf:
        if len(buf) > limit:
            raise ControlError(f"reply over {limit} bytes", kind="protocol", where=where)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        sock.settimeout(remaining)
        data = sock.recv(65536)
        if not data:
            raise ControlError("agent closed the connection", kind="protocol", where=where)
        buf += data
    return bytes(buf[: buf.index(b"\n")])


def _unwrap(raw: bytes, where: str) -> dict[str, Any]:
    try:
        reply = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise ControlError("reply is not JSON", kind="protocol", where=where) from e
    if not isinstance(reply, dict) or not isinstance(reply.get("ok"), bool):
        raise ControlError("reply is not an envelope", kind="protocol", where=where)
    if reply["ok"]:
        result = reply.get("result")
        if not isinstance(result, dict):
            raise ControlError("reply has no result object", kind="protocol", where=where)
        return result
    err = reply.get("error")
    if not isinstance(err, dict):
        raise ControlError("error reply without error", kind="protocol", where=where)
    raise ControlError(
        str(err.get("message", "")), kind=str(err.get("kind", "error")), where=where, remote=True
    )
