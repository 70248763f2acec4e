"""ProcessChecker against real processes: a dummy daemon found by its name in /proc (and
no longer once it is a zombie), killed with SIGKILL and brought back by the Supervisor
through its restart command; restarts that fail are reported once per outage;
libvirtd killed for real is restarted and the event monitor sees it go and come back."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from meshha.config.model import Processes
from meshha.errors import ProcessError
from meshha.probes.processes import ProcessChecker, find_pids, libvirt_probe
from meshha.probes.supervisor import ProcessReport, Supervisor

pytestmark = pytest.mark.integration

DEADLINE_S = 15.0


class Dummy:
    """A daemon for tests: a copy of `sleep` under a unique name, and a start script
    (its restart command) that launches it detached and exits, like `service x start`.
    The script refuses to start it while the file `broken` exists."""

    def __init__(self, directory: Path) -> None:
        self.name = "mhd-" + secrets.token_hex(4)  # 12 bytes: fits the kernel's comm
        self.binary = directory / self.name
        shutil.copy(shutil.which("sleep") or "/bin/sleep", self.binary)
        self.broken_flag = directory / "broken"
        self.start_script = directory / "start-dummy"
        self.start_script.write_text(
            "#!/bin/sh\n"
            f'[ -e "{self.broken_flag}" ] && {{ echo "start refused" >&2; exit 3; }}\n'
            f'setsid "{self.binary}" 600 </dev/null >/dev/null 2>&1 &\n'
        )
        self.start_script.chmod(0o755)

    def restart_command(self) -> str:
        return f"{self.start_script} {{name}}"

    def kill_all(self) -> None:
        for pid in find_pids(self.name):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def dummy() -> Iterator[Dummy]:
    directory = Path(tempfile.mkdtemp(prefix="mh-proc-"))
    d = Dummy(directory)
    yield d
    d.kill_all()
    shutil.rmtree(directory, ignore_errors=True)


def config(dummy: Dummy, **overrides: object) -> Processes:
    values: dict[str, object] = {
        "names": (dummy.name,),
        "check_interval_s": 0.1,
        "restart_attempts": 2,
        "restart_backoff_s": 0.1,
        "restart_command": dummy.restart_command(),
    }
    values.update(overrides)
    return Processes(**values)  # type: ignore[arg-type]


async def wait_for(predicate: Callable[[], bool], timeout_s: float = DEADLINE_S) -> None:
    with trio.fail_after(timeout_s):
        while True:
            if predicate():
                return
            await trio.sleep(0.02)


def proc_state(pid: int) -> str | None:
    """The state letter of /proc/PID/stat (Z for a zombie); None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


async def next_result(reports: list[ProcessReport], n: int) -> ProcessReport:
    """The n-th report (1-based), once there is one."""
    await wait_for(lambda: len(reports) >= n)
    return reports[n - 1]


def supervisor(
    checker: ProcessChecker, processes: Processes
) -> tuple[Supervisor, list[ProcessReport]]:
    reports: list[ProcessReport] = []
    return Supervisor(checker, processes, reports.append, now=trio.current_time), reports


async def test_presence_by_name_and_a_zombie_is_dead(dummy: Dummy) -> None:
    process = await trio.lowlevel.open_process([str(dummy.binary), "600"])
    try:
        assert find_pids(dummy.name) == [process.pid]
        checker = ProcessChecker(config(dummy), use_systemd=False)
        assert await checker.is_alive(dummy.name)
        os.kill(process.pid, signal.SIGKILL)  # and do not reap it yet: a zombie
        await wait_for(lambda: proc_state(process.pid) == "Z")  # still in /proc
        assert find_pids(dummy.name) == []
        assert not await checker.is_alive(dummy.name)
    finally:
        with trio.fail_after(5):
            await process.wait()


async def test_interpreter_scripts_match_by_script_name(tmp_path: Path) -> None:
    script = tmp_path / "mh-fake-nova-compute"
    script.write_text("import time\ntime.sleep(600)\n")
    process = await trio.lowlevel.open_process([sys.executable, str(script)])
    try:
        await wait_for(lambda: bool(find_pids("mh-fake-nova-compute")))
        assert find_pids("mh-fake-nova-compute") == [process.pid]  # argv[1], 20 bytes
    finally:
        process.kill()
        with trio.fail_after(5):
            await process.wait()


async def test_health_probe_decides_for_a_present_process(dummy: Dummy) -> None:
    process = await trio.lowlevel.open_process([str(dummy.binary), "600"])
    try:
        answers = {"value": False}

        async def probe() -> bool:
            return answers["value"]

        async def hangs() -> bool:
            await trio.sleep_forever()
            raise AssertionError

        checker = ProcessChecker(config(dummy), health={dummy.name: probe})
        assert not await checker.is_alive(dummy.name)
        answers["value"] = True
        assert await checker.is_alive(dummy.name)
        hanging = ProcessChecker(config(dummy), health={dummy.name: hangs}, probe_timeout_s=0.2)
        assert not await hanging.is_alive(dummy.name)
    finally:
        process.kill()
        with trio.fail_after(5):
            await process.wait()


async def test_a_young_process_is_judged_by_presence_within_its_grace(dummy: Dummy) -> None:
    """Nova's service state lags a restart: within its grace a fresh nova-compute is not
    judged by it (else the next restart would kill the process the last one started)."""
    process = await trio.lowlevel.open_process([str(dummy.binary), "600"])
    try:

        async def down() -> bool:
            return False

        young = ProcessChecker(
            config(dummy), health={dummy.name: down}, health_grace_s={dummy.name: 3600.0}
        )
        assert await young.is_alive(dummy.name)
        assert 0.0 <= young.age_s(dummy.name) < 60.0
        judged = ProcessChecker(
            config(dummy), health={dummy.name: down}, health_grace_s={dummy.name: 0.0}
        )
        assert not await judged.is_alive(dummy.name)
    finally:
        process.kill()
        with trio.fail_after(5):
            await process.wait()


async def test_killed_process_is_restarted_by_the_supervisor(
    dummy: Dummy, nursery: trio.Nursery
) -> None:
    await trio.run_process([str(dummy.start_script)])
    await wait_for(lambda: bool(find_pids(dummy.name)))
    (first,) = find_pids(dummy.name)
    processes = config(dummy)
    sup, reports = supervisor(ProcessChecker(processes, use_systemd=False), processes)
    nursery.start_soon(sup.run)

    os.kill(first, signal.SIGKILL)
    result = await next_result(reports, 1)
    assert result.outcome == "restarted" and result.attempts == 1
    (second,) = find_pids(dummy.name)
    assert second != first
    await trio.sleep(0.5)
    assert len(reports) == 1  # one report for the outage


async def test_failing_restarts_are_reported_once_then_recovery(
    dummy: Dummy, nursery: trio.Nursery
) -> None:
    dummy.broken_flag.touch()
    processes = config(dummy)
    sup, reports = supervisor(ProcessChecker(processes, use_systemd=False), processes)
    nursery.start_soon(sup.run)

    failed = await next_result(reports, 1)
    assert failed.outcome == "restart_failed" and failed.attempts == 2
    assert "exited 3: start refused" in failed.detail
    await wait_for(lambda: sup.restarts >= 4)  # it keeps trying, backed off

    dummy.broken_flag.unlink()  # fixed: a later retry must bring it back
    # The next report is the recovery: restart_failed was not reported again meanwhile.
    recovered = await next_result(reports, 2)
    assert recovered.outcome == "restarted" and recovered.since == failed.since
    assert find_pids(dummy.name)


async def test_restart_that_starts_nothing_is_restart_failed(dummy: Dummy) -> None:
    checker = ProcessChecker(
        config(dummy, restart_command="true"), use_systemd=False, confirm_timeout_s=0.3
    )
    with pytest.raises(ProcessError) as caught:
        await checker.restart(dummy.name)
    assert caught.value.kind == "restart_failed"
    assert "not alive 0.3s after the restart" in str(caught.value)


def test_restart_argv_no_shell_and_systemd(dummy: Dummy) -> None:
    tricky = config(dummy, restart_command="/usr/sbin/service {name} restart; rm -rf /")
    checker = ProcessChecker(tricky, use_systemd=False)
    assert checker.restart_argv("nova-compute") == [
        "/usr/sbin/service",
        "nova-compute",
        "restart;",  # one literal argument: there is no shell to split on ';'
        "rm",
        "-rf",
        "/",
    ]
    # A configured restart_command wins on a systemd host too (containers, RHEL units).
    systemd = ProcessChecker(tricky, use_systemd=True)
    assert systemd.restart_argv("nova-compute")[:2] == ["/usr/sbin/service", "nova-compute"]
    plain = ProcessChecker(config(dummy, restart_command=None), use_systemd=True)
    assert plain.restart_argv("nova-compute") == ["systemctl", "restart", "nova-compute"]
    unconfigured = ProcessChecker(config(dummy, restart_command=None), use_systemd=False)
    with pytest.raises(ProcessError) as caught:
        unconfigured.restart_argv("libvirtd")
    assert caught.value.kind == "config"


@pytest.mark.skipif(os.geteuid() != 0, reason="a private libvirtd needs root")
async def test_killed_libvirtd_is_restarted_and_the_monitor_sees_it(
    nursery: trio.Nursery,
) -> None:
    from meshha.lab.libvirt_setup import PrivateLibvirtd, missing_programs
    from meshha.probes.libvirt_events import LibvirtEventMonitor
    from meshha.recovery.ports import VmEvent

    if missing_programs():
        pytest.skip(f"missing: {missing_programs()}")
    root = Path(tempfile.mkdtemp(prefix="mh-lv-", dir="/tmp"))
    libvirtd = PrivateLibvirtd(root / "lv")
    libvirtd.start()
    try:
        await libvirtd.wait_ready()
        send_events, events = trio.open_memory_channel[VmEvent](16)
        await nursery.start(LibvirtEventMonitor(libvirtd.uri, reconnect_max_s=0.2).run, send_events)
        processes = Processes(
            names=("libvirtd",),
            check_interval_s=0.1,
            restart_attempts=3,
            restart_backoff_s=0.2,
            restart_command=libvirtd.restart_command(),
        )
        checker = ProcessChecker(
            processes, health={"libvirtd": libvirt_probe(libvirtd.uri)}, use_systemd=False
        )
        assert await checker.is_alive("libvirtd")
        sup, reports = supervisor(checker, processes)
        nursery.start_soon(sup.run)

        libvirtd.kill_libvirtd()
        with trio.fail_after(DEADLINE_S):
            assert (await events.receive()).kind == "hypervisor_down"
            assert (await next_result(reports, 1)).outcome == "restarted"
            assert (await events.receive()).kind == "hypervisor_up"
        assert await checker.is_alive("libvirtd")
    finally:
        libvirtd.stop()
        shutil.rmtree(root, ignore_errors=True)


async def test_a_found_process_is_checked_by_its_pid_not_by_a_scan(dummy: Dummy) -> None:
    process = await trio.lowlevel.open_process([str(dummy.binary), "600"])
    try:
        checker = ProcessChecker(config(dummy), use_systemd=False)
        for _ in range(5):
            assert await checker.is_alive(dummy.name)
        assert checker.scans == 1  # the first check found it; the rest read /proc/<pid>/stat
        os.kill(process.pid, signal.SIGKILL)
        await wait_for(lambda: proc_state(process.pid) == "Z")
        assert not await checker.is_alive(dummy.name)  # a zombie is dead, cache or not
        assert checker.scans == 2
    finally:
        with trio.fail_after(5):
            await process.wait()


def fake_proc(root: Path, pid: int, comm: str, start: int, state: str = "S") -> None:
    """/proc/<pid>/stat and cmdline as the kernel writes them (fields 3..22 matter)."""
    (root / str(pid)).mkdir(parents=True, exist_ok=True)
    rest = [state, *["0"] * 18, str(start), "0"]  # field 22 (start time) at index 19
    (root / str(pid) / "stat").write_text(f"{pid} ({comm}) " + " ".join(rest) + "\n")
    (root / str(pid) / "cmdline").write_bytes(comm.encode() + b"\0")


async def test_a_reused_pid_is_not_taken_for_the_process_it_replaced(tmp_path: Path) -> None:
    checker = ProcessChecker(
        Processes(names=("nova-compute",)), use_systemd=False, proc_root=tmp_path
    )
    fake_proc(tmp_path, 4242, "nova-compute", start=1000)
    assert checker.running("nova-compute") and checker.scans == 1
    assert checker.running("nova-compute") and checker.scans == 1
    # The process died and its pid went to a process of another name, then of the same
    # name started later: each time the cache misses and a scan decides.
    fake_proc(tmp_path, 4242, "bash", start=2000)
    assert not checker.running("nova-compute") and checker.scans == 2
    fake_proc(tmp_path, 4242, "nova-compute", start=3000)
    assert checker.running("nova-compute") and checker.scans == 3
    fake_proc(tmp_path, 4242, "nova-compute", start=4000)  # same name, newer start
    assert checker.running("nova-compute") and checker.scans == 4
    shutil.rmtree(tmp_path / "4242")
    assert not checker.running("nova-compute") and checker.scans == 5
