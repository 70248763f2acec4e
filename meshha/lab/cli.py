"""meshha-lab: a real mini-cloud on this machine (root), its faults, and the demo.

    meshha-lab up [--hosts 5] [--reserved 1] [--vms 20]
    meshha-lab status
    meshha-lab exec host2 meshctl status
    meshha-lab fault power-off host2
    meshha-lab demo
    meshha-lab down

See meshha.lab.cloud for what `up` builds. The lab's state lives in --state (default
/run/meshha-lab/cloud, or $MESHHA_LAB_STATE); every command works from it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from meshha.lab.cloud import DEFAULT_STATE, PROFILE_WATCHDOG_S, Cloud, LabSpec
from meshha.lab.netns import LabError

STATE = click.option(
    "--state",
    "state",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_STATE,
    show_default=True,
    help="The lab's state directory.",
)


PROFILE = click.option(
    "--profile",
    type=click.Choice(["lan-fast", "lan-safe"]),
    default="lan-fast",
    show_default=True,
    help="The agents' timing profile (lan-fast is the shipped example's); each host's "
    "watchdog follows it (6 s, 15 s).",
)


def _spec(profile: str, **kw: Any) -> LabSpec:
    """The lab on `profile`, each host's watchdog as that profile wants it."""
    return LabSpec(profile=profile, watchdog_s=PROFILE_WATCHDOG_S[profile], **kw)


def _cloud(state: Path, *, must_exist: bool = True) -> Cloud:
    if os.geteuid() != 0:
        raise click.ClickException("the lab needs root (network namespaces, libvirtd, ipmi_sim)")
    cloud = Cloud(state)
    if must_exist and not cloud.exists:
        raise click.ClickException(f"no lab in {state}: `meshha-lab up` first")
    return cloud


@click.group()
def main() -> None:
    """A real mini-cloud: namespaces, BMCs, libvirt/QEMU, Nova and one meshha agent per
    host; faults to inject into it; and a guided demo."""


@main.command()
@STATE
@click.option("--hosts", default=5, show_default=True, help="Hosts in the segment.")
@click.option("--reserved", default=1, show_default=True, help="How many of them are reserved.")
@click.option("--vms", default=20, show_default=True, help="VMs to boot over the compute hosts.")
@PROFILE
def up(state: Path, hosts: int, reserved: int, vms: int, profile: str) -> None:
    """Build the lab and leave it running."""
    cloud = _cloud(state, must_exist=False)
    click.echo(f"meshha-lab up: {hosts} hosts ({reserved} reserved), {vms} VMs, state {state}")
    try:
        times = cloud.up(_spec(profile, hosts=hosts, reserved=reserved, vms=vms), say=click.echo)
    except (LabError, AssertionError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"lab up in {times['total']:.1f}s. Try: meshha-lab status")


@main.command()
@STATE
def down(state: Path) -> None:
    """Remove everything the lab made (safe to run twice)."""
    _cloud(state, must_exist=False).down(say=click.echo)


@main.command()
@STATE
def status(state: Path) -> None:
    """Hosts (power, agent, verdict), leader, and every VM with where its QEMU runs."""
    from meshha.lab.tour import print_status

    print_status(_cloud(state), click.echo)


@main.command(
    "exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@STATE
@click.argument("host")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(state: Path, host: str, argv: tuple[str, ...]) -> None:
    """Run a command on HOST (its network, PID, mount and UTS namespaces)."""
    cloud = _cloud(state)
    try:
        full = cloud.exec_argv(host, list(argv))
    except LabError as e:
        raise click.ClickException(str(e)) from e
    venv_bin = str(Path(sys.executable).parent)
    os.environ["PATH"] = f"{venv_bin}:{os.environ.get('PATH', '')}"
    os.execvp(full[0], full)


FAULTS = (
    "power-off",
    "power-on",
    "hang",
    "resume",
    "crash-vm",
    "kill-process",
    "cut-net",
    "restore-net",
    "partition",
    "heal",
    "bmc-dead",
    "bmc-hang",
    "bmc-alive",
    "io-error",
    "guest-watchdog",
    "break-process",
    "repair-process",
)


@main.command()
@STATE
@click.argument("kind", type=click.Choice(FAULTS))
@click.argument("args", nargs=-1)
def fault(state: Path, kind: str, args: tuple[str, ...]) -> None:
    """Inject a fault. KIND HOST [...]:

    \b
      power-off HOST / power-on HOST     through the host's BMC (ipmitool)
      hang HOST / resume HOST            freeze / thaw every process of the host
      crash-vm HOST [VM]                 kill -9 the VM's QEMU (default: an HA VM there)
      kill-process HOST NAME             kill -9 libvirtd | nova-compute | meshha-agent
      cut-net HOST NET / restore-net HOST NET
      partition host1,host2/host3,host4,host5   (groups split by '/' or '|') / heal
      bmc-dead HOST / bmc-hang HOST / bmc-alive HOST
      io-error HOST [VM]                 the VM's disk fails its next write (ENOSPC):
                                         QEMU pauses it (default: a VM with a disk on
                                         the lab's storage there, booted if none)
      guest-watchdog HOST [VM]           its guest arms its watchdog and stops (same VMs)
      break-process HOST NAME / repair-process HOST NAME
                                         libvirtd | nova-compute unrunnable on HOST
                                         (restarts fail), then runnable again
    """
    cloud = _cloud(state)
    need = {"partition": 1, "heal": 0, "kill-process": 2, "cut-net": 2, "restore-net": 2}
    need |= {"break-process": 2, "repair-process": 2}
    n = need.get(kind, 1)
    if len(args) < n:
        raise click.UsageError(f"{kind} needs {n} argument(s)")
    try:
        out = _fault(cloud, kind, args)
    except LabError as e:
        raise click.ClickException(str(e)) from e
    click.echo(out)


def _fault(cloud: Cloud, kind: str, args: tuple[str, ...]) -> str:
    host = args[0] if args else ""
    if kind == "power-off":
        cloud.power_off(host)
        return f"{host}: powered off through its BMC"
    if kind == "power-on":
        cloud.power_on(host)
        return f"{host}: powered on through its BMC (booting)"
    if kind == "hang":
        cloud.hang(host)
        return f"{host}: every process frozen (links up, silent)"
    if kind == "resume":
        cloud.resume(host)
        return f"{host}: resumed"
    if kind == "crash-vm":
        vm, _ = cloud.crash_vm(host, args[1] if len(args) > 1 else None)
        return f"{host}: QEMU of {vm.name} ({vm.id}) killed"
    if kind == "kill-process":
        pids = cloud.kill_process(host, args[1])
        return f"{host}: killed {args[1]} {pids}"
    if kind == "cut-net":
        cloud.cut_net(host, args[1])
        return f"{host}: {args[1]} link down"
    if kind == "restore-net":
        cloud.restore_net(host, args[1])
        return f"{host}: {args[1]} link up"
    if kind == "partition":
        spec = " ".join(args).replace("|", "/")
        groups = [[h for h in g.split(",") if h] for g in spec.split("/")]
        cloud.partition(groups)
        return "partitioned: " + " | ".join(",".join(g) for g in groups)
    if kind == "heal":
        cloud.heal()
        return "partition healed"
    if kind == "bmc-dead":
        cloud.bmc_dead(host)
        return f"{host}: BMC dead (ipmi_sim killed)"
    if kind == "bmc-hang":
        cloud.bmc_hang(host)
        return f"{host}: BMC hung (ipmi_sim stopped)"
    if kind == "bmc-alive":
        cloud.bmc_alive(host)
        return f"{host}: BMC answers again"
    if kind in ("io-error", "guest-watchdog"):
        vm = cloud.disk_vm(host, args[1] if len(args) > 1 else None)
        if kind == "io-error":
            cloud.io_error(host, vm.id)
            return f"{host}: the disk of {vm.name} ({vm.id}) fails its next write (ENOSPC)"
        cloud.guest_watchdog(host, vm.id)
        return f"{host}: the guest of {vm.name} ({vm.id}) arms its watchdog and stops"
    if kind == "break-process":
        cloud.break_process(host, args[1])
        return f"{host}: {args[1]} cannot run (restarts fail until repair-process)"
    if kind == "repair-process":
        cloud.repair_process(host, args[1])
        return f"{host}: {args[1]} runnable again"
    raise LabError(f"{kind}: not available in this lab yet", kind="unsupported")


@main.command()
@STATE
@click.option("--hosts", default=5, show_default=True)
@click.option("--reserved", default=1, show_default=True)
@click.option(
    "--vms",
    default=8,
    show_default=True,
    help="VMs to boot (fewer than `up`'s 20 so the demo fits in a few minutes on 2 cores).",
)
@click.option("--keep", is_flag=True, help="Leave the lab up at the end.")
@PROFILE
def demo(state: Path, hosts: int, reserved: int, vms: int, keep: bool, profile: str) -> None:
    """Up, a guided tour of failures and recoveries with a live timeline, a summary, down."""
    from meshha.lab.tour import run_demo

    cloud = _cloud(state, must_exist=False)
    try:
        ok = run_demo(
            cloud, _spec(profile, hosts=hosts, reserved=reserved, vms=vms), click.echo, keep=keep
        )
    except LabError as e:
        raise click.ClickException(str(e)) from e
    sys.exit(0 if ok else 1)


@main.command()
@STATE
@click.option("--runs", default=3, show_default=True, help="Fault schedules to run.")
@click.option("--seed", default=1, show_default=True, help="Run r uses seed + r.")
@click.option("--vms", default=8, show_default=True, help="VMs, when the lab is built here.")
@click.option("--keep", is_flag=True, help="Leave a lab built here up at the end.")
@PROFILE
def nemesis(state: Path, runs: int, seed: int, vms: int, keep: bool, profile: str) -> None:
    """Seeded fault schedules on the lab (built here unless one is up), each followed by
    the safety checks (see meshha.lab.nemesis). Exit 1 if any run violated one."""
    from meshha.lab.nemesis import nemesis as run_nemesis

    cloud = _cloud(state, must_exist=False)
    built = False
    if not cloud.exists:
        # every fault kind: agents under libfaketime, a data filesystem of their own
        spec = _spec(profile, vms=vms, agent_clock=True, data_fs_mb=32)
        cloud.up(spec, say=click.echo)
        built = True
    try:
        reports = run_nemesis(cloud, runs, seed, click.echo)
    finally:
        if built and not keep:
            cloud.down(say=click.echo)
    sys.exit(1 if any(r.violations for r in reports) else 0)


if __name__ == "__main__":
    main()
