"""scripts/install-agent.sh puts meshha where config/meshha-agent.service expects it: the
unit's ExecStart resolves to a working meshha-agent, systemd accepts the installed unit,
and the installed meshctl makes the installed example config pass its check once
`meshctl config secrets` has created the secret files. Installed into a --root directory,
so the test machine's / is untouched."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT_AGENT = "/usr/local/bin/meshha-agent"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("root")
    for _ in range(2):  # idempotent: a second run changes nothing and does not fail
        subprocess.run(
            ["bash", str(REPO / "scripts/install-agent.sh"), "--root", str(root), "--no-apt"],
            check=True,
            capture_output=True,
            timeout=600,
        )
    return root


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_files_are_where_the_unit_and_docs_say(root: Path) -> None:
    assert (root / "etc/systemd/system/meshha-agent.service").read_text() == (
        REPO / "config/meshha-agent.service"
    ).read_text()
    assert mode(root / "etc/meshha") == 0o700
    assert mode(root / "etc/meshha/secrets") == 0o700
    assert mode(root / "etc/meshha/segment.toml") == 0o600
    assert mode(root / "var/lib/meshha") == 0o700
    agent = root / UNIT_AGENT.lstrip("/")
    out = subprocess.run([str(agent), "--help"], capture_output=True, text=True, check=True)
    assert "--config" in out.stdout


def test_systemd_accepts_the_installed_unit(root: Path, tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze not installed (apt-get install -y systemd)")
    installed = root / "etc/systemd/system/meshha-agent.service"
    unit = tmp_path / "meshha-agent.service"
    # The installed link, seen from inside the root, is what ExecStart names.
    unit.write_text(installed.read_text().replace(UNIT_AGENT, str(root / UNIT_AGENT.lstrip("/"))))
    p = subprocess.run([tool, "verify", "--man=no", str(unit)], capture_output=True, text=True)
    complaints = [line for line in (p.stdout + p.stderr).splitlines() if unit.name in line]
    assert p.returncode == 0 and not complaints, p.stdout + p.stderr


def test_the_installed_example_passes_check_after_secrets(root: Path) -> None:
    meshctl = str(root / "usr/local/bin/meshctl")
    cfg = str(root / "etc/meshha/segment.toml")
    before = subprocess.run([meshctl, "config", "check", cfg], capture_output=True, text=True)
    assert before.returncode == 1 and "secrets/probe.key" in before.stderr
    subprocess.run(
        [meshctl, "config", "secrets", cfg],
        input="pw\n" * 6,
        text=True,
        check=True,
        capture_output=True,
    )
    after = subprocess.run([meshctl, "config", "check", cfg], capture_output=True, text=True)
    assert after.returncode == 0, after.stderr
