"""The model card of a federated run, simulated or deployed: the setting, and each site's own
privacy loss (the card's headline ε is the largest)."""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import torch

from securetrain.bundle import ModelCard, Signer
from securetrain.bundle.card import (
    Architecture,
    DataSection,
    FederatedTrainingSection,
    MetricsSection,
    ModelSection,
    PrivacySection,
)
from securetrain.crypto.keystream import rng_description
from securetrain.data.preprocess import Preprocessor
from securetrain.federated.config import FederatedConfig
from securetrain.privacy import GaussianEvent, compute_epsilon, events_to_json
from securetrain.train import signing_section

CLIENT_NEIGHBOURING = "add/remove one site"


def client_level_dp(config: FederatedConfig) -> dict[str, Any] | None:
    """Client-level DP at the server (``apps.ClientLevelDP``): every site takes part in every
    round, and each round releases the sum of the sites' updates clipped to C, plus noise of
    standard deviation zC, divided by the fixed number of sites K. Adding or removing one site
    moves the sum by at most C: R Gaussian mechanisms at noise multiplier z."""
    if config.client_dp == "none":
        return None
    events = [GaussianEvent(config.client_noise, config.rounds)]
    return {
        "clipping": config.client_dp,
        "noise_multiplier": config.client_noise,
        "clipping_norm": config.client_clip,
        "neighbouring": CLIENT_NEIGHBOURING,
        "sensitivity": config.client_clip,
        "aggregation": (
            f"(sum of the clipped updates + N(0, ({config.client_noise:g} x "
            f"{config.client_clip:g})^2)) / {config.sites} sites, uniform weights"
        ),
        "events": events_to_json(events),
        "epsilon": compute_epsilon(events, delta=config.delta),
        "delta": config.delta,
    }


def update_bound(config: FederatedConfig) -> dict[str, Any]:
    """How one site's influence on each round is bounded (``apps.BoundedUpdates``,
    ``apps.ClientLevelDP``)."""
    if config.secagg:
        where = (
            "each site clips its update before masking; the server rejects a round whose "
            f"unmasked sum exceeds {config.sites} x {config.client_clip:g}"
        )
    else:
        where = "the server clips each site's update before aggregating"
    return {"norm": config.client_clip, "enforced": where, "weights": "uniform"}


def generators(config: FederatedConfig) -> str:
    """Which generators drew the sites' and the server's sampling and noise, in words."""
    if config.seed is None:
        return f"{rng_description(None)}, at each site and at the server"
    return f"{rng_description(config.seed)}, one key per site, round and stream"


def federated_card(
    *,
    config: FederatedConfig,
    pre: Preprocessor,
    arch: Architecture,
    lr: float,
    clip: float,
    data: DataSection,
    metrics: dict[str, Any],
    site_reports: list[dict[str, Any]],
    signer: Signer | None,
    mode: str,
    charged_to: str,
) -> ModelCard:
    """``site_reports``: per site, its summary (epsilon, n_train, noise_multiplier, sample_rate,
    steps_per_round, ...) and ``events`` (JSON); ``charged_to``: whose budget the run was
    charged to."""
    worst = max(site_reports, key=lambda s: s["epsilon"])
    return ModelCard(
        model=ModelSection(
            architecture=arch,
            input_schema=[{"name": c.name, "kind": c.kind} for c in pre.columns],
            preprocessing=pre,
        ),
        privacy=PrivacySection(
            mechanism="federated-dp-sgd",
            epsilon=worst["epsilon"],
            delta=config.delta,
            delta_rule="given",
            accountant="pld",
            noise_multiplier=worst["noise_multiplier"],
            sample_rate=worst["sample_rate"],
            steps=worst["steps_per_round"] * config.rounds,
            max_grad_norm=clip,
            sampling="poisson",
            secure_rng=config.seed is None,
            rng=generators(config),
            preprocessing_epsilon_share=None,
            events=worst["events"],
            warning=None,
        ),
        data=data,
        training=FederatedTrainingSection(
            model=config.model,
            lr=lr,
            max_grad_norm=clip,
            local_epochs=config.epochs_per_round,
            optimizer="sgd-momentum",
        ),
        metrics=MetricsSection.model_validate(metrics),
        software={
            "securetrain": version("securetrain"),
            "torch": torch.__version__,
            "flwr": version("flwr"),
            "dp_accounting": version("dp-accounting"),
        },
        signing=signing_section(signer),
        federated={
            "framework": "flower",
            "mode": mode,
            "sites": config.sites,
            "rounds": config.rounds,
            "partition": config.partition if mode == "simulation" else "each site's own data",
            "aggregator": config.aggregation,
            "update_bound": update_bound(config),
            "secure_aggregation": "SecAgg+" if config.secagg else None,
            "client_level_dp": client_level_dp(config),
            "attack": None
            if config.attack == "none"
            else {"kind": config.attack, "malicious_sites": config.malicious},
            "unit_of_privacy": "record, per site (each site's own DP-SGD)",
            "charged_to": charged_to,
            "site_privacy": [
                {k: v for k, v in s.items() if k not in ("events", "preprocessor", "label")}
                for s in site_reports
            ],
        },
    )
