"""agent/alive.py: the mark of when this host was last up survives a reboot, is kept for
the rest of that boot, and a missing or broken file is no evidence (never a wrong one)."""

from __future__ import annotations

from pathlib import Path

from meshha.agent.alive import AliveMark


def test_a_mark_from_the_boot_before_is_the_evidence(tmp_path: Path) -> None:
    first = AliveMark(tmp_path)
    assert first.start(1000.0) is None and first.started  # nothing left by an earlier boot
    first.mark(1000.0, 5000.0)
    first.mark(1000.0, 5001.0)
    again = AliveMark(tmp_path)  # the agent restarted, same boot
    assert again.start(1000.5) is None
    again.mark(1000.5, 5002.0)
    rebooted = AliveMark(tmp_path)
    assert rebooted.start(6000.0) == 5002.0
    rebooted.mark(6000.0, 6010.0)
    later = AliveMark(tmp_path)  # restarted again in that boot: still the previous boot's
    assert later.start(6000.0) == 5002.0


def test_a_broken_or_unwritable_mark_is_no_evidence(tmp_path: Path) -> None:
    (tmp_path / "alive").write_text("{not json")
    assert AliveMark(tmp_path).start(6000.0) is None
    (tmp_path / "alive").write_text('{"boot": 1000, "alive": "soon"}')
    assert AliveMark(tmp_path).start(6000.0) is None
    gone = AliveMark(tmp_path / "missing-dir")
    assert gone.start(6000.0) is None
    gone.mark(6000.0, 6001.0)  # logged once, no exception
    assert not (tmp_path / "missing-dir").exists()
    assert AliveMark(tmp_path).start(None) is None
