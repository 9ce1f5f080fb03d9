"""Which columns are features comes from the declared schema and --features, never from the
values: no row can add or remove a feature."""

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securetrain.data import Schema, from_table
from securetrain.errors import DataError

DECLARED = Schema.from_json({"columns": {"id": {"identifier": True}}})


def _features(table: pa.Table, schema: Schema | None = None) -> list[str]:
    return from_table(table, label="y", source="t", sha256="", schema=schema).features.column_names


def test_one_row_at_the_old_distinctness_cut_does_not_change_the_features() -> None:
    """Twenty rows, 18 distinct codes (an exact 90% rule dropped the column) or 17 (kept)."""
    codes = [f"c{i}" for i in range(18)] + ["c0", "c1"]
    table = pa.table({"code": codes, "x": np.arange(20.0), "y": ["p", "q"] * 10})
    changed = table.set_column(0, "code", pa.array(codes[:2] + ["c3"] + codes[3:]))
    assert pa.compute.count_distinct(changed.column("code")).as_py() == 17
    assert _features(table) == _features(changed) == ["code", "x"]


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.text(alphabet="abcdef", min_size=1, max_size=3), min_size=20, max_size=60),
    row=st.integers(0, 59),
    new=st.text(alphabet="abcdefgh", min_size=1, max_size=4),
)
def test_no_single_row_changes_the_feature_set(values: list[str], row: int, new: str) -> None:
    n = len(values)
    base = {"id": values, "free": list(reversed(values)), "x": np.arange(float(n))}
    table = pa.table({**base, "y": ["p", "q"] * (n // 2) + ["p"] * (n % 2)})
    edited = list(values)
    edited[row % n] = new
    other = table.set_column(0, "id", pa.array(edited))
    for schema in (None, DECLARED):
        assert _features(table, schema) == _features(other, schema)
        assert _features(table.slice(1), schema) == _features(table, schema)


def test_declared_identifiers_are_dropped_unless_kept_or_named() -> None:
    table = pa.table({"id": ["a", "a", "b"], "x": [1.0, 2.0, 3.0], "y": ["p", "q", "p"]})
    data = from_table(table, label="y", source="t", sha256="", schema=DECLARED)
    assert data.features.column_names == ["x"] and data.dropped_identifiers == ["id"]
    kept = from_table(
        table, label="y", source="t", sha256="", schema=DECLARED, keep_identifiers=True
    )
    assert kept.features.column_names == ["id", "x"] and kept.dropped_identifiers == []
    named = from_table(table, label="y", source="t", sha256="", schema=DECLARED, features=["id"])
    assert named.features.column_names == ["id"]


def test_an_identifier_declaration_round_trips_and_is_checked() -> None:
    assert Schema.from_json(DECLARED.to_json()) == DECLARED
    with pytest.raises(DataError, match=r"'id'.*Found \{'identifier': 'yes'\}"):
        Schema.from_json({"columns": {"id": {"identifier": "yes"}}})
    with pytest.raises(DataError, match="nothing else"):
        Schema.from_json({"columns": {"id": {"identifier": True, "bounds": [0, 1]}}})
