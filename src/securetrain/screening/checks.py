"""Screening of training data before any training: duplicates, out-of-distribution rows,
label issues (confident learning on cross-validated probabilities) and a spectral-signature
check on learned representations. Each check returns per-row scores and a flag mask."""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from sklearn.ensemble import IsolationForest
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.neighbors import NearestNeighbors
from sklearn.neural_network import MLPClassifier

from securetrain.data import TabularData
from securetrain.data.dataset import is_numeric
from securetrain.errors import DataError

REASONS = ("exact_duplicate", "near_duplicate", "out_of_distribution", "label_issue", "spectral")


@dataclass
class Finding:
    """Rows flagged by one check, with a score per row (higher = more suspicious)."""

    reason: str
    flagged: np.ndarray
    scores: np.ndarray
    detail: dict = field(default_factory=dict)


def feature_matrix(features: pa.Table) -> np.ndarray:
    """Numeric columns robustly scaled (median, IQR), categorical ones one-hot, missing values
    at the median: a matrix in which distances mean something."""
    blocks = []
    for name in features.column_names:
        col = features.column(name)
        if is_numeric(col.type):
            x = np.asarray(col.to_numpy(zero_copy_only=False), dtype=float)
            finite = np.isfinite(x)
            med = np.median(x[finite]) if finite.any() else 0.0
            x = np.where(finite, x, med)
            q1, q3 = np.percentile(x, [25, 75])
            spread = (q3 - q1) or (np.std(x) or 1.0)
            blocks.append(((x - med) / spread)[:, None])
        else:
            values = np.array([str(v) for v in col.to_pylist()])
            levels = np.unique(values)
            blocks.append((values[:, None] == levels[None, :]).astype(float))
    if not blocks:
        raise DataError("Screening needs at least one feature column. Found none.")
    return np.hstack(blocks)


def _row_digests(data: TabularData) -> list[str]:
    table = data.to_table()
    columns = [table.column(n).to_pylist() for n in table.column_names]
    return [
        hashlib.sha256(repr(tuple(c[i] for c in columns)).encode()).hexdigest()
        for i in range(table.num_rows)
    ]


def exact_duplicates(data: TabularData) -> Finding:
    """Rows identical (features and label) to an earlier row."""
    seen: dict[str, int] = {}
    flagged = np.zeros(data.n_rows, bool)
    first_of = {}
    for i, digest in enumerate(_row_digests(data)):
        if digest in seen:
            flagged[i] = True
            first_of[i] = seen[digest]
        else:
            seen[digest] = i
    return Finding("exact_duplicate", flagged, flagged.astype(float), {"copies_of": first_of})


def near_duplicates(x: np.ndarray, exact: np.ndarray, *, tolerance: float = 1e-3) -> Finding:
    """Rows whose nearest earlier neighbour is within ``tolerance`` times the median
    nearest-neighbour distance (and that are not exact copies)."""
    n = len(x)
    if n < 3:
        return Finding("near_duplicate", np.zeros(n, bool), np.zeros(n))
    dist, idx = NearestNeighbors(n_neighbors=2).fit(x).kneighbors(x)
    nn_dist, nn_idx = dist[:, 1], idx[:, 1]
    scale = np.median(nn_dist[nn_dist > 0]) if (nn_dist > 0).any() else 1.0
    close = nn_dist <= tolerance * scale
    # Of each close pair, flag the later row only.
    flagged = close & (nn_idx < np.arange(n)) & ~exact
    scores = np.where(close, 1.0 - nn_dist / (tolerance * scale + 1e-300), 0.0)
    return Finding("near_duplicate", flagged, scores)


def out_of_distribution(x: np.ndarray, *, seed: int = 0, fence: float = 3.0) -> Finding:
    """Isolation-forest anomaly scores; rows beyond Tukey's far-out fence (Q3 + ``fence``·IQR
    of the scores) are flagged."""
    n = len(x)
    if n < 8:
        return Finding("out_of_distribution", np.zeros(n, bool), np.zeros(n))
    score = -IsolationForest(random_state=seed).fit(x).score_samples(x)
    q1, q3 = np.percentile(score, [25, 75])
    return Finding("out_of_distribution", score > q3 + fence * (q3 - q1), score)


def cross_validated_probabilities(
    x: np.ndarray, y: np.ndarray, n_classes: int, *, folds: int = 5, seed: int = 0
) -> np.ndarray:
    """Out-of-fold predicted class probabilities from logistic regression."""
    probs = np.zeros((len(y), n_classes))
    smallest = np.bincount(y, minlength=n_classes)
    k = int(min(folds, smallest[smallest > 0].min()))
    if k < 2:
        raise DataError("Label screening needs at least two rows of every class.")
    for train, test in StratifiedKFold(k, shuffle=True, random_state=seed).split(x, y):
        model = LogisticRegression(max_iter=2000, C=0.1).fit(x[train], y[train])
        probs[np.ix_(test, model.classes_)] = model.predict_proba(x[test])
    return probs


def label_issues(probs: np.ndarray, y: np.ndarray) -> Finding:
    """Confident learning (Northcutt et al., 2021): a class's threshold is the mean predicted
    probability of that class over the rows labelled with it; a row is confidently of class j
    when p_j reaches j's threshold (the most probable such j). Flagged: rows confidently of a
    class other than their label, and rows whose most probable class is not their label while
    the label's probability is under half its class threshold. Score = 1 − p(given label)."""
    n_classes = probs.shape[1]
    thresholds = np.array(
        [probs[y == j, j].mean() if (y == j).any() else 1.0 for j in range(n_classes)]
    )
    above = probs >= thresholds[None, :]
    masked = np.where(above, probs, -1.0)
    confident = masked.argmax(1)
    has_confident = above.any(1)
    given = probs[np.arange(len(y)), y]
    flagged = (has_confident & (confident != y)) | (
        (probs.argmax(1) != y) & (given < thresholds[y] / 2)
    )
    scores = 1.0 - given
    return Finding("label_issue", flagged, scores, {"thresholds": thresholds.round(4).tolist()})


def spectral_signatures(
    x: np.ndarray, y: np.ndarray, *, seed: int = 0, fence: float = 3.0, fit_rows: int = 5000
) -> Finding:
    """Tran et al. (2018): within each class, project a small network's hidden representations
    (centred) on their top singular vector; poisoned rows stand out along it. Rows whose
    projection's magnitude is beyond Tukey's far-out fence (Q3 + ``fence``·IQR, within the
    class) are flagged; the score is the magnitude in IQRs above Q3. The network learns from at
    most ``fit_rows`` rows (a fixed random sample); every row is then represented and scored."""
    rows = np.arange(len(y))
    if len(rows) > fit_rows:
        rows = np.random.default_rng(seed).choice(len(y), fit_rows, replace=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        net = MLPClassifier(hidden_layer_sizes=(64,), max_iter=200, random_state=seed)
        net.fit(x[rows], y[rows])
    hidden = np.maximum(0.0, x @ net.coefs_[0] + net.intercepts_[0])
    scores = np.zeros(len(y))
    flagged = np.zeros(len(y), bool)
    for c in np.unique(y):
        rows = np.flatnonzero(y == c)
        if len(rows) < 10:
            continue
        h = hidden[rows] - hidden[rows].mean(0)
        _, _, vt = np.linalg.svd(h, full_matrices=False)
        s = np.abs(h @ vt[0])
        q1, q3 = np.percentile(s, [25, 75])
        iqr = (q3 - q1) or 1e-12
        scores[rows] = (s - q3) / iqr
        flagged[rows] = s > q3 + fence * iqr
    return Finding("spectral", flagged, scores)
