"""Preprocessing whose every fitted statistic is either declared (public) or computed with DP.

Fitted on the training split only, and stored in the model card so that prediction applies the
same transform. No raw statistic of the private data is ever released:

- counts (``n_train``, ``n_test``) are Gaussian-noised;
- a column's kind is declared (bounds or a transform: numeric; categories: categorical), or,
  for an undeclared column, numeric when the Gaussian-noised count of its values that are not
  numbers is below half the noisy row count; never Arrow's type inference, which one record can
  change. A value that is not a number is a missing value of a numeric column;
- numeric clipping bounds are declared, or read off a Gaussian-noised histogram over a fixed
  grid of power-of-two bins;
- category lists and label classes are declared, or chosen by thresholded Gaussian-noised
  counts (DP partition selection: a value seen in only a few rows is never released);
- means and scales for standardisation are Gaussian-noised sums of clipped values; when the
  data are too few for that to be accurate (predicted standard error above 5% of the range),
  the release is skipped and the declared or DP bounds define the scale instead.

Every release is a Gaussian mechanism with sensitivity normalised to 1 and one shared noise
multiplier; they appear in the model card's ``privacy.events`` and compose with DP-SGD. The noise
is drawn from the AES-256-CTR keystream (:mod:`securetrain.crypto.keystream`), keyed from OS
entropy unless a seed is given; any other generator is refused.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict
from scipy.stats import norm

from securetrain.crypto.keystream import Keystream, check_keystream
from securetrain.data.dataset import TabularData
from securetrain.data.values import numbers, text, texts
from securetrain.errors import DataError
from securetrain.privacy.events import GaussianEvent

Source = Literal["declared", "dp"]
MOMENTS_MAX_STANDARD_ERROR = 0.05
_BIN_EXPONENTS = np.arange(-8, 41)  # positive bins (2^(k-1), 2^k]; the first is (0, 2^-8]
_HIST_FALSE_BIN_RATE = 0.01  # chance, per column, that noise alone keeps an empty bin


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
                    j = index.get(s) if s is not None else None
                    if j is not None:
                        onehot[row, j] = 1.0
                blocks.append(onehot)
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def encode_labels(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Class indices, and a mask of the rows whose label is one of the known classes."""
        index = {c: i for i, c in enumerate(self.label.classes)}
        y = np.array([index.get(v, -1) for v in labels], dtype=np.int64)
        return y, y >= 0


def _bin_index(x: np.ndarray) -> np.ndarray:
    """Index into the fixed symmetric grid: negatives, zero, positives (99 bins)."""
    k = len(_BIN_EXPONENTS)
    mag = np.abs(x)
    with np.errstate(divide="ignore"):
        e = np.ceil(np.log2(np.where(mag > 0, mag, 1.0)))
    e = np.clip(e, _BIN_EXPONENTS[0], _BIN_EXPONENTS[-1]).astype(int) - _BIN_EXPONENTS[0]
    return np.where(x > 0, k + 1 + e, np.where(x < 0, k - 1 - e, k))


def _bin_edges(i: int) -> tuple[float, float]:
    k = len(_BIN_EXPONENTS)
    if i == k:
        return 0.0, 0.0
    e = _BIN_EXPONENTS[abs(i - k) - 1]
    lo, hi = (0.0 if e == _BIN_EXPONENTS[0] else 2.0 ** (e - 1)), 2.0**e
    return (lo, hi) if i > k else (-hi, -lo)


def dp_bounds(
    columns: dict[str, np.ndarray], sigma: float, rng: Keystream
) -> dict[str, tuple[float, float]]:
    """Clipping bounds from a noisy histogram: the outer edges of the bins whose noisy count is
    above a threshold that noise alone crosses in any of a column's empty bins with probability
    1% (a far-off empty bin kept would stretch the bounds by orders of magnitude). Sensitivity
    sqrt(#columns), normalised to 1."""
    std = sigma * math.sqrt(len(columns))
    n_bins = 2 * len(_BIN_EXPONENTS) + 1
    threshold = float(norm.isf(_HIST_FALSE_BIN_RATE / n_bins)) * std
    out = {}
    for name, x in columns.items():
        finite = x[~np.isnan(x)]
        counts = np.bincount(_bin_index(finite), minlength=n_bins).astype(float)
        noisy = counts + rng.gaussian(std, n_bins)
        kept = np.flatnonzero(noisy > threshold)
        if kept.size == 0:
            kept = np.array([int(np.argmax(noisy))])
        lo, hi = _bin_edges(int(kept.min()))[0], _bin_edges(int(kept.max()))[1]
        if hi <= lo:
            lo, hi = lo - 1.0, hi + 1.0
        out[name] = (lo, hi)
    return out


def dp_select(
    columns: dict[str, list[str | None]], sigma: float, delta: float, rng: Keystream
) -> tuple[dict[str, list[str]], float]:
    """DP partition selection: keep values whose noisy count clears a threshold.

    Each record adds 1 to one value per column, so the count vector has L2 sensitivity
    sqrt(#columns). A value present in only one row is released with probability at most
    ``delta / #columns`` per column, which the caller adds to the guarantee's delta.
    """
    d = len(columns)
    std = sigma * math.sqrt(d)
    threshold = 1.0 + std * float(norm.isf(delta / d))
    out = {}
    for name, values in columns.items():
        uniq, counts = np.unique(
            np.array([v for v in values if v is not None], dtype=object), return_counts=True
        )
        noisy = counts + rng.gaussian(std, len(counts))
        out[name] = sorted(str(v) for v, c in zip(uniq, noisy, strict=True) if c > threshold)
    return out, threshold


def dp_moments(
    z: np.ndarray, n_noisy: float, sigma: float, rng: Keystream
) -> tuple[np.ndarray, np.ndarray]:
    """Noisy mean and standard deviation of values in [-1, 1] (rows x columns).

    The vector (sum z_j, sum z_j^2) has L2 sensitivity sqrt(2 * #columns)."""
    d = z.shape[1]
    std = sigma * math.sqrt(2 * d)
    s1 = np.nansum(z, axis=0) + rng.gaussian(std, d)
    s2 = np.nansum(z * z, axis=0) + rng.gaussian(std, d)
    mean = np.clip(s1 / n_noisy, -1.0, 1.0)
    var = np.clip(s2 / n_noisy - mean**2, 0.05**2, 1.0)
    return mean, np.sqrt(var)


def dp_kinds(
    non_numbers: dict[str, int], n_noisy: float, sigma: float, rng: Keystream
) -> dict[str, str]:
    """Kinds of undeclared columns: ``numeric`` when the noisy count of a column's values that
    are not numbers is below half the noisy row count, else ``categorical``.

    Each record adds at most 1 to each column's count (whether a value is a number depends on
    that value alone), so the count vector has L2 sensitivity sqrt(#columns), normalised to 1.
    """
    std = sigma * math.sqrt(len(non_numbers))
    noisy = np.array(list(non_numbers.values()), dtype=float) + rng.gaussian(std, len(non_numbers))
    return {
        name: "numeric" if count < n_noisy / 2 else "categorical"
        for name, count in zip(non_numbers, noisy, strict=True)
    }


def planned_releases(data: TabularData) -> list[str]:
    """The Gaussian releases :func:`fit_preprocessor` may make on this data (an upper bound:
    the moments release can be skipped), known from the schema alone, before any value."""
    schema = data.schema
    kinds = {n: schema.kind(n) for n in data.features.column_names}
    undeclared = [n for n, kind in kinds.items() if kind is None]
    releases = ["counts", "moments"]
    if undeclared:
        releases.append("column_kinds")
    if undeclared or any(k == "numeric" and n not in schema.bounds for n, k in kinds.items()):
        releases.append("numeric_bounds")
    if undeclared or schema.classes is None:
        releases.append("category_selection")
    return releases


def noisy_counts(
    n_train: int, n_test: int, sigma: float, rng: Keystream
) -> tuple[float, float]:
    """The train and test row counts, Gaussian-noised (one release: a record is in one split)."""
    noisy = np.array([n_train, n_test], dtype=float) + check_keystream(rng).gaussian(sigma, 2)
    return max(float(noisy[0]), 1.0), max(float(noisy[1]), 0.0)


Kinds = dict[str, tuple[str, Source]]


def _fit_kinds(
    train: TabularData, noisy_train: float, sigma: float, rng: Keystream, releases: list[str]
) -> tuple[Kinds, dict[str, np.ndarray], dict[str, list[str | None]]]:
    """Each column's kind and where it came from, the numeric columns' numbers and the
    categorical columns' texts; undeclared kinds are one DP release."""
    schema = train.schema
    names = train.features.column_names
    kinds: Kinds = {n: (kind, "declared") for n in names if (kind := schema.kind(n)) is not None}
    parsed = {n: numbers(train.features.column(n)) for n in names if n not in schema.categories}
    undeclared = {n: parsed[n][1] for n in names if n not in kinds}
    if undeclared:
        releases.append("column_kinds")
        kinds.update(
            (n, (kind, "dp")) for n, kind in dp_kinds(undeclared, noisy_train, sigma, rng).items()
        )
    numeric = {n: parsed[n][0] for n in names if kinds[n][0] == "numeric"}
    categorical = {n: texts(train.features.column(n)) for n in names if kinds[n][0] != "numeric"}
    return kinds, numeric, categorical


def _fit_bounds(
    train: TabularData,
    numeric: dict[str, np.ndarray],
    sigma: float,
    rng: Keystream,
    releases: list[str],
) -> dict[str, tuple[float, float]]:
    """Declared clipping bounds, and DP ones (one release) for the numeric columns without."""
    bounds = {n: train.schema.bounds[n] for n in numeric if n in train.schema.bounds}
    undeclared = {n: x for n, x in numeric.items() if n not in bounds}
    if undeclared:
        releases.append("numeric_bounds")
        bounds.update(dp_bounds(undeclared, sigma, rng))
    return bounds


def _fit_categories(
    train: TabularData,
    categorical: dict[str, list[str | None]],
    sigma: float,
    selection_delta: float,
    rng: Keystream,
    releases: list[str],
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
        releases.append("category_selection")
        selected, threshold = dp_select(to_select, sigma, selection_delta, rng)
        used_selection_delta = selection_delta
    classes = schema.classes if schema.classes is not None else selected.pop(train.label_name)
    if len(classes) < 2:
        raise DataError(
            f"Label column {train.label_name!r}: only {len(classes)} class(es) are frequent enough "
            "to be released under DP; declare them with --classes A,B or in a schema file."
        )
    return selected, classes, threshold, used_selection_delta


def _bounds_scaling(
    bounds: dict[str, tuple[float, float]], transforms: dict[str, str]
) -> dict[str, tuple[float, float]]:
    """Each column's center and half-width of its bounds, after its transform."""
    out = {}
    for n, (lower, upper) in bounds.items():
        lo, hi = forward(np.array((lower, upper)), lower, upper, transforms[n])
        out[n] = (float(lo + hi) / 2, float(hi - lo) / 2)
    return out


def _fit_scaling(
    numeric: dict[str, np.ndarray],
    bounds: dict[str, tuple[float, float]],
    transforms: dict[str, str],
    noisy_train: float,
    sigma: float,
    rng: Keystream,
    releases: list[str],
) -> tuple[dict[str, tuple[float, float]], str | None]:
    """Each numeric column's center and scale: from DP moments of its transformed values (one
    release), or from its bounds when the rows are too few, with the reason."""
    by_bounds = _bounds_scaling({n: bounds[n] for n in numeric}, transforms)
    scaling = dict(by_bounds)
    if not numeric:
        return scaling, None
    predicted_se = sigma * math.sqrt(2 * len(numeric)) / noisy_train
    if predicted_se > MOMENTS_MAX_STANDARD_ERROR:
        return scaling, (
            f"predicted standard error {predicted_se:.3f} of the range exceeds "
            f"{MOMENTS_MAX_STANDARD_ERROR}; scaled by the bounds instead"
        )
    releases.append("moments")
    names = list(numeric)
    z = np.stack(
        [
            (forward(numeric[n], *bounds[n], transforms[n]) - by_bounds[n][0]) / by_bounds[n][1]
            for n in names
        ],
        axis=1,
    )
    mean, sd = dp_moments(z, noisy_train, sigma, rng)
    for j, n in enumerate(names):
        center, half = by_bounds[n]
        scaling[n] = (center + half * mean[j], half * sd[j])
    return scaling, None


def fit_preprocessor(
    train: TabularData,
    *,
    n_test: int,
    sigma: float,
    selection_delta: float,
    rng: Keystream,
    counts: tuple[float, float] | None = None,
) -> tuple[Preprocessor, list[GaussianEvent], float, float]:
    """Fit the transform on the training split with DP where nothing is declared.

    ``counts`` are the noisy train and test counts when the caller has already released them
    with :func:`noisy_counts` (to choose δ from them); they stay one of this fit's releases.
    Returns the preprocessor, the Gaussian events spent, and the noisy train and test counts.
    """
    check_keystream(rng)
    if train.n_rows == 0:
        raise DataError("The training split is empty.")
    schema = train.schema
    releases = ["counts"]
    noisy_train, noisy_test = counts or noisy_counts(train.n_rows, n_test, sigma, rng)
    kinds, numeric, categorical = _fit_kinds(train, noisy_train, sigma, rng, releases)
    bounds = _fit_bounds(train, numeric, sigma, rng, releases)
    selected, classes, threshold, used_selection_delta = _fit_categories(
        train, categorical, sigma, selection_delta, rng, releases
    )
    transforms = {n: schema.transforms.get(n, "linear") for n in numeric}
    scaling, moments_reason = _fit_scaling(
        numeric, bounds, transforms, noisy_train, sigma, rng, releases
    )
    columns: list[NumericColumn | CategoricalColumn] = []
    for name in train.features.column_names:
        if name in numeric:
            lo, hi = bounds[name]
            center, scale = scaling[name]
            columns.append(
                NumericColumn(
                    name=name,
                    kind_source=kinds[name][1],
                    lower=lo,
                    upper=hi,
                    transform=transforms[name],
                    center=center,
                    scale=scale,
                    bounds_source="declared" if name in schema.bounds else "dp",
                    scaling_source="dp" if moments_reason is None else "bounds",
                )
            )
        else:
            declared = name in schema.categories
            columns.append(
                CategoricalColumn(
                    name=name,
                    kind_source=kinds[name][1],
                    categories=schema.categories[name] if declared else selected[name],
                    categories_source="declared" if declared else "dp",
                )
            )
    pre = Preprocessor(
        columns=columns,
        label=LabelSpec(
            name=train.label_name,
            classes=classes,
            classes_source="declared" if schema.classes is not None else "dp",
        ),
        image_shape=list(train.image_shape) if train.image_shape else None,
        dropped_identifier_columns=train.dropped_identifiers,
        dp=DPStatistics(
            noise_multiplier=sigma,
            releases=releases,
            partition_selection_threshold=threshold,
            partition_selection_delta=used_selection_delta,
            moments_skipped_reason=moments_reason,
        ),
    )
    return pre, [GaussianEvent(sigma, len(releases))], float(noisy_train), float(noisy_test)


def declared_preprocessor(data: TabularData) -> Preprocessor:
    """The transform from the declared schema alone, releasing nothing: every numeric column
    scaled by its declared bounds, every categorical column and the classes as declared. For
    settings where several parties must share one transform (federated training)."""
    schema = data.schema
    undeclared = [
        n
        for n in data.features.column_names
        if schema.kind(n) is None or (schema.kind(n) == "numeric" and n not in schema.bounds)
    ]
    if schema.classes is None:
        undeclared.append(data.label_name)
    if undeclared:
        raise DataError(
            "Federated training needs every column declared in the schema (bounds, categories, "
            f"classes). Undeclared: {', '.join(undeclared)}."
        )
    columns: list[NumericColumn | CategoricalColumn] = []
    for name in data.features.column_names:
        if schema.kind(name) == "numeric":
            lo, hi = schema.bounds[name]
            transform = schema.transforms.get(name, "linear")
            t_lo, t_hi = forward(np.array([lo, hi]), lo, hi, transform)
            columns.append(
                NumericColumn(
                    name=name,
                    kind_source="declared",
                    lower=lo,
                    upper=hi,
                    transform=transform,
                    center=float(t_lo + t_hi) / 2,
                    scale=float(t_hi - t_lo) / 2,
                    bounds_source="declared",
                    scaling_source="bounds",
                )
            )
        else:
            columns.append(
                CategoricalColumn(
                    name=name,
                    kind_source="declared",
                    categories=schema.categories[name],
                    categories_source="declared",
                )
            )
    assert schema.classes is not None
    return Preprocessor(
        columns=columns,
        label=LabelSpec(name=data.label_name, classes=schema.classes, classes_source="declared"),
        image_shape=list(data.image_shape) if data.image_shape else None,
        dropped_identifier_columns=data.dropped_identifiers,
        dp=DPStatistics(
            noise_multiplier=0.0,
            releases=[],
            partition_selection_threshold=None,
            partition_selection_delta=0.0,
            moments_skipped_reason="declared schema only: nothing released",
        ),
    )
