"""The agent's answers to meshctl, over the local control socket.

Reads (status, events, export) answer from this host's replica and say which leader and
term they reflect, and whether they may be stale (no quorum in sight). Writes
(maintenance, brake release) go through Raft: they are committed before the reply, or
refused with the reason (no quorum, not caught up).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from meshha.agent.control import ControlError
from meshha.agent.node import Node
from meshha.config.model import Segment
from meshha.raft import entries as E

WRITE_TIMEOUT_S = 10.0


class ControlHandler:
    def __init__(
        self,
        segment: Segment,
        node: Node,
        log: Any,
        ledger: Any,
        now: Callable[[], float],
        transport: Any = None,
    ) -> None:
        self.segment, self.node, self.log, self.ledger, self.now = segment, node, log, ledger, now
        self.transport = transport

    async def __call__(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "status":
            return self.status()
        if op == "maintenance":
            return await self.maintenance(req)
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
            return self.events(req)
        if op == "export":
            return self.export(req)
        raise ControlError(f"unknown op {op!r}", kind="bad_request")

    def _view(self) -> dict[str, Any]:
        return {
            "leader": self.log.leader,
            "term": self.log.term,
            "is_leader": self.log.is_leader,
            "has_quorum": self.log.has_quorum,
            "stale": not self.log.has_quorum,
            "index": self.node.state.index,
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
            "brake": asdict(st.brake),
            "hosts": hosts,
            "pending_intents": pending[:100],
        }
        if self.transport is not None:
            out["probe_drops"] = self.transport.drops()
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
        return await self._write(entry)

    async def _write(self, entry: dict[str, Any]) -> dict[str, Any]:
        index = await self.log.propose(entry, timeout_s=WRITE_TIMEOUT_S)  # LogError -> error reply
        return {**self._view(), "index": index}  # the committed index, not the replica's

    def _since(self, req: dict[str, Any]) -> float | None:
        age = req.get("since_age_s")
        if age is not None:
            return self.now() - _number(age, "since_age_s")
        since = req.get("since")
        return None if since is None else _number(since, "since")

    def events(self, req: dict[str, Any]) -> dict[str, Any]:
        rows = self.ledger.query(
            host=_text(req, "host"),
            since=self._since(req),
            until=req.get("until"),
            kind=_text(req, "kind"),
            vm=_text(req, "vm"),
            limit=int(_number(req.get("limit", 200), "limit")),
            newest_first=_flag(req.get("newest_first", True), "newest_first"),
        )
        return {"events": rows, **self._view()}

    def export(self, req: dict[str, Any]) -> dict[str, Any]:
        fmt = req.get("format", "json")
        if fmt not in ("csv", "json"):
            raise ControlError(f"format must be csv or json, not {fmt!r}", kind="bad_request")
        buf = io.StringIO()
        n = self.ledger.export(
            fmt, buf, host=_text(req, "host"), since=self._since(req), kind=_text(req, "kind")
        )
        return {"rows": n, "format": fmt, "data": buf.getvalue(), **self._view()}


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
