"""Bad input never takes an agent down and never commits anything wrong (safety invariant 6).

Against a running 3-agent segment on loopback:
- UDP datagrams at every probe port of host1: random bytes of every size, the right
  magic with junk, forged (wrong key), unknown sender, wrong source address, a captured
  valid datagram re-sent (replay), and keyed datagrams stamped an hour off (accepted:
  no check reads a clock, and they answer no probe). The agent keeps running, `status` answers,
  every drop reason counted in `probe_drops` rises, and nothing is committed: no
  observation, verdict or maintenance entry from the attack on.
- Garbage on the control socket: not JSON, not UTF-8, a huge line, nested too deep, not
  an object, wrong types, unknown op, maintenance of an unknown host. Each gets an error
  reply of kind bad_request/too_large; nothing is committed.
And `meshha-agent` with each kind of broken config exits 2 with a message naming the file
and the key, and never prints a secret.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshha.lab.mesh import Mesh
from meshha.lab.segment_files import write_segment
from meshha.probes import wire

HOSTS = ("host1", "host2", "host3")
TARGET = "host1"
NETS = ("admin", "storage", "tenant")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    m = Mesh(tmp_path_factory.mktemp("mesh-bad"), HOSTS)
    try:
        m.start(timeout_s=40)
        yield m
    finally:
        m.close()


def key_of(mesh: Mesh) -> bytes:
    return (mesh.config.parent / "secrets" / "probe.key").read_bytes().strip()


def port_of(mesh: Mesh, net: str) -> int:
    return mesh.probe_port0 + NETS.index(net)


def send_from(src: str, dest: tuple[str, int], datagrams: list[bytes]) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind((src, 0))
        for d in datagrams:
            s.sendto(d, dest)
    finally:
        s.close()


def capture(src: tuple[str, int] | None, dst: tuple[str, int], timeout_s: float) -> bytes:
    """The UDP payload of the next datagram to `dst` (from `src` if given), seen on lo."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    s.bind(("lo", 0))
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            s.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                frame, addr = s.recvfrom(65536)
            except TimeoutError:
                break
            if addr[2] == socket.PACKET_OUTGOING:
                continue
            ip = frame[14:]
            if len(ip) < 28 or ip[0] >> 4 != 4 or ip[9] != 17:
                continue
            ihl = (ip[0] & 0xF) * 4
            saddr, daddr = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
            dport = int.from_bytes(ip[ihl + 2 : ihl + 4])
            if (daddr, dport) == dst and (src is None or saddr == src[0]):
                return ip[ihl + 8 :]
    finally:
        s.close()
    raise AssertionError(f"no datagram to {dst} within {timeout_s}s")


def drops(mesh: Mesh) -> dict[str, dict[str, int]]:
    return mesh.status(TARGET)["probe_drops"]


def committed_since(mesh: Mesh, host: str, t: float, kinds: set[str]) -> list[Any]:
    return [(i, e) for i, e in mesh.ledger(host) if e["ts"] >= t and e["kind"] in kinds]


BAD_KINDS = {"observation", "verdict", "maintenance", "intent", "isolation"}


def send_counted(mesh: Mesh, net: str, src: str, datagrams: list[bytes], dropped: int) -> None:
    """Send in small batches, each once `dropped` more drops per batch are counted on
    `net` (a burst would overflow the socket buffer: the kernel, not the agent, would
    drop them uncounted)."""
    dest = (mesh.addrs[TARGET][net], port_of(mesh, net))
    for i in range(0, len(datagrams), 20):
        batch = datagrams[i : i + 20]
        base = sum(drops(mesh)[net].values())
        send_from(src, dest, batch)
        want = base + (len(batch) if dropped else 0)
        mesh.wait_until(
            lambda want=want: sum(drops(mesh)[net].values()) >= want,
            10,
            f"{len(batch)} drops on {net}",
        )


@pytest.mark.integration
def test_garbage_forged_and_replayed_datagrams(mesh: Mesh) -> None:
    mesh.wait_leader(20)
    pid = mesh.pid(TARGET)
    key = key_of(mesh)
    rng = random.Random(7)
    t0 = time.time()
    before = drops(mesh)
    peer = "host2"
    for net in NETS:
        dest = (mesh.addrs[TARGET][net], port_of(mesh, net))
        peer_addr = mesh.addrs[peer][net]
        now = time.time()
        junk = [rng.randbytes(n) for n in (0, 1, 5, 36, 37, 100, 600, 1199, 1200, 1201, 1400)]
        junk += [rng.randbytes(rng.randrange(0, 1500)) for _ in range(100)]
        junk += [wire.MAGIC + rng.randbytes(rng.randrange(33, 1100)) for _ in range(30)]
        forged = [
            wire.encode({"t": "ping", "id": i}, key=b"W" * 32, sender=peer, seq=i, now=now)
            for i in range(1, 30)
        ]
        kw: dict[str, Any] = {"key": key, "now": now}
        unknown = [wire.encode({"t": "ping", "id": 1}, sender="mallory", seq=5, **kw)]
        off_clock = [
            wire.encode({"t": "ack", "id": 1}, key=key, sender=peer, seq=9, now=now - 3600),
            wire.encode({"t": "ack", "id": 1}, key=key, sender=peer, seq=10, now=now + 3600),
        ]
        wrong_src = [wire.encode({"t": "ping", "id": 1}, sender=peer, seq=7, **kw)]
        send_counted(mesh, net, "127.0.0.1", junk + forged + wrong_src, dropped=True)
        send_counted(mesh, net, peer_addr, unknown, dropped=True)
        send_from(peer_addr, dest, off_clock)
        # A real probe from host2 to host1, captured on the wire and sent again.
        valid = capture((peer_addr, 0), dest, timeout_s=5)
        send_counted(mesh, net, peer_addr, [valid, valid], dropped=True)
        # Keyed and fresh (a sequence number just ahead of host2's), nonsense inside:
        # the prober must shrug it off.
        parsed = wire._parse(valid[len(wire.MAGIC) + wire.MAC_B :])
        assert not isinstance(parsed, wire.Drop)
        _, epoch, seq, _, _ = parsed
        kw["epoch"] = epoch
        nonsense = [
            wire.encode({"t": "ack", "id": "x"}, sender=peer, seq=seq + 50, **kw),
            wire.encode({"t": "req", "id": 3, "target": 5}, sender=peer, seq=seq + 51, **kw),
            wire.encode({"t": "zap", "id": 4, "x": [1] * 50}, sender=peer, seq=seq + 52, **kw),
        ]
        send_from(peer_addr, dest, nonsense)

    now = drops(mesh)
    rose = {net: {r for r in now[net] if now[net][r] > before[net].get(r, 0)} for net in NETS}
    want = {"too_short", "oversize", "malformed", "bad_mac", "unknown_sender"}
    want |= {"bad_source", "replay"}
    for net in NETS:
        assert want <= rose[net], (net, now[net])
    assert mesh.running(TARGET) and mesh.pid(TARGET) == pid
    # Nothing wrong committed: still healthy everywhere, and no fault was recorded.
    for h in HOSTS:
        assert {v for v, _ in mesh.verdicts(h).values()} == {"healthy"}
    assert not committed_since(mesh, TARGET, t0, BAD_KINDS)
    assert mesh.status(TARGET)["has_quorum"]


def raw_call(path: Path, data: bytes, timeout_s: float = 10.0) -> dict[str, Any] | None:
    """Send raw bytes on the control socket; the reply line as JSON (None: closed)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout_s)
    try:
        s.connect(str(path))
        with contextlib.suppress(BrokenPipeError):  # it answered and closed first (huge)
            s.sendall(data)
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    return json.loads(buf.split(b"\n")[0]) if buf else None


CONTROL_GARBAGE: list[tuple[str, bytes, str]] = [
    ("not json", b"hello agent\n", "bad_request"),
    ("not utf-8", b"\xff\xfe\xfd\n", "bad_request"),
    ("huge line", b"{" + b'"a":1,' * 40_000 + b"\n", "too_large"),
    ("huge no newline", b"x" * 300_000, "too_large"),
    ("nested", b"[" * 100_000 + b"]" * 100_000 + b"\n", "too_large"),
    ("nested small", b"[" * 20_000 + b"]" * 20_000 + b"\n", "bad_request"),
    ("array", b"[1, 2, 3]\n", "bad_request"),
    ("string", b'"status"\n', "bad_request"),
    ("op not a string", b'{"op": 5}\n', "bad_request"),
    ("no op", b"{}\n", "bad_request"),
    ("unknown op", b'{"op": "format_disk"}\n', "bad_request"),
    ("unknown host", b'{"op": "maintenance", "host": "host9", "on": true}\n', "bad_request"),
    ("host is a list", b'{"op": "maintenance", "host": ["host2"], "on": true}\n', "bad_request"),
    ("on is a string", b'{"op": "maintenance", "host": "host2", "on": "yes"}\n', "bad_request"),
    ("on missing", b'{"op": "maintenance", "host": "host2"}\n', "bad_request"),
    ("report format", b'{"op": "report", "format": "xml"}\n', "bad_request"),
]


@pytest.mark.integration
@pytest.mark.parametrize(
    ("why", "data", "kind"), CONTROL_GARBAGE, ids=[c[0] for c in CONTROL_GARBAGE]
)
def test_control_socket_garbage(mesh: Mesh, why: str, data: bytes, kind: str) -> None:
    t0 = time.time()
    pid = mesh.pid(TARGET)
    reply = raw_call(mesh.control(TARGET), data)
    assert reply is not None and reply["ok"] is False, reply
    assert reply["error"]["kind"] == kind, reply
    st = mesh.status(TARGET)
    assert mesh.pid(TARGET) == pid and mesh.running(TARGET)
    assert all(h["maintenance"] is None for h in st["hosts"])
    assert not committed_since(mesh, TARGET, t0, {"maintenance", "brake"})


WRONG_TYPES = [
    ("events limit", {"op": "events", "limit": "many"}),
    ("events since", {"op": "events", "since": "yesterday"}),
    ("export since", {"op": "export_page", "since": [1]}),
    ("export after", {"op": "export_page", "after": "start"}),
    ("report range", {"op": "report", "since": 5, "until": 1}),
    ("capacity k", {"op": "capacity", "k": 99}),
]


@pytest.mark.integration
@pytest.mark.parametrize(("why", "request_"), WRONG_TYPES, ids=[c[0] for c in WRONG_TYPES])
def test_control_wrong_types_are_bad_requests(mesh: Mesh, why: str, request_: Any) -> None:
    reply = raw_call(mesh.control(TARGET), json.dumps(request_).encode() + b"\n")
    assert mesh.running(TARGET) and mesh.status(TARGET)["has_quorum"] is not None
    assert reply is not None and reply["error"]["kind"] == "bad_request", reply


# -- broken configs ------------------------------------------------------------------------

SECRET_MARK = "S3CRET-marker-do-not-print"


def good_config(d: Path) -> Path:
    hosts = [(h, {"admin": f"127.0.0.{i}"}) for i, h in enumerate(HOSTS, 1)]
    return write_segment(d, hosts, networks={"admin": "alert"}, raft_port=1, probe_port0=2)


def _edit(old: str, new: str) -> Any:
    def f(cfg: Path) -> None:
        text = cfg.read_text()
        assert old in text, old
        cfg.write_text(text.replace(old, new, 1))

    return f


def _secret(name: str, content: bytes, mode: int = 0o600) -> Any:
    def f(cfg: Path) -> None:
        p = cfg.parent / "secrets" / name
        p.write_bytes(content)
        os.chmod(p, mode)

    return f


def _remove(name: str) -> Any:
    return lambda cfg: (cfg.parent / "secrets" / name).unlink()


# (case, change to a good config, host, what the message must name besides the file)
BROKEN: list[tuple[str, Any, str, list[str]]] = [
    ("toml syntax", _edit('name = "lab"', "name = lab ="), "host1", ["not valid TOML"]),
    ("missing key", _edit('name = "lab"\n', ""), "host1", ["segment.name"]),
    (
        "secret in an unknown key",
        _edit('name = "lab"', f'name = "lab"\npassword = "{SECRET_MARK}"'),
        "host1",
        ["segment.password"],
    ),
    (
        "wrong type",
        _edit('profile = "lan-fast"', 'profile = "lan-fast"\nprobe_interval_s = "fast"'),
        "host1",
        ["timings.probe_interval_s"],
    ),
    (
        "contradicting timings",
        _edit('profile = "lan-fast"', 'profile = "lan-fast"\nprobe_timeout_s = 0.5'),
        "host1",
        ["timings.probe_timeout_s"],
    ),
    (
        "duplicate address",
        _edit('"127.0.0.2"', '"127.0.0.1"'),
        "host1",
        ["hosts[1].addresses.admin"],
    ),
    ("bad address", _edit('"127.0.0.3"', '"127.0.0.300"'), "host1", ["hosts[2].addresses"]),
    ("port out of range", _edit("port = 1\n", "port = 70000\n"), "host1", ["raft.port"]),
    ("probe key missing", _remove("probe.key"), "host1", ["segment.probe_key_file"]),
    (
        "probe key readable by others",
        _secret("probe.key", (SECRET_MARK * 2).encode(), 0o644),
        "host1",
        ["segment.probe_key_file", "readable"],
    ),
    (
        "probe key too short",
        _secret("probe.key", SECRET_MARK[:12].encode()),
        "host1",
        ["segment.probe_key_file", "too short"],
    ),
    ("raft password empty", _secret("raft.pw", b"\n"), "host1", ["raft.password_file", "empty"]),
    (
        "webhook token",
        _edit(
            "[recovery]",
            f'[alerts]\nwebhooks = ["ftp://hooks.invalid/x?token={SECRET_MARK}"]\n\n[recovery]',
        ),
        "host1",
        ["alerts.webhooks"],
    ),
    ("host not in segment", lambda cfg: None, "host9", ["host9"]),
]


@pytest.mark.parametrize(("case", "change", "host", "names"), BROKEN, ids=[b[0] for b in BROKEN])
def test_broken_config_exits_2_naming_file_and_key(
    tmp_path: Path, case: str, change: Any, host: str, names: list[str]
) -> None:
    cfg = good_config(tmp_path / "cfg")
    secrets = [p.read_bytes().strip() for p in (cfg.parent / "secrets").iterdir()]
    change(cfg)
    secrets += [
        p.read_bytes().strip() for p in (cfg.parent / "secrets").iterdir() if p.stat().st_size
    ]
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "meshha.agent.main",
            "--config",
            str(cfg),
            "--host",
            host,
            "--control",
            str(tmp_path / "c.sock"),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        timeout=60,
    )
    out = (p.stdout + p.stderr).decode(errors="replace")
    assert p.returncode == 2, out
    assert str(cfg) in out, out
    for name in names:
        assert name in out, out
    assert SECRET_MARK not in out and SECRET_MARK[:12] not in out, out
    for s in filter(None, secrets):
        assert s.decode(errors="replace") not in out, "a secret file's content was printed"
    assert not (tmp_path / "c.sock").exists()


def test_probe_port_in_use_exits_2(tmp_path: Path) -> None:
    cfg = good_config(tmp_path / "cfg")
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", 0))
    port = blocker.getsockname()[1]
    try:
        _edit("probe_port = 2", f"probe_port = {port}")(cfg)
        _edit("port = 1\n", f"port = {_free_tcp()}\n")(cfg)
        p = subprocess.run(
            [
                sys.executable,
                "-m",
                "meshha.agent.main",
                "--config",
                str(cfg),
                "--host",
                "host1",
                "--control",
                str(tmp_path / "c.sock"),
                "--data-dir",
                str(tmp_path / "data"),
            ],
            capture_output=True,
            timeout=60,
        )
    finally:
        blocker.close()
    err = p.stderr.decode(errors="replace")
    assert p.returncode == 2, err
    assert f"127.0.0.1:{port}" in err and "admin" in err, err


def _free_tcp() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
