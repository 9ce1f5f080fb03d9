"""Sealed datasets: envelope-encrypted AES-256-GCM chunks with a signed manifest.

The safe recipe: :func:`seal_table` writes one; :func:`verify_sealed` checks its signature and
returns a :class:`VerifiedSealed`; :func:`open_sealed` decrypts only that, in memory."""

from securetrain.sealed.container import (
    FORMAT,
    HEADER,
    SIGNATURE,
    Header,
    is_sealed,
    read_header,
    seal_dataset,
    seal_table,
)
from securetrain.sealed.reader import VerifiedSealed, check_key, open_sealed, verify_sealed

__all__ = [
    "FORMAT",
    "HEADER",
    "SIGNATURE",
    "Header",
    "VerifiedSealed",
    "check_key",
    "is_sealed",
    "open_sealed",
    "read_header",
    "seal_dataset",
    "seal_table",
    "verify_sealed",
]
