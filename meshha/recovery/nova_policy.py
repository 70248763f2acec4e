"""Every Nova and Placement call meshha makes, the policy rule behind it, and why.

This table is the one source for: docs/nova-permissions.md (the operator's reference),
config/keystone/nova-policy.yaml and placement-policy.yaml (oslo.policy overrides that
grant a `meshha` role exactly these rules), and the agent's start-up check, which names
the rule of every call it could not make. tests/unit/test_nova_policy.py keeps the table,
the code (each openstacksdk call in meshha) and the shipped files in step.

Rule names and defaults are those of Nova 34 / Placement 16 (2025.2); the defaults column
says who may call it without an override. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass

ROLE = "meshha"


@dataclass(frozen=True)
class Call:
    sdk: str  # the openstacksdk proxy method (or "placement GET <path>")
    http: str
    rules: tuple[str, ...]
    default: str
    why: str
    when: str  # "start" (checked at start-up), "recovery", "vm", "maintenance", "setup"


CALLS: tuple[Call, ...] = (
    Call(
        "services",
        "GET /os-services?binary=nova-compute",
        ("os_compute_api:os-services:list",),
        "admin",
        "find each host's nova-compute service (id, state, forced_down, zone)",
        "start",
    ),
    Call(
        "update_service",
        "PUT /os-services/{id}",
        ("os_compute_api:os-services:update",),
        "admin",
        "force a fenced host's nova-compute down and disable it; enable it when it is back",
        "recovery",
    ),
    Call(
        "servers",
        "GET /servers/detail?all_tenants=1&host=H",
        (
            "os_compute_api:servers:detail",
            "os_compute_api:servers:detail:get_all_tenants",
            "os_compute_api:servers:allow_all_filters",
            "os_compute_api:os-extended-server-attributes",
        ),
        "admin",
        "the VMs of a failed host, in every project, with the host they run on; during an "
        "evacuation, the target host's servers changed lately (changes-since), once per poll",
        "start",
    ),
    Call(
        "get_server",
        "GET /servers/{id}",
        (
            "os_compute_api:servers:show",
            "os_compute_api:servers:show:flavor-extra-specs",
            "os_compute_api:os-extended-server-attributes",
        ),
        "admin (host attribute)",
        "a VM's state, host, metadata (HA policy) and flavor extra specs",
        "vm",
    ),
    Call(
        "aggregates",
        "GET /os-aggregates",
        ("os_compute_api:os-aggregates:index",),
        "admin",
        "which aggregates a host is in (HA policy per aggregate, config init)",
        "start",
    ),
    Call(
        "hypervisors",
        "GET /os-hypervisors/detail",
        ("os_compute_api:os-hypervisors:list-detail",),
        "admin",
        "map a host to its compute nodes (= resource providers) for capacity",
        "start",
    ),
    Call(
        "placement GET /resource_providers/{uuid}/inventories",
        "GET /resource_providers/{uuid}/inventories",
        ("placement:resource_providers:inventories:list",),
        "admin or service",
        "a host's schedulable size (evacuation targets, N+k)",
        "start",
    ),
    Call(
        "placement GET /resource_providers/{uuid}/usages",
        "GET /resource_providers/{uuid}/usages",
        ("placement:resource_providers:usages",),
        "admin or service",
        "what a host has free (evacuation targets)",
        "start",
    ),
    Call(
        "evacuate_server",
        "POST /servers/{id}/action (evacuate)",
        ("os_compute_api:os-evacuate",),
        "admin",
        "rebuild a fenced host's VM on another host",
        "recovery",
    ),
    Call(
        "server_actions",
        "GET /servers/{id}/os-instance-actions",
        ("os_compute_api:os-instance-actions:list",),
        "project reader or admin",
        "whether an evacuation already started (idempotence across a leader change)",
        "recovery",
    ),
    Call(
        "migrations",
        "GET /os-migrations?instance_uuid=ID",
        ("os_compute_api:os-migrations:index", "os_compute_api:os-migrations:index:all_projects"),
        "admin",
        "before every evacuate request: whether an evacuation is already under way (a "
        "previous leader's: adopted, never started twice); whether one failed, and why",
        "recovery",
    ),
    Call(
        "start_server",
        "POST /servers/{id}/action (os-start)",
        ("os_compute_api:servers:start",),
        "project member or admin",
        "start a crashed VM, or an evacuated one that Nova left stopped",
        "vm",
    ),
    Call(
        "stop_server",
        "POST /servers/{id}/action (os-stop)",
        ("os_compute_api:servers:stop",),
        "project member or admin",
        "stop a VM before restarting it",
        "vm",
    ),
    Call(
        "reboot_server",
        "POST /servers/{id}/action (reboot HARD)",
        ("os_compute_api:servers:reboot",),
        "project member or admin",
        "hard-reboot a hung VM (I/O error, guest watchdog)",
        "vm",
    ),
    Call(
        "migrate_server",
        "POST /servers/{id}/action (migrate, with host)",
        (
            "os_compute_api:os-migrate-server:migrate",
            "os_compute_api:os-migrate-server:migrate:host",
        ),
        "admin (with a host)",
        "restart a repeatedly failing VM on another host",
        "vm",
    ),
    Call(
        "confirm_server_resize",
        "POST /servers/{id}/action (confirmResize)",
        ("os_compute_api:servers:confirm_resize",),
        "project member or admin",
        "confirm a cold migration",
        "vm",
    ),
    Call(
        "live_migrate_server",
        "POST /servers/{id}/action (os-migrateLive, with host)",
        (
            "os_compute_api:os-migrate-server:migrate_live",
            "os_compute_api:os-migrate-server:migrate_live:host",
        ),
        "admin (with a host)",
        "move VMs off a host that lost its tenant network, or that enters maintenance",
        "maintenance",
    ),
)


def by_sdk() -> dict[str, Call]:
    return {c.sdk: c for c in CALLS}


def rules_of(sdk: str) -> tuple[str, ...]:
    c = by_sdk().get(sdk)
    return c.rules if c else ()


def render_doc() -> str:
    """docs/nova-permissions.md."""
    lines = [
        "# The Nova and Placement calls meshha makes",
        "",
        "Generated from `meshha/recovery/nova_policy.py` "
        "(`python -m meshha.recovery.nova_policy doc`); do not edit by hand.",
        "",
        "meshha needs no cloud-admin role. Give its application credential a role of its own",
        f"(`{ROLE}`) and grant that role exactly the rules below, with the oslo.policy",
        "overrides in `config/keystone/` (nova-policy.yaml into Nova's policy directory,",
        "placement-policy.yaml into Placement's). `config/clouds.yaml.example` shows the",
        "application credential. At start the agent makes the read calls marked *start*",
        "and logs `nova_permission_missing` naming the rule of each one it was refused.",
        "",
        "## Setting it up",
        "",
        "```",
        f"openstack role create {ROLE}",
        "openstack user create --project service --password-prompt meshha",
        f"openstack role add --user meshha --project service {ROLE}",
        "# install config/keystone/nova-policy.yaml and placement-policy.yaml, then as meshha:",
        f"openstack application credential create --role {ROLE} meshha-agent",
        "# copy its id and secret into /etc/openstack/clouds.yaml (config/clouds.yaml.example)",
        "```",
        "",
        "The *when* column: `start` calls are made at every agent start (and by `meshctl",
        "config init`); `recovery` when a host is fenced and evacuated; `vm` when a VM",
        "fails; `maintenance` when a host enters maintenance or loses its tenant network.",
        "",
        "| call | HTTP | policy rules | default | why meshha needs it | when |",
        "|---|---|---|---|---|---|",
    ]
    for c in CALLS:
        rules = "<br>".join(f"`{r}`" for r in c.rules)
        lines.append(f"| `{c.sdk}` | `{c.http}` | {rules} | {c.default} | {c.why} | {c.when} |")
    lines.append("")
    return "\n".join(lines)


# Each rule's default check string in Nova 34 / Placement 16. An override replaces the
# default, so it must keep it and add the role: "<default> or role:meshha".
# tests/integration/test_nova_policy_defaults.py checks these against the installed Nova.
RULE_DEFAULTS: dict[str, str] = {
    "os_compute_api:os-services:list": "rule:context_is_admin",
    "os_compute_api:os-services:update": "rule:context_is_admin",
    "os_compute_api:servers:detail": "rule:project_reader_or_admin",
    "os_compute_api:servers:detail:get_all_tenants": "rule:context_is_admin",
    "os_compute_api:servers:allow_all_filters": "rule:context_is_admin",
    "os_compute_api:os-extended-server-attributes": "rule:context_is_admin",
    "os_compute_api:servers:show": "rule:project_reader_or_admin",
    "os_compute_api:servers:show:flavor-extra-specs": "rule:project_reader_or_admin",
    "os_compute_api:os-aggregates:index": "rule:context_is_admin",
    "os_compute_api:os-hypervisors:list-detail": "rule:context_is_admin",
    "placement:resource_providers:inventories:list": "rule:admin_or_service_api",
    "placement:resource_providers:usages": "rule:admin_or_service_api",
    "os_compute_api:os-evacuate": "rule:context_is_admin",
    "os_compute_api:os-instance-actions:list": "rule:project_reader_or_admin",
    "os_compute_api:os-migrations:index": "rule:project_manager_or_admin",
    "os_compute_api:os-migrations:index:all_projects": "rule:context_is_admin",
    "os_compute_api:servers:start": "rule:project_member_or_admin",
    "os_compute_api:servers:stop": "rule:project_member_or_admin",
    "os_compute_api:servers:reboot": "rule:project_member_or_admin",
    "os_compute_api:os-migrate-server:migrate": "rule:project_manager_or_admin",
    "os_compute_api:os-migrate-server:migrate:host": "rule:context_is_admin",
    "os_compute_api:servers:confirm_resize": "rule:project_member_or_admin",
    "os_compute_api:os-migrate-server:migrate_live": "rule:project_manager_or_admin",
    "os_compute_api:os-migrate-server:migrate_live:host": "rule:context_is_admin",
}


def render_policy(service: str) -> str:
    """An oslo.policy override file for `service` ("nova" or "placement"): each rule meshha
    needs becomes "(<its default>) or role:meshha", so nobody loses what they had."""
    prefix = "placement:" if service == "placement" else "os_compute_api:"
    rules = sorted({r for c in CALLS for r in c.rules if r.startswith(prefix)})
    out = [
        f"# oslo.policy overrides for {service}: grant the `{ROLE}` role the calls meshha",
        "# makes, keeping every default (generated from meshha/recovery/nova_policy.py;",
        "# see docs/nova-permissions.md). Install beside the service's policy.yaml, or",
        "# merge into it.",
    ]
    out += [f'"{r}": "({RULE_DEFAULTS[r]}) or role:{ROLE}"' for r in rules]
    out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    import sys

    what = sys.argv[1] if len(sys.argv) > 1 else "doc"
    sys.stdout.write(render_doc() if what == "doc" else render_policy(what))
