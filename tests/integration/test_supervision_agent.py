"""Process supervision as an operator runs it: three real agents started by the installed
`meshha-agent` console script, a `[processes]` section with a `restart_command` (the
example config's form), and the ledger read back with `meshctl events` (the console
script, over the control socket).

The three agents share this machine, so they watch one dummy daemon (a copy of `sleep`
under a unique name, started by an idempotent script under a lock). Proves:
- killed with SIGKILL, it is restarted and each host that saw it dead reports that
  outage once ("restarted", naming the outage's start), nothing more;
- while its restarts fail, every host reports "restart_failed" once however long it
  lasts (bounded, backed-off restarts go on meanwhile), and once restarts work again
  each host reports "restarted" once, with the same outage start; the leader's alerts
  and disables for it are each proposed once (no intent id twice, one process alert per
  host and outage).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshha.lab.mesh import Mesh
from meshha.probes.processes import find_pids

pytestmark = pytest.mark.integration

HOSTS = ("host1", "host2", "host3")
BIN = Path(sys.executable).parent


def console_script(name: str) -> str:
    path = BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"the {name} console script is not installed (pip install -e .)"
    return found


class AgentMesh(Mesh):
    """Agents started by the console script, as the systemd unit does."""

    def agent_argv(self, host: str) -> list[str]:
        argv = super().agent_argv(host)
        assert argv[1:3] == ["-m", "meshha.agent.main"], argv
        return [console_script("meshha-agent"), *argv[3:]]


class Daemon:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.name = "mhs-" + secrets.token_hex(4)
        self.binary = directory / self.name
        shutil.copy(shutil.which("sleep") or "/bin/sleep", self.binary)
        self.broken = directory / "broken"
        self.start = directory / "start"
        # Three agents may run it at once: one starts the daemon, the others find it.
        self.start.write_text(
            "#!/bin/sh\n"
            f'[ -e "{self.broken}" ] && {{ echo "start refused" >&2; exit 3; }}\n'
            f'exec 9>"{directory}/lock"\n'
            "flock 9\n"
            # Not a zombie (a killed daemon may wait a while for its reaper).
            'pgrep -r R,S,D -x "$1" >/dev/null && exit 0\n'
            f'setsid "{self.binary}" 600 </dev/null >/dev/null 2>&1 9>&- &\n'  # not the lock
        )
        self.start.chmod(0o755)

    def run(self) -> None:
        subprocess.run([str(self.start), self.name], check=True)

    def kill(self) -> None:
        for pid in find_pids(self.name):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(tmp_path / "daemon")
    d.run()
    try:
        yield d
    finally:
        d.broken.touch()
        d.kill()


@pytest.fixture
def mesh(tmp_path: Path, daemon: Daemon) -> Iterator[Mesh]:
    processes = (
        "\n[processes]\n"
        f'names = ["{daemon.name}"]\n'
        "check_interval_s = 0.5\n"
        "restart_attempts = 2\n"
        "restart_backoff_s = 0.5\n"
        f'restart_command = "{daemon.start} {{name}}"\n'
    )
    m = AgentMesh(tmp_path / "mesh", HOSTS, profile="lan-safe", extra_toml=processes)
    try:
        m.start(timeout_s=40)
        yield m
    finally:
        m.close()


def events(mesh: Mesh, host: str, kind: str) -> list[dict[str, Any]]:
    """The entries `meshctl events --type KIND --json` lists from `host`'s ledger."""
    done = subprocess.run(
        [
            console_script("meshctl"),
            "events",
            "--control",
            str(mesh.control(host)),
            "--type",
            kind,
            "--limit",
            "500",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return [row["entry"] for row in rows]


def process_reports(mesh: Mesh, name: str) -> list[dict[str, Any]]:
    return [e for e in events(mesh, "host1", "process_failure") if e.get("process") == name]


def test_one_report_per_outage_through_the_console_scripts(mesh: Mesh, daemon: Daemon) -> None:
    mesh.wait_leader(30)
    daemon.kill()
    mesh.wait_until(
        lambda: len(process_reports(mesh, daemon.name)) >= 1 or None,
        30,
        "a host reports the restart",
    )
    time.sleep(3)  # noqa: TID251  # six checks more: nothing else may be reported
    quick = process_reports(mesh, daemon.name)
    # Whoever saw it dead reports it once (a fast restart by one host may beat the
    # others' next check).
    hosts = [e["host"] for e in quick]
    assert hosts and len(hosts) == len(set(hosts)), quick
    assert {e["outcome"] for e in quick} == {"restarted"}, quick
    assert all("since" in e for e in quick), quick
    assert find_pids(daemon.name)

    daemon.broken.touch()
    daemon.kill()
    t0 = time.monotonic()
    mesh.wait_until(
        lambda: (
            (
                sum(e["outcome"] == "restart_failed" for e in process_reports(mesh, daemon.name))
                >= len(HOSTS)
            )
            or None
        ),
        30,
        "every host reports it cannot restart it",
    )
    time.sleep(max(0.0, 15 - (time.monotonic() - t0)))  # noqa: TID251  # restarts go on
    daemon.broken.unlink()
    mesh.wait_until(
        lambda: (
            (
                sum(e["outcome"] == "restarted" for e in process_reports(mesh, daemon.name))
                >= len(quick) + len(HOSTS)
            )
            or None
        ),
        60,
        "every host reports it running again",
    )
    reports = process_reports(mesh, daemon.name)[len(quick) :]
    per_outage = Counter((e["host"], e["since"], e["outcome"]) for e in reports)
    assert len(per_outage) == 2 * len(HOSTS) and set(per_outage.values()) == {1}, reports
    for h in HOSTS:
        mine = [e for e in reports if e["host"] == h]
        assert [e["outcome"] for e in mine] == ["restart_failed", "restarted"], mine
        assert mine[0]["since"] == mine[1]["since"], mine
    # The leader's steps for these outages: each at most once. The three hosts' reports
    # arrive at different times, so the process brake (more than half the hosts failing)
    # is alerted per count it saw, and a host still failing after the others recovered
    # gets its own disable and alert (the brake no longer holds).
    intents = [e["intent"] for e in events(mesh, "host1", "intent")]
    assert len(intents) == len(set(intents)), intents
    disables = Counter(i.split(":")[1] for i in intents if i.startswith("disable:"))
    assert all(n == 1 for n in disables.values()), intents
    # The brake's alert is keyed by (count, latest failure): staggered reports and
    # recoveries change the count at most once per report.
    brakes = [i for i in intents if i.startswith("alert:process-brake:")]
    assert len(brakes) <= 2 * len(HOSTS), intents
    per_host = Counter(i.split(":")[2] for i in intents if i.startswith("alert:process:"))
    assert all(n == 1 for n in per_host.values()), intents
