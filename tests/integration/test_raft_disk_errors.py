"""Disk errors under the Raft journal are a typed error the member survives.

One pysyncobj member in this process (real thread, real socket), its data dir on a small
tmpfs mounted for the test (root only). A full filesystem (ENOSPC) and a read-only one
(EROFS) each: the member does not crash; `persist_error` is a `JournalError` naming the
journal's path and errno; while it lasts the member reports no leader and no quorum
(it neither votes nor acknowledges) and refuses proposals saying why; once the disk is
writable again it resumes by itself, and nothing committed before, nor the entry that
was in flight, is lost (also across a restart).
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import uuid

import pytest
import trio
from raft_harness import free_port

from meshha.errors import LogError
from meshha.raft.journal import JournalError
from meshha.raft.pysyncobj_log import JOURNAL_FILE, PysyncobjLog, RaftLogConfig

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs: root only"),
]
WAIT_S = 10.0


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / f"mhraft-fs-{uuid.uuid4().hex[:8]}"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "mhraft", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _config(data_dir) -> RaftLogConfig:
    port = free_port(["127.0.0.1"])
    return RaftLogConfig(
        me="solo",
        voters={"solo": f"127.0.0.1:{port}"},
        password=b"pw",
        data_dir=data_dir,
        election_timeout_min_s=0.2,
        election_timeout_max_s=0.3,
        heartbeat_interval_s=0.05,
        tick_s=0.01,
        persist_retry_s=0.1,
    )


def _entry(i: int) -> dict:
    # 20 kB: more than the slack in the journal's last page of a full tmpfs
    return {
        "v": 1,
        "kind": "observation",
        "ts": 1000.0 + i,
        "by": "solo",
        "i": i,
        "pad": "x" * 20_000,
    }


async def _until(log: PysyncobjLog, cond) -> None:
    with trio.fail_after(WAIT_S):
        while not cond():
            await log.wait_change()


async def _read_all(log: PysyncobjLog, n: int) -> list[int]:
    got: list[int] = []
    with trio.fail_after(WAIT_S):
        async for _, e in log.committed_from(0):
            got.append(e["i"])
            if len(got) == n:
                return got
    raise AssertionError("unreachable")


def _fill(mnt) -> None:
    with open(mnt / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)


async def test_full_disk_is_a_typed_error_and_recovers(small_fs):
    config = _config(small_fs / "raft")
    async with trio.open_nursery() as nursery:
        log = PysyncobjLog(config)
        await nursery.start(log.run)
        await _until(log, lambda: log.has_quorum)
        for i in range(5):
            await log.propose(_entry(i), timeout_s=WAIT_S)
        _fill(small_fs)
        with pytest.raises(LogError):  # in flight when the disk filled: outcome unknown
            await log.propose(_entry(5), timeout_s=1.0)
        await _until(log, lambda: log.persist_error is not None)
        err = log.persist_error
        assert isinstance(err, JournalError) and err.kind == "disk_full"
        assert err.errno == errno.ENOSPC and err.path == config.data_dir / JOURNAL_FILE
        assert "ENOSPC" in str(err) and str(err.path) in str(err)
        status = log.status
        assert status.running and not status.has_quorum and not status.is_leader
        assert status.leader is None and status.persist_error == str(err)
        with pytest.raises(LogError) as refused:
            await log.propose(_entry(99), timeout_s=1.0)
        assert refused.value.kind == "no_quorum" and "ENOSPC" in str(refused.value)
        (small_fs / "filler").unlink()
        await _until(log, lambda: log.persist_error is None and log.has_quorum)
        await log.propose(_entry(6), timeout_s=WAIT_S)
        assert await _read_all(log, 7) == [0, 1, 2, 3, 4, 5, 6]  # 5 committed once written
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:  # and all of it is on disk
        log = PysyncobjLog(config)
        await nursery.start(log.run)
        assert await _read_all(log, 7) == [0, 1, 2, 3, 4, 5, 6]
        nursery.cancel_scope.cancel()


async def test_read_only_disk_is_a_typed_error_and_recovers(small_fs):
    config = _config(small_fs / "raft")
    async with trio.open_nursery() as nursery:
        log = PysyncobjLog(config)
        await nursery.start(log.run)
        await _until(log, lambda: log.has_quorum)
        for i in range(3):
            await log.propose(_entry(i), timeout_s=WAIT_S)
        nursery.cancel_scope.cancel()
    await trio.run_process(["mount", "-o", "remount,ro", str(small_fs)])
    async with trio.open_nursery() as nursery:
        log = PysyncobjLog(config)  # loads from the read-only disk; its first vote cannot persist
        await nursery.start(log.run)
        await _until(log, lambda: log.persist_error is not None)
        err = log.persist_error
        assert isinstance(err, JournalError) and err.kind == "read_only"
        assert err.errno == errno.EROFS and not log.has_quorum and not log.is_leader
        assert await _read_all(log, 3) == [0, 1, 2]  # what was committed is still served
        await trio.run_process(["mount", "-o", "remount,rw", str(small_fs)])
        await _until(log, lambda: log.persist_error is None and log.has_quorum)
        await log.propose(_entry(3), timeout_s=WAIT_S)
        assert await _read_all(log, 4) == [0, 1, 2, 3]
        nursery.cancel_scope.cancel()


def test_a_disk_that_fills_while_nothing_is_written_is_found_by_the_probe(small_fs):
    """A quiet journal (nothing to write) still finds out, within `probe_every_s` of its
    one-second timer, that its directory cannot take a new block: `sync` fails with
    ENOSPC and the journal stays dirty (nothing acknowledged) until it can write again."""
    from meshha.raft.journal import DurableJournal

    j = DurableJournal(small_fs / JOURNAL_FILE, probe_every_s=3)
    j.add(b"x", 1, 1)
    assert j.sync() and not j.dirty
    _fill(small_fs)
    assert j.sync() and not j.dirty  # nothing due yet: no write, nothing noticed
    for _ in range(3):
        j.onOneSecondTimer()
    assert j.dirty  # a probe is due: acknowledgements wait for it
    assert not j.sync()
    err = j.persist_error
    assert err is not None and err.errno == errno.ENOSPC and err.kind == "disk_full"
    assert j.dirty and not j.sync()  # retried on every sync while it lasts
    (small_fs / "filler").unlink()
    assert j.sync() and j.persist_error is None and not j.dirty
    assert not (small_fs / (JOURNAL_FILE + ".probe")).exists()
    assert DurableJournal(small_fs / JOURNAL_FILE)[:] == [(b"x", 1, 1)]


def test_a_disk_remounted_read_only_while_quiet_is_found_by_the_probe(small_fs):
    from meshha.raft.journal import DurableJournal

    j = DurableJournal(small_fs / JOURNAL_FILE, probe_every_s=1)
    j.add(b"x", 1, 1)
    assert j.sync()
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    try:
        j.onOneSecondTimer()
        assert not j.sync()
        assert j.persist_error is not None and j.persist_error.errno == errno.EROFS
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_fs)], check=True)
    assert j.sync() and j.persist_error is None
