"""`meshctl config init` / `meshctl config secrets` without Nova: the rendered segment
file, the roles and voters chosen, and the shipped example passing `meshctl config check`
once its secrets exist. (tests/integration/test_config_init.py reads a real Nova.)"""

from __future__ import annotations

import shutil
import stat
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from meshha.cli import main
from meshha.config.bootstrap import (
    FILL_IN,
    HostSeed,
    InventoryHost,
    choose_voters,
    render_segment,
    secret_files,
)
from meshha.config.load import check_file
from meshha.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "segment.example.toml"
SEEDS = [HostSeed(f"cmp-{i}", 32, 131072, 900, "az1", ("rack-a",)) for i in (3, 1, 2, 4)]


def test_voters_are_an_odd_number_up_to_five() -> None:
    assert choose_voters(["a", "b", "c"]) == {"a", "b", "c"}
    assert choose_voters(["a", "b", "c", "d"]) == {"a", "b", "c"}
    assert len(choose_voters([f"h{i:02}" for i in range(12)])) == 5


def test_a_rendered_file_lists_every_host_with_its_size_and_leaves_the_unknown_to_fill_in() -> None:
    text = render_segment("rack-a", SEEDS, cloud="prod", reserved=1)
    raw = tomllib.loads(text)
    hosts = raw["hosts"]
    assert [h["name"] for h in hosts] == ["cmp-1", "cmp-2", "cmp-3", "cmp-4"]
    assert [h["role"] for h in hosts] == ["compute", "compute", "compute", "reserved"]
    assert [h["voter"] for h in hosts] == [True, True, True, False]
    assert hosts[0]["capacity"] == {"vcpus": 32, "ram_mb": 131072, "disk_gb": 900}
    assert hosts[0]["addresses"] == {"admin": FILL_IN, "storage": FILL_IN, "tenant": FILL_IN}
    assert raw["nova"]["cloud"] == "prod"


def test_an_inventory_fills_in_addresses_and_bmcs(tmp_path: Path) -> None:
    inv = {
        h.name: InventoryHost(
            {"admin": f"10.0.0.{i}", "storage": f"10.0.1.{i}", "tenant": f"10.0.2.{i}"},
            bmc_address=f"10.0.9.{i}",
        )
        for i, h in enumerate(SEEDS, start=1)
    }
    text = render_segment("rack-a", SEEDS, cloud="prod", reserved=["cmp-2"], inventory=inv)
    assert FILL_IN not in text
    cfg = tmp_path / "segment.toml"
    cfg.write_text(text)
    runner = CliRunner()
    created = runner.invoke(main, ["config", "secrets", str(cfg)], input="bmc\n" * 4)
    assert created.exit_code == 0, created.output
    checked = runner.invoke(main, ["config", "check", str(cfg)])
    assert checked.exit_code == 0, checked.output


def test_unknown_reserved_names_and_tiny_segments_are_refused() -> None:
    with pytest.raises(ConfigError, match="nope"):
        render_segment("s", SEEDS, cloud="c", reserved=["nope"])
    with pytest.raises(ConfigError, match="at least 3 hosts"):
        render_segment("s", SEEDS[:2], cloud="c")


def test_without_its_secrets_the_example_fails_check_and_with_them_it_passes(
    tmp_path: Path,
) -> None:
    cfg = tmp_path / "segment.toml"
    shutil.copy(EXAMPLE, cfg)
    assert any("probe_key_file" in p for p in check_file(cfg))
    runner = CliRunner()
    result = runner.invoke(main, ["config", "secrets", str(cfg)], input="pw\n" * 6)
    assert result.exit_code == 0, result.output
    assert check_file(cfg) == []
    for path, _, _ in secret_files(cfg):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == 0o600, (path, oct(mode))
    assert stat.S_IMODE((tmp_path / "secrets").stat().st_mode) == 0o700
    # The shared keys are generated and long enough; what was typed is never echoed.
    assert len((tmp_path / "secrets" / "probe.key").read_bytes().strip()) >= 32
    assert "pw\n" not in result.stdout


def test_existing_secrets_are_left_alone(tmp_path: Path) -> None:
    cfg = tmp_path / "segment.toml"
    shutil.copy(EXAMPLE, cfg)
    (tmp_path / "secrets").mkdir(mode=0o700)
    key = tmp_path / "secrets" / "probe.key"
    key.write_bytes(b"k" * 40)
    key.chmod(0o600)
    result = CliRunner().invoke(main, ["config", "secrets", str(cfg)], input="pw\n" * 6)
    assert result.exit_code == 0, result.output
    assert key.read_bytes() == b"k" * 40
    assert "exists, left as it is" in result.output


def test_an_empty_password_is_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "segment.toml"
    shutil.copy(EXAMPLE, cfg)
    result = CliRunner().invoke(main, ["config", "secrets", str(cfg)], input="\n" * 6)
    assert result.exit_code != 0
