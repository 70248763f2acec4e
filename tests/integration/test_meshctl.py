"""meshctl through its real click entry point against three real agents on loopback
(pysyncobj, UDP probes, SQLite ledgers, control sockets, the metrics endpoint): status
(text and JSON with metrics_url), maintenance on/off, events with every filter (`--since
1h` used to fail with "since must be a number"), paged CSV/JSON export with ISO times,
brake release, capacity, the report (text, JSON, HTML), and a Prometheus scrape over HTTP.

Plus the same CLI against an in-process agent handler on a seeded ledger, for what dry-run
agents never write (results with their host and VM)."""

from __future__ import annotations

import csv
import json
import random
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import trio
from click.testing import CliRunner
from raft_harness import free_port

from meshha.agent.control import serve
from meshha.agent.node import NodeStats
from meshha.agent.service import ControlHandler
from meshha.cli import main
from meshha.config.load import load_segment
from meshha.lab.mesh import Mesh
from meshha.lab.segment_files import write_segment
from meshha.ledger.sink import LedgerReader, limiter
from meshha.ledger.store import Ledger
from meshha.raft import entries as E

HOSTS = ("host1", "host2", "host3")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Any:
    wd = tmp_path_factory.mktemp("meshctl")
    seed = random.randrange(10**9)
    probe = Mesh(wd / "probe", HOSTS, reserved=["host3"], seed=seed)  # the same addresses
    port = free_port([probe.addrs[h]["admin"] for h in HOSTS])
    m = Mesh(
        wd / "mesh",
        HOSTS,
        reserved=["host3"],
        extra_toml=f'[metrics]\nlisten = "admin:{port}"\n',
        seed=seed,
    )
    m.metrics_port = port  # type: ignore[attr-defined]
    try:
        m.start(timeout_s=40)
        yield m
    finally:
        m.close()


def ctl(mesh: Mesh, host: str, *args: str) -> Any:
    return CliRunner().invoke(main, list(args), env={"MESHHA_CONTROL": str(mesh.control(host))})


def ok(res: Any) -> str:
    assert res.exit_code == 0, res.output
    return str(res.stdout)


@pytest.mark.integration
def test_status_text_and_json(mesh: Mesh) -> None:
    leader = mesh.wait_leader(20)
    out = ok(ctl(mesh, "host2", "status"))
    assert f"leader {leader}" in out
    lines = out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("host "))
    table = lines[head : head + 4]
    # aligned: every column starts where its header does
    col = table[0].index("verdict")
    assert all(r[col - 2 : col] == "  " and r[col] != " " for r in table[1:])
    port = mesh.metrics_port  # type: ignore[attr-defined]
    assert f"metrics: http://{mesh.addrs['host2']['admin']}:{port}/metrics" in out
    st = json.loads(ok(ctl(mesh, "host2", "status", "--json")))
    assert st["metrics_url"] == f"http://{mesh.addrs['host2']['admin']}:{port}/metrics"
    assert st["errors"]["counts"] == {} and st["errors"]["ledger"]["backlog"] < 100
    assert {h["name"]: h["verdict"] for h in st["hosts"]} == dict.fromkeys(HOSTS, "healthy")


@pytest.mark.integration
def test_maintenance_on_off_then_events_with_filters(mesh: Mesh) -> None:
    mesh.wait_leader(20)
    out = ok(ctl(mesh, "host1", "maintenance", "on", "host2", "--reason", "bios update"))
    assert "maintenance on host2: committed at index" in out
    mesh.wait_until(lambda: mesh.verdict("host3", "host2") == "maintenance", 10, "seen")
    st = ok(ctl(mesh, "host3", "status"))
    assert "host2: maintenance by" in st and "bios update" in st
    ok(ctl(mesh, "host3", "maintenance", "off", "host2"))
    mesh.wait_until(lambda: mesh.verdict("host1", "host2") == "healthy", 10, "back")

    for args in (("--since", "1h"), ("--since", "2030-01-01T00:00"), ()):
        res = ctl(mesh, "host1", "events", *args)
        assert res.exit_code == 0, res.output  # was: "since must be a number, not {...}"
    out = ok(
        ctl(mesh, "host1", "events", "--type", "maintenance", "--host", "host2", "--since", "1h")
    )
    rows = [line for line in out.splitlines() if " maintenance " in line]
    assert len(rows) == 2 and "bios update" in rows[0] and " ago " in rows[0]
    assert "no events match" in ok(ctl(mesh, "host1", "events", "--since", "2030-01-01"))
    assert "no events match" in ok(ctl(mesh, "host1", "events", "--host", "nohost"))
    lines = ok(ctl(mesh, "host1", "events", "--type", "maintenance", "--json")).splitlines()
    got = [json.loads(x) for x in lines]
    assert [e["entry"]["on"] for e in got][-2:] == [True, False]
    assert all(e["ts_iso"].endswith("Z") for e in got)
    bad = ctl(mesh, "host1", "events", "--since", "yesterday")
    assert bad.exit_code != 0 and "ISO time" in bad.output


@pytest.mark.integration
def test_export_paged_csv_and_json_with_iso_times(mesh: Mesh, tmp_path: Path) -> None:
    mesh.wait_leader(20)
    out = tmp_path / "events.csv"
    res = ctl(mesh, "host2", "export", "--format", "csv", "--out", str(out), "--page-size", "3")
    ok(res)
    rows = list(csv.DictReader(out.open()))
    assert len(rows) >= 4 and [int(r["idx"]) for r in rows] == sorted(int(r["idx"]) for r in rows)
    assert all(r["ts_iso"].endswith("Z") and float(r["ts"]) > 0 for r in rows)
    assert f"{len(rows)} events exported to {out}" in res.stderr
    assert f"/{len(rows)} events" in res.stderr  # progress, page by page
    res = ctl(mesh, "host2", "export", "--type", "maintenance", "--page-size", "1")
    data = json.loads(ok(res))
    assert [r["entry"]["on"] for r in data][-2:] == [True, False]


@pytest.mark.integration
def test_brake_release_capacity_and_report(mesh: Mesh, tmp_path: Path) -> None:
    mesh.wait_leader(20)
    out = ok(ctl(mesh, "host3", "brake", "release"))
    assert "brake released: committed at index" in out
    res = ctl(mesh, "host1", "capacity")
    assert res.exit_code == 1 and "N+1: not known: no Nova configured" in res.output
    page = tmp_path / "report.html"
    res = ctl(mesh, "host1", "report", "--since", "1h", "--html", str(page))
    text = ok(res)
    assert text.startswith("meshha report: segment") and "N+k: not known" in text
    assert "Maintenance windows" in text and "host2" in text and "bios update" in text
    html = page.read_text()
    assert "<svg" in html and "bios update" in html
    data = json.loads(ok(ctl(mesh, "host1", "report", "--since", "1h", "--json")))
    (w,) = [w for w in data["maintenance"] if w["reason"] == "bios update"]
    assert w["host"] == "host2" and w["end"] > w["start"]


@pytest.mark.integration
def test_metrics_scrape_over_http(mesh: Mesh) -> None:
    leader = mesh.wait_leader(20)
    url = json.loads(ok(ctl(mesh, leader, "status", "--json")))["metrics_url"]

    def scrape() -> str:
        with urllib.request.urlopen(url, timeout=5) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
            return str(r.read().decode())

    def has_rtt() -> str | None:
        page = scrape()
        return page if 'meshha_probe_rtt_seconds_count{network="storage"}' in page else None

    page = mesh.wait_until(has_rtt, 10, "probe RTTs measured")
    assert 'meshha_host_verdict{host="host1",verdict="healthy"} 1.0' in page
    assert (
        "meshha_raft_is_leader 1.0" in page
        and f'meshha_raft_leader{{leader="{leader}"}} 1.0' in page
    )
    for name in (
        "meshha_raft_term",
        "meshha_raft_commit_index",
        "meshha_raft_commit_latency_seconds_bucket",
        "meshha_ledger_rows",
        "meshha_ledger_bytes",
        "meshha_probe_drops_total",
        "meshha_intents_total",
        "meshha_alerts_total",
        "meshha_fence_duration_seconds_count",
        "meshha_evacuation_duration_seconds_count",
        "meshha_vm_downtime_seconds",
    ):
        assert name in page, name
    rows = next(
        float(x.split()[1]) for x in page.splitlines() if x.startswith("meshha_ledger_rows")
    )
    assert rows >= 4
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url.replace("/metrics", "/nope"), timeout=5)
    assert e.value.code == 404


@pytest.mark.integration
def test_agent_not_running_is_a_clear_error(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["status", "--control", str(tmp_path / "none.sock")])
    assert res.exit_code == 1 and "is meshha-agent running" in res.output


# -- the CLI against an in-process handler on a seeded ledger ---------------------------


class _Log:
    leader, term, is_leader, has_quorum, commit_index = "host1", 3, True, True, 0


SEEDED = [
    (1, E.vm_failure(ts=1000.0, by="host1", host="host1", vm="vm-a", event="crashed", detail="")),
    (
        2,
        E.intent(
            ts=1001.0,
            by="host1",
            intent_id="restart_vm:vm-a:1000000:a1",
            action="restart_vm",
            host="host1",
            vm="vm-a",
            reason="crashed",
        ),
    ),
    (
        3,
        {
            **E.result(
                ts=1031.0,
                by="host1",
                intent_id="restart_vm:vm-a:1000000:a1",
                outcome="ok",
                detail="vm-a stopped and started on host1",
            ),
            "host": "host1",
            "vm": "vm-a",
            "action": "restart_vm",
        },
    ),
]


async def test_vm_filter_keeps_outcomes_and_report_counts_them(tmp_path: Path) -> None:
    cfg = write_segment(
        tmp_path,
        [(h, {"admin": f"127.0.9.{i}"}) for i, h in enumerate(HOSTS, 1)],
        networks={"admin": "alert"},
    )
    segment = load_segment(cfg)
    led = Ledger(tmp_path / "ledger.sqlite")
    led.append_many(SEEDED)
    node = SimpleNamespace(
        me="host1", state=SimpleNamespace(index=3), stats=NodeStats(), isolated=False
    )
    handler = ControlHandler(
        segment,
        node,
        _Log(),
        LedgerReader(led, limiter()),
        lambda: 2000.0,  # type: ignore[arg-type]
    )
    sock = Path("/tmp") / f"mhcli-{random.randrange(10**9)}.sock"

    def run(*args: str) -> Any:
        return CliRunner().invoke(main, [args[0], "--control", str(sock), *args[1:]])

    async with trio.open_nursery() as nursery:
        await nursery.start(serve, sock, handler)
        res = await trio.to_thread.run_sync(run, "events", "--vm", "vm-a", "--json")
        kinds = [json.loads(x)["kind"] for x in ok(res).splitlines()]
        assert kinds == ["vm_failure", "intent", "result"]
        res = await trio.to_thread.run_sync(run, "events", "--vm", "vm-a", "--type", "result")
        assert "host1 vm-a restart_vm ok" in ok(res)
        res = await trio.to_thread.run_sync(run, "report", "--since", "1970-01-01T00:00:00Z")
        text = ok(res)
        assert "vm-a" in text and "31.0 s" in text and "restart_vm:vm-a:1000000:a1" in text
        nursery.cancel_scope.cancel()
    led.close()
    assert not sock.exists()


def test_offline_report_from_a_ledger_file(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with Ledger(path) as led:
        led.append_many(SEEDED)
    res = CliRunner().invoke(main, ["report", "--ledger", str(path), "--segment", "lab"])
    text = ok(res)
    assert "segment lab" in text and "vm-a" in text and "31.0 s" in text
    assert "1 ledger entries" not in text
    res = CliRunner().invoke(main, ["report", "--ledger", str(path), "--json"])
    assert json.loads(ok(res))["vms"][0]["downtime_s"] == 31.0
