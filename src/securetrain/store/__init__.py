"""The store: datasets, budgets, runs, privacy charges and the audit log (SQLite or PostgreSQL)."""

from securetrain.store import ledger
from securetrain.store.auditkey import (
    AUDIT_KEY_ENV,
    AUDIT_PASSPHRASE_ENV,
    AuditKey,
    default_audit_key_dir,
)
from securetrain.store.auditlog import (
    Entry,
    append,
    current_actor,
    entries,
    record,
    signed_head,
    verify_log,
)
from securetrain.store.engine import HOME_ENV, STORE_ENV, Store, securetrain_home, store_url

__all__ = [
    "AUDIT_KEY_ENV",
    "AUDIT_PASSPHRASE_ENV",
    "HOME_ENV",
    "STORE_ENV",
    "AuditKey",
    "Entry",
    "Store",
    "append",
    "current_actor",
    "default_audit_key_dir",
    "entries",
    "ledger",
    "record",
    "securetrain_home",
    "signed_head",
    "store_url",
    "verify_log",
]
