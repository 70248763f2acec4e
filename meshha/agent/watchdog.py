"""The watchdog drivers of the agent (adapters for `WatchdogPort`).

`LinuxWatchdog` drives a Linux watchdog character device (a hardware watchdog, or the
kernel's softdog) through the kernel's watchdog API (Documentation/watchdog/watchdog-api):

- opening the device starts the timer;
- WDIOC_SETTIMEOUT sets the timeout in whole seconds, WDIOC_GETTIMEOUT reads back the one
  the hardware really uses (it may round up);
- WDIOC_KEEPALIVE (or any write) feeds it;
- writing the magic character 'V' and then closing stops it (unless the kernel was built
  with nowayout); closing without it leaves the timer running, so a crashed agent still
  gets its host reset.

`SocketWatchdog` speaks the same semantics over a unix SOCK_SEQPACKET connection to a
user-space watchdog process (meshha/lab/watchdog.py serves one that powers a lab host off
through its chassis; any supervisor that speaks the protocol can). One message per call:

    b"S" + ascii seconds   set the timeout; answer: ascii seconds in use
    b"G"                   get the timeout; answer: ascii seconds
    b"K"                   keepalive (no answer)
    b"W" + data            a write: a keepalive, and 'V' in data arms the magic close
    answer b"E" + text     refused (e.g. b"Ebusy": another opener holds it)

The connection is the open file: closing it after a 'V' stops the timer, closing it
without one does not. `open_watchdog(path)` picks the driver from the file type.

Every call is a few microseconds and never blocks, so it runs on the trio thread (the
device's ioctls directly, the socket through trio): a stalled trio loop stops feeding,
which is the point.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import struct
from pathlib import Path

import trio

from meshha.errors import WatchdogError
from meshha.recovery.ports import WatchdogPort

# linux/watchdog.h: _IOR('W', 5, int), _IOWR('W', 6, int), _IOR('W', 7, int).
WDIOC_KEEPALIVE = 0x80045705
WDIOC_SETTIMEOUT = 0xC0045706
WDIOC_GETTIMEOUT = 0x80045707
MAGIC_CLOSE = b"V"
_MAX_TIMEOUT_S = 65535


class LinuxWatchdog:
    """WatchdogPort on a Linux watchdog device (see the module doc)."""

    def __init__(self, device: Path) -> None:
        self.device = Path(device)
        self._fd: int | None = None

    async def open(self, timeout_s: int) -> int:
        assert self._fd is None, "already open"
        assert 1 <= timeout_s <= _MAX_TIMEOUT_S
        try:
            fd = os.open(self.device, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as err:
            raise _error(err, self.device) from None
        self._fd = fd
        try:
            fcntl.ioctl(fd, WDIOC_SETTIMEOUT, struct.pack("i", timeout_s))
            (got,) = struct.unpack("i", fcntl.ioctl(fd, WDIOC_GETTIMEOUT, struct.pack("i", 0)))
            fcntl.ioctl(fd, WDIOC_KEEPALIVE, struct.pack("i", 0))
        except OSError as err:
            self.close(magic=True)  # it was started by the open: stop it again
            raise _error(err, self.device) from None
        return int(got)

    async def keepalive(self) -> None:
        assert self._fd is not None, "not open"
        try:
            fcntl.ioctl(self._fd, WDIOC_KEEPALIVE, struct.pack("i", 0))
        except OSError as err:
            raise _error(err, self.device) from None

    def close(self, *, magic: bool) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):  # a failed magic write leaves it armed: safe
            if magic:
                os.write(fd, MAGIC_CLOSE)
        os.close(fd)


class SocketWatchdog:
    """WatchdogPort on a user-space watchdog's unix socket (see the module doc)."""

    def __init__(self, path: Path, answer_timeout_s: float = 2.0) -> None:
        self.path = Path(path)
        self._sock: trio.socket.SocketType | None = None
        self._answer_timeout_s = answer_timeout_s

    async def open(self, timeout_s: int) -> int:
        assert self._sock is None, "already open"
        assert 1 <= timeout_s <= _MAX_TIMEOUT_S
        sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_SEQPACKET)
        try:
            await sock.connect(str(self.path))
        except OSError as err:
            sock.close()
            raise _error(err, self.path) from None
        self._sock = sock
        try:
            await self._ask(b"S%d" % timeout_s)
            return int(await self._ask(b"G"))
        except (OSError, ValueError, trio.TooSlowError) as err:
            self.close(magic=True)  # it was started by the open: stop it again
            raise _error(err, self.path) from None
        except WatchdogError:
            self.close(magic=False)  # refused (busy): not ours to stop
            raise

    async def keepalive(self) -> None:
        assert self._sock is not None, "not open"
        try:
            with trio.fail_after(self._answer_timeout_s):
                await self._sock.send(b"K")
        except (OSError, trio.TooSlowError) as err:
            raise _error(err, self.path) from None

    def close(self, *, magic: bool) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        with contextlib.suppress(OSError):  # a write on the socket is one message
            if magic:
                os.write(sock.fileno(), b"W" + MAGIC_CLOSE)
        sock.close()

    async def _ask(self, msg: bytes) -> bytes:
        assert self._sock is not None
        with trio.fail_after(self._answer_timeout_s):  # a local peer answers in microseconds
            try:
                await self._sock.send(msg)
            except OSError:
                # A watchdog that refuses (busy) answers at once and hangs up, maybe before
                # this send: its refusal still waits to be read.
                answer = await self._sock.recv(64)
                if not answer.startswith(b"E"):
                    raise
            else:
                answer = await self._sock.recv(64)
        if not answer:
            raise WatchdogError("closed by the watchdog", kind="failed", where=str(self.path))
        if answer.startswith(b"E"):
            kind = answer[1:].decode(errors="replace") or "failed"
            raise WatchdogError(f"refused: {kind}", kind=kind, where=str(self.path))
        return answer


def open_watchdog(device: Path) -> WatchdogPort:
    """The driver for `device`: a char device (Linux API) or a unix socket (protocol).
    WatchdogError(kind="missing") when it is neither, so a host whose config declares a
    watchdog it does not have fails at start, loudly."""
    try:
        mode = os.stat(device).st_mode
    except OSError as err:
        raise WatchdogError(
            f"declared watchdog device: {err.strerror}", kind="missing", where=str(device)
        ) from None
    if stat.S_ISCHR(mode):
        return LinuxWatchdog(device)
    if stat.S_ISSOCK(mode):
        return SocketWatchdog(device)
    raise WatchdogError(
        "declared watchdog device is neither a character device nor a unix socket",
        kind="missing",
        where=str(device),
    )


def _error(err: Exception, where: Path) -> WatchdogError:
    if isinstance(err, OSError):
        kind = {
            errno.EBUSY: "busy",
            errno.ENOENT: "missing",
            errno.ENOTTY: "unsupported",
            errno.EINVAL: "unsupported",
        }.get(err.errno or 0, "failed")
        return WatchdogError(err.strerror or str(err), kind=kind, where=str(where))
    return WatchdogError(f"bad answer: {err}", kind="failed", where=str(where))
