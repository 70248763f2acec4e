"""meshha-agent with a data dir it cannot use exits 2 with a message naming the path and
the errno (or what is wrong with the journal), never a traceback: a data dir on a
read-only file system (a real read-only tmpfs mount), one that exists there already,
and a Raft journal that is not one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshha.lab.segment_files import write_segment
from meshha.raft.journal import JOURNAL_FILE

AGENT = Path(sys.executable).parent / "meshha-agent"
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs: needs root")


def config(d: Path) -> Path:
    hosts = [(h, {"admin": f"127.0.0.{i}"}) for i, h in enumerate(("host1", "host2", "host3"), 1)]
    return write_segment(d, hosts, networks={"admin": "alert"}, raft_port=1, probe_port0=2)


def agent(cfg: Path, data_dir: Path, tmp_path: Path) -> tuple[int, str, str]:
    argv = [str(AGENT), "--config", str(cfg), "--host", "host1", "--data-dir", str(data_dir)]
    p = subprocess.run(
        [*argv, "--control", str(tmp_path / "c.sock")],
        capture_output=True,
        timeout=60,
    )
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs holding data/host1/ (created while writable), then remounted read-only."""
    mnt = tmp_path / "ro"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=700", "none", str(mnt)], check=True)
    try:
        (mnt / "existing" / "host1").mkdir(parents=True, mode=0o700)
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.parametrize("which", ["to create", "existing"])
def test_read_only_data_dir_exits_2_naming_path_and_errno(
    read_only: Path, tmp_path: Path, which: str
) -> None:
    data_dir = read_only / ("new" if which == "to create" else "existing")
    code, out, err = agent(config(tmp_path / "cfg"), data_dir, tmp_path)
    assert code == 2, out + err
    assert "Traceback" not in out + err, out + err
    assert str(data_dir) in err and "EROFS" in err and "read-only" in err.lower(), err
    assert not (tmp_path / "c.sock").exists()


def test_unreadable_journal_exits_2_naming_it(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    (data_dir / "host1").mkdir(parents=True)
    journal = data_dir / "host1" / JOURNAL_FILE
    journal.write_bytes(b"not a journal at all, " * 8)
    code, out, err = agent(config(tmp_path / "cfg"), data_dir, tmp_path)
    assert code == 2, out + err
    assert "Traceback" not in out + err, out + err
    assert str(journal) in err and "journal" in err, err
