"""The metrics: series derived from committed entries (checked on the report's ledger with
known outages), the probe RTT and commit latency wrappers, the trio HTTP endpoint, the
`[metrics] listen` setting, and the shipped alerting rules naming only exported series."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trio
import yaml

from meshha.agent import metrics as M
from meshha.config.synthetic import synthetic_segment
from meshha.errors import LogError
from tests.unit.test_report import LEDGER

RULES = Path(__file__).resolve().parents[2] / "config" / "prometheus-rules.yml"


def value(page: str, series: str) -> float:
    for line in page.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{series} not in page")


def test_series_from_committed_entries() -> None:
    m = M.Metrics()
    for i, e in enumerate(LEDGER, 1):
        m.on_entry(i, e)
    page = m.page().decode()
    assert value(page, 'meshha_intents_total{action="restart_vm",outcome="ok"}') == 2
    assert value(page, 'meshha_intents_total{action="restart_vm",outcome="failed"}') == 1
    assert value(page, 'meshha_intents_total{action="evacuate",outcome="ok"}') == 2
    assert value(page, "meshha_fence_duration_seconds_sum") == pytest.approx(3.0)
    assert value(page, "meshha_evacuation_duration_seconds_sum") == pytest.approx(23 + 83)
    # the report's outages: vm 30 + 60 s, host 30 + 90 s (vm-e is still down)
    assert value(page, 'meshha_vm_downtime_seconds_sum{class="vm"}') == pytest.approx(90.0)
    assert value(page, 'meshha_vm_downtime_seconds_count{class="host"}') == 2
    assert value(page, 'meshha_vm_downtime_seconds_sum{class="host"}') == pytest.approx(120.0)


def test_alert_results_and_compaction_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from meshha.raft import entries as E

    monkeypatch.setattr(M, "COMPACT_EVERY", 10)
    m = M.Metrics()
    for n in range(100):
        iid = f"alert:x:{n}:a1"
        m.on_entry(
            2 * n, E.intent(ts=n, by="h", intent_id=iid, action="alert", host="h1", reason="r")
        )
        outcome = "ok" if n % 4 else "failed"
        m.on_entry(2 * n + 1, E.result(ts=n, by="h", intent_id=iid, outcome=outcome, detail=""))
    page = m.page().decode()
    assert value(page, 'meshha_alerts_total{outcome="sent"}') == 75
    assert value(page, 'meshha_alerts_total{outcome="failed"}') == 25
    assert len(m._outages.intents) <= 10


async def test_probe_rtt_and_commit_latency_wrappers() -> None:
    m = M.Metrics()
    sent: list[tuple[str, str, dict]] = []
    got: list[dict] = []

    class Wire:
        def send(self, network: str, to: str, msg: dict) -> None:
            sent.append((network, to, msg))

    t = M.MeteredTransport(Wire(), m)
    deliver = t.delivering(lambda net, sender, msg: got.append(msg))
    t.send("storage", "host2", {"t": "ping", "id": 7})
    deliver("storage", "host2", {"t": "ack", "id": 7})
    deliver("storage", "host3", {"t": "ack", "id": 7, "via": "host3"})  # relayed: not a RTT
    assert len(sent) == 1 and len(got) == 2
    page = m.page().decode()
    assert value(page, 'meshha_probe_rtt_seconds_count{network="storage"}') == 1

    class Log:
        leader, term, is_leader, has_quorum, commit_index = "h1", 2, True, True, 9
        fail = False

        async def propose(self, entry: dict, *, timeout_s: float) -> int:
            if self.fail:
                raise LogError("no", kind="no_quorum")
            return 10

    inner = Log()
    log = M.MeteredLog(inner, m)
    assert await log.propose({"kind": "x"}, timeout_s=1) == 10
    inner.fail = True
    with pytest.raises(LogError):
        await log.propose({"kind": "x"}, timeout_s=1)
    assert (log.leader, log.term, log.commit_index) == ("h1", 2, 9)
    page = m.page().decode()
    assert value(page, "meshha_raft_commit_latency_seconds_count") == 1
    assert value(page, 'meshha_raft_propose_failures_total{kind="no_quorum"}') == 1


async def _http(port: int, request: bytes) -> bytes:
    s = await trio.open_tcp_stream("127.0.0.1", port)
    async with s:
        await s.send_all(request)
        out = b""
        while data := await s.receive_some(65536):
            out += data
        return out


async def test_http_endpoint_in_a_nursery() -> None:
    m = M.Metrics()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(M.serve, ("127.0.0.1", 0), m.page)
            port = listeners[0].socket.getsockname()[1]
            ok = await _http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert ok.startswith(b"HTTP/1.1 200 OK") and b"meshha_raft_commit_latency" in ok
            head = await _http(port, b"HEAD /metrics HTTP/1.0\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")
            assert (await _http(port, b"GET /x HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.1 404")
            assert (await _http(port, b"POST / HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.1 405")
            big = await _http(port, b"GET /" + b"a" * 10_000)
            assert big.startswith(b"HTTP/1.1 431")
            nursery.cancel_scope.cancel()


def test_listen_setting() -> None:
    from dataclasses import replace

    from meshha.config.model import Metrics

    seg = synthetic_segment(3)
    assert M.listen_address(seg, "host1") is None  # off by default
    on = replace(seg, metrics=Metrics("admin:9464"))
    addr = M.listen_address(on, "host2")
    assert addr == (seg.host("host2").address("admin"), 9464)
    assert M.url(addr) == f"http://{addr[0]}:9464/metrics"
    assert M.listen_address(replace(seg, metrics=Metrics("127.0.0.1:1")), "host1") == (
        "127.0.0.1",
        1,
    )


def test_rules_name_only_exported_series(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from meshha.agent.node import NodeStats
    from meshha.raft.state import SegmentState

    seg = synthetic_segment(3)
    node = SimpleNamespace(state=SegmentState(seg), isolated=False, stats=NodeStats())
    node.stats.errors["propose/no_quorum"] = 2
    log = SimpleNamespace(leader="host1", term=3, is_leader=True, has_quorum=True, commit_index=5)
    transport = SimpleNamespace(drops=lambda: {"admin": {"bad_mac": 4}})
    sink = SimpleNamespace(written=3, backlog=[])
    m = M.Metrics()
    m.registry.register(M.StateCollector(node, log, transport, sink, tmp_path / "l.db", 10))
    page = m.page().decode()
    assert value(page, 'meshha_probe_drops_total{network="admin",reason="bad_mac"}') == 4
    assert value(page, 'meshha_node_errors_total{kind="no_quorum",what="propose"}') == 2
    assert value(page, "meshha_ledger_rows") == 13
    assert value(page, 'meshha_host_verdict{host="host2",verdict="healthy"}') == 1
    exported = {f.name for f in m.registry.collect()}
    rules = yaml.safe_load(RULES.read_text())["groups"][0]["rules"]
    for r in rules:
        assert {"alert", "expr", "labels", "annotations"} <= r.keys(), r
        for n in re.findall(r"\b(meshha_\w+)", r["expr"]):
            assert re.sub(r"_(bucket|count|sum|total)$", "", n) in exported, (r["alert"], n)
