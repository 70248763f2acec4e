"""A module-scoped `cloud` fixture for the user-story modules (test_operations,
test_brake, test_leader_loss): conftest's lab, plus two switches for working on them.

- MESHHA_LABTEST_LOGS=DIR: before the lab is taken down, every host's logs (agent,
  libvirtd, nova-compute), Nova's, the lab daemon's and the alerts it received are copied
  to DIR/<module>/ (a failed lab run can be read afterwards).
- MESHHA_LABTEST_REUSE=STATE: run against a lab already up in STATE (built with
  `meshha-lab up` or meshha.lab.cloud) instead of building one; it is left up.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshha.lab.cloud import Cloud, LabSpec
from tests.lab.conftest import _why_not


def lab(request: pytest.FixtureRequest, spec: LabSpec) -> Iterator[Cloud]:
    why = _why_not()
    if why:
        pytest.skip(why)
    reuse = os.environ.get("MESHHA_LABTEST_REUSE")
    if reuse:
        yield Cloud(Path(reuse))
        return
    prefix = os.environ.get("MESHHA_LABTEST_PREFIX", "mhlt")
    subnet = os.environ.get("MESHHA_LABTEST_SUBNET", "10.214")
    spec = LabSpec(**{**spec.__dict__, "prefix": prefix, "subnet": subnet})
    c = Cloud(Path(f"/run/{prefix}-{os.getpid()}"))
    c.down(say=lambda _: None)
    try:
        c.up(spec, say=print)
        yield c
    finally:
        keep = os.environ.get("MESHHA_LABTEST_LOGS")
        if keep and c.exists:
            save_logs(c, Path(keep) / request.module.__name__.rsplit(".", 1)[-1])
        c.down(say=print)


def save_logs(cloud: Cloud, into: Path) -> None:
    shutil.rmtree(into, ignore_errors=True)
    into.mkdir(parents=True)
    for h in cloud.hosts:
        src = cloud.host_dir(h) / "logs"
        if src.exists():
            shutil.copytree(src, into / h)
    for name in ("nova.log", "labd.log", "alerts.jsonl", "lab.json"):
        if (cloud.state / name).exists():
            shutil.copy(cloud.state / name, into / name)
