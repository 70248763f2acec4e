"""Operating errors: things the world does to us (BMC unreachable, Nova 409, libvirt gone).

All of them derive from `MeshhaError` and carry `kind` (a short machine word tests and
policy switch on) and `where` (what was being talked to). Programmer errors are
assertions and `InvariantViolation`, never one of these.
"""

from __future__ import annotations


class MeshhaError(Exception):
    """Root of every operating error."""

    kind: str = "error"

    def __init__(self, message: str, *, kind: str | None = None, where: str = "") -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind
        self.where = where

    def __str__(self) -> str:
        base = super().__str__()
        return f"{self.where}: {base}" if self.where else base


class ConfigError(MeshhaError):
    kind = "config"


class FenceError(MeshhaError):
    """kind: unreachable | auth | timeout | not_confirmed | protocol"""

    kind = "fence"


class NovaError(MeshhaError):
    """kind: unreachable | conflict | not_found | timeout | refused | failed"""

    kind = "nova"


class HypervisorError(MeshhaError):
    """kind: unreachable | not_found | failed"""

    kind = "hypervisor"


class WatchdogError(MeshhaError):
    """kind: missing | busy | unsupported | failed"""

    kind = "watchdog"


class ProcessError(MeshhaError):
    kind = "process"


class AlertError(MeshhaError):
    kind = "alert"


class LogError(MeshhaError):
    """kind: not_leader | no_quorum | timeout (outcome unknown) | too_large | truncated | bind"""

    kind = "log"


class InvariantViolation(AssertionError):
    """A safety invariant of DESIGN.md was about to break. This is a bug: crash."""
