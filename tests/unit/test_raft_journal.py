"""The durable Raft journal (meshha.raft.journal) on a real file: what is on disk after
a sync and only then, truncation and compaction replayed, a torn tail cut off (and never
read back later as records), a failed sync that keeps everything and succeeds later."""

from __future__ import annotations

import os
import random

import pytest

from meshha.raft.journal import HEADER, DurableJournal, JournalError


def _cmd(i: int) -> bytes:
    return b"\x00cmd-%d" % i + bytes(random.Random(i).randrange(256) for _ in range(i % 50))


def _fill(j: DurableJournal, first: int, last: int, term: int = 1) -> None:
    for i in range(first, last + 1):
        j.add(_cmd(i), i, term)


def test_only_synced_records_are_on_disk(tmp_path):
    path = tmp_path / "raft.wal"
    j = DurableJournal(path)
    _fill(j, 1, 5)
    j.setCurrentTerm(3, "127.0.0.11:4000")
    assert j.dirty
    assert DurableJournal(path)[:] == []  # nothing written before sync
    synced = []
    j._on_synced = lambda p, size: synced.append(size)
    assert j.sync() and not j.dirty
    assert synced == [path.stat().st_size]
    j.add(_cmd(6), 6, 3)  # not synced: not there after a "crash" (a fresh load)
    again = DurableJournal(path)
    assert again[:] == [(_cmd(i), i, 1) for i in range(1, 6)]
    assert (again.getCurrentTerm(), again.getVotedForNodeId()) == (3, "127.0.0.11:4000")
    j.setCurrentTerm(4, None)
    assert j.sync()
    again = DurableJournal(path)
    assert len(again) == 6 and again.getVotedForNodeId() is None and again.getCurrentTerm() == 4


def test_truncation_and_compaction_replay(tmp_path):
    path = tmp_path / "raft.wal"
    j = DurableJournal(path)
    _fill(j, 1, 10)
    j.sync()
    j.deleteEntriesFrom(6)  # a follower drops a conflicting suffix: indexes 7..10
    _fill(j, 7, 8, term=2)
    j.setRaftCommitIndex(5)
    j.onOneSecondTimer()
    j.sync()
    want = [(_cmd(i), i, 1) for i in range(1, 7)] + [(_cmd(i), i, 2) for i in (7, 8)]
    assert DurableJournal(path)[:] == want
    assert DurableJournal(path).getRaftCommitIndex() == 5
    j.deleteEntriesTo(4)  # compaction: the dump covers 1..4
    assert j.dirty
    j.sync()
    assert DurableJournal(path)[:] == want[4:]
    j.clear()  # a snapshot installed from the leader
    j.add(_cmd(40), 40, 3)
    j.add(_cmd(41), 41, 3)
    j.sync()
    assert DurableJournal(path)[:] == [(_cmd(40), 40, 3), (_cmd(41), 41, 3)]
    assert not path.with_name("raft.wal.tmp").exists()


def test_torn_tail_is_cut_and_never_read_back(tmp_path):
    path = tmp_path / "raft.wal"
    j = DurableJournal(path)
    _fill(j, 1, 3)
    j.sync()
    good = path.stat().st_size
    # Records 4 and 5 written but never synced; a power cut kept record 5's page and
    # tore record 4's: garbage where 4 was, a whole valid record 5 after it.
    _fill(j, 4, 5)
    j.sync()
    data = bytearray(path.read_bytes())
    start4 = good
    data[start4 + 10 : start4 + 14] = b"\xde\xad\xbe\xef"
    path.write_bytes(bytes(data))
    after_cut = DurableJournal(path)
    assert [e[1] for e in after_cut] == [1, 2, 3]
    assert after_cut.dirty  # the tail is cut before anything new is written
    after_cut.add(_cmd(4), 4, 2)  # same length as the torn record 4
    assert after_cut.sync()
    # Record 5 of term 1 must not come back after the new record 4 of term 2.
    assert DurableJournal(path)[:] == [*[(_cmd(i), i, 1) for i in (1, 2, 3)], (_cmd(4), 4, 2)]


def test_random_torn_tails_always_load_a_synced_prefix(tmp_path):
    rng = random.Random(7)
    for trial in range(30):
        path = tmp_path / f"raft-{trial}.wal"
        j = DurableJournal(path)
        n = rng.randrange(1, 40)
        _fill(j, 1, n)
        j.sync()
        synced = path.stat().st_size
        _fill(j, n + 1, n + rng.randrange(1, 10))
        j.sync()
        data = path.read_bytes()
        keep = rng.randrange(synced, len(data) + 1)  # some of the unsynced bytes made it
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64)))
        path.write_bytes(data[:keep] + junk)
        loaded = DurableJournal(path)
        assert len(loaded) >= n
        assert loaded[:] == [(_cmd(i), i, 1) for i in range(1, len(loaded) + 1)]


def test_a_failed_sync_keeps_everything_and_retries(tmp_path):
    path = tmp_path / "gone" / "raft.wal"  # its directory does not exist yet
    j = DurableJournal(path)
    _fill(j, 1, 3)
    j.setCurrentTerm(2, "a:1")
    assert not j.sync()
    err = j.persist_error
    assert isinstance(err, JournalError) and err.kind == "io" and err.path == path
    assert err.errno is not None and "raft journal" in str(err) and str(path) in str(err)
    assert j.dirty  # acknowledgements keep waiting
    path.parent.mkdir()
    assert j.sync() and j.persist_error is None and not j.dirty
    loaded = DurableJournal(path)
    assert len(loaded) == 3 and loaded.getVotedForNodeId() == "a:1"


def test_not_a_journal_is_a_typed_error(tmp_path):
    path = tmp_path / "raft.wal"
    path.write_bytes(b"PYSYNCOBJ" + bytes(40))
    with pytest.raises(JournalError) as e:
        DurableJournal(path)
    assert e.value.kind == "corrupt"
    path.write_bytes(HEADER)
    assert len(DurableJournal(path)) == 0


def test_superseded_records_make_a_fresh_file(tmp_path):
    path = tmp_path / "raft.wal"
    j = DurableJournal(path, max_superseded=20)
    _fill(j, 1, 2)
    j.sync()
    for term in range(3, 200):  # elections only: one meta record each
        j.setCurrentTerm(term, None)
        j.sync()
    assert path.stat().st_size < 2000  # rewritten, not 200 records long
    assert DurableJournal(path).getCurrentTerm() == 199
    os.truncate(path, len(HEADER) + 3)  # a torn first record
    assert len(DurableJournal(path)) == 0
