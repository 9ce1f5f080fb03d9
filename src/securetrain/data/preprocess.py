"""Preprocessing whose every fitted statistic is either declared (public) or released with DP.

Fitted on the training split only, and stored in the model card so that prediction applies the
same transform. This module reads and shapes the table and fits the transform from what is
declared and what was released; every DP statistic (counts, undeclared column kinds, clipping
bounds, categories and classes, moments) is one Gaussian mechanism of
:mod:`securetrain.privacy.releases`, so no raw statistic of the private data leaves it. A
column's kind is never Arrow's type inference, which one record can change; a value that is not
a number is a missing value of a numeric column.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from securetrain.crypto.keystream import Keystream, check_keystream
from securetrain.data.dataset import TabularData, Transform
from securetrain.data.values import numbers, text, texts
from securetrain.errors import DataError
from securetrain.privacy import releases
from securetrain.privacy.events import GaussianEvent
from securetrain.privacy.releases import Release

Source = Literal["declared", "dp"]

LOG_OFFSET_FRACTION = 0.01


def forward(x: np.ndarray, lower: float, upper: float, transform: str) -> np.ndarray:
    """Clip to the bounds; for ``log`` (positive, right-skewed data), take log(x + c) with
    c = 1% of the range, shifted so that a negative lower bound maps above zero."""
    x = np.clip(x, lower, upper)
    if transform == "log":
        return np.log(x - min(lower, 0.0) + LOG_OFFSET_FRACTION * (upper - lower))
    return x


class NumericColumn(BaseModel):
    """``z = (forward(x) - center) / scale``; nulls and values that are not numbers become 0
    (the center)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    kind: Literal["numeric"] = "numeric"
    kind_source: Source
    lower: float
    upper: float
    transform: Literal["linear", "log"] = "linear"
    center: float
    scale: float
    bounds_source: Source
    scaling_source: Literal["dp", "bounds"]


class CategoricalColumn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    kind: Literal["categorical"] = "categorical"
    kind_source: Source
    categories: list[str]
    categories_source: Source


class LabelSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    classes: list[str]
    classes_source: Source


class DPStatistics(BaseModel):
    """How the DP statistics were released (all Gaussian, sensitivity normalised to 1)."""

    model_config = ConfigDict(extra="forbid")
    noise_multiplier: float
    releases: list[str]
    partition_selection_threshold: float | None
    partition_selection_delta: float
    moments_skipped_reason: str | None


class Preprocessor(BaseModel):
    """The fitted transform, as stored in the model card."""

    model_config = ConfigDict(extra="forbid")
    columns: list[NumericColumn | CategoricalColumn]
    label: LabelSpec
    image_shape: list[int] | None = None
    dropped_identifier_columns: list[str] = []
    dp: DPStatistics

    @property
    def n_features(self) -> int:
        return sum(1 if isinstance(c, NumericColumn) else len(c.categories) for c in self.columns)

    @property
    def input_columns(self) -> list[str]:
        return [c.name for c in self.columns]

    def transform(self, table: pa.Table) -> np.ndarray:
        """Encode a table's feature columns as a float32 matrix."""
        missing = [c for c in self.input_columns if c not in table.column_names]
        if missing:
            raise DataError(
                f"No column {missing[0]!r} in the data; the model needs: {', '.join(self.input_columns)}."
            )
        blocks = []
        for col in self.columns:
            values = table.column(col.name)
            if isinstance(col, NumericColumn):
                x = forward(numbers(values)[0], col.lower, col.upper, col.transform)
                z = (x - col.center) / col.scale
                z[np.isnan(z)] = 0.0
                blocks.append(z[:, None])
            else:
                strings = texts(values)
                index = {text(c): i for i, c in enumerate(col.categories)}
                onehot = np.zeros((len(strings), len(col.categories)))
                for row, s in enumerate(strings):
                    if s is not None and s in index:
                        onehot[row, index[s]] = 1.0
                blocks.append(onehot)
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def encode_labels(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Class indices, and a mask of the rows whose label is one of the known classes."""
        index = {c: i for i, c in enumerate(self.label.classes)}
        y = np.array([index.get(v, -1) for v in labels], dtype=np.int64)
        return y, y >= 0


def planned_releases(data: TabularData) -> list[str]:
    """The Gaussian releases :func:`fit_preprocessor` may make on this data (an upper bound:
    the moments release can be skipped), known from the schema alone, before any value."""
    schema = data.schema
    kinds = {n: schema.kind(n) for n in data.features.column_names}
    undeclared = [n for n, kind in kinds.items() if kind is None]
    planned = [releases.COUNTS, releases.MOMENTS]
    if undeclared:
        planned.append(releases.COLUMN_KINDS)
    if undeclared or any(k == "numeric" and n not in schema.bounds for n, k in kinds.items()):
        planned.append(releases.NUMERIC_BOUNDS)
    if undeclared or schema.classes is None:
        planned.append(releases.CATEGORY_SELECTION)
    return planned


Kinds = dict[str, tuple[str, Source]]
Bounds = dict[str, tuple[float, float]]
Arrays = dict[str, np.ndarray]
Made = list[Release[Any]]
Columns = list[NumericColumn | CategoricalColumn]


def _fit_kinds(
    train: TabularData, noisy_train: float, sigma: float, rng: Keystream, made: Made
) -> tuple[Kinds, Arrays, dict[str, list[str | None]]]:
    """Each column's kind and where it came from, the numeric columns' numbers and the
    categorical columns' texts; undeclared kinds are one DP release."""
    schema = train.schema
    names = train.features.column_names
    kinds: Kinds = {n: (kind, "declared") for n in names if (kind := schema.kind(n)) is not None}
    parsed = {n: numbers(train.features.column(n)) for n in names if n not in schema.categories}
    undeclared = {n: parsed[n][1] for n in names if n not in kinds}
    if undeclared:
        made.append(release := releases.dp_kinds(undeclared, noisy_train, sigma, rng))
        kinds.update((n, (kind, "dp")) for n, kind in release.value.items())
    numeric = {n: parsed[n][0] for n in names if kinds[n][0] == "numeric"}
    categorical = {n: texts(train.features.column(n)) for n in names if kinds[n][0] != "numeric"}
    return kinds, numeric, categorical


def _fit_bounds(
    train: TabularData, numeric: Arrays, sigma: float, rng: Keystream, made: Made
) -> Bounds:
    """Declared clipping bounds, and DP ones (one release) for the numeric columns without."""
    bounds = {n: train.schema.bounds[n] for n in numeric if n in train.schema.bounds}
    undeclared = {n: x for n, x in numeric.items() if n not in bounds}
    if undeclared:
        made.append(release := releases.dp_bounds(undeclared, sigma, rng))
        bounds.update(release.value)
    return bounds


def _fit_categories(
    train: TabularData,
    categorical: dict[str, list[str | None]],
    sigma: float,
    selection_delta: float,
    rng: Keystream,
    made: Made,
) -> tuple[dict[str, list[str]], list[str], float | None, float]:
    """The selected categories of undeclared categorical columns, the label classes, and the
    partition selection's threshold and δ (None and 0 when nothing was selected)."""
    schema = train.schema
    to_select = {n: v for n, v in categorical.items() if n not in schema.categories}
    if schema.classes is None:
        to_select[train.label_name] = list(train.labels)
    selected: dict[str, list[str]] = {}
    threshold = None
    used_selection_delta = 0.0
    if to_select:
        made.append(release := releases.dp_select(to_select, sigma, selection_delta, rng))
        selected, threshold = release.value
        used_selection_delta = selection_delta
    classes = schema.classes if schema.classes is not None else selected.pop(train.label_name)
    if len(classes) < 2:
        raise DataError(
            f"Label column {train.label_name!r}: only {len(classes)} class(es) are frequent enough "
            "to be released under DP; declare them in `classes` (A,B) or in a schema file."
        )
    return selected, classes, threshold, used_selection_delta


def _bounds_scaling(bounds: Bounds, transforms: dict[str, Transform]) -> Bounds:
    """Each column's center and half-width of its bounds, after its transform."""
    out = {}
    for n, (lower, upper) in bounds.items():
        lo, hi = forward(np.array((lower, upper)), lower, upper, transforms[n])
        out[n] = (float(lo + hi) / 2, float(hi - lo) / 2)
    return out


def _fit_scaling(
    numeric: Arrays,
    bounds: Bounds,
    transforms: dict[str, Transform],
    noisy_train: float,
    sigma: float,
    rng: Keystream,
    made: Made,
) -> tuple[Bounds, str | None]:
    """Each numeric column's center and scale: from DP moments of its transformed values (one
    release), or from its bounds when the rows are too few, with the reason."""
    by_bounds = _bounds_scaling({n: bounds[n] for n in numeric}, transforms)
    scaling = dict(by_bounds)
    if not numeric:
        return scaling, None
    if (skipped := releases.moments_skip_reason(sigma, len(numeric), noisy_train)) is not None:
        return scaling, skipped
    z = np.stack(
        [
            (forward(numeric[n], *bounds[n], transforms[n]) - by_bounds[n][0]) / by_bounds[n][1]
            for n in numeric
        ],
        axis=1,
    )
    made.append(release := releases.dp_moments(z, noisy_train, sigma, rng))
    mean, sd = release.value
    for j, n in enumerate(numeric):
        center, half = by_bounds[n]
        scaling[n] = (center + half * mean[j], half * sd[j])
    return scaling, None


def _columns(
    data: TabularData,
    kinds: Kinds,
    bounds: Bounds,
    transforms: dict[str, Transform],
    scaling: Bounds,
    selected: dict[str, list[str]],
    scaling_source: Literal["dp", "bounds"],
) -> Columns:
    """The fitted columns in the table's order; a bound or category list not declared is DP."""
    schema = data.schema
    columns: Columns = []
    for name in data.features.column_names:
        kind, kind_source = kinds[name]
        if kind == "numeric":
            lo, hi = bounds[name]
            center, scale = scaling[name]
            columns.append(
                NumericColumn(
                    name=name,
                    kind_source=kind_source,
                    lower=lo,
                    upper=hi,
                    transform=transforms[name],
                    center=center,
                    scale=scale,
                    bounds_source="declared" if name in schema.bounds else "dp",
                    scaling_source=scaling_source,
                )
            )
        else:
            declared = name in schema.categories
            columns.append(
                CategoricalColumn(
                    name=name,
                    kind_source=kind_source,
                    categories=schema.categories[name] if declared else selected[name],
                    categories_source="declared" if declared else "dp",
                )
            )
    return columns


def _preprocessor(
    data: TabularData, columns: Columns, classes: list[str], dp: DPStatistics
) -> Preprocessor:
    return Preprocessor(
        columns=columns,
        label=LabelSpec(
            name=data.label_name,
            classes=classes,
            classes_source="declared" if data.schema.classes is not None else "dp",
        ),
        image_shape=list(data.image_shape) if data.image_shape else None,
        dropped_identifier_columns=data.dropped_identifiers,
        dp=dp,
    )


def fit_preprocessor(
    train: TabularData,
    *,
    n_test: int,
    sigma: float,
    selection_delta: float,
    rng: Keystream,
    counts: Release[tuple[float, float]] | None = None,
) -> tuple[Preprocessor, list[GaussianEvent], float, float]:
    """Fit the transform on the training split with DP where nothing is declared.

    ``counts`` is the noisy train and test counts' release when the caller has already made it
    with :func:`securetrain.privacy.releases.noisy_counts` (to choose δ from them); it stays
    one of this fit's releases. Returns the preprocessor, the Gaussian events spent, and the
    noisy train and test counts.
    """
    check_keystream(rng)
    if train.n_rows == 0:
        raise DataError("The training split is empty.")
    made: Made = [
        counts if counts is not None else releases.noisy_counts(train.n_rows, n_test, sigma, rng)
    ]
    noisy_train, noisy_test = made[0].value
    kinds, numeric, categorical = _fit_kinds(train, noisy_train, sigma, rng, made)
    bounds = _fit_bounds(train, numeric, sigma, rng, made)
    selected, classes, threshold, used_selection_delta = _fit_categories(
        train, categorical, sigma, selection_delta, rng, made
    )
    transforms = {n: train.schema.transforms.get(n, "linear") for n in numeric}
    scaling, moments_reason = _fit_scaling(
        numeric, bounds, transforms, noisy_train, sigma, rng, made
    )
    source: Literal["dp", "bounds"] = "dp" if moments_reason is None else "bounds"
    columns = _columns(train, kinds, bounds, transforms, scaling, selected, source)
    dp = DPStatistics(
        noise_multiplier=sigma,
        releases=[r.name for r in made],
        partition_selection_threshold=threshold,
        partition_selection_delta=used_selection_delta,
        moments_skipped_reason=moments_reason,
    )
    pre = _preprocessor(train, columns, classes, dp)
    return pre, [releases.combined_event(made)], float(noisy_train), float(noisy_test)


def declared_preprocessor(data: TabularData) -> Preprocessor:
    """The transform from the declared schema alone, releasing nothing: every numeric column
    scaled by its declared bounds, every categorical column and the classes as declared. For
    settings where several parties must share one transform (federated training)."""
    schema = data.schema
    names = data.features.column_names
    undeclared = [
        n
        for n in names
        if schema.kind(n) is None or (schema.kind(n) == "numeric" and n not in schema.bounds)
    ]
    if schema.classes is None:
        undeclared.append(data.label_name)
    if undeclared:
        raise DataError(
            "Federated training needs every column declared in the schema (bounds, categories, "
            f"classes). Undeclared: {', '.join(undeclared)}."
        )
    assert schema.classes is not None
    kinds: Kinds = {
        n: ("numeric" if schema.kind(n) == "numeric" else "categorical", "declared") for n in names
    }
    bounds = {n: schema.bounds[n] for n in names if kinds[n][0] == "numeric"}
    transforms = {n: schema.transforms.get(n, "linear") for n in bounds}
    scaling = _bounds_scaling(bounds, transforms)
    columns = _columns(data, kinds, bounds, transforms, scaling, {}, "bounds")
    dp = DPStatistics(
        noise_multiplier=0.0,
        releases=[],
        partition_selection_threshold=None,
        partition_selection_delta=0.0,
        moments_skipped_reason="declared schema only: nothing released",
    )
    return _preprocessor(data, columns, schema.classes, dp)
