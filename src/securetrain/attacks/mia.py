"""Membership-inference attacks on a trained model: the LOSS attack and offline LiRA
(Carlini et al., 2022) with reference models trained on population data the target never saw."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def _log_probs(model: nn.Module, x: np.ndarray) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.log_softmax(model(torch.from_numpy(x)), dim=1)


def loss_scores(model: nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Minus each example's cross-entropy loss: members tend to have lower loss."""
    logp = _log_probs(model, x)
    return logp[torch.arange(len(y)), torch.from_numpy(y)].numpy().astype(float)


def confidence_logits(model: nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """LiRA's statistic: log(p_y / (1 - p_y)), computed stably from log-probabilities."""
    logp = _log_probs(model, x).double()
    idx = torch.arange(len(y))
    true = logp[idx, torch.from_numpy(y)]
    others = logp.clone()
    others[idx, torch.from_numpy(y)] = -torch.inf
    return (true - torch.logsumexp(others, dim=1)).numpy()


def lira_offline_scores(
    target: nn.Module, references: list[nn.Module], x: np.ndarray, y: np.ndarray
) -> np.ndarray:
    """Offline LiRA: how far the target's confidence on each example lies above what reference
    models that did not train on it give (per-example mean, one global spread, as recommended
    when there are few reference models)."""
    observed = confidence_logits(target, x, y)
    out = np.stack([confidence_logits(m, x, y) for m in references])
    mean = out.mean(0)
    spread = float(out.std(0, ddof=1).mean()) if len(references) > 1 else 1.0
    return (observed - mean) / max(spread, 1e-6)
