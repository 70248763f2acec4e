"""Failure detectors.

Pure:     `swim` (peer probing as a state machine), `wire` (the authenticated datagram
          format: encode, verify, replay window).
Adapters: `libvirt_events` (VM lifecycle/IO/watchdog events, the libvirtd liveness probe,
          the self-fence), `processes` (nova-compute/libvirtd checks and restarts).
"""
