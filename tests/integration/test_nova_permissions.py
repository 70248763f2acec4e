"""Least privilege against the real Nova and Placement: the policy defaults meshha's
override files keep are the installed ones, and the agent's start-up check names the
rule of every call a non-admin credential is refused (and none for an admin one)."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import openstack
import trio

from meshha.agent.preflight import check_nova
from meshha.lab.nova_client import NovaBox, venv_python
from meshha.recovery.nova_policy import RULE_DEFAULTS
from tests.conftest_nova import nova_box  # noqa: F401

LIST_RULES = """
import json, nova.policies, placement.policies
print(json.dumps({r.name: r.check_str for m in (nova.policies, placement.policies)
                  for r in m.list_rules()}))
"""


def test_the_defaults_meshha_keeps_are_the_installed_ones(nova_box: NovaBox) -> None:  # noqa: F811
    out = subprocess.run(
        [str(venv_python()), "-c", LIST_RULES], capture_output=True, text=True, check=True
    ).stdout
    installed = json.loads(out.strip().splitlines()[-1])
    wrong = {r: (d, installed.get(r)) for r, d in RULE_DEFAULTS.items() if installed.get(r) != d}
    assert not wrong, wrong


def connector(box: NovaBox, token: str) -> Any:
    def connect() -> Any:
        kwargs = box.connect_kwargs()
        kwargs["auth"] = {**kwargs["auth"], "token": token}
        return openstack.connect(**kwargs)

    return connect


async def test_the_startup_check_names_each_refused_rule(nova_box: NovaBox) -> None:  # noqa: F811
    with trio.fail_after(60):
        assert await check_nova(connector(nova_box, "admin:admin"), "c1") == []
        problems = await check_nova(connector(nova_box, "demo:demo"), "c1")
    text = "\n".join(problems)
    assert "os_compute_api:os-services:list" in text
    assert "os_compute_api:os-hypervisors:list-detail" in text
    assert "os_compute_api:os-aggregates:index" in text
    assert all("refused (403)" in p for p in problems), problems
