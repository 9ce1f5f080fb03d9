"""The card's DP held-out metrics: sensitivity under add/remove, utility on a small split at a
moderate noise scale, and the AUC's noise interval."""

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from securetrain.crypto.keystream import make_keystream
from securetrain.errors import ConfigError
from securetrain.train.metrics import MAX_BINS, _histograms, bins_for, dp_metrics, sensitivity


def _scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A good binary classifier's probabilities on ``n`` held-out rows (exact AUC near 0.99)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(np.int64)
    p1 = 1 / (1 + np.exp(-(rng.normal(0, 1.2, n) + np.where(y == 1, 3.0, -3.0))))
    return np.stack([1 - p1, p1], axis=1), y


@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_one_record_moves_the_release_by_at_most_its_sensitivity(n_classes: int) -> None:
    rng = np.random.default_rng(n_classes)
    for _ in range(50):
        n = int(rng.integers(2, 40))
        probs = rng.dirichlet(np.ones(n_classes), n)
        y = rng.integers(0, n_classes, n)
        drop = int(rng.integers(n))
        keep = np.arange(n) != drop
        bins = 2 * int(rng.integers(1, 11))
        full = _histograms(probs, y, n_classes, bins)
        less = _histograms(probs[keep], y[keep], n_classes, bins)
        moved = sum(
            float(np.sum((a - b) ** 2)) for a, b in zip(full, less, strict=True) if a is not None
        )
        assert math.sqrt(moved) == pytest.approx(sensitivity(n_classes))
    assert sensitivity(2) == 1.0


def test_binary_auc_is_useful_on_a_small_split_at_a_moderate_noise_scale() -> None:
    probs, y = _scores(120, 0)
    exact = roc_auc_score(y, probs[:, 1])
    assert exact > 0.97
    aucs = [
        dp_metrics(probs, y, 2, sigma=5.0, n_noisy=120, rng=make_keystream(s, stream="metrics"))[
            "test_auc"
        ]
        for s in range(40)
    ]
    assert np.mean(aucs) > 0.9


def test_the_auc_interval_covers_the_noiseless_binned_auc() -> None:
    probs, y = _scores(120, 1)
    bins = bins_for(120, 8.0, 2)
    binned = roc_auc_score(y, np.minimum((probs[:, 1] * bins).astype(int), bins - 1))
    covered = []
    for s in range(200):
        m = dp_metrics(probs, y, 2, sigma=8.0, n_noisy=120, rng=make_keystream(s, stream="metrics"))
        assert m["histogram_bins"] == bins
        if m["test_auc_ci95"] is not None:
            lo, hi = m["test_auc_ci95"]
            assert lo <= m["test_auc"] <= hi
            covered.append(lo <= binned <= hi)
    assert len(covered) > 150 and np.mean(covered) > 0.88


def test_the_interval_is_wide_when_the_noise_swamps_the_split() -> None:
    probs, y = _scores(120, 2)
    widths = []
    for s in range(20):
        m = dp_metrics(probs, y, 2, sigma=200.0, n_noisy=120, rng=make_keystream(s, stream="m"))
        if m["test_auc_ci95"] is not None:
            widths.append(m["test_auc_ci95"][1] - m["test_auc_ci95"][0])
    assert widths and min(widths) > 0.3


def test_multiclass_metrics_have_an_interval_too() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 300)
    probs = np.full((300, 3), 0.1)
    probs[np.arange(300), y] = 0.8
    m = dp_metrics(probs, y, 3, sigma=1.0, n_noisy=300, rng=make_keystream(0, stream="metrics"))
    assert m["test_auc"] > 0.9 and m["test_accuracy"] > 0.9
    lo, hi = m["test_auc_ci95"]
    assert lo <= m["test_auc"] <= hi


def test_numpy_generators_are_refused() -> None:
    probs, y = _scores(20, 4)
    with pytest.raises(ConfigError, match="make_keystream"):
        dp_metrics(probs, y, 2, sigma=1.0, n_noisy=20, rng=np.random.default_rng(0))


def test_bins_are_even_and_grow_with_the_noisy_count_over_the_noise() -> None:
    assert bins_for(180, 53.0, 2) == 2  # breast-cancer's test split at the default share
    assert bins_for(120, 5.0, 2) == 6
    assert bins_for(1800, 25.0, 2) == 18
    assert bins_for(1e6, 1.0, 3) == MAX_BINS
    sizes = np.geomspace(1, 1e6, 60)
    for sigma in (0.5, 5.0, 50.0):
        chosen = [bins_for(n, sigma, 2) for n in sizes]
        assert all(b % 2 == 0 and 2 <= b <= MAX_BINS for b in chosen)
        assert chosen == sorted(chosen)


def test_a_large_split_gets_many_bins_and_an_auc_near_the_exact_one() -> None:
    probs, y = _scores(4000, 5)
    probs = np.stack([1 - probs[:, 1] ** 0.3, probs[:, 1] ** 0.3], axis=1)  # spread the scores
    exact = roc_auc_score(y, probs[:, 1])
    m = dp_metrics(probs, y, 2, sigma=3.0, n_noisy=4000, rng=make_keystream(0, stream="metrics"))
    assert m["histogram_bins"] == MAX_BINS
    assert m["test_auc"] == pytest.approx(exact, abs=0.02)
    lo, hi = m["test_auc_ci95"]
    assert hi - lo < 0.05
