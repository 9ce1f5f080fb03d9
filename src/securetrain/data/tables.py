"""Load user tables (CSV or Parquet) with pyarrow, with one-line errors for bad input."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from securetrain.errors import DataError

_PARQUET_MAGIC = b"PAR1"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _looks_binary(head: bytes) -> bool:
    return b"\x00" in head


def load_table(path: str | Path) -> pa.Table:
    """Read a CSV or Parquet file into an Arrow table.

    Parquet is recognised by its magic bytes, CSV by being text; anything else is refused. A
    CSV's null markers (empty, ``NA``, ``null``, ...) are missing values in every column, so
    whether a value is missing does not depend on the type that the other values give the
    column (see :mod:`securetrain.data.values`).
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"Data file not found: {str(p)!r}.")
    if not p.is_file():
        raise DataError(f"Data path is not a file: {str(p)!r}.")
    with p.open("rb") as f:
        head = f.read(4096)
    if not head:
        raise DataError(f"Data file is empty: {str(p)!r}.")
    try:
        if head[:4] == _PARQUET_MAGIC:
            table = pq.read_table(p)
        elif _looks_binary(head):
            raise DataError(f"Data file is neither CSV nor Parquet: {str(p)!r}.")
        else:
            table = pacsv.read_csv(
                p, convert_options=pacsv.ConvertOptions(strings_can_be_null=True)
            )
    except DataError:
        raise
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"Could not read {str(p)!r} as a table: {first}") from None
    if table.num_rows == 0:
        raise DataError(f"Data file has no rows: {str(p)!r}.")
    if table.num_columns < 2:
        raise DataError(
            f"Data file needs a label column and at least one feature; found "
            f"{table.num_columns} column(s) in {str(p)!r}."
        )
    return table
