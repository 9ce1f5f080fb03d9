"""The sites of a federated run: their share of the data, their own DP-SGD plan (sample-level
DP per site), and one round of local training, honest or malicious."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from securetrain.crypto.keystream import Keystream, check_keystream
from securetrain.errors import DataError
from securetrain.federated.config import FederatedConfig
from securetrain.privacy import (
    DPSGDPlan,
    GaussianEvent,
    calibrate_gaussian,
    plan_deltas,
    plan_dp_sgd,
)
from securetrain.train import DPPlan, Hyperparameters, fit

COUNT_SHARE = 0.1  # of each site's ε, spent on its noisy row count (and held-out metrics)
MIN_SITE_ROWS = 10
SIGN_FLIP_FACTOR = -5.0
SCALING_FACTOR = 10.0


def partition(
    labels: np.ndarray, sites: int, alpha: float | None, rng: np.random.Generator
) -> list[np.ndarray]:
    """Row indices per site: an even random split (iid), or per class a Dirichlet(alpha) split
    across sites (smaller alpha, more skew)."""
    if alpha is None:
        return [np.sort(part) for part in np.array_split(rng.permutation(len(labels)), sites)]
    parts: list[list[int]] = [[] for _ in range(sites)]
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        shares = rng.dirichlet(np.full(sites, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(rows)).astype(int)
        for site, chunk in enumerate(np.split(rows, cuts)):
            parts[site].extend(chunk.tolist())
    return [np.sort(np.array(p, dtype=np.int64)) for p in parts]


@dataclass
class Site:
    """One site's data (encoded) and privacy plan."""

    index: int
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_noisy: float
    sample_rate: float
    steps_per_round: int
    noise_multiplier: float
    events: list = field(default_factory=list)
    epsilon: float = 0.0
    delta: float = 0.0
    malicious: bool = False

    def summary(self) -> dict:
        return {
            "site": self.index,
            "epsilon": round(self.epsilon, 4),
            "n_train": int(round(self.n_noisy)),
            "noise_multiplier": round(self.noise_multiplier, 4),
            "sample_rate": round(self.sample_rate, 4),
            "steps_per_round": self.steps_per_round,
            "malicious": self.malicious,
        }


def count_event(config: FederatedConfig, *, held_out_metrics: bool = False) -> GaussianEvent:
    """A site's Gaussian releases besides DP-SGD, spending ``COUNT_SHARE`` of its ε in all: its
    noisy row count and, in a simulation (``held_out_metrics``), the card's DP metrics on the
    pooled held-out rows, at the same noise multiplier."""
    releases = 2 if held_out_metrics else 1
    sigma = calibrate_gaussian(COUNT_SHARE * config.epsilon, config.delta, count=releases)
    return GaussianEvent(sigma, releases)


def site_plan(
    config: FederatedConfig, n: float, *, batch_size: int | None, held_out_metrics: bool = False
) -> DPSGDPlan:
    """What a site of about ``n`` rows runs: its noisy row count (and the held-out metrics),
    then DP-SGD over all rounds, all within ε at δ (the planner)."""
    return plan_dp_sgd(
        epsilon=config.epsilon,
        n=n,
        epochs=config.epochs_per_round,
        deltas=plan_deltas(n=n, delta=config.delta, selection=False),
        batch_size=batch_size,
        rounds=config.rounds,
        fixed_events=[count_event(config, held_out_metrics=held_out_metrics)],
    )


def plan_site(
    index: int,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    config: FederatedConfig,
    *,
    batch_size: int | None,
    rng: Keystream,
    n_noisy: float | None = None,
    held_out_metrics: bool = False,
) -> Site:
    """The site's DP-SGD over all rounds, from the one planner: a noisy row count (drawn from
    ``rng``, the keystream) and, in a simulation, the held-out metrics (10% of its ε together),
    then Poisson-sampled steps with noise calibrated so that all compose to the site's ε at δ
    (PLD). A site that already released its noisy count (``n_noisy``, in an earlier round)
    reuses it."""
    if len(y_train) < MIN_SITE_ROWS:
        raise DataError(
            f"Site {index} has {len(y_train)} training rows; each needs at least {MIN_SITE_ROWS} "
            "(use fewer sites, or a larger Dirichlet alpha)."
        )
    check_keystream(rng)
    if n_noisy is None:
        sigma = count_event(config, held_out_metrics=held_out_metrics).noise_multiplier
        n_noisy = max(1.0, len(y_train) + float(rng.gaussian(sigma, 1)[0]))
    plan = site_plan(config, n_noisy, batch_size=batch_size, held_out_metrics=held_out_metrics)
    return Site(
        index=index,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        n_noisy=n_noisy,
        sample_rate=plan.sample_rate,
        steps_per_round=plan.steps_per_round,
        noise_multiplier=plan.noise_multiplier,
        events=plan.events,
        epsilon=plan.epsilon(),
        delta=config.delta,
        malicious=index < config.malicious,
    )


def local_round(
    site: Site,
    model: nn.Module,
    *,
    classes: int,
    attack: str,
    lr: float,
    max_grad_norm: float,
    update_bound: float,
    seed: int | None,
) -> list[np.ndarray]:
    """One round at the site: DP-SGD from the global weights already in ``model``; returns the
    weights to send, their update clipped to L2 norm ``update_bound`` (under SecAgg+ the server
    can only check the sum). A malicious site flips its labels, or flips or scales its update
    (and sends it unclipped)."""
    start = [p.detach().clone() for p in model.state_dict().values()]
    x, y = torch.from_numpy(site.x_train), torch.from_numpy(site.y_train)
    if site.malicious and attack == "label-flip":
        y = classes - 1 - y
    batch = site.sample_rate * site.n_noisy
    hp = Hyperparameters(
        model="federated-site",
        epochs=1,
        batch_size=max(1, round(batch)),
        max_grad_norm=max_grad_norm,
        lr=lr,
    )
    dp = DPPlan(
        sample_rate=site.sample_rate,
        steps=site.steps_per_round,
        noise_multiplier=site.noise_multiplier,
        expected_batch_size=batch,
        accounting_delta=site.delta,
    )
    fit(model, x, y, hp=hp, dp=dp, seed=seed)
    update = [
        (w.detach().double() - s.double()).cpu().numpy()
        for s, w in zip(start, model.state_dict().values(), strict=True)
    ]
    if not site.malicious:
        update = clip_update(update, update_bound)
    elif attack in ("sign-flip", "scaling"):
        factor = SIGN_FLIP_FACTOR if attack == "sign-flip" else SCALING_FACTOR
        update = [factor * u for u in update]
    return [
        (s.double().cpu().numpy() + u).astype(np.float32)
        for s, u in zip(start, update, strict=True)
    ]


def clip_update(update: list[np.ndarray], bound: float) -> list[np.ndarray]:
    """``update`` scaled down to L2 norm ``bound`` (over all its arrays) if it is longer."""
    norm = math.sqrt(sum(float(np.sum(np.square(u, dtype=np.float64))) for u in update))
    scale = min(1.0, bound / norm) if norm > 0 else 1.0
    return [np.asarray(u, dtype=np.float64) * scale for u in update]
