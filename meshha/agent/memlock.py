"""Keep the agent's memory in RAM: mlockall(2) through ctypes, at start.

Why: the path that answers probes must never wait for a page to come back from swap or
from a dropped file-backed page (the interpreter's own code) while the host is under
memory pressure, which is exactly when a compute host's agent is needed. A page fault
there can stall the event loop for seconds, and peers would take the stall for a dead
host. MCL_ONFAULT (Linux >= 4.4) locks pages as they are first touched, so the agent's
reserved-but-unused memory (thread stacks, arenas) costs nothing; without it (older
kernels) the current and future mappings are locked as they are made.

Needs CAP_IPC_LOCK or a high enough RLIMIT_MEMLOCK (the unit sets LimitMEMLOCK=infinity;
the agent runs as root). Failure is not fatal: the agent says why and runs unlocked.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4


def lock_memory() -> str | None:
    """Lock current and future pages. None on success, else why not (errno name)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name, use_errno=True)
    except OSError as err:
        return f"libc not loadable: {err}"
    for flags in (MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT, MCL_CURRENT | MCL_FUTURE):
        if libc.mlockall(flags) == 0:
            return None
        code = ctypes.get_errno()
        if code != errno.EINVAL:  # EINVAL: no MCL_ONFAULT on this kernel, try without
            return f"{errno.errorcode.get(code, code)}: {os.strerror(code)}"
    return "EINVAL: mlockall refused every flag set"
