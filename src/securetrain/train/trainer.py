"""The training pipeline: load, split, DP preprocessing, DP-SGD, evaluation, model bundle."""

from __future__ import annotations

import base64
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from sklearn.metrics import accuracy_score, roc_auc_score
from torch import nn

from securetrain.bundle import SIGNATURE, ModelCard, Signer, check_output_dir, write_bundle
from securetrain.bundle.card import DataSection, ModelSection, PrivacySection
from securetrain.crypto import KeyProvider, KeySetPaths, passphrase_from_env, provider_for_keydir
from securetrain.crypto.signing import signed_manifest_digest
from securetrain.data import (
    Preprocessor,
    Schema,
    TabularData,
    fit_preprocessor,
    from_table,
    load_dataset,
    planned_releases,
)
from securetrain.data.split import split_mask
from securetrain.engine import DPOptimizer, make_generator, split_physical
from securetrain.engine.sampling import PoissonBatchSampler
from securetrain.errors import ConfigError, DataError, IntegrityError
from securetrain.privacy import (
    Event,
    GaussianEvent,
    PoissonGaussianEvent,
    calibrate_gaussian,
    calibrate_noise,
    compute_epsilon,
    events_from_json,
    events_to_json,
)
from securetrain.sealed import SIGNATURE as SEALED_SIGNATURE
from securetrain.sealed import Header, is_sealed, open_sealed, verify_sealed
from securetrain.store import Store, ledger
from securetrain.train.config import (
    Hyperparameters,
    TrainConfig,
    choose_hyperparameters,
    default_delta,
)
from securetrain.train.models import architecture_for, build_model

NO_DP_WARNING = "Trained WITHOUT differential privacy (--no-dp): a baseline only; do not release."
# Preprocessing noise is calibrated at this delta; the final epsilon is computed at the run's delta.
_CALIBRATION_DELTA = 1e-5


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


def _preprocessing_sigma(config: TrainConfig, data: TabularData) -> float:
    """Noise multiplier for preprocessing releases: the share of epsilon spent on them alone."""
    target = (config.epsilon or 1.0) * config.preprocessing_share
    return calibrate_gaussian(
        target, config.delta or _CALIBRATION_DELTA, count=len(planned_releases(data))
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


def _train_dp(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    hp: Hyperparameters,
    sample_rate: float,
    steps: int,
    noise_multiplier: float,
    expected_batch_size: float,
    delta: float,
    fixed_events: list[GaussianEvent],
    accountant: str,
    seed: int | None,
    max_physical: int,
    progress: ProgressCallback | None,
) -> DPOptimizer:
    generator, secure = make_generator(seed)
    base = make_optimizer(model, hp)
    optimizer = DPOptimizer(
        base,
        module=model,
        noise_multiplier=noise_multiplier,
        max_grad_norm=hp.max_grad_norm,
        expected_batch_size=expected_batch_size,
        sample_rate=sample_rate,
        generator=generator,
        secure_rng=secure,
    )
    loss_fn = nn.CrossEntropyLoss()
    sampler = PoissonBatchSampler(len(y), sample_rate=sample_rate, steps=steps, generator=generator)
    report_every = max(1, steps // 25)
    epsilon: float | None = None
    model.train()
    for step, indices in enumerate(sampler, start=1):
        optimizer.zero_grad()
        total_loss, seen = 0.0, 0
        for chunk in split_physical(indices, max_physical):
            if not len(chunk):
                continue
            idx = torch.tensor(chunk, dtype=torch.long)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            optimizer.accumulate()
            total_loss += loss.item() * len(chunk)
            seen += len(chunk)
        optimizer.step()
        if progress is not None:
            if step % report_every == 0 or step == steps:
                events = [*fixed_events, *optimizer.events]
                epsilon = compute_epsilon(events, delta=delta, accountant=accountant)
            progress(StepInfo(step, steps, total_loss / seen if seen else math.nan, epsilon))
    optimizer.detach()
    return optimizer


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
        order = torch.randperm(len(y), generator=generator)
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


def _declared_schema(config: TrainConfig, header: Header) -> Schema | None:
    if config.schema_path:
        return Schema.load(config.schema_path)
    declared = header.doc.get("declared_schema")
    if declared is None:
        return None
    return Schema.from_json(declared, origin=f"declared schema of {config.data!r}")


def _apply_classes(config: TrainConfig, data: TabularData) -> TabularData:
    if config.classes is not None:
        # Declared classes are public; rows whose label is not among them are not trained on.
        if len(config.classes) < 2:
            raise ConfigError(f"--classes needs at least two classes. Found {config.classes}.")
        data.schema = replace(data.schema, classes=list(config.classes))
    return data


def verified_header(config: TrainConfig, keys: ResolvedKeys) -> Header:
    """Check that the keys are there and the sealed dataset's signature holds; no decryption."""
    if keys.provider is None:
        raise ConfigError(f"{config.data!r} is a sealed dataset; give --key KEYDIR to decrypt it.")
    if keys.public_key is None:
        raise ConfigError("Give --public-key PUB to verify the sealed dataset's signature.")
    return verify_sealed(Path(config.data), keys.public_key)


def open_verified(config: TrainConfig, keys: ResolvedKeys, header: Header) -> TabularData:
    """Decrypt a verified sealed dataset into memory (never to disk)."""
    path = Path(config.data)
    assert keys.provider is not None
    digest = signed_manifest_digest(path, SEALED_SIGNATURE)
    opened, table = open_sealed(path, keys=keys.provider)
    if opened.raw != header.raw:
        raise IntegrityError(f"{config.data!r} changed after it was verified")
    data = from_table(
        table,
        label=config.label or header.label,
        source=str(path),
        sha256=digest,
        features=config.features,
        schema=_declared_schema(config, header),
        keep_identifiers=config.keep_identifiers,
    )
    data.sealed = {
        "dataset_id": header.dataset_id,
        "manifest_sha256": digest,
        "signer": str(header.doc.get("signer")),
    }
    return _apply_classes(config, data)


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
    return _apply_classes(config, data)


def plan_privacy(config: TrainConfig, header: Header) -> tuple[list[Event], float, float]:
    """The events a run will spend, planned from the sealed header alone (no decryption).

    The run itself recomputes them from its noisy count; both are calibrated to the same target
    epsilon, and the ledger replaces the plan with the events that ran when the run completes.
    """
    assert config.epsilon is not None
    schema_only = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(header.doc["arrow_schema"])))
    like = from_table(
        schema_only.empty_table(),
        label=config.label or header.label,
        source=config.data,
        sha256="",
        features=config.features,
        schema=_declared_schema(config, header),
        keep_identifiers=True,
    )
    like = _apply_classes(config, like)
    n_plan = max(1.0, header.rows * (1 - config.test_fraction))
    releases = planned_releases(like)
    sigma_pre = _preprocessing_sigma(config, like)
    hp = choose_hyperparameters(config, n_noisy=n_plan, image=False)
    delta = config.delta if config.delta is not None else default_delta(n_plan)[0]
    selection_delta = (
        (config.delta or _CALIBRATION_DELTA) / 10 if "category_selection" in releases else 0.0
    )
    sample_rate = min(1.0, hp.batch_size / n_plan)
    steps = max(1, math.ceil(hp.epochs / sample_rate))
    fixed = [GaussianEvent(sigma_pre, len(releases))]
    sigma = calibrate_noise(
        config.epsilon,
        delta - selection_delta,
        sample_rate,
        steps,
        fixed_events=fixed,
        accountant=config.accountant,
    )
    return (
        [*fixed, PoissonGaussianEvent(sample_rate, sigma, steps)],
        config.epsilon,
        selection_delta,
    )


def _train_sealed(
    config: TrainConfig, keys: ResolvedKeys, progress: ProgressCallback | None
) -> TrainResult:
    """Verify, reserve the planned privacy loss in the ledger, and only then decrypt and train."""
    if config.no_dp:
        raise ConfigError(
            "--no-dp cannot be charged to a sealed dataset's privacy budget; unseal it explicitly for a baseline."
        )
    header = verified_header(config, keys)
    events, epsilon, selection_delta = plan_privacy(config, header)
    store = Store(config.store)
    name = Path(config.data).name
    run_id = ledger.reserve(
        store,
        dataset_id=header.dataset_id,
        manifest_digest=signed_manifest_digest(Path(config.data), SEALED_SIGNATURE),
        name=name,
        events=events,
        epsilon=epsilon,
        delta_partition_selection=selection_delta,
        parameters=config.model_dump(mode="json", exclude={"passphrase_env"}),
    )
    decrypted = False
    try:
        data = open_verified(config, keys, header)
        decrypted = True
        ledger.transition(store, run_id, "running")
        result = _train_loaded(config, data, keys, progress)
    except BaseException as exc:
        ledger.transition(
            store,
            run_id,
            "failed" if decrypted else "released",
            details={"error": type(exc).__name__},
        )
        raise
    p = result.card.privacy
    ledger.transition(
        store,
        run_id,
        "completed",
        events=events_from_json(p.events),
        epsilon=p.epsilon,
        delta_partition_selection=p.delta_partition_selection,
        details={"bundle": str(result.bundle), "epsilon": p.epsilon},
    )
    result.run_id = run_id
    return result


def train(
    config: TrainConfig,
    *,
    data: TabularData | None = None,
    progress: ProgressCallback | None = None,
) -> TrainResult:
    """Run the whole pipeline and write the bundle to ``config.out``.

    A sealed dataset is verified, its planned privacy loss reserved in the ledger, and only
    then decrypted (into memory); other data is loaded directly."""
    config.validate_choices()
    check_output_dir(config.out)
    keys = resolve_keys(config)
    if data is None and is_sealed(config.data):
        return _train_sealed(config, keys, progress)
    return _train_loaded(config, data if data is not None else load_for(config), keys, progress)


def _train_loaded(
    config: TrainConfig, data: TabularData, keys: ResolvedKeys, progress: ProgressCallback | None
) -> TrainResult:
    signing = None
    if keys.signer is not None:
        signing = {
            "signer": keys.signer.fingerprint(),
            "format": "OpenSSF model-signing, ECDSA P-256",
            "signature_file": SIGNATURE,
        }
    rng = _numpy_rng(config.seed)
    split_seed = config.split_seed or (
        secrets.token_hex(16) if config.seed is None else f"seed-{config.seed}"
    )
    test_mask = split_mask(data, seed=split_seed, test_fraction=config.test_fraction)
    train_data = data.take(np.flatnonzero(~test_mask))
    test_data = data.take(np.flatnonzero(test_mask))

    sigma_pre = _preprocessing_sigma(config, data)
    selection_delta = (config.delta or _CALIBRATION_DELTA) / 10
    pre, pre_events, n_train_noisy, n_test_noisy = fit_preprocessor(
        train_data,
        n_test=test_data.n_rows,
        sigma=sigma_pre,
        selection_delta=selection_delta,
        rng=rng,
    )
    x_train = pre.transform(train_data.features)
    y_train, keep = pre.encode_labels(train_data.labels)
    x_train, y_train = x_train[keep], y_train[keep]
    if len(y_train) == 0:
        raise DataError("No training rows are left after preprocessing.")
    x_test = pre.transform(test_data.features)
    y_test, keep_test = pre.encode_labels(test_data.labels)
    x_test, y_test = x_test[keep_test], y_test[keep_test]

    hp = choose_hyperparameters(config, n_noisy=n_train_noisy, image=pre.image_shape is not None)
    arch = architecture_for(
        hp.model,
        n_features=pre.n_features,
        n_classes=len(pre.label.classes),
        image_shape=pre.image_shape,
    )
    if config.seed is not None:
        torch.manual_seed(config.seed)
    model = build_model(arch)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)

    if config.delta is not None:
        delta, delta_rule = config.delta, "given"
    else:
        delta, delta_rule = default_delta(n_train_noisy)
    if config.no_dp:
        steps = _train_plain(model, xt, yt, hp=hp, seed=config.seed, progress=progress)
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
            preprocessing_epsilon_share=None,
            events=events_to_json(pre_events),
            warning=NO_DP_WARNING,
        )
    else:
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
        optimizer = _train_dp(
            model,
            xt,
            yt,
            hp=hp,
            sample_rate=sample_rate,
            steps=steps,
            noise_multiplier=sigma,
            expected_batch_size=sample_rate * n_train_noisy,
            delta=accounting_delta,
            fixed_events=pre_events,
            accountant=config.accountant,
            seed=config.seed,
            max_physical=config.max_physical_batch_size,
            progress=progress,
        )
        events = [*pre_events, PoissonGaussianEvent(sample_rate, sigma, steps)]
        privacy = PrivacySection(
            mechanism="dp-sgd",
            epsilon=compute_epsilon(events, delta=accounting_delta, accountant=config.accountant),
            delta=delta,
            delta_partition_selection=pre.dp.partition_selection_delta,
            delta_rule=delta_rule,
            accountant=config.accountant,  # type: ignore[arg-type]
            noise_multiplier=sigma,
            sample_rate=sample_rate,
            steps=steps,
            max_grad_norm=hp.max_grad_norm,
            expected_batch_size=sample_rate * n_train_noisy,
            sampling="poisson",
            secure_rng=optimizer.secure_rng,
            preprocessing_epsilon_share=config.preprocessing_share,
            events=events_to_json(events),
        )

    metrics = evaluate(model, x_test, y_test, len(pre.label.classes))
    metrics["note"] = "computed on the held-out split; metrics are not covered by the DP guarantee"
    card = ModelCard(
        model=ModelSection(
            architecture=arch,
            input_schema=[{"name": c.name, "kind": c.kind} for c in pre.columns],
            preprocessing=pre,
        ),
        privacy=privacy,
        data=DataSection(
            source=data.source,
            label=data.label_name,
            n_train=int(round(n_train_noisy)),
            n_test=int(round(n_test_noisy)),
            counts=f"Gaussian-noised (noise multiplier {sigma_pre:.4g}, sensitivity 1), rounded",
            sha256=data.sha256,
            sealed=data.sealed,
            split={
                "method": "hmac-sha256 per record",
                "test_fraction": config.test_fraction,
                "seed": split_seed,
            },
        ),
        training=hp.model_dump(),
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
