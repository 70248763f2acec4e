"""The event history in SQLite: every committed log entry, keyed by Raft index.

Adapters: `store` (the SQLite file through sqlite-utils: append, query, export), `sink`
          (the node's writer, which never loses an entry on a full or read-only disk).
"""

from meshha.ledger.store import Ledger, LedgerError

__all__ = ["Ledger", "LedgerError"]
