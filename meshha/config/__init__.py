"""The segment configuration.

Pure:    `model` (the frozen values every other package receives explicitly).
Adapter: `load` (reads the TOML file and the secret files, checks the values against
         themselves, and reports every problem as `FILE: key.path: what`).

This package re-exports nothing, so importing the pure model never loads the loader.
"""
