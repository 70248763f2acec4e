"""meshha-agent: the per-host daemon (one per compute host, under systemd).

    meshha-agent --config /etc/meshha/segment.toml --host compute-01

Starts, in one trio nursery tree: the Raft member (pysyncobj, bound to the admin
address, password from its file), the UDP probers, the node (verdicts, decisions,
executor, isolation response, local monitors), and the control socket. SIGTERM or
SIGINT drain and exit cleanly; SIGKILL at any point loses nothing committed (the Raft
journal is on disk and the ledger replays from it, idempotently).

Exit codes: 0 clean stop, 2 configuration or start-up error (message says what and where:
a data dir that cannot be written or a Raft journal that cannot be read names its path
and errno, a port in use its address).
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import click
import structlog
import trio

from meshha import logs
from meshha.agent import control, metrics
from meshha.agent.alive import AliveMark
from meshha.agent.memlock import lock_memory
from meshha.agent.node import Node, NodePorts
from meshha.agent.persist import PersistWatch, Problem, problem_of
from meshha.agent.preflight import check_nova
from meshha.agent.sd_notify import SdNotifier
from meshha.agent.service import ControlHandler
from meshha.agent.udp import UdpTransport
from meshha.config.load import load_segment
from meshha.config.model import ELECTION_TIMEOUT_MAX_FACTOR, Processes, Segment
from meshha.errors import ConfigError, MeshhaError
from meshha.ledger.sink import LedgerReader, LedgerSink
from meshha.ledger.sink import limiter as ledger_limiter
from meshha.ledger.store import Ledger
from meshha.raft.journal import JournalError
from meshha.raft.pysyncobj_log import PysyncobjLog, RaftLogConfig
from meshha.recovery.executor import Drivers
from meshha.recovery.ports import VmEvent

log = structlog.get_logger("meshha.agent")
LIBVIRT_DAEMONS = ("libvirtd", "virtqemud")  # monolithic, modular (QEMU driver)


@dataclass(frozen=True)
class Options:
    control_path: Path
    dry_run: bool
    libvirt_uri: str | None
    data_dir: Path


def read_secret(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes().strip()
    except OSError as err:
        raise ConfigError(f"{what} file {path}: {err.strerror}", where=str(path)) from None
    if not data:
        raise ConfigError(f"{what} file {path} is empty", where=str(path))
    return data


def libvirt_daemon_names(procs: Processes, run_dir: Path = Path("/run/libvirt")) -> Processes:
    """On a host with modular libvirt daemons (virtqemud's socket exists), watch virtqemud
    where the config says libvirtd (the default), so the shipped config works on both."""
    if "libvirtd" not in procs.names or not (run_dir / "virtqemud-sock").exists():
        return procs
    names = tuple(dict.fromkeys("virtqemud" if n == "libvirtd" else n for n in procs.names))
    log.info("libvirt_modular", watching="virtqemud", instead_of="libvirtd")
    return dataclasses.replace(procs, names=names)


def raft_config(segment: Segment, me: str, password: bytes, data_dir: Path) -> RaftLogConfig:
    """The Raft member's settings from the segment's timings (election timeout `e`).

    Heartbeats every 0.1 e: 4 per shortest election timeout (0.4 e), so a follower
    stands only after 4 heartbeats in a row were lost or late; more often buys no faster
    failover (that is the election timeout) and costs every member a wakeup, a Fernet
    decrypt and an answer per heartbeat. Non-voting members connect from their admin
    address, and the voters trust those addresses (exempt from the port's accept rate).
    """
    e = segment.timings.election_timeout_s
    voters = {v: f"{segment.host(v).address('admin')}:{segment.raft.port}" for v in segment.voters}
    bind = segment.host(me).address("admin")
    non_voters = {a for h in segment.hosts if h.name not in voters if (a := h.address("admin"))}
    return RaftLogConfig(
        me=me if me in voters else f"{bind}:{segment.raft.port}",
        voters=voters,
        password=password,
        data_dir=data_dir,
        bind_address=f"{bind}:{segment.raft.port}" if me in voters else None,
        source_ip=None if me in voters else bind,
        trusted_ips=frozenset(non_voters),
        election_timeout_min_s=0.4 * e,
        election_timeout_max_s=ELECTION_TIMEOUT_MAX_FACTOR * e,
        heartbeat_interval_s=0.1 * e,
        leader_fallback_timeout_s=max(1.5 * e, 1.0),
        connection_timeout_s=max(3.5, ELECTION_TIMEOUT_MAX_FACTOR * e),
    )


def writable_data_dir(data_dir: Path) -> None:
    """Create the data dir (journal, ledger) and make sure files can be written in it,
    or raise JournalError naming the path and the errno: at start, a data dir on a
    read-only or full file system is a start-up error (exit 2), not a traceback from
    whichever of the ledger or the journal opens first."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with tempfile.TemporaryFile(dir=data_dir):
            pass
    except OSError as e:
        where = Path(e.filename) if e.filename else data_dir
        raise JournalError.from_os(e, where, "write in the directory of") from None


def real_drivers(segment: Segment) -> Drivers | None:
    """The leader's hands. None (dry run: intents are committed and logged, not acted on)
    when Nova is not configured."""
    if segment.nova.cloud is None:
        log.warning("dry_run", why="no [nova] cloud configured: intents are logged, not executed")
        return None
    from meshha.recovery.alerts import AlertSender
    from meshha.recovery.evacuation import LimitSettings
    from meshha.recovery.fence_ipmi import IpmiFencer
    from meshha.recovery.nova import NovaDriver

    bmcs = {h.name: h.bmc for h in segment.hosts if h.bmc is not None}
    return Drivers(
        fence=IpmiFencer(bmcs),
        # Each evacuation is polled every 0.5 s, not 0.2: with 10 in flight, faster polling
        # slowed Nova itself (bench/recovery_steps.py: 50 servers 93 s at 0.2 s, 42.5 s at 1 s).
        nova=NovaDriver(
            segment.nova.cloud,
            microversion=segment.nova.microversion,
            timeout_s=segment.nova.timeout_s,
            poll_interval_s=0.25,  # one small listing per poll, whatever the number moving
            limits=LimitSettings(
                initial_limit=min(2, segment.recovery.max_parallel_evacuations),
                min_limit=min(3, segment.recovery.max_parallel_evacuations),
                max_limit=segment.recovery.max_parallel_evacuations,
            ),
        ),
        alerts=AlertSender(segment.alerts),
    )


def nova_connector(segment: Segment) -> Callable[[], Any]:
    """An openstacksdk connection to the segment's cloud (made in a worker thread)."""
    cloud = segment.nova.cloud

    def connect() -> Any:
        import openstack

        return openstack.connect(cloud=cloud, api_timeout=segment.nova.timeout_s)

    return connect


def leaves(group: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, so a message names the cause."""
    if isinstance(group, BaseExceptionGroup):
        return [leaf for e in group.exceptions for leaf in leaves(e)]
    return [group]


class _StartedOnce:
    """A task status that may be reported started by the task or, after it failed, by us."""

    def __init__(self, status: trio.TaskStatus[None]) -> None:
        self.status, self.done = status, False

    def started(self, value: None = None) -> None:
        if not self.done:
            self.done = True
            self.status.started(value)


async def run_raft(
    raft: PysyncobjLog,
    persist: PersistWatch,
    data_dir: Path,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The Raft member; if it stops on a disk error, the agent stays up without it (not
    voting, says so: meshha.agent.persist) instead of going silent and being fenced."""
    status = _StartedOnce(task_status)
    problem: Problem | None = None
    try:
        await raft.run(task_status=status)  # type: ignore[arg-type]
    except* (OSError, MeshhaError) as group:
        problems = [problem_of("journal", e, str(data_dir)) for e in leaves(group)]
        if any(p is None for p in problems):
            raise
        problem = problems[0]
    if problem is not None:
        persist.crashed["journal"] = problem
        log.error("raft_member_stopped", error=problem.error, path=problem.path)
    status.started()
    await trio.sleep_forever()


def persist_sources(raft: Any, sink: LedgerSink, data_dir: Path) -> dict[str, Any]:
    def journal() -> Problem | None:
        err = getattr(raft, "persist_error", None)  # a frozen member (durable journal)
        return problem_of("journal", err, str(data_dir)) if err is not None else None

    def ledger() -> Problem | None:
        err = getattr(sink, "error", None)
        return problem_of("ledger", err, str(sink.ledger.path)) if err is not None else None

    return {"journal": journal, "ledger": ledger}


async def run_agent(
    segment: Segment,
    me: str,
    opts: Options,
    task_status: trio.TaskStatus[dict[str, Any]] = trio.TASK_STATUS_IGNORED,
) -> None:
    unlocked = lock_memory()  # a page fault on the probe path is a stall (memlock.py)
    if unlocked is not None:
        log.warning("memory_not_locked", why=unlocked)
    key = read_secret(segment.probe_key_file, "probe key")
    password = read_secret(segment.raft.password_file, "raft password")
    data_dir = opts.data_dir / me
    writable_data_dir(data_dir)
    raft = PysyncobjLog(raft_config(segment, me, password, data_dir))
    ledger = Ledger(data_dir / "ledger.sqlite")
    transport = UdpTransport(segment, me, key, now=time.time)
    transport.bind()
    meters = metrics.Metrics()
    metrics_addr = metrics.listen_address(segment, me)
    limiter = ledger_limiter()  # every SQLite call runs in a thread under this one
    sink = LedgerSink(ledger, limiter, on_entry=meters.on_entry)
    log_port = metrics.MeteredLog(raft, meters)
    probe_port = metrics.MeteredTransport(transport, meters)
    drivers = None if opts.dry_run else real_drivers(segment)
    hypervisor = monitor = vm_events = vm_send = processes = watchdog = None
    process_names: tuple[str, ...] | None = None
    uri = opts.libvirt_uri or segment.host(me).hypervisor_uri
    if uri and not opts.dry_run:
        from meshha.probes.libvirt_events import LibvirtEventMonitor, LibvirtHypervisor

        hypervisor = LibvirtHypervisor(uri)
        monitor = LibvirtEventMonitor(uri)
        vm_send, vm_events = trio.open_memory_channel[VmEvent](256)
    if segment.processes.names and not opts.dry_run:
        from meshha.probes.processes import (
            NOVA_SERVICE_GRACE_S,
            ProcessChecker,
            libvirt_probe,
            nova_service_probe,
        )

        procs = libvirt_daemon_names(segment.processes)
        # Monolithic libvirtd or modular virtqemud: whichever is watched gets the probe.
        daemons = [n for n in LIBVIRT_DAEMONS if n in procs.names]
        health = {n: libvirt_probe(uri) for n in daemons} if uri else {}
        if drivers is not None:  # a hung nova-compute: Nova says its service is down
            health["nova-compute"] = nova_service_probe(drivers.nova, me)
        processes = ProcessChecker(
            procs, health=health, health_grace_s={"nova-compute": NOVA_SERVICE_GRACE_S}
        )
        process_names = procs.names
    declared = segment.host(me).watchdog
    if declared is not None and not opts.dry_run:
        from meshha.agent.watchdog import open_watchdog

        watchdog = open_watchdog(declared.device)  # missing: exit 2, the config promised one
    notifier = SdNotifier.from_env()
    alerts = None
    if segment.alerts.webhooks or segment.alerts.smtp:
        from meshha.recovery.alerts import AlertSender

        alerts = AlertSender(segment.alerts)
    persist = PersistWatch(segment.name, me, alerts)
    node = Node(
        segment,
        me,
        NodePorts(
            log=log_port,
            transport=probe_port,
            ledger=sink,
            now=transport.segment_now,  # commit segment time, not this host's wall clock
            drivers=drivers,
            hypervisor=hypervisor,
            vm_events=vm_events,
            processes=processes,
            process_names=process_names,
            watchdog=watchdog,
            notifier=notifier,
            clock=transport,
            kernel=transport,
            alive=AliveMark(data_dir),
        ),
        seed=secrets.randbits(32),  # fresh probe challenges every run (meshha.probes.wire)
    )
    restored, rows = await trio.to_thread.run_sync(
        lambda: (node.restore(ledger.entries()), ledger.count()), limiter=limiter
    )
    transport.deliver = probe_port.delivering(node.on_datagram)
    handler = ControlHandler(
        segment,
        node,
        log_port,
        LedgerReader(ledger, limiter),
        transport.segment_now,
        transport,
        sink=sink,
        nova=drivers.nova if drivers is not None else None,
        metrics_url=metrics.url(metrics_addr),
        persist=persist,
    )
    meters.registry.register(
        metrics.StateCollector(node, raft, transport, sink, ledger.path, rows)  # type: ignore[arg-type]
    )
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(sink.run)
            await nursery.start(run_raft, raft, persist, data_dir)
            await nursery.start(
                partial(persist.run, checks={"ledger": sink.ledger.path}),
                persist_sources(raft, sink, data_dir),
            )
            await nursery.start(transport.run)
            if monitor is not None:
                await nursery.start(monitor.run, vm_send)
            await nursery.start(node.run)
            await nursery.start(control.serve, opts.control_path, handler)
            if metrics_addr is not None:
                await nursery.start(metrics.serve, metrics_addr, meters.page)
            log.info(
                "agent_started",
                host=me,
                segment=segment.name,
                voter=me in segment.voters,
                restored_from_ledger=restored,
                control=str(opts.control_path),
                dry_run=drivers is None,
                metrics=metrics.url(metrics_addr),
                hypervisor=uri,
                watchdog=str(declared.device) if watchdog is not None and declared else None,
            )
            if drivers is not None and segment.nova.cloud is not None:
                nursery.start_soon(check_nova, nova_connector(segment), me)
            if notifier is not None:
                notifier.ready()
            task_status.started({"node": node, "raft": raft, "ledger": ledger})
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for sig in signals:
                    log.info("agent_stopping", signal=signal.Signals(sig).name)
                    node.keepalive.clean_stop()
                    nursery.cancel_scope.cancel()
                    break
    finally:
        ledger.close()


@click.command()
@click.option(
    "--config", "config_path", required=True, type=click.Path(dir_okay=False, path_type=Path)
)
@click.option(
    "--host", "me", required=True, help="This host's name in the segment (its nova-compute host)."
)
@click.option(
    "--control",
    "control_path",
    type=click.Path(path_type=Path),
    default=control.DEFAULT_PATH,
    show_default=True,
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Override [raft] data_dir (journal, ledger).",
)
@click.option(
    "--libvirt-uri",
    default=None,
    help="Override [hypervisor] uri (a lab host's private libvirtd); not needed otherwise.",
)
@click.option("--dry-run", is_flag=True, help="Decide and log, never act.")
@click.option(
    "--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"])
)
def main(
    config_path: Path,
    me: str,
    control_path: Path,
    data_dir: Path | None,
    libvirt_uri: str | None,
    dry_run: bool,
    log_level: str,
) -> None:
    """The meshha agent for one compute host."""
    logs.configure(json=True, level=getattr(logging, log_level.upper()))
    try:
        segment = load_segment(config_path)
        if me not in segment.host_names:
            raise ConfigError(
                f"host {me!r} is not in segment {segment.name} ({', '.join(segment.host_names)})",
                where=str(config_path),
            )
    except ConfigError as err:
        click.echo(f"meshha-agent: {err}", err=True)
        sys.exit(2)
    opts = Options(control_path, dry_run, libvirt_uri, data_dir or segment.raft.data_dir)
    try:
        trio.run(run_agent, segment, me, opts)
    except* (OSError, MeshhaError) as group:
        for e in leaves(group):
            click.echo(f"meshha-agent: {type(e).__name__}: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
