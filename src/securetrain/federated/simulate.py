"""``simulate``: a federated run on this machine with Flower's simulation engine; each site's
privacy loss is charged to its budget, and the result is a (signed) bundle."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from torch import nn

from securetrain.bundle import ModelCard, write_bundle
from securetrain.bundle.card import DataSection, ModelSection, PrivacySection
from securetrain.data import TabularData, split_mask
from securetrain.data.preprocess import Preprocessor, declared_preprocessor
from securetrain.errors import SecureTrainError
from securetrain.federated.config import FederatedConfig
from securetrain.federated.sites import Site, partition, plan_site
from securetrain.outputs import check_new_dir
from securetrain.privacy import GaussianEvent, compute_epsilon, events_to_json
from securetrain.store import Store, ledger
from securetrain.train import TrainConfig, evaluate
from securetrain.train.models import architecture_for, build_model
from securetrain.train.run import load_data
from securetrain.train.trainer import resolve_keys, signing_section

TEST_FRACTION = 0.3


@dataclass
class FederatedResult:
    card: ModelCard
    model: nn.Module
    bundle: Path
    sites: list[Site]


def _sites(
    config: FederatedConfig, pre: Preprocessor, data: TabularData, rng: np.random.Generator
) -> tuple[list[Site], str]:
    x = pre.transform(data.features)
    y, known = pre.encode_labels(data.labels)
    x, y = x[known], y[known]
    split_seed = secrets.token_hex(16) if config.seed is None else f"seed-{config.seed}"
    test = split_mask(data, seed=split_seed, test_fraction=TEST_FRACTION)[known]
    sites = []
    for i, rows in enumerate(partition(y, config.sites, config.dirichlet_alpha, rng)):
        train_rows, test_rows = rows[~test[rows]], rows[test[rows]]
        sites.append(
            plan_site(
                i,
                x[train_rows],
                y[train_rows],
                x[test_rows],
                y[test_rows],
                config,
                batch_size=config.batch_size,
                rng=rng,
            )
        )
    return sites, split_seed


def _client_level_epsilon(config: FederatedConfig) -> float | None:
    """With server-side client clipping every site takes part in every round: R Gaussian
    mechanisms at the client noise multiplier (sensitivity: one site's clipped update)."""
    if config.client_dp == "none":
        return None
    return compute_epsilon([GaussianEvent(config.client_noise, config.rounds)], delta=config.delta)


def _reserve(
    store: Store, data: TabularData, sites: list[Site], config: FederatedConfig
) -> list[str]:
    """Reserve each site's privacy loss in its own budget; all sites or none."""
    runs: list[str] = []
    try:
        for s in sites:
            site = {
                "dataset_id": f"{data.sha256[:32]}-site-{s.index}-of-{config.sites}",
                "manifest_digest": data.sha256,
                "name": f"{data.source} (federated site {s.index + 1} of {config.sites})",
            }
            if config.site_budget is not None:
                ledger.set_budget(store, **site, epsilon=config.site_budget, delta=config.delta)
            runs.append(
                ledger.reserve(
                    store,
                    **site,
                    events=s.events,
                    epsilon=s.epsilon,
                    delta_partition_selection=0.0,
                    parameters={"federated": True, "rounds": config.rounds, "site": s.index},
                )
            )
    except BaseException:
        for run_id in runs:
            ledger.transition(store, run_id, "released")
        raise
    return runs


def simulate(config: FederatedConfig) -> FederatedResult:
    from flwr.simulation import run_simulation

    from securetrain.federated.apps import client_app, get_weights, server_app, set_weights

    config.validate_choices()
    assert config.out is not None
    check_new_dir(config.out)
    train_config = TrainConfig(
        data=config.data,
        label=config.label,
        schema_path=config.schema_path,
        key_dir=config.key_dir,
        passphrase_env=config.passphrase_env,
    )
    keys = resolve_keys(train_config)
    data = load_data(train_config)
    pre = declared_preprocessor(data)
    rng = np.random.default_rng(secrets.randbits(128) if config.seed is None else config.seed)
    sites, split_seed = _sites(config, pre, data, rng)
    arch = architecture_for(
        config.model, n_features=pre.n_features, n_classes=len(pre.label.classes), image_shape=None
    )
    lr = config.lr or (0.3 if config.model == "logreg" else 0.1)
    clip = config.max_grad_norm or (0.2 if config.model == "logreg" else 1.0)
    store = Store(config.store)
    runs = _reserve(store, data, sites, config)
    if config.seed is not None:
        torch.manual_seed(config.seed)
    model = build_model(arch)
    final: list[list[np.ndarray]] = []
    try:
        logging.getLogger("flwr").setLevel(logging.ERROR)
        run_simulation(
            server_app(config, get_weights(model), final.append),
            client_app(sites, arch, config, lr, clip),
            num_supernodes=config.sites,
            backend_config={
                "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                "init_args": {"logging_level": "error", "log_to_driver": False},
            },
        )
        if not final:
            raise SecureTrainError("The federated run ended without a global model.")
    except BaseException:
        for run_id in runs:
            ledger.transition(store, run_id, "failed")
        raise
    set_weights(model, final[0])
    model.eval()
    x_test = np.concatenate([s.x_test for s in sites])
    y_test = np.concatenate([s.y_test for s in sites])
    metrics = evaluate(model, x_test, y_test, len(pre.label.classes))
    metrics["note"] = (
        "the global model on the pooled held-out rows of all sites (a simulation); not covered "
        "by the DP guarantee"
    )
    worst = max(sites, key=lambda s: s.epsilon)
    card = ModelCard(
        model=ModelSection(
            architecture=arch,
            input_schema=[{"name": c.name, "kind": c.kind} for c in pre.columns],
            preprocessing=pre,
        ),
        privacy=PrivacySection(
            mechanism="federated-dp-sgd",
            epsilon=worst.epsilon,
            delta=config.delta,
            delta_rule="given",
            accountant="pld",
            noise_multiplier=worst.noise_multiplier,
            sample_rate=worst.sample_rate,
            steps=worst.steps_per_round * config.rounds,
            max_grad_norm=clip,
            sampling="poisson",
            secure_rng=config.seed is None,
            preprocessing_epsilon_share=None,
            events=events_to_json(worst.events),
            warning=None,
        ),
        data=DataSection(
            source=data.source,
            label=data.label_name,
            n_train=int(round(sum(s.n_noisy for s in sites))),
            n_test=0,
            counts="sum of the sites' Gaussian-noised counts; held-out counts not released",
            sha256=data.sha256,
            sealed=data.sealed,
            split={
                "method": "hmac-sha256 per record",
                "test_fraction": TEST_FRACTION,
                "seed": split_seed,
            },
        ),
        training={
            "model": config.model,
            "lr": lr,
            "max_grad_norm": clip,
            "local_epochs": config.epochs_per_round,
            "optimizer": "sgd-momentum",
        },
        metrics=metrics,
        software={
            "securetrain": version("securetrain"),
            "torch": torch.__version__,
            "flwr": version("flwr"),
            "dp_accounting": version("dp-accounting"),
        },
        signing=signing_section(keys.signer),
        federated={
            "framework": "flower",
            "sites": config.sites,
            "rounds": config.rounds,
            "partition": config.partition,
            "aggregator": config.aggregator,
            "secure_aggregation": "SecAgg+" if config.secagg else None,
            "client_level_dp": None
            if config.client_dp == "none"
            else {
                "clipping": config.client_dp,
                "noise_multiplier": config.client_noise,
                "clipping_norm": config.client_clip,
                "epsilon": _client_level_epsilon(config),
                "delta": config.delta,
            },
            "attack": None
            if config.attack == "none"
            else {"kind": config.attack, "malicious_sites": config.malicious},
            "unit_of_privacy": "record, per site (each site's own DP-SGD)",
            "site_privacy": [s.summary() for s in sites],
        },
    )
    bundle = write_bundle(config.out, model.state_dict(), card, signer=keys.signer)
    for site, run_id in zip(sites, runs, strict=True):
        ledger.transition(
            store,
            run_id,
            "completed",
            events=site.events,
            epsilon=site.epsilon,
            delta_partition_selection=0.0,
            details={"bundle": str(bundle), "epsilon": site.epsilon},
        )
    return FederatedResult(card, model, bundle, sites)
