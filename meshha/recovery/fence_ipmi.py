"""Fencing through a host's BMC over IPMI 2.0 lanplus, with pyghmi.

A fence is only as good as its confirmation. `IpmiFencer.power_off` sends "off" and then
polls the BMC's power state until the BMC itself *reports* off; a successful "off"
command proves nothing (the next evacuation would run the VMs twice if the BMC lied).
pyghmi's own `set_power(wait=True)` polls once a second; polling ourselves every
`poll_interval_s` confirms a lab BMC (ipmi_sim) in a median of about 50 ms.

Bounds: one `power_off` takes at most `confirm_timeout_s`, in at most `attempts` attempts
(each sends "off" again and polls for `confirm_timeout_s / attempts`), with
`retry_backoff_s` (doubling) between attempts that failed outright. The errors, as
`FenceError.kind`:

    auth           the BMC refused the user or password: never retried (lockout risk)
    unreachable    no answer from the BMC at all (nothing was ever heard from it)
    timeout        the BMC answered, but the deadline passed while it was still busy
    not_confirmed  the BMC accepted "off" but kept reporting "on" until the end
    protocol       the BMC answered every attempt with an error completion code

pyghmi is blocking and keeps global session state (one IO thread, a session cache keyed
by address, user and password). Its calls run in `trio.to_thread` under this adapter's
own CapacityLimiter; operations on one BMC are serialised by a per-host lock. Every
attempt logs in afresh and logs out after: a session held between operations goes stale
when the BMC reboots or expires it, and pyghmi then spends more than 10 s re-logging
in, exactly when a fence is needed; a fresh one costs a few milliseconds, and a broken
session never outlives the attempt that saw it break. pyghmi's lost wake-ups (below)
are bounded to 10 ms. Credentials are read from the password file as *bytes* at each
operation: pyghmi hangs on a second session with str credentials in one process, and
reading each time picks up a rotated password. They never reach argv or a log line.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
import trio
from pyghmi import exceptions as pyghmi_exceptions
from pyghmi.ipmi import command as ipmi_command

from meshha.config.model import Bmc
from meshha.errors import FenceError
from meshha.recovery.ports import FenceProof, PowerState

log = structlog.get_logger(__name__)

# pyghmi 1.6 loses wake-ups: a caller that sends a request and then registers its wait
# with pyghmi's IO thread misses a response that arrived in between (the IO thread had
# already queued it and woken nobody), and sleeps out the full retry timer, 0.5-1 s,
# before it looks at the response it already has. Measured here: 2-8 % of requests
# under load, so a third of fences (about ten exchanges each) took an extra second.
# Every pyghmi caller of `_io_wait` re-checks its queue and waits again when woken
# early, so capping each wait at 10 ms bounds the lost wake-up to 10 ms without
# changing behaviour (0 stalls in 280 requests, against 16, same load).
_IO_WAIT_SLICE_S = 0.01


def _bound_pyghmi_waits() -> None:
    """Cap pyghmi's internal waits (see above); idempotent, and a no-op if a pyghmi
    version no longer has the function (it then just keeps its stalls)."""
    from pyghmi.ipmi.private import session as pyghmi_session

    original = getattr(pyghmi_session, "_io_wait", None)
    if original is None or getattr(original, "_meshha_sliced", False):
        return

    def sliced(timeout: float, myaddr: object = None, evq: object = None) -> object:
        return original(min(timeout, _IO_WAIT_SLICE_S), myaddr, evq)

    sliced._meshha_sliced = True  # type: ignore[attr-defined]
    pyghmi_session._io_wait = sliced


T = TypeVar("T")

# pyghmi's messages for a refused login (RAKP2/RAKP4 codes and its own checks).
_AUTH_MARKERS = (
    "incorrect password",
    "unauthorized name",
    "unauthorized role",
    "invalid role",
    "invalid username length",
    "invalid integrity check value",
    "rakp4 integrity",
    "password is too long",
)
# pyghmi's messages for "nothing (more) came back".
_SILENCE_MARKERS = ("timeout", "session no longer connected", "session failed to initialize")


def classify(error: BaseException, *, contacted: bool) -> str:
    """The FenceError kind for an exception out of pyghmi (pure; tested on its own)."""
    if isinstance(error, (socket.gaierror, OSError)):
        return "unreachable"
    message = str(error.args[0]).lower() if error.args and error.args[0] else ""
    if any(marker in message for marker in _AUTH_MARKERS):
        return "auth"
    if not message or any(marker in message for marker in _SILENCE_MARKERS):
        return "timeout" if contacted else "unreachable"
    return "protocol"


@dataclass
class _Progress:
    """What one operation learned, to pick the error kind when it gives up."""

    contacted: bool = False  # a session was established: the BMC answers
    accepted: bool = False  # the BMC accepted the power command at least once
    wrong_state_seen: bool = False  # a poll after acceptance still said the old state
    last_kind: str = "unreachable"
    last_message: str = "no answer from the BMC"
    attempts: int = 0

    def give_up_kind(self, deadline_passed: bool) -> str:
        if self.last_kind == "auth":
            return "auth"
        if not self.contacted:
            return "unreachable"
        if self.accepted and self.wrong_state_seen and self.last_kind == "not_confirmed":
            return "not_confirmed"
        if self.last_kind == "protocol":
            return "protocol"
        if deadline_passed:
            return "timeout"
        return self.last_kind


class IpmiFencer:
    """FencePort over IPMI: `bmcs` maps a host name to its BMC."""

    def __init__(
        self,
        bmcs: Mapping[str, Bmc],
        *,
        limiter: trio.CapacityLimiter | None = None,
        confirm_timeout_s: float = 30.0,
        attempts: int = 3,
        poll_interval_s: float = 0.02,
        retry_backoff_s: float = 0.2,
        query_timeout_s: float = 10.0,
    ) -> None:
        assert confirm_timeout_s > 0 and attempts >= 1 and poll_interval_s > 0
        self._bmcs = dict(bmcs)
        # pyghmi threads mostly wait on the network; 4 lets a leader fence a few hosts at
        # once without one slow BMC holding up the others.
        self._limiter = limiter if limiter is not None else trio.CapacityLimiter(4)
        self._confirm_timeout_s = confirm_timeout_s
        self._attempts = attempts
        self._poll_interval_s = poll_interval_s
        self._retry_backoff_s = retry_backoff_s
        self._query_timeout_s = query_timeout_s
        self._locks: dict[str, trio.Lock] = {}
        _bound_pyghmi_waits()

    async def power_off(self, host: str) -> FenceProof:
        """Power `host` off; return only once its BMC reports it off."""
        return await self._switch(host, "off")

    async def power_on(self, host: str) -> None:
        await self._switch(host, "on")

    async def power_state(self, host: str) -> PowerState:
        bmc = self._bmc(host)
        progress = _Progress()
        async with self._lock(host):
            with trio.move_on_after(self._query_timeout_s):
                session = await self._login(host, bmc, progress)
                try:
                    return await self._get_power(host, session, progress)
                finally:
                    await self._logout(session)
        raise FenceError(
            f"no power state within {self._query_timeout_s}s",
            kind=progress.give_up_kind(deadline_passed=True),
            where=self._where(host, bmc),
        )

    # -- one confirmed power switch ----------------------------------------------------

    async def _switch(self, host: str, target: PowerState) -> FenceProof:
        bmc = self._bmc(host)
        progress = _Progress()
        window_s = self._confirm_timeout_s / self._attempts
        started = trio.current_time()
        backoff_s = self._retry_backoff_s
        async with self._lock(host):
            with trio.move_on_after(self._confirm_timeout_s) as scope:
                while progress.attempts < self._attempts:
                    progress.attempts += 1
                    polls = await self._attempt(host, bmc, target, window_s, progress)
                    if polls is not None:
                        took_s = trio.current_time() - started
                        return FenceProof(
                            host=host,
                            method="bmc",
                            detail=(
                                f"BMC {bmc.address}:{bmc.port} reported {target} "
                                f"{took_s:.3f}s after the request ({polls} polls)"
                            ),
                            attempts=progress.attempts,
                        )
                    if progress.last_kind == "auth":
                        break
                    if progress.last_kind != "not_confirmed" and progress.attempts < self._attempts:
                        await trio.sleep(backoff_s)
                        backoff_s *= 2
        if scope.cancelled_caught:
            progress.last_message = (
                f"the {self._confirm_timeout_s}s deadline passed; last: {progress.last_message}"
            )
        kind = progress.give_up_kind(deadline_passed=scope.cancelled_caught)
        log.warning(
            "fence.gave_up", host=host, target=target, kind=kind, attempts=progress.attempts
        )
        raise FenceError(
            f"power {target} not confirmed after {progress.attempts} attempt(s) "
            f"in {trio.current_time() - started:.2f}s: {progress.last_message}",
            kind=kind,
            where=self._where(host, bmc),
        )

    async def _attempt(
        self, host: str, bmc: Bmc, target: PowerState, window_s: float, progress: _Progress
    ) -> int | None:
        """Log in, send `target` and poll for it for `window_s`, log out. The number of
        polls on success; None when this attempt failed (`progress` says why)."""
        try:
            session = await self._login(host, bmc, progress)
        except FenceError as e:
            progress.last_kind, progress.last_message = e.kind, str(e)
            return None
        try:
            await self._call(host, progress, session.set_power, target)
            progress.accepted = True
            polls = 0
            with trio.move_on_after(window_s):
                while True:
                    polls += 1
                    if await self._get_power(host, session, progress) == target:
                        return polls
                    progress.wrong_state_seen = True
                    progress.last_kind = "not_confirmed"
                    progress.last_message = f"BMC still reports {_other(target)}"
                    await trio.sleep(self._poll_interval_s)
            return None
        except FenceError as e:
            progress.last_kind, progress.last_message = e.kind, str(e)
            return None
        finally:
            await self._logout(session)

    # -- pyghmi calls, each in a thread ------------------------------------------------

    async def _login(self, host: str, bmc: Bmc, progress: _Progress) -> Any:
        password = self._password(host, bmc)
        session = await self._call(
            host,
            progress,
            lambda: ipmi_command.Command(
                bmc=bmc.address,
                userid=bmc.username.encode(),
                password=password,
                port=bmc.port,
            ),
        )
        progress.contacted = True
        return session

    async def _logout(self, session: Any) -> None:
        """End the session, so that pyghmi never hands a stale one to a later operation
        (it returns an existing session for the same BMC and credentials until that is
        logged out). Best effort: bounded by a second; skipped once the operation's
        deadline has passed (pyghmi breaks a dead session by itself)."""
        if trio.current_effective_deadline() <= trio.current_time():
            return
        with (
            trio.CancelScope(shield=True),
            trio.move_on_after(1.0),
            contextlib.suppress(pyghmi_exceptions.IpmiException, OSError),
        ):
            await trio.to_thread.run_sync(
                session.ipmi_session.logout, limiter=self._limiter, abandon_on_cancel=True
            )

    async def _get_power(self, host: str, session: Any, progress: _Progress) -> PowerState:
        answer = await self._call(host, progress, session.get_power)
        state = answer.get("powerstate")
        if state not in ("on", "off"):
            raise FenceError(f"unexpected power state {state!r}", kind="protocol", where=host)
        return "on" if state == "on" else "off"

    async def _call(self, host: str, progress: _Progress, fn: Callable[..., T], *args: object) -> T:
        try:
            return await trio.to_thread.run_sync(
                fn, *args, limiter=self._limiter, abandon_on_cancel=True
            )
        except (pyghmi_exceptions.IpmiException, OSError) as e:
            kind = classify(e, contacted=progress.contacted)
            raise FenceError(
                f"{type(e).__name__}: {e.args[0] if e.args else ''}", kind=kind, where=host
            ) from e

    # -- helpers -----------------------------------------------------------------------

    def _bmc(self, host: str) -> Bmc:
        try:
            return self._bmcs[host]
        except KeyError:
            raise FenceError("no BMC configured", kind="unreachable", where=host) from None

    def _password(self, host: str, bmc: Bmc) -> bytes:
        try:
            password = bmc.password_file.read_bytes().rstrip(b"\r\n")
        except OSError as e:
            raise FenceError(
                f"cannot read the BMC password file {bmc.password_file}: {e.strerror}",
                kind="auth",
                where=self._where(host, bmc),
            ) from None
        if not password:
            raise FenceError(
                f"the BMC password file {bmc.password_file} is empty",
                kind="auth",
                where=self._where(host, bmc),
            )
        return password

    def _lock(self, host: str) -> trio.Lock:
        return self._locks.setdefault(host, trio.Lock())

    @staticmethod
    def _where(host: str, bmc: Bmc) -> str:
        return f"{host} (BMC {bmc.address}:{bmc.port})"


def _other(state: PowerState) -> PowerState:
    return "on" if state == "off" else "off"
