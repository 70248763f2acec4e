"""The lab daemon outlives a Nova box too slow to answer a lifeline's start_compute.

On a loaded machine the box's control endpoint once timed out (30 s) while a host came
back from a power-off: the NovaBoxError went up through the daemon's nursery and killed
it, and with it every host's Nova API relay and lifeline; each host's nova-compute
stand-in then exited and was restarted about every 1.7 s, for good."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

from meshha.lab.labd import Lifelines
from meshha.lab.nova_client import NovaBoxError


class SlowBox:
    def __init__(self, fail: set[str]) -> None:
        self.fail, self.calls = fail, []  # type: ignore[var-annotated]

    def control(self, op: str, **args: Any) -> dict[str, Any]:
        self.calls.append(op)
        if op in self.fail:
            raise NovaBoxError(f"{op}: control endpoint unreachable: timed out")
        return {}


async def _serve(box: SlowBox, hello: bytes, close_after_reply: bool) -> bytes:
    lifelines = Lifelines(box)  # type: ignore[arg-type]
    client, server = trio.testing.memory_stream_pair()
    reply = b""
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lifelines.serve, server, "host1")
            await client.send_all(hello)
            while not reply.endswith(b"\n"):
                chunk = await client.receive_some(256)
                if not chunk:
                    break
                reply += chunk
            if close_after_reply:
                await client.aclose()
    return reply


async def test_start_compute_failure_is_answered_not_raised() -> None:
    box = SlowBox({"start_compute"})
    reply = await _serve(box, b"host1 boot\n", close_after_reply=False)
    assert reply.startswith(b"error: start_compute: control endpoint unreachable")
    assert box.calls == ["start_compute"]


async def test_stop_compute_failure_is_logged_not_raised() -> None:
    box = SlowBox({"stop_compute"})
    reply = await _serve(box, b"host1 boot\n", close_after_reply=True)
    assert reply == b"ok\n"
    assert box.calls == ["start_compute", "stop_compute"]
