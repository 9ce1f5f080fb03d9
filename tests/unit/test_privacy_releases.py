"""The Gaussian mechanisms of preprocessing: known answers recorded from seeded keystreams, the
properties of bounds and partition selection, and the privacy package's floor."""

import ast
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securetrain.crypto.keystream import make_keystream
from securetrain.data import from_table
from securetrain.data.preprocess import fit_preprocessor
from securetrain.errors import ConfigError
from securetrain.privacy import GaussianEvent
from securetrain.privacy.releases import (
    Release,
    combined_event,
    dp_bounds,
    dp_kinds,
    dp_moments,
    dp_select,
    noisy_counts,
)

# Recorded from the seeded fit below before the mechanisms moved out of securetrain.data.
RECORDED_PREPROCESSOR = {
    "columns": [
        {
            "name": "x",
            "kind": "numeric",
            "kind_source": "dp",
            "lower": -4.0,
            "upper": 16.0,
            "transform": "linear",
            "center": 6.6848212409373575,
            "scale": 5.691337585178936,
            "bounds_source": "dp",
            "scaling_source": "dp",
        },
        {
            "name": "c",
            "kind": "categorical",
            "kind_source": "dp",
            "categories": ["u", "v", "w"],
            "categories_source": "dp",
        },
    ],
    "label": {"name": "y", "classes": ["p", "q"], "classes_source": "dp"},
    "image_shape": None,
    "dropped_identifier_columns": [],
    "dp": {
        "noise_multiplier": 0.5,
        "releases": ["counts", "column_kinds", "numeric_bounds", "category_selection", "moments"],
        "partition_selection_threshold": 4.458910737279501,
        "partition_selection_delta": 1e-06,
        "moments_skipped_reason": None,
    },
}


def test_a_seeded_fit_gives_the_recorded_preprocessor_and_counts() -> None:
    x: list[float | None] = [0.5 * i - 3.0 for i in range(40)]
    x[7] = None
    table = pa.table({"x": x, "c": ["u", "v", "w", "u"] * 10, "y": ["p", "q"] * 20})
    data = from_table(table, label="y", source="test", sha256="0" * 64)
    rng = make_keystream(11, stream="preprocessing")
    pre, events, n_train, n_test = fit_preprocessor(
        data, n_test=12, sigma=0.5, selection_delta=1e-6, rng=rng
    )
    assert pre.model_dump() == RECORDED_PREPROCESSOR
    assert events == [GaussianEvent(0.5, 5)]
    assert (n_train, n_test) == (40.764701808987446, 11.583100861803873)
    z = pre.transform(
        pa.table({"x": [-4.0, 0.0, 2.5, None, 30.0], "c": ["u", "w", None, "zz", "v"]})
    )
    assert z.tolist() == [
        [-1.8773831129074097, 1.0, 0.0, 0.0],
        [-1.1745606660842896, 0.0, 0.0, 1.0],
        [-0.7352966070175171, 0.0, 0.0, 0.0],
        [0.0, 0.0, 0.0, 0.0],
        [1.6367292404174805, 0.0, 1.0, 0.0],
    ]


def test_each_mechanism_gives_its_recorded_release_and_one_gaussian_event() -> None:
    rng = make_keystream(5)
    made = [
        noisy_counts(30, 10, 1.5, rng),
        dp_kinds({"a": 3, "b": 30}, 31.2, 1.5, rng),
        dp_bounds(
            {
                "a": np.array([1.0, 2.0, 3.0, np.nan] * 10),
                "b": np.array([-5.0, 0.0, 7.0, 9.0] * 10),
            },
            1.5,
            rng,
        ),
        dp_select({"a": ["k", "l", None, "k"] * 10}, 1.5, 1e-6, rng),
        dp_moments(np.array([[0.1, -0.5], [0.3, np.nan], [-0.2, 0.9]] * 10), 29.7, 1.5, rng),
    ]
    assert [r.name for r in made] == [
        "counts",
        "column_kinds",
        "numeric_bounds",
        "category_selection",
        "moments",
    ]
    assert all(r.event == GaussianEvent(1.5) for r in made)
    assert made[0].value == (31.004540563677015, 10.136028698447703)
    assert made[1].value == {"a": "numeric", "b": "categorical"}
    assert made[2].value == {"a": (2.0, 4.0), "b": (-8.0, 16.0)}
    assert made[3].value == ({"a": ["k", "l"]}, 8.130136463234347)
    mean, sd = made[4].value
    assert mean.tolist() == [0.08126224315937162, 0.24586011540864364]
    assert sd.tolist() == [0.05, 0.5569027624618827]
    assert combined_event(made) == GaussianEvent(1.5, 5)


def test_releases_at_different_noise_multipliers_are_not_combined() -> None:
    made = [
        Release("counts", (1.0, 0.0), GaussianEvent(1.0)),
        Release("moments", 0, GaussianEvent(2.0)),
    ]
    with pytest.raises(ConfigError, match=r"one noise multiplier. Found \[1.0, 2.0\]"):
        combined_event(made)


@pytest.mark.parametrize(
    "release",
    [
        lambda rng: noisy_counts(10, 5, 1.0, rng),
        lambda rng: dp_kinds({"a": 1}, 10.0, 1.0, rng),
        lambda rng: dp_bounds({"a": np.ones(10)}, 1.0, rng),
        lambda rng: dp_select({"a": ["k"] * 10}, 1.0, 1e-6, rng),
        lambda rng: dp_moments(np.zeros((10, 1)), 10.0, 1.0, rng),
    ],
)
def test_every_mechanism_refuses_a_numpy_generator(release) -> None:
    with pytest.raises(ConfigError, match="make_keystream. Found Generator"):
        release(np.random.default_rng(0))


def test_dp_bounds_cover_the_bulk_and_clip_a_lone_outlier() -> None:
    rng = np.random.default_rng(0)
    x = np.r_[rng.uniform(3, 100, 5000), 1e9]
    lo, hi = dp_bounds({"x": x}, sigma=5.0, rng=make_keystream(0)).value["x"]
    assert lo <= 3 and hi >= 100  # the bulk is inside
    assert lo >= 2 and hi <= 128  # power-of-two bins, the outlier excluded


def test_dp_bounds_rarely_keep_an_empty_bin_far_from_the_data() -> None:
    """A noisy empty bin kept as a bound stretches the scale by orders of magnitude; the
    threshold keeps that to 1% per column (seeded draws, so the count is fixed)."""
    x = np.random.default_rng(0).uniform(17, 31, 5000)
    stretched = sum(
        dp_bounds({"x": x}, sigma=50.0, rng=make_keystream(seed)).value["x"] != (16.0, 32.0)
        for seed in range(300)
    )
    assert stretched <= 10  # 1% of 300 is 3; a three-standard-deviation threshold gives ~36


def test_dp_bounds_handle_negative_and_zero_values() -> None:
    rng = np.random.default_rng(1)
    x = np.r_[rng.uniform(-50, -1, 3000), np.zeros(3000)]
    lo, hi = dp_bounds({"x": x}, sigma=5.0, rng=make_keystream(0)).value["x"]
    assert -64 <= lo <= -50 and hi == 0.0


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), common=st.integers(800, 3000))
def test_partition_selection_never_releases_a_rare_value(seed: int, common: int) -> None:
    values = ["a"] * common + ["b"] * common + ["rare-one"] + ["rare-two"] * 3
    selected, threshold = dp_select(
        {"c": values}, sigma=40.0, delta=1e-6, rng=make_keystream(seed)
    ).value
    assert "rare-one" not in selected["c"] and "rare-two" not in selected["c"]
    assert threshold > 40 * 4  # at least four noise standard deviations above one row
    if common > threshold + 6 * 40:
        assert selected["c"] == ["a", "b"]


def test_the_privacy_package_imports_no_torch_and_of_securetrain_only_its_floor() -> None:
    """Pure math and numpy noise: no torch; of the project, only errors and the keystream."""
    imported = set()
    for path in (Path(__file__).parents[2] / "src" / "securetrain" / "privacy").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    assert "dp_accounting" in imported and not [m for m in imported if m.split(".")[0] == "torch"]
    project = {m for m in imported if m.startswith("securetrain.")}
    assert {m for m in project if not m.startswith("securetrain.privacy")} == {
        "securetrain.errors",
        "securetrain.crypto.keystream",
    }
