"""The evacuation pipeline's scheduling, as pure state machines fed with observations.

Nova evacuates one server per request and says nothing when it is done: the caller has to
watch. How many evacuations are in flight at once, in which order they start, and how
they are watched decide how soon the first VM runs again, how soon the last does, and
how much extra load a Nova that is already busy with a failed host has to carry. The IO
(the requests themselves) is in `meshha.recovery.nova`; this module decides, with time
as an input and no IO:

- `AdaptiveLimit`: how many evacuations may be in flight (AIMD). It starts small, so the
  first (highest-priority) VMs do not queue behind a crowd; grows by one per completed
  window while Nova keeps up (doubling per window until the first sign of trouble: slow
  start); and shrinks by `backoff` when Nova's time per evacuation and the latency both
  rise to more than `tolerance` times their recent lower quartiles, or Nova answers with
  an error. At most one decrease per window (signals from evacuations started before the
  decrease are old news). Never above max_limit; a decrease never takes it below
  min_limit (it may start below, at initial_limit).

  Nova's time per evacuation is an evacuation's latency divided by the number in flight
  alongside it (time-averaged over its life, itself included). The raw latency is not a
  load signal: Nova works on evacuations side by side and queues the rest, so by
  Little's law latency grows with the number in flight while the rate of completions
  stays or grows. A limit that backs off on raw latency (against the fastest one seen,
  which came while Nova was idle) reads its own queue as overload and falls to one at a
  time: bench/evacuate_vs_masakari.py at N=50 showed 16 decreases and the limit at 1-2
  for most of the run, each server then taking 7-10 s instead of 1.6-2.5 s at 3-4 in
  flight. Latency per evacuation in flight stays flat while Nova only queues, and falls
  while more in flight means more done; it rises when Nova does less per second with
  more in flight (thrashing) or gets slower for everyone, which is what backs off, when
  the latency is up by as much too (on a Nova that works side by side, fewer in flight
  because nothing is left to admit raises the time per evacuation in flight, not the
  latency, and is no load). The baselines are the lower quartiles of recent samples,
  not the minimum: Nova's time per server drifts up as the target fills and with the
  machine's load, and a minimum taken early (one lucky sample) turns that drift and
  noise into decreases that never end.

  Growth follows a gradient on throughput: the time per evacuation in flight is kept
  per number in flight (rounded), and the limit grows past L only while L in flight
  cost Nova clearly less per evacuation than the nearest smaller number measured; it
  holds when L is no better and steps down by one when L is clearly worse. Nova in a
  box (one process, the target compute's claims and ends under one fair lock) did no
  more per second with 7-9 in flight than with 3: in one adjacent pair of N=50 runs,
  meshha's batches of 7-9 ran at 0.41-0.55 servers/s and Masakari's of 3 at a median
  of 0.8/s; yet each extra evacuation cost less than the latency rule's 2x, so the
  limit kept growing (bench/evacuate_vs_masakari.py, bench/results/evacuate_trace.json).
- `Board`: the evacuations of this agent: queued, posted, done. `admit` starts the best
  ranked queued ones (high priority before medium before low, then plan order) while the
  limit allows. Progress comes from one server listing per target host per poll, trimmed
  with Nova's `changes-since` to the servers that changed lately (`observe_listing`);
  a server that has not reached its target after `straggler_after_s` is looked at on its
  own (`stragglers` / `observe_server`), which is how failures that leave a server on its
  source are found without listing the source every poll.

The normal path costs Nova one POST per server plus one small listing per poll, however
many servers are moving (per-server polling costs one GET per server per poll).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

PRIORITY_RANK = {"high": 0, "medium": 1, "low": 2}

Rank = tuple[int, ...]


def rank_of(priority: str, *tiebreak: int) -> Rank:
    """Admission rank: priority first (unknown priorities count as medium), then the
    tiebreaks (plan order)."""
    return (PRIORITY_RANK.get(priority, PRIORITY_RANK["medium"]), *tiebreak)


# ---- the adaptive limit -----------------------------------------------------------------


@dataclass(frozen=True)
class LimitSettings:
    """initial_limit: in flight at the start (small: the first VMs are not slowed by a
    crowd; it may be below min_limit). min_limit: the fewest in flight a decrease leaves
    (the agent uses 3, Masakari's constant width: Nova does the work of an evacuation
    under one lock of the target's compute, so a few in flight keep it busy, and fewer
    leave it idle between one finishing and the next being accepted). max_limit: the
    hard cap on evacuations in flight. tolerance: an evacuation whose latency and time per evacuation in flight
    (latency / mean in flight) are both above tolerance x their lower quartiles over the
    last `baseline_samples` (plus `slack_s`, the watching granularity, on the latency)
    means Nova is doing less with more: back off. Lower is touchier (a noisy Nova makes it back off for nothing),
    higher lets a thrashing Nova run longer before it does. slow_start_exit: above this
    multiple of the baseline (but under tolerance) the limit stops doubling and grows by
    one per window: a Nova that slows a little per extra evacuation is approached
    gently instead of overshot. backoff: the factor applied on a decrease.

    gradient_margin: a limit grows past L only while L in flight cost Nova at least this
    fraction less time per evacuation than the nearest smaller number in flight measured
    (throughput still rising with concurrency), and steps down by one when L cost more
    than (1 + margin) x that: the gradient of completions per second, not a latency
    threshold. Lower follows smaller gains (and more noise); higher settles sooner.
    level_samples: completions measured at a number in flight before it is compared
    (a batch that Nova finishes together gives several at once). The gradient only
    looks at completions of the last `gradient_window` admissions: Nova's time per
    evacuation drifts (the target fills, the machine's load moves), so old samples at a
    smaller number in flight look cheaper than they are now; and a number in flight
    that did not pay is tried again once its samples have aged out."""

    initial_limit: int = 2
    min_limit: int = 1
    max_limit: int = 10
    tolerance: float = 2.0
    slack_s: float = 0.25
    backoff: float = 0.7
    baseline_samples: int = 20
    slow_start_exit: float = 1.2
    gradient_margin: float = 0.1
    level_samples: int = 3
    gradient_window: int = 20

    def __post_init__(self) -> None:
        assert 1 <= self.min_limit <= self.max_limit and 1 <= self.initial_limit <= self.max_limit
        assert self.tolerance > 1.0 and 0.0 < self.backoff < 1.0 and self.slack_s >= 0
        assert self.baseline_samples >= 1 and 1 <= self.level_samples <= self.gradient_window
        assert 1.0 <= self.slow_start_exit <= self.tolerance
        assert 0.0 <= self.gradient_margin < 1.0


class AdaptiveLimit:
    """AIMD on evacuation latency and Nova's errors, growth gated by the throughput
    gradient (see the module docstring)."""

    def __init__(self, settings: LimitSettings | None = None) -> None:
        self.s = settings or LimitSettings()
        self.value = float(self.s.initial_limit)
        self.slow_start = True
        self._recent: deque[float] = deque(maxlen=self.s.baseline_samples)  # latencies
        self._costs: deque[float] = deque(maxlen=self.s.baseline_samples)  # per in flight
        self._seq = 0  # admissions so far
        self._decreased_at = -1  # the admission count when we last decreased
        self.decreases = 0
        # Nova's time per evacuation by the number in flight it ran with (rounded):
        # (admission seq, seconds) of recent completions, for the throughput gradient.
        self._levels: dict[int, deque[tuple[int, float]]] = {}
        self._stepped_at = -1  # the admission count when the gradient last stepped down
        self.steps_down = 0
        self.holds = 0  # completions where growth was withheld (for tests and benchmarks)

    @property
    def limit(self) -> int:
        return max(1, min(self.s.max_limit, math.floor(self.value)))

    def admitted(self) -> int:
        """Count an admission; returns its sequence number (give it back with the result)."""
        self._seq += 1
        return self._seq

    def baseline_s(self) -> float | None:
        """The fastest recent evacuation (how long a straggler may go unseen)."""
        return min(self._recent) if self._recent else None

    def cost_baseline_s(self) -> float | None:
        """The lower quartile of the recent times per evacuation in flight."""
        return _lower_quartile(self._costs)

    def latency_baseline_s(self) -> float | None:
        """The lower quartile of the recent latencies."""
        return _lower_quartile(self._recent)

    def _above(self, factor: float, latency_s: float, in_flight: float) -> bool:
        """Both the latency and the time per evacuation in flight above `factor` x their
        baselines (the slack on the latency). Latency alone is Nova's queue; the time per
        evacuation in flight alone rises when fewer are in flight on a Nova that works
        side by side (nothing left to admit), which is not load either."""
        lat_base, cost_base = self.latency_baseline_s(), self.cost_baseline_s()
        if lat_base is None or cost_base is None:
            return False
        slack = self.s.slack_s
        return (
            latency_s > factor * lat_base + slack
            and latency_s / in_flight > factor * cost_base + slack / in_flight
        )

    def on_done(self, seq: int, latency_s: float, in_flight: float = 1.0) -> None:
        """One evacuation done after `latency_s`, with `in_flight` evacuations in flight on
        average over its life (itself included)."""
        in_flight = max(1.0, in_flight)
        slower = self._above(self.s.tolerance, latency_s, in_flight)
        if self._above(self.s.slow_start_exit, latency_s, in_flight):
            self.slow_start = False  # Nova starts to do less per server: stop doubling
        self._recent.append(latency_s)
        self._costs.append(latency_s / in_flight)
        level = min(self.s.max_limit, max(1, round(in_flight)))
        samples = self._levels.setdefault(level, deque(maxlen=2 * self.s.level_samples))
        samples.append((seq, latency_s / in_flight))
        if slower:
            self._decrease(seq)
            return
        match self._gradient():
            case "down" if seq > self._stepped_at:
                self.slow_start = False
                self.value = float(max(self.s.min_limit, self.limit - 1))
                self._stepped_at = self._seq
                self.steps_down += 1
            case "down" | "hold":
                self.slow_start = False
                self.value = min(self.value, float(self.limit))  # no creeping past it
                self.holds += 1
            case "grow" if self.slow_start:
                self.value = min(self.s.max_limit, self.value + 1.0)
            case _:
                self.value = min(self.s.max_limit, self.value + 1.0 / max(1.0, self.value))

    def level_cost_s(self, level: int) -> float | None:
        """The median of Nova's recent times per evacuation with `level` in flight, once
        there are level_samples of them (None before)."""
        oldest = self._seq - self.s.gradient_window
        costs = sorted(c for s, c in self._levels.get(level, ()) if s > oldest)
        if len(costs) < self.s.level_samples:
            return None
        return costs[len(costs) // 2]

    def _gradient(self) -> Literal["grow", "hold", "down"]:
        """Whether more in flight still buys completions per second. With L = the limit:
        L against the nearest smaller number in flight measured recently (down when L
        is clearly worse, hold when it is no better), and L + 1 if it was measured
        recently and was no better than L (hold: tried, did not pay)."""
        here_at = self.limit
        here = self.level_cost_s(here_at)
        if here is None:
            return "grow"  # not measured yet: explore
        keep = 1.0 - self.s.gradient_margin
        above = self.level_cost_s(here_at + 1)
        if above is not None and above >= here * keep:
            return "hold"
        for below_at in range(here_at - 1, 0, -1):
            below = self.level_cost_s(below_at)
            if below is None:
                continue
            if here > below * (1.0 + self.s.gradient_margin) and here_at > self.s.min_limit:
                return "down"
            return "grow" if here <= below * keep else "hold"
        return "grow"

    def on_error(self, seq: int) -> None:
        """Nova was unreachable, overloaded (5xx) or too slow for an answer."""
        self._decrease(seq)

    def _decrease(self, seq: int) -> None:
        if seq <= self._decreased_at:
            return  # started before the last decrease: already accounted for
        self.slow_start = False
        self.value = max(float(self.s.min_limit), self.value * self.s.backoff)
        self._decreased_at = self._seq
        self.decreases += 1


def _lower_quartile(samples: deque[float]) -> float | None:
    return sorted(samples)[len(samples) // 4] if samples else None


# ---- the board --------------------------------------------------------------------------

Phase = Literal["queued", "admitted", "moving", "done", "failed"]


@dataclass(frozen=True)
class View:
    """What one listing row (or GET) says about a server."""

    id: str
    host: str | None
    status: str
    task_state: str | None
    updated: str = ""  # Nova's ISO timestamp of its last change (Nova's clock)


@dataclass
class Job:
    vm: str
    target: str
    rank: Rank
    submitted_s: float
    phase: Phase = "queued"
    seq: int = 0
    posted_s: float | None = None
    area_at_post: float = 0.0  # the board's in-flight-seconds when it was posted
    done_s: float | None = None
    last_look_s: float | None = None
    view: View | None = None
    error: str = ""
    error_kind: str = ""
    suspect: bool = False  # idle outside its target after the POST: failed, or a gap


@dataclass
class Board:
    """Every evacuation this agent has been asked for, until it is forgotten."""

    limit: AdaptiveLimit = field(default_factory=AdaptiveLimit)
    straggler_after_s: float = 3.0
    jobs: dict[str, Job] = field(default_factory=dict)
    since: dict[str, str] = field(default_factory=dict)  # host -> changes-since (Nova clock)
    peak_in_flight: int = 0  # the most ever in flight at once (for tests and benchmarks)
    # The integral of the number moving over time (in-flight-seconds), to give each
    # evacuation the mean number in flight over its life.
    _area: float = 0.0
    _area_t: float | None = None
    _moving: int = 0

    def _tick(self, now: float) -> float:
        """Bring the in-flight integral up to `now`; returns it."""
        if self._area_t is not None and now > self._area_t:
            self._area += self._moving * (now - self._area_t)
        self._area_t = now if self._area_t is None else max(self._area_t, now)
        return self._area

    def _recount(self) -> None:
        self._moving = sum(1 for j in self.jobs.values() if j.phase == "moving")

    def submit(self, vm: str, target: str, rank: Rank, now: float) -> Job:
        assert vm not in self.jobs or self.jobs[vm].phase in ("done", "failed"), vm
        job = Job(vm, target, rank, now)
        self.jobs[vm] = job
        return job

    def active(self, vm: str) -> bool:
        """Whether `vm` is queued or in flight here (a second call for it is a conflict)."""
        j = self.jobs.get(vm)
        return j is not None and j.phase not in ("done", "failed")

    def forget(self, vm: str) -> None:
        self.jobs.pop(vm, None)
        self._recount()

    def in_flight(self) -> int:
        return sum(1 for j in self.jobs.values() if j.phase in ("admitted", "moving"))

    def admit(self) -> list[Job]:
        """The queued jobs to start now: best rank first, while the limit allows."""
        room = self.limit.limit - self.in_flight()
        if room <= 0:
            return []
        queued = sorted(
            (j for j in self.jobs.values() if j.phase == "queued"),
            key=lambda j: (j.rank, j.submitted_s, j.vm),
        )
        out = queued[:room]
        for j in out:
            j.phase = "admitted"
            j.seq = self.limit.admitted()
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight())
        return out

    # -- what the IO layer reports --------------------------------------------------------

    def posted(self, vm: str, now: float, *, adopted: bool = False) -> None:
        """Nova accepted the evacuation (or `adopted`: one already under way, which will
        finish sooner than a fresh one and so says nothing about Nova's latency)."""
        j = self.jobs[vm]
        assert j.phase == "admitted", j
        j.area_at_post = self._tick(now)
        j.phase, j.last_look_s = "moving", now
        j.posted_s = None if adopted else now
        self._recount()

    def done(self, vm: str, view: View, now: float) -> None:
        j = self.jobs[vm]
        if j.phase in ("done", "failed"):
            return
        area = self._tick(now)
        j.phase, j.done_s, j.view = "done", now, view
        self._recount()
        if j.posted_s is not None:
            latency = now - j.posted_s
            in_flight = (area - j.area_at_post) / latency if latency > 0 else 1.0
            self.limit.on_done(j.seq, latency, in_flight)

    def failed(self, vm: str, error: str, kind: str = "failed", *, overload: bool) -> None:
        """The evacuation failed (`kind` as in NovaError). `overload`: Nova's own trouble
        (unreachable, 5xx, a timeout), which lowers the limit; a refusal or a failure
        about this one server does not."""
        j = self.jobs.get(vm)
        if j is None or j.phase in ("done", "failed"):
            return
        admitted = j.phase in ("admitted", "moving")
        j.phase, j.error, j.error_kind = "failed", error, kind
        self._recount()
        if overload and admitted:  # one still queued (its deadline ran out) says nothing
            self.limit.on_error(j.seq)

    def overloaded(self) -> None:
        """A listing failed or Nova answered slowly: fewer at once."""
        moving = [j.seq for j in self.jobs.values() if j.phase in ("admitted", "moving")]
        self.limit.on_error(max(moving, default=self.limit._seq))

    # -- watching -------------------------------------------------------------------------

    def hosts_to_list(self) -> list[str]:
        return sorted({j.target for j in self.jobs.values() if j.phase == "moving"})

    def changes_since(self, host: str) -> str | None:
        return self.since.get(host)

    def observe_listing(self, host: str, views: list[View], now: float) -> list[Job]:
        """A listing of `host` (trimmed by `changes_since(host)`). Returns the jobs that
        finished. Next time only what changed in the last two seconds of Nova's clock
        before the newest change seen here is asked for (Nova's timestamps have second
        resolution, and a change can commit a little after it was stamped)."""
        newest = max((v.updated for v in views if v.updated), default="")
        if newest:
            self.since[host] = iso_minus(newest, 2)
        finished = []
        for v in views:
            j = self.jobs.get(v.id)
            if j is not None and j.phase == "moving" and j.target == host:
                j.last_look_s = now
                if self._settle(j, v, now):
                    finished.append(j)
        return finished

    def straggler_s(self) -> float:
        """How long a moving server may go unseen before it is looked at on its own:
        three times the fastest recent evacuation, at least straggler_after_s."""
        base = self.limit.baseline_s()
        return max(self.straggler_after_s, 3 * base) if base is not None else self.straggler_after_s

    def stragglers(self, now: float, most: int) -> list[Job]:
        """Moving jobs not seen finished for `straggler_s()` (longest unseen first)."""
        after = self.straggler_s()
        late = [
            j
            for j in self.jobs.values()
            if j.phase == "moving" and j.last_look_s is not None and now - j.last_look_s >= after
        ]
        late.sort(key=lambda j: j.last_look_s or 0.0)
        return late[:most]

    def observe_server(self, view: View, now: float) -> Job | None:
        """One server looked at on its own. Returns its job if that finished it; a job
        left `suspect` needs its migration record read (failed, or a mid-flight gap)."""
        j = self.jobs.get(view.id)
        if j is None or j.phase != "moving":
            return None
        j.last_look_s = now
        return j if self._settle(j, view, now) else None

    def _settle(self, j: Job, v: View, now: float) -> bool:
        j.view = v
        j.suspect = False
        match progress(v, j.target):
            case "done":
                self.done(j.vm, v, now)
                return True
            case "error":
                self.failed(j.vm, f"{j.vm} went to ERROR on {v.host}", overload=False)
                return True
            case "gone":
                self.failed(j.vm, f"{j.vm} was deleted", overload=False)
                return True
            case "idle_elsewhere":
                j.suspect = True
        return False


Progress = Literal["done", "moving", "error", "gone", "idle_elsewhere"]


def progress(v: View, target: str) -> Progress:
    """Where an evacuation to `target` stands, from one view of the server. Done is "on
    the target with no task state" (ACTIVE, or SHUTOFF for a server that was stopped);
    idle anywhere else after the POST is a failure or the short gap Nova leaves mid-way
    (the migration record tells which)."""
    if v.status == "DELETED":
        return "gone"
    if v.task_state is not None:
        return "moving"
    if v.status == "ERROR":
        return "error"
    if v.host == target:
        return "done"
    return "idle_elsewhere"


def iso_minus(stamp: str, seconds: int) -> str:
    """An ISO-8601 UTC timestamp as Nova prints it ('2026-11-28T08:01:02Z'), `seconds`
    earlier, in the same form. Plain calendar arithmetic (no clock, no datetime)."""
    date, _, clock = stamp.rstrip("Z").partition("T")
    y, m, d = (int(x) for x in date.split("-"))
    hh, mm, ss = (int(float(x)) for x in clock.split(":"))
    total = _days_from_civil(y, m, d) * 86400 + hh * 3600 + mm * 60 + ss - seconds
    days, rest = divmod(total, 86400)
    y, m, d = _civil_from_days(days)
    return f"{y:04d}-{m:02d}-{d:02d}T{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}Z"


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _civil_from_days(z: int) -> tuple[int, int, int]:
    z += 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + (3 if mp < 10 else -9)
    return yoe + era * 400 + (m <= 2), m, d
