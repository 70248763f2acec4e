"""meshctl: the operator's command line."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from meshha import logs


@click.group()
def main() -> None:
    """meshha operator CLI: segment config, simulation, and (against the local agent)
    status, maintenance, events and export."""


# -- config ----------------------------------------------------------------------------


@main.group()
def config() -> None:
    """Segment configuration."""


@config.command("check")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def config_check(file: Path) -> None:
    """Validate FILE; print every problem (file: key.path: what) and exit 1 if any."""
    from meshha.config.load import check_file

    problems = check_file(file)
    for p in problems:
        click.echo(p, err=True)
    if problems:
        sys.exit(1)
    click.echo(f"{file}: OK")


@config.command("init")
@click.option("--cloud", required=True, help="The clouds.yaml cloud to read Nova from.")
@click.option("--name", "segment_name", required=True, help="The segment's name.")
@click.option("--aggregate", default=None, help="Take the hosts of this host aggregate.")
@click.option("--az", "availability_zone", default=None, help="Take the hosts of this AZ.")
@click.option(
    "--reserved",
    default="1",
    show_default=True,
    help="How many hosts to keep as reserved (the last by name), or their names, comma-separated.",
)
@click.option(
    "--inventory",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A TOML file with each host's addresses and BMC (see meshha.config.bootstrap).",
)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def config_init(
    cloud: str,
    segment_name: str,
    aggregate: str | None,
    availability_zone: str | None,
    reserved: str,
    inventory: Path | None,
    out: Path,
) -> None:
    """Write a segment file from Nova: the hosts of an aggregate or AZ, with their size."""
    import openstack
    import openstack.exceptions

    from meshha.config import bootstrap
    from meshha.errors import ConfigError

    if out.exists():
        raise click.ClickException(f"{out} exists: not overwritten")
    try:
        conn = openstack.connect(cloud=cloud)
        hosts = bootstrap.discover_hosts(
            conn, aggregate=aggregate, availability_zone=availability_zone
        )
        inv = bootstrap.read_inventory(inventory) if inventory else None
        res: int | list[str] = int(reserved) if reserved.isdigit() else reserved.split(",")
        where = f" from aggregate {aggregate}" if aggregate else ""
        where += f" from AZ {availability_zone}" if availability_zone else ""
        text = bootstrap.render_segment(
            segment_name,
            hosts,
            cloud=cloud,
            reserved=res,
            inventory=inv,
            source=f" from cloud {cloud!r}{where}",
        )
    except (ConfigError, openstack.exceptions.SDKException) as e:
        raise click.ClickException(str(e)) from None
    out.write_text(text, encoding="utf-8")
    fill = text.count(f'"{bootstrap.FILL_IN}"')
    click.echo(
        f"{out}: {len(hosts)} hosts"
        + (f", {fill} values marked FILL-IN to complete" if fill else "")
    )


@config.command("secrets")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def config_secrets(file: Path) -> None:
    """Create the secret files FILE names that do not exist yet (0600): the probe key and
    Raft password are generated; BMC and SMTP passwords are asked for (hidden input, or
    one per line on standard input). Run once, then copy the secrets to every host."""
    from meshha.config import bootstrap
    from meshha.errors import ConfigError

    def ask(what: str) -> str:
        return str(click.prompt(what, hide_input=True, err=True))

    try:
        bootstrap.create_secrets(file, ask, say=click.echo)
    except (ConfigError, OSError) as e:
        raise click.ClickException(str(e)) from None


# -- simulation ------------------------------------------------------------------------


@main.command()
@click.option(
    "--scenario",
    "scenario_name",
    default="host-power-off",
    show_default=True,
    help="A scenario name (see --list) or a path to a scenario file.",
)
@click.option("--hosts", type=int, default=None, help="Override the scenario's segment size.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a readable timeline.")
@click.option("--list", "list_", is_flag=True, help="List the scenarios and what each proves.")
@click.option(
    "--random",
    "random_runs",
    type=int,
    default=None,
    help="Run N random fault schedules (swarm testing) from --seed on.",
)
@click.option(
    "--observations/--no-observations", default=True, help="Show reachability observations."
)
@click.option(
    "--rewrite",
    is_flag=True,
    help="Write this run's timeline below the steps of the scenario file, as its expected "
    "timeline (seed 1 only; review the diff).",
)
def sim(
    scenario_name: str,
    hosts: int | None,
    seed: int,
    as_json: bool,
    list_: bool,
    random_runs: int | None,
    observations: bool,
    rewrite: bool,
) -> None:
    """Run a whole segment in simulated time: real decision core, simulated network,
    Raft stand-in and fake BMC/Nova/libvirt; safety invariants checked after every run."""
    from meshha.sim import replay, report
    from meshha.sim.scenario import ScenarioError, load, run_scenario, scenario_files
    from meshha.sim.scenario import rewrite as rewrite_trace

    logs.configure(json=True, level=logging.ERROR, stream=sys.stderr)
    if list_:
        for name, path in sorted(scenario_files().items()):
            sc = load(str(path))
            click.echo(f"{name:28} {sc.description}")
        return
    if random_runs is not None:
        _swarm(random_runs, seed, as_json, observations)
        return
    try:
        sc = load(scenario_name)
    except ScenarioError as err:
        raise click.ClickException(str(err)) from None
    if hosts is not None:
        if hosts < 3:
            raise click.ClickException("--hosts: a segment needs at least 3 hosts (3 voters)")
        if rewrite:
            raise click.ClickException("--rewrite: the expected timeline is for the file's segment")
        sc.spec.hosts = hosts
    out = replay.run(run_scenario, sc, seed, seed=seed)
    if rewrite:
        try:
            click.echo(f"rewrote {rewrite_trace(sc, out)}")
        except ScenarioError as err:
            raise click.ClickException(str(err)) from None
        return
    s = report.summary(out.timeline, out.violations, out.failure, seed)
    if as_json:
        _json_rows(out.timeline, observations)
        click.echo(json.dumps({"type": "summary", "scenario": sc.name, **s}, sort_keys=True))
    else:
        click.echo(f"scenario {sc.name}: {sc.spec.hosts} hosts, seed {seed}")
        click.echo(f"  proves: {sc.description}")
        for line in report.lines(out.timeline, observations=observations):
            click.echo(line)
        click.echo(report.summary_line(s))
    if not s["ok"]:
        sys.exit(1)


def _json_rows(timeline: list[dict[str, Any]], observations: bool) -> None:
    for r in timeline:
        if observations or r["type"] != "observation":
            click.echo(json.dumps(r, sort_keys=True))


def _swarm(n: int, seed: int, as_json: bool, observations: bool) -> None:
    """N random schedules; with N = 1 (reproducing a seed) also its whole timeline."""
    from meshha.sim import replay, report
    from meshha.sim.swarm import swarm_run

    violated = stuck = 0
    for s in range(seed, seed + n):
        r = replay.run(swarm_run, s, seed=s)
        if r.violations:
            violated += 1
        elif r.failure:
            stuck += 1
        if n == 1 and as_json:
            _json_rows(r.timeline, observations)
        elif n == 1:
            click.echo(f"random schedule, seed {s}: {r.hosts} hosts")
            for line in report.lines(r.timeline, observations=observations):
                click.echo(line)
        if as_json:
            click.echo(
                json.dumps(
                    {
                        "seed": s,
                        "hosts": r.hosts,
                        "ok": r.ok,
                        "faults": len(r.faults),
                        "committed": r.committed,
                        "violations": r.violations,
                        "failure": r.failure,
                    }
                )
            )
        elif not r.ok:
            click.echo(f"seed {s}: {r.hosts} hosts: {r.failure} {r.violations}")
    line = f"{n} random schedules from seed {seed}: {violated} violated an invariant, {stuck} did not converge"
    click.echo(
        json.dumps({"type": "summary", "runs": n, "violated": violated, "not_converged": stuck})
        if as_json
        else line
    )
    if violated or stuck:
        sys.exit(1)


# -- against the local agent -------------------------------------------------------------

CONTROL = click.option(
    "--control",
    "control_path",
    envvar="MESHHA_CONTROL",
    default="/run/meshha/control.sock",
    show_default=True,
    type=click.Path(path_type=Path),
    help="The local agent's control socket.",
)


def _call(control_path: Path, request: dict, timeout_s: float = 15.0) -> dict:  # type: ignore[type-arg]
    from meshha.agent.control import ControlError, call

    try:
        return call(control_path, request, timeout_s)
    except ControlError as err:
        hint = {
            "not_running": "is meshha-agent running on this host? (systemctl status meshha-agent)",
            "permission_denied": "the control socket is root-only: run meshctl as root",
            "no_quorum": "this side of the segment has no Raft majority: writes are refused",
        }.get(err.kind, "")
        raise click.ClickException(f"{err}" + (f"\n  {hint}" if hint else "")) from None


def _view_line(r: dict) -> str:  # type: ignore[type-arg]
    stale = "  (STALE: no quorum in sight; this host's last known state)" if r.get("stale") else ""
    return (
        f"leader {r.get('leader') or '-'}, term {r.get('term')}, log index {r.get('index')}{stale}"
    )


def _age(now: float | None, ts: float | None) -> str:
    from meshha.ledger.render import duration

    if not now or not ts:
        return "-"
    return duration(max(0.0, now - ts)) + " ago"


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]], indent: str = "") -> str:
    from meshha.ledger.render import table

    return table(headers, rows, indent)


def _this_host_line(r: dict) -> str:  # type: ignore[type-arg]
    wd = r.get("watchdog") or {}
    if not wd.get("declared"):
        watchdog = "none declared (no self-fence deadline proof for this host)"
    elif not wd.get("armed"):
        watchdog = "not armed yet (armed at the first contact with a majority)"
    else:
        fed = "fed" if wd.get("feeding") else "NOT FED: it will reset this host"
        watchdog = f"{fed} (timeout {wd.get('timeout_s')} s)"
    return f"this host's watchdog: {watchdog}"


@main.command()
@CONTROL
@click.option("--json", "as_json", is_flag=True, help="The whole answer as JSON (metrics_url too).")
def status(control_path: Path, as_json: bool) -> None:
    """The segment as this host's agent sees it: leader, term, every host's verdict."""
    r = _call(control_path, {"op": "status"})
    if as_json:
        click.echo(json.dumps(r, indent=2, sort_keys=True))
        return
    now = r.get("now")
    click.echo(f"segment {r['segment']} (seen from {r['me']}): {_view_line(r)}")
    if r.get("isolated"):
        click.echo("ISOLATED: this host lost a majority on every network and destroyed its VMs")
    if r.get("brake", {}).get("on"):
        click.echo(f"BRAKE ON: {r['brake']['reason']} (meshctl brake release)")
    click.echo(_this_host_line(r))
    nets = sorted({n for h in r["hosts"] for n in h["reach"]})
    rows = []
    for h in r["hosts"]:
        verdict = h["verdict"] + (f"({','.join(h['networks'])})" if h["networks"] else "")
        rows.append(
            (
                h["name"],
                h["role"],
                "yes" if h["voter"] else "no",
                verdict,
                _age(now, h.get("since")),
                "on" if h["maintenance"] else "-",
                (h["fenced"] or {}).get("method", "-"),
                *(("ok" if h["reach"].get(n) == "ok" else "LOST") for n in nets),
            )
        )
    click.echo(
        _table(("host", "role", "voter", "verdict", "since", "maint", "fenced", *nets), rows)
    )
    for h in r["hosts"]:
        if h["verdict"] != "healthy":
            click.echo(f"  {h['name']}: {h['reason']}")
        if h["maintenance"]:
            m = h["maintenance"]
            who = f" by {m['operator']}" if m.get("operator") else ""
            click.echo(
                f"  {h['name']}: maintenance{who} {_age(now, m.get('since'))}: {m['reason']}"
            )
    if r.get("pending_intents"):
        click.echo(f"pending: {len(r['pending_intents'])} intents")
        for i in r["pending_intents"][:10]:
            click.echo(f"  {i['action']:16} {i['host']} {i.get('vm') or ''} {i['id']}")
    errs = r.get("errors") or {}
    if errs.get("counts"):
        counts = ", ".join(f"{k} x{n}" for k, n in errs["counts"].items())
        last = errs.get("last") or {}
        click.echo(f"errors: {counts}")
        if last:
            click.echo(f"  last: {last['kind']} {_age(now, last.get('ts'))}: {last['error']}")
    led = errs.get("ledger") or {}
    if led.get("error") or led.get("backlog", 0) > 100:
        click.echo(
            f"ledger: {led.get('backlog')} entries not written yet; {led.get('error') or ''}"
        )
    click.echo(f"metrics: {r.get('metrics_url') or 'not served ([metrics] listen unset)'}")


@main.command()
@CONTROL
@click.argument("state", type=click.Choice(["on", "off"]))
@click.argument("host")
@click.option("--reason", default="", help="Why (kept in the event history).")
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="`on`: follow the live migrations off the host until every VM moved or could not.",
)
@click.option(
    "--timeout", "timeout_s", default=1800.0, show_default=True, help="Seconds to follow."
)
def maintenance(
    control_path: Path, state: str, host: str, reason: str, wait: bool, timeout_s: float
) -> None:
    """Put HOST in maintenance or take it out. `on` disables it in Nova and live-migrates
    its VMs onto the segment's compute hosts (the reserve is kept), showing progress and
    what could not move; the host is then ignored: no alerts, no recovery, no local
    restarts, not a target. `off` enables it in Nova again."""
    import getpass

    r = _call(
        control_path,
        {
            "op": "maintenance",
            "host": host,
            "on": state == "on",
            "reason": reason,
            "operator": getpass.getuser(),
        },
    )
    click.echo(f"maintenance {state} {host}: committed at index {r['index']} ({_view_line(r)})")
    if not r.get("applied", True):
        click.echo("  not yet applied on this host (it is catching up)", err=True)
    if state == "on" and wait:
        if r.get("dry_run"):
            click.echo("  dry run (no Nova configured): no VM is moved")
            return
        _follow_drain(control_path, host, r.get("drain"), timeout_s)


def _drain_line(d: dict) -> str:  # type: ignore[type-arg]
    moving = f", moving {len(d['moving'])}" if d["moving"] else ""
    stuck = f", could not move {len(d['could_not_move'])}" if d["could_not_move"] else ""
    return f"  {d['stage']}: moved {len(d['moved'])} of {d['total']} VMs{moving}{stuck}"


def _follow_drain(control_path: Path, host: str, d: dict | None, timeout_s: float) -> None:  # type: ignore[type-arg]
    """Follow the drain of `host` until it is done (bounded by `timeout_s`)."""
    import time

    deadline = time.monotonic() + timeout_s
    last = ""
    while True:
        if d is not None:
            line = _drain_line(d)
            if line != last:
                click.echo(line)
                last = line
            if d["stage"] == "done":
                for c in d["could_not_move"]:
                    click.echo(f"  could not move {c['vm']}: {c['why']}")
                if not d["could_not_move"]:
                    click.echo(f"  {host} is empty")
                return
        if time.monotonic() >= deadline:
            click.echo(
                f"  still going after {timeout_s:g}s: `meshctl maintenance on {host}` again to follow"
            )
            return
        # A long poll: the agent answers once the drain changed, or after wait_s.
        req = {"op": "drain", "host": host, "after": d, "wait_s": 10.0}
        d = _call(control_path, req, timeout_s=20.0).get("drain")


@main.group()
def brake() -> None:
    """The mass-failure brake."""


@brake.command("release")
@CONTROL
def brake_release(control_path: Path) -> None:
    """Release the brake: hosts still failed are then fenced and recovered."""
    import getpass

    r = _call(control_path, {"op": "brake_release", "operator": getpass.getuser()})
    click.echo(f"brake released: committed at index {r['index']}")


def _time_arg(value: str | None, key: str) -> dict[str, float]:
    """--since/--until as the request wants them: epoch seconds from an ISO time (UTC
    unless it says otherwise), or (`since` only) an age the agent resolves with its own
    clock (meshctl reads no clock)."""
    if value is None:
        return {}
    import datetime as dt

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value[-1:] in units and value[:-1].isdigit():
        if key != "since":
            raise click.BadParameter(f"--{key}: an ISO time, not an age")
        return {"since_age_s": int(value[:-1]) * units[value[-1]]}
    try:
        t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: use an ISO time (2026-11-28T07:00) or an age like 30m, 2h, 7d"
        ) from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return {key: t.timestamp()}


SINCE = click.option("--since", help="ISO time (UTC unless given), or an age: 30m, 2h, 7d.")
UNTIL = click.option("--until", help="ISO time (UTC unless given); default: now.")


@main.command()
@CONTROL
@click.option("--host")
@SINCE
@UNTIL
@click.option("--type", "kind", help="verdict, intent, result, fenced, maintenance, vm_failure, …")
@click.option("--vm")
@click.option("--limit", default=50, show_default=True, help="The latest N events.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines.")
def events(
    control_path: Path,
    host: str | None,
    since: str | None,
    until: str | None,
    kind: str | None,
    vm: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """The event history (the ledger): what, when, where, how and why."""
    from meshha.ledger.export import ts_iso

    r = _call(
        control_path,
        {
            "op": "events",
            "host": host,
            "kind": kind,
            "vm": vm,
            "limit": limit,
            **_time_arg(since, "since"),
            **_time_arg(until, "until"),
        },
    )
    if as_json:
        for e in reversed(r["events"]):
            click.echo(json.dumps({**e, "ts_iso": ts_iso(e["ts"])}, sort_keys=True))
        return
    click.echo(_view_line(r))
    rows = []
    for e in reversed(r["events"]):
        what = " ".join(
            str(e[k]) for k in ("host", "network", "vm", "action", "outcome") if e.get(k)
        )
        if e["kind"] == "verdict":
            what += " " + str(e["entry"].get("verdict", ""))
        rows.append(
            (
                e["idx"],
                (ts_iso(e["ts"]) or "-").replace("T", " "),
                _age(r.get("now"), e["ts"]),
                e["kind"],
                what,
                (e.get("reason") or e["entry"].get("detail") or "")[:160],
            )
        )
    if rows:
        click.echo(_table(("idx", "when (UTC)", "age", "kind", "what", "why / detail"), rows))
    else:
        click.echo("no events match")


@main.command()
@CONTROL
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "json"]), default="json", show_default=True
)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout."
)
@click.option("--host")
@click.option("--vm")
@click.option("--type", "kind")
@SINCE
@UNTIL
@click.option("--page-size", default=2000, show_default=True)
def export(
    control_path: Path,
    fmt: str,
    out: Path | None,
    host: str | None,
    vm: str | None,
    kind: str | None,
    since: str | None,
    until: str | None,
    page_size: int,
) -> None:
    """Export the event history as CSV or JSON (epoch `ts` and `ts_iso`), a page at a
    time (progress on stderr)."""
    from meshha.ledger.export import export_head, export_tail, format_page

    req = {
        "op": "export_page",
        "host": host,
        "vm": vm,
        "kind": kind,
        "limit": page_size,
        **_time_arg(since, "since"),
        **_time_arg(until, "until"),
    }
    stream = out.open("w") if out is not None else None
    write = stream.write if stream is not None else lambda t: click.echo(t, nl=False)
    n, after, total = 0, 0, None
    try:
        write(export_head(fmt))
        while True:
            r = _call(control_path, {**req, "after": after}, timeout_s=60)
            total = r.get("total", total)
            if "since_age_s" in req:  # resolved once, by the agent's clock, for every page
                req["since"] = r["now"] - req.pop("since_age_s")
            write(format_page(fmt, r["rows"], first=n == 0))
            n += len(r["rows"])
            after = r["last"]
            if total:
                click.echo(f"\r{n}/{total} events", err=True, nl=False)
            if r["done"]:
                break
        write(export_tail(fmt, n))
    finally:
        if stream is not None:
            stream.close()
    click.echo(f"\r{n} events exported" + (f" to {out}" if out else ""), err=True)


@main.command()
@CONTROL
@click.option(
    "--k", type=int, default=None, help="Host losses to survive; default [recovery] reserve_k."
)
@click.option("--json", "as_json", is_flag=True)
def capacity(control_path: Path, k: int | None, as_json: bool) -> None:
    """N+k: could the segment lose its k largest compute hosts now and still place every
    HA VM of theirs on the healthy reserve? Exit 1 if not (or not known)."""
    r = _call(control_path, {"op": "capacity", "k": k}, timeout_s=120)
    nk = r["nk"]
    if as_json:
        click.echo(json.dumps(nk, indent=2, sort_keys=True))
    elif nk.get("error"):
        click.echo(f"N+{nk['k']}: not known: {nk['error']}")
    else:
        verdict = "survives" if nk["survives"] else "DOES NOT SURVIVE"
        click.echo(
            f"N+{nk['k']}: {verdict} ({nk['compute_hosts']} compute hosts, {nk['ha_vms']} HA VMs)"
        )
        click.echo(f"  {nk['reason']}")
        if nk["reserve"]:
            click.echo(
                _table(
                    ("reserve", "vcpus free", "ram MB free", "disk GB free"),
                    [
                        (t["host"], t["vcpus_free"], t["ram_mb_free"], t["disk_gb_free"])
                        for t in nk["reserve"]
                    ],
                    "  ",
                )
            )
        for u in nk["unplaced"][:20]:
            click.echo(f"  would not fit: {u['vm']} ({u['priority']}): {u['reason']}")
    if nk.get("error") or not nk.get("survives"):
        sys.exit(1)


@main.command()
@CONTROL
@SINCE
@UNTIL
@click.option("--json", "as_json", is_flag=True, help="The numbers as JSON.")
@click.option(
    "--html",
    "html_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write a self-contained HTML page (with a timeline) here.",
)
@click.option(
    "--ledger",
    "ledger_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Read this ledger file instead of asking the agent (N+k is then not known).",
)
@click.option("--segment", "segment_name", default="segment", help="Name shown with --ledger.")
def report(
    control_path: Path,
    since: str | None,
    until: str | None,
    as_json: bool,
    html_out: Path | None,
    ledger_file: Path | None,
    segment_name: str,
) -> None:
    """The SLA / health report for a time range (default: the last 24 h): per-VM outages,
    downtime and availability, MTTR per failure class, failures per host, fences,
    maintenance, the brake, recoveries that failed, and the segment's N+k."""
    times = {**_time_arg(since, "since"), **_time_arg(until, "until")}
    fmt = "json" if as_json else "text"
    if ledger_file is not None:
        text, page = _offline_report(ledger_file, segment_name, times, fmt, html_out is not None)
    else:
        click.echo("reading the ledger…", err=True)
        r = _call(
            control_path,
            {"op": "report", "format": fmt, "html": html_out is not None, **times},
            timeout_s=300,
        )
        text = r["report"] if fmt == "text" else json.dumps(r["report"], indent=2, sort_keys=True)
        page = r.get("html")
    click.echo(text, nl=not text.endswith("\n"))
    if html_out is not None and page is not None:
        html_out.write_text(page)
        click.echo(f"HTML report written to {html_out}", err=True)


def _offline_report(
    path: Path, name: str, times: dict[str, float], fmt: str, want_html: bool
) -> tuple[str, str | None]:
    from meshha.ledger import render
    from meshha.ledger.report import ReportBuilder
    from meshha.ledger.store import Ledger

    with Ledger(path) as led:
        entries = [e for _, e in led.entries()]
    if not entries:
        raise click.ClickException(f"{path}: no events")
    until = times.get("until", max(float(e["ts"]) for e in entries) + 1.0)
    since = times.get("since", until - times.get("since_age_s", 86400.0))
    if "since" not in times and "since_age_s" not in times:
        since = min(float(e["ts"]) for e in entries)
    b = ReportBuilder()
    for e in entries:
        if float(e["ts"]) < until:
            b.feed(e)
    rep = b.report(since, until, None)
    text = render.text(rep, name) if fmt == "text" else render.to_json(rep, name)
    return text, render.html(rep, name) if want_html else None


if __name__ == "__main__":
    main()
