"""Event history in SQLite: every committed log entry, keyed by Raft index."""

from meshha.ledger.store import Ledger, LedgerError

__all__ = ["Ledger", "LedgerError"]
