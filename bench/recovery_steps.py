"""Recovery steps on real components: fence, evacuate, and the whole chain. Wall-clock s.

(a) fence:     IpmiFencer.power_off against OpenIPMI `ipmi_sim` (meshha.lab.bmc), from
               the call to "BMC reports off"; `--fence-runs` times (>= 10), the host
               powered on again (its power file) between runs.
(b) evacuate:  N servers (10 and 50) on a host whose nova-compute is stopped for real and
               forced down, evacuated to a reserved host on real Nova (meshha.lab.nova_client)
               with meshha's NovaDriver, until every one is ACTIVE on the target with no task
               state. Two strategies, same driver, same Nova:
                 meshha    all at once, bounded by recovery.max_parallel_evacuations (10),
                           polling every 0.5 s (as meshha-agent configures it);
                 masakari  3 at a time (host_failure_recovery_threads), polling every 1 s,
                           plus its wait_period_after_service_update (180 s) after disabling
                           the service: ADDED as a constant, never slept.
(c) end-to-end: the e2e lab of tests/integration/test_end_to_end.py (4 agents, ipmi_sim
               BMCs, real Nova, no dry run): host2 dies (agent SIGKILLed, nova-compute
               stopped) -> its 3 HA servers ACTIVE on reserved host4. Compared with
               Masakari's documented 4-5 minutes (peers.md).
(d) VM crash -> running again and process kill -> running again are measured by the
    libvirt tests, not here (listed under "not_measured" in the JSON).

Writes bench/results/recovery_steps.json and prints a table. Needs ipmi_sim and the nova
venv (scripts/install-nova-venv.sh).

    python bench/recovery_steps.py [--quick] [--fence-runs N] [--evac-reps R] [--e2e-runs E]

--quick: 10 fences, 10 servers per strategy, one end-to-end run (< 3 min); the default
(full) run adds 50 servers per strategy and takes about 7 minutes with --evac-reps 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from meshha import logs  # noqa: E402
from meshha.config.model import Recovery  # noqa: E402
from meshha.lab.bmc import BmcSim, free_udp_port  # noqa: E402
from meshha.lab.nova_client import NovaBox, venv_missing_reason  # noqa: E402
from meshha.recovery.fence_ipmi import IpmiFencer  # noqa: E402
from meshha.recovery.nova import NovaDriver  # noqa: E402

RESULTS = REPO / "bench" / "results"
IMAGE_ID = "155d900f-4e14-4e4c-a73d-069cbf4541e6"  # one of nova's GlanceFixture images
TINY_FLAVOR_ID = "1"  # m1.tiny: 1 vcpu, 512 MB, 1 GB
SIZES = (10, 50)
# Booting and evacuating 50 servers takes minutes on the one-process Nova box (boot about
# 45 s, evacuation 40-100 s per strategy), so --quick does 10 only.
QUICK_SIZES = (10,)
MESHHA_PARALLEL = Recovery().max_parallel_evacuations
MESHHA_POLL_S = 0.5  # what meshha-agent configures (meshha/agent/main.py)
MASAKARI_PARALLEL = 3  # host_failure_recovery_threads
MASAKARI_POLL_S = 1.0  # it polls each evacuation every second
MASAKARI_WAIT_AFTER_SERVICE_UPDATE_S = 180.0  # wait_period_after_service_update
MASAKARI_E2E_S = (240.0, 300.0)  # peers.md: "about 4-5 minutes" power-off -> VMs running
NOT_MEASURED = [
    "vm_crash_to_running: measured by the libvirt tests (another helper), not here",
    "process_kill_to_running: measured by the libvirt tests (another helper), not here",
]
DEADLINE_EVAC_S = 300.0


def pct(values: list[float], q: float) -> float:
    """The q-quantile by the nearest-rank method."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summary(values: list[float]) -> dict[str, Any]:
    return {
        "n": len(values),
        "median_s": round(statistics.median(values), 4),
        "p90_s": round(pct(values, 0.9), 4),
        "min_s": round(min(values), 4),
        "max_s": round(max(values), 4),
        "runs_s": [round(v, 4) for v in values],
    }


# -- (a) fence ---------------------------------------------------------------------------


async def bench_fence(workdir: Path, runs: int) -> dict[str, Any]:
    pw = workdir / "bmc.pw"
    pw.write_text("secret\n")
    pw.chmod(0o600)
    sim = BmcSim("bench1", workdir / "bmc", port=free_udp_port(), password_file=pw)
    sim.start()
    try:
        await sim.wait_ready()
        fencer = IpmiFencer({"bench1": sim.bmc}, confirm_timeout_s=10)
        times = []
        for _ in range(runs):
            sim.set_powered_on(True)
            t0 = time.monotonic()
            proof = await fencer.power_off("bench1")
            times.append(time.monotonic() - t0)
            assert proof.method == "bmc" and not sim.powered_on(), proof
    finally:
        sim.stop()
    return summary(times)


# -- (b) evacuation ---------------------------------------------------------------------


def boot_many(conn: Any, host: str, n: int, tag: str) -> list[str]:
    """Boot `n` servers on `host` with one request (min_count) and wait until ACTIVE."""
    conn.compute.create_server(
        name=tag,
        flavor_id=TINY_FLAVOR_ID,
        image_id=IMAGE_ID,
        networks="none",
        host=host,
        min_count=n,
        max_count=n,
        metadata={"HA_Enabled": "True"},
    )
    deadline = time.monotonic() + 120
    while True:
        mine = [s for s in conn.compute.servers(details=True, name=f"^{tag}")]
        states = [s.status for s in mine]
        assert "ERROR" not in states, [(s.id, s.fault) for s in mine if s.status == "ERROR"]
        if len(mine) == n and all(s == "ACTIVE" for s in states):
            return [s.id for s in mine]
        if time.monotonic() > deadline:
            raise TimeoutError(f"{tag}: {states}")
        time.sleep(1.0)  # noqa: TID251  # a poll interval (listing 50 servers is not cheap for the box)


async def evacuate_all(
    driver: NovaDriver, ids: list[str], target: str, parallel: int
) -> tuple[float, list[float]]:
    """Evacuate every server with at most `parallel` in flight; (total s, per-server s)."""
    gate = trio.Semaphore(parallel)
    each: list[float] = []
    t0 = time.monotonic()

    async def one(server_id: str) -> None:
        async with gate:
            t = time.monotonic()
            s = await driver.evacuate(server_id, target)
            assert s.host == target and s.status == "ACTIVE" and s.task_state is None, s
            each.append(time.monotonic() - t)

    with trio.fail_after(DEADLINE_EVAC_S):
        async with trio.open_nursery() as nursery:
            for server_id in ids:
                nursery.start_soon(one, server_id)
    return time.monotonic() - t0, each


async def bench_evacuate(workdir: Path, reps: int, sizes: tuple[int, ...]) -> dict[str, Any]:
    strategies = {
        "meshha": (MESHHA_PARALLEL, MESHHA_POLL_S, 0.0),
        "masakari": (MASAKARI_PARALLEL, MASAKARI_POLL_S, MASAKARI_WAIT_AFTER_SERVICE_UPDATE_S),
    }
    plan = [(n, name, r) for r in range(reps) for n in sizes for name in strategies]
    sources = [f"src{i}" for i in range(len(plan))]
    need = sum(n for n, _, _ in plan)
    box = NovaBox(
        [*sources, "spare"],
        size=(64, 65536, 1024),
        host_sizes={"spare": (need + 8, 512 * (need + 8), need + 64)},
        tmpdir=workdir / "nova",
        log_path=workdir / "nova.log",
    )
    box.start()
    raw: dict[str, dict[int, list[dict[str, Any]]]] = {
        s: {n: [] for n in sizes} for s in strategies
    }
    try:
        conn = box.connect(compute_api_version="2.95")
        for (n, name, r), src in zip(plan, sources, strict=True):
            parallel, poll_s, added_s = strategies[name]
            ids = await trio.to_thread.run_sync(boot_many, conn, src, n, f"{name}-{n}-{r}-")
            await trio.to_thread.run_sync(box.stop_compute, src)
            driver = NovaDriver(
                lambda: box.connect(compute_api_version="2.95"),
                poll_interval_s=poll_s,
                timeout_s=DEADLINE_EVAC_S,
                limiter=trio.CapacityLimiter(max(10, parallel)),
            )
            t0 = time.monotonic()
            await driver.force_down(src, "bench: host dead")
            disable_s = time.monotonic() - t0
            total_s, each = await evacuate_all(driver, ids, "spare", parallel)
            measured = disable_s + total_s
            raw[name][n].append(
                {
                    "servers": n,
                    "parallel": parallel,
                    "poll_s": poll_s,
                    "disable_s": round(disable_s, 4),
                    "evacuate_all_s": round(total_s, 4),
                    "per_server_median_s": round(statistics.median(each), 4),
                    "added_constant_s": added_s,
                    "total_s": round(measured + added_s, 4),
                }
            )
            print(f"  evacuate {n:>2} {name:<8} rep {r}: {measured:.2f} s measured", flush=True)
    finally:
        box.close()
    out: dict[str, Any] = {}
    for name in strategies:
        for n in sizes:
            rows = raw[name][n]
            out[f"{name}_{n}"] = {
                "measured": summary([x["disable_s"] + x["evacuate_all_s"] for x in rows]),
                "total_median_s": round(statistics.median(x["total_s"] for x in rows), 4),
                "runs": rows,
            }
    return out


# -- (c) end to end ----------------------------------------------------------------------


def bench_e2e(workdir: Path, runs: int) -> dict[str, Any]:
    from tests.integration.test_end_to_end import (
        HOSTS,
        RESERVED,
        VICTIM,
        boot_workload,
        evacuated,
        kill_host,
        running_lab,
    )

    rows = []
    for r in range(runs):
        (workdir / f"e2e{r}").mkdir()
        with running_lab(workdir / f"e2e{r}") as lab:
            ha, _ = boot_workload(lab)
            t_kill = kill_host(lab, VICTIM)
            lab.mesh.wait_until(lambda ha=ha, lab=lab: evacuated(lab, ha, RESERVED), 120, "evac")
            t_done = time.time()
            live = [h for h in HOSTS if h != VICTIM]
            _wait_results(lab.mesh, live[0], len(ha))
            book = lab.mesh.wait_ledgers_equal(live, timeout_s=15)
            rows.append(_e2e_breakdown(book, VICTIM, t_kill, t_done, len(ha)))
        print(f"  end-to-end run {r}: {rows[-1]['total_s']:.2f} s", flush=True)
    return {
        "total": summary([x["total_s"] for x in rows]),
        "runs": rows,
    }


def _wait_results(mesh: Any, host: str, n: int) -> None:
    mesh.wait_until(
        lambda: _evacuations_done(mesh.ledger(host)) >= n, 30, "evacuation results committed"
    )


def _evacuations_done(book: list[tuple[int, dict[str, Any]]]) -> int:
    evac = {e["intent"] for _, e in book if e["kind"] == "intent" and e["action"] == "evacuate"}
    return sum(1 for _, e in book if e["kind"] == "result" and e["intent"] in evac)


def _e2e_breakdown(
    book: dict[int, dict[str, Any]], victim: str, t_kill: float, t_done: float, n: int
) -> dict[str, Any]:
    rows = [book[i] for i in sorted(book)]
    done = {e["intent"]: e for e in rows if e["kind"] == "result"}

    def first(pred: Any) -> float | None:
        ts = [e["ts"] for e in rows if pred(e)]
        return round(min(ts) - t_kill, 4) if ts else None

    fence = [e for e in rows if e["kind"] == "intent" and e["action"] == "fence"]
    evac = [e for e in rows if e["kind"] == "intent" and e["action"] == "evacuate"]
    return {
        "ha_servers": n,
        "failed_verdict_s": first(
            lambda e: e["kind"] == "verdict" and e["host"] == victim and e["verdict"] == "failed"
        ),
        "fence_requested_s": first(lambda e: e in fence),
        "fence_confirmed_s": round(done[fence[0]["intent"]]["ts"] - t_kill, 4) if fence else None,
        "first_evacuate_intent_s": first(lambda e: e in evac),
        "last_evacuate_result_s": round(max(done[e["intent"]]["ts"] for e in evac) - t_kill, 4)
        if evac
        else None,
        "total_s": round(t_done - t_kill, 4),
    }


# -- main --------------------------------------------------------------------------------


def table(res: dict[str, Any]) -> str:
    lines = [f"{'step':<44} {'median s':>9} {'p90 s':>8}  vs Masakari"]
    f = res["fence"]
    lines.append(
        f"{'(a) fence via ipmi_sim -> confirmed off':<44} {f['median_s']:>9.3f} {f['p90_s']:>8.3f}"
    )
    ev = res["evacuate"]
    for n in res["sizes"]:
        m, k = ev[f"meshha_{n}"], ev[f"masakari_{n}"]
        lines.append(
            f"{f'(b) evacuate {n}, meshha ({MESHHA_PARALLEL} at once)':<44} "
            f"{m['measured']['median_s']:>9.2f} {m['measured']['p90_s']:>8.2f}"
        )
        lines.append(
            f"{f'(b) evacuate {n}, masakari (3 at once)':<44} "
            f"{k['measured']['median_s']:>9.2f} {k['measured']['p90_s']:>8.2f}  "
            f"x{res['ratios'][f'evac_{n}_masakari_evac_only_over_meshha']:.1f} evac only"
        )
        lines.append(
            f"{f'(b) evacuate {n}, masakari + 180 s wait':<44} {k['total_median_s']:>9.2f} "
            f"{'':>8}  x{res['ratios'][f'evac_{n}_masakari_total_over_meshha']:.1f}"
        )
    if "e2e" in res:
        e = res["e2e"]["total"]
        lines.append(
            f"{'(c) host dies -> 3 HA VMs ACTIVE on reserve':<44} {e['median_s']:>9.2f} "
            f"{e['p90_s']:>8.2f}  Masakari 240-300 s: x{res['ratios']['e2e_masakari_low_over_meshha']:.0f}"
            f"-x{res['ratios']['e2e_masakari_high_over_meshha']:.0f}"
        )
    lines.append("(d) VM crash / process kill: not measured here (libvirt tests)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="10 fences, 10 servers, 1 e2e run")
    p.add_argument("--fence-runs", type=int, default=None)
    p.add_argument("--evac-reps", type=int, default=None)
    p.add_argument("--e2e-runs", type=int, default=None)
    p.add_argument("--no-e2e", action="store_true")
    args = p.parse_args(argv)
    fence_runs = args.fence_runs or (10 if args.quick else 30)
    evac_reps = args.evac_reps or 1
    sizes = QUICK_SIZES if args.quick else SIZES
    e2e_runs = args.e2e_runs or (1 if args.quick else 3)
    assert fence_runs >= 10, "at least 10 fence runs"
    for tool in ("ipmi_sim", "ipmitool"):
        if shutil.which(tool) is None:
            print(f"{tool} missing (apt-get install openipmi ipmitool)", file=sys.stderr)
            return 2
    reason = venv_missing_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    logs.configure(json=False, level=logging.WARNING, stream=sys.stderr)
    warnings.simplefilter("ignore", DeprecationWarning)
    started = time.monotonic()
    res: dict[str, Any] = {
        "bench": "recovery_steps",
        "quick": args.quick,
        "host": platform.node(),
        "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "not_measured": NOT_MEASURED,
        "sizes": list(sizes),
        "masakari_model": {
            "parallel": MASAKARI_PARALLEL,
            "poll_s": MASAKARI_POLL_S,
            "wait_period_after_service_update_s": MASAKARI_WAIT_AFTER_SERVICE_UPDATE_S,
            "wait_added_not_slept": True,
            "e2e_documented_s": list(MASAKARI_E2E_S),
        },
        "meshha_model": {"parallel": MESHHA_PARALLEL, "poll_s": MESHHA_POLL_S},
    }
    with tempfile.TemporaryDirectory(prefix="meshha-bench-steps-") as tmp:
        work = Path(tmp)
        for part in ("fence", "evac", "e2e"):
            (work / part).mkdir()
        print(f"(a) fence x{fence_runs}", flush=True)
        res["fence"] = trio.run(bench_fence, work / "fence", fence_runs)
        print(f"(b) evacuate {sizes} x{evac_reps} per strategy", flush=True)
        res["evacuate"] = trio.run(bench_evacuate, work / "evac", evac_reps, sizes)
        if not args.no_e2e:
            print(f"(c) end-to-end x{e2e_runs}", flush=True)
            res["e2e"] = bench_e2e(work / "e2e", e2e_runs)
    ratios: dict[str, float] = {}
    for n in res["sizes"]:
        m = res["evacuate"][f"meshha_{n}"]
        k = res["evacuate"][f"masakari_{n}"]
        ratios[f"evac_{n}_masakari_evac_only_over_meshha"] = round(
            k["measured"]["median_s"] / m["measured"]["median_s"], 2
        )
        ratios[f"evac_{n}_masakari_total_over_meshha"] = round(
            k["total_median_s"] / m["total_median_s"], 2
        )
    if "e2e" in res:
        med = res["e2e"]["total"]["median_s"]
        ratios["e2e_masakari_low_over_meshha"] = round(MASAKARI_E2E_S[0] / med, 1)
        ratios["e2e_masakari_high_over_meshha"] = round(MASAKARI_E2E_S[1] / med, 1)
    res["ratios"] = ratios
    res["wall_s"] = round(time.monotonic() - started, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "recovery_steps.json"
    out.write_text(json.dumps(res, indent=2) + "\n")
    print(table(res))
    print(f"wrote {out} ({res['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
