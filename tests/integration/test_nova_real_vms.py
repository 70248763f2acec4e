"""Real Nova whose instances are real QEMU domains (nova_box --real-vms).

What it proves: with one private libvirtd per simulated host, every Nova instance is a
running QEMU domain whose libvirt UUID is the instance uuid, on the host Nova says; a stop
destroys it; a host death (its libvirtd and VMs gone, its nova-compute stopped) followed
by force-down and evacuation brings the running server back as a domain on the target,
and leaves the stopped one stopped.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from meshha.lab.nova_client import NovaBox, venv_missing_reason
from meshha.recovery.nova import NovaDriver
from tests.conftest_nova import boot

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::openstack.warnings._RemovedInSDKWarning"),
]


def _running(uri: str) -> set[str]:
    import libvirt

    conn = libvirt.open(uri)
    try:
        return {d.UUIDString() for d in conn.listAllDomains() if d.isActive()}
    finally:
        conn.close()


async def test_instances_are_qemu_domains_and_follow_evacuation(tmp_path: Path) -> None:
    reason = venv_missing_reason()
    if reason:
        pytest.skip(reason)
    try:
        from meshha.lab.libvirt_setup import PrivateLibvirtd, missing_programs
    except ImportError as e:  # pragma: no cover
        pytest.skip(f"meshha.lab.libvirt_setup unavailable: {e}")
    if missing_programs():
        pytest.skip(f"missing for real VMs: {', '.join(missing_programs())}")

    cache = tmp_path / "qemu-cache"
    lvs = {h: PrivateLibvirtd(tmp_path / h, cache_dir=cache) for h in ("rv1", "rv2")}
    for lv in lvs.values():
        lv.start()
    box = NovaBox(
        ["rv1", "rv2"],
        real_vms=True,
        libvirt_uris={h: lv.uri for h, lv in lvs.items()},
        tmpdir=tmp_path / "nova",
    )
    try:
        for lv in lvs.values():
            await lv.wait_ready()
        await trio.to_thread.run_sync(box.start)
        conn = box.connect(compute_api_version="2.95")
        driver = NovaDriver(box.connect, timeout_s=60.0, poll_interval_s=0.1)
        uri1, uri2 = lvs["rv1"].uri, lvs["rv2"].uri

        ids = await boot(conn, ["rv-on", "rv-off"], "rv1")
        assert await trio.to_thread.run_sync(_running, uri1) == set(ids)
        await driver.stop(ids[1])
        assert await trio.to_thread.run_sync(_running, uri1) == {ids[0]}

        # rv1 dies: its libvirtd and VMs are gone, its nova-compute stops.
        await trio.to_thread.run_sync(lvs["rv1"].stop)
        await trio.to_thread.run_sync(box.stop_compute, "rv1")
        await driver.force_down("rv1", "meshha: rv1 fenced")
        on = await driver.evacuate(ids[0], "rv2")
        off = await driver.evacuate(ids[1], "rv2")
        assert (on.host, on.status, off.host, off.status) == ("rv2", "ACTIVE", "rv2", "SHUTOFF")
        assert await trio.to_thread.run_sync(_running, uri2) == {ids[0]}
    finally:
        box.close()
        for lv in lvs.values():
            lv.stop()
