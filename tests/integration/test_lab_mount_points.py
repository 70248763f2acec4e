"""`meshha-lab down` keeps a mount point another lab's host still mounts (root only).

Two labs on one machine share the mount points their hosts bind-mount their own
directories on (/etc/meshha, /run/meshha, ...). The lab that created one used to remove
it at `down` when empty in the root namespace, and Linux then detached that mount in
every other namespace: the other lab's agents lost their control sockets mid-test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from meshha.lab.cloud import Cloud, mounted_elsewhere

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare"
)


def test_down_keeps_a_mount_point_another_namespace_uses(tmp_path: Path) -> None:
    src, point = tmp_path / "src", tmp_path / "point"
    src.mkdir()
    point.mkdir()
    (src / "control.sock").touch()
    holder = subprocess.Popen(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            f"mount --bind {src} {point} && echo ready && exec sleep 600",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        assert mounted_elsewhere(str(point))
        cloud = Cloud(tmp_path / "state")
        cloud.desc = {"hosts": [], "made_dirs": [str(point)]}
        cloud.down(say=lambda _: None)
        assert point.is_dir()
        seen = subprocess.run(
            ["nsenter", "-t", str(holder.pid), "-m", "ls", str(point)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert seen.stdout.split() == ["control.sock"], seen
    finally:
        holder.kill()
        holder.wait()
    assert not mounted_elsewhere(str(point))
    cloud = Cloud(tmp_path / "state")
    cloud.desc = {"hosts": [], "made_dirs": [str(point)]}
    cloud.down(say=lambda _: None)
    assert not point.exists()  # nobody mounts it any more: removed as before
