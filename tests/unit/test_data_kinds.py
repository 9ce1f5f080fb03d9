"""Column kinds come from the schema or from an accounted release, never from type inference."""

import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securetrain.crypto.keystream import make_keystream
from securetrain.data import Schema, from_table, load_table, planned_releases, split_mask
from securetrain.data.preprocess import fit_preprocessor
from securetrain.data.values import numbers, texts
from tests.helpers import write_csv

SCHEMA = Schema(
    bounds={"age": (0.0, 120.0)},
    categories={"smoker": ["no", "yes"]},
    classes=["healthy", "ill"],
)


def _table(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "age": rng.integers(18, 90, n),
            "smoker": rng.choice(["no", "yes"], n).tolist(),
            "y": rng.choice(["healthy", "ill"], n).tolist(),
        }
    )


def _read(table: pa.Table, schema: Schema = SCHEMA):
    """Through a CSV file, as a user's data arrives: Arrow infers each column's type."""
    with tempfile.TemporaryDirectory() as tmp:
        loaded = load_table(write_csv(table, Path(tmp) / "t.csv"))
    return from_table(loaded, label="y", source="t", sha256="0" * 64, schema=schema)


def _fit(data, seed: int = 0, sigma: float = 5.0):
    pre, events, *_ = fit_preprocessor(
        data, n_test=0, sigma=sigma, selection_delta=1e-6, rng=make_keystream(seed)
    )
    return pre, events


def _structure(pre) -> tuple:
    return (
        [(c.name, c.kind, c.kind_source) for c in pre.columns],
        pre.n_features,
        pre.input_columns,
        pre.dp.releases,
    )


def test_one_unknown_in_a_declared_numeric_column_changes_nothing_on_the_card() -> None:
    table = _table(300)
    ages = table.column("age").to_pylist()
    ages[7] = "unknown"
    spoiled = table.set_column(0, "age", pa.array([str(a) for a in ages]))
    clean, dirty = _read(table), _read(spoiled)
    assert dirty.features.schema.field("age").type == pa.string()  # what inference made of it
    a, b = _fit(clean, sigma=50.0)[0], _fit(dirty, sigma=50.0)[0]
    assert _structure(a) == _structure(b)
    assert [(c.name, c.kind) for c in b.columns] == [("age", "numeric"), ("smoker", "categorical")]
    assert b.n_features == 3 and b.dp.releases == ["counts"]
    # The unparseable value is a missing value: it encodes as the centre, like a null.
    x = b.transform(dirty.features)
    assert x[7, 0] == 0.0
    expected = np.delete(a.transform(clean.features), 7, axis=0)
    np.testing.assert_allclose(np.delete(x, 7, axis=0), expected)


def test_a_declared_column_of_distinct_integers_is_not_dropped_as_an_identifier() -> None:
    table = pa.table({"age": np.arange(100), "y": ["healthy", "ill"] * 50})
    assert _read(table).features.column_names == ["age"]


_CELL = st.one_of(
    st.integers(-1000, 1000),
    st.floats(-1e6, 1e6, allow_nan=False),
    st.sampled_from(["unknown", "n/a?", "7 kg", "true", "", "x"]),
)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    n=st.integers(20, 60),
    row=st.integers(0, 59),
    column=st.sampled_from(["age", "smoker", "free"]),
    cell=_CELL,
)
def test_changing_one_record_never_changes_the_kinds_of_declared_columns(
    seed: int, n: int, row: int, column: str, cell
) -> None:
    rng = np.random.default_rng(seed)
    table = _table(n, seed).append_column("free", pa.array(rng.normal(size=n)))
    changed = table.column(column).to_pylist()
    changed[row % n] = cell
    index = table.column_names.index(column)
    other = table.set_column(index, column, pa.array([str(v) for v in changed]))
    kinds = []
    for t in (table, other):
        pre, events = _fit(_read(t), seed)
        declared = [(c.name, c.kind, c.kind_source) for c in pre.columns if c.name != "free"]
        kinds.append((declared, sum(len(c.categories) for c in pre.columns if c.name == "smoker")))
        # every release is charged: the events count exactly the releases made
        assert events[0].count == len(pre.dp.releases)
        assert set(pre.dp.releases) <= set(planned_releases(_read(t)))
    declared = [("age", "numeric", "declared"), ("smoker", "categorical", "declared")]
    assert kinds[0] == kinds[1] == (declared, 2)


def test_undeclared_kinds_are_a_charged_release() -> None:
    rng = np.random.default_rng(5)
    n = 2000
    weights = rng.normal(70, 10, n).round(1).astype(object)
    weights[3] = "unknown"
    table = pa.table(
        {
            "weight": [str(w) for w in weights],
            "city": rng.choice(["north", "south"], n).tolist(),
            "y": rng.choice(["healthy", "ill"], n).tolist(),
        }
    )
    data = _read(table, Schema(classes=["healthy", "ill"]))
    planned = planned_releases(data)
    assert "column_kinds" in planned
    pre, events = _fit(data)
    assert "column_kinds" in pre.dp.releases and events[0].count == len(pre.dp.releases)
    assert set(pre.dp.releases) <= set(planned)
    cols = {c.name: c for c in pre.columns}
    assert (cols["weight"].kind, cols["weight"].kind_source) == ("numeric", "dp")
    assert (cols["city"].kind, cols["city"].kind_source) == ("categorical", "dp")
    declared = _read(table, Schema(bounds={"weight": (0.0, 200.0)}, categories={"city": ["x"]}))
    assert "column_kinds" not in planned_releases(declared)


def test_a_schema_cannot_make_a_column_both_numeric_and_categorical() -> None:
    from securetrain.errors import DataError

    with pytest.raises(DataError, match="either numeric or categorical"):
        Schema.from_json({"columns": {"a": {"bounds": [0, 1], "categories": ["x"]}}})


def test_values_read_the_same_whatever_the_column_type() -> None:
    typed = [pa.array([3, None, -2]), pa.array([3.0, None, -2.0]), pa.array(["3", None, " -2 "])]
    for values in typed:
        x, bad = numbers(values)
        np.testing.assert_array_equal(x, [3.0, np.nan, -2.0])
        assert bad == 0 and texts(values) == ["3", None, "-2"]
    x, bad = numbers(pa.array(["1.5", "unknown", "TRUE", "false", "1e999", None]))
    np.testing.assert_array_equal(x, [1.5, np.nan, 1.0, 0.0, np.nan, np.nan])
    assert bad == 2
    assert texts(pa.array([True, False])) == texts(pa.array(["True", "false"])) == ["true", "false"]


@settings(max_examples=30, deadline=None)
@given(
    xs=st.lists(st.integers(-50, 50), min_size=2, max_size=40),
    position=st.integers(0, 39),
)
def test_one_unparseable_record_moves_no_other_record_between_splits(xs, position) -> None:
    position = position % len(xs)
    ys = ["healthy", "ill"] * len(xs)
    base = pa.table({"age": xs, "y": ys[: len(xs)]})
    spoiled_x = [str(v) for v in xs]
    spoiled_x[position] = "unknown"
    spoiled = pa.table({"age": spoiled_x, "y": ys[: len(xs)]})
    a = split_mask(_read(base), seed="s")
    b = split_mask(_read(spoiled), seed="s")
    np.testing.assert_array_equal(np.delete(a, position), np.delete(b, position))
