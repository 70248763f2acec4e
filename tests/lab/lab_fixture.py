"""The lab every tests/lab module runs on (conftest's `cloud` fixture calls `lab`), with
two switches for working on them.

- MESHHA_LABTEST_LOGS=DIR: before the lab is taken down, every host's logs (agent,
  libvirtd, nova-compute), Nova's, the lab daemon's and the alerts it received are copied
  to DIR/<module>/ (a failed lab run can be read afterwards).
- MESHHA_LABTEST_REUSE=STATE: run against a lab already up in STATE (built with
  `meshha-lab up` or meshha.lab.cloud) instead of building one; it is left up.
- MESHHA_LABTEST_PROFILE=lan-safe: the agents on that timing profile instead of the
  shipped example's (lan-fast), each host's watchdog as that profile wants it
  (meshha.lab.cloud.PROFILE_WATCHDOG_S; a module's shorter one is kept). A module that
  sets a profile of its own keeps it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshha.lab.cloud import PROFILE_WATCHDOG_S, Cloud, LabSpec
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


def lab(
    request: pytest.FixtureRequest,
    spec: LabSpec,
    *,
    prefix: str = "mhlt",
    subnet: str = "10.214",
) -> Iterator[Cloud]:
    """Build the lab `spec` asks for under `prefix`/`subnet` (MESHHA_LABTEST_PREFIX and
    MESHHA_LABTEST_SUBNET override them), yield it, take it down (saving its logs first
    with MESHHA_LABTEST_LOGS); skipped, with the reason, where the lab cannot run."""
    why = _why_not()
    if why:
        pytest.skip(why)
    reuse = os.environ.get("MESHHA_LABTEST_REUSE")
    if reuse:
        yield Cloud(Path(reuse))
        return
    prefix = os.environ.get("MESHHA_LABTEST_PREFIX", prefix)
    subnet = os.environ.get("MESHHA_LABTEST_SUBNET", subnet)
    spec = LabSpec(**{**spec.__dict__, "prefix": prefix, "subnet": subnet})
    profile = os.environ.get("MESHHA_LABTEST_PROFILE")
    if profile and spec.profile == LabSpec.profile and profile != spec.profile:
        watchdog_s = PROFILE_WATCHDOG_S[profile]
        if spec.watchdog_s != LabSpec.watchdog_s:  # a module's own: none, or a shorter one
            watchdog_s = min(spec.watchdog_s, watchdog_s)
        spec = LabSpec(**{**spec.__dict__, "profile": profile, "watchdog_s": watchdog_s})
    c = Cloud(Path(f"/run/{prefix}-{os.getpid()}"))
    c.down(say=lambda _: None)
    try:
        c.up(spec, say=print)
        yield c
    finally:
        keep = os.environ.get("MESHHA_LABTEST_LOGS")
        if keep and c.exists:
            c.save_logs(Path(keep) / request.module.__name__.rsplit(".", 1)[-1])
        c.down(say=print)
