"""Privacy-audit statistics as pure functions: ROC summaries of membership scores, the DP
ceiling on an attack's true-positive rate, and the one-run audit's epsilon lower bound (Steinke,
Nasr and Jagielski, "Privacy Auditing with One (1) Training Run", NeurIPS 2023)."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score, roc_curve

from securetrain.errors import ConfigError

FPR_POINTS = (0.001, 0.01)


def roc_summary(scores: np.ndarray, is_member: np.ndarray) -> dict:
    """AUC, TPR at fixed FPRs, best balanced accuracy, and the ROC curve of membership scores
    (higher score = "member")."""
    scores = np.asarray(scores, dtype=float)
    is_member = np.asarray(is_member, dtype=bool)
    if is_member.all() or not is_member.any():
        raise ConfigError(
            f"Membership scores need members and non-members. Found {int(is_member.sum())} "
            f"members among {len(is_member)}."
        )
    fpr, tpr, _ = roc_curve(is_member, scores)
    tpr_at = {str(x): float(tpr[np.searchsorted(fpr, x, side="right") - 1]) for x in FPR_POINTS}
    return {
        "auc": float(roc_auc_score(is_member, scores)),
        "tpr_at_fpr": tpr_at,
        "balanced_accuracy": float(np.max((tpr + 1 - fpr) / 2)),
        "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()},
    }


def tpr_ceiling(fpr: np.ndarray, epsilon: float, delta: float) -> np.ndarray:
    """The most TPR any membership attack can reach at each FPR against an (ε, δ)-DP model:
    TPR ≤ e^ε·FPR + δ (and ≤ 1)."""
    return np.minimum(1.0, math.exp(epsilon) * np.asarray(fpr, dtype=float) + delta)


def one_run_p_value(m: int, r: int, v: int, epsilon: float, delta: float = 0.0) -> float:
    """Probability of at least ``v`` correct guesses out of ``r`` (with ``m`` canaries, each
    included independently with probability ½) if the training is (ε, δ)-DP: the binomial tail
    of ε-randomised response plus the paper's δ term, 2mδ · max_i P[v > W ≥ v − i] / i."""
    if not 0 <= v <= r <= m:
        raise ConfigError(f"Need 0 <= correct <= guesses <= canaries. Found {v}, {r}, {m}.")
    q = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(stats.binom.sf(v - 1, r, q))
    if delta == 0 or v == 0:
        return min(1.0, tail)
    pmf = stats.binom.pmf(np.arange(v - 1, -1, -1), r, q)  # P[W = v-1], P[W = v-2], ...
    window = np.cumsum(pmf) / np.arange(1, v + 1)
    return min(1.0, tail + 2 * m * delta * float(window.max()))


def one_run_epsilon_lower_bound(
    m: int, r: int, v: int, *, delta: float = 0.0, confidence: float = 0.95
) -> float:
    """The largest ε that ``v`` correct out of ``r`` guesses rejects at the given confidence:
    the training cannot be (ε, δ)-DP for any smaller ε (to within 1e-6)."""
    if not 0 < confidence < 1:
        raise ConfigError(f"Confidence must be in (0, 1). Found {confidence}.")
    beta = 1 - confidence
    if one_run_p_value(m, r, v, 0.0, delta) >= beta:
        return 0.0
    lo, hi = 0.0, 1.0
    while one_run_p_value(m, r, v, hi, delta) < beta:
        lo, hi = hi, hi * 2
        if hi > 1e3:
            return math.inf
    while hi - lo > 1e-6:
        mid = (lo + hi) / 2
        if one_run_p_value(m, r, v, mid, delta) < beta:
            lo = mid
        else:
            hi = mid
    return lo
