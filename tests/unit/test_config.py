"""The segment config loader: the example loads, and every refusal names file + key path.

Configs are written as text into a tmp dir beside the secret files they name (mode 0600),
then edited one refusal at a time. `check_file` gives the messages; `load_segment` must
raise `ConfigError` carrying exactly the same lines.
"""

from __future__ import annotations

import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshha.config.load import HOST_POLICY_REFUSED, check_file, load_segment
from meshha.config.model import TIMING_PROFILES, Segment
from meshha.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "segment.example.toml"

BASE = """\
[segment]
name = "seg"
probe_key_file = "secrets/probe.key"

[[networks]]
name = "admin"
on_loss = "alert"
probe_port = 7946

[[networks]]
name = "storage"
on_loss = "fence_evacuate"
probe_port = 7947

[[hosts]]
name = "host1"
role = "compute"
voter = true
addresses = { admin = "10.0.0.1", storage = "10.0.1.1" }
[hosts.bmc]
address = "10.0.9.1"
username = "ipmi"
password_file = "secrets/bmc.pw"

[[hosts]]
name = "host2"
role = "compute"
voter = true
addresses = { admin = "10.0.0.2", storage = "10.0.1.2" }
[hosts.bmc]
address = "10.0.9.2"
username = "ipmi"
password_file = "secrets/bmc.pw"

[[hosts]]
name = "host3"
role = "reserved"
voter = true
addresses = { admin = "10.0.0.3", storage = "10.0.1.3" }
[hosts.bmc]
address = "10.0.9.3"
username = "ipmi"
password_file = "secrets/bmc.pw"

[timings]
profile = "lan-safe"

[brake]
max_failed_fraction = 0.34
window_s = 60

[raft]
port = 4321
password_file = "secrets/raft.pw"
data_dir = "raft"
"""

SMTP = """
[alerts.smtp]
host = "smtp.example.org"
port = 587
sender = "meshha@example.org"
recipients = ["ops@example.org"]
username = "meshha"
password_file = "secrets/smtp.pw"
starttls = true
"""

SECRET = "hunter2-correct-horse-battery-staple"


def _file_keys(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key.endswith("_file") and isinstance(value, str):
                yield value
            else:
                yield from _file_keys(value)
    elif isinstance(node, list):
        for item in node:
            yield from _file_keys(item)


def write(tmp: Path, text: str, *, secret: str = SECRET, mode: int = 0o600) -> Path:
    """`text` as tmp/segment.toml, with every *_file it names created (when it parses)."""
    path = tmp / "segment.toml"
    path.write_text(text)
    try:
        names = set(_file_keys(tomllib.loads(text)))
    except tomllib.TOMLDecodeError:
        names = set()
    for name in names:
        secret_path = tmp / name
        secret_path.parent.mkdir(parents=True, exist_ok=True)
        secret_path.write_text(secret + "\n")
        secret_path.chmod(mode)
    return path


def edit(text: str, old: str, new: str) -> str:
    assert old in text, f"fixture drifted: {old!r} not in the config"
    return text.replace(old, new, 1)


def problems(tmp: Path, text: str) -> list[str]:
    path = write(tmp, text)
    found = check_file(path)
    if found:
        with pytest.raises(ConfigError) as err:
            load_segment(path)
        assert str(err.value).splitlines() == found
    return found


def expect(found: list[str], tmp: Path, key: str, fragment: str) -> str:
    """The one message at `key` that contains `fragment`."""
    prefix = f"{tmp / 'segment.toml'}: {key}: "
    hits = [m for m in found if m.startswith(prefix) and fragment in m]
    assert len(hits) == 1, f"want one {prefix!r}…{fragment!r} in:\n" + "\n".join(found)
    return hits[0]


def only(tmp: Path, text: str, key: str, fragment: str) -> str:
    """The config has exactly one problem, at `key`, mentioning `fragment`."""
    found = problems(tmp, text)
    assert len(found) == 1, "\n".join(found)
    return expect(found, tmp, key, fragment)


# -- what loads ----------------------------------------------------------------------------


def test_base_config_loads(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    seg = load_segment(path)
    assert check_file(path) == []
    assert seg.host_names == ("host1", "host2", "host3")
    assert seg.voters == ("host1", "host2", "host3")
    assert seg.host("host1").addresses == (("admin", "10.0.0.1"), ("storage", "10.0.1.1"))
    bmc = seg.host("host1").bmc
    assert bmc is not None and bmc.port == 623
    assert seg.timings.probe_interval_s == TIMING_PROFILES["lan-safe"]["probe_interval_s"]
    assert seg.raft.data_dir == tmp_path / "raft"
    assert seg.source == str(path)


def test_example_loads_when_its_password_files_exist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copy(EXAMPLE, tmp_path / "segment.toml")
    path = write(tmp_path, (tmp_path / "segment.toml").read_text())
    monkeypatch.chdir(tmp_path.parent)  # relative paths follow the file, not the cwd
    assert check_file(path) == []
    seg = load_segment(path)
    assert isinstance(seg, Segment)
    assert len(seg.hosts) == 5
    assert seg.network_names == ("admin", "storage", "tenant")
    assert len(seg.voters) == 5
    assert [h.name for h in seg.hosts if h.role == "reserved"] == ["host5"]
    assert seg.probe_key_file == tmp_path / "secrets" / "probe.key"
    for host in seg.hosts:
        assert host.bmc is not None and host.bmc.password_file.is_relative_to(tmp_path)
        assert host.networks == seg.network_names
    assert seg.alerts.smtp is not None and seg.alerts.smtp.password_file is not None
    assert seg.policy.rules and seg.timings.profile in TIMING_PROFILES


def test_example_ships_the_fast_profile_with_a_watchdog_that_rides_a_5_s_stall(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 12's goal for the shipped default: a dead host failed in about a second, a
    5 s stall (or restart) of a live agent ridden through: the watchdog must not reset
    the host before that, and must fire before the grace and the self-fence deadline."""
    shutil.copy(EXAMPLE, tmp_path / "segment.toml")
    path = write(tmp_path, (tmp_path / "segment.toml").read_text())
    monkeypatch.chdir(tmp_path.parent)
    seg = load_segment(path)
    t = seg.timings
    assert t.profile == "lan-fast" and t.suspect_after_s + t.fail_after_s < 1.0
    for host in seg.hosts:
        assert host.watchdog is not None
        assert 5 < host.watchdog.timeout_s <= t.stall_grace_s
        assert host.watchdog.timeout_s <= t.self_fence_deadline_s - t.isolation_after_s - 1


def test_example_needs_its_password_files(tmp_path: Path) -> None:
    shutil.copy(EXAMPLE, tmp_path / "segment.toml")
    found = check_file(tmp_path / "segment.toml")
    assert found and all("does not exist" in m for m in found)
    expect(found, tmp_path, "raft.password_file", "raft password file")


def test_relative_config_path_resolves_secrets_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, BASE)
    monkeypatch.chdir(tmp_path)
    seg = load_segment("segment.toml")
    assert seg.raft.password_file == tmp_path / "secrets" / "raft.pw"


def test_lan_fast_profile_and_overrides_load(tmp_path: Path) -> None:
    text = edit(BASE, 'profile = "lan-safe"', 'profile = "lan-fast"\nfail_after_s = 1\n')
    seg = load_segment(write(tmp_path, text))
    assert seg.timings.profile == "lan-fast"
    assert seg.timings.fail_after_s == 1.0
    assert seg.timings.probe_interval_s == TIMING_PROFILES["lan-fast"]["probe_interval_s"]
    assert isinstance(seg.timings.misses_before_suspect, int)


# -- collecting --------------------------------------------------------------------------


def test_all_problems_are_collected_not_just_the_first(tmp_path: Path) -> None:
    text = edit(BASE, 'name = "seg"', 'name = "seg"\nnmae = "x"')
    text = edit(text, 'address = "10.0.9.3"', 'address = "10.0.0.300"')
    text = edit(text, "window_s = 60", "window_s = 0")
    text = edit(text, "port = 4321", "port = 70000")
    text = edit(text, 'on_loss = "alert"', 'on_loss = "panic"')
    found = problems(tmp_path, text)
    assert len(found) == 5, "\n".join(found)
    expect(found, tmp_path, "segment.nmae", "unknown key (did you mean 'name'?)")
    msg = expect(found, tmp_path, "hosts[2].bmc.address", "not an IP address")
    assert (
        msg == f"{tmp_path / 'segment.toml'}: hosts[2].bmc.address: not an IP address: '10.0.0.300'"
    )
    expect(found, tmp_path, "brake.window_s", "must be greater than 0")
    expect(found, tmp_path, "raft.port", "port out of range 1-65535: 70000")
    expect(found, tmp_path, "networks[0].on_loss", "unknown value 'panic' (valid: fence_evacuate")


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    assert check_file(missing) == [f"{missing}: cannot read: No such file or directory"]
    found = problems(tmp_path, BASE + "\n[brake\n")
    assert len(found) == 1 and "not valid TOML" in found[0] and "line" in found[0]
    (tmp_path / "segment.toml").write_bytes(b"\xff\xfe")
    assert check_file(tmp_path / "segment.toml") == [f"{tmp_path / 'segment.toml'}: not UTF-8 text"]


# -- unknown keys, types, required keys --------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "key", "fragment"),
    [
        ("[brake]", "[brakes]", "brakes", "unknown key (did you mean 'brake'?)"),
        ('username = "ipmi"', 'usernme = "ipmi"', "hosts[0].bmc.usernme", "'username'"),
        ("window_s = 60", "window_s = 60\nwindow = 3", "brake.window", "'window_s'"),
        ('profile = "lan-safe"', 'profile = "lan-safe"\nprobe_intervl_s = 1', "timings.probe_intervl_s", "'probe_interval_s'"),
        ("probe_port = 7946", "probe_port = 7946\ncolour = 'red'", "networks[0].colour", "unknown key"),
    ],
)  # fmt: skip
def test_unknown_keys_are_refused(
    tmp_path: Path, old: str, new: str, key: str, fragment: str
) -> None:
    text = edit(BASE, old, new)
    found = problems(tmp_path, text)
    expect(found, tmp_path, key, fragment)
    if old == "[brake]":  # the real table is now missing
        expect(found, tmp_path, "brake", "missing (required)")


def test_unknown_keys_in_nested_tables(tmp_path: Path) -> None:
    text = BASE + '[[policy.rules]]\nlevel = "flavor"\nmatch = "m1"\nha = false\nprioirty = "low"\n'
    text += SMTP.replace("starttls", "start_tls")
    found = problems(tmp_path, text)
    expect(found, tmp_path, "policy.rules[0].prioirty", "did you mean 'priority'?")
    expect(found, tmp_path, "alerts.smtp.start_tls", "did you mean 'starttls'?")


def test_inline_password_is_refused_without_echo(tmp_path: Path) -> None:
    text = edit(BASE, 'username = "ipmi"', f'username = "ipmi"\npassword = "{SECRET}"')
    msg = only(tmp_path, text, "hosts[0].bmc.password", "secrets never go in the config")
    assert SECRET not in msg


@pytest.mark.parametrize(
    ("old", "new", "key", "fragment"),
    [
        ("voter = true", 'voter = "yes"', "hosts[0].voter", "expected true or false, got a string"),
        ("probe_port = 7946", 'probe_port = "7946"', "networks[0].probe_port", "expected an integer, got a string"),
        ("window_s = 60", 'window_s = "60"', "brake.window_s", "expected a number, got a string"),
        ("window_s = 60", "window_s = true", "brake.window_s", "expected a number, got a boolean"),
        ('name = "seg"', "name = 7", "segment.name", "expected a string, got an integer"),
        ('addresses = { admin = "10.0.0.2", storage = "10.0.1.2" }', 'addresses = "10.0.0.2"', "hosts[1].addresses", "expected a table, got a string"),
        ('profile = "lan-safe"', 'profile = "lan-safe"\nmisses_before_suspect = 2.5', "timings.misses_before_suspect", "expected an integer, got a float"),
        ('profile = "lan-safe"', 'profile = "lan-safe"\nfail_after_s = nan', "timings.fail_after_s", "must be a finite number"),
    ],
)  # fmt: skip
def test_wrong_types_are_refused(
    tmp_path: Path, old: str, new: str, key: str, fragment: str
) -> None:
    only(tmp_path, edit(BASE, old, new), key, fragment)


def test_wrong_table_shapes(tmp_path: Path) -> None:
    text = edit(BASE, "[brake]\nmax_failed_fraction = 0.34\nwindow_s = 60\n", "")
    text = edit(text, "[raft]\n", "[[raft]]\n")
    found = problems(tmp_path, "brake = 3\npolicy = []\n" + text)
    expect(found, tmp_path, "brake", "expected a table, got an integer")
    expect(found, tmp_path, "raft", "expected a table, got an array")
    expect(found, tmp_path, "policy", "expected a table, got an array")


@pytest.mark.parametrize(
    ("old", "key"),
    [
        ('name = "seg"\n', "segment.name"),
        ('probe_key_file = "secrets/probe.key"\n', "segment.probe_key_file"),
        ('username = "ipmi"\n', "hosts[0].bmc.username"),
        ('address = "10.0.9.2"\n', "hosts[1].bmc.address"),
        ('on_loss = "alert"\n', "networks[0].on_loss"),
        ('role = "reserved"\n', "hosts[2].role"),
        ('profile = "lan-safe"\n', "timings.profile"),
        ("window_s = 60\n", "brake.window_s"),
        ('data_dir = "raft"\n', "raft.data_dir"),
    ],
)
def test_missing_required_keys(tmp_path: Path, old: str, key: str) -> None:
    only(tmp_path, edit(BASE, old, ""), key, "missing (required)")


def test_missing_required_tables(tmp_path: Path) -> None:
    text = BASE.split("[[networks]]")[0].replace("[segment]", "[segmnt]")
    found = problems(tmp_path, text + "[timings]\nprofile = 'lan-safe'\n")
    for key in ("segment", "networks", "hosts", "brake", "raft"):
        expect(found, tmp_path, key, "missing (required)")
    expect(found, tmp_path, "segmnt", "did you mean 'segment'?")


# -- networks and hosts --------------------------------------------------------------------


def test_duplicate_network_name_and_probe_port(tmp_path: Path) -> None:
    text = BASE + '[[networks]]\nname = "storage"\non_loss = "ignore"\nprobe_port = 7946\n'
    found = problems(tmp_path, text)
    expect(
        found, tmp_path, "networks[2].name", "duplicate network name 'storage' (also networks[1])"
    )
    expect(
        found, tmp_path, "networks[2].probe_port", "duplicate probe port 7946 (also networks[0])"
    )


def test_admin_network_is_required(tmp_path: Path) -> None:
    text = BASE.replace('"admin"', '"mgmt"').replace("admin =", "mgmt =")
    only(tmp_path, text, "networks", "no network named 'admin': Raft runs between")


def test_duplicate_host_names(tmp_path: Path) -> None:
    text = edit(BASE, 'name = "host3"', 'name = "host1"')
    only(tmp_path, text, "hosts[2].name", "duplicate host name 'host1' (also hosts[0])")


def test_address_on_undeclared_network(tmp_path: Path) -> None:
    text = edit(BASE, 'storage = "10.0.1.2" }', 'storage = "10.0.1.2", tenant = "10.0.2.2" }')
    msg = only(tmp_path, text, "hosts[1].addresses.tenant", "network 'tenant' is not declared")
    assert "declared: admin, storage" in msg


def test_missing_address_on_a_declared_network(tmp_path: Path) -> None:
    text = edit(BASE, ', storage = "10.0.1.3" }', " }")
    only(tmp_path, text, "hosts[2].addresses", "no address on network 'storage'")


@pytest.mark.parametrize("bad", ["10.0.0.300", "host1.example.org", "", "10.0.0.01"])
def test_invalid_ip_addresses(tmp_path: Path, bad: str) -> None:
    text = edit(BASE, 'admin = "10.0.0.2"', f'admin = "{bad}"')
    only(tmp_path, text, "hosts[1].addresses.admin", f"not an IP address: {bad!r}")


def test_unspecified_address_is_refused(tmp_path: Path) -> None:
    text = edit(BASE, 'admin = "10.0.0.2"', 'admin = "0.0.0.0"')
    only(tmp_path, text, "hosts[1].addresses.admin", "not a unicast host address")


def test_ipv6_addresses_are_normalised(tmp_path: Path) -> None:
    text = edit(BASE, 'admin = "10.0.0.1"', 'admin = "FD00:0::1"')
    seg = load_segment(write(tmp_path, text))
    assert seg.host("host1").address("admin") == "fd00::1"


def test_duplicate_addresses(tmp_path: Path) -> None:
    text = edit(BASE, 'storage = "10.0.1.3"', 'storage = "10.0.1.1"')
    text = edit(text, 'admin = "10.0.0.2"', 'admin = "fd00::1"')
    text = edit(text, 'admin = "10.0.0.3"', 'admin = "fd00:0:0::1"')
    found = problems(tmp_path, text)
    assert len(found) == 2, "\n".join(found)
    expect(
        found,
        tmp_path,
        "hosts[2].addresses.storage",
        "duplicate address 10.0.1.1 (also hosts[0].addresses.storage)",
    )
    expect(found, tmp_path, "hosts[2].addresses.admin", "duplicate address fd00::1 (also hosts[1].addresses.admin)")  # fmt: skip


def test_two_hosts_sharing_a_bmc(tmp_path: Path) -> None:
    text = edit(BASE, 'address = "10.0.9.2"', 'address = "10.0.9.1"')
    only(tmp_path, text, "hosts[1].bmc.address", "fencing one host would power off another")
    text = edit(
        text, 'address = "10.0.9.1"\nusername', 'address = "10.0.9.1"\nport = 6230\nusername'
    )
    assert problems(tmp_path, text) == []  # same address, other port: two BMC simulators


def test_fewer_than_three_voters(tmp_path: Path) -> None:
    text = edit(BASE, "voter = true", "voter = false")
    msg = only(tmp_path, text, "hosts", "only 2 voter(s) (host2, host3)")
    assert "at least 3" in msg


def test_non_voters_are_members(tmp_path: Path) -> None:
    host4 = (
        '\n[[hosts]]\nname = "host4"\nrole = "compute"\nvoter = false\n'
        'addresses = { admin = "10.0.0.4", storage = "10.0.1.4" }\n\n'
    )
    seg = load_segment(write(tmp_path, edit(BASE, "[timings]", host4 + "[timings]")))
    assert seg.host_names[-1] == "host4" and seg.voters == ("host1", "host2", "host3")


def test_reserve_k_needs_a_reserved_host(tmp_path: Path) -> None:
    no_reserve = edit(BASE, 'role = "reserved"', 'role = "compute"')
    msg = only(tmp_path, no_reserve, "recovery.reserve_k", 'no host has role = "reserved"')
    assert "reserve_k = 0" in msg
    assert problems(tmp_path, no_reserve + "[recovery]\nreserve_k = 0\n") == []


def test_host_without_bmc_needs_self_fence_proof(tmp_path: Path) -> None:
    bmc = '[hosts.bmc]\naddress = "10.0.9.2"\nusername = "ipmi"\npassword_file = "secrets/bmc.pw"\n'
    text = edit(BASE, bmc, "")
    assert load_segment(write(tmp_path, text)).host("host2").bmc is None
    found = problems(tmp_path, text + "[recovery]\nallow_self_fence_proof = false\n")
    assert found == [
        f"{tmp_path / 'segment.toml'}: hosts[1]: host 'host2' has no [hosts.bmc] and "
        "recovery.allow_self_fence_proof is false: it could never be fenced, so its VMs "
        "could never be evacuated"
    ]


@pytest.mark.parametrize(
    ("old", "new", "key", "fragment"),
    [
        ('on_loss = "alert"', 'on_loss = "fence"', "networks[0].on_loss", "unknown value 'fence'"),
        ('role = "reserved"', 'role = "spare"', "hosts[2].role", "(valid: compute, reserved)"),
        ("probe_port = 7947", "probe_port = 0", "networks[1].probe_port", "port out of range 1-65535: 0"),
        ('username = "ipmi"', 'port = 65536\nusername = "ipmi"', "hosts[0].bmc.port", "port out of range"),
        ("port = 4321", "port = -1", "raft.port", "port out of range"),
    ],
)  # fmt: skip
def test_bad_values(tmp_path: Path, old: str, new: str, key: str, fragment: str) -> None:
    only(tmp_path, edit(BASE, old, new), key, fragment)


def test_capacity(tmp_path: Path) -> None:
    cap = "[hosts.capacity]\nvcpus = 8\nram_mb = 16384\ndisk_gb = 0\n"
    text = edit(BASE, "[timings]", cap + "\n[timings]")
    assert load_segment(write(tmp_path, text)).host("host3").capacity is not None
    found = problems(
        tmp_path, edit(text, "vcpus = 8\n", "vcpus = 0\n").replace("disk_gb = 0\n", "")
    )
    expect(found, tmp_path, "hosts[2].capacity.vcpus", "must be at least 1, got 0")
    expect(found, tmp_path, "hosts[2].capacity.disk_gb", "missing (required)")


# -- policy --------------------------------------------------------------------------------


def rule(level: str, match: str = "x", extra: str = "ha = true") -> str:
    return f'\n[[policy.rules]]\nlevel = "{level}"\nmatch = "{match}"\n{extra}\n'


@pytest.mark.parametrize("level", ["host", "compute_host", "hypervisor", "Host"])
def test_policy_per_compute_host_is_refused_with_why(tmp_path: Path, level: str) -> None:
    msg = only(tmp_path, BASE + rule(level, "host1"), "policy.rules[0].level", HOST_POLICY_REFUSED)
    assert "non-deterministically" in msg and "nova-scheduler" in msg


@pytest.mark.parametrize("level", ["aggregate", "availability_zone"])
def test_policy_matching_a_host_name_at_coarser_level_is_fine(tmp_path: Path, level: str) -> None:
    seg = load_segment(write(tmp_path, BASE + rule(level, "host1")))
    assert seg.policy.rules[0].level == level and seg.policy.rules[0].match == "host1"


def test_policy_values(tmp_path: Path) -> None:
    text = '\n[policy]\ndefault_ha = false\ndefault_priority = "high"\nvm_restart_limit = 2\n'
    text += rule("flavor", "m1.small", 'priority = "low"\non_vm_failure = "alert"')
    seg = load_segment(write(tmp_path, BASE + text))
    assert seg.policy.default_ha is False and seg.policy.default_priority == "high"
    assert seg.policy.rules[0].priority == "low" and seg.policy.rules[0].ha is None


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        (rule("tenant"), "policy.rules[0].level", "unknown level 'tenant' (valid: region, cell, availability_zone, aggregate, project, flavor, vm)"),
        (rule("vm", extra='priority = "urgent"'), "policy.rules[0].priority", "unknown value 'urgent' (valid: high, medium, low)"),
        (rule("vm", extra='on_vm_failure = "reboot"'), "policy.rules[0].on_vm_failure", "unknown value 'reboot'"),
        (rule("vm", extra=""), "policy.rules[0]", "says nothing"),
        ('[policy]\ndefault_priority = "urgent"\n', "policy.default_priority", "unknown value 'urgent'"),
        ('[policy]\ndefault_on_vm_failure = "pray"\n', "policy.default_on_vm_failure", "(valid: restart, hard_reboot"),
        ("[policy]\nvm_restart_limit = 0\n", "policy.vm_restart_limit", "must be at least 1"),
        ('[[policy.rules]]\nlevel = "vm"\nha = true\n', "policy.rules[0].match", "missing (required)"),
    ],
)  # fmt: skip
def test_bad_policy(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    only(tmp_path, BASE + "\n" + text, key, fragment)


# -- timings and brake ---------------------------------------------------------------------


def timings(**overrides: object) -> str:
    lines = "".join(f"{k} = {v}\n" for k, v in overrides.items())
    return edit(BASE, 'profile = "lan-safe"\n', f'profile = "lan-safe"\n{lines}')


@pytest.mark.parametrize(
    ("overrides", "key", "fragment"),
    [
        ({"probe_timeout_s": 1.0}, "timings.probe_timeout_s", "must be less than probe_interval_s (probe_timeout_s = 1, probe_interval_s = 1 from profile 'lan-safe')"),
        ({"misses_before_suspect": 0}, "timings.misses_before_suspect", "must be at least 1, got 0"),
        ({"indirect_probes": -1}, "timings.indirect_probes", "must be at least 0, got -1"),
        ({"isolation_after_s": 30}, "timings.isolation_after_s", "the isolated host must have time to kill its VMs before the majority may rely on the deadline"),
        ({"isolation_after_s": 2.5, "election_timeout_s": 1.5}, "timings.isolation_after_s", "a host must not self-isolate faster than its peers can even suspect it"),
        ({"election_timeout_s": 6}, "timings.election_timeout_s", "must be less than isolation_after_s"),
        ({"max_clock_skew_s": -0.1}, "timings.max_clock_skew_s", "must be at least 0"),
        ({"fail_after_s": -1}, "timings.fail_after_s", "must be at least 0"),
        ({"probe_interval_s": 0}, "timings.probe_interval_s", "must be greater than 0"),
    ],
)  # fmt: skip
def test_contradicting_timings(tmp_path: Path, overrides: dict, key: str, fragment: str) -> None:
    only(tmp_path, timings(**overrides), key, fragment)


def test_suspect_relation_names_the_product(tmp_path: Path) -> None:
    msg = only(tmp_path, timings(misses_before_suspect=7), "timings.isolation_after_s", "suspect")
    assert "probe_interval_s x misses_before_suspect = 7" in msg


def test_several_timing_contradictions_are_all_reported(tmp_path: Path) -> None:
    found = problems(tmp_path, timings(probe_timeout_s=2, isolation_after_s=40))
    assert len(found) == 2
    expect(found, tmp_path, "timings.probe_timeout_s", "less than probe_interval_s")
    expect(found, tmp_path, "timings.isolation_after_s", "less than self_fence_deadline_s")


def test_unknown_timing_profile_lists_valid_ones(tmp_path: Path) -> None:
    text = edit(BASE, '"lan-safe"', '"wan"')
    only(
        tmp_path,
        text,
        "timings.profile",
        "unknown timing profile 'wan' (valid: lan-fast, lan-safe)",
    )


@pytest.mark.parametrize(
    ("new", "fragment"),
    [
        ("max_failed_fraction = 0", "must be greater than 0 and at most 1, got 0"),
        ("max_failed_fraction = 1.5", "must be greater than 0 and at most 1, got 1.5"),
        ("max_failed_fraction = -0.2", "got -0.2"),
    ],
)
def test_brake_fraction(tmp_path: Path, new: str, fragment: str) -> None:
    only(tmp_path, edit(BASE, "max_failed_fraction = 0.34", new), "brake.max_failed_fraction", fragment)  # fmt: skip


def test_brake_fraction_one_is_allowed(tmp_path: Path) -> None:
    text = edit(BASE, "max_failed_fraction = 0.34", "max_failed_fraction = 1")
    assert load_segment(write(tmp_path, text)).brake.max_failed_fraction == 1.0


def test_brake_window(tmp_path: Path) -> None:
    only(tmp_path, edit(BASE, "window_s = 60", "window_s = -5"), "brake.window_s", "greater than 0")


# -- alerts, nova, processes ---------------------------------------------------------------


def test_alerts_smtp_loads(tmp_path: Path) -> None:
    seg = load_segment(write(tmp_path, BASE + SMTP))
    assert seg.alerts.smtp is not None and seg.alerts.smtp.recipients == ("ops@example.org",)
    assert seg.alerts.smtp.password_file == tmp_path / "secrets" / "smtp.pw"


def test_smtp_username_and_password_file_go_together(tmp_path: Path) -> None:
    text = BASE + SMTP.replace('password_file = "secrets/smtp.pw"\n', "")
    only(tmp_path, text, "alerts.smtp", "set both username and password_file, or neither")


def test_smtp_needs_recipients(tmp_path: Path) -> None:
    only(tmp_path, BASE + SMTP.replace('["ops@example.org"]', "[]"), "alerts.smtp.recipients", "at least one")  # fmt: skip


def test_webhook_must_be_http_and_is_not_echoed(tmp_path: Path) -> None:
    text = BASE + f'[alerts]\nwebhooks = ["https://ok.example/x", "ftp://h/{SECRET}"]\n'
    msg = only(tmp_path, text, "alerts.webhooks[1]", "not an http(s) URL")
    assert SECRET not in msg


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ('[nova]\nmicroversion = "latest"\n', "nova.microversion", "not a microversion like '2.95'"),
        ("[nova]\ntimeout_s = 0\n", "nova.timeout_s", "greater than 0"),
        ('[processes]\nrestart_command = "service restart"\n', "processes.restart_command", "must contain '{name}'"),
        ('[processes]\nnames = ["nova-compute", 3]\n', "processes.names[1]", "expected a string, got an integer"),
        ("[recovery]\nmax_parallel_evacuations = 0\n", "recovery.max_parallel_evacuations", "must be at least 1"),
        ('[recovery]\nprocess_restart_failure = "reboot"\n', "recovery.process_restart_failure", "(valid: disable, fence_evacuate)"),
        ("[alerts]\ntimeout_s = -1\n", "alerts.timeout_s", "greater than 0"),
    ],
)  # fmt: skip
def test_bad_optional_sections(tmp_path: Path, text: str, key: str, fragment: str) -> None:
    only(tmp_path, BASE + "\n" + text, key, fragment)


# -- secret files --------------------------------------------------------------------------

SECRET_KEYS = [
    ("secrets/probe.key", "segment.probe_key_file", "probe key file"),
    ("secrets/raft.pw", "raft.password_file", "raft password file"),
    ("secrets/smtp.pw", "alerts.smtp.password_file", "SMTP password file"),
]


@pytest.mark.parametrize(("name", "key", "what"), SECRET_KEYS)
def test_missing_secret_file(tmp_path: Path, name: str, key: str, what: str) -> None:
    write(tmp_path, BASE + SMTP)
    (tmp_path / name).unlink()
    found = check_file(tmp_path / "segment.toml")
    assert found == [f"{tmp_path / 'segment.toml'}: {key}: {what} '{tmp_path / name}' does not exist"]  # fmt: skip


@pytest.mark.parametrize(("name", "key", "what"), SECRET_KEYS)
def test_empty_secret_file(tmp_path: Path, name: str, key: str, what: str) -> None:
    write(tmp_path, BASE + SMTP)
    (tmp_path / name).write_text("\n")
    found = check_file(tmp_path / "segment.toml")
    assert found == [f"{tmp_path / 'segment.toml'}: {key}: {what} '{tmp_path / name}' is empty"]


@pytest.mark.parametrize("mode", [0o604, 0o602, 0o601, 0o666])
def test_secret_file_mode_is_checked(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path, BASE + SMTP)
    (tmp_path / "secrets" / "raft.pw").chmod(mode)
    found = check_file(path)
    assert len(found) == 1, found
    msg = expect(found, tmp_path, "raft.password_file", "is readable or writable by others")
    assert f"(mode {mode:04o})" in msg and "chmod o-rwx" in msg


def test_group_readable_secret_file_is_fine(tmp_path: Path) -> None:
    path = write(tmp_path, BASE, mode=0o640)
    assert check_file(path) == []


def test_shared_bmc_password_file_is_reported_per_host(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    (tmp_path / "secrets" / "bmc.pw").chmod(0o644)
    found = check_file(path)
    assert [m.split(": ")[1] for m in found] == [f"hosts[{i}].bmc.password_file" for i in range(3)]
    assert all("BMC password file" in m for m in found)


def test_secret_path_that_is_a_directory(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    (tmp_path / "secrets" / "raft.pw").unlink()
    (tmp_path / "secrets" / "raft.pw").mkdir()
    found = check_file(path)
    assert len(found) == 1
    expect(found, tmp_path, "raft.password_file", "is not a regular file")


def test_probe_key_too_short(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    (tmp_path / "secrets" / "probe.key").write_text("short\n")
    found = check_file(path)
    assert len(found) == 1
    expect(found, tmp_path, "segment.probe_key_file", "at least 16 bytes")


def test_secrets_never_appear_in_messages(tmp_path: Path) -> None:
    """Every message path that can fire at once, with the secret in every secret file, in
    an inline password and in a webhook URL: the secret is in none of the messages."""
    text = edit(BASE, 'username = "ipmi"', f'username = "ipmi"\npassword = "{SECRET}"')
    text = edit(text, 'name = "seg"', f'name = "seg"\nsecret = "{SECRET}"')
    text = edit(text, 'address = "10.0.9.2"', 'address = "10.0.9.1"')  # shared BMC
    text = edit(text, 'admin = "10.0.0.3"', 'admin = "10.0.0.1"')  # duplicate address
    text = edit(text, 'admin = "10.0.0.2"', 'admin = "10.0.0.300"')  # bad IP
    text = edit(text, 'storage = "10.0.1.2" }', 'storage = "10.0.1.2", x = "10.0.3.2" }')
    text = edit(text, ', storage = "10.0.1.3" }', " }")  # missing address
    text = edit(text, 'name = "host2"', 'name = "host1"')  # duplicate host
    text = edit(text, "voter = true", 'voter = "maybe"')
    text = edit(text, 'role = "reserved"', 'role = "compute"')  # no reserved host
    text = edit(text, "probe_port = 7947", "probe_port = 7946")
    text = edit(text, 'on_loss = "alert"', 'on_loss = "shrug"')
    text = edit(text, 'profile = "lan-safe"', 'profile = "lan-safe"\nprobe_timeout_s = 5\nisolation_after_s = 40\nelection_timeout_s = 50')  # fmt: skip
    text = edit(text, "max_failed_fraction = 0.34", "max_failed_fraction = 2")
    text = edit(text, "port = 4321", "port = 0")
    text += rule("host", "host1") + rule("tenant") + rule("vm", extra="")
    text += SMTP.replace('username = "meshha"\n', "")
    text = text.replace("[alerts.smtp]", f'[alerts]\nwebhooks = ["gopher://{SECRET}"]\n\n[alerts.smtp]')  # fmt: skip
    text += "\n[recovery]\nallow_self_fence_proof = false\n[nova]\nmicroversion = 'x'\n"
    path = write(tmp_path, text, mode=0o666)  # every secret file holds SECRET, open to all
    (tmp_path / "secrets" / "probe.key").write_text(SECRET[:5])  # too short, still secret
    found = check_file(path)
    with pytest.raises(ConfigError) as err:
        load_segment(path)
    assert len(found) >= 25, "\n".join(found)
    for fragment in ("readable or writable by others", "too short", "unknown key", "not an IP"):
        assert any(fragment in m for m in found), fragment
    for message in [*found, str(err.value), repr(err.value)]:
        assert SECRET not in message and SECRET[:5] not in message
