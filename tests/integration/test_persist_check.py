"""The ledger's periodic disk check (meshha.agent.persist `probe_dir`, `PersistWatch`
`checks`) on a real small filesystem: a tmpfs mounted for the test (root only). A full
disk and a read-only one are each found with no write of the ledger's own, named with
the path and errno, and the problem ends once the disk takes writes again."""

from __future__ import annotations

import errno
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import trio

from meshha.agent.persist import PersistWatch, probe_dir

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs: root only"),
]


@pytest.fixture
def small_fs(tmp_path: Path):
    mnt = tmp_path / f"mhpersist-{uuid.uuid4().hex[:8]}"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "mhpersist", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(path: Path) -> None:
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=64k"], capture_output=True, check=False)


def test_probe_dir_finds_a_full_and_a_read_only_disk(small_fs: Path) -> None:
    ledger = small_fs / "ledger.sqlite"
    ledger.write_bytes(b"x" * 100)  # an existing file keeps its blocks: not a test
    assert probe_dir("ledger", ledger) is None
    _fill(small_fs / "filler")
    p = probe_dir("ledger", ledger)
    assert p is not None and p.errno == errno.ENOSPC and p.path == str(ledger)
    assert "ENOSPC" in p.describe() or "No space" in p.describe()
    (small_fs / "filler").unlink()
    assert probe_dir("ledger", ledger) is None
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    try:
        p = probe_dir("ledger", ledger)
        assert p is not None and p.errno == errno.EROFS
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
    assert sorted(x.name for x in small_fs.iterdir()) == ["ledger.sqlite"]  # nothing left


async def test_the_watch_reports_a_full_disk_with_nothing_written(small_fs: Path) -> None:
    ledger = small_fs / "ledger.sqlite"
    ledger.write_bytes(b"")
    w = PersistWatch("seg", "host2")
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: w.run({}, task_status, checks={"ledger": ledger}, check_every_s=0.1)
        )
        _fill(small_fs / "filler")
        with trio.fail_after(10):
            while w.report()["ok"]:
                await w.wait_change()
        problem = w.report()["problems"][0]
        assert (problem["what"], problem["errno"], problem["path"]) == (
            "ledger",
            "ENOSPC",
            str(ledger),
        )
        assert w.report()["voting"]  # the ledger alone does not stop voting
        (small_fs / "filler").unlink()
        with trio.fail_after(10):
            while not w.report()["ok"]:
                await w.wait_change()
        nursery.cancel_scope.cancel()
