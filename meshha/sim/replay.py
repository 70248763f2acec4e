"""Exact replay: a simulated run is a function of its scenario and seed alone, byte for
byte, whatever the process (`PYTHONHASHSEED`, earlier runs, the wall clock).

`run(fn, *args, seed=S)` is the one way to start a simulated run (`meshctl sim` and the
sim tests use it): `trio.run` under a MockClock that jumps over idle time, with trio's
scheduler made deterministic. What could make two runs of one seed differ, and what
closes each:

- trio's scheduler runs each batch of runnable tasks in a random order (it reverses the
  batch with probability 1/2, from a module-level `random.Random`). trio has a switch for
  tests, used by its Hypothesis plugin and by its own test_scheduler_determinism.py:
  with `trio._core._run._ALLOW_DETERMINISTIC_SCHEDULING` on, each batch is sorted by
  task creation order and then shuffled with `trio._core._run._r`. We seed `_r` from the
  run's seed, so one seed always gives the same interleaving and different seeds explore
  different ones. Both are private names: `run` fails loudly if trio drops them.
- Deadlines that fall at the same instant expire in `id()` order inside trio, but the
  tasks they wake land in one batch, which the switch above sorts: the order is gone.
- Iteration over a set of strings depends on `PYTHONHASHSEED`. Where such an order could
  reach the wire or the log the code iterates sorted (e.g. the prober's suspects in
  `probes/swim.py`); tests/sim/test_replay.py runs two hash seeds and compares.
- Time: simulated time is trio's clock, wall time is `world.EPOCH` + trio time, and every
  PRNG (network, Raft stand-in, probers, swarm schedule) is seeded from the seed. The
  simulated path has no threads and no real I/O (the autojump clock would race them).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import trio
import trio.testing
from trio._core import _run as trio_run

T = TypeVar("T")

_FLAG = "_ALLOW_DETERMINISTIC_SCHEDULING"


@contextmanager
def deterministic_scheduling(seed: int) -> Iterator[None]:
    """trio's test-only deterministic scheduler, seeded; restored on exit (the flag is
    process-wide, so a test process gets back trio's usual randomized order)."""
    if not hasattr(trio_run, _FLAG) or not hasattr(trio_run, "_r"):
        raise RuntimeError(
            f"trio {trio.__version__} has no deterministic-scheduling hook "
            f"(trio._core._run.{_FLAG} / _r): exact replay is not possible"
        )
    saved_flag = getattr(trio_run, _FLAG)
    saved_state = trio_run._r.getstate()
    setattr(trio_run, _FLAG, True)
    trio_run._r.seed(seed)
    try:
        yield
    finally:
        setattr(trio_run, _FLAG, saved_flag)
        trio_run._r.setstate(saved_state)


def run(fn: Callable[..., Awaitable[T]], *args: Any, seed: int) -> T:
    """`trio.run(fn, *args)` in simulated time, replayable from `seed`."""
    with deterministic_scheduling(seed):
        return trio.run(fn, *args, clock=trio.testing.MockClock(autojump_threshold=0))
