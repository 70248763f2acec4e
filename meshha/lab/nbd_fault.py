"""A tiny NBD server whose disk fails on demand, and guests with no OS that use it.

This machine's kernel has no device-mapper, so a real BLOCK_IO_ERROR comes from a
user-space NBD server (fixed-newstyle handshake, NBD_OPT_EXPORT_NAME) that answers reads
and/or writes with EIO or ENOSPC while its switch is on. QEMU attaches it as a virtio disk
with error_policy='stop' (meshha.lab.libvirt_setup.domain_xml(nbd_socket=...)); the next
failed request pauses the VM: IO_ERROR, IO_ERROR_REASON, then SUSPENDED/IOERROR, a few
milliseconds after the switch. Clearing it and resuming the domain recovers the VM.

The guest needs no OS: SeaBIOS boots sector 0 of the disk. Two boot sectors:

- BUSY_BOOT_SECTOR reads and writes the disk through BIOS int 13h every 20 ms.
- MAILBOX_BOOT_SECTOR does the same and, each round, looks at the byte at disk offset 512
  (which the host writes with `set_mailbox`): 'W' arms the ib700 watchdog (port 0x443)
  and halts, so the watchdog fires 2 s later; 'P' writes 1 to the ISA panic port 0x505;
  'H' halts.

    server = NbdFaultServer(tmp / "nbd.sock", boot_sector=MAILBOX_BOOT_SECTOR)
    await nursery.start(server.serve)
    ... domain_xml("vm", nbd_socket=server.socket_path, watchdog=True, panic=True)
    server.fault = "eio"          # or "enospc"; None to heal
    server.set_mailbox(b"P")      # the guest panics

From a shell (the fault switch is a file: "eio" or "enospc", optionally followed by
" read", " write" or " both", and by " once": the next such request fails, then the
switch removes itself (a transient error); absent means healthy):

    python -m meshha.lab.nbd_fault --socket /run/lab/nbd.sock --fault-file /run/lab/fault

Shared storage for many VMs (`--dir DIR`, the lab's Nova VMs with a disk): one socket
DIR/nbd.sock, one in-memory disk per export name (created with the mailbox guest on the
first connection, kept while the server runs, so a VM restarted or evacuated finds its
disk as it left it), the switch of export E in DIR/E.fault, and a one-shot mailbox in
DIR/E.mailbox: its first byte is what the guest's next read of the mailbox sector finds
(then the file is removed and the disk itself never changes: a rebooted guest runs clean).
A one-shot switch that took effect leaves E.fault.hit / E.mailbox.hit: the wall time.

    python -m meshha.lab.nbd_fault --dir /run/lab/storage
"""

from __future__ import annotations

import argparse
import errno
import struct
import sys
import time
from pathlib import Path
from typing import Literal

import trio

Fault = Literal["eio", "enospc"]
Direction = Literal["read", "write", "both"]

_HEX_BUSY = (
    "fa31c08ed88ec08ed0bc007cfb88163f7cb80102b9020030f68a163f7cbb0080cd13b80103b90a00"
    "30f68a163f7cbb0080cd13b8008631c9ba204ecd15ebd2"
)
_HEX_MAILBOX = (
    "fa31c08ed88ec08ed0bc007cfb8816607cb80102b9020030f68a16607cbb0080cd13b80103b90a00"
    "30f68a16607cbb0080cd13a000803c5774143c5074183c48741ab8008631c9ba204ecd15ebc3ba43"
    "04b00eeeeb06ba0505b001eefaf4ebfd"
)


def _boot_sector(hex_code: str) -> bytes:
    code = bytes.fromhex(hex_code)
    assert len(code) <= 510
    return code + bytes(510 - len(code)) + b"\x55\xaa"


BUSY_BOOT_SECTOR = _boot_sector(_HEX_BUSY)
MAILBOX_BOOT_SECTOR = _boot_sector(_HEX_MAILBOX)
MAILBOX_OFFSET = 512

# Protocol constants (https://github.com/NetworkBlockDevice/nbd/blob/master/doc/proto.md)
_NBDMAGIC = 0x4E42444D41474943
_IHAVEOPT = 0x49484156454F5054
_REPLY_MAGIC = 0x3E889045565A9
_FLAG_FIXED_NEWSTYLE = 1
_FLAG_NO_ZEROES = 2
_OPT_EXPORT_NAME = 1
_OPT_ABORT = 2
_REP_ACK = 1
_REP_ERR_UNSUP = (1 << 31) + 1
_REQUEST_MAGIC = 0x25609513
_SIMPLE_REPLY_MAGIC = 0x67446698
_CMD_READ, _CMD_WRITE, _CMD_DISC, _CMD_FLUSH = 0, 1, 2, 3
_TRANSMISSION_FLAGS = 1 | 4  # HAS_FLAGS | SEND_FLUSH
_ERRNO = {"eio": errno.EIO, "enospc": errno.ENOSPC}
_MAX_REQUEST_BYTES = 32 * 1024 * 1024


class NbdFaultServer:
    """One export (`export_name`) of an in-memory disk, served on a unix socket."""

    def __init__(
        self,
        socket_path: Path,
        *,
        size_bytes: int = 1024 * 1024,
        boot_sector: bytes = BUSY_BOOT_SECTOR,
        export_name: str = "disk0",
        fault_file: Path | None = None,
        mailbox_file: Path | None = None,
    ) -> None:
        assert size_bytes % 512 == 0 and len(boot_sector) == 512
        self.socket_path = Path(socket_path)
        self.export_name = export_name
        self.disk = bytearray(size_bytes)
        self.disk[:512] = boot_sector
        self.mailbox_file = mailbox_file
        self.fault: Fault | None = None
        self.direction: Direction = "both"
        self.fault_file = fault_file
        self.requests_failed = 0
        self.requests_served = 0

    def set_mailbox(self, byte: bytes) -> None:
        """What MAILBOX_BOOT_SECTOR finds at offset 512 next round: W, P or H."""
        self.disk[MAILBOX_OFFSET : MAILBOX_OFFSET + 1] = byte[:1]

    def _current_fault(self, command: int) -> int:
        fault, direction = self.fault, self.direction
        once = False
        if self.fault_file is not None:
            fault, direction, once = _read_fault_file(self.fault_file)
        if fault is None:
            return 0
        hit = (command == _CMD_READ and direction in ("read", "both")) or (
            command == _CMD_WRITE and direction in ("write", "both")
        )
        if not hit:
            return 0
        if once and self.fault_file is not None:
            self.fault_file.unlink(missing_ok=True)
            _mark_hit(self.fault_file)
        return _ERRNO[fault]

    def _read_reply(self, offset: int, length: int) -> bytes:
        """The disk's bytes, with a pending one-shot mailbox byte in place (module doc)."""
        data = bytearray(self.disk[offset : offset + length])
        if self.mailbox_file is not None and offset <= MAILBOX_OFFSET < offset + length:
            try:
                byte = self.mailbox_file.read_bytes()[:1]
            except FileNotFoundError:
                byte = b""
            if byte:
                data[MAILBOX_OFFSET - offset] = byte[0]
                self.mailbox_file.unlink(missing_ok=True)
                _mark_hit(self.mailbox_file)
        return bytes(data)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; `started` once the socket listens."""
        self.socket_path.unlink(missing_ok=True)
        listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await listener.bind(str(self.socket_path))
        listener.listen(8)
        with listener:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    sock, _ = await listener.accept()
                    nursery.start_soon(self._connection, trio.SocketStream(sock))

    async def _connection(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                if await self._handshake(stream):
                    await self._transmission(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError, EOFError):
                return  # the client went away: nothing to answer

    async def _handshake(self, stream: trio.SocketStream) -> bool:
        got = await _negotiate_export(stream)
        if got is None or got[0] != self.export_name:
            return False  # the protocol's answer to an unknown name: hang up
        return await self.answer_export(stream, got[1])

    async def answer_export(self, stream: trio.SocketStream, client_flags: int) -> bool:
        """The reply to NBD_OPT_EXPORT_NAME: this disk's size; transmission follows."""
        reply = struct.pack(">QH", len(self.disk), _TRANSMISSION_FLAGS)
        if not client_flags & _FLAG_NO_ZEROES:
            reply += bytes(124)
        await stream.send_all(reply)
        return True

    async def _transmission(self, stream: trio.SocketStream) -> None:
        while True:
            header = await _recv_exactly(stream, 28)
            magic, _flags, command, handle, offset, length = struct.unpack(">IHHQQI", header)
            if magic != _REQUEST_MAGIC or length > _MAX_REQUEST_BYTES:
                return
            data = await _recv_exactly(stream, length) if command == _CMD_WRITE else b""
            if command == _CMD_DISC:
                return
            error = self._current_fault(command)
            if not error and command in (_CMD_READ, _CMD_WRITE):
                if offset + length > len(self.disk):
                    error = errno.ENOSPC if command == _CMD_WRITE else errno.EINVAL
                elif command == _CMD_WRITE:
                    self.disk[offset : offset + length] = data
            elif not error and command != _CMD_FLUSH:
                error = errno.EINVAL  # TRIM, WRITE_ZEROES, …: never offered
            reply = struct.pack(">IIQ", _SIMPLE_REPLY_MAGIC, error, handle)
            if command == _CMD_READ and not error:
                reply += self._read_reply(offset, length)
            if error:
                self.requests_failed += 1
            else:
                self.requests_served += 1
            await stream.send_all(reply)


def _mark_hit(switch: Path) -> None:
    """SWITCH.hit: the wall time a one-shot switch took effect (what a test measures
    detection from: a guest may take seconds to boot and reach its disk)."""
    switch.with_name(switch.name + ".hit").write_text(f"{time.time():.6f}\n")


async def _negotiate_export(stream: trio.SocketStream) -> tuple[str, int] | None:
    """The fixed-newstyle handshake up to NBD_OPT_EXPORT_NAME: (export name, client
    flags), or None when the client aborts or speaks something else."""
    flags = _FLAG_FIXED_NEWSTYLE | _FLAG_NO_ZEROES
    await stream.send_all(struct.pack(">QQH", _NBDMAGIC, _IHAVEOPT, flags))
    (client_flags,) = struct.unpack(">I", await _recv_exactly(stream, 4))
    while True:
        magic, option, length = struct.unpack(">QII", await _recv_exactly(stream, 16))
        if magic != _IHAVEOPT or length > 4096:
            return None
        data = await _recv_exactly(stream, length)
        if option == _OPT_EXPORT_NAME:
            return data.decode(errors="replace"), client_flags
        reply_type = _REP_ACK if option == _OPT_ABORT else _REP_ERR_UNSUP
        await stream.send_all(struct.pack(">QIII", _REPLY_MAGIC, option, reply_type, 0))
        if option == _OPT_ABORT:
            return None


async def _recv_exactly(stream: trio.SocketStream, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        chunk = await stream.receive_some(n - len(chunks))
        if not chunk:
            raise EOFError
        chunks += chunk
    return bytes(chunks)


def _read_fault_file(path: Path) -> tuple[Fault | None, Direction, bool]:
    """(fault, direction, once) from a switch file (module doc)."""
    try:
        words = path.read_text().split()
    except FileNotFoundError:
        return None, "both", False
    once = "once" in words
    words = [w for w in words if w != "once"]
    fault = words[0] if words else "eio"
    direction = words[1] if len(words) > 1 else "both"
    if fault not in _ERRNO or direction not in ("read", "write", "both"):
        return "eio", "both", once  # a garbled switch still means "fail"
    return fault, direction, once  # type: ignore[return-value]


class NbdStorage:
    """Many exports on one socket, each its own NbdFaultServer disk (module doc)."""

    def __init__(self, directory: Path, *, size_bytes: int = 1024 * 1024) -> None:
        self.directory = Path(directory)
        self.socket_path = self.directory / "nbd.sock"
        self.size_bytes = size_bytes
        self.disks: dict[str, NbdFaultServer] = {}

    def disk(self, export: str) -> NbdFaultServer | None:
        if not export or "/" in export or export.startswith(".") or len(export) > 64:
            return None
        if export not in self.disks:
            if len(self.disks) >= MAX_EXPORTS:
                return None
            self.disks[export] = NbdFaultServer(
                self.socket_path,
                size_bytes=self.size_bytes,
                boot_sector=MAILBOX_BOOT_SECTOR,
                export_name=export,
                fault_file=self.directory / f"{export}.fault",
                mailbox_file=self.directory / f"{export}.mailbox",
            )
        return self.disks[export]

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        listener = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
        await listener.bind(str(self.socket_path))
        listener.listen(16)
        with listener:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    sock, _ = await listener.accept()
                    nursery.start_soon(self._connection, trio.SocketStream(sock))

    async def _connection(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                got = await _negotiate_export(stream)
                disk = self.disk(got[0]) if got is not None else None
                if got is not None and disk is not None:
                    await disk.answer_export(stream, got[1])
                    await disk._transmission(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError, EOFError):
                return


MAX_EXPORTS = 256


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m meshha.lab.nbd_fault")
    parser.add_argument("--dir", type=Path, help="shared storage: many exports (module doc)")
    parser.add_argument("--socket", type=Path)
    parser.add_argument("--fault-file", type=Path)
    parser.add_argument("--size-mib", type=int, default=1)
    parser.add_argument("--guest", choices=("busy", "mailbox"), default="busy")
    args = parser.parse_args(argv)
    if args.dir is not None:
        trio.run(NbdStorage(args.dir, size_bytes=args.size_mib * 1024 * 1024).serve)
        return 0
    if args.socket is None or args.fault_file is None:
        parser.error("--socket and --fault-file (or --dir)")
    server = NbdFaultServer(
        args.socket,
        size_bytes=args.size_mib * 1024 * 1024,
        boot_sector=BUSY_BOOT_SECTOR if args.guest == "busy" else MAILBOX_BOOT_SECTOR,
        fault_file=args.fault_file,
    )
    trio.run(server.serve)
    return 0


if __name__ == "__main__":
    sys.exit(main())
