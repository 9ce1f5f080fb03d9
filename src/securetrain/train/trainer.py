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
from sklearn.metrics import accuracy_score, roc_auc_score
from torch import nn

from securetrain.bundle import SIGNATURE, ModelCard, Signer, write_bundle
from securetrain.bundle.card import Architecture, DataSection, ModelSection, PrivacySection
from securetrain.crypto import KeyProvider, KeySetPaths, passphrase_from_env, provider_for_keydir
from securetrain.data import (
    Preprocessor,
    Schema,
    TabularData,
    fit_preprocessor,
    load_dataset,
    planned_releases,
)
from securetrain.data.split import split_mask
from securetrain.engine import DPOptimizer, make_generator, split_physical
from securetrain.engine.noise import rng_description
from securetrain.engine.sampling import PoissonBatchSampler
from securetrain.errors import ConfigError, DataError
from securetrain.privacy import (
    PoissonGaussianEvent,
    calibrate_gaussian,
    calibrate_noise,
    compute_epsilon,
    events_from_json,
    events_to_json,
)
from securetrain.train.checkpoint import TrainingState
from securetrain.train.config import (
    Hyperparameters,
    TrainConfig,
    choose_hyperparameters,
    default_delta,
)
from securetrain.train.models import architecture_for, build_model

NO_DP_WARNING = "Trained WITHOUT differential privacy (--no-dp): a baseline only; do not release."
# Preprocessing noise is calibrated at this delta; the final epsilon is computed at the run's delta.
CALIBRATION_DELTA = 1e-5


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


ProgressCallback = Callable[[StepInfo], None]


def _numpy_rng(seed: int | None) -> np.random.Generator:
    return np.random.default_rng(secrets.randbits(128) if seed is None else seed)


def preprocessing_sigma(config: TrainConfig, data: TabularData) -> float:
    """Noise multiplier for preprocessing releases: the share of epsilon spent on them alone."""
    target = (config.epsilon or 1.0) * config.preprocessing_share
    return calibrate_gaussian(
        target, config.delta or CALIBRATION_DELTA, count=len(planned_releases(data))
    )


def make_optimizer(model: nn.Module, hp: Hyperparameters) -> torch.optim.Optimizer:
    if hp.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=hp.lr)
    return torch.optim.SGD(model.parameters(), lr=hp.lr, momentum=0.9)


def evaluate(
    model: nn.Module, x: np.ndarray, y: np.ndarray, n_classes: int
) -> dict[str, float | None]:
    if len(y) == 0:
        return {"test_accuracy": None, "test_auc": None}
    model.eval()
    with torch.no_grad():
        probs = torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()
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


class DPPlan(BaseModel):
    """The DP-SGD mechanism, fixed before training starts."""

    model_config = ConfigDict(extra="forbid")
    sample_rate: float
    steps: int
    noise_multiplier: float
    expected_batch_size: float
    accounting_delta: float


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


def make_plan(config: TrainConfig, data: TabularData) -> tuple[RunPlan, TabularData, TabularData]:
    """Split, fit the DP preprocessing, and fix the model and the DP-SGD mechanism."""
    rng = _numpy_rng(config.seed)
    split_seed = config.split_seed or (
        secrets.token_hex(16) if config.seed is None else f"seed-{config.seed}"
    )
    train_data, test_data = _split(data, split_seed, config.test_fraction)
    sigma_pre = preprocessing_sigma(config, data)
    pre, pre_events, n_train_noisy, n_test_noisy = fit_preprocessor(
        train_data,
        n_test=test_data.n_rows,
        sigma=sigma_pre,
        selection_delta=(config.delta or CALIBRATION_DELTA) / 10,
        rng=rng,
    )
    hp = choose_hyperparameters(config, n_noisy=n_train_noisy, image=pre.image_shape is not None)
    arch = architecture_for(
        hp.model,
        n_features=pre.n_features,
        n_classes=len(pre.label.classes),
        image_shape=pre.image_shape,
    )
    if config.delta is not None:
        delta, delta_rule = config.delta, "given"
    else:
        delta, delta_rule = default_delta(n_train_noisy)
    dp = None
    if not config.no_dp:
        assert config.epsilon is not None
        sample_rate = min(1.0, hp.batch_size / n_train_noisy)
        steps = max(1, math.ceil(hp.epochs / sample_rate))
        accounting_delta = delta - pre.dp.partition_selection_delta
        sigma = calibrate_noise(
            config.epsilon,
            accounting_delta,
            sample_rate,
            steps,
            fixed_events=pre_events,
            accountant=config.accountant,
        )
        dp = DPPlan(
            sample_rate=sample_rate,
            steps=steps,
            noise_multiplier=sigma,
            expected_batch_size=sample_rate * n_train_noisy,
            accounting_delta=accounting_delta,
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
        delta=None if config.no_dp else delta,
        delta_rule=None if config.no_dp else delta_rule,
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
    resume: TrainingState | None = None,
    on_checkpoint: CheckpointCallback | None = None,
) -> TrainResult:
    data, screening = screen_for_training(config, data)
    if plan is None:
        plan, train_data, test_data = make_plan(config, data)
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
        events = [*pre_events, PoissonGaussianEvent(dp.sample_rate, dp.noise_multiplier, dp.steps)]
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
    "counts of flagged rows are computed on the raw data and are not covered by the DP "
    "guarantee; with 'drop', which rows are removed can depend on other rows, and the guarantee "
    "covers the screened table"
)


def screen_for_training(
    config: TrainConfig, data: TabularData
) -> tuple[TabularData, dict[str, Any] | None]:
    """Screen the data before training (``config.screen``): ``drop`` removes flagged rows,
    ``warn`` keeps them; both record the counts for the card."""
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
        "note": SCREENING_NOTE,
    }
    if config.screen == "drop" and len(flagged):
        keep = np.setdiff1d(np.arange(data.n_rows), flagged)
        if len(keep) == 0:
            raise DataError(
                f"Screening flagged all {data.n_rows} rows; nothing is left to train on."
            )
        data = data.take(keep)
    return data, summary


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
    metrics = evaluate(model, enc.x_test, enc.y_test, len(pre.label.classes))
    metrics["note"] = "computed on the held-out split; metrics are not covered by the DP guarantee"
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
            screening=screening,
            split={
                "method": "hmac-sha256 per record",
                "test_fraction": config.test_fraction,
                "seed": plan.split_seed,
            },
        ),
        training=plan.hp.model_dump(),
        signing=signing,
        metrics=metrics,
        software={
            "securetrain": version("securetrain"),
            "torch": torch.__version__,
            "dp_accounting": version("dp-accounting"),
        },
    )
    bundle = write_bundle(config.out, model.state_dict(), card, signer=keys.signer)
    return TrainResult(card=card, model=model, preprocessor=pre, bundle=bundle)
