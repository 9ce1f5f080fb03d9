"""What a run trains on, parsed once: a built-in dataset, a CSV/Parquet file, or a sealed dataset.

:func:`parse_source` is the one place that reads the ``data`` setting's text; everything after
it takes the typed value."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from securetrain.data.builtin import PREFIX, builtin_loader
from securetrain.errors import DataError
from securetrain.sealed import HEADER, is_sealed


@dataclass(frozen=True)
class BuiltinSource:
    """``builtin:NAME`` (or ``builtin:synthetic-fraud?seed=N``), its name checked."""

    spec: str

    def __str__(self) -> str:
        return self.spec


@dataclass(frozen=True)
class FileSource:
    """A CSV or Parquet file that exists (its content is checked when it is loaded)."""

    path: Path

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class SealedSource:
    """A sealed dataset directory (verified before anything reads its rows)."""

    path: Path

    def __str__(self) -> str:
        return str(self.path)


Source = BuiltinSource | FileSource | SealedSource


def parse_source(text: str) -> Source:
    """The source that ``text`` names; a one-line :class:`DataError` for an empty text, an
    unknown built-in dataset or a path that does not exist."""
    if not text:
        raise DataError(
            "Name the data to train on (`data`): builtin:NAME, a CSV/Parquet file, or D.sealed. "
            "Found ''."
        )
    if text.startswith(PREFIX):
        builtin_loader(text)
        return BuiltinSource(text)
    path = Path(text)
    if is_sealed(path):
        return SealedSource(path)
    if not path.exists():
        raise DataError(f"Data file not found: {text!r}.")
    if path.is_dir():
        raise DataError(f"Not a data file, nor a sealed dataset (no {HEADER}): {text!r}.")
    return FileSource(path)


def parse_sealed(text: str) -> SealedSource:
    """The sealed dataset that ``text`` names; :class:`DataError` for anything else."""
    source = parse_source(text)
    if not isinstance(source, SealedSource):
        raise DataError(f"Not a sealed dataset (no {HEADER}): {text!r}.")
    return source
