"""The Raft member's settings the agent derives from a segment (meshha.agent.main.raft_config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshha.agent.main import raft_config
from meshha.config.load import load_segment
from meshha.config.model import TIMING_PROFILES
from meshha.lab.segment_files import write_segment

HOSTS = [(f"host{i}", {"admin": f"10.9.0.{i}", "storage": f"10.9.1.{i}"}) for i in range(1, 6)]


def segment(tmp_path: Path, profile: str):  # type: ignore[no-untyped-def]
    cfg = write_segment(
        tmp_path,
        HOSTS,
        networks={"admin": "alert", "storage": "fence_evacuate"},
        voters=["host1", "host2", "host3"],
        profile=profile,
    )
    return load_segment(cfg)


@pytest.mark.parametrize("profile", sorted(TIMING_PROFILES))
def test_four_heartbeats_per_shortest_election_timeout(tmp_path: Path, profile: str) -> None:
    c = raft_config(segment(tmp_path, profile), "host1", b"pw", tmp_path / "d")
    c.check()
    assert c.election_timeout_min_s == pytest.approx(4 * c.heartbeat_interval_s)
    # a leader that loses its majority steps down well after several missed heartbeats
    assert c.leader_fallback_timeout_s >= 10 * c.heartbeat_interval_s


def test_non_voters_are_trusted_and_connect_from_their_admin_address(tmp_path: Path) -> None:
    seg = segment(tmp_path, "lan-safe")
    voter = raft_config(seg, "host1", b"pw", tmp_path / "d")
    assert voter.trusted_ips == {"10.9.0.4", "10.9.0.5"}
    assert voter.bind_address == f"10.9.0.1:{seg.raft.port}" and voter.source_ip is None
    member = raft_config(seg, "host4", b"pw", tmp_path / "d")
    assert member.bind_address is None and member.source_ip == "10.9.0.4"
    assert not member.voter and set(member.voters) == {"host1", "host2", "host3"}
