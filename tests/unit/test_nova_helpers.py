"""The pure parts of meshha.recovery.nova: error kinds, the "start it after evacuation?"
rule, placement arithmetic and the sdk-to-Server conversion."""

from __future__ import annotations

import errno
from types import SimpleNamespace
from typing import Any

import pytest
from keystoneauth1 import exceptions as ksa
from openstack import exceptions as sdk
from openstack.compute.v2.server import Server as SdkServer

from meshha.errors import NovaError
from meshha.recovery.nova import NovaDriver, _translate, free_amount, to_server, wants_running
from meshha.recovery.ports import Flavor

pytestmark = pytest.mark.filterwarnings("ignore::openstack.warnings._RemovedInSDKWarning")


class _Response:
    def __init__(self, status: int) -> None:
        self.status_code = status
        self.headers: dict[str, str] = {}
        self.reason = "x"
        self.text = ""
        self.url = "http://127.0.0.1/v2.1/x"

    def json(self) -> dict:
        return {}


def _http(status: int) -> sdk.HttpException:
    return sdk.HttpException(message="nova said", response=_Response(status))


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (ksa.ConnectFailure("refused"), "unreachable"),
        (ksa.ConnectTimeout("slow"), "unreachable"),
        (ksa.DiscoveryFailure("no version"), "unreachable"),
        (sdk.NotFoundException("gone"), "not_found"),
        (sdk.ConflictException("busy"), "conflict"),
        (_http(503), "unreachable"),
        (_http(502), "unreachable"),
        (_http(400), "refused"),
        (_http(403), "refused"),
        (_http(500), "failed"),
        (sdk.SDKException("odd"), "failed"),
        (OSError(errno.EMFILE, "Too many open files"), "unreachable"),
        (OSError(errno.EINVAL, "Invalid argument"), "unreachable"),
    ],
)
def test_sdk_errors_become_nova_error_kinds(error: Exception, kind: str) -> None:
    translated = _translate(error, "nova: test")
    assert isinstance(translated, NovaError)
    assert translated.kind == kind
    assert str(translated).startswith("nova: test: ")


class _BrokenCompute:
    """A compute proxy whose every call fails in this host's own libraries, as a
    keystoneauth retry's sleep did under libfaketime (stop 19)."""

    default_microversion: str | None = None

    def servers(self, **_: Any) -> list[Any]:
        raise OSError(errno.EINVAL, "Invalid argument")


async def test_an_os_error_in_a_nova_call_is_a_nova_error_not_a_crash() -> None:
    """An OSError out of the sdk used to be re-raised as a programmer error and stopped
    the agent (exit 2): on lan-fast its watchdog then reset the healthy host."""
    driver = NovaDriver(lambda: SimpleNamespace(compute=_BrokenCompute()), timeout_s=5.0)
    with pytest.raises(NovaError) as info:
        await driver.list_servers("host1")
    assert info.value.kind == "unreachable"
    assert "OSError" in str(info.value) and "Invalid argument" in str(info.value)


def test_programmer_errors_are_not_translated() -> None:
    with pytest.raises(TypeError):
        _translate(TypeError("bug"), "nova: test")


@pytest.mark.parametrize(
    ("actions", "running"),
    [
        (["create"], True),
        (["stop", "create"], False),
        (["start", "stop", "create"], True),
        (["reboot", "stop"], True),
        (["stop", "start", "create"], False),  # stopped after being started
        ([], True),
        (["migrate", "create"], True),  # moves say nothing about power
    ],
)
def test_wants_running_follows_the_newest_power_action(actions: list[str], running: bool) -> None:
    assert wants_running(actions) is running


def test_free_amount_applies_reserved_and_allocation_ratio() -> None:
    inventory = {"total": 16, "reserved": 2, "allocation_ratio": 4.0}
    assert free_amount(inventory, used=10) == 46
    assert free_amount({"total": 8, "reserved": 0, "allocation_ratio": 1.5}, used=0) == 12
    assert free_amount({"total": 4, "allocation_ratio": 1.0}, used=9) == 0
    assert free_amount(None, used=0) == 0


def test_to_server_keeps_what_policy_needs() -> None:
    raw = SdkServer.existing(
        id="s1",
        name="vm1",
        status="ACTIVE",
        project_id="p1",
        metadata={"HA_Enabled": "True"},
        flavor={
            "original_name": "m1.gold",
            "vcpus": 2,
            "ram": 1024,
            "disk": 10,
            "extra_specs": {"meshha:priority": "high"},
        },
        **{
            "OS-EXT-SRV-ATTR:host": "host1",
            "OS-EXT-STS:task_state": None,
            "OS-EXT-AZ:availability_zone": "az-a",
        },
    )
    s = to_server(raw)
    assert (s.id, s.name, s.host, s.status, s.task_state) == ("s1", "vm1", "host1", "ACTIVE", None)
    assert s.project_id == "p1" and s.availability_zone == "az-a"
    assert s.metadata == (("HA_Enabled", "True"),)
    assert s.flavor == Flavor("m1.gold", 2, 1024, 10, (("meshha:priority", "high"),))


def test_old_microversions_are_refused() -> None:
    with pytest.raises(ValueError, match=r"2\.53"):
        NovaDriver(lambda: None, microversion="2.53")
    assert NovaDriver(lambda: None, microversion="2.95").stops_evacuated is True
    # 2.94 on purpose: evacuated servers keep their vm_state (no SHUTOFF, no second call).
    assert NovaDriver(lambda: None).stops_evacuated is False


async def test_concurrent_nova_calls_raise_a_nova_error_not_a_group() -> None:
    from meshha.recovery.nova import side_by_side

    async def fails() -> None:
        raise NovaError("down", kind="unreachable", where="nova")

    async def bug() -> None:
        raise TypeError("a programmer error")

    async def run(*calls: Any) -> None:
        async with side_by_side() as nursery:
            for call in calls:
                nursery.start_soon(call)

    with pytest.raises(NovaError) as e:
        await run(fails, fails)
    assert e.value.kind == "unreachable"
    with pytest.raises(BaseExceptionGroup):
        await run(bug)
