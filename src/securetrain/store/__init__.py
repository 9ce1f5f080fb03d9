"""The store: datasets, budgets, runs, privacy charges and the audit log (SQLite or PostgreSQL)."""

from securetrain.store import ledger
from securetrain.store.audit import (
    CHECKPOINT_EVERY,
    Entry,
    append,
    checkpoint,
    current_actor,
    entries,
    export_checkpoint,
    record,
    verify_log,
)
from securetrain.store.engine import HOME_ENV, STORE_ENV, Store, securetrain_home, store_url

__all__ = [
    "CHECKPOINT_EVERY",
    "HOME_ENV",
    "STORE_ENV",
    "Entry",
    "Store",
    "append",
    "checkpoint",
    "current_actor",
    "entries",
    "export_checkpoint",
    "ledger",
    "record",
    "securetrain_home",
    "store_url",
    "verify_log",
]
