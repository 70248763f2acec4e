"""The lab for end-to-end tests: one real mini-cloud per test module (meshha.lab.cloud).

A module says what it needs with `LAB_SPEC = LabSpec(...)` (default: 5 hosts, 1
reserved, 10 VMs). Building a lab takes about half a minute, so the tests of a module
share it and each test leaves it as it found it (hosts powered on, networks healed).
Skipped, with the reason, where the machine cannot run the lab (not root, no ipmi_sim,
libvirtd, QEMU or nova venv). Prefix "mhlt" and subnet 10.214 keep it apart from a
`meshha-lab up` on the same machine (MESHHA_LABTEST_PREFIX and MESHHA_LABTEST_SUBNET
override them, so two test runs can share a machine); the state dir is per process.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshha.lab.cloud import Cloud, LabSpec
from meshha.lab.libvirt_setup import missing_programs
from meshha.lab.netns import available
from meshha.lab.nova_client import venv_missing_reason


def _why_not() -> str | None:
    why = available() or venv_missing_reason()
    if why:
        return why
    missing = missing_programs() + [
        p for p in ("ipmi_sim", "ipmitool", "unshare", "nsenter") if shutil.which(p) is None
    ]
    return f"missing: {', '.join(missing)}" if missing else None


@pytest.fixture(scope="module")
def cloud(request: pytest.FixtureRequest) -> Iterator[Cloud]:
    why = _why_not()
    if why:
        pytest.skip(why)
    spec = getattr(request.module, "LAB_SPEC", LabSpec(vms=10))
    prefix = os.environ.get("MESHHA_LABTEST_PREFIX", "mhlt")
    subnet = os.environ.get("MESHHA_LABTEST_SUBNET", "10.214")
    spec = LabSpec(**{**spec.__dict__, "prefix": prefix, "subnet": subnet})
    c = Cloud(Path(f"/run/{prefix}-{os.getpid()}"))
    c.down(say=lambda _: None)
    try:
        c.up(spec, say=print)
        yield c
    finally:
        c.down(say=print)
