"""The deterministic segment simulator and the in-memory fakes of every port.

Ships with meshha (`meshctl sim`) but is never imported by what runs in the agent: the
tidy test (tests/unit/test_tidy.py) bans it from every production package.

Fakes:     `fakes` (BMC, Nova, hypervisor, processes, alerts over one ground truth).
Simulator: `network` (in-memory datagrams with loss, delay, partitions), `raft_standin`
           (majority commit, terms, leader change behind the log port), `world` (N real
           `Node`s wired to the above under trio's MockClock), `host_faults` (inside a
           host: its wall clock, its disk, its agent stopped; peers' knocks on its
           kernel), `script` (the one scenario
           language: verb table and parser, also used by the decide data tests),
           `scenario` (its runner; the files, with their expected timelines, are in
           `scenarios/`), `swarm` (random fault schedules drawn from a seed), `report`
           (timelines), `replay` (`run`: a seed replays byte for byte).
"""
