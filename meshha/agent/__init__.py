"""The per-host daemon.

Pure:     none. `node` holds one host's agent logic over ports (the same code runs in the
          daemon and in the simulator), so it is IO-free but not clock-free.
Adapters: `main` (the trio entry point and wiring), `udp` (probe datagrams), `control`
          (the local control socket), `service` (the answers given on it).
"""
