"""Acknowledged Raft entries survive a power cut: real member processes, kill -9, and each
killed member's journal cut back to what fsync had confirmed.

How the power cut is made. Each member runs with `power_cut` (raft_harness.py): after
every journal sync it writes the journal's inode and the size that fdatasync has just
confirmed into `<journal>.synced`. kill -9 alone loses nothing a process wrote (the
page cache survives the process), so it is not a power cut; here, after the kill, the
journal is cut back to the confirmed size, then a random part of the unconfirmed bytes
is put back with random bytes torn into its end (a power cut may persist any prefix of
the unsynced pages and tear the last sector). The ledger (SQLite) is left as the kill
left it. While the leader commits under load (16 proposals in flight), every proposal
that returned an index is appended to an `acked` file by the proposer.

What it proves: every entry the log acknowledged to a proposer is, after the cut and a
restart, committed at the same index on every member; members agree entry for entry;
each member's SQLite ledger holds exactly its log's entries. That is: nothing was
acknowledged before fdatasync had returned on a majority (the leader counting itself
only for synced entries), the journal loads past a torn tail, and a member that lost
unsynced entries is repaired by the new leader, never the other way round.
What it does not prove: that fdatasync itself is honest (disk write caches, the
filesystem's metadata ordering: the rename and directory fsync of a journal rewrite or
of a dump are taken as durable once they returned; a journal replaced after its last
mark is not cut at all), nor that the disk's contents after a real power cut are a
prefix of what was written (the cut keeps unsynced bytes only as a prefix).
`test_checker_catches_unsynced_acks` runs the same cut against a journal that
acknowledges before syncing (pysyncobj's old behaviour) and expects the check to fail:
the test can fail.
"""

from __future__ import annotations

import os
import random
import signal
import time

import pytest
from raft_harness import TIMINGS, WAIT_S, Cluster

from meshha.agent.control import ControlError

pytestmark = pytest.mark.integration

LOAD_S = 2.0
MIN_ACKED = 50


@pytest.fixture
def cluster_of():
    made: list[Cluster] = []

    def make(n: int, **kw) -> Cluster:
        c = Cluster(n, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


def _acked(c: Cluster, name: str) -> dict[int, int]:
    path = c.data_dir(name).parent / f"{name}.acked"
    if not path.exists():
        return {}
    acked = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:  # the last line may be torn by the kill
            acked[int(parts[0])] = int(parts[1])
    return acked


def _cut_power(c: Cluster, name: str, rng: random.Random) -> dict[str, int]:
    """Cut `name`'s journal back to its last confirmed sync, keep a random part of the
    rest with a torn end. Returns what was done, for the failure message."""
    journal = c.data_dir(name) / "raft.wal"
    inode, synced = map(int, (journal.parent / "raft.wal.synced").read_text().split())
    data = journal.read_bytes()
    if os.stat(journal).st_ino != inode:  # replaced after the last mark: all fsynced first
        return {"size": len(data), "synced": len(data), "kept": len(data)}
    keep = rng.randrange(synced, len(data) + 1) if len(data) > synced else synced
    tail = bytearray(data[synced:keep])
    for _ in range(min(len(tail), rng.randrange(0, 8))):
        tail[rng.randrange(max(0, len(tail) - 512), len(tail))] = rng.randrange(256)
    journal.write_bytes(data[:synced] + bytes(tail))
    return {"size": len(data), "synced": synced, "kept": keep}


def _run_power_cut(c: Cluster, victims: str, seed: int) -> tuple[dict[int, int], dict]:
    """Load, cut the power of `victims` ("all" or "majority"), restart; return the
    acknowledged entries and the cuts."""
    rng = random.Random(seed)
    c.start_all()
    leader = c.leader()
    c.call(leader, "load", concurrency=16)
    t0 = time.monotonic()
    while len(_acked(c, leader)) < MIN_ACKED or time.monotonic() - t0 < LOAD_S:
        assert time.monotonic() - t0 < WAIT_S, f"only {len(_acked(c, leader))} acked"
        c.wait(leader, "entries", n=c.call(leader, "status")["n_read"] + 1)
    followers = [n for n in c.names if n != leader]
    killed = [leader, *followers] if victims == "all" else [leader, followers[0]]
    for name in killed:  # as close together as this can: one signal after the other
        c.procs[name].send_signal(signal.SIGKILL)
    for name in killed:
        c.kill(name)  # reaps it
    acked = _acked(c, leader)
    cuts = {name: _cut_power(c, name, rng) for name in killed}
    for name in killed:
        c.start(name)
    return acked, cuts


def _check(c: Cluster, acked: dict[int, int], cuts: dict) -> None:
    last = max(acked)
    new_leader = c.leader()
    c.propose(new_leader, {"v": 1, "kind": "probe", "ts": time.time(), "by": "t", "i": -1})
    logs = {}
    for name in c.names:
        deadline = time.monotonic() + WAIT_S
        while True:
            got = {i: e for i, e in c.call(name, "entries")["entries"]}
            if got and max(got) > last:
                break
            assert time.monotonic() < deadline, f"{name} never caught up to {last}"
            c.wait(name, "entries", n=len(got) + 1)
        logs[name] = got
    for name, got in logs.items():
        lost = {i: n for i, n in acked.items() if got.get(i, {}).get("i") != n}
        assert not lost, (
            f"{name} lost {len(lost)} acknowledged entries, e.g. {sorted(lost.items())[:5]}; cuts {cuts}"
        )
        # The harness writes the ledger before its own list: read the ledger first.
        ledger = {i: e for i, e in c.call(name, "ledger")["entries"]}
        now = {i: e for i, e in c.call(name, "entries")["entries"] if i <= max(ledger)}
        assert ledger == now and max(ledger) >= max(got), f"{name}: ledger and log disagree"
    first = next(iter(logs.values()))
    for got in logs.values():  # one log: the same entry at every index all have
        common = first.keys() & got.keys()
        assert all(first[i] == got[i] for i in common)


@pytest.mark.parametrize(
    ("victims", "seed", "compaction"),
    [("all", 1, False), ("majority", 2, False), ("all", 3, False), ("all", 4, True)],
)
def test_acknowledged_entries_survive_a_power_cut(cluster_of, victims, seed, compaction):
    """With `compaction`, every member compacts every 40 entries: its dump is written and
    renamed durably and its journal rewritten many times under the load."""
    timings = {**TIMINGS, "compaction_min_entries": 40} if compaction else TIMINGS
    c = cluster_of(3, extra={"power_cut": True, "ledger": True}, timings=timings)
    acked, cuts = _run_power_cut(c, victims, seed)
    lost_unsynced = sum(cut["size"] - cut["synced"] for cut in cuts.values())
    print(f"\n{len(acked)} acknowledged; power cut {victims}: {cuts} ({lost_unsynced} B unsynced)")
    _check(c, acked, cuts)


def test_checker_catches_unsynced_acks(cluster_of):
    """The same power cut against a journal that acknowledges before its fsync (and
    syncs once a second, as pysyncobj's did not at all): acknowledged entries are lost,
    and the check says so. Retried with other seeds: a cut can miss by luck."""
    failures = 0
    for seed in range(6):  # a cut can miss by luck (three misses in a row failed once)
        c = cluster_of(3, extra={"power_cut": True, "ledger": True, "unsafe_sync": True})
        acked, cuts = _run_power_cut(c, "all", seed)
        try:
            _check(c, acked, cuts)
        except (AssertionError, ControlError) as e:
            # A lost entry shows as a missing index, or as a member whose ledger refuses
            # a different entry at an index it already holds (the member then stops).
            why = [c.stderr(n)[-400:] for n, p in c.procs.items() if p.poll() is not None]
            print(f"\nunsafe journal, seed {seed}: caught: {str(e)[:300]} {why}")
            failures += 1
            break
        finally:
            c.stop()
    assert failures, "the power-cut check passed against a journal that acks unsynced entries"
