"""Intent keys: one record, one text form. Every kind of key the deciders build formats
to the id schema 1 wrote and parses back to itself; anything else does not parse."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshha.raft import intent_key as K
from meshha.raft.intent_key import IntentKey

EXAMPLES = {
    "fence:host2:e1:a1": K.host_step("fence", "host2", 1).at(1),
    "disable:host2:e3:a2": K.host_step("disable", "host2", 3).at(2),
    "enable:host2:e1:a1": K.host_step("enable", "host2", 1).at(1),
    "disable:host2:nova-compute:1700000123:a1": K.process_disable(
        "host2", "nova-compute", 1700000.123
    ).at(1),
    "inventory:host2:e1:evacuate:a1": K.inventory("host2", 1, "evacuate").at(1),
    "evacuate:host2:e1:vm-a:a2": K.vm_move("evacuate", "host2", 1, "vm-a").at(2),
    "live_migrate:host2:e1:vm-a:a1": K.vm_move("live_migrate", "host2", 1, "vm-a").at(1),
    "restart_vm:vm-a:1000500:a1": K.vm_failure("restart_vm", "vm-a", 1000.5).at(1),
    "hard_reboot:vm-a:1000500:a1": K.vm_failure("hard_reboot", "vm-a", 1000.5).at(1),
    "migrate_vm:vm-a:1000500:a3": K.vm_failure("migrate_vm", "vm-a", 1000.5).at(3),
    "alert:brake:2:a1": K.alert("brake", count=2).at(1),
    "alert:process-brake:4:1700000:a1": K.alert("process-brake", count=4, failure_ms=1700000).at(1),
    "alert:process:host2:libvirtd:1700000:a1": K.alert(
        "process", host="host2", process="libvirtd", failure_ms=1700000
    ).at(1),
    "alert:vm:vm-a:1700000:a1": K.alert("vm", vm="vm-a", failure_ms=1700000).at(1),
    **{
        f"alert:{t}:host2:e1:a1": K.alert(t, host="host2", episode=1).at(1)
        for t in ("fence-wait", "fence-failed", "unplaced", "recovered", "degraded")
    },
}


@pytest.mark.parametrize("text", sorted(EXAMPLES))
def test_every_kind_of_key_formats_to_the_schema_1_id_and_parses_back(text: str) -> None:
    key = EXAMPLES[text]
    assert key.format() == text == str(key)
    assert IntentKey.parse(text) == key
    assert IntentKey.parse(key.base.format()) == key.base
    assert key.base.attempt is None and key.base.at(key.attempt or 0) == key


@pytest.mark.parametrize(
    "text",
    [
        "",
        "x:a1",
        "alert:x:a1",
        "alert:n7:a1",
        "reboot_everything:host2:e1:a1",
        "fence:host2:a1",  # no episode
        "fence:host2:1:a1",  # episode without its `e`
        "fence:host2:e1:extra:a1",
        "evacuate:host2:e1",  # no VM
        "restart_vm:vm-a:soon:a1",
        "alert:brake:a1",
        "fence::e1:a1",
    ],
)
def test_anything_else_does_not_parse(text: str) -> None:
    with pytest.raises(ValueError, match="intent key"):
        IntentKey.parse(text)
    assert IntentKey.parse_or_none(text) is None


def test_a_name_with_a_colon_is_refused() -> None:
    with pytest.raises(AssertionError):
        K.vm_move("evacuate", "host2", 1, "vm:a")


names = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=12)


@st.composite
def keys(draw: st.DrawFn) -> IntentKey:
    host, vm, proc = draw(names), draw(names), draw(names)
    ep, n, t = draw(st.integers(0, 99)), draw(st.integers(1, 9)), draw(st.floats(0, 2e9))
    key = draw(
        st.sampled_from(
            [
                K.host_step("fence", host, ep),
                K.host_step("disable", host, ep),
                K.process_disable(host, proc, t),
                K.inventory(host, ep, draw(st.sampled_from(["evacuate", "live_migrate"]))),
                K.vm_move("evacuate", host, ep, vm),
                K.vm_failure("migrate_vm", vm, t),
                K.alert("process", host=host, process=proc, failure_ms=K.ms(t)),
                K.alert("vm", vm=vm, failure_ms=K.ms(t)),
                K.alert("unplaced", host=host, episode=ep),
                K.alert("process-brake", count=n, failure_ms=K.ms(t)),
            ]
        )
    )
    return key.at(n) if draw(st.booleans()) else key


@given(keys())
def test_parse_inverts_format(key: IntentKey) -> None:
    assert IntentKey.parse(key.format()) == key


def test_a_step_whose_vm_looks_like_an_attempt_still_parses() -> None:
    step = K.vm_move("evacuate", "host2", 1, "a3")
    assert IntentKey.parse(step.format()) == step
    assert IntentKey.parse(step.at(1).format()) == step.at(1)
