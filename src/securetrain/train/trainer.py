"""The training pipeline: load, split, DP preprocessing, DP-SGD, evaluation, model bundle."""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from securetrain.bundle import SIGNATURE, ModelCard, Signer, write_bundle
from securetrain.bundle.card import Architecture, DataSection, ModelSection, PrivacySection
from securetrain.crypto import KeyProvider, KeySetPaths, passphrase_from_env, provider_for_keydir
from securetrain.crypto.keystream import make_keystream
from securetrain.data import (
    Preprocessor,
    Schema,
    TabularData,
    fit_preprocessor,
    load_dataset,
    noisy_counts,
    planned_releases,
)
from securetrain.data.split import split_mask
from securetrain.engine import DPOptimizer, make_generator, split_physical
from securetrain.engine.noise import rng_description
from securetrain.engine.sampling import PoissonBatchSampler
from securetrain.errors import ConfigError, DataError
from securetrain.privacy import (
    Event,
    GaussianEvent,
    PoissonGaussianEvent,
    calibrate_gaussian,
    compute_epsilon,
    events_from_json,
    events_to_json,
    plan_deltas,
    plan_dp_sgd,
)
from securetrain.train.checkpoint import TrainingState
from securetrain.train.config import Hyperparameters, TrainConfig, choose_hyperparameters
from securetrain.train.metrics import RELEASE as METRICS_RELEASE
from securetrain.train.metrics import dp_metrics, exact_metrics, predict_proba
from securetrain.train.models import architecture_for, build_model

NO_DP_WARNING = "Trained WITHOUT differential privacy (--no-dp): a baseline only; do not release."
# Preprocessing noise is calibrated at this delta; the final epsilon is computed at the run's delta.
CALIBRATION_DELTA = 1e-5
METRICS_NOTE = (
    "computed on the held-out split from one Gaussian release (histograms of predicted "
    "probabilities per true class, and for a multiclass label the confusion matrix, at the "
    "preprocessing noise multiplier), which is one of privacy.events; test_auc_ci95 is a 95% "
    "interval for that noise alone, not for the sampling error of the held-out split"
)
NO_DP_METRICS_NOTE = "exact, on the held-out split: this model has no DP guarantee"


@dataclass
class StepInfo:
    step: int
    steps: int
    loss: float
    epsilon: float | None


@dataclass
class TrainResult:
    card: ModelCard
    model: nn.Module
    preprocessor: Preprocessor
    bundle: Path
    run_id: str | None = None
    exact_metrics: dict[str, float | None] | None = None
    screening: dict[str, Any] | None = None
    """Exact held-out metrics and screening counts: for whoever holds the data, not the card."""


ProgressCallback = Callable[[StepInfo], None]


def run_releases(data: TabularData) -> list[str]:
    """The Gaussian releases a run may make besides DP-SGD, known from the schema alone: the
    preprocessing statistics and the card's held-out metrics."""
    return [*planned_releases(data), METRICS_RELEASE]


def preprocessing_sigma(config: TrainConfig, releases: int) -> float:
    """Noise multiplier for the releases besides DP-SGD: the share of epsilon spent on them."""
    target = (config.epsilon or 1.0) * config.preprocessing_share
    return calibrate_gaussian(target, config.delta or CALIBRATION_DELTA, count=releases)


def make_optimizer(model: nn.Module, hp: Hyperparameters) -> torch.optim.Optimizer:
    if hp.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=hp.lr)
    return torch.optim.SGD(model.parameters(), lr=hp.lr, momentum=0.9)


def evaluate(
    model: nn.Module, x: np.ndarray, y: np.ndarray, n_classes: int
) -> dict[str, float | None]:
    """Exact held-out accuracy and AUC (for the data's holder; the card gets DP ones)."""
    return exact_metrics(predict_proba(model, x), y, n_classes)


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
    common = dict(
        hp=hp,
        sigma_pre=sigma_pre,
        releases=releases,
        delta=deltas.delta,
        delta_rule=deltas.rule,
        selection_delta=deltas.selection,
        accountant=config.accountant,
    )
    if config.no_dp:
        return MechanismPlan(**common, sample_rate=None, noise_multiplier=None, steps=None)
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
    return MechanismPlan(
        **common,
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


CheckpointCallback = Callable[["RunPlan", TrainingState], None]


def _train_dp(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    dp: DPPlan,
    hp: Hyperparameters,
    fixed_events: list[Any],
    config: TrainConfig,
    progress: ProgressCallback | None,
    resume: TrainingState | None = None,
    on_checkpoint: Callable[[TrainingState], None] | None = None,
) -> DPOptimizer:
    generator, secure = make_generator(config.seed)
    base = make_optimizer(model, hp)
    start = 0
    if resume is not None:
        model.load_state_dict(resume.model)
        base.load_state_dict(resume.optimizer)
        generator.set_state(resume.rng_state)
        secure, start = generator.secure, resume.step
    optimizer = DPOptimizer(
        base,
        module=model,
        noise_multiplier=dp.noise_multiplier,
        max_grad_norm=hp.max_grad_norm,
        expected_batch_size=dp.expected_batch_size,
        sample_rate=dp.sample_rate,
        generator=generator,
        secure_rng=secure,
    )
    optimizer.steps = start
    fixed = fixed_events
    loss_fn = nn.CrossEntropyLoss()
    sampler = PoissonBatchSampler(
        len(y), sample_rate=dp.sample_rate, steps=dp.steps - start, generator=generator
    )
    report_every = max(1, dp.steps // 25)
    epsilon: float | None = None
    model.train()
    for step, indices in enumerate(sampler, start=start + 1):
        optimizer.zero_grad()
        total_loss, seen = 0.0, 0
        for chunk in split_physical(indices, config.max_physical_batch_size):
            if not len(chunk):
                continue
            idx = torch.tensor(chunk, dtype=torch.long)
            loss = loss_fn(model(x[idx]), y[idx])
            optimizer.backward(loss)
            optimizer.accumulate()
            total_loss += loss.item() * len(chunk)
            seen += len(chunk)
        optimizer.step()
        if (
            on_checkpoint is not None
            and config.checkpoint_every
            and step % config.checkpoint_every == 0
        ):
            on_checkpoint(
                TrainingState(
                    step, model.state_dict(), base.state_dict(), generator.get_state(), secure
                )
            )
        if progress is not None:
            if step % report_every == 0 or step == dp.steps:
                events = [*fixed, *optimizer.events]
                epsilon = compute_epsilon(
                    events, delta=dp.accounting_delta, accountant=config.accountant
                )
            progress(StepInfo(step, dp.steps, total_loss / seen if seen else math.nan, epsilon))
    optimizer.detach()
    return optimizer


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    hp: Hyperparameters,
    dp: DPPlan | None,
    seed: int | None = None,
    progress: ProgressCallback | None = None,
) -> nn.Module:
    """Train ``model`` on ``(x, y)`` with a run's settings: DP-SGD with ``dp`` (the same sample
    rate, steps and noise), or ordinary training without it. No ledger, no checkpoints."""
    if dp is None:
        _train_plain(model, x, y, hp=hp, seed=seed, progress=progress)
    else:
        config = TrainConfig(seed=seed)
        _train_dp(model, x, y, dp=dp, hp=hp, fixed_events=[], config=config, progress=progress)
    model.eval()
    return model


def _train_plain(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    hp: Hyperparameters,
    seed: int | None,
    progress: ProgressCallback | None,
) -> int:
    generator, _ = make_generator(seed)
    optimizer = make_optimizer(model, hp)
    loss_fn = nn.CrossEntropyLoss()
    per_epoch = max(1, math.ceil(len(y) / hp.batch_size))
    steps = hp.epochs * per_epoch
    model.train()
    step = 0
    for _ in range(hp.epochs):
        order = generator.randperm(len(y))
        for b in range(per_epoch):
            idx = order[b * hp.batch_size : (b + 1) * hp.batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            step += 1
            if progress is not None:
                progress(StepInfo(step, steps, loss.item(), None))
    return steps


@dataclass(frozen=True)
class ResolvedKeys:
    provider: KeyProvider | None
    public_key: Path | None
    signer: Signer | None


def resolve_keys(config: TrainConfig) -> ResolvedKeys:
    """The master-key provider, the public key that checks sealed data, and the bundle signer."""
    passphrase = passphrase_from_env(config.passphrase_env)
    paths = KeySetPaths(config.key_dir) if config.key_dir else None
    provider = provider_for_keydir(config.key_dir, passphrase) if config.key_dir else None
    public_key = config.public_key or (paths.public_key if paths else None)
    sign_key = config.sign_key or (paths.signing_key if paths else None)
    signer = Signer(sign_key, passphrase) if sign_key else None
    return ResolvedKeys(provider, public_key, signer)


def apply_classes(config: TrainConfig, data: TabularData) -> TabularData:
    if config.classes is not None:
        # Declared classes are public; rows whose label is not among them are not trained on.
        if len(config.classes) < 2:
            raise ConfigError(f"--classes needs at least two classes. Found {config.classes}.")
        data.schema = replace(data.schema, classes=list(config.classes))
    return data


def load_for(config: TrainConfig) -> TabularData:
    """A plaintext table or built-in dataset (sealed data goes through the ledger in train())."""
    schema = Schema.load(config.schema_path) if config.schema_path else None
    data = load_dataset(
        config.data,
        label=config.label,
        features=config.features,
        schema=schema,
        keep_identifiers=config.keep_identifiers,
    )
    return apply_classes(config, data)


def _split(
    data: TabularData, plan_seed: str, test_fraction: float
) -> tuple[TabularData, TabularData]:
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


def make_plan(
    config: TrainConfig, data: TabularData, *, reserved: MechanismPlan | None = None
) -> tuple[RunPlan, TabularData, TabularData]:
    """Split, release the noisy counts, plan the mechanism (or take the ``reserved`` one), fit
    the DP preprocessing, and fix the model and the DP-SGD mechanism."""
    rng = make_keystream(config.seed, stream="preprocessing")
    split_seed = config.split_seed or (
        secrets.token_hex(16) if config.seed is None else f"seed-{config.seed}"
    )
    train_data, test_data = _split(data, split_seed, config.test_fraction)
    sigma_pre = (
        reserved.sigma_pre
        if reserved is not None
        else preprocessing_sigma(config, len(run_releases(data)))
    )
    counts = noisy_counts(train_data.n_rows, test_data.n_rows, sigma_pre, rng)
    mechanism = reserved or plan_mechanism(config, data, n=counts[0])
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
    hp = mechanism.hp
    arch = architecture_for(
        hp.model,
        n_features=pre.n_features,
        n_classes=len(pre.label.classes),
        image_shape=pre.image_shape,
    )
    pre_events = [GaussianEvent(sigma_pre, len(pre.dp.releases) + 1)]
    dp = None
    if mechanism.sample_rate is not None:
        assert mechanism.steps is not None and mechanism.noise_multiplier is not None
        dp = DPPlan(
            sample_rate=mechanism.sample_rate,
            steps=mechanism.steps,
            noise_multiplier=mechanism.noise_multiplier,
            expected_batch_size=mechanism.sample_rate * n_train_noisy,
            accounting_delta=mechanism.accounting_delta,
        )
    plan = RunPlan(
        split_seed=split_seed,
        preprocessor=pre,
        pre_events=events_to_json(pre_events),
        sigma_pre=sigma_pre,
        n_train_noisy=n_train_noisy,
        n_test_noisy=n_test_noisy,
        hp=hp,
        arch=arch,
        delta=None if config.no_dp else mechanism.delta,
        delta_rule=None if config.no_dp else mechanism.delta_rule,
        dp=dp,
    )
    return plan, train_data, test_data


def train_loaded(
    config: TrainConfig,
    data: TabularData,
    keys: ResolvedKeys,
    progress: ProgressCallback | None,
    *,
    plan: RunPlan | None = None,
    reserved: MechanismPlan | None = None,
    resume: TrainingState | None = None,
    on_checkpoint: CheckpointCallback | None = None,
) -> TrainResult:
    """Train on data in memory: under ``reserved`` (a ledger reservation's mechanism) when
    given, or from ``plan`` (a checkpoint's) when resuming, else planning afresh."""
    data, screening = screen_for_training(config, data)
    if plan is None:
        plan, train_data, test_data = make_plan(config, data, reserved=reserved)
    else:
        train_data, test_data = _split(data, plan.split_seed, config.test_fraction)
    enc = encode(plan, train_data, test_data)
    if config.seed is not None:
        torch.manual_seed(config.seed)
    model = build_model(plan.arch)
    pre_events = events_from_json(plan.pre_events)
    if plan.dp is None:
        steps = _train_plain(
            model, enc.x_train, enc.y_train, hp=plan.hp, seed=config.seed, progress=progress
        )
        privacy = PrivacySection(
            mechanism="none",
            epsilon=None,
            delta=None,
            delta_rule=None,
            accountant=None,
            noise_multiplier=None,
            sample_rate=None,
            steps=steps,
            max_grad_norm=None,
            sampling="shuffle",
            secure_rng=config.seed is None,
            rng=rng_description(config.seed),
            preprocessing_epsilon_share=None,
            events=plan.pre_events,
            warning=NO_DP_WARNING,
        )
    else:
        dp = plan.dp
        optimizer = _train_dp(
            model,
            enc.x_train,
            enc.y_train,
            dp=dp,
            hp=plan.hp,
            fixed_events=pre_events,
            config=config,
            progress=progress,
            resume=resume,
            on_checkpoint=(lambda state: on_checkpoint(plan, state)) if on_checkpoint else None,
        )
        events = run_events(plan)
        privacy = PrivacySection(
            mechanism="dp-sgd",
            epsilon=compute_epsilon(
                events, delta=dp.accounting_delta, accountant=config.accountant
            ),
            delta=plan.delta,
            delta_partition_selection=plan.preprocessor.dp.partition_selection_delta,
            delta_rule=plan.delta_rule,
            accountant=config.accountant,  # type: ignore[arg-type]
            noise_multiplier=dp.noise_multiplier,
            sample_rate=dp.sample_rate,
            steps=dp.steps,
            max_grad_norm=plan.hp.max_grad_norm,
            expected_batch_size=dp.expected_batch_size,
            sampling="poisson",
            secure_rng=optimizer.secure_rng,
            rng=optimizer.generator.description,
            preprocessing_epsilon_share=config.preprocessing_share,
            events=events_to_json(events),
        )
    return _finish(config, data, keys, plan, model, enc, privacy, screening)


SCREENING_NOTE = (
    "the card records which checks ran, never their counts (those are computed on the raw data "
    "and are not covered by the DP guarantee); with 'drop', which rows are removed can depend "
    "on other rows, and the guarantee covers the screened table"
)


def screen_for_training(
    config: TrainConfig, data: TabularData
) -> tuple[TabularData, dict[str, Any] | None]:
    """Screen the data before training (``config.screen``): ``drop`` removes flagged rows,
    ``warn`` keeps them. Returns the exact summary (counts per check), for the data's holder."""
    if config.screen == "off":
        return data, None
    from securetrain.screening import screen

    report = screen(data)
    flagged = report.flagged_rows
    summary: dict[str, Any] = {
        "mode": config.screen,
        "n_rows": report.n_rows,
        "flagged": len(flagged),
        "by_check": report.counts(),
        "dropped": len(flagged) if config.screen == "drop" else 0,
    }
    if config.screen == "drop" and len(flagged):
        keep = np.setdiff1d(np.arange(data.n_rows), flagged)
        if len(keep) == 0:
            raise DataError(
                f"Screening flagged all {data.n_rows} rows; nothing is left to train on."
            )
        data = data.take(keep)
    return data, summary


def screening_section(summary: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the card says about screening: the mode and the checks, no count."""
    if summary is None:
        return None
    return {"mode": summary["mode"], "checks": sorted(summary["by_check"]), "note": SCREENING_NOTE}


def card_metrics(
    config: TrainConfig, plan: RunPlan, probs: np.ndarray, y: np.ndarray
) -> dict[str, Any]:
    """The card's held-out metrics: DP (one accounted Gaussian release) for a DP run; exact
    for a --no-dp baseline, which has no guarantee to keep."""
    n_classes = len(plan.preprocessor.label.classes)
    if plan.dp is None:
        return {**exact_metrics(probs, y, n_classes), "note": NO_DP_METRICS_NOTE}
    metrics: dict[str, Any] = dp_metrics(
        probs,
        y,
        n_classes,
        sigma=plan.sigma_pre,
        n_noisy=plan.n_test_noisy,
        rng=make_keystream(config.seed, stream="metrics"),
    )
    return {**metrics, "note": METRICS_NOTE}


def signing_section(signer: Signer | None) -> dict[str, str] | None:
    """What the card says about the bundle's signature (None when unsigned)."""
    if signer is None:
        return None
    return {
        "signer": signer.fingerprint(),
        "format": "OpenSSF model-signing, ECDSA P-256",
        "signature_file": SIGNATURE,
    }


def _finish(
    config: TrainConfig,
    data: TabularData,
    keys: ResolvedKeys,
    plan: RunPlan,
    model: nn.Module,
    enc: Encoded,
    privacy: PrivacySection,
    screening: dict[str, Any] | None = None,
) -> TrainResult:
    """Evaluate on the held-out split, write the card, and write (and sign) the bundle."""
    pre = plan.preprocessor
    signing = signing_section(keys.signer)
    probs = predict_proba(model, enc.x_test)
    card = ModelCard(
        model=ModelSection(
            architecture=plan.arch,
            input_schema=[{"name": c.name, "kind": c.kind} for c in pre.columns],
            preprocessing=pre,
        ),
        privacy=privacy,
        data=DataSection(
            source=data.source,
            label=data.label_name,
            n_train=int(round(plan.n_train_noisy)),
            n_test=int(round(plan.n_test_noisy)),
            counts=f"Gaussian-noised (noise multiplier {plan.sigma_pre:.4g}, sensitivity 1), rounded",
            identity=data.commit(config.out),
            sealed=data.sealed,
            screening=screening_section(screening),
            split={
                "method": "hmac-sha256 per record",
                "test_fraction": config.test_fraction,
                "seed": plan.split_seed,
            },
        ),
        training=plan.hp.model_dump(),
        signing=signing,
        metrics=card_metrics(config, plan, probs, enc.y_test),
        software={
            "securetrain": version("securetrain"),
            "torch": torch.__version__,
            "dp_accounting": version("dp-accounting"),
        },
    )
    bundle = write_bundle(config.out, model.state_dict(), card, signer=keys.signer)
    return TrainResult(
        card=card,
        model=model,
        preprocessor=pre,
        bundle=bundle,
        exact_metrics=exact_metrics(probs, enc.y_test, len(pre.label.classes)),
        screening=screening,
    )
