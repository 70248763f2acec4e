"""The lab daemon: what joins the lab hosts to the Nova box, in the root namespace.

    python -m meshha.lab.labd --state STATE

Per lab host (network namespace) it listens, *inside that namespace*, on

- 127.0.0.1:API_PORT: a TCP relay to the Nova box's API (and placement) on the root
  namespace's 127.0.0.1. The host's /etc/openstack/clouds.yaml points there, so the
  agent reaches Nova with a plain clouds.yaml and the lab's addresses stay inside the
  lab (no route out of any namespace).
- 127.0.0.1:ALERT_PORT: a webhook sink for the agents' alerts (`POST /alerts`): each
  body is appended, with the host it came from, to STATE/alerts.jsonl.
- 127.0.0.1:LIFELINE_PORT: the lifeline of the host's nova-compute stand-in
  (meshha.lab.lab_host). A connection says `HOST boot` or `HOST restart`; labd starts
  that nova-compute in the box (a fresh hypervisor after a boot, the same guests after a
  restart) and answers `ok`; when the connection closes (the stand-in was killed, or the
  host lost power) it stops that nova-compute for real.

A socket belongs to the network namespace it was made in, so the listeners are made by a
thread that has entered the host's namespace (meshha.lab.netns._in_netns) and then
served from trio in this process. The daemon writes `ready` on stdout when every
listener is up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import trio

from meshha.lab.netns import _in_netns
from meshha.lab.nova_client import NovaBox, NovaBoxError

API_PORT = 8774
LIFELINE_PORT = 8775
ALERT_PORT = 8776
MAX_ALERT_BYTES = 65536
RELAY_BUFFER = 65536


def listener(ns: str, port: int) -> socket.socket:
    def make() -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen(64)
        return s

    sock: socket.socket = _in_netns(ns, make)
    return sock


async def _pump(src: trio.SocketStream, dst: trio.SocketStream) -> None:
    try:
        while data := await src.receive_some(RELAY_BUFFER):
            await dst.send_all(data)
        await dst.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass  # one side went away: the other is closed below


async def relay(client: trio.SocketStream, port: int) -> None:
    try:
        upstream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        await client.aclose()
        return
    async with client, upstream, trio.open_nursery() as nursery:
        nursery.start_soon(_pump, client, upstream)
        nursery.start_soon(_pump, upstream, client)


class Lifelines:
    def __init__(self, box: NovaBox) -> None:
        self.box = box
        self.lock = trio.Lock()  # one box control action at a time

    async def control(self, op: str, **args: Any) -> None:
        async with self.lock:
            await trio.to_thread.run_sync(lambda: self.box.control(op, **args))

    async def serve(self, stream: trio.SocketStream, expected_host: str) -> None:
        async with stream:
            line = b""
            with trio.move_on_after(10):
                while b"\n" not in line and len(line) < 256:
                    chunk = await stream.receive_some(256)
                    if not chunk:
                        return
                    line += chunk
            words = line.decode(errors="replace").split()
            if len(words) != 2 or words[0] != expected_host:
                await stream.send_all(b"error: want `HOST boot|restart`\n")
                return
            host, mode = words
            print(f"lifeline {host} {mode}: start_compute", flush=True)
            try:
                await self.control("start_compute", host=host, keep_vms=mode == "restart")
            except NovaBoxError as e:
                # The box too slow to answer (a loaded machine) fails this boot, not the
                # daemon: the stand-in exits, its init starts it again, it asks again.
                print(f"lifeline {host} {mode}: {e}", flush=True)
                with contextlib.suppress(trio.BrokenResourceError, OSError):
                    await stream.send_all(f"error: {e}\n".encode())
                return
            await stream.send_all(b"ok\n")
            try:
                while await stream.receive_some(256):
                    pass
            except (trio.BrokenResourceError, OSError):
                pass
            print(f"lifeline {host}: lost, stop_compute", flush=True)
            with trio.CancelScope(shield=True):
                try:
                    await self.control("stop_compute", host=host)
                except NovaBoxError as e:
                    print(f"lifeline {host}: stop_compute: {e}", flush=True)


class AlertSink:
    def __init__(self, path: Path) -> None:
        self.path = path

    async def serve(self, stream: trio.SocketStream, host: str) -> None:
        async with stream:
            data = b""
            with trio.move_on_after(10):
                while b"\r\n\r\n" not in data and len(data) < MAX_ALERT_BYTES:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        return
                    data += chunk
                head, _, body = data.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = min(int(value.strip() or 0), MAX_ALERT_BYTES)
                while len(body) < length:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        break
                    body += chunk
            try:
                alert = json.loads(body or b"{}")
            except ValueError:
                alert = {"raw": body.decode(errors="replace")}
            with self.path.open("a") as f:
                f.write(json.dumps({"from": host, "alert": alert}) + "\n")
            await stream.send_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            )


async def serve_listener(sock: socket.socket, handler, *args: object) -> None:  # type: ignore[no-untyped-def]
    tsock = trio.socket.from_stdlib_socket(sock)
    async with trio.open_nursery() as nursery:
        while True:
            conn, _ = await tsock.accept()
            nursery.start_soon(handler, trio.SocketStream(conn), *args)


async def amain(state: Path) -> None:
    lab = json.loads((state / "lab.json").read_text())
    box = NovaBox(lab["hosts"])
    box.ready = {"port": lab["nova"]["port"], "control_port": lab["nova"]["control_port"]}
    lifelines = Lifelines(box)
    alerts = AlertSink(state / "alerts.jsonl")
    listeners: list[tuple[socket.socket, Any, Any]] = []
    for host in lab["hosts"]:
        ns = lab["namespaces"][host]
        listeners.append((listener(ns, API_PORT), relay, lab["nova"]["port"]))
        listeners.append((listener(ns, LIFELINE_PORT), lifelines.serve, host))
        listeners.append((listener(ns, ALERT_PORT), alerts.serve, host))
    async with trio.open_nursery() as nursery:
        for sock, handler, arg in listeners:
            nursery.start_soon(serve_listener, sock, handler, arg)
        print("ready", flush=True)
        os.dup2(2, 1)  # the parent stops reading stdout: from now on, the log


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m meshha.lab.labd")
    p.add_argument("--state", type=Path, required=True)
    a = p.parse_args(argv)
    trio.run(amain, a.state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
