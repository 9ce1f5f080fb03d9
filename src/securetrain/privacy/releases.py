"""The Gaussian mechanisms that release preprocessing statistics: counts, column kinds, clipping
bounds, partition selection (categories and classes) and moments.

Each takes private values already read and shaped (arrays and lists, never tables), one noise
multiplier σ and the keystream, and returns a :class:`Release`: the noisy statistic, the name the
model card records it under, and its event. Every release is one Gaussian mechanism whose L2
sensitivity is normalised to 1 (the noise standard deviation is σ times the raw sensitivity), so
all of a fit's releases compose as one :class:`GaussianEvent` with their count. The noise is
drawn from the AES-256-CTR keystream (:mod:`securetrain.crypto.keystream`), keyed from OS entropy
unless a seed was given; any other generator is refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt
from scipy.stats import norm

from securetrain.crypto.keystream import Keystream, check_keystream
from securetrain.errors import ConfigError
from securetrain.privacy.events import GaussianEvent

COUNTS = "counts"
COLUMN_KINDS = "column_kinds"
NUMERIC_BOUNDS = "numeric_bounds"
CATEGORY_SELECTION = "category_selection"
MOMENTS = "moments"
MOMENTS_MAX_STANDARD_ERROR = 0.05

_BIN_EXPONENTS = np.arange(-8, 41)  # positive bins (2^(k-1), 2^k]; the first is (0, 2^-8]
_HIST_FALSE_BIN_RATE = 0.01  # chance, per column, that noise alone keeps an empty bin

T = TypeVar("T")
Floats = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Release(Generic[T]):
    """A noisy statistic, the name of its release and the event that accounts for it."""

    name: str
    value: T
    event: GaussianEvent


def _release(name: str, value: T, sigma: float) -> Release[T]:
    return Release(name, value, GaussianEvent(sigma))


def combined_event(releases: Sequence[Release[Any]]) -> GaussianEvent:
    """The releases' events as one: Gaussian mechanisms at one noise multiplier compose as that
    mechanism applied their total count of times."""
    sigmas = {r.event.noise_multiplier for r in releases}
    if len(sigmas) != 1:
        raise ConfigError(
            f"Preprocessing releases must share one noise multiplier. Found {sorted(sigmas)}."
        )
    return GaussianEvent(sigmas.pop(), sum(r.event.count for r in releases))


def noisy_counts(
    n_train: int, n_test: int, sigma: float, rng: Keystream
) -> Release[tuple[float, float]]:
    """The train and test row counts, Gaussian-noised (one release: a record is in one split)."""
    noisy = np.array([n_train, n_test], dtype=float) + check_keystream(rng).gaussian(sigma, 2)
    return _release(COUNTS, (max(float(noisy[0]), 1.0), max(float(noisy[1]), 0.0)), sigma)


def dp_kinds(
    non_numbers: dict[str, int], n_noisy: float, sigma: float, rng: Keystream
) -> Release[dict[str, str]]:
    """Kinds of undeclared columns: ``numeric`` when the noisy count of a column's values that
    are not numbers is below half the noisy row count, else ``categorical``.

    Each record adds at most 1 to each column's count (whether a value is a number depends on
    that value alone), so the count vector has L2 sensitivity sqrt(#columns), normalised to 1.
    """
    std = sigma * math.sqrt(len(non_numbers))
    noise = check_keystream(rng).gaussian(std, len(non_numbers))
    noisy = np.array(list(non_numbers.values()), dtype=float) + noise
    kinds = {
        name: "numeric" if count < n_noisy / 2 else "categorical"
        for name, count in zip(non_numbers, noisy, strict=True)
    }
    return _release(COLUMN_KINDS, kinds, sigma)


def _bin_index(x: Floats) -> npt.NDArray[np.int64]:
    """Index into the fixed symmetric grid: negatives, zero, positives (99 bins)."""
    k = len(_BIN_EXPONENTS)
    mag = np.abs(x)
    with np.errstate(divide="ignore"):
        e = np.ceil(np.log2(np.where(mag > 0, mag, 1.0)))
    e = np.clip(e, _BIN_EXPONENTS[0], _BIN_EXPONENTS[-1]).astype(int) - _BIN_EXPONENTS[0]
    index: npt.NDArray[np.int64] = np.where(x > 0, k + 1 + e, np.where(x < 0, k - 1 - e, k))
    return index


def _bin_edges(i: int) -> tuple[float, float]:
    k = len(_BIN_EXPONENTS)
    if i == k:
        return 0.0, 0.0
    e = _BIN_EXPONENTS[abs(i - k) - 1]
    lo, hi = (0.0 if e == _BIN_EXPONENTS[0] else 2.0 ** (e - 1)), 2.0**e
    return (lo, hi) if i > k else (-hi, -lo)


def dp_bounds(
    columns: dict[str, Floats], sigma: float, rng: Keystream
) -> Release[dict[str, tuple[float, float]]]:
    """Clipping bounds from a noisy histogram: the outer edges of the bins whose noisy count is
    above a threshold that noise alone crosses in any of a column's empty bins with probability
    1% (a far-off empty bin kept would stretch the bounds by orders of magnitude). Sensitivity
    sqrt(#columns), normalised to 1."""
    check_keystream(rng)
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
    return _release(NUMERIC_BOUNDS, out, sigma)


def dp_select(
    columns: dict[str, list[str | None]], sigma: float, delta: float, rng: Keystream
) -> Release[tuple[dict[str, list[str]], float]]:
    """DP partition selection: keep values whose noisy count clears a threshold; the value is
    the kept values per column and the (public) threshold.

    Each record adds 1 to one value per column, so the count vector has L2 sensitivity
    sqrt(#columns). A value present in only one row is released with probability at most
    ``delta / #columns`` per column, which the caller adds to the guarantee's delta.
    """
    check_keystream(rng)
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
    return _release(CATEGORY_SELECTION, (out, threshold), sigma)


def moments_skip_reason(sigma: float, n_columns: int, n_noisy: float) -> str | None:
    """Why :func:`dp_moments` would be too inaccurate to make (None when it is not): its
    predicted standard error, known before the release, above 5% of the range [-1, 1]."""
    predicted_se = sigma * math.sqrt(2 * n_columns) / n_noisy
    if predicted_se > MOMENTS_MAX_STANDARD_ERROR:
        return (
            f"predicted standard error {predicted_se:.3f} of the range exceeds "
            f"{MOMENTS_MAX_STANDARD_ERROR}; scaled by the bounds instead"
        )
    return None


def dp_moments(
    z: Floats, n_noisy: float, sigma: float, rng: Keystream
) -> Release[tuple[Floats, Floats]]:
    """Noisy mean and standard deviation of values in [-1, 1] (rows x columns).

    The vector (sum z_j, sum z_j^2) has L2 sensitivity sqrt(2 * #columns)."""
    check_keystream(rng)
    d = z.shape[1]
    std = sigma * math.sqrt(2 * d)
    s1 = np.nansum(z, axis=0) + rng.gaussian(std, d)
    s2 = np.nansum(z * z, axis=0) + rng.gaussian(std, d)
    mean = np.clip(s1 / n_noisy, -1.0, 1.0)
    var = np.clip(s2 / n_noisy - mean**2, 0.05**2, 1.0)
    return _release(MOMENTS, (mean, np.sqrt(var)), sigma)
