"""The event history: every committed log entry in SQLite, keyed by Raft index, and what
is computed from it.

Pure:     `report` (the SLA / health report over entries: outages, availability, MTTR per
          failure class, fences, windows, failed recoveries).
Adapters: `store` (the SQLite file through sqlite-utils: append, query, pages, export),
          `sink` (the agent's writer and reader: every SQLite call in a worker thread
          under the ledger's own limiter), `export` (CSV/JSON pages with ISO times),
          `render` (the report as text, JSON, and HTML with an SVG timeline).

This package re-exports nothing, so importing the pure report never loads SQLite.
"""
