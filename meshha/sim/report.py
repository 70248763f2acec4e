"""Printing a simulated run: a readable timeline and a one-line summary."""

from __future__ import annotations

from typing import Any

from meshha.raft.intent_key import IntentKey
from meshha.sim.world import EPOCH


def describe(row: dict[str, Any]) -> str:
    t = row["type"]
    if t == "fault":
        return f"FAULT     {row['what']}"
    if t == "observation":
        state = "regained" if row.get("reachable") else "lost"
        return f"OBSERVE   {row['by']} {state} {row['host']} on {row['network']} (since {row.get('since', 0):.3f})"
    if t == "verdict":
        nets = f"({','.join(row['networks'])})" if row.get("networks") else ""
        return f"VERDICT   {row['host']} {row['verdict']}{nets}: {row.get('reason', '')}"
    if t == "intent":
        what = row["action"].upper().replace("_", "-")
        obj = row.get("vm") or row.get("host", "")
        tgt = f" -> {row['target']}" if row.get("target") else ""
        return f"INTENT    {what} {obj}{tgt}: {row.get('reason', '')}  [{row['intent']}]"
    if t == "result":
        return f"RESULT    {row['outcome'].upper()} {row['intent']}: {row.get('detail', '')}"
    if t == "fenced":
        return f"FENCED    {row['host']} by {row['method']}: {row.get('reason', '')}"
    if t == "brake":
        return f"BRAKE     {'ON' if row.get('on') else 'OFF'} {','.join(row.get('hosts', []))}: {row.get('reason', '')}"
    if t == "maintenance":
        return (
            f"MAINT     {row['host']} {'on' if row.get('on') else 'off'}: {row.get('reason', '')}"
        )
    if t == "vm_failure":
        return f"VM-FAIL   {row['vm']} on {row['host']}: {row.get('event')} {row.get('detail', '')}"
    if t == "process_failure":
        return f"PROCESS   {row['process']} on {row['host']}: {row.get('outcome')} {row.get('detail', '')}"
    if t == "isolation":
        return (
            f"ISOLATED  {row['host']} {'on' if row.get('on') else 'off'}: {row.get('reason', '')}"
        )
    if t == "reconcile":
        state = "ok" if row.get("ok") else "FAILED"
        gone = f" ({','.join(row['destroyed'])})" if row.get("destroyed") else ""
        return (
            f"RECONCILE {row['host']} e{row.get('episode')} {state}, booted at "
            f"{row.get('booted_at')}: {row.get('detail', '')}{gone}"
        )
    if t == "reserve":
        return f"RESERVE   {row['host']} -> {row.get('role')}: {row.get('reason', '')}"
    if t == "capacity":
        verdict = "survives" if row.get("survives") else "SHORT"
        return f"CAPACITY  N+{row.get('k')} {verdict}: {row.get('reason', '')}"
    return f"{t.upper():9} {row}"


def lines(timeline: list[dict[str, Any]], *, observations: bool = True) -> list[str]:
    """The readable timeline, one line per row (what `meshctl sim` prints and the golden
    traces below the scenario files hold)."""
    return [
        f"{r['t']:9.3f}s  {describe(r)}"
        for r in timeline
        if observations or r["type"] != "observation"
    ]


def summary(
    timeline: list[dict[str, Any]], violations: list[str], failure: str, seed: int
) -> dict[str, Any]:
    kinds: dict[str, int] = {}
    for r in timeline:
        kinds[r["type"]] = kinds.get(r["type"], 0) + 1
    evac = [r for r in timeline if r["type"] == "result" and _is_evacuation(r["intent"])]
    first_fault = next((r["t"] for r in timeline if r["type"] == "fault"), None)
    failed_at = next(
        (r["t"] for r in timeline if r["type"] == "verdict" and r["verdict"] == "failed"), None
    )
    fenced_at = next(
        (
            r["t"]
            for r in timeline
            if (r["type"] == "result" and r["intent"].startswith("fence:") and r["outcome"] == "ok")
            or r["type"] == "fenced"
        ),
        None,
    )
    last_evac = max((r["t"] for r in evac if r["outcome"] == "ok"), default=None)

    def rel(t: float | None) -> float | None:
        return None if t is None or first_fault is None else round(t - first_fault, 3)

    return {
        "ok": not violations and not failure,
        "seed": seed,
        "faults": kinds.get("fault", 0),
        "committed": sum(v for k, v in kinds.items() if k != "fault"),
        "verdicts": kinds.get("verdict", 0),
        "evacuated": sum(1 for r in evac if r["outcome"] == "ok"),
        "evacuations_failed": sum(1 for r in evac if r["outcome"] != "ok"),
        "failed_verdict_after_s": rel(failed_at),
        "fenced_after_s": rel(fenced_at),
        "last_evacuation_after_s": rel(last_evac),
        "violations": violations,
        "failure": failure,
    }


def summary_line(s: dict[str, Any]) -> str:
    parts = [
        "OK" if s["ok"] else "FAILED",
        f"seed {s['seed']}",
        f"{s['faults']} faults",
        f"{s['committed']} entries committed",
    ]
    if s["failed_verdict_after_s"] is not None:
        parts.append(f"failed verdict +{s['failed_verdict_after_s']:.2f}s")
    if s["fenced_after_s"] is not None:
        parts.append(f"fenced +{s['fenced_after_s']:.2f}s")
    if s["evacuated"]:
        parts.append(f"{s['evacuated']} VMs evacuated by +{s['last_evacuation_after_s']:.2f}s")
    parts.append(f"{len(s['violations'])} invariant violations")
    line = "; ".join(parts)
    if s["failure"]:
        line += f"\n  failed: {s['failure']}"
    for v in s["violations"]:
        line += f"\n  violation: {v}"
    return line


def since_epoch(t: float) -> float:
    return t - EPOCH


def _is_evacuation(intent_id: str) -> bool:
    key = IntentKey.parse_or_none(intent_id)
    return key is not None and key.step == "evacuate"
