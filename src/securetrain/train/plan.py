"""What a run will do, fixed before its first training step: the mechanism (planned from the
schema and a row count alone), the split, the DP preprocessing and the DP-SGD plan."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from securetrain.bundle.card import Architecture
from securetrain.crypto.keystream import make_keystream
from securetrain.data import (
    Preprocessor,
    TabularData,
    fit_preprocessor,
    planned_releases,
)
from securetrain.data.split import split_mask
from securetrain.errors import ConfigError, DataError
from securetrain.privacy import (
    Event,
    GaussianEvent,
    PoissonGaussianEvent,
    calibrate_gaussian,
    events_from_json,
    events_to_json,
    noisy_counts,
    plan_deltas,
    plan_dp_sgd,
)
from securetrain.train.config import Hyperparameters, TrainConfig, choose_hyperparameters
from securetrain.train.metrics import RELEASE as METRICS_RELEASE
from securetrain.train.models import architecture_for

# Preprocessing noise is calibrated at this delta; the final epsilon is computed at the run's delta.
CALIBRATION_DELTA = 1e-5


def run_releases(data: TabularData) -> list[str]:
    """The Gaussian releases a run may make besides DP-SGD, known from the schema alone: the
    preprocessing statistics and the card's held-out metrics."""
    return [*planned_releases(data), METRICS_RELEASE]


def preprocessing_sigma(config: TrainConfig, releases: int) -> float:
    """Noise multiplier for the releases besides DP-SGD: the share of epsilon spent on them."""
    target = (config.epsilon or 1.0) * config.preprocessing_share
    return calibrate_gaussian(target, config.delta or CALIBRATION_DELTA, count=releases)


class DPPlan(BaseModel):
    """The DP-SGD mechanism, fixed before training starts."""

    model_config = ConfigDict(extra="forbid")
    sample_rate: float
    steps: int
    noise_multiplier: float
    expected_batch_size: float
    accounting_delta: float


class MechanismPlan(BaseModel):
    """Every mechanism a run may apply to its data, fixed by the planner before any row is seen
    (beyond the noisy count it was planned on): a reservation in the ledger stores this, and the
    run under it applies exactly this mechanism, so it can never spend more than it reserved."""

    model_config = ConfigDict(extra="forbid")
    hp: Hyperparameters
    sigma_pre: float
    releases: list[str]
    delta: float
    delta_rule: str
    selection_delta: float
    accountant: str
    sample_rate: float | None
    noise_multiplier: float | None
    steps: int | None

    @property
    def accounting_delta(self) -> float:
        return self.delta - self.selection_delta

    def events(self) -> list[Event]:
        """The events the run may spend at most (its reservation)."""
        fixed: list[Event] = [GaussianEvent(self.sigma_pre, len(self.releases))]
        if self.sample_rate is None or self.noise_multiplier is None or self.steps is None:
            return fixed
        return [*fixed, PoissonGaussianEvent(self.sample_rate, self.noise_multiplier, self.steps)]


def plan_mechanism(config: TrainConfig, like: TabularData, *, n: float) -> MechanismPlan:
    """Plan a run on about ``n`` training rows (the noisy count, or for a reservation the size
    from the sealed header): preprocessing noise, δ, hyperparameters and DP-SGD, through the
    one planner in :mod:`securetrain.privacy.planner`. ``like`` needs only the columns and schema."""
    releases = run_releases(like)
    sigma_pre = preprocessing_sigma(config, len(releases))
    hp = choose_hyperparameters(config, n_noisy=n, image=like.image_shape is not None)
    deltas = plan_deltas(n=n, delta=config.delta, selection="category_selection" in releases)
    mechanism = partial(
        MechanismPlan,
        hp=hp,
        sigma_pre=sigma_pre,
        releases=releases,
        delta=deltas.delta,
        delta_rule=deltas.rule,
        selection_delta=deltas.selection,
        accountant=config.accountant,
    )
    if config.no_dp:
        return mechanism(sample_rate=None, noise_multiplier=None, steps=None)
    assert config.epsilon is not None
    sgd = plan_dp_sgd(
        epsilon=config.epsilon,
        n=n,
        epochs=hp.epochs,
        deltas=deltas,
        batch_size=hp.batch_size,
        fixed_events=[GaussianEvent(sigma_pre, len(releases))],
        accountant=config.accountant,
    )
    return mechanism(
        sample_rate=sgd.sample_rate,
        noise_multiplier=sgd.noise_multiplier,
        steps=sgd.steps,
    )


class RunPlan(BaseModel):
    """Everything decided before the first training step (what a checkpoint must restore)."""

    model_config = ConfigDict(extra="forbid")
    split_seed: str
    preprocessor: Preprocessor
    pre_events: list[dict[str, Any]]
    sigma_pre: float
    n_train_noisy: float
    n_test_noisy: float
    hp: Hyperparameters
    arch: Architecture
    delta: float | None
    delta_rule: str | None
    dp: DPPlan | None


def run_events(plan: RunPlan) -> list[Event]:
    """The events a run spends: its releases besides DP-SGD (preprocessing, metrics) and the
    DP-SGD steps."""
    pre_events = events_from_json(plan.pre_events)
    if plan.dp is None:
        return pre_events
    dp = plan.dp
    return [*pre_events, PoissonGaussianEvent(dp.sample_rate, dp.noise_multiplier, dp.steps)]


@dataclass
class Encoded:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: np.ndarray
    y_test: np.ndarray


def split(
    data: TabularData, plan_seed: str, test_fraction: float
) -> tuple[TabularData, TabularData]:
    """The training and held-out rows: a keyed hash per record decides each row's side."""
    test_mask = split_mask(data, seed=plan_seed, test_fraction=test_fraction)
    return data.take(np.flatnonzero(~test_mask)), data.take(np.flatnonzero(test_mask))


def encode(plan: RunPlan, train_data: TabularData, test_data: TabularData) -> Encoded:
    pre = plan.preprocessor
    x_train = pre.transform(train_data.features)
    y_train, keep = pre.encode_labels(train_data.labels)
    x_train, y_train = x_train[keep], y_train[keep]
    if len(y_train) == 0:
        raise DataError("No training rows are left after preprocessing.")
    x_test = pre.transform(test_data.features)
    y_test, keep_test = pre.encode_labels(test_data.labels)
    return Encoded(
        torch.from_numpy(x_train), torch.from_numpy(y_train), x_test[keep_test], y_test[keep_test]
    )


def _dp_plan(mechanism: MechanismPlan, n_train_noisy: float) -> DPPlan | None:
    if mechanism.sample_rate is None:
        return None
    assert mechanism.steps is not None and mechanism.noise_multiplier is not None
    return DPPlan(
        sample_rate=mechanism.sample_rate,
        steps=mechanism.steps,
        noise_multiplier=mechanism.noise_multiplier,
        expected_batch_size=mechanism.sample_rate * n_train_noisy,
        accounting_delta=mechanism.accounting_delta,
    )


def make_plan(
    config: TrainConfig, data: TabularData, *, reserved: MechanismPlan | None = None
) -> tuple[RunPlan, TabularData, TabularData]:
    """Split, release the noisy counts, plan the mechanism (or take the ``reserved`` one), fit
    the DP preprocessing, and fix the model and the DP-SGD mechanism."""
    rng = make_keystream(config.seed, stream="preprocessing")
    split_seed = config.split_seed or (
        secrets.token_hex(16) if config.seed is None else f"seed-{config.seed}"
    )
    train_data, test_data = split(data, split_seed, config.test_fraction)
    sigma_pre = (
        reserved.sigma_pre
        if reserved is not None
        else preprocessing_sigma(config, len(run_releases(data)))
    )
    counts = noisy_counts(train_data.n_rows, test_data.n_rows, sigma_pre, rng)
    mechanism = reserved or plan_mechanism(config, data, n=counts.value[0])
    pre, _, n_train_noisy, n_test_noisy = fit_preprocessor(
        train_data,
        n_test=test_data.n_rows,
        sigma=sigma_pre,
        selection_delta=mechanism.selection_delta,
        rng=rng,
        counts=counts,
    )
    if not set(pre.dp.releases) <= set(mechanism.releases):
        raise ConfigError(
            f"The preprocessing made releases that were not planned: {sorted(pre.dp.releases)} "
            f"against {sorted(mechanism.releases)}."
        )
    arch = architecture_for(
        mechanism.hp.model,
        n_features=pre.n_features,
        n_classes=len(pre.label.classes),
        image_shape=pre.image_shape,
    )
    plan = RunPlan(
        split_seed=split_seed,
        preprocessor=pre,
        pre_events=events_to_json([GaussianEvent(sigma_pre, len(pre.dp.releases) + 1)]),
        sigma_pre=sigma_pre,
        n_train_noisy=n_train_noisy,
        n_test_noisy=n_test_noisy,
        hp=mechanism.hp,
        arch=arch,
        delta=None if config.no_dp else mechanism.delta,
        delta_rule=None if config.no_dp else mechanism.delta_rule,
        dp=_dp_plan(mechanism, n_train_noisy),
    )
    return plan, train_data, test_data
