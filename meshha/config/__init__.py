"""The segment configuration.

Pure:    `model` (the frozen values every other package receives explicitly, and
         `self_fence_provable`), `synthetic` (generated segments for the simulator and
         the pure tests).
Adapter: `load` (the entry: reads the TOML file and the secret files, checks the values
         against themselves, and reports every problem as `FILE: key.path: what`), built
         from `read` (the typed TOML reader), `sections` (one reader per table),
         `fencing` (the [hypervisor] and [watchdog] tables and the deadline-proof checks)
         and `checks` (the other checks across sections, and of the secret files);
         `bootstrap` (`meshctl config init`: a segment file from Nova).

This package re-exports nothing, so importing the pure model never loads the loader.
"""
