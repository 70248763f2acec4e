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

from collections.abc import Iterator

import pytest

from meshha.lab.cloud import Cloud, LabSpec
from tests.lab.lab_fixture import _why_not, lab

__all__ = ["_why_not", "cloud"]


@pytest.fixture(scope="module")
def cloud(request: pytest.FixtureRequest) -> Iterator[Cloud]:
    yield from lab(request, getattr(request.module, "LAB_SPEC", LabSpec(vms=10)))
