"""Five real meshha-agent processes, each in its own network namespace, with one bridge per
network (admin, storage, tenant): real per-host, per-network faults (meshha.lab.netns).

Proves, with the lan-fast timings (config/segment.example.toml: suspect about 0.6 s,
failed about 0.9 s, isolation at 2 s, election timeout 1 s):
- a dead host (agent SIGKILLed, every link down) is committed `failed` by the others;
- a host that loses only its storage link is `degraded [storage]`; only admin:
  `degraded [admin]`, and it does not take itself for isolated (it still reaches the
  voters on storage and tenant);
- a 2|3 partition on every network: the 2-side commits nothing, the 3-side commits
  `failed` for both hosts of the 2-side;
- killing the leader: a new leader within a few election timeouts, no committed entry
  lost;
- SIGKILL of all five and a restart: the same ledger and the same state.

All scenarios share one segment; each starts from (and leaves) a healthy segment.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from meshha.lab import netns
from meshha.lab.mesh import Mesh, conflicts

HOSTS = tuple(f"host{i}" for i in range(1, 6))
NETWORKS = ("admin", "storage", "tenant")
DETECT_S = 10.0  # deadline for a verdict (lan-fast detects in about 1 s)
HEAL_S = 30.0  # deadline for a segment to be healthy again after a fault is undone
ELECTION_TIMEOUT_S = 1.0  # lan-fast

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(netns.available() is not None, reason=str(netns.available())),
]


@pytest.fixture(scope="module")
def lab() -> Iterator[netns.Lab]:
    lab = netns.Lab(HOSTS, NETWORKS, prefix="mht")
    try:
        yield lab.setup()
    finally:
        lab.teardown()


@pytest.fixture(scope="module")
def mesh(lab: netns.Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    m = Mesh(tmp_path_factory.mktemp("mesh-ns"), HOSTS, lab=lab, reserved=["host5"])
    try:
        m.start(timeout_s=40)
        yield m
    finally:
        m.close()


@pytest.fixture
def healthy(mesh: Mesh, lab: netns.Lab) -> Iterator[Mesh]:
    """Start each scenario from a healthy segment, and leave one behind (even on failure:
    links restored, partition healed, stopped agents started)."""
    wait_healthy(mesh)
    try:
        yield mesh
    finally:
        lab.clear_impairment()
        lab.heal()
        for h in HOSTS:
            lab.restore_host(h)
            if not mesh.running(h):
                mesh.restart(h)
        wait_healthy(mesh)


def all_healthy(mesh: Mesh, expect: dict[str, str] | None = None) -> bool:
    want = {h: "healthy" for h in HOSTS} | (expect or {})
    if mesh.leader(HOSTS) is None:
        return False
    for h in HOSTS:
        st = mesh.try_status(h)
        if st is None or {x["name"]: x["verdict"] for x in st["hosts"]} != want:
            return False
    return True


def wait_healthy(mesh: Mesh, expect: dict[str, str] | None = None) -> None:
    mesh.wait_until(lambda: all_healthy(mesh, expect), HEAL_S, "every host healthy everywhere")


def verdict_of(mesh: Mesh, observer: str, host: str) -> tuple[str, tuple[str, ...]] | None:
    st = mesh.try_status(observer)
    if st is None:
        return None
    x = next(x for x in st["hosts"] if x["name"] == host)
    return x["verdict"], tuple(x["networks"])


def wait_verdict(
    mesh: Mesh, observers: list[str], host: str, want: tuple[str, tuple[str, ...]]
) -> None:
    for o in observers:
        mesh.wait_until(
            lambda o=o: verdict_of(mesh, o, host) == want,
            DETECT_S,
            f"{o} has {host} {want}",
        )


def follower(mesh: Mesh, avoid: tuple[str, ...] = ()) -> str:
    leader = mesh.wait_leader(HEAL_S)
    return next(h for h in reversed(HOSTS) if h != leader and h not in avoid)


def test_dead_host_is_failed(healthy: Mesh) -> None:
    mesh = healthy
    victim = follower(mesh)
    others = [h for h in HOSTS if h != victim]
    mesh.kill(victim)
    wait_verdict(mesh, others, victim, ("failed", NETWORKS))
    led = dict(mesh.ledger(mesh.wait_leader(DETECT_S, among=others)))
    failed = [e for e in led.values() if e["kind"] == "verdict" and e["host"] == victim]
    assert failed[-1]["verdict"] == "failed"
    assert len({o for o, _, _ in failed[-1]["evidence"]}) >= 3  # a majority of the 4 others


def test_storage_link_lost_is_degraded_storage(healthy: Mesh, lab: netns.Lab) -> None:
    mesh = healthy
    victim = follower(mesh)
    lab.cut(victim, "storage")
    wait_verdict(mesh, list(HOSTS), victim, ("degraded", ("storage",)))
    # The victim lost everyone on storage, but a discredited accuser: nobody else is
    # suspected, seen from any host.
    for observer in HOSTS:
        for h in HOSTS:
            if h != victim:
                assert verdict_of(mesh, observer, h) == ("healthy", ()), (observer, h)
    lab.restore(victim, "storage")


def test_admin_link_lost_is_degraded_admin_not_isolation(healthy: Mesh, lab: netns.Lab) -> None:
    mesh = healthy
    victim = follower(mesh)
    others = [h for h in HOSTS if h != victim]
    t_cut = time.time()
    lab.cut(victim, "admin")
    wait_verdict(mesh, others, victim, ("degraded", ("admin",)))
    # It has no Raft (admin) but reaches the voters on storage and tenant: past its
    # isolation_after_s (2 s) it must still not take itself for isolated.
    watch_until = time.monotonic() + 2.0 + 1.5
    while time.monotonic() < watch_until:
        st = mesh.status(victim)
        assert not st["isolated"], f"{victim} took itself for isolated"
        time.sleep(0.1)  # noqa: TID251  holds, asserting that nothing happens
    lab.restore(victim, "admin")
    wait_healthy(mesh)
    isolations = [
        e
        for _, e in mesh.ledger(others[0])
        if e["kind"] == "isolation" and e["host"] == victim and e["ts"] >= t_cut
    ]
    assert not isolations


def test_partition_two_three(healthy: Mesh, lab: netns.Lab) -> None:
    mesh = healthy
    small, big = list(HOSTS[:2]), list(HOSTS[2:])
    t_cut = time.time()
    lab.partition([small, big])
    for host in small:
        wait_verdict(mesh, big, host, ("failed", NETWORKS))
    # The 2-side: no quorum, and past its isolation time it knows it (self-fence).
    for h in small:
        mesh.wait_until(lambda h=h: mesh.status(h)["isolated"], DETECT_S, f"{h} isolated")
        assert not mesh.status(h)["has_quorum"]
    # ... and it committed nothing after the cut: no entry there was proposed after it.
    for h in small:
        late = [(i, e) for i, e in mesh.ledger(h) if e["ts"] > t_cut]
        assert not late, f"{h} (minority side) committed after the cut: {late[:3]}"
    lab.heal()
    wait_healthy(mesh)
    books = mesh.ledgers(HOSTS)
    assert not conflicts(books)
    mesh.wait_ledgers_equal(HOSTS, timeout_s=HEAL_S)


def test_leader_killed_new_leader_and_nothing_lost(healthy: Mesh) -> None:
    mesh = healthy
    old = mesh.wait_leader(HEAL_S)
    before = mesh.ledgers(HOSTS)
    committed = {i: e for book in before.values() for i, e in book.items()}
    assert committed
    others = [h for h in HOSTS if h != old]
    t = time.monotonic()
    mesh.kill(old)
    new = mesh.wait_leader(5 * ELECTION_TIMEOUT_S + 2, among=others, not_=old)
    took = time.monotonic() - t
    assert new != old and took <= 5 * ELECTION_TIMEOUT_S + 2, took
    wait_verdict(mesh, others, old, ("failed", NETWORKS))
    after = mesh.ledgers(others)
    for h, book in after.items():
        missing = {i for i in committed if book.get(i) != committed[i]}
        assert not missing, f"{h} lost or changed committed entries {sorted(missing)[:5]}"


def test_lossy_jittery_network_no_false_verdict_and_still_detects(
    healthy: Mesh, lab: netns.Lab
) -> None:
    """5 % loss and 0-20 ms of jitter on every link (netem, or the lab's user-space hub):
    no verdict moves while nothing is wrong, and a dead host is still found."""
    mesh = healthy
    how = lab.impair(loss_pct=5, jitter_ms=20, seed=3)
    assert how in ("netem", "hub")
    leader = mesh.wait_leader(HEAL_S)
    mark = max(i for i, _ in mesh.ledger(leader))
    victim = follower(mesh)
    others = [h for h in HOSTS if h != victim]
    mesh.kill(victim)
    wait_verdict(mesh, others, victim, ("failed", NETWORKS))
    wrong = [
        e
        for i, e in mesh.ledger(mesh.wait_leader(HEAL_S, among=others))
        if i > mark and e["kind"] == "verdict" and e["host"] != victim
    ]
    assert not wrong, f"verdicts on hosts nobody touched: {wrong}"
    assert lab.hub is None or lab.hub_running()


def test_kill_all_and_restart_same_ledger_and_state(healthy: Mesh) -> None:
    mesh = healthy
    mesh.call("host2", {"op": "maintenance", "host": "host4", "on": True, "reason": "disk"})
    wait_healthy(mesh, {"host4": "maintenance"})
    mesh.wait_ledgers_equal(HOSTS, timeout_s=HEAL_S)
    before_books = mesh.ledgers(HOSTS)
    before_state = {h: _state(mesh.status(h)) for h in HOSTS}
    codes = mesh.stop_all(sig=signal.SIGKILL)
    assert codes == dict.fromkeys(HOSTS, -signal.SIGKILL)
    mesh.start(timeout_s=40)
    wait_healthy(mesh, {"host4": "maintenance"})
    for h in HOSTS:
        assert _state(mesh.status(h)) == before_state[h], h
        book = dict(mesh.ledger(h))
        lost = {i for i, e in before_books[h].items() if book.get(i) != e}
        assert not lost, f"{h}: entries {sorted(lost)[:5]} changed or lost over the restart"
    mesh.call("host1", {"op": "maintenance", "host": "host4", "on": False})
    wait_healthy(mesh)


def _state(st: dict[str, Any]) -> dict[str, Any]:
    return {
        x["name"]: (x["verdict"], tuple(x["networks"]), (x["maintenance"] or {}).get("reason"))
        for x in st["hosts"]
    }
