"""Imported (through PYTHONPATH) only by lab agents run under libfaketime
(meshha.lab.cloud LabSpec.agent_clock, the nemesis's clock fault): never by a shipped
agent.

libfaketime 0.9.10 (Debian 12) with FAKETIME_DONT_FAKE_MONOTONIC=1, which the lab needs
so that trio's clock stays the kernel's, makes clock_nanosleep(CLOCK_MONOTONIC,
TIMER_ABSTIME) fail with EINVAL, and Python's `time.sleep` is that call: every
`time.sleep` in the agent's process raised OSError, whatever the offset. The agent never
sleeps so, but its libraries do (keystoneauth's retry backoff when Nova is slow to
answer, pysyncobj on two rare paths): under load a Nova call's retry crashed a lab
agent, its watchdog fired while it restarted, and a healthy host was fenced (nemesis seed
839, stop 19). A real host's clock does not break `time.sleep`, so the lab's agents get
one that waits in select(), which libfaketime leaves alone.
"""

import select
import time
from typing import SupportsIndex


def _sleep(secs: float | SupportsIndex) -> None:
    secs = float(secs)
    if secs < 0:
        raise ValueError("sleep length must be non-negative")
    deadline = time.monotonic() + secs
    while (left := deadline - time.monotonic()) > 0:
        select.select([], [], [], left)


time.sleep = _sleep  # noqa: TID251  the replacement, not a call
