"""NovaDriver against real Nova (nova 34 in a box, meshha/lab/nova_box.py).

What it proves: the driver does what meshha's recovery needs from Nova, as Nova really
behaves: force-down + disable of a dead host, evacuation of all its servers onto reserved
capacity (ending ACTIVE on the target with no task state, through 2.95's SHUTOFF), the
refusal to evacuate from a host still up, the policy inputs (metadata, flavor extra
specs, aggregates, AZ), an API outage in the middle of an evacuation (unreachable, then a
retry that finishes it without a second evacuation), power actions, live and cold
migration, re-enabling a host once its nova-compute has restarted, and its deadlines.
"""

from __future__ import annotations

import uuid

import pytest
import trio

from meshha.errors import NovaError
from meshha.lab.nova_client import NovaBox
from meshha.recovery.nova import NovaDriver
from tests.conftest_nova import action_names, boot, nova_box, nova_conn, wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::openstack.warnings._RemovedInSDKWarning"),
]
__all__ = ["nova_box", "nova_conn"]  # fixtures, imported for pytest


@pytest.fixture
def driver(nova_box: NovaBox) -> NovaDriver:
    return NovaDriver(nova_box.connect, timeout_s=60.0, poll_interval_s=0.1)


def _facts_by_host(facts):
    return {f.host: f for f in facts}


async def test_host_failure_evacuates_every_server_to_the_reserved_host(
    nova_box: NovaBox, nova_conn, driver: NovaDriver
) -> None:
    ids = await boot(nova_conn, [f"hf-{i}" for i in range(10)], "host1", metadata={"ha": "on"})
    assert {s.id for s in await driver.list_servers("host1")} == set(ids)

    # The host dies (its nova-compute stops for real) and is fenced: force down + disable.
    await trio.to_thread.run_sync(nova_box.stop_compute, "host1")
    await driver.force_down("host1", "meshha: host1 fenced by bmc")
    await driver.force_down("host1", "meshha: host1 fenced by bmc")  # idempotent
    before = _facts_by_host(await driver.host_facts(["host1", "host2"]))
    assert before["host1"].forced_down and not before["host1"].service_enabled
    assert not before["host1"].service_up
    assert before["host1"].running_vms == 10
    assert before["host2"].vcpus_free == 16 and before["host2"].ram_mb_free == 16384

    limiter = trio.CapacityLimiter(10)
    moved = {}

    async def evacuate(server_id: str) -> None:
        async with limiter:
            moved[server_id] = await driver.evacuate(server_id, "host2")

    async with trio.open_nursery() as nursery:
        for server_id in ids:
            nursery.start_soon(evacuate, server_id)

    for server_id in ids:
        s = moved[server_id]
        assert (s.host, s.status, s.task_state) == ("host2", "ACTIVE", None), s
        assert action_names(nova_conn, server_id).count("evacuate") == 1
    assert await driver.list_servers("host1") == []
    on_host2 = await driver.list_servers("host2")
    assert {s.id for s in on_host2} >= set(ids)
    assert all(s.status == "ACTIVE" and s.task_state is None for s in on_host2)
    # Idempotent: evacuating a server already on the target changes nothing.
    again = await driver.evacuate(ids[0], "host2")
    assert (again.host, again.status) == ("host2", "ACTIVE")
    assert action_names(nova_conn, ids[0]).count("evacuate") == 1
    after = _facts_by_host(await driver.host_facts(["host2"]))
    assert after["host2"].vcpus_free == 6 and after["host2"].running_vms >= 10

    # Nova refuses to un-force host1 until its nova-compute has restarted.
    with pytest.raises(NovaError) as refused:
        await driver.enable_service("host1")
    assert refused.value.kind in ("refused", "conflict")
    await trio.to_thread.run_sync(nova_box.start_compute, "host1")
    await driver.enable_service("host1")
    facts = _facts_by_host(await driver.host_facts(["host1"]))["host1"]
    assert not facts.forced_down and facts.service_enabled
    assert facts.running_vms == 0 and facts.vcpus_free == 16  # the restart cleaned up


async def test_evacuate_refused_while_the_source_service_is_up(nova_conn, driver) -> None:
    (server_id,) = await boot(nova_conn, ["up-1"], "host4")
    with pytest.raises(NovaError) as e:
        await driver.evacuate(server_id, "host2")
    assert e.value.kind in ("conflict", "refused")
    s = await driver.get_server(server_id)
    assert (s.host, s.status, s.task_state) == ("host4", "ACTIVE", None)
    assert "evacuate" not in action_names(nova_conn, server_id)


async def test_policy_inputs_metadata_flavor_extra_specs_aggregates_and_az(
    nova_conn, driver
) -> None:
    flavor_name = f"ha-gold-{uuid.uuid4().hex[:6]}"

    def setup():
        flavor = nova_conn.compute.create_flavor(name=flavor_name, ram=256, vcpus=1, disk=1)
        nova_conn.compute.create_flavor_extra_specs(
            flavor, {"meshha:ha": "true", "meshha:priority": "high"}
        )
        agg = nova_conn.compute.create_aggregate(
            name=f"rack-a-{flavor_name}", availability_zone="az-a"
        )
        nova_conn.compute.add_host_to_aggregate(agg, "host6")
        return flavor

    # host6 is this test's own: the aggregate stays (Nova refuses to change the AZ of a
    # host with servers, so it could not be removed without deleting the server first).
    flavor = await trio.to_thread.run_sync(setup)
    (server_id,) = await boot(
        nova_conn,
        ["policy-1"],
        "host6",
        flavor_id=flavor.id,
        metadata={"HA_Enabled": "True", "meshha:priority": "low"},
    )
    s = await driver.get_server(server_id)
    assert dict(s.metadata) == {"HA_Enabled": "True", "meshha:priority": "low"}
    assert s.flavor.name == flavor_name
    assert (s.flavor.vcpus, s.flavor.ram_mb, s.flavor.disk_gb) == (1, 256, 1)
    assert dict(s.flavor.extra_specs) == {"meshha:ha": "true", "meshha:priority": "high"}
    assert s.availability_zone == "az-a"
    assert s.project_id == "admin"
    (facts,) = await driver.host_facts(["host6"])
    assert facts.availability_zone == "az-a"
    assert facts.aggregates == (f"rack-a-{flavor_name}",)
    (other,) = await driver.host_facts(["host2"])
    assert other.availability_zone == "nova" and other.aggregates == ()


async def test_outage_mid_evacuation_then_retry_evacuates_once(
    nova_box: NovaBox, nova_conn, driver
) -> None:
    (server_id,) = await boot(nova_conn, ["outage-1"], "host3")
    await trio.to_thread.run_sync(nova_box.stop_compute, "host3")
    await driver.force_down("host3", "meshha: host3 fenced")
    # The API goes away right after it accepted the evacuation.
    await trio.to_thread.run_sync(
        lambda: nova_box.outage(
            "refuse",
            after_method="POST",
            after_path_suffix="/action",
            after_body_contains="evacuate",
        )
    )
    try:
        with pytest.raises(NovaError) as e:
            await driver.evacuate(server_id, "host2")
        assert e.value.kind == "unreachable"
        with pytest.raises(NovaError) as e:
            await driver.get_server(server_id)
        assert e.value.kind == "unreachable"
    finally:
        await trio.to_thread.run_sync(nova_box.heal)
    s = await driver.evacuate(server_id, "host2")  # the retry
    assert (s.host, s.status, s.task_state) == ("host2", "ACTIVE", None)
    assert action_names(nova_conn, server_id).count("evacuate") == 1

    # A 503 outage is unreachable too.
    await trio.to_thread.run_sync(lambda: nova_box.outage("503"))
    try:
        with pytest.raises(NovaError) as e:
            await driver.list_servers("host2")
        assert e.value.kind == "unreachable"
    finally:
        await trio.to_thread.run_sync(nova_box.heal)
    assert server_id in {s.id for s in await driver.list_servers("host2")}
    await trio.to_thread.run_sync(nova_box.start_compute, "host3")
    await driver.enable_service("host3")


async def test_stop_start_and_hard_reboot(nova_conn, driver) -> None:
    (server_id,) = await boot(nova_conn, ["power-1"], "host4")
    await driver.stop(server_id)
    assert (await driver.get_server(server_id)).status == "SHUTOFF"
    await driver.stop(server_id)  # already stopped: nothing to do
    await driver.start(server_id)
    assert (await driver.get_server(server_id)).status == "ACTIVE"
    await driver.hard_reboot(server_id)
    s = await driver.get_server(server_id)
    assert (s.status, s.task_state, s.host) == ("ACTIVE", None, "host4")
    assert action_names(nova_conn, server_id)[:3] == ["reboot", "start", "stop"]


async def test_evacuating_a_stopped_server_leaves_it_stopped(
    nova_box: NovaBox, nova_conn, driver
) -> None:
    ids = await boot(nova_conn, ["kept-off-1", "kept-on-1"], "host5")
    await driver.stop(ids[0])
    await trio.to_thread.run_sync(nova_box.stop_compute, "host5")
    await driver.force_down("host5", "meshha: host5 fenced")
    off = await driver.evacuate(ids[0], "host2")
    on = await driver.evacuate(ids[1], "host2")
    assert (off.host, off.status) == ("host2", "SHUTOFF")
    assert (on.host, on.status) == ("host2", "ACTIVE")
    await trio.to_thread.run_sync(nova_box.start_compute, "host5")
    await driver.enable_service("host5")


async def test_live_and_cold_migration(nova_conn, driver) -> None:
    (server_id,) = await boot(nova_conn, ["move-1"], "host4")
    s = await driver.live_migrate(server_id, "host2")
    assert (s.host, s.status, s.task_state) == ("host2", "ACTIVE", None)
    s = await driver.live_migrate(server_id, None)  # the scheduler picks
    assert s.host != "host2" and s.status == "ACTIVE"
    s = await driver.cold_migrate(server_id, "host4")
    assert (s.host, s.status, s.task_state) == ("host4", "ACTIVE", None)
    names = action_names(nova_conn, server_id)
    assert names[:4] == ["confirmResize", "migrate", "live-migration", "live-migration"]


async def test_missing_things_are_not_found(driver) -> None:
    with pytest.raises(NovaError) as e:
        await driver.get_server(str(uuid.uuid4()))
    assert e.value.kind == "not_found"
    with pytest.raises(NovaError) as e:
        await driver.force_down("no-such-host", "x")
    assert e.value.kind == "not_found"
    with pytest.raises(NovaError) as e:
        await driver.host_facts(["host2", "no-such-host"])
    assert e.value.kind == "not_found"


async def test_a_stuck_operation_times_out(nova_box: NovaBox, nova_conn) -> None:
    """host5's nova-compute is stopped but not yet seen down: Nova accepts the stop and it
    never finishes. The driver gives up at its deadline with kind=timeout."""
    (server_id,) = await boot(nova_conn, ["stuck-1"], "host5")
    await trio.to_thread.run_sync(nova_box.stop_compute, "host5")
    try:
        quick = NovaDriver(nova_box.connect, timeout_s=1.5, poll_interval_s=0.1)
        with pytest.raises(NovaError) as e:
            await quick.stop(server_id)
        assert e.value.kind == "timeout"
    finally:
        await trio.to_thread.run_sync(lambda: nova_box.start_compute("host5", keep_vms=True))

    def settled() -> bool:
        s = nova_conn.compute.get_server(server_id)
        return s.task_state is None

    # The restarted compute finds the half-done stop and clears the task state.
    await wait_for("stuck-1 settles", settled, timeout_s=30)


async def test_a_failed_evacuation_is_failed_and_can_be_redone(
    nova_box: NovaBox, nova_conn, driver
) -> None:
    """Nova cannot place the server on a disabled target: the migration record says so and
    the driver raises kind=failed at once (not at its deadline). A new target works."""
    (server_id,) = await boot(nova_conn, ["fail-1"], "host3")
    await trio.to_thread.run_sync(nova_box.stop_compute, "host3")
    await driver.force_down("host3", "meshha: host3 fenced")
    await driver.disable_service("host4", "meshha: maintenance")
    try:
        (facts,) = await driver.host_facts(["host4"])
        assert not facts.service_enabled and facts.service_up and not facts.forced_down
        with trio.fail_after(20):
            with pytest.raises(NovaError) as e:
                await driver.evacuate(server_id, "host4")
        assert e.value.kind == "failed"
    finally:
        await driver.enable_service("host4")
    s = await driver.get_server(server_id)
    assert s.host == "host3" and s.task_state is None
    s = await driver.evacuate(server_id, "host2")
    assert (s.host, s.status, s.task_state) == ("host2", "ACTIVE", None)
    assert action_names(nova_conn, server_id).count("evacuate") == 2
    await trio.to_thread.run_sync(nova_box.start_compute, "host3")
    await driver.enable_service("host3")
