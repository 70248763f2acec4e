"""An unauthenticated flood against one Raft port, for test_raft_flood.py (and for
measuring an older build the same way). Three kinds at once, one thread each:

- huge: connect, send a 2 GiB length prefix, then 64 KiB blocks of random bytes for as
  long as the connection stays open; reconnect; (what issue 12 saw pin a leader)
- conns: open connections as fast as the kernel lets us and hold the last 500 without
  sending anything (connection flood + slowloris);
- frames: connect, send well-formed small frames (length <= 4 KiB) of random bytes.

    python raft_flood.py HOST PORT SECONDS

Prints one JSON line of what it did.
"""

from __future__ import annotations

import collections
import json
import os
import socket
import struct
import sys
import threading
import time


def huge(host: str, port: int, until: float, stats: dict) -> None:
    junk = os.urandom(65536)
    while time.monotonic() < until:
        try:
            with socket.create_connection((host, port), timeout=1) as s:
                stats["huge_conns"] += 1
                s.sendall(b"\xff\xff\xff\x7f")
                while time.monotonic() < until:
                    s.sendall(junk)
                    stats["huge_b"] += len(junk)
        except OSError:
            continue


def conns(host: str, port: int, until: float, stats: dict) -> None:
    held: collections.deque[socket.socket] = collections.deque()
    while time.monotonic() < until:
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect((host, port))
        except BlockingIOError:
            pass
        except OSError:
            s.close()
            continue
        stats["conns"] += 1
        held.append(s)
        while len(held) > 500:
            held.popleft().close()
    for s in held:
        s.close()


def frames(host: str, port: int, until: float, stats: dict) -> None:
    while time.monotonic() < until:
        try:
            with socket.create_connection((host, port), timeout=1) as s:
                while time.monotonic() < until:
                    body = os.urandom(200)
                    s.sendall(struct.pack("i", len(body)) + body)
                    stats["frames"] += 1
        except OSError:
            continue


def main() -> None:
    host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    until = time.monotonic() + seconds
    stats: dict = collections.Counter()
    threads = [
        threading.Thread(target=f, args=(host, port, until, stats), daemon=True)
        for f in (huge, conns, frames)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 5)
    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    main()
