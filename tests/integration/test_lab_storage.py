"""The lab's VM storage and its host init, the parts the VM and process cases rely on:

- meshha.lab.nbd_fault's shared storage (`NbdStorage`, `--dir`): one disk per export,
  kept across connections; a "once" switch fails exactly one request, then removes
  itself; a mailbox byte reaches one read of the mailbox sector, the disk unchanged;
- meshha.lab.lab_host's init: a service whose executable cannot run is refused with an
  error (the agent's restart command then fails at once), and init keeps running.

A real NBD client over the unix socket (the protocol as QEMU speaks it).
"""

from __future__ import annotations

import errno
import struct
from pathlib import Path

import trio

from meshha.lab.lab_host import Init
from meshha.lab.nbd_fault import MAILBOX_OFFSET, NbdStorage

_REQUEST_MAGIC = 0x25609513
_READ, _WRITE = 0, 1


class Client:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.handle = 0

    @classmethod
    async def open(cls, sock: Path, export: str) -> Client:
        stream = await trio.open_unix_socket(str(sock))
        c = cls(stream)
        greeting = await c.recv(18)
        assert greeting[:8] == b"NBDMAGIC"
        await stream.send_all(struct.pack(">I", 3))  # fixed newstyle, no zeroes
        name = export.encode()
        await stream.send_all(struct.pack(">QII", 0x49484156454F5054, 1, len(name)) + name)
        size, _flags = struct.unpack(">QH", await c.recv(10))
        assert size > 0
        return c

    async def recv(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = await self.stream.receive_some(n - len(out))
            assert chunk, "server hung up"
            out += chunk
        return out

    async def request(
        self, cmd: int, offset: int, data: bytes = b"", length: int = 0
    ) -> tuple[int, bytes]:
        self.handle += 1
        n = len(data) if cmd == _WRITE else length
        await self.stream.send_all(
            struct.pack(">IHHQQI", _REQUEST_MAGIC, 0, cmd, self.handle, offset, n) + data
        )
        _magic, error, handle = struct.unpack(">IIQ", await self.recv(16))
        assert handle == self.handle
        body = await self.recv(n) if cmd == _READ and not error else b""
        return error, body


async def test_storage_exports_once_faults_and_mailbox(tmp_path: Path) -> None:
    storage = NbdStorage(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(storage.serve)
        a = await Client.open(storage.socket_path, "vm-a")
        b = await Client.open(storage.socket_path, "vm-b")
        assert (await a.request(_WRITE, 4096, b"A" * 512))[0] == 0
        assert (await b.request(_READ, 4096, length=512))[1] == bytes(512)  # its own disk

        (tmp_path / "vm-a.fault").write_text("enospc write once\n")
        assert (await a.request(_READ, 0, length=512))[0] == 0  # reads unaffected
        assert (await b.request(_WRITE, 4096, b"B" * 512))[0] == 0  # other disks too
        assert (await a.request(_WRITE, 4096, b"C" * 512))[0] == errno.ENOSPC
        assert not (tmp_path / "vm-a.fault").exists()
        assert float((tmp_path / "vm-a.fault.hit").read_text()) > 0
        assert (await a.request(_WRITE, 4096, b"D" * 512))[0] == 0  # transient: once

        (tmp_path / "vm-a.mailbox").write_bytes(b"W")
        err, sector = await a.request(_READ, MAILBOX_OFFSET, length=512)
        assert err == 0 and sector[:1] == b"W"
        assert not (tmp_path / "vm-a.mailbox").exists()
        assert (tmp_path / "vm-a.mailbox.hit").exists()
        assert (await a.request(_READ, MAILBOX_OFFSET, length=512))[1][:1] == b"\0"

        again = await Client.open(storage.socket_path, "vm-a")  # a rebooted guest
        assert (await again.request(_READ, 4096, length=512))[1] == b"D" * 512
        sector0 = (await again.request(_READ, 0, length=512))[1]
        assert sector0[510:] == b"\x55\xaa"
        nursery.cancel_scope.cancel()


def test_init_refuses_a_service_that_cannot_run(tmp_path: Path) -> None:
    broken = tmp_path / "nova-compute"
    broken.write_bytes(b"")  # not executable: exec fails with EACCES
    init = Init(
        {
            "name": "host9",
            "services": [{"name": "nova-compute", "argv": [str(broken)]}],
            "log_dir": str(tmp_path / "logs"),
            "control": str(tmp_path / "init.sock"),
            "mounts": {},
        }
    )
    (tmp_path / "logs").mkdir()
    reply = init.request(b"start nova-compute")
    assert reply.startswith(b"error: cannot start nova-compute"), reply
    assert init.services[0].pid is None
