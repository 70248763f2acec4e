"""`meshctl config init` against real Nova (the box): the hosts of an aggregate, with the
size Placement gives them, written as a segment file that passes `meshctl config check`
once an inventory supplied the addresses and `meshctl config secrets` made the secrets."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from meshha.cli import main
from meshha.lab.nova_client import NovaBox
from tests.conftest_nova import HOST_SIZE, nova_box, nova_conn  # noqa: F401

MEMBERS = ("c1", "c2", "c3")


@pytest.fixture
def aggregate(nova_conn: Any) -> Iterator[str]:  # noqa: F811
    agg = nova_conn.compute.create_aggregate(name="init-rack")
    for h in MEMBERS:
        nova_conn.compute.add_host_to_aggregate(agg, h)
    try:
        yield "init-rack"
    finally:
        for h in MEMBERS:
            nova_conn.compute.remove_host_from_aggregate(agg, h)
        nova_conn.compute.delete_aggregate(agg)


def test_init_reads_the_aggregate_from_nova_and_the_result_checks_clean(
    nova_box: NovaBox,  # noqa: F811
    aggregate: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(nova_box.clouds_yaml("lab"))
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    runner = CliRunner()

    bare = tmp_path / "bare.toml"
    args = ["config", "init", "--cloud", "lab", "--name", "rack", "--aggregate", aggregate]
    result = runner.invoke(main, [*args, "--out", str(bare)])
    assert result.exit_code == 0, result.output
    assert "3 hosts" in result.output and "FILL-IN" in result.output
    raw = tomllib.loads(bare.read_text())
    assert [h["name"] for h in raw["hosts"]] == list(MEMBERS)
    vcpus, ram_mb, disk_gb = HOST_SIZE
    assert raw["hosts"][0]["capacity"] == {"vcpus": vcpus, "ram_mb": ram_mb, "disk_gb": disk_gb}
    assert [h["role"] for h in raw["hosts"]] == ["compute", "compute", "reserved"]
    # What Nova cannot know is named by config check, not guessed.
    check = runner.invoke(main, ["config", "check", str(bare)])
    assert check.exit_code == 1 and "FILL-IN" in check.output

    inventory = tmp_path / "inventory.toml"
    inventory.write_text(
        "".join(
            f'[hosts.{h}]\naddresses = {{ admin = "10.9.0.{i}", storage = "10.9.1.{i}", '
            f'tenant = "10.9.2.{i}" }}\nbmc = {{ address = "10.9.9.{i}" }}\n'
            for i, h in enumerate(MEMBERS, start=1)
        )
    )
    full = tmp_path / "segment.toml"
    result = runner.invoke(main, [*args, "--inventory", str(inventory), "--out", str(full)])
    assert result.exit_code == 0, result.output
    assert "FILL-IN" not in result.output
    assert runner.invoke(main, ["config", "secrets", str(full)], input="bmc\n" * 3).exit_code == 0
    check = runner.invoke(main, ["config", "check", str(full)])
    assert check.exit_code == 0, check.output


def test_an_unknown_aggregate_is_a_clear_error(
    nova_box: NovaBox,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clouds = tmp_path / "clouds.yaml"
    clouds.write_text(nova_box.clouds_yaml("lab"))
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    out = tmp_path / "x.toml"
    result = CliRunner().invoke(
        main,
        [
            "config",
            "init",
            "--cloud",
            "lab",
            "--name",
            "x",
            "--aggregate",
            "nope",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 1
    assert "no host aggregate named 'nope'" in result.output
    assert not out.exists()
