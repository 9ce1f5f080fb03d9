"""The audit key set: the ECDSA P-256 key that signs a store's audit heads, held outside the
database, and the last head it signed per store, recorded in the key set.

A :class:`Store` holds its :class:`AuditKey` and the :class:`AuditSigner` loaded from it; nothing
here keeps a key in module state.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from securetrain.crypto.keys import KeySetPaths, fingerprint, generate_keyset, load_private_key
from securetrain.errors import ConfigError, DataError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

AUDIT_KEY_ENV = "SECURETRAIN_AUDIT_KEY"
AUDIT_PASSPHRASE_ENV = "SECURETRAIN_AUDIT_PASSPHRASE"
HEAD_FORMAT = "securetrain.audit_head/v1"
HEADS_DIR = "audit-heads"


def default_audit_key_dir() -> Path:
    """The local stores' audit key set: under the user's configuration directory, apart from
    the database under SECURETRAIN_HOME."""
    config = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config) / "securetrain" / "audit-key"


@dataclass(frozen=True)
class AuditKey:
    """The key set whose signing key signs a store's audit heads, and its passphrase."""

    root: Path
    passphrase: str | None = None

    @classmethod
    def from_environment(cls) -> AuditKey:
        """SECURETRAIN_AUDIT_KEY (else :func:`default_audit_key_dir`), with the passphrase in
        SECURETRAIN_AUDIT_PASSPHRASE when one is set."""
        root = os.environ.get(AUDIT_KEY_ENV)
        passphrase = os.environ.get(AUDIT_PASSPHRASE_ENV) or None
        return cls(Path(root) if root else default_audit_key_dir(), passphrase)

    @property
    def public_key(self) -> Path:
        return KeySetPaths(self.root).public_key

    def head_file(self, store_name: str) -> Path:
        """Where the key set records the last head it signed for the store ``store_name``."""
        digest = hashlib.sha256(store_name.encode()).hexdigest()[:32]
        return self.root / HEADS_DIR / f"{digest}.json"


@dataclass(frozen=True)
class AuditSigner:
    """An audit key set's signing key, loaded."""

    key: AuditKey
    private_key: ec.EllipticCurvePrivateKey
    fingerprint: str


def load_signer(key: AuditKey, database_dir: Path | None) -> AuditSigner:
    """The signing key of ``key``; a missing key set is created, but never in (or under) the
    directory ``database_dir`` of the SQLite database it protects."""
    paths = KeySetPaths(key.root)
    if not paths.signing_key.exists():
        if database_dir is not None and key.root.resolve().is_relative_to(database_dir):
            raise ConfigError(
                f"Refusing to create the audit key in the database's directory "
                f"{str(database_dir)!r} (found {str(key.root)!r}); set {AUDIT_KEY_ENV} or "
                "--audit-key to a directory elsewhere."
            )
        generate_keyset(key.root, key.passphrase)
    private = load_private_key(paths.signing_key, key.passphrase)
    heads = key.root / HEADS_DIR
    try:
        heads.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"Cannot write signed heads into {str(heads)!r}: {exc}") from None
    return AuditSigner(key, private, fingerprint(private.public_key()))


def head_document(
    store_name: str, seq: int, head: str, signature: str, signer: str, created_at: str
) -> dict[str, Any]:
    return {
        "format": HEAD_FORMAT,
        "store": store_name,
        "seq": seq,
        "entry_hash": head,
        "signature": signature,
        "signer": signer,
        "created_at": created_at,
    }


def read_head(path: Path) -> dict[str, Any] | None:
    """A signed head document, or None where ``path`` does not exist."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("format") != HEAD_FORMAT:
            raise ValueError
        return {
            **doc,
            "seq": int(doc["seq"]),
            "entry_hash": str(doc["entry_hash"]),
            "signature": str(doc["signature"]),
        }
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise DataError(f"Not a securetrain signed audit head: {str(path)!r}.") from None


def record_head(path: Path, doc: dict[str, Any]) -> None:
    """Keep ``doc`` as the store's head in the key set unless a later head is already there
    (several processes may write one store)."""
    try:
        lock = os.open(path.with_suffix(".lock"), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = read_head(path)
            if current is None or current["seq"] < doc["seq"]:
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
                os.replace(tmp, path)
        finally:
            os.close(lock)
    except OSError as exc:
        raise ConfigError(f"Cannot record the signed audit head in {str(path)!r}: {exc}") from None
