"""The local hypervisor's failure signals: libvirt domain events, classified into VmEvents.

`LibvirtEventMonitor(uri).run(send)` keeps one libvirt connection open (reconnecting
with backoff when it drops) and turns domain events into `VmEvent`s on `send`:

    STOPPED/FAILED, STOPPED/CRASHED          -> crashed   (qemu died)
    CRASHED/PANICKED, CRASHED/CRASHLOADED    -> panicked  (guest kernel panic)
    IO_ERROR_REASON, SUSPENDED/IOERROR       -> io_error  (storage failed under it)
    WATCHDOG, SUSPENDED/WATCHDOG             -> watchdog  (guest stopped kicking)
    the connection closed / open again       -> hypervisor_down / hypervisor_up

libvirt raises IO_ERROR and IO_ERROR_REASON together for every block I/O error (since
0.8.1), the second with the same source, device and action plus the reason ("enospc",
or "" for EIO). The monitor subscribes to IO_ERROR_REASON only, so the VmEvent says
why; a plain IO_ERROR subscription would only ever duplicate it.

Everything an operator (or Nova for one) causes - STOPPED/SHUTDOWN, STOPPED/DESTROYED,
SUSPENDED/PAUSED, migrations, saves, snapshots, starts and resumes - is dropped: it is
not a failure. One fault usually raises several events (IO_ERROR, IO_ERROR_REASON and
SUSPENDED/IOERROR within milliseconds); one VmEvent is sent per VM and kind within
`coalesce_s`, and a start, resume or stop of the VM ends the episode.

No classification is lost across an outage: every (re)connect reads the state of every
domain and sends what the events would have said - a VM now paused on an I/O error or
watchdog, or panicked, that was not reported yet; a VM that was active before the outage
and is now shut off with reason failed/crashed. A transient domain that vanished during
the outage cannot be told from one an operator destroyed; it is logged, not sent.

Threads: libvirt delivers events from its default event loop, `virEventRunDefaultImpl()`,
which this monitor runs in a thread of its own for as long as `run()` runs (one monitor
per process: libvirt's event loop is process-wide). Callbacks hand raw events to trio
with `TrioToken.run_sync_soon`; classification, bookkeeping and coalescing happen in
trio. Blocking libvirt calls (open, list, close) run in `trio.to_thread` under the
monitor's own CapacityLimiter. Events wait in a bounded buffer (`max_pending`) for the
consumer; if the consumer falls that far behind, further events are counted in
`dropped` and logged, never allowed to block libvirt's event loop.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import libvirt
import structlog
import trio

from meshha.errors import HypervisorError
from meshha.recovery.ports import VmEvent, VmEventKind

log = structlog.get_logger(__name__)

T = TypeVar("T")

_STOPPED_NAMES = {0: "SHUTDOWN", 1: "DESTROYED", 2: "CRASHED", 3: "MIGRATED", 4: "SAVED"}
_STOPPED_NAMES |= {5: "FAILED", 6: "FROM_SNAPSHOT"}
_SUSPENDED_NAMES = {0: "PAUSED", 1: "MIGRATED", 2: "IOERROR", 3: "WATCHDOG", 4: "RESTORED"}
_SUSPENDED_NAMES |= {5: "FROM_SNAPSHOT", 6: "API_ERROR", 7: "POSTCOPY", 8: "POSTCOPY_FAILED"}
_CRASHED_NAMES = {0: "PANICKED", 1: "CRASHLOADED"}
_WATCHDOG_ACTIONS = {0: "NONE", 1: "PAUSE", 2: "RESET", 3: "POWEROFF", 4: "SHUTDOWN"}
_WATCHDOG_ACTIONS |= {5: "DEBUG", 6: "INJECTNMI"}
_IO_ACTIONS = {0: "NONE", 1: "PAUSE", 2: "REPORT"}
_EVENT_NAMES = {0: "DEFINED", 1: "UNDEFINED", 2: "STARTED", 3: "SUSPENDED", 4: "RESUMED"}
_EVENT_NAMES |= {5: "STOPPED", 6: "SHUTDOWN", 7: "PMSUSPENDED", 8: "CRASHED"}


def classify_lifecycle(event: int, detail: int) -> tuple[VmEventKind, str] | None:
    """The VmEvent kind and detail for a LIFECYCLE event; None for a non-failure."""
    if event == libvirt.VIR_DOMAIN_EVENT_STOPPED and detail in (
        libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED,
        libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED,
    ):
        return "crashed", f"STOPPED/{_STOPPED_NAMES[detail]}"
    if event == libvirt.VIR_DOMAIN_EVENT_CRASHED:
        return "panicked", f"CRASHED/{_CRASHED_NAMES.get(detail, str(detail))}"
    if event == libvirt.VIR_DOMAIN_EVENT_SUSPENDED:
        if detail == libvirt.VIR_DOMAIN_EVENT_SUSPENDED_IOERROR:
            return "io_error", "SUSPENDED/IOERROR"
        if detail == libvirt.VIR_DOMAIN_EVENT_SUSPENDED_WATCHDOG:
            return "watchdog", "SUSPENDED/WATCHDOG"
    return None


def classify_state(state: int, reason: int) -> tuple[VmEventKind, str] | None:
    """The failure a domain's current (state, reason) shows; None when it shows none."""
    if state == libvirt.VIR_DOMAIN_PAUSED and reason == libvirt.VIR_DOMAIN_PAUSED_IOERROR:
        return "io_error", "PAUSED/IOERROR"
    if state == libvirt.VIR_DOMAIN_PAUSED and reason == libvirt.VIR_DOMAIN_PAUSED_WATCHDOG:
        return "watchdog", "PAUSED/WATCHDOG"
    if state == libvirt.VIR_DOMAIN_CRASHED:
        return "panicked", "CRASHED/PANICKED"
    if state == libvirt.VIR_DOMAIN_SHUTOFF and reason in (
        libvirt.VIR_DOMAIN_SHUTOFF_FAILED,
        libvirt.VIR_DOMAIN_SHUTOFF_CRASHED,
    ):
        failed = reason == libvirt.VIR_DOMAIN_SHUTOFF_FAILED
        return "crashed", "SHUTOFF/FAILED" if failed else "SHUTOFF/CRASHED"
    return None


def _is_active(state: int) -> bool:
    return state not in (libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_NOSTATE)


# libvirt's default event implementation is process-wide: registered once, run by one
# thread at a time.
_register_lock = threading.Lock()
_registered = False
_loop_owner = threading.Lock()


def register_event_impl() -> None:
    """Register libvirt's default event loop (once per process, before any open)."""
    global _registered
    with _register_lock:
        if not _registered:
            libvirt.virEventRegisterDefaultImpl()
            libvirt.registerErrorHandler(lambda _ctx, _error: None, None)
            _registered = True


# After a (re)connect, look at the domains believed running again after these waits.
SETTLE_CHECKS_S = (0.5, 1.0, 2.0, 4.0)


class LibvirtEventMonitor:
    """Classified VM failure events from the hypervisor at `uri` (see the module doc).

    Settings:
      keepalive_interval_s, keepalive_count: a libvirtd that stops answering is declared
        gone after about interval * (count + 1) s (not supported by embed:// URIs).
      reconnect_initial_s .. reconnect_max_s: doubling backoff between reconnects; the
        max bounds how late hypervisor_up can be after libvirtd is back.
      coalesce_s: one VmEvent per VM and kind inside this window (a fault raises 2-3).
      max_pending: events buffered for a slow consumer before further ones are dropped.
    """

    def __init__(
        self,
        uri: str,
        *,
        read_only: bool = True,
        limiter: trio.CapacityLimiter | None = None,
        keepalive_interval_s: int = 2,
        keepalive_count: int = 3,
        reconnect_initial_s: float = 0.05,
        reconnect_max_s: float = 2.0,
        coalesce_s: float = 1.0,
        max_pending: int = 1024,
    ) -> None:
        assert 0 < reconnect_initial_s <= reconnect_max_s and max_pending > 0
        self.uri = uri
        self._read_only = read_only
        self._limiter = limiter if limiter is not None else trio.CapacityLimiter(1)
        self._keepalive = (keepalive_interval_s, keepalive_count)
        self._reconnect = (reconnect_initial_s, reconnect_max_s)
        self._coalesce_s = coalesce_s
        self._max_pending = max_pending
        self.dropped = 0
        self.connected = False
        self._token: trio.lowlevel.TrioToken | None = None
        self._pending_send: trio.MemorySendChannel[VmEvent] | None = None
        self._closed = trio.Event()
        self._close_reason = "connection closed"
        self._stop_loop = threading.Event()
        self._active: set[str] = set()  # uuids of domains running or paused
        self._hung: dict[str, VmEventKind] = {}  # uuid -> reported pause/panic not over
        self._recent: dict[tuple[str, VmEventKind], float] = {}

    async def run(
        self,
        send: trio.MemorySendChannel[VmEvent],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run until cancelled; `started` after the first connection attempt (events from
        then on are seen). Owns and closes `send`."""
        register_event_impl()
        self._token = trio.lowlevel.current_trio_token()
        pending_send, pending_recv = trio.open_memory_channel[VmEvent](self._max_pending)
        self._pending_send = pending_send
        async with send, trio.open_nursery() as nursery:
            await nursery.start(self._event_loop)
            nursery.start_soon(self._forward, pending_recv, send)
            try:
                await self._connection_loop(task_status)
            finally:
                self._wake_and_stop_event_loop()
                nursery.cancel_scope.cancel()

    # -- the connection ----------------------------------------------------------------

    async def _connection_loop(self, task_status: trio.TaskStatus[None]) -> None:
        backoff_s = self._reconnect[0]
        down_reported = False
        started = False
        while True:
            self._closed = trio.Event()
            try:
                conn, callback_ids, snapshot = await trio.to_thread.run_sync(
                    self._open, limiter=self._limiter
                )
            except libvirt.libvirtError as e:
                if not down_reported:
                    self._emit(VmEvent("hypervisor_down", None, f"open failed: {_message(e)}"))
                    down_reported = True
                if not started:
                    task_status.started()
                    started = True
                await trio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, self._reconnect[1])
                continue
            backoff_s = self._reconnect[0]
            self.connected = True
            try:
                if down_reported:
                    self._emit(VmEvent("hypervisor_up", None, f"connected to {self.uri}"))
                    down_reported = False
                self._reconcile(snapshot)
                if not started:
                    task_status.started()
                    started = True
                async with trio.open_nursery() as settling:
                    settling.start_soon(self._settle, conn)
                    await self._closed.wait()
                    settling.cancel_scope.cancel()
                self._emit(VmEvent("hypervisor_down", None, self._close_reason))
                down_reported = True
            finally:
                self.connected = False
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(
                        _close_quietly, conn, callback_ids, limiter=self._limiter
                    )

    def _open(self) -> tuple[Any, list[int], dict[str, tuple[int, int]]]:
        """In a thread: connect, subscribe, and read every domain's state."""
        conn = libvirt.openReadOnly(self.uri) if self._read_only else libvirt.open(self.uri)
        callback_ids: list[int] = []
        try:
            with contextlib.suppress(libvirt.libvirtError):  # embed:// has no keepalive
                conn.setKeepAlive(*self._keepalive)
            with contextlib.suppress(libvirt.libvirtError):  # embed:// never closes
                conn.registerCloseCallback(self._on_close, None)
            for event_id, callback in (
                (libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle),
                (libvirt.VIR_DOMAIN_EVENT_ID_IO_ERROR_REASON, self._on_io_error_reason),
                (libvirt.VIR_DOMAIN_EVENT_ID_WATCHDOG, self._on_watchdog),
            ):
                callback_ids.append(conn.domainEventRegisterAny(None, event_id, callback, None))
            snapshot = {}
            for dom in conn.listAllDomains(0):
                state, reason = dom.state()
                snapshot[dom.UUIDString()] = (state, reason)
        except libvirt.libvirtError:
            _close_quietly(conn, callback_ids)
            raise
        return conn, callback_ids, snapshot

    # -- libvirt's event loop thread ---------------------------------------------------

    async def _event_loop(self, *, task_status: trio.TaskStatus[None]) -> None:
        if not _loop_owner.acquire(blocking=False):
            raise RuntimeError("libvirt's event loop already runs here: one monitor a process")
        try:
            self._stop_loop.clear()
            task_status.started()
            await trio.to_thread.run_sync(self._run_event_loop, limiter=trio.CapacityLimiter(1))
        finally:
            _loop_owner.release()

    def _run_event_loop(self) -> None:
        while not self._stop_loop.is_set():
            if libvirt.virEventRunDefaultImpl() < 0:
                log.error("libvirt.event_loop_failed")
                return

    def _wake_and_stop_event_loop(self) -> None:
        self._stop_loop.set()

        def wake(timer: int, _opaque: object) -> None:
            libvirt.virEventRemoveTimeout(timer)

        libvirt.virEventAddTimeout(0, wake, None)

    # -- callbacks: in libvirt's thread; hand everything to trio -----------------------

    def _to_trio(self, fn: Callable[..., None], *args: object) -> None:
        assert self._token is not None
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(fn, *args)

    def _on_close(self, _conn: object, reason: int, _opaque: object) -> None:
        if reason != libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT:
            name = {0: "ERROR", 1: "EOF", 2: "KEEPALIVE"}.get(reason, str(reason))
            self._to_trio(self._connection_closed, f"connection closed: {name}")

    def _on_lifecycle(self, _c: object, dom: Any, event: int, detail: int, _o: object) -> None:
        self._to_trio(self._lifecycle, dom.UUIDString(), event, detail)

    def _on_io_error_reason(
        self, _c: object, dom: Any, path: str, alias: str, action: int, reason: str, _o: object
    ) -> None:
        detail = (
            f"IO_ERROR_REASON {alias} {path} action={_IO_ACTIONS.get(action, action)} "
            f"reason={reason or 'eio'}"
        )
        self._to_trio(self._failure, dom.UUIDString(), "io_error", detail)

    def _on_watchdog(self, _c: object, dom: Any, action: int, _o: object) -> None:
        detail = f"WATCHDOG action={_WATCHDOG_ACTIONS.get(action, action)}"
        self._to_trio(self._failure, dom.UUIDString(), "watchdog", detail)

    # -- in trio: bookkeeping, classification, coalescing ------------------------------

    def _connection_closed(self, reason: str) -> None:
        self._close_reason = reason
        self._closed.set()

    def _lifecycle(self, uuid: str, event: int, detail: int) -> None:
        if event in (libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_RESUMED):
            self._active.add(uuid)
            self._end_episode(uuid)
        elif event == libvirt.VIR_DOMAIN_EVENT_SUSPENDED:
            self._active.add(uuid)
        elif event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
            self._active.discard(uuid)
        classified = classify_lifecycle(event, detail)
        if classified is None:
            if event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
                self._end_episode(uuid)
            return
        self._failure(uuid, *classified)
        if event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
            self._end_episode(uuid)

    def _failure(self, uuid: str, kind: VmEventKind, detail: str) -> None:
        if kind in ("io_error", "watchdog", "panicked"):
            self._hung[uuid] = kind
        now = trio.current_time()
        last = self._recent.get((uuid, kind))
        if last is not None and now - last < self._coalesce_s:
            return
        self._recent[(uuid, kind)] = now
        self._emit(VmEvent(kind, uuid, detail))

    def _end_episode(self, uuid: str) -> None:
        self._hung.pop(uuid, None)
        for key in [k for k in self._recent if k[0] == uuid]:
            del self._recent[key]

    async def _settle(self, conn: Any) -> None:
        """A restarted libvirtd reconnects to its qemus in the background: one that died
        during the outage can still look running in the first snapshot, and libvirtd then
        marks it off without a lifecycle event (seen under load in CI). So look again a few
        times after each connect, for the domains still believed active."""
        for wait_s in SETTLE_CHECKS_S:
            await trio.sleep(wait_s)
            try:
                states = await trio.to_thread.run_sync(_states, conn, limiter=self._limiter)
            except libvirt.libvirtError:
                return
            for uuid, (state, reason) in sorted(states.items()):
                if uuid not in self._active or _is_active(state):
                    continue
                self._active.discard(uuid)
                classified = classify_state(state, reason)
                if classified is not None and classified[0] == "crashed":
                    self._failure(uuid, "crashed", f"{classified[1]} (while disconnected)")

    def _reconcile(self, snapshot: dict[str, tuple[int, int]]) -> None:
        """Send what the events of an outage (or of before we started) would have said."""
        was_active = self._active
        for uuid, (state, reason) in sorted(snapshot.items()):
            classified = classify_state(state, reason)
            if classified is None:
                self._hung.pop(uuid, None)
                continue
            kind, detail = classified
            if kind == "crashed":
                if uuid in was_active:
                    self._failure(uuid, kind, f"{detail} (while disconnected)")
            elif self._hung.get(uuid) != kind:
                self._failure(uuid, kind, f"{detail} (found on connect)")
        for uuid in sorted(was_active - snapshot.keys()):
            log.warning("libvirt.domain_vanished", vm=uuid, uri=self.uri)
        self._active = {u for u, (state, _) in snapshot.items() if _is_active(state)}
        self._hung = {u: k for u, k in self._hung.items() if u in self._active}

    def _emit(self, event: VmEvent) -> None:
        assert self._pending_send is not None
        try:
            self._pending_send.send_nowait(event)
        except trio.WouldBlock:
            self.dropped += 1
            log.error("libvirt.event_dropped", kind=event.kind, vm=event.vm, dropped=self.dropped)

    async def _forward(
        self, pending: trio.MemoryReceiveChannel[VmEvent], send: trio.MemorySendChannel[VmEvent]
    ) -> None:
        async with pending:
            async for event in pending:
                await send.send(event)


def _states(conn: Any) -> dict[str, tuple[int, int]]:
    return {dom.UUIDString(): tuple(dom.state()) for dom in conn.listAllDomains(0)}


def _close_quietly(conn: Any, callback_ids: list[int]) -> None:
    for callback_id in callback_ids:
        with contextlib.suppress(libvirt.libvirtError):
            conn.domainEventDeregisterAny(callback_id)
    with contextlib.suppress(libvirt.libvirtError):
        conn.unregisterCloseCallback()
    with contextlib.suppress(libvirt.libvirtError):
        conn.close()


def _message(error: libvirt.libvirtError) -> str:
    return error.get_error_message() or str(error)


# -- the HypervisorPort ----------------------------------------------------------------


class LibvirtHypervisor:
    """HypervisorPort over libvirt: every call opens its own short connection in a
    thread (no state to go stale across a libvirtd restart), under its own limiter."""

    def __init__(self, uri: str, *, limiter: trio.CapacityLimiter | None = None) -> None:
        self.uri = uri
        self._limiter = limiter if limiter is not None else trio.CapacityLimiter(2)

    async def running_vms(self) -> list[str]:
        """UUIDs of every active domain (running or paused: both hold the VM's disks)."""
        return await self._call(_running_vms)

    async def destroy_all(self) -> list[str]:
        """Self-fence: destroy every active domain; returns the uuids destroyed. Tries
        all of them even when one fails, then raises HypervisorError(failed)."""
        destroyed, failures = await self._call(_destroy_all)
        if failures:
            raise HypervisorError(
                f"could not destroy {len(failures)} domain(s): {'; '.join(failures)} "
                f"(destroyed {len(destroyed)})",
                kind="failed",
                where=self.uri,
            )
        return destroyed

    async def destroy(self, vm: str) -> None:
        """Destroy one domain by uuid (a returning host's reconcile); gone already is fine."""
        await self._call(_destroy_one, vm)

    async def resume(self, vm: str) -> None:
        """Resume a paused VM (after its I/O error was cleared); running already is fine."""
        await self._call(_resume, vm)

    async def _call(self, fn: Callable[..., T], *args: object) -> T:
        return await trio.to_thread.run_sync(
            _with_connection, self.uri, fn, *args, limiter=self._limiter
        )


def quiet_libvirt() -> None:
    """Stop libvirt printing every error to stderr: callers get them as exceptions."""
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _error: None, None)


def libvirt_answers(uri: str) -> bool:
    """True when a connection to `uri` opens and answers getLibVersion."""
    import libvirt

    quiet_libvirt()
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError:
        return False
    try:
        conn.getLibVersion()
        return True
    except libvirt.libvirtError:
        return False
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()


def _with_connection(uri: str, fn: Callable[..., T], *args: object) -> T:
    register_event_impl()  # quiet libvirt's stderr; harmless if no loop runs
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as e:
        raise HypervisorError(_message(e), kind="unreachable", where=uri) from None
    try:
        return fn(conn, *args)
    except libvirt.libvirtError as e:
        code = e.get_error_code()
        if code == libvirt.VIR_ERR_NO_DOMAIN:
            kind = "not_found"
        elif code in (libvirt.VIR_ERR_SYSTEM_ERROR, libvirt.VIR_ERR_RPC):
            kind = "unreachable"
        else:
            kind = "failed"
        raise HypervisorError(_message(e), kind=kind, where=uri) from None
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()


def _running_vms(conn: Any) -> list[str]:
    return sorted(
        d.UUIDString() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
    )


def _destroy_all(conn: Any) -> tuple[list[str], list[str]]:
    destroyed, failures = [], []
    for dom in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE):
        uuid = dom.UUIDString()
        try:
            dom.destroy()
            destroyed.append(uuid)
        except libvirt.libvirtError as e:
            if e.get_error_code() in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
                destroyed.append(uuid)  # it stopped by itself meanwhile: not running either
            else:
                failures.append(f"{uuid}: {_message(e)}")
    return sorted(destroyed), failures


def _destroy_one(conn: Any, vm: str) -> None:
    try:
        conn.lookupByUUIDString(vm).destroy()
    except libvirt.libvirtError as e:
        if e.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_OPERATION_INVALID):
            raise


def _resume(conn: Any, vm: str) -> None:
    dom = conn.lookupByUUIDString(vm)
    state, _reason = dom.state()
    if state == libvirt.VIR_DOMAIN_RUNNING:
        return
    if state != libvirt.VIR_DOMAIN_PAUSED:
        raise HypervisorError(f"cannot resume a domain in state {state}", kind="failed", where=vm)
    dom.resume()
