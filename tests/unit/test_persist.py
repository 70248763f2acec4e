"""Disk problems of the agent: which errors are disk errors, and that each problem is
reported once when it starts and once when it ends (pure part of meshha.agent.persist)."""

from __future__ import annotations

import errno

from meshha.agent.persist import PersistWatch, problem_of
from meshha.errors import LogError
from meshha.ledger.store import LedgerError


def test_disk_errors_are_recognised_with_path_and_errno():
    p = problem_of("journal", OSError(errno.ENOSPC, "No space", "/d/raft.wal"), "/d")
    assert p is not None and (p.path, p.errno_name) == ("/d/raft.wal", "ENOSPC")
    p = problem_of("ledger", LedgerError("full", kind="disk_full", where="/d/l.sqlite"), "/d")
    assert p is not None and (p.path, p.errno_name) == ("/d/l.sqlite", "ENOSPC")
    p = problem_of("ledger", LedgerError("ro", kind="read_only", where="/d/l.sqlite"), "/d")
    assert p is not None and p.errno_name == "EROFS"
    assert "not voting" in problem_of("journal", OSError(errno.EIO, "io"), "/d").describe()


def test_other_errors_are_not_disk_problems():
    assert problem_of("journal", OSError(errno.EADDRINUSE, "in use"), "/d") is None
    assert problem_of("journal", LogError("no", kind="no_quorum"), "/d") is None
    assert problem_of("ledger", LedgerError("x", kind="conflict"), "/d") is None


def test_each_problem_starts_and_ends_once():
    w = PersistWatch("seg", "host2")
    full = problem_of("ledger", LedgerError("f", kind="disk_full", where="/l"), "/")
    assert [c.started for c in w.check({"ledger": full, "journal": None})] == [True]
    assert w.check({"ledger": full, "journal": None}) == []
    assert not w.report()["ok"] and w.report()["voting"]
    assert [c.started for c in w.check({"ledger": None, "journal": None})] == [False]
    assert w.report() == {"ok": True, "voting": True, "problems": []}


def test_a_member_that_stopped_on_a_disk_error_stays_reported():
    w = PersistWatch("seg", "host2")
    w.crashed["journal"] = problem_of("journal", OSError(errno.ENOSPC, "full", "/j"), "/")
    assert [c.problem.what for c in w.check({"journal": None})] == ["journal"]
    assert not w.report()["voting"]
