"""Export formats of the event history, a page at a time: the agent's `Ledger.export`
and meshctl (which receives pages over the control socket) write the same bytes.

csv: a header, then one line per row; `evidence` and `entry` stay JSON text, missing
values are empty. json: one array of row objects (`evidence`, `entry` decoded), one row
per line. Both put `ts_iso` (UTC, ISO 8601 with milliseconds) right after the epoch `ts`.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Sequence
from typing import Any

EXPORT_FORMATS = ("csv", "json")
FIELDS = (
    "idx",
    "ts",
    "ts_iso",
    "kind",
    "by_host",
    "host",
    "network",
    "vm",
    "action",
    "outcome",
    "intent",
    "reason",
    "evidence",
    "entry",
)


def ts_iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def export_head(fmt: str) -> str:
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(FIELDS)
        return buf.getvalue()
    return "["


def format_page(fmt: str, rows: Sequence[dict[str, Any]], first: bool) -> str:
    """Stored rows (`evidence`, `entry` as JSON text) in `fmt`; `first`: no row before."""
    buf = io.StringIO()
    if fmt == "csv":
        w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n", extrasaction="ignore")
        w.writerows({**r, "ts_iso": ts_iso(r.get("ts"))} for r in rows)
        return buf.getvalue()
    for n, r in enumerate(rows):
        row = {**r, "ts_iso": ts_iso(r.get("ts"))}
        for column in ("evidence", "entry"):
            if isinstance(row.get(column), str):
                row[column] = json.loads(row[column])
        buf.write("\n" if first and n == 0 else ",\n")
        buf.write(json.dumps(row, sort_keys=True))
    return buf.getvalue()


def export_tail(fmt: str, rows: int) -> str:
    return "" if fmt == "csv" else "\n]\n"
