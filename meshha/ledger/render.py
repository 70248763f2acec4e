"""The report as text (aligned tables), JSON (numbers, epoch and ISO times) and a
self-contained HTML page with an inline SVG timeline (no script, no external file: an
operator can mail it to a customer).

Also the small formatting helpers meshctl shares: `table` (columns as wide as their
widest cell, so long verdicts never push a row out of line), `duration` and `iso`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html as H
import json
from collections.abc import Sequence
from typing import Any

from meshha.ledger.report import Report

CLASS_COLOURS = {
    "host": "#c0392b",
    "network": "#e67e22",
    "process": "#8e44ad",
    "vm": "#d4ac0d",
    "maintenance": "#95a5a6",
    "brake": "#2c3e50",
    "outage": "#e74c3c",
}


def iso(ts: float | None, ms: bool = False) -> str:
    if ts is None:
        return "-"
    t = dt.datetime.fromtimestamp(ts, dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z" if ms else t.strftime("%Y-%m-%d %H:%M:%SZ")


def duration(s: float | None) -> str:
    """12.3 s, 4m 05s, 2h 03m, 3d 04h: readable at a glance."""
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(round(s), 60)
    if m < 60:
        return f"{m}m {sec:02d}s"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h}h {m:02d}m"
    d, h = divmod(h, 24)
    return f"{d}d {h:02d}h"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "") -> str:
    """Left-aligned columns, each as wide as its widest cell; the last column is not
    padded (it may be a long reason)."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for r in cells:
        parts = [c.ljust(w) for c, w in zip(r[:-1], widths[:-1], strict=True)] + [r[-1]]
        lines.append((indent + "  ".join(parts)).rstrip())
    return "\n".join(lines)


def pct(x: float) -> str:
    return f"{100 * x:.3f}%" if x < 1 else "100%"


# -- text -------------------------------------------------------------------------------


def text(rep: Report, segment: str) -> str:
    out = [
        f"meshha report: segment {segment}, {iso(rep.since)} → {iso(rep.until)} "
        f"({duration(rep.span_s)}), {rep.entries} ledger entries read",
        _nk_line(rep),
        "",
        "VM availability (VMs with an outage in the range; every other VM: 100%)",
    ]
    if rep.vms:
        out.append(
            table(
                ("vm", "name", "host", "outages", "downtime", "availability", ""),
                [
                    (
                        v.vm,
                        v.name or "-",
                        v.host,
                        v.outages,
                        duration(v.downtime_s),
                        pct(v.availability),
                        "ONGOING" if v.ongoing else "",
                    )
                    for v in rep.vms
                ],
                "  ",
            )
        )
        out.append(
            f"  total downtime {duration(rep.downtime_s)} over {len(rep.vms)} VMs; "
            f"{rep.non_ha_vms} non-HA VMs on failed hosts not tracked"
        )
    else:
        out.append("  no outage")
    out += ["", "Outages (detected → running again)"]
    out.append(
        table(
            ("detected", "vm", "host", "class", "down", "running again by / cause"),
            [
                (
                    iso(o.start),
                    o.vm,
                    o.host,
                    o.cls,
                    duration(o.down_s(rep.since, rep.until)) + ("" if o.end else "+"),
                    o.repaired_by or f"still down ({o.cause})",
                )
                for o in rep.outages
            ],
            "  ",
        )
        if rep.outages
        else "  none"
    )
    out += ["", "Repair time by failure class"]
    out.append(
        table(
            ("class", "incidents", "repaired", "ongoing", "MTTR", "worst"),
            [
                (
                    c.cls,
                    c.incidents,
                    c.repaired if not c.in_place else f"{c.repaired} ({c.in_place} in place)",
                    c.ongoing,
                    duration(c.mttr_s),
                    duration(c.max_s),
                )
                for c in rep.classes
            ],
            "  ",
        )
    )
    out += ["", "Failures per host"]
    out.append(
        table(
            ("host", "vm", "process", "host", "network", "fences"),
            [(h, *c.values()) for h, c in rep.host_failures.items()],
            "  ",
        )
        if rep.host_failures
        else "  none"
    )
    out += ["", "Fences"]
    out.append(
        table(
            ("when", "host", "method", "took", "after detection", "detail"),
            [
                (
                    iso(f.ts),
                    f.host,
                    f.method,
                    duration(f.took_s),
                    duration(f.since_detection_s),
                    f.detail[:80],
                )
                for f in rep.fences
            ],
            "  ",
        )
        if rep.fences
        else "  none"
    )
    out += ["", "Maintenance windows"]
    out.append(_windows(rep.maintenance, rep.until) if rep.maintenance else "  none")
    out += ["", "Mass-failure brake"]
    out.append(_windows(rep.brakes, rep.until, "hosts held") if rep.brakes else "  never engaged")
    out += ["", "Recoveries that failed or never completed"]
    out.append(
        table(
            ("when", "action", "host", "vm", "outcome", "detail"),
            [
                (
                    iso(a.ts),
                    a.action,
                    a.host,
                    a.vm or "-",
                    a.outcome + (f" ({a.error_kind})" if a.error_kind else ""),
                    a.detail[:100],
                )
                for a in rep.failed
            ],
            "  ",
        )
        if rep.failed
        else "  none"
    )
    return "\n".join(out) + "\n"


def _nk_line(rep: Report) -> str:
    nk = rep.nk
    if not nk:
        return "N+k: not known"
    if nk.get("error"):
        return f"N+k: not known ({nk['error']})"
    state = "survives" if nk.get("survives") else "DOES NOT SURVIVE"
    return f"N+k (k={nk.get('k')}): {state}: {nk.get('reason', '')}"


def _windows(ws: Sequence[Any], until: float, who: str = "host") -> str:
    return table(
        ("from", "to", "length", who, "reason"),
        [
            (
                iso(w.start),
                iso(w.end) if w.end else "(still on)",
                duration((w.end or until) - w.start),
                w.host or "-",
                w.reason + (f" ({'by ' if who == 'host' else ''}{w.who})" if w.who else ""),
            )
            for w in ws
        ],
        "  ",
    )


# -- JSON -------------------------------------------------------------------------------


def to_dict(rep: Report, segment: str) -> dict[str, Any]:
    d = dataclasses.asdict(rep)
    for o, src in zip(d["outages"], rep.outages, strict=True):
        o["down_s"] = src.down_s(rep.since, rep.until)
        o["start_iso"], o["end_iso"] = iso(src.start, ms=True), iso(src.end, ms=True)
    for inc in d["incidents"]:
        inc["vms"] = sorted(inc["vms"])
    d.update(
        segment=segment,
        since_iso=iso(rep.since, ms=True),
        until_iso=iso(rep.until, ms=True),
        downtime_s=rep.downtime_s,
        nk=dict(rep.nk) if rep.nk else None,
    )
    return d


def to_json(rep: Report, segment: str) -> str:
    return json.dumps(to_dict(rep, segment), indent=2, sort_keys=True)


# -- HTML -------------------------------------------------------------------------------

_W, _LEFT, _ROW = 960, 150, 22


def html(rep: Report, segment: str) -> str:
    e = H.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>meshha report: {e(segment)}</title>",
        "<style>",
        "body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1000px}",
        "h1{font-size:20px}h2{font-size:16px;margin-top:28px;border-bottom:1px solid #ddd}",
        "table{border-collapse:collapse;margin:6px 0}td,th{padding:3px 10px;text-align:left;"
        "border-bottom:1px solid #eee;white-space:nowrap}td:last-child{white-space:normal}"
        "th{background:#f6f6f6}td.num{text-align:right}",
        ".unknown{color:#777}",
        ".ok{color:#1e8449}.bad{color:#c0392b;font-weight:bold}.legend span{margin-right:14px}",
        ".sw{display:inline-block;width:12px;height:12px;vertical-align:middle;margin-right:4px}",
        "</style></head><body>",
        f"<h1>VM availability report: segment {e(segment)}</h1>",
        f"<p>{e(iso(rep.since))} → {e(iso(rep.until))} ({e(duration(rep.span_s))}); "
        f"{rep.entries} events from the segment's replicated ledger.</p>",
        _summary_html(rep),
        "<h2>Timeline</h2>",
        _svg(rep),
        '<p class="legend">'
        + "".join(
            f'<span><i class="sw" style="background:{c}"></i>{e(k)}</span>'
            for k, c in CLASS_COLOURS.items()
        )
        + "</p>",
        "<h2>VM availability</h2>",
        _html_table(
            ("VM", "name", "host", "outages", "downtime", "availability"),
            [
                (v.vm, v.name, v.host, v.outages, duration(v.downtime_s), pct(v.availability))
                for v in rep.vms
            ],
            "No VM outage in this period: every VM was available 100% of the time.",
        ),
        "<h2>Outages</h2>",
        _html_table(
            ("detected", "VM", "host", "down", "running again", "cause"),
            [
                (
                    iso(o.start),
                    o.vm,
                    o.host,
                    duration(o.down_s(rep.since, rep.until)),
                    iso(o.end) if o.end else "still down",
                    o.cause,
                )
                for o in rep.outages
            ],
            "None.",
        ),
        "<h2>Repair time by failure class</h2>",
        _html_table(
            ("class", "incidents", "repaired", "ongoing", "MTTR", "worst"),
            [
                (c.cls, c.incidents, c.repaired, c.ongoing, duration(c.mttr_s), duration(c.max_s))
                for c in rep.classes
            ],
            "",
        ),
        "<h2>Failures per host</h2>",
        _html_table(
            ("host", "VM", "process", "host", "network", "fences"),
            [(h, *c.values()) for h, c in rep.host_failures.items()],
            "No failure.",
        ),
        "<h2>Fences, maintenance and the brake</h2>",
        _html_table(
            ("when", "host", "method", "took", "after detection"),
            [
                (iso(f.ts), f.host, f.method, duration(f.took_s), duration(f.since_detection_s))
                for f in rep.fences
            ],
            "No host was fenced.",
        ),
        _html_table(
            ("maintenance from", "to", "host", "reason"),
            [
                (iso(w.start), iso(w.end) if w.end else "(still on)", w.host, w.reason)
                for w in rep.maintenance
            ],
            "No maintenance window.",
        ),
        _html_table(
            ("brake from", "to", "hosts held", "reason"),
            [
                (iso(w.start), iso(w.end) if w.end else "(still on)", w.host, w.reason)
                for w in rep.brakes
            ],
            "The mass-failure brake was never engaged.",
        ),
        "<h2>Recoveries that failed or never completed</h2>",
        _html_table(
            ("when", "action", "host", "VM", "outcome", "detail"),
            [(iso(a.ts), a.action, a.host, a.vm or "", a.outcome, a.detail) for a in rep.failed],
            "None.",
        ),
        f"<p style='color:#888'>Generated by meshctl report; {e(_nk_line(rep))}.</p>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _summary_html(rep: Report) -> str:
    n = len(rep.vms)
    worst = min((v.availability for v in rep.vms), default=1.0)
    nk = rep.nk or {}
    nk_cls = "unknown" if not nk or nk.get("error") else "ok" if nk.get("survives") else "bad"
    return (
        "<table>"
        f"<tr><th>VMs with an outage</th><td class='num'>{n}</td></tr>"
        f"<tr><th>total VM downtime</th><td class='num'>{H.escape(duration(rep.downtime_s))}</td></tr>"
        f"<tr><th>lowest VM availability</th><td class='num'>{pct(worst)}</td></tr>"
        f"<tr><th>N+k capacity</th><td class='{nk_cls}'>{H.escape(_nk_line(rep))}</td></tr>"
        "</table>"
    )


def _html_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], empty: str) -> str:
    if not rows:
        return f"<p>{H.escape(empty)}</p>" if empty else ""
    head = "".join(f"<th>{H.escape(str(h))}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td{' class=num' if isinstance(c, int | float) else ''}>{H.escape(str(c))}</td>"
            for c in r
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _svg(rep: Report) -> str:
    """One lane per host (its incidents, maintenance, brake) and per VM with an outage."""
    span = rep.span_s
    width = _W - _LEFT - 10

    def x(ts: float) -> float:
        return _LEFT + max(0.0, min(1.0, (ts - rep.since) / span)) * width

    lanes: list[tuple[str, list[tuple[float, float | None, str, str]]]] = []
    hosts = sorted(
        set(rep.host_failures)
        | {w.host for w in rep.maintenance}
        | {h for w in rep.brakes for h in w.host.split(",") if h}
    )
    for h in hosts:
        bars = [(i.start, i.end, i.cls, f"{i.cls}: {i.what}") for i in rep.incidents if i.host == h]
        bars += [(w.start, w.end, "maintenance", w.reason) for w in rep.maintenance if w.host == h]
        bars += [(w.start, w.end, "brake", w.reason) for w in rep.brakes if h in w.host.split(",")]
        lanes.append((h, bars))
    for v in rep.vms:
        lanes.append(
            (
                f"{v.name} ({v.vm[:8]})" if v.name else v.vm,
                [(o.start, o.end, "outage", o.cause) for o in rep.outages if o.vm == v.vm],
            )
        )
    height = 30 + _ROW * max(1, len(lanes)) + 24
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{height}" '
        f'viewBox="0 0 {_W} {height}" font-family="sans-serif" font-size="11">',
        f'<rect x="{_LEFT}" y="20" width="{width}" height="{height - 44}" fill="#fafafa" '
        'stroke="#ddd"/>',
    ]
    for k in range(6):
        ts = rep.since + span * k / 5
        xx = x(ts)
        out.append(
            f'<line x1="{xx:.1f}" y1="20" x2="{xx:.1f}" y2="{height - 24}" stroke="#e3e3e3"/>'
        )
        anchor = "start" if k == 0 else "end" if k == 5 else "middle"
        out.append(
            f'<text x="{xx:.1f}" y="{height - 8}" text-anchor="{anchor}" fill="#555">'
            f"{H.escape(iso(ts)[5:])}</text>"
        )
    for n, (name, bars) in enumerate(lanes):
        y = 24 + n * _ROW
        out.append(
            f'<text x="{_LEFT - 6}" y="{y + 13}" text-anchor="end">{H.escape(name[:22])}</text>'
        )
        for start, end, cls, title in bars:
            x0, x1 = x(start), x(end if end is not None else rep.until)
            colour = CLASS_COLOURS.get(cls, "#888")
            out.append(
                f'<rect x="{x0:.1f}" y="{y + 2}" width="{max(x1 - x0, 2.0):.1f}" height="{_ROW - 6}" '
                f'fill="{colour}" fill-opacity="0.85"><title>{H.escape(title)}</title></rect>'
            )
    if not lanes:
        out.append(
            f'<text x="{_LEFT + 10}" y="40" fill="#1e8449">no incident in this period</text>'
        )
    out.append("</svg>")
    return "\n".join(out)
