"""The one-run audit (Steinke, Nasr and Jagielski, 2023): insert m canaries, each independently
with probability ½, train once with the bundle's settings, score the canaries, and guess
membership on the k highest and k lowest scores. The ε lower bound comes from
:func:`securetrain.attacks.stats.one_run_epsilon_lower_bound`; the guess sizes k are declared
before any score is seen and the bound is Bonferroni-corrected over them."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import numpy as np
import torch

from securetrain.attacks.mia import loss_scores
from securetrain.attacks.stats import one_run_epsilon_lower_bound
from securetrain.bundle.card import Architecture
from securetrain.errors import ConfigError
from securetrain.train import DPPlan, Hyperparameters, ProgressCallback, build_model, fit


def guess_sizes(m: int) -> list[int]:
    """The k values declared in advance: about 5%, 10% and 25% of the canaries on each side."""
    return sorted({max(1, m // 20), max(1, m // 10), max(1, m // 4)})


@dataclass
class CanaryAudit:
    m: int
    guesses: int
    correct: int
    k: int
    k_values: list[int]
    epsilon_lower_bound: float
    confidence: float
    scores: np.ndarray
    included: np.ndarray

    def to_json(self) -> dict:
        return {
            "m": self.m,
            "guesses": self.guesses,
            "correct": self.correct,
            "epsilon_lower_bound": round(self.epsilon_lower_bound, 4),
            "confidence": self.confidence,
            "k": self.k,
            "k_values_declared": self.k_values,
            "canaries": "held-out rows with a random wrong label, each inserted with probability 1/2",
        }


def check_canaries(m: int, available: int) -> None:
    """0 (no canary audit) or between 4 and the number of held-out rows."""
    if m == 0:
        return
    if m < 4:
        raise ConfigError(
            f"The canary audit needs at least 4 canaries (or 0 to skip it). Found {m}."
        )
    if m > available:
        raise ConfigError(
            f"`canaries` {m} exceeds the {available} held-out rows available as canaries."
        )


def bound_from_scores(
    scores: np.ndarray,
    included: np.ndarray,
    *,
    k_values: list[int],
    delta: float,
    confidence: float = 0.95,
) -> tuple[float, int, int, int]:
    """Best ε lower bound over the declared k (Bonferroni): guess "in" for the k highest
    scores and "out" for the k lowest. Returns (bound, k, guesses, correct)."""
    m = len(scores)
    if any(2 * k > m for k in k_values):
        raise ConfigError(f"Guessing on 2k of {m} canaries needs k <= {m // 2}. Found {k_values}.")
    order = np.argsort(scores, kind="stable")
    per_k = 1 - (1 - confidence) / len(k_values)
    best = (0.0, k_values[0], 2 * k_values[0], 0)
    for k in k_values:
        correct = int(included[order[-k:]].sum() + (~included[order[:k]]).sum())
        bound = one_run_epsilon_lower_bound(m, 2 * k, correct, delta=delta, confidence=per_k)
        if bound > best[0] or (bound == best[0] and best[3] == 0):
            best = (bound, k, 2 * k, correct)
    return best


def run_canary_audit(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_pool: np.ndarray,
    y_pool: np.ndarray,
    *,
    m: int,
    arch: Architecture,
    hp: Hyperparameters,
    dp: DPPlan | None,
    delta: float,
    seed: int | None = None,
    progress: ProgressCallback | None = None,
) -> CanaryAudit:
    """Train once with m canaries drawn from ``x_pool`` (rows the target never trained on),
    each given a random wrong label and inserted with probability ½, and bound ε. ``dp`` is the
    audited run's mechanism exactly (sample rate, noise, steps and expected batch size, which
    does not grow with the canaries inserted)."""
    check_canaries(m, len(y_pool))
    rng = np.random.default_rng(secrets.randbits(128) if seed is None else seed)
    rows = rng.choice(len(y_pool), m, replace=False)
    classes = arch.n_classes
    x_can = x_pool[rows]
    y_can = (y_pool[rows] + rng.integers(1, classes, m)) % classes
    included = rng.random(m) < 0.5
    x = np.concatenate([x_train, x_can[included]]).astype(np.float32)
    y = np.concatenate([y_train, y_can[included]]).astype(np.int64)
    if seed is not None:
        torch.manual_seed(seed)
    model = fit(
        build_model(arch),
        torch.from_numpy(x),
        torch.from_numpy(y),
        hp=hp,
        dp=dp,
        seed=seed,
        progress=progress,
    )
    scores = loss_scores(model, x_can.astype(np.float32), y_can.astype(np.int64))
    k_values = guess_sizes(m)
    bound, k, guesses, correct = bound_from_scores(scores, included, k_values=k_values, delta=delta)
    return CanaryAudit(m, guesses, correct, k, k_values, bound, 0.95, scores, included)
