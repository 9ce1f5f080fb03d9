"""Held-out metrics: exact ones for the data's holder, and DP ones for the model card.

The held-out split is private data too, so the card's metrics come from one Gaussian release,
drawn from the AES-256-CTR keystream (:mod:`securetrain.crypto.keystream`):

- binary label: for each true class, a histogram over equal bins of the predicted probability
  of class 1. Adding or removing one record changes one cell by 1, so the release has
  L2 sensitivity 1; accuracy reads the bins above and below 1/2 (the bins' middle edge), AUC the
  whole histogram;
- multiclass: for each true class, a histogram of every class's predicted probability, plus the
  confusion matrix; one record changes one cell per class and one confusion cell, sensitivity
  sqrt(classes + 1). Accuracy comes from the confusion matrix, AUC (one-vs-rest, averaged over
  classes) from the histograms.

The number of bins is even (1/2 is an edge) and comes from public values alone, the noisy test
count and the noise scale (:func:`bins_for`): few bins where the noise would swamp many, up to
``MAX_BINS`` where the split is large. The noisy counts are used as released (no rounding up to
zero, which would bias every small cell upwards and pull the AUC to 1/2). The card gives the
AUC with a 95% interval for the noise alone (delta method: the AUC's gradient in the released
counts times the noise scale); it says nothing about the sampling error of a small held-out
split. Binning alone moves AUC by at most the
probability mass of tied pairs within a bin.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import norm
from sklearn.metrics import accuracy_score, roc_auc_score
from torch import nn

from securetrain.crypto.keystream import Keystream, check_keystream

MAX_BINS = 20
CELL_SIGNAL_TO_NOISE = 2.0  # expected rows per cell over the noise standard deviation, at least
RELEASE = "test_metrics"
INTERVAL = 0.95


def predict_proba(model: nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(x)), dim=1).numpy().astype(np.float64)


def exact_metrics(probs: np.ndarray, y: np.ndarray, n_classes: int) -> dict[str, float | None]:
    """Accuracy and AUC on the held-out rows, exactly: for whoever holds the data, never the card."""
    if len(y) == 0:
        return {"test_accuracy": None, "test_auc": None}
    metrics: dict[str, float | None] = {
        "test_accuracy": round(float(accuracy_score(y, probs.argmax(1))), 4)
    }
    present = np.unique(y)
    if len(present) < 2:
        metrics["test_auc"] = None
    elif n_classes == 2:
        metrics["test_auc"] = round(float(roc_auc_score(y, probs[:, 1])), 4)
    else:
        p = probs[:, present] / probs[:, present].sum(1, keepdims=True)
        metrics["test_auc"] = round(
            float(roc_auc_score(y, p, multi_class="ovr", labels=present)), 4
        )
    return metrics


def evaluate(
    model: nn.Module, x: np.ndarray, y: np.ndarray, n_classes: int
) -> dict[str, float | None]:
    """Exact held-out accuracy and AUC (for the data's holder; the card gets DP ones)."""
    return exact_metrics(predict_proba(model, x), y, n_classes)


def _scored(n_classes: int) -> list[int]:
    """The classes whose probability is histogrammed: class 1 for a binary label, else all."""
    return [1] if n_classes == 2 else list(range(n_classes))


def sensitivity(n_classes: int) -> float:
    """L2 sensitivity of the release under adding or removing one record."""
    return 1.0 if n_classes == 2 else math.sqrt(n_classes + 1)


def bins_for(n_noisy: float, sigma: float, n_classes: int) -> int:
    """The most bins (even, 2 to ``MAX_BINS``) whose cells hold, on average, at least
    ``CELL_SIGNAL_TO_NOISE`` noise standard deviations of rows: from the noisy test count and the
    noise scale, never from the data themselves."""
    std = sigma * sensitivity(n_classes)
    fit = n_noisy / (CELL_SIGNAL_TO_NOISE * std * n_classes) if std > 0 else MAX_BINS
    return int(min(max(2 * math.floor(fit / 2), 2), MAX_BINS))


def _histograms(
    probs: np.ndarray, y: np.ndarray, n_classes: int, bins: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Counts [scored class, true class, bin] and, for a multiclass label, the confusion matrix
    [true, predicted] (a binary label's accuracy is read off its histogram)."""
    scored = _scored(n_classes)
    index = np.minimum((probs * bins).astype(int), bins - 1)
    hist = np.zeros((len(scored), n_classes, bins))
    for i, k in enumerate(scored):
        np.add.at(hist[i], (y, index[:, k]), 1.0)
    if n_classes == 2:
        return hist, None
    confusion = np.zeros((n_classes, n_classes))
    np.add.at(confusion, (y, probs.argmax(1)), 1.0)
    return hist, confusion


def _auc_and_gradient(
    positive: np.ndarray, negative: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray] | None:
    """P(score of a positive > score of a negative), ties counted one half, from bin counts, and
    its gradient in the positive and the negative counts."""
    p, n = positive.sum(), negative.sum()
    if p <= 0 or n <= 0:
        return None
    below = np.concatenate([[0.0], np.cumsum(negative)[:-1]])
    above = np.concatenate([np.cumsum(positive[::-1])[::-1][1:], [0.0]])
    auc = float(np.sum(positive * (below + 0.5 * negative)) / (p * n))
    grad_positive = (below + 0.5 * negative) / (p * n) - auc / p
    grad_negative = (above + 0.5 * positive) / (p * n) - auc / n
    return auc, grad_positive, grad_negative


def dp_metrics(
    probs: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    *,
    sigma: float,
    n_noisy: float,
    rng: Keystream,
) -> dict[str, float | int | list[float] | None]:
    """Accuracy, AUC and the AUC's 95% noise interval from one Gaussian release (noise
    multiplier ``sigma`` times :func:`sensitivity`, bins from the noisy test count ``n_noisy``);
    None where the noisy counts cannot define them."""
    check_keystream(rng)
    bins = bins_for(n_noisy, sigma, n_classes)
    hist, confusion = _histograms(probs, y, n_classes, bins)
    std = sigma * sensitivity(n_classes)
    hist = hist + rng.gaussian(std, hist.shape)
    if confusion is None:
        correct = hist[0, 0, : bins // 2].sum() + hist[0, 1, bins // 2 :].sum()
        total = hist.sum()
    else:
        confusion = confusion + rng.gaussian(std, confusion.shape)
        correct, total = np.trace(confusion), confusion.sum()
    aucs, variances = [], []
    for i, k in enumerate(_scored(n_classes)):
        others = np.arange(n_classes) != k
        found = _auc_and_gradient(hist[i, k], hist[i, others].sum(0))
        if found is not None:
            auc, grad_positive, grad_negative = found
            aucs.append(auc)
            variances.append(std**2 * (np.sum(grad_positive**2) + np.sum(grad_negative**2)))
    metrics: dict[str, float | int | list[float] | None] = {
        "test_accuracy": round(float(np.clip(correct / total, 0.0, 1.0)), 4) if total > 0 else None,
        "test_auc": None,
        "test_auc_ci95": None,
        "histogram_bins": bins,
    }
    if aucs:
        auc = float(np.clip(np.mean(aucs), 0.0, 1.0))
        half = float(norm.isf((1 - INTERVAL) / 2)) * math.sqrt(sum(variances)) / len(aucs)
        metrics["test_auc"] = round(auc, 4)
        metrics["test_auc_ci95"] = [round(max(auc - half, 0.0), 4), round(min(auc + half, 1.0), 4)]
    return metrics
