"""The table of Nova/Placement calls (meshha/recovery/nova_policy.py) stays true: every
openstacksdk call meshha's code makes is in it, and the shipped doc and oslo.policy
overrides are exactly what it renders."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import meshha
from meshha.recovery.nova_policy import CALLS, RULE_DEFAULTS, by_sdk, render_doc, render_policy

ROOT = Path(meshha.__file__).parent.parent
PROXY_CALL = re.compile(r"\b(?:_compute\(\)|compute)\.([a-z_]+)\(")
PLACEMENT_GET = re.compile(r"placement\.get\(f?\"(/resource_providers/\{[a-z_]+\}/([a-z]+))\"")
NOT_CALLS = {"default_microversion"}


def sdk_calls_in_code() -> set[str]:
    found = set()
    for path in (ROOT / "meshha").rglob("*.py"):
        if "lab" in path.parts or "sim" in path.parts:
            continue
        text = path.read_text()
        found |= {m for m in PROXY_CALL.findall(text) if m not in NOT_CALLS}
        found |= {
            f"placement GET /resource_providers/{{uuid}}/{w}"
            for _, w in PLACEMENT_GET.findall(text)
        }
    return found


def test_every_nova_call_in_the_code_is_in_the_table() -> None:
    calls = sdk_calls_in_code()
    assert "evacuate_server" in calls and "update_service" in calls  # the scan sees them
    missing = calls - set(by_sdk())
    assert not missing, f"add these to meshha/recovery/nova_policy.py: {sorted(missing)}"


def test_every_rule_has_its_default() -> None:
    rules = {r for c in CALLS for r in c.rules}
    assert rules == set(RULE_DEFAULTS)


@pytest.mark.parametrize(
    ("path", "render"),
    [
        ("docs/nova-permissions.md", render_doc),
        ("config/keystone/nova-policy.yaml", lambda: render_policy("nova")),
        ("config/keystone/placement-policy.yaml", lambda: render_policy("placement")),
    ],
)
def test_the_shipped_files_are_what_the_table_renders(path: str, render: object) -> None:
    assert callable(render)
    assert (ROOT / path).read_text() == render(), (
        f"{path} is stale: python -m meshha.recovery.nova_policy doc|nova|placement > {path}"
    )


def test_an_override_keeps_every_default() -> None:
    for line in render_policy("nova").splitlines():
        if line.startswith('"'):
            rule, check = (ast.literal_eval(x) for x in line.split(": ", 1))
            assert check == f"({RULE_DEFAULTS[rule]}) or role:meshha"
