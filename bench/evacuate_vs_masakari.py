"""Evacuation on the same Nova: meshha's executor against Masakari 22.0.0's own flow.

What it measures: a compute host (host1) has died (its nova-compute stopped for real and
Nova sees it down); its N servers must be rebuilt on the reserved host (host2). Each run
gets a fresh Nova in a box (meshha/lab/nova_box.py) with N tiny servers on host1, and
one of:

  masakari     Masakari 22.0.0 from PyPI, in its own virtualenv (installed here on first
               use, beside the Nova venv: /opt/meshha/masakari-venv, never meshha's):
               its real TaskFlowDriver.execute_host_failure (bench/masakari_flow.py),
               recovery method reserved_host, wait_period_after_service_update 0 (its
               default 180 s once, with --defaults), its 3-wide pool, 1 s polling,
               novaclient at 2.53, pointed at the box with keystoneauth's admin-token
               plugin (there is no Keystone).
  masakari-auto  the same with recovery method auto (Nova's scheduler picks the host).
  meshha       meshha's Executor with the NovaDriver, as the leader runs it: the
               disable_compute intent (force down), the inventory intent (servers and
               every host's capacity), then one evacuate intent per server, handed to
               the executor as the node does (at most recovery.max_parallel_evacuations
               at once, in plan order: high, medium, low priority), each result a
               committed-result-shaped entry. The Raft commits between the steps are not
               included (milliseconds).

Strategies alternate run by run (the order flips every repetition). Measured from the
start of the strategy's flow, on Nova's side (the box records every instance state
change as Nova saves it, so watching costs neither side anything):

  first_active_s  the first server ACTIVE with no task state on host2
  all_active_s    the last one
  requests        HTTP requests the Nova API answered during the run (placement apart)
  priority_inversions  pairs (a, b) where a has a higher priority than b but b was ACTIVE
                  first (servers carry meshha:priority metadata: 20 % high, 30 % medium,
                  50 % low, interleaved; Masakari does not know priorities)

    python bench/evacuate_vs_masakari.py [--sizes 10,20,50] [--reps 3] [--defaults]

Writes bench/results/evacuate_vs_masakari.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from meshha import logs  # noqa: E402
from meshha.config.synthetic import synthetic_segment  # noqa: E402
from meshha.lab.nova_client import NovaBox, venv_missing_reason  # noqa: E402
from meshha.raft.records import Inventory  # noqa: E402
from meshha.raft.state import Intent  # noqa: E402
from meshha.recovery.evacuation import PRIORITY_RANK, LimitSettings  # noqa: E402
from meshha.recovery.executor import Drivers, Executor  # noqa: E402
from meshha.recovery.nova import NovaDriver  # noqa: E402

RESULTS = REPO / "bench" / "results"
MASAKARI_VERSION = "22.0.0"
MASAKARI_VENV = Path(os.environ.get("MESHHA_MASAKARI_VENV", "/opt/meshha/masakari-venv"))
MASAKARI_FLOW = REPO / "bench" / "masakari_flow.py"
IMAGE_ID = "155d900f-4e14-4e4c-a73d-069cbf4541e6"  # one of nova's GlanceFixture images
TINY_FLAVOR_ID = "1"
FAILED, RESERVED = "host1", "host2"
PRIORITY_CYCLE = ("low", "medium", "high", "low", "medium", "low", "low", "medium", "high", "low")
DEADLINE_S = 600.0
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def ensure_masakari() -> Path:
    """Masakari's python, installing Masakari 22.0.0 from PyPI into its own venv first."""
    python = MASAKARI_VENV / "bin" / "python"
    probe = [str(python), "-c", "import masakari, novaclient; print(masakari.__file__)"]
    ok = python.exists() and subprocess.run(probe, capture_output=True).returncode == 0
    if ok:
        version = subprocess.run(
            [str(python), "-m", "pip", "show", "masakari"], capture_output=True, text=True
        ).stdout
        ok = f"Version: {MASAKARI_VERSION}" in version
    if not ok:
        print(f"installing masakari=={MASAKARI_VERSION} into {MASAKARI_VENV}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(MASAKARI_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"masakari=={MASAKARI_VERSION}"],
            check=True,
        )
    return python


# -- one run -------------------------------------------------------------------------------


@dataclass
class Run:
    strategy: str
    servers: int
    rep: int
    t_start: float = 0.0
    t_end: float = 0.0
    first_active_s: float = math.nan
    all_active_s: float = math.nan
    flow_s: float = math.nan
    requests: int = 0
    requests_by_method: dict[str, int] = field(default_factory=dict)
    priority_inversions: int = 0
    high_last_s: float = math.nan
    peak_in_flight: int = 0
    first_request_s: float = math.nan  # the first evacuation Nova accepted
    steps_s: dict[str, float] = field(default_factory=dict)  # meshha: when each step ended
    # Where the time goes (bench/results/evacuate_trace.json, not the summary):
    # per VM: priority, evacuation accepted, each task state Nova saved, ACTIVE (s from
    # t_start); meshha only: its limit and in-flight count over time, and every Nova
    # call it made (kind, start, end).
    trace: dict[str, Any] = field(default_factory=dict)
    outcome: str = "ok"
    error: str | None = None
    load_avg: float = math.nan  # the machine's 1-minute load average at the end of the run
    # CPU seconds spent during the flow by Nova's process and by the client (meshha's
    # bench process, or Masakari's flow process): what each side costs, whatever the
    # machine's load did to the wall clock.
    nova_cpu_s: float = math.nan
    client_cpu_s: float = math.nan

    def row(self) -> dict[str, Any]:
        return {
            k: (round(v, 4) if isinstance(v, float) else v)
            for k, v in vars(self).items()
            if k != "trace"
        }


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def nova_pid(box: NovaBox) -> int:
    assert box.proc is not None
    return box.proc.pid


def fresh_box(work: Path, n: int) -> tuple[NovaBox, Any, dict[str, str]]:
    """A new box with n servers ACTIVE on host1 (priority in metadata) and host1 dead."""
    box = NovaBox(
        [FAILED, RESERVED],
        size=(n + 8, 512 * (n + 8), n + 64),
        tmpdir=work / "nova",
        log_path=work / "nova.log",
    )
    box.start()
    try:
        return box, *boot_and_fail(box, n)
    except BaseException:
        box.close()  # a box that never got ready is not left running
        raise


def boot_and_fail(box: NovaBox, n: int) -> tuple[Any, dict[str, str]]:
    """n servers ACTIVE on host1 with their priorities, then host1's compute stopped
    until Nova sees it down."""
    conn = box.connect(compute_api_version="2.94")
    priorities: dict[str, str] = {}
    # Boot in groups of ten (one request each): one request for 50 is slow in the box.
    for g in range(0, n, 10):
        k = min(10, n - g)
        conn.compute.create_server(
            name=f"ha-{g:03d}",
            flavor_id=TINY_FLAVOR_ID,
            image_id=IMAGE_ID,
            networks="none",
            host=FAILED,
            min_count=k,
            max_count=k,
        )
    deadline = time.monotonic() + 900  # a loaded machine (load 20) took over 300 s for 50
    while True:
        servers = list(conn.compute.servers(details=True, all_projects=True, compute_host=FAILED))
        states = [s.status for s in servers]
        assert "ERROR" not in states, [s.fault for s in servers if s.status == "ERROR"]
        if len(servers) == n and all(x == "ACTIVE" for x in states):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"boot: {states}")
        time.sleep(1.0)  # noqa: TID251  a lab wait between listings, not under test
    for i, s in enumerate(sorted(servers, key=lambda s: s.id)):
        p = PRIORITY_CYCLE[i % len(PRIORITY_CYCLE)]
        conn.compute.set_server_metadata(s, **{"HA_Enabled": "True", "meshha:priority": p})
        priorities[s.id] = p
    box.stop_compute(FAILED)
    deadline = time.monotonic() + 60
    while next(s for s in conn.compute.services() if s.host == FAILED).state != "down":
        if time.monotonic() > deadline:
            raise TimeoutError("host1 never seen down")
        time.sleep(0.5)  # noqa: TID251  a lab wait for Nova's service_down_time
    return conn, priorities


def measure(run: Run, box: NovaBox, priorities: dict[str, str]) -> None:
    counters = box.counters()
    run.requests = int(counters["nova_requests"])
    run.requests_by_method = counters["requests"]
    active: dict[str, float] = {}
    accepted: list[float] = []
    for uuid, host, vm_state, task, t in counters["changes"]:
        if uuid in priorities and host == RESERVED and vm_state == "active" and task is None:
            active.setdefault(uuid, t - run.t_start)
        if uuid in priorities and task == "rebuilding":
            accepted.append(t - run.t_start)
    run.first_request_s = min(accepted, default=math.nan)
    vms: dict[str, dict[str, Any]] = {
        u: {"priority": p, "states": []} for u, p in priorities.items()
    }
    for uuid, host, vm_state, task, t in counters["changes"]:
        if uuid in vms:
            vms[uuid]["states"].append([round(t - run.t_start, 3), host, vm_state, task])
    run.trace["vms"] = vms
    run.flow_s = run.t_end - run.t_start
    if len(active) != len(priorities):
        run.outcome = "incomplete"
        run.error = f"{len(active)} of {len(priorities)} ACTIVE on {RESERVED}"
    if active:
        run.first_active_s = min(active.values())
        run.all_active_s = max(active.values())
    ranked = [(PRIORITY_RANK[priorities[u]], t) for u, t in active.items()]
    run.priority_inversions = sum(
        1 for ra, ta in ranked for rb, tb in ranked if ra < rb and ta > tb
    )
    highs = [t for u, t in active.items() if priorities[u] == "high"]
    run.high_last_s = max(highs) if highs else math.nan


def run_masakari(
    run: Run, box: NovaBox, work: Path, python: Path, method: str, wait_s: int
) -> None:
    mk = work / "masakari"
    mk.mkdir()
    cmd = [
        str(python),
        str(MASAKARI_FLOW),
        "--endpoint",
        box.endpoint,
        "--failed",
        FAILED,
        "--reserved",
        RESERVED,
        "--method",
        method,
        "--wait",
        str(wait_s),
        "--workdir",
        str(mk),
    ]
    box.counters(reset=True)
    nova_cpu0 = process_cpu_s(nova_pid(box))
    child0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(work / "masakari.log", "w") as err:
        proc = subprocess.run(
            cmd, stdout=subprocess.PIPE, stderr=err, text=True, timeout=DEADLINE_S
        )
    child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    run.nova_cpu_s = process_cpu_s(nova_pid(box)) - nova_cpu0
    run.client_cpu_s = (child1.ru_utime - child0.ru_utime) + (child1.ru_stime - child0.ru_stime)
    line = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "{}"
    out = json.loads(line)
    if proc.returncode != 0 or out.get("outcome") != "ok":
        run.outcome, run.error = "failed", out.get("error") or f"exit {proc.returncode}"
    run.t_start, run.t_end = out.get("t_start", time.time()), out.get("t_end", time.time())


class BenchState:
    """What the executor reads of the replicated state: host1 fenced, nothing in
    maintenance, and the committed inventory (for the VMs' priorities)."""

    def __init__(self) -> None:
        self.inventory: dict[str, dict[str, Any]] = {}

    def is_fenced(self, host: str) -> bool:
        return host == FAILED

    def in_maintenance(self, host: str) -> bool:
        return False


async def run_meshha(run: Run, box: NovaBox) -> None:
    segment = synthetic_segment(2, reserved=(RESERVED,))
    width = segment.recovery.max_parallel_evacuations
    nova = NovaDriver(  # the limits as meshha.agent.main sets them
        box.connect,
        timeout_s=DEADLINE_S,
        limits=LimitSettings(initial_limit=min(2, width), min_limit=min(3, width), max_limit=width),
    )
    executor = Executor(segment, Drivers(fence=None, nova=nova, alerts=None), "bench")  # type: ignore[arg-type]
    state: Any = BenchState()
    index = iter(range(1, 1_000_000))

    def intent(action: str, vm: str | None = None, order: int = 0) -> Intent:
        return Intent(
            id=f"{action}:{FAILED}:e1:{vm or ''}:a1",
            key=None,
            action=action,  # type: ignore[arg-type]
            host=FAILED,
            vm=vm,
            target=RESERVED if vm else None,
            order=order,
            reason="bench",
            params={},
            created_ts=time.time(),
            created_index=next(index),
            episode=1,
        )

    calls: list[list[Any]] = []
    samples: list[list[Any]] = []
    real_call = nova._call

    async def traced_call(what: str, fn: Callable[..., Any], *args: Any) -> Any:
        t0 = time.time()
        try:
            return await real_call(what, fn, *args)
        finally:
            kind = UUID.sub("*", what.removeprefix("nova: "))
            calls.append([kind, round(t0 - run.t_start, 3), round(time.time() - run.t_start, 3)])

    nova._call = traced_call  # type: ignore[method-assign]

    async def sample_limit() -> None:
        board = nova.board
        while True:
            queued = sum(1 for j in board.jobs.values() if j.phase == "queued")
            samples.append(
                [round(time.time() - run.t_start, 2), board.limit.limit, board.in_flight(), queued]
            )
            await trio.sleep(0.25)

    await trio.to_thread.run_sync(lambda: box.counters(reset=True))
    nova_cpu0, self_cpu0 = process_cpu_s(nova_pid(box)), time.process_time()
    run.t_start = time.time()
    async with trio.open_nursery() as watch:
        watch.start_soon(sample_limit)
        await run_meshha_flow(run, segment, executor, state, intent)
        watch.cancel_scope.cancel()
    run.t_end = time.time()
    run.nova_cpu_s = process_cpu_s(nova_pid(box)) - nova_cpu0
    run.client_cpu_s = time.process_time() - self_cpu0
    run.peak_in_flight = nova.board.peak_in_flight
    lim = nova.board.limit
    run.trace.update(
        calls=calls,
        limit=samples,
        decreases=lim.decreases,
        steps_down=lim.steps_down,
        holds=lim.holds,
        level_cost_s={n: lim.level_cost_s(n) for n in range(1, lim.s.max_limit + 1)},
    )


async def run_meshha_flow(
    run: Run,
    segment: Any,
    executor: Executor,
    state: Any,
    intent: Callable[..., Intent],
) -> None:
    async def step(i: Intent) -> dict[str, Any]:
        entry = await executor.execute(i, state, time.time)
        assert entry["outcome"] == "ok", entry
        return entry

    with trio.fail_after(DEADLINE_S):
        await step(intent("disable_compute"))
        run.steps_s["disable_compute"] = round(time.time() - run.t_start, 3)
        inv = await step(intent("inventory"))
        run.steps_s["inventory"] = round(time.time() - run.t_start, 3)
        state.inventory[FAILED] = Inventory.from_data(1, "evacuate", inv["data"])
        servers = sorted(
            (s for s in inv["data"]["servers"] if s["ha"]),
            key=lambda s: (PRIORITY_RANK[s["priority"]], s["id"]),
        )
        intents = [intent("evacuate", s["id"], n) for n, s in enumerate(servers)]
        # As the node hands them out: in plan order, at most max_parallel_evacuations.
        gate = trio.Semaphore(segment.recovery.max_parallel_evacuations)

        async def one(i: Intent) -> None:
            try:
                await step(i)
            finally:
                gate.release()

        async with trio.open_nursery() as nursery:
            for i in intents:
                await gate.acquire()  # handed out in order, as the node's loop does
                nursery.start_soon(one, i)


def one_run(strategy: str, n: int, rep: int, work: Path, masakari_python: Path) -> Run:
    run = Run(strategy, n, rep)
    box, _conn, priorities = fresh_box(work, n)
    try:
        try:
            if strategy == "meshha":
                trio.run(run_meshha, run, box)
            elif strategy == "masakari":
                run_masakari(run, box, work, masakari_python, "reserved_host", 0)
            elif strategy == "masakari-auto":
                run_masakari(run, box, work, masakari_python, "auto", 0)
            elif strategy == "masakari-defaults":
                run_masakari(run, box, work, masakari_python, "reserved_host", 180)
            else:
                raise ValueError(strategy)
        except Exception as e:  # noqa: BLE001  recorded as a failed run, the bench goes on
            run.outcome, run.error = "failed", f"{type(e).__name__}: {e}"
            run.t_end = run.t_end or time.time()
        measure(run, box, priorities)
    finally:
        box.close()
    return run


# -- the whole bench -----------------------------------------------------------------------


def median(rows: list[Run], key: Callable[[Run], float]) -> float:
    values = [key(r) for r in rows if r.outcome == "ok" and not math.isnan(key(r))]
    return round(statistics.median(values), 3) if values else math.nan


def summarise(runs: list[Run], sizes: list[int]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for strategy in sorted({r.strategy for r in runs}):
        for n in sizes:
            rows = [r for r in runs if r.strategy == strategy and r.servers == n]
            if not rows:
                continue
            out[f"{strategy}_{n}"] = {
                "runs": len(rows),
                "ok": sum(r.outcome == "ok" for r in rows),
                "first_active_s": median(rows, lambda r: r.first_active_s),
                "all_active_s": median(rows, lambda r: r.all_active_s),
                "flow_s": median(rows, lambda r: r.flow_s),
                "requests": median(rows, lambda r: float(r.requests)),
                "priority_inversions": median(rows, lambda r: float(r.priority_inversions)),
                "high_last_s": median(rows, lambda r: r.high_last_s),
                "first_request_s": median(rows, lambda r: r.first_request_s),
                "nova_cpu_s": median(rows, lambda r: r.nova_cpu_s),
                "client_cpu_s": median(rows, lambda r: r.client_cpu_s),
                "load_avg": median(rows, lambda r: r.load_avg),
                "first_active_runs_s": [round(r.first_active_s, 3) for r in rows],
                "all_active_runs_s": [round(r.all_active_s, 3) for r in rows],
            }
    return out


def ratios(summary: dict[str, Any], sizes: list[int]) -> dict[str, float]:
    out = {}
    for n in sizes:
        m, k = summary.get(f"meshha_{n}"), summary.get(f"masakari_{n}")
        if not m or not k:
            continue
        for key in ("first_active_s", "all_active_s", "requests"):
            if m[key] and not math.isnan(m[key]) and not math.isnan(k[key]):
                out[f"{n}_{key}_masakari_over_meshha"] = round(k[key] / m[key], 2)
    return out


def table(summary: dict[str, Any], sizes: list[int], rat: dict[str, float]) -> str:
    head = f"{'median over runs':<30}" + "".join(f"{f'N={n}':>22}" for n in sizes)
    lines = [head]
    rows = [
        ("first ACTIVE (s)", "first_active_s"),
        ("all ACTIVE (s)", "all_active_s"),
        ("HTTP requests to Nova", "requests"),
        ("first evacuation accepted (s)", "first_request_s"),
        ("Nova CPU during flow (s)", "nova_cpu_s"),
        ("client CPU during flow (s)", "client_cpu_s"),
        ("priority inversions", "priority_inversions"),
    ]
    strategies = sorted({k.rsplit("_", 1)[0] for k in summary})
    for label, key in rows:
        for s in strategies:
            cells = []
            for n in sizes:
                v = summary.get(f"{s}_{n}", {}).get(key, math.nan)
                cells.append(f"{v:>22.2f}" if isinstance(v, float) else f"{v:>22}")
            lines.append(f"{label + ' ' + s:<30}" + "".join(cells))
    for key in ("first_active_s", "all_active_s", "requests"):
        cells = [f"{'x' + str(rat.get(f'{n}_{key}_masakari_over_meshha', '-')):>22}" for n in sizes]
        lines.append(f"{'masakari/meshha ' + key:<30}" + "".join(cells))
    return "\n".join(lines)


def markdown(result: dict[str, Any]) -> str:
    """The summary as a Markdown table (for bench/RESULTS.md)."""
    summary, sizes = result["summary"], result["sizes"]
    strategies = [
        s
        for s in ("masakari", "meshha", "masakari-auto", "masakari-defaults")
        if any(f"{s}_{n}" in summary for n in sizes)
    ]
    lines = [
        "| median (runs) | " + " | ".join(f"N={n}" for n in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    rows = [
        ("first ACTIVE, s", "first_active_s", "{:.2f}"),
        ("all ACTIVE, s", "all_active_s", "{:.2f}"),
        ("HTTP requests to Nova", "requests", "{:.0f}"),
        ("first evacuation accepted, s", "first_request_s", "{:.2f}"),
        ("Nova CPU during the flow, s", "nova_cpu_s", "{:.1f}"),
        ("client CPU during the flow, s", "client_cpu_s", "{:.1f}"),
        ("load average (1 min) at the end", "load_avg", "{:.1f}"),
        ("priority inversions", "priority_inversions", "{:.0f}"),
    ]
    for label, key, fmt in rows:
        for s in strategies:
            cells = []
            for n in sizes:
                cell = summary.get(f"{s}_{n}")
                if cell is None or math.isnan(cell.get(key, math.nan)):
                    cells.append("-")
                else:
                    cells.append(fmt.format(cell[key]) + f" ({cell['ok']})")
            lines.append(f"| {s}: {label} | " + " | ".join(cells) + " |")
    rat = result["ratios"]
    for key, label in (
        ("first_active_s", "first ACTIVE"),
        ("all_active_s", "all ACTIVE"),
        ("requests", "requests"),
    ):
        cells = [
            f"x{rat[f'{n}_{key}_masakari_over_meshha']:.2f}"
            if f"{n}_{key}_masakari_over_meshha" in rat
            else "-"
            for n in sizes
        ]
        lines.append(f"| Masakari / meshha, {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="10,20,50")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--strategies", default="masakari,meshha")
    p.add_argument("--auto", action="store_true", help="also masakari-auto, once per size")
    p.add_argument(
        "--defaults", action="store_true", help="also Masakari with its 180 s wait, once"
    )
    p.add_argument("--out", default=str(RESULTS / "evacuate_vs_masakari.json"))
    p.add_argument(
        "--trace",
        metavar="JSON",
        help="also write every run's trace (per-VM task states; meshha: limit, calls)",
    )
    p.add_argument(
        "--markdown", nargs="+", metavar="JSON", help="print results files as Markdown, run nothing"
    )
    p.add_argument("--combine", metavar="OUT", help="with --markdown: write the runs together")
    args = p.parse_args(argv)
    if args.markdown:
        parts = [json.loads(Path(f).read_text()) for f in args.markdown]
        result = dict(parts[-1])
        if len(parts) > 1:
            runs = [Run(**row) for part in parts for row in part["runs"]]
            sizes = sorted({r.servers for r in runs})
            summary = summarise(runs, sizes)
            result.update(
                sizes=sizes,
                summary=summary,
                ratios=ratios(summary, sizes),
                runs=[r.row() for r in runs],
                combined_from=[part["when"] for part in parts],
            )
        if args.combine:
            Path(args.combine).write_text(json.dumps(result, indent=2) + "\n")
        print(markdown(result))
        return 0
    sizes = [int(x) for x in args.sizes.split(",")]
    reason = venv_missing_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    logs.configure(json=False, level=logging.WARNING, stream=sys.stderr)
    warnings.simplefilter("ignore")
    masakari_python = ensure_masakari()
    strategies = args.strategies.split(",")
    plan: list[tuple[str, int, int]] = []
    for rep in range(args.reps):
        for n in sizes:
            order = strategies if rep % 2 == 0 else list(reversed(strategies))
            plan += [(s, n, rep) for s in order]
        if rep == 0:  # the one-off runs early: a long bench cut short still has them
            if args.defaults:
                plan.append(("masakari-defaults", sizes[0], 0))
            if args.auto:
                plan += [("masakari-auto", n, 0) for n in sizes]
    started = time.monotonic()
    runs: list[Run] = []
    traces: list[dict[str, Any]] = []
    out = Path(args.out)
    with tempfile.TemporaryDirectory(prefix="meshha-bench-evac-") as tmp:
        for k, (strategy, n, rep) in enumerate(plan):
            work = Path(tmp) / f"run{k}"
            work.mkdir()
            run = one_run(strategy, n, rep, work, masakari_python)
            runs.append(run)
            run.load_avg = round(os.getloadavg()[0], 2)
            print(
                f"  {strategy:<18} N={n:<3} rep {rep}: load {run.load_avg:5.2f}  first {run.first_active_s:6.2f} s  "
                f"all {run.all_active_s:6.2f} s  requests {run.requests:4d}  "
                f"inversions {run.priority_inversions:3d}  first POST {run.first_request_s:5.2f} s "
                f"cpu nova {run.nova_cpu_s:5.1f} s client {run.client_cpu_s:5.1f} s "
                f"{run.steps_s or ''} {run.outcome} {run.error or ''}",
                flush=True,
            )
            shutil.rmtree(work, ignore_errors=True)
            summary = summarise(runs, sizes)
            result = {
                "bench": "evacuate_vs_masakari",
                "host": platform.node(),
                "python": platform.python_version(),
                "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "masakari": MASAKARI_VERSION,
                "sizes": sizes,
                "reps": args.reps,
                "summary": summary,
                "ratios": ratios(summary, sizes),
                "runs": [r.row() for r in runs],
                "wall_s": round(time.monotonic() - started, 1),
            }
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n")  # after every run: partial ok
            if args.trace:
                traces.append({**run.row(), "load_avg": os.getloadavg(), **run.trace})
                Path(args.trace).write_text(json.dumps(traces) + "\n")
    print(table(result["summary"], sizes, result["ratios"]))
    print(f"wrote {out} ({result['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
