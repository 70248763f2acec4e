"""The pysyncobj log port across separate processes over TCP on 127.0.0.x.

Proves: a leader is elected; entries proposed on the leader, a follower or a non-voting
member commit once, in one order, on every member; kill -9 of the leader elects another
and loses nothing committed; restarting every member replays the journal; a minority
cannot commit; a member with the wrong password can neither join nor inject.
Each member is tests/integration/raft_harness.py, driven through its control socket.
"""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest
from raft_harness import Cluster

from meshha.agent.control import ControlError

pytestmark = pytest.mark.integration


def _entry(by: str, i: int) -> dict:
    return {"v": 1, "kind": "observation", "ts": time.time(), "by": by, "host": "h9", "i": i}


@pytest.fixture
def cluster_of():
    made: list[Cluster] = []

    def make(n: int, readonly: tuple[str, ...] = (), **kw) -> Cluster:
        c = Cluster(n, readonly, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


def test_three_members_elect_and_replicate_in_one_order(cluster_of):
    c = cluster_of(3)
    t0 = time.monotonic()
    c.start_all()
    leader = c.leader()
    print(f"\nelection: leader {leader} after {time.monotonic() - t0:.2f}s from first start")
    follower = next(n for n in c.names if n != leader)
    idx = [c.propose(leader, _entry(leader, 0)), c.propose(follower, _entry(follower, 1))]
    for i in range(2, 10):
        idx.append(c.propose(c.names[i % 3], _entry(c.names[i % 3], i)))
    assert idx == sorted(idx) and len(set(idx)) == 10
    logs = [c.entries(n, 10) for n in c.names]
    assert logs[0] == logs[1] == logs[2]
    assert [e["i"] for _, e in logs[0]] == list(range(10))
    assert [i for i, _ in logs[0]] == idx
    status = c.call(follower, "status")
    assert status["commit_index"] == idx[-1] and not status["is_leader"]
    bench = c.call(leader, "bench", n=200)
    fbench = c.call(follower, "bench", n=200)
    cbench = c.call(leader, "bench", n=1000, concurrency=20)
    print(
        f"commit latency p50 leader {bench['p50_ms']:.2f} ms, follower {fbench['p50_ms']:.2f} ms;"
        f" throughput {cbench['per_s']:.0f}/s with 20 in flight"
    )


def test_kill_leader_elects_another_and_keeps_committed(cluster_of):
    c = cluster_of(3)
    c.start_all()
    old = c.leader()
    for i in range(5):
        c.propose(old, _entry(old, i))
    before = c.entries(old, 5)
    t0 = time.monotonic()
    c.kill(old)
    survivors = [n for n in c.names if n != old]
    new = c.leader(survivors, not_leader=old)
    print(f"\nfailover: {old} killed, {new} leads after {time.monotonic() - t0:.2f}s")
    assert new != old
    c.propose(survivors[0], _entry(survivors[0], 5))
    for n in survivors:
        got = c.entries(n, 6)
        assert got[:5] == before and got[5][1]["i"] == 5
    c.start(old)  # the old leader comes back as a follower and catches up
    assert c.entries(old, 6) == c.entries(new, 6)
    assert c.leader() == new


def test_restart_all_replays_journal(cluster_of):
    c = cluster_of(3)
    c.start_all()
    leader = c.leader()
    for i in range(8):
        c.propose(leader, _entry(leader, i))
    before = {n: c.entries(n, 8) for n in c.names}
    for n in c.names:
        c.kill(n, signal.SIGKILL if n == leader else signal.SIGTERM)
    c.start_all()
    for n in c.names:  # the same entries at the same indexes, from index 1 again
        assert c.entries(n, 8)[:8] == before[n]
    leader = c.leader()
    c.propose(leader, _entry(leader, 8))
    assert [e["i"] for _, e in c.entries(c.names[0], 9)] == list(range(9))


def test_minority_of_five_cannot_commit(cluster_of):
    c = cluster_of(5)
    c.start_all()
    leader = c.leader()
    c.propose(leader, _entry(leader, 0))
    followers = [n for n in c.names if n != leader]
    # Keep the old leader and one follower: a minority that still has a leader for a while.
    for n in followers[:3]:
        c.kill(n)
    minority = [leader, followers[3]]
    for n in minority:
        c.wait(n, "no_quorum")
    for n in minority:
        with pytest.raises(ControlError) as e:
            c.propose(n, _entry(n, 1), timeout_s=1.0)
        assert e.value.kind in ("no_quorum", "timeout"), e.value
    for n in minority:  # nothing new was committed or delivered
        assert [x["i"] for _, x in c.call(n, "entries")["entries"]] == [0]
    c.start(followers[0])  # a majority again: commits resume, the refused entry stays out
    new = c.leader([*minority, followers[0]])
    c.propose(new, _entry(new, 2))
    assert [x["i"] for _, x in c.entries(followers[0], 2)] == [0, 2]


def test_wrong_password_cannot_join_or_inject(cluster_of):
    c = cluster_of(3, readonly=("spy",))
    for n in ("h1", "h2", "h3"):
        c.start(n)
    leader = c.leader(["h1", "h2", "h3"])
    c.propose(leader, _entry(leader, 0))
    # A read-only member with the wrong password: never hears a leader, gets nothing.
    c.start("spy", password="guess")
    with pytest.raises(ControlError) as e:
        c.wait("spy", "quorum")
    assert e.value.kind == "timeout"
    with pytest.raises(ControlError) as e:
        c.propose("spy", _entry("spy", 99))
    assert e.value.kind == "no_quorum"
    assert c.call("spy", "entries")["entries"] == []
    # Raw bytes at a voter's port: a forged pysyncobj frame (length-prefixed) and junk.
    host, port = c.voters[leader].rsplit(":", 1)
    for junk in (b"\x10\x00\x00\x00" + b"A" * 16, b"\xff\xff\xff\x7f" + os.urandom(64)):
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(junk)
    c.propose(leader, _entry(leader, 1))
    for n in ("h1", "h2", "h3"):
        assert [x["i"] for _, x in c.entries(n, 2)] == [0, 1]
    assert c.call(leader, "status")["leader"] == leader


def test_non_voting_member_reads_and_proposes_but_does_not_count(cluster_of):
    c = cluster_of(3, readonly=("ro",))
    c.start_all()
    leader = c.leader(["h1", "h2", "h3"])
    c.wait("ro", "quorum")
    status = c.call("ro", "status")
    assert not status["voter"] and status["leader"] == leader and not status["is_leader"]
    c.propose("ro", _entry("ro", 0))  # forwarded to the leader
    c.propose(leader, _entry(leader, 1))
    assert c.entries("ro", 2) == c.entries(leader, 2)
    for n in [n for n in ("h1", "h2", "h3") if n != leader]:
        c.kill(n)  # 1 voter + 1 read-only member: no majority of the 3 voters
    for n in (leader, "ro"):
        c.wait(n, "no_quorum")
        with pytest.raises(ControlError) as e:
            c.propose(n, _entry(n, 2), timeout_s=1.0)
        assert e.value.kind in ("no_quorum", "timeout")
