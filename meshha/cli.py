"""meshctl: the operator's command line."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

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
def sim(
    scenario_name: str,
    hosts: int | None,
    seed: int,
    as_json: bool,
    list_: bool,
    random_runs: int | None,
    observations: bool,
) -> None:
    """Run a whole segment in simulated time: real decision core, simulated network,
    Raft stand-in and fake BMC/Nova/libvirt; safety invariants checked after every run."""
    import trio
    import trio.testing

    from meshha.sim import report
    from meshha.sim.scenario import ScenarioError, load, run_scenario, scenario_files

    logs.configure(json=True, level=logging.ERROR, stream=sys.stderr)
    if list_:
        for name, path in sorted(scenario_files().items()):
            sc = load(str(path))
            click.echo(f"{name:28} {sc.description}")
        return
    if random_runs is not None:
        _swarm(random_runs, seed, as_json)
        return
    try:
        sc = load(scenario_name)
    except ScenarioError as err:
        raise click.ClickException(str(err)) from None
    if hosts is not None:
        if hosts < 3:
            raise click.ClickException("--hosts: a segment needs at least 3 hosts (3 voters)")
        sc.spec.hosts = hosts
    out = trio.run(run_scenario, sc, seed, clock=trio.testing.MockClock(autojump_threshold=0))
    s = report.summary(out.timeline, out.violations, out.failure, seed)
    rows = [r for r in out.timeline if observations or r["type"] != "observation"]
    if as_json:
        for r in rows:
            click.echo(json.dumps(r, sort_keys=True))
        click.echo(json.dumps({"type": "summary", "scenario": sc.name, **s}, sort_keys=True))
    else:
        click.echo(f"scenario {sc.name}: {sc.spec.hosts} hosts, seed {seed}")
        click.echo(f"  proves: {sc.description}")
        for r in rows:
            click.echo(f"{r['t']:9.3f}s  {report.describe(r)}")
        click.echo(report.summary_line(s))
    if not s["ok"]:
        sys.exit(1)


def _swarm(n: int, seed: int, as_json: bool) -> None:
    import trio
    import trio.testing

    from meshha.sim.swarm import swarm_run

    violated = stuck = 0
    for s in range(seed, seed + n):
        r = trio.run(swarm_run, s, clock=trio.testing.MockClock(autojump_threshold=0))
        if r.violations:
            violated += 1
        elif r.failure:
            stuck += 1
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


@main.command()
@CONTROL
@click.option("--json", "as_json", is_flag=True)
def status(control_path: Path, as_json: bool) -> None:
    """The segment as this host's agent sees it: leader, term, every host's verdict."""
    r = _call(control_path, {"op": "status"})
    if as_json:
        click.echo(json.dumps(r, indent=2, sort_keys=True))
        return
    click.echo(f"segment {r['segment']} (seen from {r['me']}): {_view_line(r)}")
    if r.get("brake", {}).get("on"):
        click.echo(f"BRAKE ON: {r['brake']['reason']}")
    nets = sorted({n for h in r["hosts"] for n in h["reach"]})
    head = (
        f"{'host':12} {'role':9} {'voter':5} {'verdict':18} {'maint':5} {'fenced':7} "
        + " ".join(f"{n:10}" for n in nets)
    )
    click.echo(head)
    for h in r["hosts"]:
        verdict = h["verdict"] + (f"({','.join(h['networks'])})" if h["networks"] else "")
        reach = " ".join(f"{('ok' if h['reach'].get(n) == 'ok' else 'LOST'):10}" for n in nets)
        click.echo(
            f"{h['name']:12} {h['role']:9} {'yes' if h['voter'] else 'no':5} {verdict:18} "
            f"{'on' if h['maintenance'] else '-':5} {(h['fenced'] or {}).get('method', '-'):7} {reach}"
        )
    for h in r["hosts"]:
        if h["verdict"] not in ("healthy",):
            click.echo(f"  {h['name']}: {h['reason']}")
    if r.get("pending_intents"):
        click.echo(f"pending: {len(r['pending_intents'])} intents")


@main.command()
@CONTROL
@click.argument("state", type=click.Choice(["on", "off"]))
@click.argument("host")
@click.option("--reason", default="", help="Why (kept in the event history).")
def maintenance(control_path: Path, state: str, host: str, reason: str) -> None:
    """Put HOST in maintenance (no alerts, no recovery, not a failover target) or take it out."""
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


def _since(value: str | None) -> dict[str, float]:
    """--since as the request wants it: an ISO time, or an age the agent resolves with
    its own clock (meshctl reads no clock)."""
    if value is None:
        return {}
    import datetime as dt

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value[-1:] in units and value[:-1].isdigit():
        return {"since_age_s": int(value[:-1]) * units[value[-1]]}
    try:
        return {"since": dt.datetime.fromisoformat(value).timestamp()}
    except ValueError:
        raise click.BadParameter(f"{value!r}: use an ISO time or an age like 30m, 2h, 7d") from None


@main.command()
@CONTROL
@click.option("--host")
@click.option("--since", help="ISO time, or an age: 30m, 2h, 7d.")
@click.option("--type", "kind", help="verdict, intent, result, fenced, maintenance, vm_failure, …")
@click.option("--vm")
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def events(
    control_path: Path,
    host: str | None,
    since: str | None,
    kind: str | None,
    vm: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """The event history (the ledger): what, when, where, how and why."""
    import datetime as dt

    r = _call(
        control_path,
        {
            "op": "events",
            "host": host,
            "since": _since(since),
            "kind": kind,
            "vm": vm,
            "limit": limit,
        },
    )
    if as_json:
        for e in r["events"]:
            click.echo(json.dumps(e, sort_keys=True))
        return
    click.echo(_view_line(r))
    for e in reversed(r["events"]):
        when = dt.datetime.fromtimestamp(e["ts"], dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        what = " ".join(
            str(e[k]) for k in ("host", "network", "vm", "action", "outcome") if e.get(k)
        )
        click.echo(f"{e['idx']:>7} {when} {e['kind']:15} {what:40} {e.get('reason') or ''}")


@main.command()
@CONTROL
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "json"]), default="json", show_default=True
)
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="Write here instead of stdout."
)
@click.option("--host")
@click.option("--since")
def export(
    control_path: Path, fmt: str, out: Path | None, host: str | None, since: str | None
) -> None:
    """Export the event history as CSV or JSON."""
    r = _call(
        control_path,
        {"op": "export", "format": fmt, "host": host, **_since(since)},
        timeout_s=120,
    )
    if out is None:
        click.echo(r["data"], nl=False)
    else:
        out.write_text(r["data"])
        click.echo(f"{r['rows']} events written to {out}", err=True)


if __name__ == "__main__":
    main()
