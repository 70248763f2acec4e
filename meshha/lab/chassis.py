"""The `chassis_control` program of a lab BMC: it wires ipmi_sim's power to a real effect.

ipmi_sim runs the configured string with `sh -c`, appending ` get NAME` or
` set NAME "VALUE"`; the string meshha.lab.bmc writes is

    <python> -S -I <this file> <state dir>

so a call is `chassis.py DIR get power` or `chassis.py DIR set power 0`. For `get` the
program must print `NAME:VALUE` and exit 0; anything else becomes completion code 0xFF.
ipmi_sim is single-threaded and answers nothing while this runs, so it does little: it is
run with `-S -I` (stdlib only, about 8 ms) and never waits for a child.

Everything lives in files under DIR, so the lab and the tests steer it by writing files:

    power          "1" or "0": the simulated host's power, the truth the lab reads
    kill-pids      pids, one a line: SIGKILLed on power off and on reset
    kill-pgids     process groups, one a line: SIGKILLed on power off and on reset
    kill-pidfiles  globs, one a line: every file matching holds a pid to SIGKILL
                   (e.g. a libvirt root's run/qemu/*.pid: the host's VMs die with it)
    on-command     a JSON argv list run detached on power on and on reset (the host boots)
    off-commands   a JSON list of argv lists run in order, each waited for (a few seconds at
                   most), after the kills on power off and reset (e.g. its links go down)
    delay-s        a float: sleep this long before answering (a slow BMC)
    stuck          present: accept `set power` but change nothing (a BMC that lies)
    lies           present: a BMC that lies about its host: `set power V` through the BMC
                   (ipmi_sim's calls, which carry MESHHA_LAB_BMC=1 in their environment)
                   changes nothing but is read back as V (kept in `lie-power`); the
                   host's watchdog, which calls this program too, still really powers off
    broken         present: fail every call (completion code 0xFF)
    chassis.log    one line per call, appended: "<unix time> <op> <name> [<value>]"

Only the standard library may be imported here, and the `get` path imports nothing
beyond os, sys and time: each import costs milliseconds on every BMC request.
"""

import os
import sys
import time


def _read(path: str, default: str = "") -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        return default


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _lines(path: str) -> list[str]:
    return [line.strip() for line in _read(path).splitlines() if line.strip()]


def _kill_everything(state_dir: str) -> None:
    """SIGKILL what runs on this simulated host: its registered pids, groups, pidfiles."""
    import contextlib
    import glob
    import signal

    pids: set[int] = set()
    for line in _lines(os.path.join(state_dir, "kill-pids")):
        if line.isdigit():
            pids.add(int(line))
    for pattern in _lines(os.path.join(state_dir, "kill-pidfiles")):
        for path in glob.glob(pattern):
            words = _read(path).split()
            if words and words[0].isdigit():
                pids.add(int(words[0]))
    for pgid_text in _lines(os.path.join(state_dir, "kill-pgids")):
        if pgid_text.isdigit() and int(pgid_text) > 1:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(pgid_text), signal.SIGKILL)
    for pid in pids:
        if pid > 1 and pid != os.getpid():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def _halt(state_dir: str) -> None:
    import contextlib
    import json
    import subprocess

    text = _read(os.path.join(state_dir, "off-commands"))
    for argv in json.loads(text) if text else []:
        # the power is off whatever a link command says
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=5)


def _boot(state_dir: str) -> None:
    import json
    import subprocess

    text = _read(os.path.join(state_dir, "on-command"))
    if not text:
        return
    argv = json.loads(text)
    subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _lying(state_dir: str) -> bool:
    return os.environ.get("MESHHA_LAB_BMC") == "1" and os.path.exists(
        os.path.join(state_dir, "lies")
    )


def _set(state_dir: str, name: str, value: str) -> None:
    power_file = os.path.join(state_dir, "power")
    if os.path.exists(os.path.join(state_dir, "stuck")):
        return
    if _lying(state_dir):
        if name == "power" and value in ("0", "1"):
            _write_atomic(os.path.join(state_dir, "lie-power"), value + "\n")
        elif name == "shutdown" and value == "1":
            _write_atomic(os.path.join(state_dir, "lie-power"), "0\n")
        return
    if name == "power":
        was_on = _read(power_file, "1") == "1"
        if value == "0":
            _write_atomic(power_file, "0\n")
            _kill_everything(state_dir)
            _halt(state_dir)
        elif value == "1":
            _write_atomic(power_file, "1\n")
            if not was_on:
                _boot(state_dir)
    elif name == "reset" and value == "1":
        _kill_everything(state_dir)
        _halt(state_dir)
        _write_atomic(power_file, "1\n")
        _boot(state_dir)
    elif name == "shutdown" and value == "1":
        # A soft power-off asks the OS to shut down; the lab host has no OS to ask.
        _write_atomic(power_file, "0\n")
        _kill_everything(state_dir)
        _halt(state_dir)
    elif name == "boot":
        _write_atomic(os.path.join(state_dir, "boot"), value + "\n")


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] not in ("get", "set"):
        print("usage: chassis.py STATE_DIR get NAME | set NAME VALUE", file=sys.stderr)
        return 2
    state_dir, op, name = argv[0], argv[1], argv[2]
    value = argv[3] if len(argv) > 3 else ""
    with open(os.path.join(state_dir, "chassis.log"), "a") as log:
        log.write(f"{time.time():.6f} {op} {name} {value}".rstrip() + "\n")
    delay_s = float(_read(os.path.join(state_dir, "delay-s"), "0") or 0)
    if delay_s > 0:
        time.sleep(delay_s)  # noqa: TID251  a slow BMC, on purpose
    if os.path.exists(os.path.join(state_dir, "broken")):
        return 1
    if op == "get":
        if name == "power":
            power = _read(os.path.join(state_dir, "power"), "1")
            if _lying(state_dir):
                power = _read(os.path.join(state_dir, "lie-power"), power)
            print(f"power:{power}")
        elif name == "boot":
            print(f"boot:{_read(os.path.join(state_dir, 'boot'), 'default')}")
        else:
            print(f"{name}:0")
        return 0
    _set(state_dir, name, value)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
