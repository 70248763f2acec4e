"""The ledger: idempotent replay by Raft index, queries, CSV/JSON export round-trips, and
a full disk or read-only filesystem giving a typed error with nothing half written."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import threading

import pytest

from meshha.errors import MeshhaError
from meshha.ledger.store import Ledger, LedgerError


def _entry(i: int, **kw):
    e = {
        "v": 1,
        "kind": "observation",
        "ts": 1000.0 + i,
        "by": f"host{i % 3 + 1}",
        "host": f"host{i % 4 + 1}",
        "network": "storage",
        "reachable": False,
        "since": 999.0,
    }
    e.update(kw)
    return e


ENTRIES = [(2 * i + 2, _entry(i)) for i in range(20)] + [
    (
        100,
        {
            "v": 1,
            "kind": "intent",
            "ts": 2000.0,
            "by": "host1",
            "intent": "i-1",
            "action": "evacuate",
            "host": "host2",
            "vm": "vm-a",
            "reason": "host2 failed",
            "params": {"blob": b"\x00\xff"},
        },
    ),
    (
        101,
        {
            "v": 1,
            "kind": "result",
            "ts": 2001.5,
            "by": "host1",
            "intent": "i-1",
            "outcome": "ok",
            "vm": "vm-a",
            "evidence": [["ipmi", "off", 2001.2]],
        },
    ),
]


@pytest.fixture
def ledger(tmp_path):
    with Ledger(tmp_path / "ledger.db") as led:
        led.append_many(ENTRIES)
        yield led


def test_wal_mode_and_schema(ledger):
    (mode,) = ledger._db.execute("PRAGMA journal_mode").fetchone()
    assert mode == "wal"
    indexed = {i.columns[0] for i in ledger._table.indexes}
    assert {"ts", "host", "kind"} <= indexed


def test_idempotent_replay(tmp_path, ledger):
    assert ledger.count() == len(ENTRIES)
    assert ledger.append_many(ENTRIES) == 0  # full replay after restart: nothing new
    assert ledger.append(100, ENTRIES[-2][1]) is False
    assert ledger.append(102, _entry(99)) is True
    assert ledger.last_index() == 102
    ledger.close()
    with Ledger(tmp_path / "ledger.db") as again:  # survives reopening
        assert again.append_many(ENTRIES) == 0
        assert again.count() == len(ENTRIES) + 1 and again.last_index() == 102


def test_conflicting_entry_for_a_known_index_is_refused_whole(ledger):
    with pytest.raises(LedgerError) as e:
        ledger.append_many([(103, _entry(50)), (2, _entry(7))])
    assert e.value.kind == "conflict" and str(ledger.path) in str(e.value)
    assert ledger.last_index() == 101  # 103 rolled back with the batch


def test_queries(ledger):
    assert [r["idx"] for r in ledger.query(host="host2", kind="observation")][:3] == [4, 12, 20]
    rows = ledger.query(since=1005.0, until=1008.0)
    assert [r["ts"] for r in rows] == [1005.0, 1006.0, 1007.0]
    (intent,) = ledger.query(kind="intent")
    assert intent["action"] == "evacuate" and intent["intent"] == "i-1"
    assert intent["entry"]["params"]["blob"] == "b64:AP8="
    (res,) = ledger.query(vm="vm-a", kind="result")
    assert res["evidence"] == [["ipmi", "off", 2001.2]] and res["outcome"] == "ok"
    assert res["by_host"] == "host1" and res["entry"]["ts"] == 2001.5
    latest = ledger.query(limit=2, newest_first=True)
    assert [r["idx"] for r in latest] == [101, 100]
    assert len(ledger.query(limit=5)) == 5
    assert ledger.query(host="nobody") == []


def test_export_csv_round_trip(ledger):
    out = io.StringIO()
    assert ledger.export("csv", out) == len(ENTRIES)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    stored = ledger.query(limit=1000)
    assert [int(r["idx"]) for r in rows] == [s["idx"] for s in stored]
    for r, s in zip(rows, stored, strict=True):
        assert json.loads(r["entry"]) == s["entry"]
        assert float(r["ts"]) == s["ts"] and r["kind"] == s["kind"]
        assert (r["evidence"] or None) == (
            s["evidence"] and json.dumps(s["evidence"]).replace(" ", "")
        )


def test_export_json_round_trip_with_filter(ledger):
    out = io.StringIO()
    assert ledger.export("json", out, kind="observation", since=1010.0) == 10
    rows = json.loads(out.getvalue())
    assert [r["ts_iso"] for r in rows][:2] == [
        "1970-01-01T00:16:50.000Z",
        "1970-01-01T00:16:51.000Z",
    ]
    assert [{k: v for k, v in r.items() if k != "ts_iso"} for r in rows] == ledger.query(
        kind="observation", since=1010.0
    )
    empty = io.StringIO()
    assert ledger.export("json", empty, host="nobody") == 0
    assert json.loads(empty.getvalue()) == []


def test_export_pages_through_big_ledgers(tmp_path, monkeypatch):
    monkeypatch.setattr("meshha.ledger.store.EXPORT_PAGE", 7)
    with Ledger(tmp_path / "big.db") as led:
        led.append_many((i, _entry(i)) for i in range(1, 51))
        out = io.StringIO()
        assert led.export("json", out) == 50
        assert [r["idx"] for r in json.loads(out.getvalue())] == list(range(1, 51))


def test_pages_and_counts_match_the_whole_export(ledger):
    from meshha.ledger.export import export_head, export_tail, format_page

    whole = io.StringIO()
    ledger.export("csv", whole, host="host2")
    assert ledger.count_where(host="host2") == 6  # 5 observations and the intent
    parts, after = [export_head("csv")], 0
    while page := ledger.page(after, 2, host="host2"):
        parts.append(format_page("csv", page, first=after == 0))
        after = page[-1]["idx"]
    parts.append(export_tail("csv", 6))
    assert "".join(parts) == whole.getvalue()
    header, first = whole.getvalue().splitlines()[:2]
    assert header.startswith("idx,ts,ts_iso,kind") and ",1970-01-01T00:16:41.000Z," in first


def test_concurrent_appends_from_threads(tmp_path):
    with Ledger(tmp_path / "t.db") as led:
        threads = [
            threading.Thread(
                target=lambda k=k: [led.append(i, _entry(i)) for i in range(k, 400, 4)]
            )
            for k in range(4)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert led.count() == 400


def test_disk_full_via_max_page_count(ledger):
    """SQLite reports SQLITE_FULL: typed error, nothing half written, retry succeeds."""
    (pages,) = ledger._db.execute("PRAGMA page_count").fetchone()
    ledger._db.execute(f"PRAGMA max_page_count = {pages}")
    big = [(1000 + i, _entry(i, reason="x" * 3000)) for i in range(10)]
    with pytest.raises(LedgerError) as e:
        ledger.append_many(big)
    assert e.value.kind == "disk_full" and isinstance(e.value, MeshhaError)
    assert e.value.where == str(ledger.path)
    assert ledger.last_index() == 101 and ledger.count() == len(ENTRIES)
    ledger._db.execute("PRAGMA max_page_count = 1073741823")
    assert ledger.append_many(big) == 10  # the caller kept them and retries


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")


@pytest.fixture
def tiny_fs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


@needs_root
def test_real_full_filesystem(tiny_fs):
    led = Ledger(tiny_fs / "ledger.db")
    filler = tiny_fs / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:  # leave almost nothing free
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    os.truncate(filler, filler.stat().st_size - 256 * 1024)  # room for a few appends
    i, err = 1, None
    while err is None and i < 10_000:
        try:
            led.append(i, _entry(i, reason="y" * 2000))
            i += 1
        except LedgerError as e:
            err = e
    assert err is not None and err.kind == "disk_full", err
    assert i > 2  # some appends landed before the disk filled
    assert str(tiny_fs) in str(err)
    assert led.last_index() == i - 1  # the failed one is absent, the rest intact
    filler.unlink()
    assert led.append(i, _entry(i, reason="y" * 2000)) is True
    led.close()


@needs_root
def test_read_only_filesystem(tiny_fs):
    with Ledger(tiny_fs / "ledger.db") as led:
        led.append(1, _entry(1))
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    with pytest.raises(LedgerError) as e:
        Ledger(tiny_fs / "ledger.db").append(2, _entry(2))
    assert e.value.kind in ("read_only", "cant_open"), e.value  # WAL needs a writable -shm
    assert str(tiny_fs) in str(e.value)


def test_missing_directory_is_typed(tmp_path):
    with pytest.raises(LedgerError) as e:
        Ledger(tmp_path / "no" / "such" / "ledger.db")
    assert e.value.kind == "cant_open"
