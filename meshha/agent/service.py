"""The agent's answers to meshctl, over the local control socket.

Reads (status, events, export pages, report, capacity) answer from this host's replica
and say which leader and term they reflect, and whether they may be stale (no quorum in
sight). Ledger reads run in worker threads (meshha.ledger.sink.LedgerReader), a page at a
time, never on the trio loop. Writes (maintenance, brake release) go through Raft: they
are committed before the reply, or refused with the reason (no quorum, not caught up).

Times in requests are epoch seconds (`since`, `until`), or an age the agent resolves with
its own clock (`since_age_s`): meshctl reads no clock. Replies carry `now` (the agent's
clock) so meshctl can show ages.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import trio

from meshha.agent.capacity import nk_status
from meshha.agent.control import ControlError
from meshha.agent.node import Node
from meshha.config.model import Segment
from meshha.ledger import render
from meshha.ledger.store import EXPORT_PAGE, MAX_QUERY_LIMIT
from meshha.raft import entries as E
from meshha.recovery.decide.maintenance import progress as drain_progress
from meshha.recovery.decide.steps import Context

WRITE_TIMEOUT_S = 10.0
APPLY_WAIT_S = 5.0
MAX_EVENTS = 10_000
REPORT_FORMATS = ("text", "json", "html")


DRAIN_WAIT_S = 10.0  # longest a `drain` long poll is held


class ControlHandler:
    def __init__(
        self,
        segment: Segment,
        node: Node,
        log: Any,
        ledger: Any,
        now: Callable[[], float],
        transport: Any = None,
        *,
        sink: Any = None,
        nova: Any = None,
        metrics_url: str | None = None,
        persist: Any = None,
    ) -> None:
        """`ledger` is a LedgerReader (async, worker threads); `sink` the LedgerSink
        (its backlog and last error are shown); `nova` the Nova port for `capacity`."""
        self.segment, self.node, self.log, self.ledger, self.now = segment, node, log, ledger, now
        self.transport, self.sink, self.nova, self.metrics_url = transport, sink, nova, metrics_url
        self.persist = persist

    async def __call__(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "status":
            return self.status()
        if op == "maintenance":
            return await self.maintenance(req)
        if op == "drain":
            return await self.drain_wait(req)
        if op == "brake_release":
            return await self._write(
                E.brake(
                    ts=self.now(),
                    by=self.node.me,
                    on=False,
                    hosts=[],
                    reason=f"released by operator {req.get('operator', '')}".strip(),
                )
            )
        if op == "events":
            return await self.events(req)
        if op == "export_page":
            return await self.export_page(req)
        if op == "report":
            return await self.report(req)
        if op == "capacity":
            return await self.capacity(req)
        raise ControlError(f"unknown op {op!r}", kind="bad_request")

    def _view(self) -> dict[str, Any]:
        return {
            "leader": self.log.leader,
            "term": self.log.term,
            "is_leader": self.log.is_leader,
            "has_quorum": self.log.has_quorum,
            "stale": not self.log.has_quorum,
            "index": self.node.state.index,
            "now": self.now(),
        }

    def status(self) -> dict[str, Any]:
        st = self.node.state
        hosts = []
        for h in self.segment.hosts:
            v = st.verdicts[h.name]
            reach = {}
            for net in h.networks:
                lost = st.lost_by(h.name, net)
                reach[net] = "ok" if not lost else f"lost by {','.join(sorted(lost))}"
            hosts.append(
                {
                    "name": h.name,
                    "role": st.roles.get(h.name, h.role),
                    "voter": h.voter,
                    "verdict": v.kind,
                    "networks": list(v.networks),
                    "reason": v.reason,
                    "since": st.verdict_since.get(h.name) or None,
                    "maintenance": _record(st.maintenance.get(h.name)),
                    "fenced": _record(st.fenced.get(h.name)),
                    "reach": reach,
                    "capacity": None
                    if h.capacity is None
                    else {
                        "vcpus": h.capacity.vcpus,
                        "ram_mb": h.capacity.ram_mb,
                        "disk_gb": h.capacity.disk_gb,
                    },
                }
            )
        pending = [
            {"id": i.id, "action": i.action, "host": i.host, "vm": i.vm, "target": i.target}
            for i in st.intents.values()
            if not i.done
        ]
        out = {
            "segment": self.segment.name,
            "me": self.node.me,
            **self._view(),
            "isolated": self.node.isolated,
            # How long since a majority of voters last answered this host's probes (it
            # isolates itself at isolation_after_s), and its Lifeguard local health
            # (probe period and timeout scaled by health + 1).
            "contact_age_s": round(trio.current_time() - self.node.contact_m, 3)
            if self.node.contact_m > -math.inf
            else None,
            "probe_health": self.node.prober.health,
            "watchdog": self.node.keepalive.status(),
            "brake": asdict(st.brake),
            "hosts": hosts,
            "pending_intents": pending[:100],
            "metrics_url": self.metrics_url,
            "errors": self._errors(),
        }
        if self.transport is not None:
            out["probe_drops"] = self.transport.drops()
            out["clock"] = self.transport.clock_report()
            out["knocks"] = dict(getattr(self.transport, "knocks", {}))
        stalled = getattr(self.node, "stalled_peers", {})
        out["stalled"] = [{"host": h, "network": n, "since": s} for (h, n), s in stalled.items()]
        if self.persist is not None:
            out["persist"] = self.persist.report()
        return out

    def _errors(self) -> dict[str, Any]:
        """The operating errors this agent got past, which would otherwise be seen only
        in its log: failed proposals and result commits (by kind), the ledger's."""
        s = self.node.stats
        out: dict[str, Any] = {
            "counts": dict(sorted(s.errors.items())),
            "last": {"kind": s.last_error_kind, "error": s.last_error, "ts": s.last_error_ts}
            if s.last_error_kind
            else None,
        }
        if self.sink is not None:
            out["ledger"] = {"backlog": len(self.sink.backlog), "error": self.sink.last_error}
        return out

    async def maintenance(self, req: dict[str, Any]) -> dict[str, Any]:
        host = req.get("host")
        if host not in self.segment.host_names:
            raise ControlError(
                f"no host {host!r} in segment {self.segment.name}", kind="bad_request"
            )
        on = req.get("on")
        if not isinstance(on, bool):
            raise ControlError("'on' must be true or false", kind="bad_request")
        reason = str(req.get("reason") or ("maintenance" if on else "maintenance over"))[:500]
        entry = E.maintenance(
            ts=self.now(),
            by=self.node.me,
            host=host,
            on=on,
            reason=reason,
            operator=str(req.get("operator", ""))[:100],
        )
        written = await self._write(entry)
        d = self.drain({"host": host})
        return {**written, "drain": d["drain"], "dry_run": d["dry_run"]}

    async def drain_wait(self, req: dict[str, Any]) -> dict[str, Any]:
        """`drain`, answered once it differs from `after` (what the caller last saw) or
        after `wait_s` (at most DRAIN_WAIT_S): a long poll, so meshctl follows progress
        without sleeping."""
        first = self.drain(req)
        after = req.get("after")
        wait_s = min(_number(req.get("wait_s", 0), "wait_s"), DRAIN_WAIT_S)
        if after is None or wait_s <= 0:
            return first
        with trio.move_on_after(wait_s):
            while True:
                now = self.drain(req)
                if now["drain"] != after:
                    return now
                await self.node.wait_applied(self.node.state.index + 1)
        return self.drain(req)

    def drain(self, req: dict[str, Any]) -> dict[str, Any]:
        """How far emptying a host in maintenance got (read from this replica's state):
        stage, how many VMs moved, which are moving, which could not move and why."""
        host = req.get("host")
        if host not in self.segment.host_names:
            raise ControlError(
                f"no host {host!r} in segment {self.segment.name}", kind="bad_request"
            )
        ctx = Context(self.segment, self.node.state, self.now(), self.node.me)
        p = drain_progress(ctx, host)
        return {
            "host": host,
            "in_maintenance": self.node.state.in_maintenance(host),
            "drain": None if p is None else p.as_dict(),
            "dry_run": getattr(self.node, "executor", None) is None,
        }

    async def _write(self, entry: dict[str, Any]) -> dict[str, Any]:
        index = await self.log.propose(entry, timeout_s=WRITE_TIMEOUT_S)  # LogError -> error reply
        # Reply once this replica has applied it too, so the operator's next `status` on
        # this host shows the change (bounded: a replica far behind says so instead).
        with trio.move_on_after(APPLY_WAIT_S):
            await self.node.wait_applied(index)
        applied = self.node.state.index >= index
        return {**self._view(), "index": index, "applied": applied}  # the committed index

    def _since(self, req: dict[str, Any]) -> float | None:
        age = req.get("since_age_s")
        if age is not None:
            return self.now() - _number(age, "since_age_s")
        since = req.get("since")
        return None if since is None else _number(since, "since")

    def _filters(self, req: dict[str, Any]) -> dict[str, Any]:
        until = req.get("until")
        return {
            "host": _text(req, "host"),
            "since": self._since(req),
            "until": None if until is None else _number(until, "until"),
            "kind": _text(req, "kind"),
            "vm": _text(req, "vm"),
        }

    def _reader(self) -> Any:
        if self.ledger is None:
            raise ControlError("this agent has no ledger", kind="unavailable")
        return self.ledger

    async def events(self, req: dict[str, Any]) -> dict[str, Any]:
        limit = int(_number(req.get("limit", 200), "limit"))
        rows = await self._reader().query(
            **self._filters(req),
            limit=max(0, min(limit, MAX_EVENTS)),
            newest_first=_flag(req.get("newest_first", True), "newest_first"),
        )
        return {"events": rows, **self._view()}

    async def export_page(self, req: dict[str, Any]) -> dict[str, Any]:
        """One page of the export: rows after index `after`, oldest first, as stored
        (`evidence`, `entry` JSON text); `total` (matching rows) on the first page."""
        after = int(_number(req.get("after", 0), "after"))
        limit = max(1, min(int(_number(req.get("limit", EXPORT_PAGE), "limit")), MAX_QUERY_LIMIT))
        filters = self._filters(req)
        reader = self._reader()
        rows = await reader.page(after, limit, **filters)
        out: dict[str, Any] = {
            "rows": rows,
            "last": rows[-1]["idx"] if rows else after,
            "done": len(rows) < limit,
            **self._view(),
        }
        if after == 0:
            out["total"] = await reader.count(**filters)
        return out

    async def report(self, req: dict[str, Any]) -> dict[str, Any]:
        fmt = req.get("format", "json")
        if fmt not in REPORT_FORMATS:
            raise ControlError(
                f"format must be one of {REPORT_FORMATS}, not {fmt!r}", kind="bad_request"
            )
        until = req.get("until")
        until = self.now() if until is None else _number(until, "until")
        since = self._since(req)
        since = until - 86400.0 if since is None else since
        if not since < until:
            raise ControlError("since must be before until", kind="bad_request")
        nk = await nk_status(self.segment, self.node.state, self.nova)
        rep = await self._reader().report(since, until, nk)
        name = self.segment.name
        body: Any = (
            render.text(rep, name)
            if fmt == "text"
            else render.html(rep, name)
            if fmt == "html"
            else render.to_dict(rep, name)
        )
        out = {"format": fmt, "report": body, **self._view()}
        if _flag(req.get("html", False), "html"):  # the page too, from the same reading
            out["html"] = render.html(rep, name)
        return out

    async def capacity(self, req: dict[str, Any]) -> dict[str, Any]:
        k = req.get("k")
        k = None if k is None else int(_number(k, "k"))
        if k is not None and not 0 <= k <= len(self.segment.hosts):
            raise ControlError(f"k must be 0..{len(self.segment.hosts)}", kind="bad_request")
        return {"nk": await nk_status(self.segment, self.node.state, self.nova, k), **self._view()}


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ControlError(f"{key} must be a number, not {value!r}"[:200], kind="bad_request")
    return float(value)


def _flag(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ControlError(f"{key} must be true or false, not {value!r}"[:200], kind="bad_request")
    return value


def _text(req: dict[str, Any], key: str) -> str | None:
    value = req.get(key)
    if value is not None and not isinstance(value, str):
        raise ControlError(f"{key} must be a string, not {value!r}"[:200], kind="bad_request")
    return value


def _record(r: Any) -> dict[str, Any] | None:
    """A state record as the control socket sends it."""
    return None if r is None else asdict(r)
