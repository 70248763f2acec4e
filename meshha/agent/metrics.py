"""Prometheus metrics of one agent, served over HTTP inside the agent's nursery.

Off by default (`[metrics] listen` unset): the agent runs as root on every compute host,
the page names hosts and is unauthenticated, and no one port is free on every compute
host (nor on a lab machine running five agents). `listen = "admin:9464"` serves on this
host's address on the named network (one segment file for all hosts), or give an IP.

What is exported (`meshha_` prefix). Segment-wide series come from the committed log,
which every replica holds, so every agent reports the same values: aggregate with
`max by (...)` across agents, not `sum`.

- state, read at scrape time: `host_verdict{host,verdict}` (1 for the current one),
  `raft_term`, `raft_commit_index`, `raft_is_leader`, `raft_has_quorum`,
  `raft_leader{leader}`, `applied_index`, `isolated`, `brake_on`, `ledger_rows`,
  `ledger_bytes`, `ledger_backlog`, `probe_drops_total{network,reason}`,
  `node_errors_total{what,kind}` (failed proposals and result commits);
- measured here: `raft_commit_latency_seconds` (propose → committed, this agent's own
  proposals), `raft_propose_failures_total{kind}`, `probe_rtt_seconds{network}` (ping →
  direct ack);
- from committed entries: `intents_total{action,outcome}` (results), `alerts_total{outcome}`
  (sent | failed), `fence_duration_seconds` and `evacuation_duration_seconds` (intent →
  ok result), `vm_downtime_seconds{class}` (detected → running again, as `meshctl report`
  counts it: meshha.ledger.report).

The HTTP server is a few lines of trio (GET /metrics, anything else 404), bounded in
connections, request size and time; prometheus_client only formats the page
(`generate_latest`), its own threaded server is not used.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import structlog
import trio
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from meshha.config.model import Segment
from meshha.errors import ConfigError, MeshhaError
from meshha.ledger.report import Outage, ReportBuilder

log = structlog.get_logger("meshha.metrics")

MAX_CONNECTIONS = 4
MAX_REQUEST_B = 8192
REQUEST_TIMEOUT_S = 5.0
MAX_PINGS_TRACKED = 4096
MAX_OPEN_INTENTS = 10_000
COMPACT_EVERY = 1000  # entries


def listen_address(segment: Segment, me: str) -> tuple[str, int] | None:
    """(address, port) to serve on, or None (off). `[metrics] listen` is "NET:PORT"
    (this host's address on network NET) or "IP:PORT" / "[IPv6]:PORT"."""
    spec = segment.metrics.listen
    if not spec:
        return None
    where, _, port = spec.rpartition(":")
    where = where.strip("[]")
    if where in {n.name for n in segment.networks}:
        addr = segment.host(me).address(where)
        if addr is None:
            raise ConfigError(f"metrics.listen: {me} has no address on {where}")
        where = addr
    return where, int(port)


def url(addr: tuple[str, int] | None) -> str | None:
    if addr is None:
        return None
    host = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
    return f"http://{host}:{addr[1]}/metrics"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.commit_latency = Histogram(
            "meshha_raft_commit_latency_seconds",
            "Time from proposing an entry to its commit (this agent's proposals)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.propose_failures = Counter(
            "meshha_raft_propose_failures",
            "Proposals that did not commit, by error kind",
            ["kind"],
            registry=r,
        )
        self.probe_rtt = Histogram(
            "meshha_probe_rtt_seconds",
            "Probe round trip (ping to direct ack) per network",
            ["network"],
            buckets=(0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
            registry=r,
        )
        self.intents = Counter(
            "meshha_intents",
            "Recovery intents by action and outcome (results committed to the log)",
            ["action", "outcome"],
            registry=r,
        )
        self.alerts = Counter(
            "meshha_alerts",
            "Alerts sent and failed (alert intents' results)",
            ["outcome"],
            registry=r,
        )
        self.fence_s = Histogram(
            "meshha_fence_duration_seconds",
            "Fence intent to its ok result",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.evacuation_s = Histogram(
            "meshha_evacuation_duration_seconds",
            "Evacuate intent to its ok result (the VM ACTIVE elsewhere)",
            buckets=(1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=r,
        )
        self.downtime_s = Histogram(
            "meshha_vm_downtime_seconds",
            "VM outages, detected to running again, by failure class",
            ["class"],
            buckets=(1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
            registry=r,
        )
        self._outages = ReportBuilder(on_outage_end=self._outage_over)
        self._seen = 0
        self._pings: OrderedDict[tuple[str, int], float] = OrderedDict()

    # -- fed by the ledger sink, in log order -------------------------------------------

    def on_entry(self, index: int, entry: dict[str, Any]) -> None:
        if entry.get("kind") == "result":
            self._result(entry)
        self._outages.feed(entry)
        self._seen += 1
        if self._seen % COMPACT_EVERY == 0:
            self._outages.compact(MAX_OPEN_INTENTS)

    def _result(self, e: dict[str, Any]) -> None:
        intent = self._outages.intents.get(str(e.get("intent")))
        action = e.get("action") or (intent or {}).get("action") or "unknown"
        outcome = str(e.get("outcome"))
        self.intents.labels(action, outcome).inc()
        if action == "alert":
            self.alerts.labels("sent" if outcome == "ok" else "failed").inc()
        if outcome == "ok" and intent is not None and str(e["intent"]) not in self._outages.results:
            took = float(e["ts"]) - float(intent["ts"])
            if action == "fence":
                self.fence_s.observe(took)
            elif action == "evacuate":
                self.evacuation_s.observe(took)

    def _outage_over(self, o: Outage) -> None:
        assert o.end is not None
        self.downtime_s.labels(o.cls).observe(o.end - o.start)

    # -- probe round trips: the transport's sends and deliveries pass through ------------

    def ping_sent(self, network: str, msg: dict[str, Any]) -> None:
        if msg.get("t") == "ping" and isinstance(msg.get("id"), int):
            self._pings[(network, msg["id"])] = time.monotonic()
            while len(self._pings) > MAX_PINGS_TRACKED:
                self._pings.popitem(last=False)

    def datagram(self, network: str, msg: dict[str, Any]) -> None:
        if msg.get("t") == "ack" and "via" not in msg and isinstance(msg.get("id"), int):
            sent = self._pings.pop((network, msg["id"]), None)
            if sent is not None:
                self.probe_rtt.labels(network).observe(time.monotonic() - sent)

    def page(self) -> bytes:
        return generate_latest(self.registry)


class MeteredTransport:
    """The node's transport, with pings timed (the probe RTT)."""

    def __init__(self, inner: Any, metrics: Metrics) -> None:
        self.inner, self.metrics = inner, metrics

    def send(self, network: str, to: str, msg: dict[str, Any]) -> None:
        self.metrics.ping_sent(network, msg)
        self.inner.send(network, to, msg)

    def delivering(
        self, deliver: Callable[[str, str, dict[str, Any]], None]
    ) -> Callable[[str, str, dict[str, Any]], None]:
        def wrapped(network: str, sender: str, msg: dict[str, Any]) -> None:
            self.metrics.datagram(network, msg)
            deliver(network, sender, msg)

        return wrapped


class MeteredLog:
    """The log port, with commit latency and failures measured; everything else passes."""

    def __init__(self, inner: Any, metrics: Metrics) -> None:
        self.inner, self.metrics = inner, metrics

    async def propose(self, entry: dict[str, Any], *, timeout_s: float) -> int:
        start = time.monotonic()
        try:
            index: int = await self.inner.propose(entry, timeout_s=timeout_s)
        except MeshhaError as err:
            self.metrics.propose_failures.labels(err.kind).inc()
            raise
        self.metrics.commit_latency.observe(time.monotonic() - start)
        return index

    def committed_from(self, index: int) -> AsyncIterator[tuple[int, dict[str, Any]]]:
        return self.inner.committed_from(index)  # type: ignore[no-any-return]

    @property
    def leader(self) -> str | None:
        return self.inner.leader  # type: ignore[no-any-return]

    @property
    def term(self) -> int:
        return self.inner.term  # type: ignore[no-any-return]

    @property
    def is_leader(self) -> bool:
        return self.inner.is_leader  # type: ignore[no-any-return]

    @property
    def has_quorum(self) -> bool:
        return self.inner.has_quorum  # type: ignore[no-any-return]

    @property
    def commit_index(self) -> int:
        return self.inner.commit_index  # type: ignore[no-any-return]


class StateCollector:
    """Series read from the agent's live objects at each scrape (on the trio loop, so
    they never race the node)."""

    def __init__(
        self, node: Any, log: Any, transport: Any, sink: Any, ledger_path: Path, rows0: int
    ) -> None:
        self.node, self.log, self.transport, self.sink = node, log, transport, sink
        self.ledger_path, self.rows0 = ledger_path, rows0

    def describe(self) -> list[Metric]:
        return []  # unchecked collector: series appear as they exist

    def collect(self) -> Iterator[Metric]:
        st = self.node.state
        v = GaugeMetricFamily(
            "meshha_host_verdict", "1 for each host's current verdict", labels=["host", "verdict"]
        )
        for host, verdict in st.verdicts.items():
            v.add_metric([host, verdict.kind], 1)
        yield v
        for name, doc, value in (
            ("meshha_raft_term", "Raft term as this agent sees it", self.log.term),
            ("meshha_raft_commit_index", "Last committed Raft index here", self.log.commit_index),
            ("meshha_raft_is_leader", "1 if this agent leads", int(self.log.is_leader)),
            ("meshha_raft_has_quorum", "1 if a quorum is in sight", int(self.log.has_quorum)),
            ("meshha_applied_index", "Last index applied to the state here", st.index),
            ("meshha_isolated", "1 while this host self-fenced", int(self.node.isolated)),
            ("meshha_brake_on", "1 while the mass-failure brake holds", _brake_on(st)),
            ("meshha_ledger_rows", "Rows in this host's ledger", self.rows0 + self.sink.written),
            ("meshha_ledger_bytes", "Ledger file size, WAL included", self._ledger_bytes()),
            ("meshha_ledger_backlog", "Committed entries not yet written", len(self.sink.backlog)),
        ):
            yield GaugeMetricFamily(name, doc, value=value)
        leader = GaugeMetricFamily("meshha_raft_leader", "The leader in sight", labels=["leader"])
        if self.log.leader:
            leader.add_metric([self.log.leader], 1)
        yield leader
        drops = CounterMetricFamily(
            "meshha_probe_drops", "Probe datagrams dropped, by reason", labels=["network", "reason"]
        )
        for net, by in (self.transport.drops() if self.transport else {}).items():
            for reason, n in sorted(by.items()):
                drops.add_metric([net, reason], n)
        yield drops
        errs = CounterMetricFamily(
            "meshha_node_errors",
            "Operating errors the node got past (failed proposals, result commits)",
            labels=["what", "kind"],
        )
        for key, n in sorted(self.node.stats.errors.items()):
            what, _, kind = key.partition("/")
            errs.add_metric([what, kind], n)
        yield errs

    def _ledger_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.stat(f"{self.ledger_path}{suffix}").st_size
        return total


def _brake_on(state: Any) -> int:
    """The brake as a dict (schema-1 state) or as a record with `on` (typed state)."""
    b = state.brake
    return int(bool(b["on"] if isinstance(b, dict) else b.on))


# -- the HTTP endpoint ------------------------------------------------------------------


async def serve(
    addr: tuple[str, int],
    page: Callable[[], bytes],
    *,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """GET /metrics on `addr` until cancelled. Started with `nursery.start`, so a port
    in use fails the agent's start, not a scrape later."""
    limiter = trio.CapacityLimiter(MAX_CONNECTIONS)

    async def one(stream: trio.SocketStream) -> None:
        async with limiter, stream:
            try:
                with trio.fail_after(REQUEST_TIMEOUT_S):
                    await _answer(stream, page)
            except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError):
                return

    listeners = await trio.open_tcp_listeners(addr[1], host=addr[0])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, one, listeners)
        task_status.started(listeners)
        log.info("metrics_serving", url=url(addr))


async def _answer(stream: trio.SocketStream, page: Callable[[], bytes]) -> None:
    buf = b""
    while b"\r\n\r\n" not in buf and b"\n\n" not in buf:
        data = await stream.receive_some(2048)
        if not data:
            return
        buf += data
        if len(buf) > MAX_REQUEST_B:
            await stream.send_all(_response(431, b"request too large\n", "text/plain"))
            return
    method, _, rest = buf.split(b"\n", 1)[0].decode("latin-1").partition(" ")
    path = rest.split(" ", 1)[0]
    if method not in ("GET", "HEAD"):
        await stream.send_all(_response(405, b"GET only\n", "text/plain"))
    elif path.split("?", 1)[0] not in ("/metrics", "/"):
        await stream.send_all(_response(404, b"try /metrics\n", "text/plain"))
    else:
        body = page()
        await stream.send_all(
            _response(200, b"" if method == "HEAD" else body, CONTENT_TYPE_LATEST, len(body))
        )


def _response(code: int, body: bytes, ctype: str, length: int | None = None) -> bytes:
    reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 431: "Too Large"}[code]
    head = (
        f"HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body
