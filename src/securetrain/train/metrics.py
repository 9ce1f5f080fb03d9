"""Held-out metrics: exact ones for the data's holder, and DP ones for the model card.

The held-out split is private data too, so the card's metrics come from one Gaussian release:
for each true class, a histogram over ``BINS`` fixed bins of the model's predicted probability
of class 1 (binary) or of every class (multiclass), plus the confusion matrix. One record adds
1 to one histogram cell per scored class and 1 confusion cell, so the release has L2
sensitivity sqrt(scored classes + 1); with the
run's preprocessing noise multiplier it is one more ``GaussianEvent`` in the run's events.
Accuracy comes from the noisy confusion matrix, AUC (one-vs-rest, averaged over classes) from
the noisy histograms. Binning alone moves AUC by at most the probability mass of tied pairs
within a bin.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.metrics import accuracy_score, roc_auc_score
from torch import nn

BINS = 20
RELEASE = "test_metrics"


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


def _scored(n_classes: int) -> list[int]:
    """The classes whose probability is histogrammed: class 1 for a binary label, else all."""
    return [1] if n_classes == 2 else list(range(n_classes))


def _histograms(
    probs: np.ndarray, y: np.ndarray, n_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Counts [scored class, true class, bin] and the confusion matrix [true, predicted]."""
    scored = _scored(n_classes)
    bins = np.minimum((probs * BINS).astype(int), BINS - 1)
    hist = np.zeros((len(scored), n_classes, BINS))
    for i, k in enumerate(scored):
        np.add.at(hist[i], (y, bins[:, k]), 1.0)
    confusion = np.zeros((n_classes, n_classes))
    np.add.at(confusion, (y, probs.argmax(1)), 1.0)
    return hist, confusion


def _auc_from_histograms(positive: np.ndarray, negative: np.ndarray) -> float | None:
    """P(score of a positive > score of a negative), ties counted one half, from bin counts."""
    p, n = positive.sum(), negative.sum()
    if p <= 0 or n <= 0:
        return None
    below = np.concatenate([[0.0], np.cumsum(negative)[:-1]])
    return float(np.sum(positive * (below + 0.5 * negative)) / (p * n))


def dp_metrics(
    probs: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    *,
    sigma: float,
    rng: np.random.Generator,
) -> dict[str, float | None]:
    """Accuracy and AUC from one Gaussian release (noise multiplier ``sigma``, sensitivity
    normalised to 1); None where the noisy counts cannot define them."""
    hist, confusion = _histograms(probs, y, n_classes)
    std = sigma * math.sqrt(hist.shape[0] + 1)
    hist = np.maximum(hist + rng.normal(0.0, std, hist.shape), 0.0)
    confusion = np.maximum(confusion + rng.normal(0.0, std, confusion.shape), 0.0)
    total = confusion.sum()
    aucs = []
    for i, k in enumerate(_scored(n_classes)):
        others = np.arange(n_classes) != k
        auc = _auc_from_histograms(hist[i, k], hist[i, others].sum(0))
        if auc is not None:
            aucs.append(auc)
    return {
        "test_accuracy": round(float(np.trace(confusion) / total), 4) if total > 0 else None,
        "test_auc": round(float(np.mean(aucs)), 4) if aucs else None,
    }
