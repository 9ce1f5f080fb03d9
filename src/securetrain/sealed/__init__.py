"""Sealed datasets: envelope-encrypted AES-256-GCM chunks with a signed manifest."""

from securetrain.sealed.container import (
    FORMAT,
    HEADER,
    SIGNATURE,
    Header,
    check_key,
    is_sealed,
    open_sealed,
    read_header,
    seal_dataset,
    seal_table,
    verify_sealed,
)

__all__ = [
    "FORMAT",
    "HEADER",
    "SIGNATURE",
    "Header",
    "check_key",
    "is_sealed",
    "open_sealed",
    "read_header",
    "seal_dataset",
    "seal_table",
    "verify_sealed",
]
