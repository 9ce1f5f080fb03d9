"""What a run says about itself: the model card's sections (privacy, screening, metrics,
signing) and the signed bundle they go into."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from securetrain.bundle import SIGNATURE, ModelCard, Signer, write_bundle
from securetrain.bundle.card import (
    DataSection,
    MetricsSection,
    ModelSection,
    PrivacySection,
    ScreeningSection,
    SigningSection,
    SplitSection,
    TrainingSection,
)
from securetrain.crypto.keystream import make_keystream
from securetrain.data import Preprocessor, TabularData
from securetrain.engine import DPOptimizer
from securetrain.engine.noise import rng_description
from securetrain.privacy import compute_epsilon, events_to_json
from securetrain.train.config import TrainConfig
from securetrain.train.metrics import dp_metrics, exact_metrics, predict_proba
from securetrain.train.plan import Encoded, RunPlan, run_events

NO_DP_WARNING = "Trained WITHOUT differential privacy (--no-dp): a baseline only; do not release."
METRICS_NOTE = (
    "computed on the held-out split from one Gaussian release (histograms of predicted "
    "probabilities per true class, and for a multiclass label the confusion matrix, at the "
    "preprocessing noise multiplier), which is one of privacy.events; test_auc_ci95 is a 95% "
    "interval for that noise alone, not for the sampling error of the held-out split"
)
NO_DP_METRICS_NOTE = "exact, on the held-out split: this model has no DP guarantee"
SCREENING_NOTE = (
    "the card records which checks ran, never their counts (those are computed on the raw data "
    "and are not covered by the DP guarantee); with 'drop', which rows are removed can depend "
    "on other rows, and the guarantee covers the screened table"
)


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


def no_dp_privacy(plan: RunPlan, *, steps: int, seed: int | None) -> PrivacySection:
    """The privacy section of a ``--no-dp`` baseline: no guarantee, and a warning that says so."""
    return PrivacySection(
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
        secure_rng=seed is None,
        rng=rng_description(seed),
        preprocessing_epsilon_share=None,
        events=plan.pre_events,
        warning=NO_DP_WARNING,
    )


def dp_privacy(
    plan: RunPlan,
    optimizer: DPOptimizer,
    *,
    accountant: Literal["pld", "rdp"],
    preprocessing_share: float,
) -> PrivacySection:
    """The privacy section of a DP-SGD run: every event it spent and the ε computed from them."""
    assert plan.dp is not None
    dp = plan.dp
    events = run_events(plan)
    return PrivacySection(
        mechanism="dp-sgd",
        epsilon=compute_epsilon(events, delta=dp.accounting_delta, accountant=accountant),
        delta=plan.delta,
        delta_partition_selection=plan.preprocessor.dp.partition_selection_delta,
        delta_rule=plan.delta_rule,
        accountant=accountant,
        noise_multiplier=dp.noise_multiplier,
        sample_rate=dp.sample_rate,
        steps=dp.steps,
        max_grad_norm=plan.hp.max_grad_norm,
        expected_batch_size=dp.expected_batch_size,
        sampling="poisson",
        secure_rng=optimizer.secure_rng,
        rng=optimizer.generator.description,
        preprocessing_epsilon_share=preprocessing_share,
        events=events_to_json(events),
    )


def screening_section(summary: dict[str, Any] | None) -> ScreeningSection | None:
    """What the card says about screening: the mode and the checks, no count."""
    if summary is None:
        return None
    return ScreeningSection(
        mode=summary["mode"], checks=sorted(summary["by_check"]), note=SCREENING_NOTE
    )


def card_metrics(
    plan: RunPlan, probs: np.ndarray, y: np.ndarray, *, seed: int | None
) -> MetricsSection:
    """The card's held-out metrics: DP (one accounted Gaussian release) for a DP run; exact
    for a --no-dp baseline, which has no guarantee to keep."""
    n_classes = len(plan.preprocessor.label.classes)
    if plan.dp is None:
        exact = exact_metrics(probs, y, n_classes)
        return MetricsSection.model_validate({**exact, "note": NO_DP_METRICS_NOTE})
    metrics = dp_metrics(
        probs,
        y,
        n_classes,
        sigma=plan.sigma_pre,
        n_noisy=plan.n_test_noisy,
        rng=make_keystream(seed, stream="metrics"),
    )
    return MetricsSection.model_validate({**metrics, "note": METRICS_NOTE})


def signing_section(signer: Signer | None) -> SigningSection | None:
    """What the card says about the bundle's signature (None when unsigned)."""
    if signer is None:
        return None
    return SigningSection(
        signer=signer.fingerprint(),
        format="OpenSSF model-signing, ECDSA P-256",
        signature_file=SIGNATURE,
    )


def finish(
    config: TrainConfig,
    data: TabularData,
    signer: Signer | None,
    plan: RunPlan,
    model: nn.Module,
    enc: Encoded,
    privacy: PrivacySection,
    screening: dict[str, Any] | None = None,
) -> TrainResult:
    """Evaluate on the held-out split, write the card, and write (and sign) the bundle."""
    assert config.out is not None  # check_runnable refused a run without one
    pre = plan.preprocessor
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
            split=SplitSection(
                method="hmac-sha256 per record",
                test_fraction=config.test_fraction,
                seed=plan.split_seed,
            ),
        ),
        training=TrainingSection(**plan.hp.model_dump()),
        signing=signing_section(signer),
        metrics=card_metrics(plan, probs, enc.y_test, seed=config.seed),
        software={
            "securetrain": version("securetrain"),
            "torch": torch.__version__,
            "dp_accounting": version("dp-accounting"),
        },
    )
    bundle = write_bundle(config.out, model.state_dict(), card, signer=signer)
    return TrainResult(
        card=card,
        model=model,
        preprocessor=pre,
        bundle=bundle,
        exact_metrics=exact_metrics(probs, enc.y_test, len(pre.label.classes)),
        screening=screening,
    )
