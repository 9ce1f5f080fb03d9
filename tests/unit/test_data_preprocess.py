"""The preprocessing fitted from declared and DP statistics, the declared schema, and the
per-record split."""

import json

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securetrain.crypto.keystream import make_keystream
from securetrain.data import Schema, from_table, split_mask
from securetrain.data.preprocess import fit_preprocessor
from securetrain.errors import DataError


def _data(table: pa.Table, label: str = "y", schema: Schema | None = None):
    return from_table(table, label=label, source="test", sha256="0" * 64, schema=schema)


def test_declared_schema_spends_only_the_count_release_on_small_data() -> None:
    table = pa.table({"x": np.linspace(0, 10, 300), "y": ["p", "q"] * 150})
    schema = Schema(bounds={"x": (0.0, 10.0)}, classes=["p", "q"])
    pre, events, n_train, n_test = fit_preprocessor(
        _data(table, schema=schema),
        n_test=100,
        sigma=50.0,
        selection_delta=1e-6,
        rng=make_keystream(0),
    )
    assert pre.dp.releases == ["counts"] and events[0].count == 1
    assert pre.dp.moments_skipped_reason is not None
    col = pre.columns[0]
    assert (col.lower, col.upper, col.center, col.scale) == (0.0, 10.0, 5.0, 5.0)
    assert col.bounds_source == "declared" and col.scaling_source == "bounds"
    # Known answer: z = (clip(x, 0, 10) - 5) / 5.
    z = pre.transform(pa.table({"x": [-3.0, 0.0, 5.0, 7.5, 12.0, None]}))
    np.testing.assert_allclose(z[:, 0], [-1.0, -1.0, 0.0, 0.5, 1.0, 0.0])
    assert abs(n_train - 300) < 6 * 50 and abs(n_test - 100) < 6 * 50


def test_log_transform_known_answer() -> None:
    table = pa.table({"x": np.linspace(1, 100, 300), "y": ["p", "q"] * 150})
    schema = Schema(bounds={"x": (0.0, 100.0)}, classes=["p", "q"], transforms={"x": "log"})
    pre, *_ = fit_preprocessor(
        _data(table, schema=schema),
        n_test=0,
        sigma=50.0,
        selection_delta=1e-6,
        rng=make_keystream(0),
    )
    lo, hi = np.log(1.0), np.log(101.0)  # log(x + 1% of the range)
    z = pre.transform(pa.table({"x": [0.0, 9.0, 100.0]}))[:, 0]
    expected = (np.log(np.array([1.0, 10.0, 101.0])) - (lo + hi) / 2) / ((hi - lo) / 2)
    np.testing.assert_allclose(z, expected, rtol=1e-6)


def test_dp_moments_standardise_large_data() -> None:
    rng = np.random.default_rng(2)
    n = 40_000
    table = pa.table({"x": rng.normal(30, 4, n), "y": rng.choice(["p", "q"], n)})
    schema = Schema(bounds={"x": (0.0, 60.0)}, classes=["p", "q"])
    pre, events, *_ = fit_preprocessor(
        _data(table, schema=schema),
        n_test=0,
        sigma=20.0,
        selection_delta=1e-6,
        rng=make_keystream(2),
    )
    col = pre.columns[0]
    assert pre.dp.releases == ["counts", "moments"] and events[0].count == 2
    assert col.scaling_source == "dp"
    assert col.center == pytest.approx(30, abs=0.5)
    assert col.scale == pytest.approx(4, rel=0.2)


def test_one_hot_for_selected_categories_and_zeros_for_others() -> None:
    n = 6000
    table = pa.table({"c": (["u", "v", "w"] * (n // 3)), "y": ["p", "q"] * (n // 2)})
    pre, *_ = fit_preprocessor(
        _data(table), n_test=0, sigma=20.0, selection_delta=1e-6, rng=make_keystream(3)
    )
    col = pre.columns[0]
    assert col.categories == ["u", "v", "w"] and col.categories_source == "dp"
    assert pre.label.classes == ["p", "q"] and pre.label.classes_source == "dp"
    x = pre.transform(pa.table({"c": ["v", "never-seen", None]}))
    np.testing.assert_array_equal(x, [[0, 1, 0], [0, 0, 0], [0, 0, 0]])


def test_too_few_rows_for_dp_classes_asks_for_a_declaration() -> None:
    table = pa.table({"x": np.arange(40.0), "y": ["p", "q"] * 20})
    with pytest.raises(DataError, match=r"declare them in `classes` \(A,B\) or in a schema file"):
        fit_preprocessor(
            _data(table), n_test=0, sigma=50.0, selection_delta=1e-6, rng=make_keystream(0)
        )


def test_declared_identifier_columns_are_dropped_unless_kept() -> None:
    table = pa.table(
        {"id": [f"row{i}" for i in range(100)], "x": np.arange(100.0), "y": [0, 1] * 50}
    )
    assert _data(table).features.column_names == ["id", "x"]
    schema = Schema.from_json({"columns": {"id": {"identifier": True}}})
    assert _data(table, schema=schema).features.column_names == ["x"]
    kept = from_table(table, label="y", source="t", sha256="", schema=schema, keep_identifiers=True)
    assert kept.features.column_names == ["id", "x"]


@settings(max_examples=30, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.integers(-5, 5), st.sampled_from(["a", "b"])), min_size=1, max_size=60
    ),
    extra=st.tuples(st.integers(-5, 5), st.sampled_from(["a", "b"])),
    position=st.integers(0, 60),
)
def test_split_of_one_record_does_not_depend_on_the_others(rows, extra, position) -> None:
    def data(rs):
        return from_table(
            pa.table({"x": [r[0] for r in rs], "y": [r[1] for r in rs]}),
            label="y",
            source="t",
            sha256="",
            keep_identifiers=True,
        )

    position = min(position, len(rows))
    with_extra = rows[:position] + [extra] + rows[position:]
    a = split_mask(data(rows), seed="s")
    b = split_mask(data(with_extra), seed="s")
    np.testing.assert_array_equal(np.delete(b, position), a)


def test_split_fraction_is_stratified_in_expectation() -> None:
    n = 20_000
    rng = np.random.default_rng(4)
    y = rng.choice(["p", "q"], n, p=[0.9, 0.1])
    d = from_table(pa.table({"x": rng.normal(size=n), "y": y}), label="y", source="t", sha256="")
    mask = split_mask(d, seed="any")
    for cls in ("p", "q"):
        m = mask[y == cls]
        sd = np.sqrt(0.3 * 0.7 / len(m))
        assert abs(m.mean() - 0.3) < 5 * sd  # false-failure rate below 1e-6 per class


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({"columns": {"a": {"bounds": [1]}}}, "bounds of 'a' must be"),
        ({"columns": {"a": {"categories": []}}}, "categories of 'a' must be a non-empty list"),
        ({"columns": {"a": {"transform": "sqrt"}}}, "transform of 'a' must be 'linear' or 'log'"),
        ({"classes": ["only"]}, "classes must list at least two labels"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_schema_errors_name_the_problem(tmp_path, schema, message) -> None:
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    with pytest.raises(DataError, match=message):
        Schema.load(path)


def test_bounds_scaling_is_the_center_and_half_width_after_the_transform() -> None:
    from securetrain.data.preprocess import _bounds_scaling

    out = _bounds_scaling({"a": (-2.0, 6.0), "b": (0.0, 10.0)}, {"a": "linear", "b": "log"})
    assert out["a"] == (2.0, 4.0)
    lo, hi = np.log(0.1), np.log(10.1)  # log(x + 1% of the range)
    assert out["b"] == pytest.approx(((lo + hi) / 2, (hi - lo) / 2), rel=1e-12)
