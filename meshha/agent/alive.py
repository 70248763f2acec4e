"""The last moment this host was up, kept across its reboots: evidence against a BMC that
lies (issue 12).

A BMC that reports "off" while its host keeps running is caught on the host's return when
the host never went down: it booted before the fence (decide/return_.py `lied`). It is not
caught that way when the host went down a little later for another reason. Cut off behind
the lying BMC, the host's agent destroys its VMs at isolation_after_s and its watchdog
resets it a few seconds after the BMC's "off" (lan-fast, the example's 6 s watchdog: about
7 s after its last contact with the majority). It then boots after the fence, exactly as
after an honest one, and the next fence through that BMC would be believed again. What
tells the two apart is when the host was last up: an honest power-off stops it at the
BMC's "off", a lie leaves it running after.

So the agent writes, about once a second, the segment time (the time the log holds) and
its host's boot time to `<data dir>/alive`: a small file replaced atomically, written from
a worker thread (never on the event loop), not fsynced (a write lost in a power cut only
makes the mark earlier, and an earlier mark can only miss a lie, never invent one). At
start, a mark left by an earlier boot is kept as this boot's `previous` (in
`alive.prev`, so that an agent restarted later in the same boot still has it), and the
reconcile report carries it (`alive_until`): the leader takes a mark later than the
BMC's confirmed "off", beyond the clock skew bound, for a lie.

A file that cannot be read or written is logged once and the mark is then missing: no
evidence, never a wrong one. The simulator does not model this file (its hosts report no
`alive_until`, as a daemon whose data dir lost the file would).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import structlog

log = structlog.get_logger("meshha.alive")

MARK_EVERY_S = 1.0
SAME_BOOT_S = 2.0  # boot times read twice in one boot differ by less (rounding, clock slews)


class AliveMark:
    """`<dir>/alive` and `<dir>/alive.prev` (see the module doc). Blocking file IO: call
    from a worker thread."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "alive"
        self.prev_path = directory / "alive.prev"
        self.previous: float | None = None
        self.started = False  # `start` has read what an earlier boot left
        self._failed = False

    def start(self, boot: float | None) -> float | None:
        """Read what an earlier boot left; returns (and keeps) the last mark of the boot
        before this one, or None."""
        self.started = True
        if boot is None:
            return None
        last = self._read(self.path)
        if last is not None and not _same_boot(last.get("boot"), boot):
            alive = last.get("alive")
            if isinstance(alive, int | float) and math.isfinite(alive):
                self.previous = float(alive)
                self._write(self.prev_path, {"for_boot": boot, "alive": self.previous})
                return self.previous
        prev = self._read(self.prev_path)
        if prev is not None and _same_boot(prev.get("for_boot"), boot):
            alive = prev.get("alive")
            if isinstance(alive, int | float) and math.isfinite(alive):
                self.previous = float(alive)
        return self.previous

    def mark(self, boot: float, now: float) -> None:
        self._write(self.path, {"boot": boot, "alive": now})

    def _read(self, path: Path) -> dict[str, object] | None:
        try:
            got = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            log.warning("alive_mark_unreadable", path=str(path), error=str(err))
            return None
        return got if isinstance(got, dict) else None

    def _write(self, path: Path, data: dict[str, float]) -> None:
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(data))
            os.replace(tmp, path)
        except OSError as err:
            if not self._failed:
                log.error(
                    "alive_mark_failed",
                    path=str(path),
                    errno=err.errno,
                    error=str(err),
                    consequence="no evidence of when this host was last up: a BMC that "
                    "lied about a fence of it may go unnoticed",
                )
            self._failed = True
            return
        if self._failed:
            log.info("alive_mark_written_again", path=str(path))
        self._failed = False


def _same_boot(a: object, b: float) -> bool:
    return isinstance(a, int | float) and abs(float(a) - b) < SAME_BOOT_S
