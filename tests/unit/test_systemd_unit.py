"""config/meshha-agent.service: systemd accepts it without a warning, and it says what the
deployment relies on (restart policy, root with the hardening that keeps libvirt, IPMI
and raw sockets working, the state and runtime directories, the agent's real options)."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from meshha.agent.main import main as agent_main

UNIT = Path(__file__).resolve().parents[2] / "config" / "meshha-agent.service"
AGENT = "/usr/local/bin/meshha-agent"


def directives() -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value (systemd allows a key more than once)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            out.setdefault(section, {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a directive: {raw!r}"
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


def one(section: str, key: str) -> str:
    values = directives()[section].get(key)
    assert values is not None, f"[{section}] {key}= missing"
    assert len(values) == 1, f"[{section}] {key}= given {len(values)} times"
    return values[0]


def test_restart_and_start_directives() -> None:
    assert one("Service", "Type") in ("simple", "notify")
    assert one("Service", "Restart") == "always"
    assert one("Service", "RestartSec") == "1"
    assert one("Unit", "StartLimitIntervalSec") == "0"
    assert one("Install", "WantedBy") == "multi-user.target"


def test_execstart_uses_real_agent_options() -> None:
    argv = shlex.split(one("Service", "ExecStart"))
    assert argv[0] == AGENT
    assert argv[argv.index("--config") + 1] == "/etc/meshha/segment.toml"
    assert argv[argv.index("--host") + 1] == "%H"
    known = {opt for p in agent_main.params for opt in p.opts}
    options = [a for a in argv[1:] if a.startswith("--")]
    assert set(options) <= known, set(options) - known
    control = argv[argv.index("--control") + 1]
    assert control.startswith("/run/meshha/")


def test_runs_as_root_with_the_reason_written_down() -> None:
    assert one("Service", "User") == "root"
    text = UNIT.read_text()
    assert "Why root" in text and "BMC" in text and "libvirt" in text
    assert "systemctl edit meshha-agent" in text  # how to set a different host name


def test_hardening_that_keeps_libvirt_ipmi_and_raw_sockets() -> None:
    d = directives()["Service"]
    assert one("Service", "NoNewPrivileges") == "yes"
    assert one("Service", "ProtectSystem") == "strict"
    rw = " ".join(d["ReadWritePaths"]).split()
    assert "/var/lib/meshha" in rw and "/run/meshha" in rw
    assert one("Service", "ProtectHome") == "yes"
    assert one("Service", "PrivateTmp") == "yes"
    assert one("Service", "RuntimeDirectory") == "meshha"
    assert one("Service", "StateDirectory") == "meshha"
    assert int(one("Service", "LimitNOFILE")) >= 4096
    families = one("Service", "RestrictAddressFamilies").split()
    assert {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET"} <= set(families)
    for breaking in ("PrivateNetwork", "MemoryDenyWriteExecute", "PrivateDevices", "DynamicUser"):
        assert breaking not in d, f"{breaking}= would break probes, libvirt or the watchdog"


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed (apt-get install -y systemd)")
    # verify insists that ExecStart's binary exists: point it at a stand-in.
    stub = tmp_path / "meshha-agent"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    unit = tmp_path / "meshha-agent.service"
    unit.write_text(UNIT.read_text().replace(AGENT, str(stub)))
    p = subprocess.run(
        [tool, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    complaints = [line for line in (p.stdout + p.stderr).splitlines() if unit.name in line]
    assert p.returncode == 0 and not complaints, p.stdout + p.stderr


def test_notify_with_a_watchdog_and_no_extra_flags() -> None:
    assert one("Service", "Type") == "notify"
    assert one("Service", "NotifyAccess") == "main"
    watchdog_s = int(one("Service", "WatchdogSec"))
    # The agent pings every second at most (meshha.agent.keepalive.MAX_INTERVAL_S) and
    # counts its loops stalled after 5 s: the unit must give it more than that.
    assert watchdog_s > 5
    argv = shlex.split(one("Service", "ExecStart"))
    assert "--libvirt-uri" not in argv and "--dry-run" not in argv  # all from the config
    assert "virtqemud.service" in one("Unit", "After").split()


def test_says_where_the_nova_credentials_go() -> None:
    text = UNIT.read_text()
    assert "/etc/openstack/clouds.yaml" in text and "ProtectHome" in text
    assert "OS_CLIENT_CONFIG_FILE" in text
