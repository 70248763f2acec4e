"""What the lab shows a person: `meshha-lab status`, and the demo's tour with its timeline."""

from __future__ import annotations

from meshha.lab.cloud import Cloud, Say


def print_status(cloud: Cloud, say: Say) -> None:
    leader = cloud.leader([h for h in cloud.hosts if cloud.powered_on(h)])
    doms = cloud.domains()
    view = None
    for h in cloud.hosts:
        view = cloud.try_status(h)
        if view is not None and view.get("has_quorum"):
            break
    verdicts = {x["name"]: x for x in (view or {}).get("hosts", [])}
    say(f"leader: {leader or '(none agreed)'}")
    say(f"{'host':8} {'role':9} {'power':6} {'agent':6} {'verdict':12} {'qemu':>4}")
    for h in cloud.hosts:
        role = "reserved" if h in cloud.reserved else "compute"
        power = "on" if cloud.powered_on(h) else "off"
        agent = "up" if cloud.try_status(h, 1.0) is not None else "-"
        v = verdicts.get(h, {})
        verdict = v.get("verdict", "?") + (
            "[" + ",".join(v["networks"]) + "]" if v.get("networks") else ""
        )
        n = sum(1 for hosts in doms.values() if h in hosts)
        say(f"{h:8} {role:9} {power:6} {agent:6} {verdict:12} {n:>4}")
    say("")
    say(f"{'vm':6} {'ha':3} {'nova host':10} {'status':8} {'qemu runs on':14} id")
    for vm in cloud.vms():
        runs = ",".join(doms.get(vm.id, [])) or "-"
        say(
            f"{vm.name:6} {'yes' if vm.ha else 'no':3} {vm.host or '-':10} {vm.status:8} {runs:14} {vm.id}"
        )


def run_demo(cloud: Cloud, spec: object, say: Say, *, keep: bool = False) -> bool:
    raise NotImplementedError
