"""The control socket over real Unix sockets: round trips, permissions (mode 0600, root
only: a non-root client is refused), garbage and oversized requests that never crash
the server, and the client's typed errors (not running, permission denied, timeout)."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import trio

from meshha.agent.control import ControlError, call, serve
from meshha.errors import MeshhaError

DEADLINE_S = 10.0


class Boom(MeshhaError):
    kind = "not_leader"


@pytest.fixture
def sock_dir():
    # Short and world-traversable (pytest's tmp dirs are 0700 and long; AF_UNIX paths
    # are limited to 108 bytes), so the permission test reaches the socket itself.
    d = tempfile.mkdtemp(prefix="mhctl-", dir="/tmp")
    os.chmod(d, 0o755)
    yield Path(d)
    subprocess.run(["rm", "-rf", d], check=True)


async def handler(request):
    op = request.get("op")
    if op == "echo":
        return {"echo": request}
    if op == "fail":
        raise Boom("I am not the leader", where="agent")
    if op == "bug":
        return {}["missing"]
    if op == "not_a_dict":
        return ["oops"]
    if op == "hang":
        await trio.sleep_forever()
    return {"unknown": op}


async def _call(path, request, timeout_s=DEADLINE_S):
    return await trio.to_thread.run_sync(call, path, request, timeout_s)


async def _raw(path, payload: bytes, *, shut=True) -> bytes:
    """Send raw bytes, read until the server closes (or a line arrives when not shut)."""

    def go():
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(DEADLINE_S)
        with s:
            s.connect(str(path))
            try:
                s.sendall(payload)
                if shut:
                    s.shutdown(socket.SHUT_WR)
            except BrokenPipeError:
                pass
            out = b""
            while True:
                try:
                    data = s.recv(65536)
                except ConnectionResetError:
                    break
                if not data or (not shut and b"\n" in out + data):
                    return out + data
                out += data
            return out

    return await trio.to_thread.run_sync(go)


@pytest.fixture
async def server(sock_dir, nursery):
    path = await nursery.start(serve, sock_dir / "control.sock", handler)
    return path


async def test_round_trip_and_several_requests_per_connection(server):
    assert await _call(server, {"op": "echo", "n": [1, "x"]}) == {
        "echo": {"op": "echo", "n": [1, "x"]}
    }
    two = b'{"op":"echo","i":1}\n{"op":"echo","i":2}\n'
    lines = (await _raw(server, two)).splitlines()
    assert [json.loads(x)["result"]["echo"]["i"] for x in lines] == [1, 2]


async def test_socket_is_0600_and_roots(server):
    st = os.stat(server)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (0, 0)
    assert [p.name for p in server.parent.iterdir()] == ["control.sock"]  # no staging left


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\xff\xfe garbage \x80\n",
        b"not json at all\n",
        b"[1, 2, 3]\n",
        b'"a string"\n',
        b"[" * 50_000 + b"\n",  # nested too deep for the JSON parser
        os.urandom(3000),
    ],
)
async def test_garbage_gets_an_error_and_server_lives(server, garbage):
    reply = json.loads((await _raw(server, garbage)).splitlines()[0])
    assert reply["ok"] is False and reply["error"]["kind"] == "bad_request"
    assert (await _call(server, {"op": "echo"}))["echo"] == {"op": "echo"}


async def test_oversized_request_is_refused(server):
    reply = await _raw(server, b'{"op":"echo","pad":"' + b"x" * 200_000 + b'"}\n')
    assert json.loads(reply.splitlines()[0])["error"]["kind"] == "too_large"
    with pytest.raises(ControlError) as e:
        await _call(server, {"op": "echo", "pad": "x" * 200_000})
    assert e.value.kind in ("too_large", "protocol")  # refused, whichever side notices
    assert (await _call(server, {"op": "echo"}))["echo"] == {"op": "echo"}


async def test_client_vanishing_mid_request(server):
    await _raw(server, b'{"op": "ec')  # half a request, then EOF
    await _raw(server, b"")
    assert (await _call(server, {"op": "echo"}))["echo"] == {"op": "echo"}


async def test_handler_errors(server):
    with pytest.raises(ControlError) as e:
        await _call(server, {"op": "fail"})
    assert e.value.kind == "not_leader" and e.value.remote and "not the leader" in str(e.value)
    for op in ("bug", "not_a_dict"):
        with pytest.raises(ControlError) as e:
            await _call(server, {"op": op})
        assert e.value.kind == "internal" and e.value.remote
    assert (await _call(server, {"op": "echo"}))["echo"] == {"op": "echo"}


async def test_timeout(server):
    with pytest.raises(ControlError) as e:
        await _call(server, {"op": "hang"}, timeout_s=0.3)
    assert e.value.kind == "timeout" and not e.value.remote


async def test_idle_connection_is_closed(sock_dir, nursery):
    path = await nursery.start(
        lambda task_status: serve(
            sock_dir / "c.sock", handler, idle_timeout_s=0.2, task_status=task_status
        )
    )
    reply = await _raw(path, b"", shut=False)  # says nothing; the server gives up on it
    assert json.loads(reply)["error"]["kind"] == "timeout"


async def test_not_running(sock_dir):
    with pytest.raises(ControlError) as e:
        await _call(sock_dir / "absent.sock", {"op": "echo"})
    assert e.value.kind == "not_running"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # crashed agent's leftover
    stale.bind(str(sock_dir / "stale.sock"))
    stale.close()
    with pytest.raises(ControlError) as e:
        await _call(sock_dir / "stale.sock", {"op": "echo"})
    assert e.value.kind == "not_running"


async def test_stale_socket_is_replaced_and_live_one_is_not(sock_dir):
    path = sock_dir / "control.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    async with trio.open_nursery() as nursery:
        await nursery.start(serve, path, handler)
        assert (await _call(path, {"op": "echo"}))["echo"] == {"op": "echo"}
        with pytest.raises(ControlError) as e:
            await serve(path, handler)
        assert e.value.kind == "in_use"
        nursery.cancel_scope.cancel()
    assert not path.exists()  # removed on shutdown


async def test_many_clients_at_once(server):
    results = []

    async def one(i):
        results.append((await _call(server, {"op": "echo", "i": i}))["echo"]["i"])

    async with trio.open_nursery() as nursery:
        for i in range(40):
            nursery.start_soon(one, i)
    assert sorted(results) == list(range(40))


CLIENT = """
import os, sys
from meshha.agent.control import ControlError, call
os.setgroups([])
os.setgid(65534)
os.setuid(65534)  # after the imports: the interpreter lives under /root
try:
    call(sys.argv[1], {"op": "echo"}, 5.0)
except ControlError as e:
    print(e.kind)
else:
    print("allowed")
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as nobody")
async def test_non_root_client_is_refused(server):
    def run():
        return subprocess.run(
            [sys.executable, "-c", CLIENT, str(server)],
            capture_output=True,
            text=True,
            timeout=DEADLINE_S,
            cwd="/",
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        )

    out = await trio.to_thread.run_sync(run)
    assert out.stdout.strip() == "permission_denied", out.stderr
