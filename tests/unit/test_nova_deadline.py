"""An evacuation's deadline (`timeout_s`, one Nova call) starts when it is admitted,
not when it was queued: the wait for a place under the limit is not Nova's time.

Measured on the lab (20 HA VMs behind a limit of 3-10, a Nova taking 27 s per
evacuation under load): with the deadline counted from submission, 14-33 evacuations
per run timed out while still queued, were counted as overload (a lower limit) and were
retried under new intents. Here a toy compute API (the sdk proxy's few calls the
pipeline makes) finishes each evacuation `EVAC_S` after its POST, the limit is 1, and
four are submitted at once: the fourth waits three evacuations in the queue, longer than
the deadline, and must still succeed.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import trio

from meshha.recovery.evacuation import LimitSettings
from meshha.recovery.nova import NovaDriver

EVAC_S = 0.5
TIMEOUT_S = 1.2  # one evacuation with room to spare; < the fourth's wait in the queue


class ToyCompute:
    """Servers on host1 (dead); an evacuation moves one to its target EVAC_S after the
    POST. Called from the driver's worker threads."""

    default_microversion: str | None = None

    def __init__(self, ids: list[str]) -> None:
        self._lock = threading.Lock()
        self._posted: dict[str, tuple[float, str]] = {}
        self.ids = ids
        self.posts: list[str] = []

    def _raw(self, sid: str) -> Any:
        with self._lock:
            posted = self._posted.get(sid)
        done = posted is not None and time.monotonic() - posted[0] >= EVAC_S
        return SimpleNamespace(
            id=sid,
            name=sid,
            compute_host=posted[1] if done and posted else "host1",
            status="ACTIVE",
            task_state=None if done or posted is None else "rebuilding",
            updated_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            project_id="p",
            metadata={},
            availability_zone="nova",
            flavor=SimpleNamespace(original_name="m1", vcpus=1, ram=64, disk=1, extra_specs={}),
        )

    def evacuate_server(self, sid: str, host: str) -> None:
        with self._lock:
            self._posted[sid] = (time.monotonic(), host)
            self.posts.append(sid)

    def get_server(self, sid: str) -> Any:
        return self._raw(sid)

    def servers(self, *, compute_host: str, **_: Any) -> list[Any]:
        return [r for r in map(self._raw, self.ids) if r.compute_host == compute_host]

    def migrations(self, **_: Any) -> list[Any]:
        return []


async def test_the_deadline_starts_at_admission_not_in_the_queue() -> None:
    ids = ["vm1", "vm2", "vm3", "vm4"]
    compute = ToyCompute(ids)
    driver = NovaDriver(
        lambda: SimpleNamespace(compute=compute),
        timeout_s=TIMEOUT_S,
        poll_interval_s=0.02,
        limits=LimitSettings(initial_limit=1, min_limit=1, max_limit=1),
    )
    done: dict[str, float] = {}
    t0 = time.monotonic()

    async def one(sid: str, rank: int) -> None:
        server = await driver.evacuate(sid, "host2", rank=(rank,))
        assert server.host == "host2"
        done[sid] = time.monotonic() - t0

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for rank, sid in enumerate(ids):
                nursery.start_soon(one, sid, rank)
    assert compute.posts == ids  # one POST each, best rank first, one at a time
    assert done["vm4"] > TIMEOUT_S, done  # it waited longer than the deadline, and made it
