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
    from meshha.config import check_file

    problems = check_file(file)
    for p in problems:
        click.echo(p, err=True)
    if problems:
        sys.exit(1)
    click.echo(f"{file}: OK")


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

    from meshha.lab.sim import report
    from meshha.lab.sim.scenario import ScenarioError, load, run_scenario, scenario_files

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

    from meshha.lab.sim.swarm import swarm_run

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


if __name__ == "__main__":
    main()
