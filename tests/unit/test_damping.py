"""The observer's damper: a flapping (target, network) is reported reachable again only
once it stays so, and never while it is lost on every network."""

from __future__ import annotations

from meshha.recovery.damping import FLAP_WINDOW_S, HOLD_S, ObservationDamper


def test_a_first_loss_and_its_regain_are_reported_at_once() -> None:
    d = ObservationDamper()
    d.lost("h2", "admin", since=10.0)
    d.lost("h2", "admin", since=10.0)  # the same loss seen again counts once
    assert not d.hold_regain("h2", "admin", reachable_since=12.0, other_up=True, now=12.0)


def test_a_flapping_link_is_held_until_it_stays_up() -> None:
    d = ObservationDamper()
    d.lost("h2", "admin", since=10.0)
    d.lost("h2", "admin", since=14.0)
    assert d.hold_regain("h2", "admin", reachable_since=16.0, other_up=True, now=16.5)
    assert not d.hold_regain("h2", "admin", reachable_since=16.0, other_up=True, now=16 + HOLD_S)
    # ... and never when that would make the host look lost everywhere.
    assert not d.hold_regain("h2", "admin", reachable_since=16.0, other_up=False, now=16.5)
    # Old losses fall out of the window.
    later = 14.0 + FLAP_WINDOW_S + 1
    assert not d.hold_regain("h2", "admin", reachable_since=later, other_up=True, now=later)
