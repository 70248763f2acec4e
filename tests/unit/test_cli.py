"""meshctl: config check and the simulator, through the real click entry point."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner

from meshha.cli import main

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "segment.example.toml"


def _example(tmp_path: Path) -> Path:
    cfg = tmp_path / "segment.toml"
    shutil.copy(EXAMPLE, cfg)
    import tomllib

    data = tomllib.loads(cfg.read_text())
    files = {data["segment"]["probe_key_file"], data["raft"]["password_file"]}
    files |= {h["bmc"]["password_file"] for h in data["hosts"] if "bmc" in h}
    smtp = data.get("alerts", {}).get("smtp", {})
    if "password_file" in smtp:
        files.add(smtp["password_file"])
    for f in files:
        p = tmp_path / f
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("s3cret-value-for-tests-0123456789\n")
        p.chmod(0o600)
    return cfg


def test_config_check_ok(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["config", "check", str(_example(tmp_path))])
    assert res.exit_code == 0, res.output
    assert "OK" in res.output


def test_config_check_reports_key_path_and_fails(tmp_path: Path) -> None:
    cfg = _example(tmp_path)
    cfg.write_text(cfg.read_text().replace('"10.0.0.11"', '"10.0.0.300"', 1))
    res = CliRunner().invoke(main, ["config", "check", str(cfg)])
    assert res.exit_code == 1
    assert "not an IP address: '10.0.0.300'" in res.output
    assert "s3cret" not in res.output


def test_sim_prints_timeline_and_summary() -> None:
    res = CliRunner().invoke(
        main, ["sim", "--hosts", "5", "--scenario", "host-power-off", "--seed", "1"]
    )
    assert res.exit_code == 0, res.output
    assert "FAULT     power-off host2" in res.output
    assert "VERDICT   host2 failed" in res.output
    assert "EVACUATE host2-vm1" in res.output
    last = res.output.strip().splitlines()[-1]
    assert last.startswith("OK; seed 1") and "0 invariant violations" in last


def test_sim_json_lines() -> None:
    res = CliRunner().invoke(main, ["sim", "--scenario", "host-power-off", "--seed", "2", "--json"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.output.strip().splitlines()]
    assert rows[-1]["type"] == "summary" and rows[-1]["ok"] is True
    assert any(r["type"] == "verdict" and r.get("verdict") == "failed" for r in rows)


def test_sim_list_and_random() -> None:
    res = CliRunner().invoke(main, ["sim", "--list"])
    assert res.exit_code == 0 and "host-power-off" in res.output
    res = CliRunner().invoke(main, ["sim", "--random", "3", "--seed", "11"])
    assert res.exit_code == 0, res.output
    assert "3 random schedules from seed 11: 0 violated an invariant" in res.output


def test_sim_unknown_scenario_is_a_clear_error() -> None:
    res = CliRunner().invoke(main, ["sim", "--scenario", "no-such-thing"])
    assert res.exit_code != 0
    assert "no scenario 'no-such-thing'" in res.output
