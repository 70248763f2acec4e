"""The self-fence part of the segment config: [hypervisor], [watchdog], [hosts.watchdog],
and the refusal of a deadline proof that would prove nothing.

The config fixtures and helpers are test_config.py's; `meshctl config check` is run as the
installed console script, the way an operator runs it.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from meshha.config.load import load_segment
from meshha.config.model import self_fence_provable
from tests.unit.test_config import BASE, EXAMPLE, edit, expect, only, problems, write

WATCHDOG = '\n[watchdog]\ndevice = "/dev/watchdog"\ntimeout_s = 15\n'
PROOF_ON = "\n[recovery]\nallow_self_fence_proof = true\n"


def test_defaults_hypervisor_uri_and_no_watchdog(tmp_path: Path) -> None:
    seg = load_segment(write(tmp_path, BASE))
    for h in seg.hosts:
        assert h.hypervisor_uri == "qemu:///system" and h.watchdog is None
    # Left out, the proof is used exactly where it holds: nowhere here.
    assert seg.recovery.allow_self_fence_proof
    assert not any(self_fence_provable(seg, h) for h in seg.host_names)


def test_segment_watchdog_applies_to_every_host(tmp_path: Path) -> None:
    seg = load_segment(write(tmp_path, BASE + WATCHDOG + PROOF_ON))
    for h in seg.hosts:
        assert h.watchdog is not None and h.watchdog.timeout_s == 15
        assert h.watchdog.device == Path("/dev/watchdog")
        assert self_fence_provable(seg, h.name)


def test_host_watchdog_overrides_and_relative_device_follows_the_file(tmp_path: Path) -> None:
    own = '[hosts.watchdog]\ndevice = "run/wd.sock"\ntimeout_s = 3\n'
    text = BASE + WATCHDOG
    text = edit(text, '[[hosts]]\nname = "host3"', own + '\n[[hosts]]\nname = "host3"')
    seg = load_segment(write(tmp_path, text))
    wd2, wd1 = seg.host("host2").watchdog, seg.host("host1").watchdog
    assert wd2 is not None and wd2.device == tmp_path / "run" / "wd.sock" and wd2.timeout_s == 3
    assert wd1 is not None and wd1.timeout_s == 15


def test_proof_true_without_a_watchdog_is_refused_and_says_why(tmp_path: Path) -> None:
    msg = only(tmp_path, BASE + PROOF_ON, "recovery.allow_self_fence_proof", "no watchdog")
    assert "'host1', 'host2', 'host3'" in msg
    assert "could run twice" in msg and "allow_self_fence_proof = false" in msg
    off = BASE + "\n[recovery]\nallow_self_fence_proof = false\n"
    assert problems(tmp_path, off) == []


def test_proof_true_without_a_hypervisor_is_refused(tmp_path: Path) -> None:
    text = BASE + WATCHDOG + PROOF_ON + '\n[hypervisor]\nuri = "none"\n'
    msg = only(tmp_path, text, "recovery.allow_self_fence_proof", "no hypervisor")
    assert "no watchdog" not in msg
    seg = load_segment(write(tmp_path, BASE + WATCHDOG + '\n[hypervisor]\nuri = "none"\n'))
    assert seg.host("host1").hypervisor_uri is None
    assert not self_fence_provable(seg, "host1")


def test_one_host_without_a_watchdog_is_named(tmp_path: Path) -> None:
    own = "[hosts.watchdog]\ntimeout_s = 5\n"
    text = edit(BASE, '[[hosts]]\nname = "host2"', own + '\n[[hosts]]\nname = "host2"')
    text = edit(text, '[[hosts]]\nname = "host3"', own + '\n[[hosts]]\nname = "host3"')
    # Each [hosts.watchdog] belongs to the [[hosts]] above it: host1 and host2 have one.
    msg = only(tmp_path, text + PROOF_ON, "recovery.allow_self_fence_proof", "'host3'")
    assert "'host1'" not in msg and "'host2'" not in msg
    seg = load_segment(write(tmp_path, text))
    assert [self_fence_provable(seg, h) for h in seg.host_names] == [True, True, False]


def test_watchdog_timeout_must_fire_before_the_deadline(tmp_path: Path) -> None:
    # lan-safe: deadline 30, isolation 6, margin 1: at most 23.
    assert problems(tmp_path, BASE + edit(WATCHDOG, "15", "23")) == []
    msg = only(tmp_path, BASE + edit(WATCHDOG, "15", "24"), "watchdog.timeout_s", "at most")
    assert "= 23" in msg
    own = "[hosts.watchdog]\ntimeout_s = 40\n"
    text = edit(BASE, '[[hosts]]\nname = "host2"', own + '\n[[hosts]]\nname = "host2"')
    only(tmp_path, text, "hosts[0].watchdog.timeout_s", "is 40 but must be at most")


@pytest.mark.parametrize(
    ("table", "key", "fragment"),
    [
        ('[watchdog]\ndevice = "/dev/watchdog"\n', "watchdog.timeout_s", "missing (required)"),
        ("[watchdog]\ntimeout_s = 0\n", "watchdog.timeout_s", "at least 1"),
        ("[watchdog]\ntimeout_s = 2.5\n", "watchdog.timeout_s", "expected an integer"),
        ("[watchdog]\ntimeout_s = 5\nfeed_s = 1\n", "watchdog.feed_s", "unknown key"),
        ('[hypervisor]\nuri = "system"\n', "hypervisor.uri", "not a libvirt URI"),
        ('[hypervisor]\nurl = "qemu:///system"\n', "hypervisor.url", "unknown key"),
    ],
)
def test_bad_self_fence_tables(tmp_path: Path, table: str, key: str, fragment: str) -> None:
    only(tmp_path, BASE + "\n" + table, key, fragment)


def test_example_declares_watchdog_and_hypervisor(tmp_path: Path) -> None:
    shutil.copy(EXAMPLE, tmp_path / "segment.toml")
    seg = load_segment(write(tmp_path, (tmp_path / "segment.toml").read_text()))
    assert all(self_fence_provable(seg, h) for h in seg.host_names)


@pytest.fixture
def meshctl() -> str:
    path = shutil.which("meshctl") or str(Path(__file__).parents[2] / ".venv" / "bin" / "meshctl")
    if not Path(path).exists():
        pytest.skip("meshctl console script not installed (pip install -e .)")
    return path


def test_meshctl_config_check_refuses_the_proof_without_watchdog(
    tmp_path: Path, meshctl: str
) -> None:
    path = write(tmp_path, BASE + PROOF_ON)
    res = subprocess.run([meshctl, "config", "check", str(path)], capture_output=True, text=True)
    assert res.returncode == 1, res.stdout + res.stderr
    out = res.stdout + res.stderr
    expect(out.splitlines(), tmp_path, "recovery.allow_self_fence_proof", "no watchdog")
    path = write(tmp_path, BASE + WATCHDOG + PROOF_ON)
    res = subprocess.run([meshctl, "config", "check", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_host_hypervisor_overrides_the_segment(tmp_path: Path) -> None:
    own = '[hosts.hypervisor]\nuri = "qemu+unix:///system?socket=/run/h1/libvirt-sock"\n'
    text = edit(BASE, '[[hosts]]\nname = "host2"', own + '\n[[hosts]]\nname = "host2"')
    text += '\n[hypervisor]\nuri = "none"\n' + WATCHDOG
    seg = load_segment(write(tmp_path, text))
    uris = [h.hypervisor_uri for h in seg.hosts]
    assert uris == ["qemu+unix:///system?socket=/run/h1/libvirt-sock", None, None]
    assert [self_fence_provable(seg, h) for h in seg.host_names] == [True, False, False]
    msg = only(tmp_path, text + PROOF_ON, "recovery.allow_self_fence_proof", "no hypervisor")
    assert "'host2', 'host3'" in msg and "'host1'" not in msg
    empty = edit(text, own, "[hosts.hypervisor]\n")
    only(tmp_path, empty, "hosts[0].hypervisor.uri", "missing (required)")
