"""Synthetic segments: N generic hosts named host1..hostN with made-up addresses, for the
simulator and the pure-core tests. Pure; never used by the agent (which loads a file).

Like the shipped example config, every host declares a hypervisor and (unless
`watchdog=False`) a watchdog, with the timeout the example's rule gives: one second
under the most the loader accepts (self_fence_deadline_s - isolation_after_s - 1), and
no more than the profile's stall_grace_s: 6 s with lan-fast (the example's value), 15 s
with lan-safe (the lab's). A shorter one here would reset hosts on stalls and agent
restarts that a host installed from the example rides through.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from meshha.config.model import (
    TIMING_PROFILES,
    WATCHDOG_MARGIN_S,
    Brake,
    Capacity,
    Host,
    Network,
    Policy,
    Raft,
    Recovery,
    Segment,
    Timings,
    Watchdog,
)

DEFAULT_NETWORKS: Mapping[str, str] = {
    "admin": "alert",
    "storage": "fence_evacuate",
    "tenant": "live_migrate",
}


def synthetic_segment(
    hosts: int = 5,
    *,
    voters: int | None = None,
    reserved: tuple[str, ...] | None = None,
    networks: Mapping[str, str] = DEFAULT_NETWORKS,
    profile: str = "lan-fast",
    timings: Mapping[str, float] | None = None,
    host_size: tuple[int, int, int] = (16, 32768, 500),
    brake_fraction: float = 0.5,
    brake_window_s: float = 30.0,
    policy: Policy | None = None,
    recovery: Recovery | None = None,
    watchdog: bool = True,
) -> Segment:
    """A segment of `hosts` hosts; `voters` defaults to every host up to 7, else 5, and
    `reserved` to the last host. Networks map a name to its on_loss, in probe-port order."""
    names = [f"host{i}" for i in range(1, hosts + 1)]
    n_voters = voters or (hosts if hosts <= 7 else 5)
    reserved_names = reserved if reserved is not None else (names[-1],)
    nets = tuple(
        Network(n, on_loss, 7946 + i)  # type: ignore[arg-type]
        for i, (n, on_loss) in enumerate(networks.items())
    )
    t = dict(TIMING_PROFILES[profile])
    t.update(timings or {})
    longest = t["self_fence_deadline_s"] - t["isolation_after_s"] - WATCHDOG_MARGIN_S
    wd = Watchdog(timeout_s=max(1, int(min(longest - 1, t["stall_grace_s"])))) if watchdog else None
    host_values = tuple(
        Host(
            name=h,
            addresses=tuple(
                (n.name, f"10.{i}.{k // 250}.{k % 250 + 1}") for i, n in enumerate(nets)
            ),
            bmc=None,
            role="reserved" if h in reserved_names else "compute",
            voter=k < n_voters,
            capacity=Capacity(*host_size),
            watchdog=wd,
        )
        for k, h in enumerate(names)
    )
    return Segment(
        name="sim",
        networks=nets,
        hosts=host_values,
        timings=Timings(profile=profile, **t),  # type: ignore[arg-type]
        brake=Brake(brake_fraction, brake_window_s),
        raft=Raft(4321, Path("/nonexistent"), Path("/nonexistent")),
        probe_key_file=Path("/nonexistent"),
        policy=policy or Policy(),
        recovery=recovery or Recovery(),
    )
