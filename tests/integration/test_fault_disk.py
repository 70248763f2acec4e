"""A full disk under an agent's data directory is an operating error, not a crash
(issue 12, disk).

Three real meshha-agent processes on loopback; host2's data directory (its Raft journal
and its ledger) is a 16 MiB tmpfs of its own (room for the ledger's WAL, up to 4 MB before a checkpoint), filled with a file while the segment runs
and entries keep being committed. Proves, with a real webhook receiving the alerts:
- host2 stays up: its control socket answers and reports the problem (what, path,
  ENOSPC) and that it is not voting; its peers keep hearing its probes, so no verdict
  other than healthy is reached about it and nothing is fenced;
- host2 itself alerts once, naming the path and the errno;
- once the file is removed, host2 votes again and its ledger catches up: it holds every
  entry host1's holds, nothing lost.

Needs the durable Raft journal (meshha.raft.journal: a member that cannot persist freezes
instead of dying; pysyncobj's own mmap journal turns a full disk into SIGBUS).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from meshha.agent.control import ControlError
from meshha.lab.mesh import Mesh
from meshha.raft.pysyncobj_log import PysyncobjLog

HOSTS = ("host1", "host2", "host3")
VICTIM = "host2"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not hasattr(PysyncobjLog, "persist_error"),
        reason="needs the durable Raft journal (a member that cannot persist freezes)",
    ),
]


class Webhook:
    """A real HTTP endpoint on loopback that keeps every alert it is sent."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.received = received
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    w = Webhook()
    try:
        yield w
    finally:
        w.close()


@pytest.fixture
def mesh(tmp_path: Path, webhook: Webhook) -> Iterator[Mesh]:
    m = Mesh(
        tmp_path, HOSTS, profile="lan-fast", extra_toml=f'[alerts]\nwebhooks = ["{webhook.url}"]\n'
    )
    data = m.data_dir(VICTIM)
    data.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "meshha-faults-disk", str(data)],
        check=True,
    )
    try:
        m.start(timeout_s=40)
        yield m
    finally:
        m.close()
        subprocess.run(["umount", "-l", str(data)], check=False)


def fill(path: Path) -> None:
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=64k"], capture_output=True, check=False)


def commit_some(mesh: Mesh, n: int, tag: str) -> None:
    """Entries committed through host1 (maintenance of host3 on and off). The victim
    stops voting once its journal probe finds the disk full, so leadership can move
    while a write is in flight: the answer is then "outcome unknown" (or no leader for
    a moment). As an operator would, look in the ledger and submit again only what is
    not there."""
    for i in range(n):
        reason = f"{tag}{i}"
        request = {"op": "maintenance", "host": "host3", "on": i % 2 == 0, "reason": reason}

        def committed(request: dict[str, Any] = request, reason: str = reason) -> bool | None:
            if any(e.get("reason") == reason for _, e in mesh.ledger("host1")):
                return True
            try:
                mesh.call("host1", request)
            except ControlError as err:
                if not err.remote or err.kind not in ("timeout", "not_leader", "no_quorum"):
                    raise
                return None
            return True

        mesh.wait_until(committed, 30, f"{reason!r} committed through host1")


def test_full_disk_keeps_the_agent_up_alerts_and_catches_up(mesh: Mesh, webhook: Webhook) -> None:
    mesh.wait_leader(30)
    filler = mesh.data_dir(VICTIM) / "filler"
    t_full = time.monotonic()
    fill(filler)
    commit_some(mesh, 10, "while-full-")

    def persist_problem() -> dict[str, Any] | None:
        st = mesh.try_status(VICTIM)
        return st["persist"]["problems"][0] if st and st["persist"]["problems"] else None

    problem = mesh.wait_until(persist_problem, 15, f"{VICTIM} reports it cannot write")
    t_reported = time.monotonic() - t_full
    assert problem["errno"] == "ENOSPC", problem
    assert problem["path"].startswith(str(mesh.data_dir(VICTIM))), problem
    alert = mesh.wait_until(
        lambda: next((a for a in webhook.received if a["host"] == VICTIM), None),
        15,
        f"an alert from {VICTIM} about its disk",
    )
    t_alerted = time.monotonic() - t_full
    assert "ENOSPC" in alert["subject"] and str(mesh.data_dir(VICTIM)) in alert["body"], alert
    # Ride it out for a while: alive, answering, and nobody judges it.
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        assert mesh.running(VICTIM), mesh.log_tail(VICTIM)
        for h in HOSTS:
            v = mesh.verdict(h, VICTIM)
            assert v in (None, "healthy"), f"{h} sees {VICTIM} {v}\n{mesh.describe()}"
        commit_some(mesh, 1, "still-full-")
    st = mesh.status(VICTIM)
    journal_frozen = any(p["what"] == "journal" for p in st["persist"]["problems"])
    if journal_frozen:
        assert not st["persist"]["voting"] and not st["has_quorum"]

    filler.unlink()
    commit_some(mesh, 2, "after-")
    mesh.wait_until(
        lambda: (
            (s := mesh.try_status(VICTIM)) is not None and s["persist"]["ok"] and s["has_quorum"]
        ),
        30,
        f"{VICTIM} writes and votes again",
    )
    commit_some(mesh, 1, "last-")
    wanted = {"while-full-0", "while-full-9", "still-full-0", "after-0", "last-0"}
    book = mesh.wait_ledgers_equal(
        HOSTS,
        timeout_s=30,
        holding=lambda b: wanted <= {e.get("reason") for e in b.values()},
    )
    reasons = {e.get("reason") for e in book.values()}
    assert wanted <= reasons
    for h in HOSTS:
        kinds = [(e["kind"], e.get("verdict")) for _, e in mesh.ledger(h) if e["kind"] == "verdict"]
        assert all(k[1] in ("healthy", "maintenance") for k in kinds), kinds
        assert not any(e["kind"] == "intent" and e["action"] == "fence" for e in book.values())
    assert mesh.running(VICTIM)
    print(f"disk full: reported after {t_reported:.2f} s, alerted after {t_alerted:.2f} s")


def test_a_disk_that_fills_in_a_quiet_segment_is_found_without_a_commit(
    mesh: Mesh, webhook: Webhook
) -> None:
    """Nothing is committed while the disk is full: the periodic checks (the journal's
    probe, the ledger's check: meshha.agent.persist) still find it, say what and where,
    alert, and the host stops voting, within a bound; then it votes again."""
    mesh.wait_leader(30)
    mesh.wait_until(
        lambda: all((s := mesh.try_status(h)) and s["has_quorum"] for h in HOSTS), 30, "quorum"
    )
    index = mesh.status(VICTIM)["index"]
    filler = mesh.data_dir(VICTIM) / "filler"
    t_full = time.monotonic()
    fill(filler)

    def problems() -> dict[str, dict[str, Any]] | None:
        st = mesh.try_status(VICTIM)
        got = {p["what"]: p for p in (st or {}).get("persist", {}).get("problems", [])}
        return got if {"journal", "ledger"} <= set(got) else None

    # bound: the journal probes every 5 s (+1 s timer), the ledger is checked every 5 s,
    # both polled every 0.5 s; 10 s more for a loaded machine
    found = mesh.wait_until(problems, 16.5, f"{VICTIM} finds its full disk with no commit")
    t_found = time.monotonic() - t_full
    for p in found.values():
        assert p["errno"] == "ENOSPC" and p["path"].startswith(str(mesh.data_dir(VICTIM))), p
    st = mesh.status(VICTIM)
    assert not st["persist"]["voting"] and not st["has_quorum"], st["persist"]
    alert = mesh.wait_until(
        lambda: next((a for a in webhook.received if a["host"] == VICTIM), None), 15, "alert"
    )
    t_alerted = time.monotonic() - t_full
    assert "ENOSPC" in alert["subject"] and str(mesh.data_dir(VICTIM)) in alert["body"], alert
    for h in HOSTS:
        assert mesh.verdict(h, VICTIM) in (None, "healthy"), mesh.describe()
    filler.unlink()
    mesh.wait_until(
        lambda: (
            (s := mesh.try_status(VICTIM)) is not None and s["persist"]["ok"] and s["has_quorum"]
        ),
        30,
        f"{VICTIM} writes and votes again",
    )
    assert mesh.status(VICTIM)["index"] >= index
    for h in HOSTS:
        assert not any(e["kind"] == "intent" and e["action"] == "fence" for _, e in mesh.ledger(h))
    print(f"quiet disk full: found after {t_found:.2f} s, alerted after {t_alerted:.2f} s")
