"""The segment configuration.

Pure:    `model` (the frozen values every other package receives explicitly).
Adapter: `load` (the entry: reads the TOML file and the secret files, checks the values
         against themselves, and reports every problem as `FILE: key.path: what`), built
         from `read` (the typed TOML reader), `sections` (one reader per table) and
         `checks` (the checks across sections, and of the secret files).

This package re-exports nothing, so importing the pure model never loads the loader.
"""
