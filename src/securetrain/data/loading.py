"""Resolve a data argument: ``builtin:NAME`` or a CSV/Parquet path."""

from __future__ import annotations

from pathlib import Path

from securetrain.data.builtin import PREFIX, load_builtin
from securetrain.data.dataset import Schema, TabularData, from_table
from securetrain.data.tables import file_sha256, load_table


def load_dataset(
    spec: str,
    *,
    label: str | None = None,
    features: list[str] | None = None,
    schema: Schema | None = None,
    keep_identifiers: bool = False,
) -> TabularData:
    """``builtin:NAME`` or a CSV/Parquet path, with its label column."""
    if spec.startswith(PREFIX):
        data = load_builtin(spec)
        if schema is not None:
            data.schema = schema
        return data
    return load_file(
        Path(spec), label=label, features=features, schema=schema, keep_identifiers=keep_identifiers
    )


def load_file(
    path: Path,
    *,
    label: str | None = None,
    features: list[str] | None = None,
    schema: Schema | None = None,
    keep_identifiers: bool = False,
) -> TabularData:
    """A CSV/Parquet file, with its label column."""
    return from_table(
        load_table(path),
        label=label,
        source=str(path),
        sha256=file_sha256(path),
        features=features,
        schema=schema,
        keep_identifiers=keep_identifiers,
    )
