"""Reading a column's values as numbers or as text, the same way whatever Arrow type it has.

Type inference is a function of the whole column: one ``unknown`` makes a CSV column of numbers
a column of strings. Everything downstream (column kinds, the split, DP counts) must depend on
each record alone, so each value is read by itself: ``"3"``, ``3`` and ``3.0`` are the number 3
and the text ``"3"``; ``true``/``false`` (any case) are 1 and 0; a value that is not a finite
number is missing as a number, never an error.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from securetrain.data.dataset import is_numeric

_NUMBER = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$"
_NUMBER_RE = re.compile(_NUMBER, re.ASCII)
_BOOLEANS = {"true": 1.0, "false": 0.0}


def numbers(values: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, int]:
    """The values as float64 (NaN where missing or not a finite number), and how many present
    values are not numbers."""
    if is_numeric(values.type):
        x = np.array(pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False), np.float64)
    else:
        text = pa.array([None if v is None else str(v) for v in values.to_pylist()], pa.string())
        lower = pc.ascii_lower(pc.utf8_trim_whitespace(text))
        is_bool = pc.is_in(lower, value_set=pa.array(list(_BOOLEANS)))
        is_number = pc.match_substring_regex(text, _NUMBER)
        parsed = pc.cast(
            pc.if_else(is_number, pc.utf8_trim_whitespace(text), pa.scalar(None, pa.string())),
            pa.float64(),
        )
        flags = pc.if_else(pc.equal(lower, "true"), 1.0, 0.0)
        x = np.array(pc.if_else(is_bool, flags, parsed).to_numpy(zero_copy_only=False), np.float64)
    present = ~np.asarray(pc.is_null(values).to_numpy(zero_copy_only=False), dtype=bool)
    bad = int(np.sum(present & ~np.isfinite(x)))
    x[~np.isfinite(x)] = np.nan
    return x, bad


def text(value: Any) -> str | None:
    """One value as text: numbers in one canonical form (integers without a decimal point),
    booleans as ``true``/``false``, anything else as written."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _number_text(value)
    s = str(value)
    stripped = s.strip()
    if stripped.lower() in _BOOLEANS:
        return stripped.lower()
    if _NUMBER_RE.match(s):
        return _number_text(float(stripped))
    return s


def _number_text(x: float) -> str:
    if math.isfinite(x) and x.is_integer() and abs(x) < 2**53:
        return str(int(x))
    return repr(x)


def texts(values: pa.ChunkedArray | pa.Array) -> list[str | None]:
    """Every value as :func:`text`."""
    return [text(v) for v in values.to_pylist()]
