"""One pysyncobj member in this process (real thread, real socket): compaction to a dump
and replay from it after a restart, bounded retention (a reader that fell behind it gets
a typed error, not a silent gap), the entry size bound, bind failure and config checks,
and the Raft port's bounds on unauthenticated input (meshha.raft.transport)."""

from __future__ import annotations

import os
import socket
import time

import pytest
import trio
from raft_harness import free_port

from meshha.errors import ConfigError, LogError
from meshha.raft.journal import open_journal
from meshha.raft.log import LogPort
from meshha.raft.pysyncobj_log import DUMP_FILE, PysyncobjLog, RaftLogConfig
from meshha.raft.transport import PortLimits

WAIT_S = 10.0


def _config(tmp_path, **kw) -> RaftLogConfig:
    port = free_port(["127.0.0.1"])
    kw.setdefault("voters", {"solo": f"127.0.0.1:{port}"})
    kw.setdefault("election_timeout_min_s", 0.2)
    kw.setdefault("election_timeout_max_s", 0.3)
    kw.setdefault("heartbeat_interval_s", 0.05)
    kw.setdefault("tick_s", 0.01)  # a lone voter commits on its next tick: keep it short
    return RaftLogConfig(me="solo", password=b"pw", data_dir=tmp_path / "raft", **kw)


def _entry(i: int) -> dict:
    return {"v": 1, "kind": "observation", "ts": 1000.0 + i, "by": "solo", "i": i}


async def _until_quorum(log: PysyncobjLog) -> None:
    with trio.fail_after(WAIT_S):
        while not log.has_quorum:
            await log.wait_change()


async def _read(log: PysyncobjLog, after: int, n: int) -> list[tuple[int, dict]]:
    got = []
    with trio.fail_after(WAIT_S):
        async for item in log.committed_from(after):
            got.append(item)
            if len(got) == n:
                return got
    raise AssertionError("unreachable")


async def test_single_voter_commits_and_is_a_log_port(tmp_path):
    log = PysyncobjLog(_config(tmp_path))
    assert isinstance(log, LogPort)
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        await _until_quorum(log)
        assert log.is_leader and log.leader == "solo" and log.term >= 1
        idx = [await log.propose(_entry(i), timeout_s=WAIT_S) for i in range(3)]
        assert log.commit_index == idx[-1]
        assert await _read(log, 0, 3) == list(zip(idx, map(_entry, range(3)), strict=True))
        assert await _read(log, idx[0], 2) == [(idx[1], _entry(1)), (idx[2], _entry(2))]
        with pytest.raises(LogError) as e:
            await log.propose({**_entry(9), "pad": "x" * 70_000}, timeout_s=1.0)
        assert e.value.kind == "too_large"
        nursery.cancel_scope.cancel()
    assert not log.status.running and not log.has_quorum


async def test_compaction_then_restart_replays_from_the_dump(tmp_path):
    config = _config(tmp_path, compaction_min_entries=20)
    async with trio.open_nursery() as nursery:
        log = PysyncobjLog(config)
        await nursery.start(log.run)
        await _until_quorum(log)
        for i in range(60):
            await log.propose(_entry(i), timeout_s=WAIT_S)
        before = await _read(log, 0, 60)
        with trio.fail_after(WAIT_S):
            while not (config.data_dir / DUMP_FILE).exists():
                await log.wait_change()  # compaction runs in the ticks after commits
                await log.propose(_entry(-1), timeout_s=WAIT_S)
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:
        log = PysyncobjLog(config)
        await nursery.start(log.run)
        assert (await _read(log, 0, 60)) == before  # from the dump, then the journal
        nursery.cancel_scope.cancel()


async def test_reader_behind_retention_gets_a_typed_error(tmp_path):
    log = PysyncobjLog(_config(tmp_path, retain_entries=10))
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        await _until_quorum(log)
        idx = [await log.propose(_entry(i), timeout_s=WAIT_S) for i in range(30)]
        with pytest.raises(LogError) as e:
            await _read(log, 0, 1)
        assert e.value.kind == "truncated"
        tail = await _read(log, idx[-5], 4)  # within retention: fine
        assert [i for i, _ in tail] == idx[-4:]
        nursery.cancel_scope.cancel()


async def test_port_in_use_is_a_bind_error(tmp_path):
    config = _config(tmp_path)
    host, port = config.voters["solo"].rsplit(":", 1)
    with socket.socket() as squatter:
        squatter.bind((host, int(port)))
        squatter.listen()
        t0 = time.monotonic()
        with pytest.raises(LogError) as e:
            await PysyncobjLog(config).run()
        assert e.value.kind == "bind" and time.monotonic() - t0 < WAIT_S


def test_config_is_checked(tmp_path):
    with pytest.raises(ConfigError) as e:
        PysyncobjLog(
            _config(
                tmp_path,
                voters={"solo": "nowhere"},
                election_timeout_min_s=0.2,
                election_timeout_max_s=0.4,
                heartbeat_interval_s=0.1,
            )
        )
    msg = str(e.value)
    assert "not ip:port" in msg and "3 x heartbeat" in msg
    with pytest.raises(ConfigError, match="password"):
        RaftLogConfig(me="a", voters={"a": "127.0.0.1:1"}, password="", data_dir=tmp_path).check()


def _attacker(source_ip: str, target: str) -> socket.socket:
    host, port = target.rsplit(":", 1)
    s = socket.socket()
    s.bind((source_ip, 0))
    s.settimeout(WAIT_S)
    s.connect((host, int(port)))
    return s


def _closed_by_peer(s: socket.socket) -> bool:
    """Wait (up to the socket's timeout) until the member closes this connection."""
    try:
        while s.recv(4096):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


async def test_raft_port_bounds_unauthenticated_input(tmp_path):
    """Directly against one member's port, from an address that is not a voter's: a
    2 GiB length prefix is refused after its 4 bytes, garbage in a small frame too,
    silent connections beyond the per-address cap are closed at once and the rest at
    the handshake timeout, and admissions past the accept rate pause the listener."""
    limits = PortLimits(
        handshake_timeout_s=0.5, max_pending_per_ip=4, accept_rate_per_s=5, accept_burst=8
    )
    log = PysyncobjLog(_config(tmp_path, port_limits=limits))
    target = log.config.voters["solo"]
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        await _until_quorum(log)

        def attack() -> dict[str, int]:
            out = {}
            with _attacker("127.0.0.2", target) as s:
                s.sendall(b"\xff\xff\xff\x7f" + b"A" * 1024)
                out["huge_closed"] = _closed_by_peer(s)
            with _attacker("127.0.0.2", target) as s:
                s.sendall(b"\x20\x00\x00\x00" + os.urandom(32))
                out["garbage_closed"] = _closed_by_peer(s)
            silent = [_attacker("127.0.0.3", target) for _ in range(7)]
            t0 = time.monotonic()
            out["silent_closed"] = sum(_closed_by_peer(s) for s in silent)
            out["silent_s"] = time.monotonic() - t0
            for s in silent:
                s.close()
            # Many addresses, one silent connection each: only the accept rate holds them.
            many = [_attacker(f"127.0.1.{i}", target) for i in range(1, 30)]
            out["many_closed"] = sum(_closed_by_peer(s) for s in many)
            for s in many:
                s.close()
            return out

        out = await trio.to_thread.run_sync(attack)
        counters = log.port_counters
        print(f"\nattack: {out}; port: {counters}")
        assert out["huge_closed"] and out["garbage_closed"]
        assert counters["oversized_frames"] >= 1 and counters["bad_frames"] >= 1
        assert out["silent_closed"] == 7 and out["silent_s"] < 5  # 3 at once, 4 at 0.5 s
        assert counters["handshake_timeouts"] >= 4 and counters["refused_connections"] >= 3
        assert out["many_closed"] == 29 and counters["paused_s"] > 0
        assert log.is_leader and log.has_quorum  # and it still commits
        await log.propose(_entry(1), timeout_s=WAIT_S)
        nursery.cancel_scope.cancel()


def test_pysyncobj_journal_is_imported_once(tmp_path):
    """A data dir written by the previous build (pysyncobj's own journal) is imported
    into the durable journal at start, and the old file is set aside."""
    from pysyncobj.journal import FileJournal

    config = _config(tmp_path)
    config.data_dir.mkdir(parents=True)
    old = FileJournal(str(config.data_dir / "raft.journal"))
    for idx, cmd in enumerate((b"\x00noop", b"\x01a", b"\x01b"), start=1):
        old.add(cmd, idx, 2)
    old.setCurrentTerm(3, "127.0.0.12:1")
    old.setRaftCommitIndex(2)
    old.onOneSecondTimer()
    old._destroy()
    journal = open_journal(config.data_dir)
    assert journal[:] == [(b"\x00noop", 1, 2), (b"\x01a", 2, 2), (b"\x01b", 3, 2)]
    assert (journal.getCurrentTerm(), journal.getVotedForNodeId()) == (3, "127.0.0.12:1")
    assert journal.getRaftCommitIndex() == 2 and not journal.dirty
    assert not (config.data_dir / "raft.journal").exists()
    assert (config.data_dir / "raft.journal.imported").exists()
    assert open_journal(config.data_dir)[:] == journal[:]  # once: now from raft.wal
